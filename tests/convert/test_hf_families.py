"""More Hugging Face families (Mistral, Qwen2, biased Llama, RoBERTa), ``.bin`` weights, the model's own
tokenizer, and ``convert_hf`` / ``python -m zoo convert`` feeding the adapter configs.

The reference is ``transformers`` / ``tokenizers`` themselves, never zoo's own earlier output.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402  (a dev dependency)

import zoo  # noqa: E402
from zoo.convert import convert_hf, from_hf, from_hf_bert, from_hf_llama, to_hf_bert, to_hf_llama  # noqa: E402
from zoo.models.lm import DiffTransformerLM  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def _randomize(model: torch.nn.Module) -> None:
    """HF inits norms to 1 and biases to 0: randomize them so the map of every tensor matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or name.endswith("bias"):
                p.normal_(0.0, 0.2).add_(1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0)


DECODER_KW = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _decoder(tmp_path, cls_name: str, **over):
    torch.manual_seed(0)
    cfg_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
    cfg = cfg_cls(**{**DECODER_KW, **over})
    model = getattr(transformers, cls_name)(cfg).eval()
    _randomize(model)
    folder = tmp_path / cls_name
    model.save_pretrained(folder)
    return model, folder


def _compare_decoder(hf, ours, vocab=97, T=11):
    ids = torch.randint(0, vocab, (2, T))
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, T - 3:] = 0  # right padding on the second row
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, : T - 3], ref[1, : T - 3], atol=1e-4, rtol=1e-4)
    return ids


@pytest.mark.parametrize(
    "cls_name, over, bias",
    [
        ("MistralForCausalLM", {"sliding_window": None}, False),
        ("Qwen2ForCausalLM", {"tie_word_embeddings": True}, "qkv"),
        ("LlamaForCausalLM", {"attention_bias": True}, True),
    ],
)
def test_decoder_families_match_and_round_trip(tmp_path, cls_name, over, bias):
    hf, folder = _decoder(tmp_path, cls_name, **over)
    ours = from_hf_llama(folder)
    assert ours.config.attn_bias == bias
    ids = _compare_decoder(hf, ours)
    back = to_hf_llama(ours, tmp_path / "back", model_type=hf.config.model_type)
    assert json.loads((back / "config.json").read_text())["architectures"] == [cls_name]
    hf2 = getattr(transformers, cls_name).from_pretrained(back).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf2(input_ids=ids).logits, hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls_name, over", [("LlamaForCausalLM", {}),
                                             ("Qwen2ForCausalLM", {"tie_word_embeddings": True})])
