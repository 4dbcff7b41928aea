"""TextDataModule: readers, block packing, splits, bits-per-byte, predict prompts, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data.text import TextDataModule
from zoo.data.tokenizers import BPETokenizer, ByteTokenizer

EOS = 258  # ByteTokenizer's separator, written out so the tests do not lean on the code
SHAKESPEARE = Path(__file__).resolve().parents[3] / "shared/data/text/tinyshakespeare.txt"


def rows(loader):
    """Every (input_ids, labels) row of a loader, checking the batch format on the way."""
    out = []
    for batch in loader:
        assert set(batch) == {"input_ids", "labels"}
        x, y = batch["input_ids"], batch["labels"]
        assert x.dtype == torch.long and y.dtype == torch.long and x.shape == y.shape and x.dim() == 2
        out += list(zip(x.tolist(), y.tolist()))
    return out


def blocks_by_hand(stream, block_size):
    """Non-overlapping (block_size + 1)-token windows, as (inputs, labels) pairs."""
    n = len(stream) // (block_size + 1)
    assert n == sum(1 for start in range(0, len(stream) - block_size, block_size + 1))
    windows = [stream[i * (block_size + 1) : (i + 1) * (block_size + 1)] for i in range(n)]
    return [(w[:-1], w[1:]) for w in windows]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def test_txt_packing_and_val_split(tmp_path):
    text = "".join(f"line {i}: the cat sat on the mat, ünïcödé {i * i}\n" for i in range(40))
    stream = list(text.encode("utf-8"))
    dm = TextDataModule(write(tmp_path / "c.txt", text), val_fraction=0.25, block_size=8, batch_size=5)
    assert dm.data_info == {
        "kind": "text", "vocab_size": 259, "tokenizer": "byte",
        "pad_id": 256, "bos_id": 257, "eos_id": 258, "block_size": 8,
    }
    assert dm.max_len == 8 and isinstance(dm.tokenizer, ByteTokenizer)
    dm.setup("fit")
    n_val = round(len(stream) * 0.25)
    train, val = stream[: len(stream) - n_val], stream[len(stream) - n_val :]

    got = rows(dm.train_dataloader())
    expected = blocks_by_hand(train, 8)
    assert len(got) == len(train) // 9
    assert sorted(got) == sorted(expected)
    for x, y in got:
        assert x[1:] == y[:-1]  # labels are the inputs shifted by one
    # validation is the contiguous tail, in order, starting right at the split point
    val_rows = rows(dm.val_dataloader())
    assert val_rows == blocks_by_hand(val, 8)
    assert val_rows[0][0][:8] == stream[len(stream) - n_val : len(stream) - n_val + 8]
    assert rows(dm.test_dataloader()) == val_rows  # no test_path: test = validation
    assert dm.val_bytes_per_token == 1.0


def test_train_is_shuffled(tmp_path):
    text = "abcdefghij" * 200
    dm = TextDataModule(write(tmp_path / "c.txt", text), block_size=4, batch_size=400)
    dm.setup("fit")
    torch.manual_seed(0)
    first = rows(dm.train_dataloader())
    assert first != blocks_by_hand(list(text.encode())[: len(text) - 200], 4)


def test_folder_recursive_sorted_with_separators(tmp_path):
    root = tmp_path / "corpus"
    write(root / "b" / "2.txt", "second file\n")
    write(root / "a.txt", "first file\n")
    write(root / "c" / "d" / "3.txt", "third — file")
    write(root / "c" / "empty.txt", "")
    write(root / "notes.md", "not text corpus")
    val = write(tmp_path / "val.txt", "held out text, long enough")
    dm = TextDataModule(str(root), val_path=val, block_size=4)
    with pytest.warns(UserWarning, match=r"1 file\(s\) under .*corpus not read \(\.md x1\)"):
        streams = dm.token_streams()
    expected = list(b"first file\n") + [EOS] + list(b"second file\n") + [EOS] + list("third — file".encode())
    assert streams["train"].tolist() == expected
    assert streams["val"].tolist() == list(b"held out text, long enough")
    assert rows(dm.val_dataloader()) == blocks_by_hand(streams["val"].tolist(), 4)
    # separators count as tokens but carry no bytes
    assert dm.val_bytes_per_token == 1.0


def test_hidden_text_files_of_a_corpus_folder_are_skipped_and_counted(tmp_path):
    """A notebook's .ipynb_checkpoints copy of a corpus file would train on that text twice: hidden files and
    folders are skipped, and a warning counts them."""
    import pytest

    root = tmp_path / "corpus"
    write(root / "a.txt", "first file\n")
    write(root / ".ipynb_checkpoints" / "a-checkpoint.txt", "first file\n")
    write(root / ".notes.txt", "private")
    with pytest.warns(UserWarning, match=r"2 hidden file\(s\) under .* not read as text"):
        dm = TextDataModule(str(root), val_path=write(tmp_path / "val.txt", "held out text"), block_size=4)
        streams = dm.token_streams()
    assert streams["train"].tolist() == list(b"first file\n")


def test_files_of_a_corpus_folder_that_are_not_txt_are_counted_not_skipped_silently(tmp_path):
    """A folder corpus reads its .txt files (README): shards named .jsonl, a .md or files without a suffix were left
    out without a word (a corpus of 'part-00000' files trained on nothing but the one .txt beside them). The warning
    counts them by suffix; a folder with no .txt at all is refused naming what it holds."""
    root = tmp_path / "corpus"
    write(root / "a.txt", "first file\n")
    write(root / "b.jsonl", '{"text": "a document"}\n')
    write(root / "sub" / "c.jsonl", '{"text": "another"}\n')
    write(root / "README.md", "# notes")
    write(root / "part-00000", "more text")
    with pytest.warns(UserWarning, match=r"data\.train_path: 4 file\(s\) under .*corpus not read "
                                         r"\(\.jsonl x2, \.md x1, no suffix x1\): a corpus folder reads its \.txt"):
        dm = TextDataModule(str(root), val_path=write(tmp_path / "val.txt", "held out text"), block_size=4)
        streams = dm.token_streams()
    assert streams["train"].tolist() == list(b"first file\n")
    (root / "a.txt").unlink()
    with pytest.raises(ValueError, match=r"holds no \.txt files \(searched recursively\) \(only 4 other file\(s\): "
                                         r"\.jsonl x2, \.md x1, no suffix x1\)"):
        TextDataModule(str(root)).setup("fit")


def test_jsonl_and_test_path(tmp_path):
    records = [{"text": "alpha beta"}, {"text": "ümlaut\u2028line"}, {"text": "", "id": 3}, {"text": "gamma", "x": 1}]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path = write(tmp_path / "d.jsonl", "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")
    test = write(tmp_path / "t.txt", "test text here")
    dm = TextDataModule(path, val_path=write(tmp_path / "v.jsonl", '{"text": "v1"}\n{"text": "v2"}'),
                        test_path=test, block_size=2)
    s = dm.token_streams()
    assert s["train"].tolist() == list(b"alpha beta") + [EOS] + list("ümlaut\u2028line".encode()) + [EOS] + list(b"gamma")
    assert s["val"].tolist() == list(b"v1") + [EOS] + list(b"v2")
    assert s["test"].tolist() == list(b"test text here")
    assert rows(dm.test_dataloader()) == blocks_by_hand(list(b"test text here"), 2)
    # bytes per token with a separator: 4 bytes over 5 tokens
    assert dm.val_bytes_per_token == pytest.approx(4 / 5)


def test_bpe_datamodule(tmp_path):
    train_text = "the rain in spain stays mainly in the plain. " * 60
    val_text = "the plain rain in spain."
    dm = TextDataModule(write(tmp_path / "tr.txt", train_text), val_path=write(tmp_path / "va.txt", val_text),
                        tokenizer="bpe", bpe_vocab_size=300, block_size=4)
    info = dm.data_info  # available right after construction
    assert json.loads(json.dumps(info)) == info
    assert info["tokenizer"] == "bpe" and 259 < info["vocab_size"] <= 300
    assert (info["pad_id"], info["bos_id"], info["eos_id"]) == (0, 1, 2)
    assert isinstance(dm.tokenizer, BPETokenizer)
    s = dm.token_streams()
    assert dm.tokenizer.decode(s["train"]) == train_text
    assert dm.tokenizer.decode(s["val"]) == val_text
    assert dm.val_bytes_per_token == pytest.approx(len(val_text.encode()) / len(s["val"]))
    assert dm.val_bytes_per_token > 1.5  # merges happened
    # every evaluation epoch asks again: the per-id byte counts are computed once per split, not each time
    calls = []
    lengths = dm.tokenizer.token_byte_lengths
    dm.tokenizer.token_byte_lengths = lambda: calls.append(1) or lengths()
    dm._bytes_per_token.clear()  # forget the ratio the assertions above computed
    assert [dm.bytes_per_token("val") for _ in range(3)] == [pytest.approx(len(val_text.encode()) / len(s["val"]))] * 3
    dm.bytes_per_token("train")
    assert len(calls) == 2


def test_tokenizer_folder_spec(tmp_path):
    ByteTokenizer().save(tmp_path / "exported")
    dm = TextDataModule(write(tmp_path / "c.txt", "x" * 50), tokenizer=str(tmp_path / "exported"), block_size=4)
    assert isinstance(dm.tokenizer, ByteTokenizer)


def test_tokenizer_spec_takes_a_runs_checkpoint_as_finetune_yaml_passes_it(tmp_path):
    """configs/lm/finetune.yaml sets data.tokenizer to model.init_args.pretrained, which takes a run's .ckpt (read as
    its export): the data refused it ('is a file; pass the folder'). Reference: the BPE the run was trained with."""
    import lightning as L

    from zoo.tasks.lm import LanguageModelTask

    text = "the rain in spain stays mainly in the plain. " * 40
    dm = TextDataModule(write(tmp_path / "tr.txt", text), tokenizer="bpe", bpe_vocab_size=300, block_size=8)
    task = LanguageModelTask(arch="lm-diff-tiny", model_args={"dim": 16, "n_layers": 1, "n_heads": 2},
                             data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, max_steps=1, limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    again = TextDataModule(write(tmp_path / "new.txt", "plain rain " * 20), tokenizer=str(tmp_path / "run.ckpt"),
                           block_size=8)
    held_out = "Spain's  rain, 😀 naïve\r\n plains"
    assert isinstance(again.tokenizer, BPETokenizer) and again.tokenizer.vocab_size == dm.tokenizer.vocab_size
    assert again.tokenizer.encode(held_out) == dm.tokenizer.encode(held_out)


def test_predict_prompts(tmp_path):
    dm = TextDataModule(str(tmp_path / "unused.txt"), prompts=["Once upon", "ROMEO:"])
    dm.setup("predict")  # predict does not read the corpus
    # data.batch_size prompts per batch (generate pads them together)
    assert list(dm.predict_dataloader()) == [{"prompt": ["Once upon", "ROMEO:"]}]
    one = TextDataModule(str(tmp_path / "unused.txt"), prompts=["Once upon", "ROMEO:", "a"], batch_size=2)
    assert list(one.predict_dataloader()) == [{"prompt": ["Once upon", "ROMEO:"]}, {"prompt": ["a"]}]
    assert list(TextDataModule("x.txt").predict_dataloader()) == [{"prompt": ["\n"]}]
    # one string is one prompt (as generate takes it), not one prompt per character
    assert list(TextDataModule("x.txt", prompts="ROMEO:").predict_dataloader()) == [{"prompt": ["ROMEO:"]}]


def test_bad_input_errors(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"data\.train_path: .*nope\.txt does not exist; point it at a \.txt"):
        TextDataModule(str(missing)).setup("fit")
    good = write(tmp_path / "good.txt", "y" * 100)
    with pytest.raises(FileNotFoundError, match=r"data\.val_path: .*vnope\.txt does not exist"):
        TextDataModule(good, val_path=str(tmp_path / "vnope.txt"), block_size=4).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"data\.test_path: .*tnope does not exist"):
        TextDataModule(good, test_path=str(tmp_path / "tnope"), block_size=4).setup("fit")
    with pytest.raises(ValueError, match=r"empty\.txt is empty"):
        TextDataModule(write(tmp_path / "empty.txt", "")).setup("fit")
    (tmp_path / "nofiles").mkdir()
    write(tmp_path / "nofiles" / "x.csv", "a,b")
    with pytest.raises(ValueError, match="holds no .txt files"):
        TextDataModule(str(tmp_path / "nofiles")).setup("fit")
    write(tmp_path / "blank" / "a.txt", "")
    with pytest.raises(ValueError, match="every .txt file under .*blank is empty"):
        TextDataModule(str(tmp_path / "blank")).setup("fit")
    bad = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": "unterminated\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        TextDataModule(bad).setup("fit")
    notext = write(tmp_path / "notext.jsonl", '{"text": "a"}\n\n{"body": "b"}\n')
    with pytest.raises(ValueError, match=r"notext\.jsonl, line 3: expected a JSON object with a 'text' field"):
        TextDataModule(notext).setup("fit")
    numtext = write(tmp_path / "num.jsonl", '{"text": 5}\n')
    with pytest.raises(ValueError, match=r"num\.jsonl, line 1: 'text' is int"):
        TextDataModule(numtext).setup("fit")
    # JSON may escape half of a surrogate pair (a scraped emoji cut in two), which no UTF-8 text holds: the
    # tokenizer failed deep inside with "surrogates not allowed", naming neither the file nor the line
    cut = write(tmp_path / "cut.jsonl", '{"text": "fine"}\n{"text": "emoji \\ud83d cut"}\n')
    for tok in ("byte", "bpe"):
        with pytest.raises(ValueError, match=r"cut\.jsonl, line 2: 'text' holds a lone surrogate \\ud83d at character 6"):
            TextDataModule(cut, tokenizer=tok, block_size=2).setup("fit")
    with pytest.raises(ValueError, match=r"has suffix '\.csv'"):
        TextDataModule(write(tmp_path / "c.csv", "a,b")).setup("fit")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not valid UTF-8.*re-encode it as UTF-8"):
        TextDataModule(str(tmp_path / "latin1.txt")).setup("fit")
    short = write(tmp_path / "short.txt", "z" * 100)  # 90 train / 10 val tokens
    with pytest.raises(ValueError, match=r"training split has 90 tokens but one block needs block_size \+ 1 = 257; lower data\.block_size"):
        TextDataModule(short).setup("fit")
    with pytest.raises(ValueError, match=r"validation split has 10 tokens but one block needs block_size \+ 1 = 17; lower data\.block_size .*val_fraction"):
        TextDataModule(short, block_size=16).setup("fit")
    with pytest.raises(ValueError, match=r"data\.val_fraction must be in \(0, 1\)"):
        TextDataModule(short, val_fraction=0.0)
    with pytest.raises(ValueError, match=r"data\.block_size must be an integer >= 1"):
        TextDataModule(short, block_size=0)
    with pytest.raises(ValueError, match="unknown tokenizer 'sentencepiece'"):
        _ = TextDataModule(short, tokenizer="sentencepiece").data_info


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data not present (CI provides it)")
def test_tinyshakespeare_byte_counts(tmp_path):
    raw = SHAKESPEARE.read_bytes()
    dm = TextDataModule(str(SHAKESPEARE), block_size=256, val_fraction=0.1)
    s = dm.token_streams()
    assert len(s["train"]) + len(s["val"]) == len(raw)  # one document: no separators
    assert s["val"].tolist()[:1000] == list(raw[len(s["train"]) : len(s["train"]) + 1000])
    assert len(dm._dataset("train")) == len(s["train"]) // 257
    assert dm.val_bytes_per_token == 1.0
    # the same text as two documents gains exactly one separator
    text = raw.decode("utf-8")
    cut = text.index("\n", len(text) // 2) + 1
    write(tmp_path / "two" / "part1.txt", text[:cut])
    write(tmp_path / "two" / "part2.txt", text[cut:])
    s2 = TextDataModule(str(tmp_path / "two"), val_path=str(SHAKESPEARE)).token_streams()
    assert len(s2["train"]) == len(raw) + 1
    assert s2["train"][len(text[:cut].encode())] == EOS


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data not present (CI provides it)")
def test_tinyshakespeare_bpe_is_lossless():
    text = SHAKESPEARE.read_text(encoding="utf-8")
    dm = TextDataModule(str(SHAKESPEARE), tokenizer="bpe", bpe_vocab_size=512, block_size=256)
    s = dm.token_streams()
    tok = dm.tokenizer
    assert dm.data_info["vocab_size"] == tok.vocab_size <= 512
    assert tok.decode(s["train"]) + tok.decode(s["val"]) == text  # ASCII text: a split cannot cut a character
    n_val_bytes = len(tok.decode(s["val"]).encode("utf-8"))
    assert dm.val_bytes_per_token == pytest.approx(n_val_bytes / len(s["val"]))
    assert 1.5 < dm.val_bytes_per_token < 4


def test_byte_order_marks_and_upper_case_suffixes(tmp_path):
    """Notepad's UTF-8 files start with a byte-order mark (no text); `.TXT` is a text file too."""
    from zoo.data.text import read_documents

    (tmp_path / "a.txt").write_bytes("\ufeffthe king".encode("utf-8"))
    (tmp_path / "B.TXT").write_text("a fool", encoding="utf-8")
    assert read_documents(str(tmp_path)) == ["a fool", "the king"]  # sorted by path: B.TXT, a.txt
    assert read_documents(str(tmp_path / "B.TXT")) == ["a fool"]
    (tmp_path / "c.jsonl").write_bytes('\ufeff{"text": "his horse"}\n'.encode("utf-8"))
    assert read_documents(str(tmp_path / "c.jsonl")) == ["his horse"]


