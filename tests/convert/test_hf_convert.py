"""Hugging Face converters: tiny random ``transformers`` models and the real all-MiniLM-L6-v2.

The reference is ``transformers`` itself: the converted zoo model must give its logits / hidden
states, and the folder written back must load in ``transformers`` with the same outputs.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import transformers  # noqa: E402  (a dev dependency)

from zoo.convert import from_hf_bert, from_hf_llama, to_hf_bert, to_hf_llama  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def tiny_llama(tmp_path, **over):
    torch.manual_seed(0)
    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False)
    kw.update(over)
    cfg = transformers.LlamaConfig(**kw)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 5000.0}
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF inits norms to 1; randomize so the map of every tensor matters
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    folder = tmp_path / "hf_llama"
    model.save_pretrained(folder)
    return model, folder


def tiny_bert(tmp_path, pooler=True):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=96, max_position_embeddings=40, type_vocab_size=2)
    model = transformers.BertModel(cfg, add_pooling_layer=pooler).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.normal_(0.3 if name.endswith("weight") else 0.0, 0.2).add_(1.0 if name.endswith("weight") else 0.0)
    folder = tmp_path / "hf_bert"
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_match_and_round_trip(tmp_path, tied):
    hf, folder = tiny_llama(tmp_path, tie_word_embeddings=tied)
    ours = from_hf_llama(folder)
    assert ours.config.n_kv_heads == 2 and ours.config.rope_theta == 5000.0 and ours.config.tie_embeddings == tied
    ids = torch.randint(0, 97, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0  # right padding on the second row
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[1, :8], ref[1, :8], atol=1e-4, rtol=1e-4)
    back = to_hf_llama(ours, tmp_path / "back")
    hf2 = transformers.LlamaForCausalLM.from_pretrained(back).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf2(input_ids=ids).logits, hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_bert_hidden_states_match_and_round_trip(tmp_path):
    hf, folder = tiny_bert(tmp_path)
    ours = from_hf_bert(folder)
    ids = torch.randint(1, 101, (2, 9))
    types = torch.randint(0, 2, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, attention_mask=mask, token_type_ids=types)
    torch.testing.assert_close(got, ref.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.pool(got), ref.pooler_output, atol=1e-4, rtol=1e-4)
    back = to_hf_bert(ours, tmp_path / "back")
    hf2 = transformers.BertModel.from_pretrained(back).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf2(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   hf(input_ids=ids, attention_mask=mask).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_real_minilm_matches_transformers(minilm_dir):
    folder = minilm_dir
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    ours = from_hf_bert(folder)
    sentences = ["A differential transformer cancels attention noise.",
                 "The cat sat on the mat.",
                 "Zoo!"]
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**batch).last_hidden_state
        got = ours(batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"])
    m = batch["attention_mask"].bool()
    torch.testing.assert_close(got[m], ref[m], atol=1e-4, rtol=1e-4)
    # sentence embeddings (mean pooling) agree as well
    torch.testing.assert_close(ours.mean_pool(got, batch["attention_mask"]), ours.mean_pool(ref, batch["attention_mask"]),
                               atol=1e-4, rtol=1e-4)


def test_converted_minilm_export_carries_its_tokenizer(minilm_dir, tmp_path):
    """README: `python -m zoo convert` writes the export with its tokenizer (BERT / RoBERTa included)."""
    import zoo
    from zoo.cli import main

    main(["convert", str(minilm_dir), str(tmp_path / "out")])
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (tmp_path / "out" / "tokenizer_config.json").is_file()
    ours = zoo.load_pretrained(tmp_path / "out")
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    text = "A differential transformer cancels attention noise."
    assert ours.tokenizer is not None
    assert ours.tokenizer.encode(text) == tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------- bad input


def _edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_unknown_architecture_is_named(tmp_path):
    _, folder = tiny_llama(tmp_path)
    _edit_config(folder, model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(ValueError, match=r"gpt_neox.*GPTNeoXForCausalLM.*supported.*llama"):
        from_hf_llama(folder)
    with pytest.raises(ValueError, match="from_hf_bert"):
        from_hf_bert(folder)


def test_unsupported_features_are_refused(tmp_path):
    _, folder = tiny_llama(tmp_path)
    _edit_config(folder, rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="RoPE scaling"):
        from_hf_llama(folder)
    _edit_config(folder, rope_scaling=None, mlp_bias=True)
    with pytest.raises(ValueError, match="mlp_bias"):
        from_hf_llama(folder)


def test_incomplete_or_malformed_config_is_named(tmp_path):
    _, folder = tiny_llama(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["intermediate_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json lacks \['intermediate_size'\]"):
        from_hf_llama(folder)
    (folder / "config.json").write_text(json.dumps([cfg]))
    with pytest.raises(ValueError, match="JSON list, not the object"):
        from_hf_llama(folder)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _, folder = tiny_llama(tmp_path)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 64)
    save_file(state, str(path))
    with pytest.raises(ValueError) as exc:
        from_hf_llama(folder)
    msg = str(exc.value)
    assert "model.layers.1.mlp.up_proj.weight" in msg and "missing" in msg
    assert "model.layers.0.self_attn.k_proj.weight" in msg and "(8, 64)" in msg and "(32, 64)" in msg


def test_missing_weights_file(tmp_path):
    _, folder = tiny_bert(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors, pytorch_model.bin"):
        from_hf_bert(folder)


def test_to_hf_refuses_non_vanilla():
    from zoo.models.lm import DiffTransformerLM, LMConfig

    with pytest.raises(ValueError, match="attn_type='diff'"):
        to_hf_llama(DiffTransformerLM(LMConfig(vocab_size=20, dim=32, n_layers=1, n_heads=2)), "unused")


def test_to_hf_llama_of_an_adapted_model_names_a_way_that_works(tmp_path):
    """An adapted model has no Llama layout; the refusal must name what does convert (the base without the
    adapter), not "merge them into a plain model": merge_adapters (DiffLoRA) leaves the differential adapter."""
    from zoo.nn import adapters as A

    hf, folder = tiny_llama(tmp_path)
    ours = A.apply_adapter(from_hf_llama(folder), "difflora", rank=2)
    A.merge_adapters(ours)
    with pytest.raises(ValueError, match="remove_adapters") as err:
        to_hf_llama(ours, tmp_path / "adapted")
    assert "merge them" not in str(err.value)
    A.remove_adapters(ours)  # what the message names
    back = transformers.LlamaForCausalLM.from_pretrained(to_hf_llama(ours, tmp_path / "base")).eval()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, hf(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