def test_parameter_count_device_and_dtype_as_transformers_gives_them(tmp_path, cls_name, over):
    """A converted model answers transformers' ``num_parameters(only_trainable, exclude_embeddings)``, ``device`` and
    ``dtype`` as the source model does (zoo models had only their own ``num_params()``: an AttributeError for code
    written against transformers): the tied head counted once, frozen embeddings left out of the trainable count,
    the dtype after ``.to(torch.bfloat16)``."""
    hf, folder = _decoder(tmp_path, cls_name, **over)
    ours = from_hf_llama(folder)
    hf.get_input_embeddings().weight.requires_grad_(False)
    ours.embed.weight.requires_grad_(False)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            assert ours.num_parameters(only_trainable, exclude_embeddings) == hf.num_parameters(
                only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
    assert ours.num_parameters() == ours.num_params() != ours.num_parameters(exclude_embeddings=True)
    assert ours.device == hf.device and ours.dtype == hf.dtype == torch.float32
    assert ours.to(torch.bfloat16).dtype == hf.to(torch.bfloat16).dtype == torch.bfloat16
    ids = torch.randint(0, 97, (1, 3)).to(ours.device)  # the transformers idiom
    assert ours(ids).dtype == torch.bfloat16


def test_mistral_sliding_window_caps_the_context(tmp_path, caplog):
    hf, folder = _decoder(tmp_path, "MistralForCausalLM", sliding_window=16)
    with caplog.at_level("WARNING"):
        ours = from_hf_llama(folder)
    assert ours.config.max_seq_len == 16 and "sliding_window=16" in caplog.text
    _compare_decoder(hf, ours, T=16)  # inside the window full attention is exact
    with pytest.raises(ValueError, match="max_seq_len"):
        ours(torch.zeros(1, 17, dtype=torch.long))
    # the window travels with the export: raising max_seq_len past it (a runtime field) would attend fully where
    # Mistral slides, silently other logits than the original's from token 17 on; below it is fine
    ours.save_pretrained(tmp_path / "export")
    assert zoo.load_pretrained(tmp_path / "export").config.attn_window == 16
    with pytest.raises(ValueError, match=r"max_seq_len \(32\) exceeds attn_window \(16\)"):
        zoo.load_pretrained(tmp_path / "export", max_seq_len=32)
    assert zoo.load_pretrained(tmp_path / "export", max_seq_len=8).config.max_seq_len == 8


@pytest.mark.parametrize("max_window_layers, sliding", [(1, True), (2, False)])
def test_qwen2_sliding_window_caps_only_when_a_layer_slides(tmp_path, max_window_layers, sliding):
    """Qwen2 slides on layers >= max_window_layers: with none sliding it is full attention at any length."""
    hf, folder = _decoder(tmp_path, "Qwen2ForCausalLM", use_sliding_window=True, sliding_window=8,
                          max_window_layers=max_window_layers)
    ours = from_hf_llama(folder)
    if sliding:
        assert ours.config.max_seq_len == 8
        _compare_decoder(hf, ours, T=8)
    else:
        assert ours.config.max_seq_len == 64
        _compare_decoder(hf, ours, T=20)


def test_to_hf_refuses_a_bias_layout_the_family_lacks(tmp_path):
    _, folder = _decoder(tmp_path, "Qwen2ForCausalLM")
    with pytest.raises(ValueError, match="attn_bias='qkv'.*llama"):
        to_hf_llama(from_hf_llama(folder), tmp_path / "out", model_type="llama")


def test_roberta_hidden_states_match_and_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, max_position_embeddings=42, type_vocab_size=1,
                                     pad_token_id=1)
    hf = transformers.RobertaModel(cfg, add_pooling_layer=True).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path / "rob")
    ours = from_hf_bert(tmp_path / "rob")
    assert ours.config.pos_offset == 2 and ours.config.max_seq_len == 40
    ids = torch.randint(3, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    ids[0, 6:] = 1  # RoBERTa pads with pad_token_id
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask)
    m = mask.bool()
    torch.testing.assert_close(got[m], ref[m], atol=1e-4, rtol=1e-4)
    back = to_hf_bert(ours, tmp_path / "back")
    assert json.loads((back / "config.json").read_text())["model_type"] == "roberta"
    hf2 = transformers.RobertaModel.from_pretrained(back).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf2(input_ids=ids, attention_mask=mask).last_hidden_state[m], ref[m],
                                   atol=1e-5, rtol=1e-5)