def test_documents_start_with_bos_when_the_tokenizer_puts_bos_in_front_of_a_text(monkeypatch):
    """A Llama-style tokenizer (post-processor "<s> $A") gets BOS in front of every prompt at generation; a model
    trained on it must have seen documents start that way: each document is encoded as the tokenizers library
    encodes it with its special tokens (Hugging Face's language-modelling recipe), the documents joined by eos."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    import zoo.data.text as text_mod
    from zoo.data.text import encode_corpus
    from zoo.data.tokenizers import HFTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate("the king a fool his horse".split())}}
    docs = ["the king\na fool\nthe fool", "his horse"]
    for template in (None, "<s> $A"):
        backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        if template:
            backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=[("<s>", 1)])
        tok = HFTokenizer(backend, bos_id=1, eos_id=2, pad_id=None)
        monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 8)  # several pieces per document: BOS once, at its start
        stream = encode_corpus(tok, docs).tolist()
        assert stream == backend.encode(docs[0]).ids + [2] + backend.encode(docs[1]).ids
        assert (stream[0] == 1) == bool(template) and stream.count(1) == (2 if template else 0)


def test_long_document_with_a_llama_style_tokenizer_gets_no_spurious_spaces(monkeypatch):
    """A converted Llama/Mistral tokenizer prepends "▁" (a space) to every text it encodes; a long document
    encoded in pieces would get a space at every piece boundary. The stream must be the document's own ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import zoo.data.text as text_mod
    from zoo.data.text import encode_corpus
    from zoo.data.tokenizers import HFTokenizer

    doc = "\n".join(f"the king speaks to a fool {i}" for i in range(40))
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    backend.train_from_iterator([doc], trainer)
    tok = HFTokenizer(backend, bos_id=1, eos_id=2, pad_id=None)
    monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 100)  # pieces of ~100 characters: several per document
    stream = encode_corpus(tok, [doc, "his horse"]).tolist()
    assert stream == tok.encode(doc) + [2] + tok.encode("his horse")
    assert tok.decode(stream[: len(tok.encode(doc))]) == doc


