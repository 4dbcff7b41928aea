"""Tokenizers: round trips, save/load, and the errors of load_tokenizer/build_tokenizer."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data.tokenizers import BPETokenizer, ByteTokenizer, build_tokenizer, load_tokenizer

UNICODE = "Grüße, 世界! naïve café — 😀 \t\r\n\n  end"
CORPUS = [
    "the quick brown fox jumps over the lazy dog. " * 20,
    "to be, or not to be, that is the question:\nwhether 'tis nobler in the mind to suffer\n" * 10,
    "Grüße aus München und Köln. " * 10,
]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300, min_frequency=2)


def test_byte_ids_are_utf8_bytes():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257, 258, 259)
    assert tok.encode(UNICODE) == list(UNICODE.encode("utf-8"))
    assert tok.encode("é", add_bos=True, add_eos=True) == [257, 0xC3, 0xA9, 258]
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert tok.decode([257, 104, 256, 105, 258]) == "hi"
    assert tok.decode(torch.tensor([104, 105])) == "hi"
    assert tok.decode([0xC3]) == "\ufffd"  # a lone lead byte is not silently dropped
    assert tok.encode_batch(["a", "bc"]) == [[97], [98, 99]]
    assert tok.token_byte_lengths().tolist() == [1] * 256 + [0, 0, 0]


def test_byte_decode_rejects_out_of_vocab_ids():
    with pytest.raises(ValueError, match=r"outside this tokenizer's vocabulary \[0, 259\)"):
        ByteTokenizer().decode([65, 300])


def test_byte_save_and_load(tmp_path):
    ByteTokenizer().save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text()) == {"type": "byte"}
    assert isinstance(load_tokenizer(tmp_path / "tok"), ByteTokenizer)


def test_bpe_trains_merges_and_round_trips(bpe):
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2)
    assert [bpe.backend.id_to_token(i) for i in range(3)] == ["<pad>", "<bos>", "<eos>"]
    assert 259 < bpe.vocab_size <= 300
    # merges happen: the training text needs far fewer tokens than bytes
    assert len(bpe.encode(CORPUS[0])) < len(CORPUS[0].encode("utf-8")) / 2
    texts = CORPUS + [UNICODE, "unseen ✓ symbols ∑ and <eos> <pad> literally", ""]
    for text in texts:
        ids = bpe.encode(text)
        assert all(i > 2 for i in ids), "text (even a literal '<eos>') must not produce special ids"
        assert bpe.decode(ids) == text
    ids = bpe.encode("hello", add_bos=True, add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and bpe.decode(ids) == "hello"
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_bpe_token_byte_lengths_sum_to_utf8_length(bpe):
    lengths = bpe.token_byte_lengths()
    assert lengths[:3].tolist() == [0, 0, 0]
    for text in CORPUS + [UNICODE]:
        assert lengths[np.array(bpe.encode(text))].sum() == len(text.encode("utf-8"))


def test_token_byte_lengths_are_counted_once_per_tokenizer(bpe, monkeypatch):
    """A fit asked for the lengths per split and for the byte table: a converted 150k vocabulary decoded every id
    three times. Counted once; each call gets its own copy (a caller's edit does not reach the next). Reference: the
    UTF-8 length of the text, as above."""
    from zoo.data.tokenizers import BPETokenizer

    tok = BPETokenizer(bpe.backend)  # a fresh instance: nothing counted yet
    calls = []
    count = BPETokenizer._count_token_bytes
    monkeypatch.setattr(BPETokenizer, "_count_token_bytes", lambda self: calls.append(1) or count(self))
    first = tok.token_byte_lengths()
    first[:] = 99
    again = tok.token_byte_lengths()
    assert len(calls) == 1 and again[:3].tolist() == [0, 0, 0]
    assert again[np.array(tok.encode(UNICODE))].sum() == len(UNICODE.encode("utf-8"))


def test_bpe_save_load_gives_identical_ids(bpe, tmp_path):
    bpe.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "tokenizer_config.json").read_text()) == {"type": "bpe"}
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    loaded = load_tokenizer(tmp_path / "m")
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == bpe.vocab_size
    for text in CORPUS + [UNICODE, "a <eos> b"]:
        assert loaded.encode(text) == bpe.encode(text)
    via_build = build_tokenizer(str(tmp_path / "m"))
    assert via_build.encode(UNICODE) == bpe.encode(UNICODE)


def test_bpe_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        BPETokenizer.train(CORPUS, vocab_size=100)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*no tokenizer_config.json"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "tokenizer_config.json").write_text('{"type": "sentencepiece"}')
    with pytest.raises(ValueError, match="unknown tokenizer type 'sentencepiece'"):
        load_tokenizer(tmp_path / "odd")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "tokenizer_config.json").write_text('{"type": "bpe"}')
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        load_tokenizer(tmp_path / "half")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(tmp_path / "broken")
    # a Hugging Face folder with a slow (sentencepiece) tokenizer only: its own tokenizer_config.json has no zoo
    # "type"; the error named "unknown tokenizer type None" instead of the missing tokenizer.json
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>"}')
    (tmp_path / "slow" / "tokenizer.model").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json; only fast .*save_pretrained"):
        load_tokenizer(tmp_path / "slow")


def test_a_tokenizer_path_that_does_not_exist_is_named_as_a_missing_folder(tmp_path, monkeypatch):
    """configs/lm/finetune.yaml and adapt_*.yaml pass `pretrained` on as data.tokenizer: once that folder is removed
    (README: resuming needs only the checkpoint), its path read "unknown tokenizer 'runs/base/export': use 'byte',
    'bpe', or an existing folder", as if it were a misspelt kind. Now the folder looked for is named, with the fix."""
    monkeypatch.chdir(tmp_path)
    for spec in ("runs/base/export", "./export", "gone.ckpt"):
        with pytest.raises(FileNotFoundError, match=rf"tokenizer '{re.escape(spec)}': there is no folder or checkpoint "
                                                    rf"{re.escape(str(Path(spec).absolute()))}; .*its own export"):
            build_tokenizer(spec)
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'"):  # a name stays a misspelt kind
        build_tokenizer("wordpiece")


def test_build_tokenizer(tmp_path):
    assert isinstance(build_tokenizer("byte"), ByteTokenizer)
    assert isinstance(build_tokenizer("bpe", CORPUS, vocab_size=280), BPETokenizer)
    with pytest.raises(ValueError, match="'bpe' must be trained: pass texts"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'.*'byte', 'bpe'"):
        build_tokenizer("wordpiece")
    (tmp_path / "f.json").write_text("{}")
    with pytest.raises(ValueError, match="is a file; pass the folder"):
        build_tokenizer(str(tmp_path / "f.json"))
    with pytest.raises(FileNotFoundError, match="no tokenizer_config.json"):
        build_tokenizer(str(tmp_path))  # an existing folder without a tokenizer
    (tmp_path / "config.json").write_text("{}")  # an export of a model trained on token ids (synthetic recall)
    with pytest.raises(FileNotFoundError, match="exported model without a tokenizer .*shakespeare_char"):
        build_tokenizer(str(tmp_path))


def _hf_tokenizer(kind):
    """A small converted-style tokenizer: GPT-2 / Qwen2 byte-level BPE, or Llama-style BPE with byte fallback."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from zoo.data.tokenizers import HFTokenizer

    text = ["the quick brown fox jumps over the lazy dog\n" * 20]
    if kind == "byte_level":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        backend.train_from_iterator(text, trainer)
        return HFTokenizer(backend, bos_id=0, eos_id=0, pad_id=None)
    # Llama / Mistral layout: <unk> <s> </s>, the 256 byte-fallback tokens <0x00>..<0xFF> as ordinary entries,
    # then pieces; characters without a piece are spelled with byte tokens
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "▁", *"thequickbrownfoxjumpsovlazydg"]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return HFTokenizer(backend, bos_id=1, eos_id=2, pad_id=None)


@pytest.mark.parametrize("kind", ["byte_level", "byte_fallback"])
def test_hf_token_byte_lengths_count_the_bytes_of_characters_split_across_tokens(kind):
    """Bits per byte divides by these lengths. A token holding part of a character's UTF-8 bytes decodes
    alone to U+FFFD (3 bytes); it stands for its own bytes (1 for a single byte), or bpb reads low."""
    tok = _hf_tokenizer(kind)
    lengths = tok.token_byte_lengths()
    for text in ("the lazy dog", UNICODE):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(lengths[ids].sum()) == len(text.encode("utf-8")), text


@pytest.mark.parametrize("layout", ["llama2", "metaspace"])
def test_hf_token_byte_lengths_count_the_space_of_word_initial_pieces(layout):
    """Llama 2 / Mistral tokenizers spell a word with its leading space ("▁the"), and their decoders strip the
    space at the start of a text (Strip(" ", 1) after Fuse, or Metaspace's prepend_scheme): decoded alone, every
    word-initial piece loses a byte it stands for, and bits per byte read ~20% high on English text."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    from zoo.data.tokenizers import HFTokenizer

    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    merges = list(dict.fromkeys(("▁" + w[:k], w[k]) for w in words for k in range(len(w))))  # "▁" + t -> "▁t"...
    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "▁", *"thequickbrownfoxjumpsovlazydg",
              *(a + b for a, b in merges)]
    vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
    backend = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True))
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    if layout == "llama2":  # meta-llama/Llama-2-7b-hf, mistralai/Mistral-7B-v0.1 tokenizer.json
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
    else:
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tok = HFTokenizer(backend, bos_id=1, eos_id=2, pad_id=None)
    lengths = tok.token_byte_lengths()
    assert lengths[vocab["▁the"]] == 4 and lengths[vocab["▁"]] == 1 and lengths[vocab["t"]] == 1
    text = "the quick brown fox jumps over the lazy dog"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    # the text's own UTF-8 bytes plus the one space the tokenizer prepends to it (its first piece is "▁the")
    assert int(lengths[ids].sum()) == len(text.encode("utf-8")) + 1