def test_roberta_left_padded_batch_matches(tmp_path):
    """RoBERTa's positions count non-pad tokens from pad_token_id + 1, so left padding shifts them."""
    torch.manual_seed(0)
    cfg = transformers.RobertaConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, max_position_embeddings=42, type_vocab_size=1,
                                     pad_token_id=1)
    hf = transformers.RobertaModel(cfg).eval()
    _randomize(hf)
    hf.save_pretrained(tmp_path / "rob")
    ours = from_hf_bert(tmp_path / "rob")
    ids = torch.randint(3, 101, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0
    ids[0, :3] = 1  # left padding with pad_token_id
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(ids, attention_mask=mask)
    m = mask.bool()
    torch.testing.assert_close(got[m], ref[m], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sharded", [False, True])
def test_pytorch_bin_weights(tmp_path, sharded):
    hf, folder = _decoder(tmp_path, "LlamaForCausalLM")
    (folder / "model.safetensors").unlink()
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    if sharded:
        names = sorted(state)
        half = len(names) // 2
        parts = {"pytorch_model-00001-of-00002.bin": names[:half], "pytorch_model-00002-of-00002.bin": names[half:]}
        for fname, keys in parts.items():
            torch.save({k: state[k] for k in keys}, folder / fname)
        index = {"metadata": {}, "weight_map": {k: f for f, ks in parts.items() for k in ks}}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    _compare_decoder(hf, from_hf_llama(folder))


@pytest.mark.parametrize("tied", [False, True])
def test_sharded_safetensors_as_transformers_writes_them(tmp_path, tied):
    """``save_pretrained(max_shard_size=...)`` writes ``model-0000i-of-0000n.safetensors`` and
    ``model.safetensors.index.json``: the shards convert to transformers' logits; a shard the index lists and the
    folder lacks, or a folder without config.json, is an error naming the file."""
    import shutil

    hf, single = _decoder(tmp_path, "Qwen2ForCausalLM", tie_word_embeddings=tied)
    folder = tmp_path / "sharded"
    hf.save_pretrained(folder, max_shard_size="20KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and (folder / "model.safetensors.index.json").is_file()
    assert not (folder / "model.safetensors").exists()
    ours = from_hf_llama(folder)
    assert ours.config.tie_embeddings == tied
    _compare_decoder(hf, ours)
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=rf"shards listed in .*index\.json are missing: .*{shards[1].name}"):
        from_hf_llama(folder)
    bare = shutil.copytree(single, tmp_path / "no_config")
    (bare / "config.json").unlink()
    for fn in (from_hf, lambda f: convert_hf(f, tmp_path / "out")):
        with pytest.raises(FileNotFoundError, match=r"no_config/config\.json not found: give a local Hugging Face"):
            fn(bare)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("same_head", [True, False])
def test_tied_checkpoint_that_stores_the_head(tmp_path, same_head):
    """``torch.save(model.state_dict())`` of a tied model keeps ``lm_head.weight``; transformers ties it when it
    equals the embedding and keeps a separate head when it differs: the converted model gives its logits."""
    hf, folder = _decoder(tmp_path, "Qwen2ForCausalLM", tie_word_embeddings=True)
    (folder / "model.safetensors").unlink()
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    assert "lm_head.weight" in state
    if not same_head:
        state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])
    torch.save(state, folder / "pytorch_model.bin")
    ref = transformers.Qwen2ForCausalLM.from_pretrained(folder).eval()
    ours = from_hf_llama(folder)
    assert ours.config.tie_embeddings == same_head
    _compare_decoder(ref, ours)


def test_corrupt_bin_is_named(tmp_path):
    _, folder = _decoder(tmp_path, "LlamaForCausalLM")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="pytorch_model.bin could not be read"):
        from_hf_llama(folder)


def test_corrupt_safetensors_is_named(tmp_path):
    _, folder = _decoder(tmp_path, "LlamaForCausalLM")
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:300])  # truncated
    with pytest.raises(ValueError, match="model.safetensors could not be read as safetensors .*corrupt or truncated"):
        from_hf_llama(folder)