def test_long_document_with_a_byte_level_hf_tokenizer_is_still_encoded_in_parallel_pieces(monkeypatch):
    """A converted GPT-2 / Qwen2-style (byte-level, no prepended space) tokenizer encodes a piece as it would in
    context, so a long document keeps being split into line-aligned pieces for the parallel batch API (a 100 MB
    document encoded whole is single-threaded and takes several GB more memory), with the same stream."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import zoo.data.text as text_mod
    from zoo.data.text import encode_corpus
    from zoo.data.tokenizers import HFTokenizer

    doc = "\n".join(f"the king speaks to a fool {i}" for i in range(40))
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([doc], trainer)
    tok = HFTokenizer(backend, bos_id=0, eos_id=0, pad_id=None)
    monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 100)
    batches = []
    encode_batch = tok.encode_batch
    monkeypatch.setattr(tok, "encode_batch", lambda texts: batches.append(list(texts)) or encode_batch(texts))
    stream = encode_corpus(tok, [doc, "his horse"]).tolist()
    assert stream == tok.encode(doc) + [0] + tok.encode("his horse")
    assert len(batches[-1]) > 2, "the long document was encoded whole"


def test_long_document_with_indented_lines_is_encoded_as_the_whole_document(monkeypatch):
    """Byte-level BPE pre-tokenizes a newline together with the spaces that follow it ("\\n   " is one piece
    before " b"), so cutting a long document right after a newline that starts an indented line changed its
    tokens (["\\n"], ["   "] instead of ["\\n   "]). The parallel pieces must give the document's own ids."""
    import zoo.data.text as text_mod
    from zoo.data.text import encode_corpus

    doc = "\n".join(("    " if i % 3 else "") + f"the king {i}" for i in range(60)) + "\n\n  \n\tend\n"
    tok = BPETokenizer.train([doc], 300)
    monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 100)
    pieces = list(text_mod._line_chunks(doc))
    assert len(pieces) > 1 and "".join(pieces) == doc  # still split, losslessly
    assert encode_corpus(tok, [doc, "his horse"]).tolist() == tok.encode(doc) + [2] + tok.encode("his horse")