def _word_tokenizer(folder: pathlib.Path, vocab_size: int = 97) -> None:
    """A tiny Hugging Face fast tokenizer: 'w<i>' words, whitespace split, with <s> / </s> / <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))


def test_converted_export_carries_the_tokenizer_and_feeds_the_adapter_config(tmp_path):
    from zoo.cli import main
    from zoo.data.tokenizers import load_tokenizer
    from zoo.hub import load_pretrained

    hf, folder = _decoder(tmp_path, "LlamaForCausalLM")
    _word_tokenizer(folder)
    export = tmp_path / "export"
    main(["convert", str(folder), str(export)])
    model = load_pretrained(export)
    text = "w5 w17 w96 w3"
    assert model.tokenizer.encode(text, add_bos=True) == [1, 5, 17, 96, 3]
    assert load_tokenizer(export).eos_id == 2 and load_tokenizer(folder).eos_id == 2  # HF folder read directly
    ids = torch.tensor([[1, 5, 17, 96, 3]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(SystemExit, match="not empty.*--overwrite"):
        main(["convert", str(folder), str(export)])  # nothing is overwritten
    (export / "stale.txt").write_text("mine")
    main(["convert", str(folder), str(export), "--overwrite"])  # as `python -m zoo export --overwrite`
    assert (export / "stale.txt").read_text() == "mine"  # only the export's own files are replaced
    assert load_pretrained(export).tokenizer.encode(text, add_bos=True) == [1, 5, 17, 96, 3]

    # configs/lm/adapt_dex.yaml reads the tokenizer from `pretrained` (no data.tokenizer by hand)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(f"w{(7 * i + j) % 94 + 3}" for j in range(40)) for i in range(60)))
    root = pathlib.Path(__file__).resolve().parents[2]
    main([
        "fit", "--config", str(root / "configs/lm/adapt_dex.yaml"), "--model.init_args.pretrained", str(export),
        "--data.init_args.train_path", str(corpus), "--data.init_args.block_size", "32",
        "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu",
        "--trainer.default_root_dir", str(tmp_path / "runs"),
    ])


def test_converting_a_folder_without_tokenizer_json_says_so(tmp_path):
    """A Hugging Face folder fetched with its weights and sentencepiece ``tokenizer.model`` only (no
    ``tokenizer.json``) converted silently into an export without a tokenizer; the adapter config then
    stopped with 'an exported model without a tokenizer (trained on token ids, e.g. configs/lm/tiny.yaml's
    synthetic recall)'. The conversion warns, and the later error names the source folder and the fix."""
    from zoo.data.tokenizers import load_tokenizer

    _, folder = _decoder(tmp_path, "LlamaForCausalLM")
    (folder / "tokenizer.model").write_bytes(b"sentencepiece model")  # what such a folder holds instead
    with pytest.warns(UserWarning, match=r"no tokenizer\.json.*tokenizer\.model.*save_pretrained"):
        convert_hf(folder, tmp_path / "export")
    assert not (tmp_path / "export" / "tokenizer.json").exists()
    with pytest.raises(FileNotFoundError, match=rf"converted from {folder}.*no tokenizer\.json.*save_pretrained") as err:
        load_tokenizer(tmp_path / "export")
    assert "synthetic recall" not in str(err.value)


def test_convert_overwrite_never_replaces_a_hugging_face_model(tmp_path):
    """``python -m zoo convert SRC SRC --overwrite`` (an in-place conversion) replaced the source model's config.json,
    model.safetensors and tokenizer files with the zoo export: the Hugging Face folder no longer loaded with
    transformers. --overwrite replaces an earlier export only: a Hugging Face model folder as the output, the source
    or another, is refused and stays as it was (transformers still loads it)."""
    import shutil

    from zoo.cli import main

    _, folder = _decoder(tmp_path, "LlamaForCausalLM")
    _word_tokenizer(folder)
    other = shutil.copytree(folder, tmp_path / "other")
    main(["convert", str(folder), str(tmp_path / "export")])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    for out, match in ((folder, "is the source folder"), (other, "holds a Hugging Face model")):
        with pytest.raises(SystemExit, match=match):
            main(["convert", str(folder), str(out), "--overwrite"])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    for f in (folder, other):
        transformers.LlamaForCausalLM.from_pretrained(f)
    main(["convert", str(folder), str(tmp_path / "export"), "--overwrite"])  # an earlier export is replaced


def test_real_minilm_tokenizer_matches_transformers(minilm_dir):
    from zoo.data.tokenizers import HFTokenizer

    folder = minilm_dir
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    ours = HFTokenizer.from_hf_folder(folder)
    text = "Differential attention cancels noise, doesn't it?"
    assert ours.encode(text) == ref(text, add_special_tokens=False)["input_ids"]
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.cls_token_id, ref.sep_token_id, ref.pad_token_id)
    assert ours.decode(ours.encode(text)) == ref.decode(ref(text, add_special_tokens=False)["input_ids"])
    assert isinstance(from_hf(folder), torch.nn.Module)


def test_from_hf_names_unknown_families(tmp_path):
    _, folder = _decoder(tmp_path, "LlamaForCausalLM")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "falcon"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="falcon.*supported.*qwen2"):
        convert_hf(folder, tmp_path / "out")


GENERATE_FAMILIES = [  # the families above; Mistral without a sliding window (it would cap the context)
    ("LlamaForCausalLM", {"attention_bias": True}),
    ("MistralForCausalLM", {"sliding_window": None}),
    ("Qwen2ForCausalLM", {"tie_word_embeddings": True}),
]


def _hf_greedy(hf, ids, mask, new, pad_id=0):
    """transformers' greedy ``generate`` of a left-padded batch, never stopping early (no eos), with the smallest
    gap between the two likeliest tokens along its path: a near-tie would make the comparison a coin toss."""
    hf.generation_config.eos_token_id = None  # the config's eos (Llama: 2) would end rows early
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=pad_id,
                          eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (ids.shape[0], ids.shape[1] + new)  # every row ran its max_new_tokens
    top2 = torch.stack(out.logits, 1).topk(2, dim=-1).values
    return out.sequences, float((top2[..., 0] - top2[..., 1]).min())


@pytest.mark.parametrize("cls_name, over", GENERATE_FAMILIES)
def test_left_padded_greedy_generate_matches_transformers(tmp_path, monkeypatch, cls_name, over):
    """Greedy ``generate`` of a left-padded [3, T] batch with ``attention_mask`` (prompts of 9, 5 and 2 tokens) gives
    transformers' own ``generate`` tokens, row by row. transformers counts positions from each row's first real token
    and zoo from the padded start: RoPE only sees relative positions, so the tokens must agree exactly. Weights at
    init std 0.2 (not 0.02) keep greedy choices clear of near-ties (checked); the same decoding with the mask
    dropped gives other tokens, so the comparison does see the padding."""
    hf, folder = _decoder(tmp_path, cls_name, initializer_range=0.2, **over)
    ours = from_hf_llama(folder)
    T, new = 9, 8
    ids = torch.zeros(3, T, dtype=torch.long)  # pad id 0: a vocabulary id, masked out
    mask = torch.zeros(3, T, dtype=torch.long)
    for row, n in enumerate([9, 5, 2]):
        ids[row, T - n:] = torch.randint(3, 97, (n,))
        mask[row, T - n:] = 1
    ref, gap = _hf_greedy(hf, ids, mask, new)
    assert gap > 1e-3  # far above the float32 difference of the logits (~1e-5)
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=new, temperature=0, eos_id=-1)
    assert torch.equal(got[:, :T], ids)
    assert got[:, T:].tolist() == ref[:, T:].tolist()

    forward = DiffTransformerLM.forward

    def maskless(self, input_ids, attention_mask=None, caches=None, **kwargs):
        return forward(self, input_ids, None, caches, **kwargs)

    with monkeypatch.context() as m:  # the padding ignored: the padded rows go elsewhere
        m.setattr(DiffTransformerLM, "forward", maskless)
        blind = ours.generate(ids, attention_mask=mask, max_new_tokens=new, temperature=0, eos_id=-1)
    assert blind[0].tolist() == got[0].tolist() and blind[1:].tolist() != got[1:].tolist()


def test_generate_fills_max_seq_len_plus_one_as_transformers_does(tmp_path):
    """The last new token is never fed back, so prompt + max_new_tokens may be max_seq_len + 1: transformers' greedy
    ``generate`` of a Llama with max_position_embeddings 16 gives 6 + 11 = 17 tokens (its reminder that the call
    exceeded the model's length comes only at 18, once a fed position passes 16). zoo refused 6 + 11 ("exceeds
    max_seq_len 16"); it now gives transformers' 11 tokens and refuses 6 + 12, naming the 5 prompt tokens that fit."""
    hf, folder = _decoder(tmp_path, "LlamaForCausalLM", initializer_range=0.2, max_position_embeddings=16)
    ours = from_hf_llama(folder)
    assert ours.config.max_seq_len == 16
    ids = torch.randint(3, 97, (1, 6))
    ref, gap = _hf_greedy(hf, ids, torch.ones_like(ids), 11)
    assert gap > 1e-3 and ref.shape[1] == 17
    assert ours.generate(ids, max_new_tokens=11, temperature=0, eos_id=-1).tolist() == ref.tolist()
    with pytest.raises(ValueError, match=r"prompt \(6 tokens\) \+ max_new_tokens \(12\) exceeds max_seq_len 16.*"
                                         r"at most 5"):
        ours.generate(ids, max_new_tokens=12, temperature=0, eos_id=-1)
    assert ours.generate(torch.randint(3, 97, (1, 16)), max_new_tokens=1, temperature=0, eos_id=-1).shape == (1, 17)