def test_long_crlf_document_with_blank_lines_is_encoded_as_the_whole_document(monkeypatch):
    """A whitespace run that ends a piece is one pre-token ("\\r\\n" at the end of a text), while inside the document
    byte-level BPE splits it before its last character ("\\r", "\\n" before a word): cutting a CRLF (or
    blank-line, or trailing-space) document after its newlines gave other tokens than the document's own.
    Reference: the `tokenizers` library encoding the whole document."""
    import zoo.data.text as text_mod
    from zoo.data.text import encode_corpus

    doc = "".join(f"KING {i}:\r\nsaid so. \nand more\nor less\n\n\nQUEEN:\r\nno\r\n\r\n" for i in range(40))
    tok = BPETokenizer.train([doc], 300)
    monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 50)
    pieces = list(text_mod._line_chunks(doc))
    assert len(pieces) > 1 and "".join(pieces) == doc  # still split, losslessly
    assert encode_corpus(tok, [doc, "his horse"]).tolist() == tok.backend.encode(doc).ids + [2] + tok.encode("his horse")


def test_hidden_folders_linking_back_are_walked_once(tmp_path):
    """Hidden folders are walked (to count what is skipped) with the same once-per-real-folder rule as the rest:
    two hidden links back to the corpus root made the count walk retrace the tree 2^40 times (it never ended),
    and a hidden link to a folder that is read reported its files as skipped."""
    import threading

    from zoo.data.files import walk_files

    root = tmp_path / "corpus"
    write(root / "data" / "a.txt", "first file\n")
    write(root / ".ipynb_checkpoints" / "a-checkpoint.txt", "first file\n")
    (root / ".s1").symlink_to(root, target_is_directory=True)
    (root / ".s2").symlink_to(root, target_is_directory=True)
    (root / ".ipynb_checkpoints" / "data").symlink_to(root / "data", target_is_directory=True)
    result: dict = {}

    def walk():
        hidden: list = []
        result["files"], result["hidden"] = walk_files(root, hidden), hidden

    t = threading.Thread(target=walk, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "walk_files with a hidden list did not finish"
    assert result["files"] == [root / "data" / "a.txt"]
    assert result["hidden"] == [root / ".ipynb_checkpoints" / "a-checkpoint.txt"]


def test_a_link_to_nothing_in_a_corpus_folder_is_named_not_skipped_silently(tmp_path):
    """A .txt linked in from a folder since moved was left out without a word (the corpus shrank silently)."""
    from zoo.data.text import read_documents

    root = tmp_path / "corpus"
    write(root / "a.txt", "first file\n")
    (root / "b.txt").symlink_to(tmp_path / "moved" / "b.txt")
    (root / ".c.txt").symlink_to(tmp_path / "moved" / "c.txt")  # hidden: left out as every hidden file is
    with pytest.warns(UserWarning, match=r"1 link\(s\) under .*corpus point to nothing and are skipped: .*b\.txt$"):
        docs = read_documents(root)
    assert docs == ["first file\n"]


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data not present (CI provides it)")
@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_a_corpus_is_tokenized_batch_by_batch_into_the_same_stream(monkeypatch, kind):
    """A 1 GB corpus was encoded in one call and held as Python lists of ints (8 bytes a token, plus ~32 for every id
    above 256) and the tokenizer's encodings until the int32 stream was built: ~36x the corpus's size in RAM for a
    BPE (measured: 1.8 GB for 50 MB of text). Batches of pieces become int32 arrays one at a time now; the stream is
    the naive one (each document encoded whole, eos between documents)."""
    import tracemalloc

    import zoo.data.text as text_mod
    from zoo.data.text import encode_corpus

    text = SHAKESPEARE.read_text(encoding="utf-8")[:300_000]
    tok = ByteTokenizer() if kind == "byte" else BPETokenizer.train([text[:50_000]], 600)
    docs = [text[k : k + 60_000] for k in range(0, len(text), 60_000)] + ["", "a fool", "x\n\n y"]
    monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 4_000)
    monkeypatch.setattr(text_mod, "_BATCH_CHARS", 20_000, raising=False)  # batches end inside documents and between them
    naive = []
    for d in (d for d in docs if d):
        naive += ([tok.eos_id] if naive else []) + tok.encode(d)
    tracemalloc.start()
    try:
        stream = encode_corpus(tok, docs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stream.dtype == np.int32 and stream.tolist() == naive
    # the stream, its final join and one batch (old code: 3.3x for bytes, 8x for this BPE)
    assert peak < (2.6 if kind == "byte" else 4.0) * stream.nbytes, peak / stream.nbytes


def test_bytes_per_token_of_a_large_split_reads_its_stream_a_slice_at_a_time(tmp_path, monkeypatch):
    """The per-token byte lengths of a whole split were gathered into one int64 array (8 bytes a token: 8 GB at the
    first validation of a 1 GB byte-level validation split); the ratio is the same counted a slice at a time."""
    import tracemalloc

    import zoo.data.text as text_mod

    val = tmp_path / "val"
    val.mkdir()
    docs = ["né " * 20_000, "plain text\n" * 3_000, "日本 " * 5_000]
    for i, d in enumerate(docs):
        (val / f"{i}.txt").write_text(d, encoding="utf-8")
    dm = TextDataModule(write(tmp_path / "tr.txt", "abc " * 100), val_path=str(val), block_size=8)
    stream = dm.token_streams()["val"]
    monkeypatch.setattr(text_mod, "_BATCH_CHARS", 10_000)
    tracemalloc.start()
    try:
        ratio = dm.bytes_per_token("val")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    assert ratio == pytest.approx(nbytes / (nbytes + 2))  # two eos separators, no bytes
    assert peak < stream.nbytes / 2, peak / stream.nbytes


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data not present (CI provides it)")
def test_bpe_is_trained_on_line_pieces_into_the_vocabulary_of_the_whole_documents(tmp_path, monkeypatch):
    """tokenizer: bpe fed the trainer each document whole: a one-file corpus of 10 MB took ~1 GB more memory to train
    (a 1 GB corpus: ~100 GB) and ran single-threaded. The trainer gets line-aligned pieces now; the vocabulary and
    merges are those trained on the whole documents."""
    import zoo.data.text as text_mod

    text = SHAKESPEARE.read_text(encoding="utf-8")
    folder = tmp_path / "corpus"
    folder.mkdir()
    docs = [text[:40_000], text[40_000:70_000], "  indented\n\tlines\r\nand crlf\n\n  " * 80]  # no cut: one piece
    for i, d in enumerate(docs):
        (folder / f"{i}.txt").write_text(d, encoding="utf-8", newline="")
    monkeypatch.setattr(text_mod, "_CHUNK_CHARS", 2_000)
    real, fed = BPETokenizer.train.__func__, []

    def spy(cls, texts, vocab_size, min_frequency=2):
        texts = list(texts)
        fed.extend(len(t) for t in texts)
        return real(cls, texts, vocab_size, min_frequency)

    monkeypatch.setattr(BPETokenizer, "train", classmethod(spy))
    tok = TextDataModule(str(folder), tokenizer="bpe", bpe_vocab_size=500).tokenizer
    assert sum(fed) == sum(map(len, docs)) and max(fed) < 3_000
    assert tok.backend.to_str() == real(BPETokenizer, docs, 500).backend.to_str()