def test_batched_text_prompts_generate_as_transformers(tmp_path):
    """A list of text prompts, decoded ``batch_size=2`` at a time (zoo sorts them by length: the two shortest, then
    the longest), gives the completions of transformers' tokenizer (left padding) + greedy ``generate`` of all three
    in one batch + the text-generation pipeline's cut (the decoded prompt taken off the decoded whole), in the
    prompts' order."""
    hf, folder = _decoder(tmp_path, "LlamaForCausalLM", initializer_range=0.2)
    _word_tokenizer(folder)
    ours = from_hf_llama(folder)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<s>",
                                               eos_token="</s>", pad_token="<unk>", padding_side="left")
    texts = ["w5 w17 w96 w3 w40 w41", "w8", "w70 w71 w9"]
    enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    assert enc["attention_mask"].sum(1).tolist() == [6, 1, 3]
    ref, gap = _hf_greedy(hf, enc["input_ids"], enc["attention_mask"], 8, pad_id=tok.pad_token_id)
    assert gap > 1e-3
    width = enc["input_ids"].shape[1]
    expected = []
    for row in range(3):
        prompt = enc["input_ids"][row, width - int(enc["attention_mask"][row].sum()):].tolist()
        expected.append(tok.decode(prompt + ref[row, width:].tolist())[len(tok.decode(prompt)):])
    assert ours.generate(texts, max_new_tokens=8, temperature=0, eos_id=-1, batch_size=2) == expected


def test_to_hf_llama_keeps_the_tokenizers_special_ids(tmp_path):
    """A converted model written back must stop generating where the source model does: transformers reads bos / eos
    from config.json, and without them takes LlamaConfig's defaults (bos 1, eos 2), so a model whose eos is another
    id (here 9, plus a second stop id 11, as Llama 3 instruct lists several) generated past its end in transformers."""
    hf, folder = _decoder(tmp_path, "LlamaForCausalLM", bos_token_id=3, eos_token_id=[9, 11])
    _word_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w3", "eos_token": "w9"}))
    source = transformers.GenerationConfig.from_pretrained(folder)
    assert (source.bos_token_id, source.eos_token_id) == (3, [9, 11])
    back = to_hf_llama(from_hf_llama(folder), tmp_path / "back")
    hf2 = transformers.LlamaForCausalLM.from_pretrained(back)
    assert (hf2.generation_config.bos_token_id, hf2.generation_config.eos_token_id) == (3, [9, 11])
    assert (hf2.config.bos_token_id, hf2.config.eos_token_id) == (3, [9, 11])


def test_to_hf_llama_writes_a_tokenizer_that_transformers_loads(tmp_path):
    """A converted model written back had config.json and weights only: AutoTokenizer.from_pretrained(folder) failed.
    Its tokenizer (the source's, or a BPE trained by zoo) is written as Hugging Face reads it: the same ids as the
    source tokenizer (transformers' own reading of the source folder is the reference) and the same special tokens."""
    from zoo.data.tokenizers import BPETokenizer
    from zoo.models.lm import DiffTransformerLM, LMConfig

    hf, folder = _decoder(tmp_path, "LlamaForCausalLM")
    _word_tokenizer(folder)
    back = to_hf_llama(from_hf_llama(folder), tmp_path / "back")
    src, got = transformers.AutoTokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(back)
    text = "w5 w17 w96 w3 nope"
    assert got(text)["input_ids"] == src(text)["input_ids"]
    assert (got.bos_token, got.eos_token) == (src.bos_token, src.eos_token) == ("<s>", "</s>")
    assert got.pad_token is src.pad_token is None  # zoo's pad = eos fallback is not written as the source's pad

    corpus = ["the quick brown fox jumps over the lazy dog"] * 20 + ["pack my box with five dozen liquor jugs"] * 20
    bpe = BPETokenizer.train(corpus, vocab_size=300)
    lm = DiffTransformerLM(LMConfig(vocab_size=bpe.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=32,
                                    attn_type="vanilla"))
    lm.tokenizer = bpe
    out = to_hf_llama(lm, tmp_path / "bpe_back")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    for line in ("the lazy fox", "five dozen jugs over my box"):
        assert tok(line, add_special_tokens=False)["input_ids"] == bpe.encode(line)
    assert tok.convert_tokens_to_ids(tok.eos_token) == bpe.eos_id
