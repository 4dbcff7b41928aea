"""Hugging Face <-> zoo converters with an explicit weight map per family.

* Llama-family decoders (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``) <->
  :class:`zoo.models.lm.DiffTransformerLM` (vanilla). Qwen2's query/key/value biases map to
  ``attn_bias="qkv"``; a sliding window shorter than the context caps ``max_seq_len`` at the window
  (inside it full attention is exact; longer inputs are refused rather than silently different).
* BERT-family encoders (``BertModel``, ``RobertaModel``) <-> :class:`zoo.models.encoder.TextEncoder`
  (vanilla). RoBERTa's position ids start at ``pad_token_id + 1`` (``pos_offset``) and skip
  pad tokens, as in ``transformers``; padded positions are masked keys, so real tokens match exactly.

Weights: ``model.safetensors``, sharded safetensors with ``model.safetensors.index.json``, or
``pytorch_model.bin`` (sharded with its index), read with ``torch.load(weights_only=True)``.
A folder's ``tokenizer.json`` comes along as :class:`zoo.data.tokenizers.HFTokenizer`, so
:func:`convert_hf` writes a zoo export that training configs can point both ``pretrained`` and
``data.tokenizer`` at (``python -m zoo convert HF_FOLDER OUT``).

Reading needs ``safetensors``/``torch`` only (not ``transformers``); the written folders load with
``transformers.AutoModel*.from_pretrained``. Every unsupported feature, missing tensor, left-over
tensor or shape mismatch raises a ``ValueError`` that names it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from zoo.hub import refuse_occupied, save_safetensors, tensor_problems
from zoo.models.encoder import EncoderConfig, TextEncoder
from zoo.models.lm import DiffTransformerLM, LMConfig

PathLike = Union[str, Path]

log = logging.getLogger(__name__)

LLAMA_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
LLAMA_MODEL_TYPES = ("llama", "mistral", "qwen2")
BERT_ARCHITECTURES = ("BertModel", "RobertaModel")
BERT_MODEL_TYPES = ("bert", "roberta")
# HF tensors that carry no weights (buffers some versions save); skipped on import.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


# ------------------------------------------------------------------------------------ weight maps


def llama_weight_map(n_layers: int, tied: bool, attn_bias: Union[bool, str] = False) -> dict[str, str]:
    """HF Llama / Mistral / Qwen2 tensor name -> zoo ``DiffTransformerLM`` state-dict name."""
    biased = {True: ("q_proj", "k_proj", "v_proj", "o_proj"), "qkv": ("q_proj", "k_proj", "v_proj")}.get(attn_bias, ())
    m = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight"}
    if not tied:
        m["lm_head.weight"] = "lm_head.weight"
    for i in range(n_layers):
        hf, zo = f"model.layers.{i}.", f"layers.{i}."
        for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
            m[f"{hf}self_attn.{p}.weight"] = f"{zo}attn.{p}.weight"
        for p in biased:
            m[f"{hf}self_attn.{p}.bias"] = f"{zo}attn.{p}.bias"
        for p in ("gate_proj", "up_proj", "down_proj"):
            m[f"{hf}mlp.{p}.weight"] = f"{zo}mlp.{p}.weight"
        m[f"{hf}input_layernorm.weight"] = f"{zo}attn_norm.weight"
        m[f"{hf}post_attention_layernorm.weight"] = f"{zo}mlp_norm.weight"
    return m


def bert_weight_map(n_layers: int, pooler: bool) -> dict[str, str]:
    """HF ``BertModel`` tensor name -> zoo ``TextEncoder`` state-dict name."""
    m = {
        "embeddings.word_embeddings.weight": "word_embed.weight",
        "embeddings.position_embeddings.weight": "pos_embed.weight",
        "embeddings.token_type_embeddings.weight": "type_embed.weight",
        "embeddings.LayerNorm.weight": "embed_norm.weight",
        "embeddings.LayerNorm.bias": "embed_norm.bias",
    }
    if pooler:
        m["pooler.dense.weight"] = "pooler.weight"
        m["pooler.dense.bias"] = "pooler.bias"
    for i in range(n_layers):
        hf, zo = f"encoder.layer.{i}.", f"layers.{i}."
        pairs = {
            "attention.self.query": "attn.q_proj",
            "attention.self.key": "attn.k_proj",
            "attention.self.value": "attn.v_proj",
            "attention.output.dense": "attn.o_proj",
            "attention.output.LayerNorm": "attn_norm",
            "intermediate.dense": "mlp.fc1",
            "output.dense": "mlp.fc2",
            "output.LayerNorm": "mlp_norm",
        }
        for a, b in pairs.items():
            for t in ("weight", "bias"):
                m[f"{hf}{a}.{t}"] = f"{zo}{b}.{t}"
    return m


# ------------------------------------------------------------------------------------------ I/O


def read_hf_config(folder: PathLike) -> dict[str, Any]:
    """Parse ``folder/config.json`` of a Hugging Face model."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give a local Hugging Face model folder (config.json + safetensors)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds a JSON {type(cfg).__name__}, not the object of a Hugging Face config")
    return cfg


def _require(cfg: dict[str, Any], folder: PathLike, *keys: str) -> None:
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise ValueError(f"{folder}: config.json lacks {missing}; the config is truncated or of another model")


def _weight_files(folder: Path, single: str) -> list[Path]:
    """``folder/single`` or the shards its ``.index.json`` lists; [] when neither exists."""
    index = folder / f"{single}.index.json"
    if (folder / single).is_file():
        return [folder / single]
    if not index.is_file():
        return []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise ValueError(f"{index} is not a valid shard index (needs a 'weight_map' object): {exc}") from exc
    files = [folder / s for s in shards]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"shards listed in {index} are missing: {missing}")
    return files


def read_hf_weights(folder: PathLike) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors`` / ``pytorch_model.bin``, or of the shards their index lists.

    Safetensors win when both exist. ``.bin`` files are read with ``weights_only=True`` (no code runs).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    state: dict[str, torch.Tensor] = {}
    files = _weight_files(folder, "model.safetensors")
    if files:
        for f in files:
            try:
                state.update(load_file(str(f)))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ValueError(f"{f} could not be read as safetensors ({exc}); the file is corrupt or truncated") from exc
        return state
    files = _weight_files(folder, "pytorch_model.bin")
    if not files:
        raise FileNotFoundError(
            f"no model.safetensors, pytorch_model.bin or their .index.json in {folder}: give a local Hugging Face "
            "model folder"
        )
    for f in files:
        try:
            part = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, truncated zip, non-tensor payloads
            raise ValueError(f"{f} could not be read as a PyTorch state dict ({exc})") from exc
        if not isinstance(part, dict):
            raise ValueError(f"{f} holds a {type(part).__name__}, not a state dict of tensors")
        state.update(part)
    return state


def _check_arch(cfg: dict[str, Any], folder: PathLike, archs: tuple[str, ...], types: tuple[str, ...], fn: str) -> None:
    got_archs = cfg.get("architectures") or []
    mtype = cfg.get("model_type")
    if mtype not in types or (got_archs and not set(got_archs) & set(archs)):
        raise ValueError(
            f"{fn} cannot convert {folder}: config.json has model_type={mtype!r}, architectures={got_archs}; "
            f"supported: model_type in {list(types)} with architectures {list(archs)}"
        )


def _refuse(folder: PathLike, cfg: dict[str, Any], key: str, ok: Callable[[Any], bool], why: str) -> None:
    if key in cfg and not ok(cfg[key]):
        raise ValueError(f"{folder}: config.json {key}={cfg[key]!r} is not supported ({why})")


def _load_mapped(model: nn.Module, hf_state: dict[str, torch.Tensor], wmap: dict[str, str], source: PathLike) -> None:
    """Copy ``hf_state`` into ``model`` through ``wmap``; name every missing, extra or mis-shaped tensor."""
    own = model.state_dict()
    missing = [k for k in wmap if k not in hf_state]
    extra = [k for k in hf_state if k not in wmap and not k.endswith(_IGNORED_SUFFIXES)]
    shapes = [
        f"{k} (-> {v}): file {tuple(hf_state[k].shape)} vs model {tuple(own[v].shape)}"
        for k, v in wmap.items()
        if k in hf_state and tuple(hf_state[k].shape) != tuple(own[v].shape)
    ]
    problems = tensor_problems(
        ("missing tensors", missing), ("unexpected tensors (no mapping)", extra), ("shape mismatches", shapes)
    )
    if problems:
        raise ValueError(
            f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(problems)
            + ". The checkpoint is truncated or config.json does not describe it."
        )
    with torch.no_grad():
        for k, v in wmap.items():
            own[v].copy_(hf_state[k].to(own[v].dtype))


def _save_mapped(model: nn.Module, wmap: dict[str, str], cfg: dict[str, Any], folder: PathLike) -> Path:
    folder = Path(folder)
    refuse_occupied(folder, "choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    own = model.state_dict()
    state = {k: own[v].detach().contiguous().cpu().clone() for k, v in wmap.items()}
    save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return folder


# ---------------------------------------------------------------------------------------- Llama


def _rope_theta(cfg: dict[str, Any], folder: PathLike) -> float:
    """``rope_theta`` from either config layout (transformers 4: top level; 5: ``rope_parameters``)."""
    rp = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    rtype = rp.get("rope_type", (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")))
    if rtype != "default" or (scaling and scaling.get("rope_type", scaling.get("type")) != "default"):
        raise ValueError(
            f"{folder}: RoPE scaling {rtype!r} (rope_scaling/rope_parameters) is not supported; "
            "only default RoPE converts exactly"
        )
    return float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _window_cap(cfg: dict[str, Any], folder: PathLike, max_len: int) -> int:
    """``max_seq_len`` for a sliding-window model: the window when it is shorter than the context."""
    mtype, window = cfg.get("model_type"), cfg.get("sliding_window")
    # Qwen2 slides only on layers >= max_window_layers (transformers' default 28); transformers 5 spells
    # the per-layer choice out in layer_types
    n_full = (28 if cfg.get("max_window_layers") is None else cfg["max_window_layers"]) if mtype == "qwen2" else 0
    layer_types = cfg.get("layer_types")
    sliding = ("sliding_attention" in layer_types) if isinstance(layer_types, list) else n_full < cfg["num_hidden_layers"]
    active = sliding and ((mtype == "mistral" and window) or (mtype == "qwen2" and cfg.get("use_sliding_window") and window))
    if not active or window >= max_len:
        return max_len
    if mtype == "qwen2" and n_full > 0:
        log.warning("%s: Qwen2 sliding window on some layers; capping max_seq_len at the window %d", folder, window)
    else:
        log.warning(
            "%s: sliding_window=%d < max_position_embeddings=%d; zoo attends fully, which equals the window "
            "up to %d tokens, so max_seq_len is capped there", folder, window, max_len, window,
        )
    return int(window)


def llama_config_to_zoo(cfg: dict[str, Any], folder: PathLike = "") -> LMConfig:
    """Map a HF Llama / Mistral / Qwen2 ``config.json`` to :class:`LMConfig` (``attn_type="vanilla"``)."""
    _check_arch(cfg, folder, LLAMA_ARCHITECTURES, LLAMA_MODEL_TYPES, "from_hf_llama")
    _require(cfg, folder, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    _refuse(folder, cfg, "hidden_act", lambda v: v == "silu", "zoo's SwiGLU uses silu")
    _refuse(folder, cfg, "mlp_bias", lambda v: not v, "zoo's SwiGLU has no biases")
    mtype = cfg["model_type"]
    if mtype == "qwen2":
        attn_bias: Union[bool, str] = "qkv"  # Qwen2 always has q/k/v biases and none on o_proj
    else:
        attn_bias = bool(cfg.get("attention_bias", False))
        if mtype == "mistral" and attn_bias:
            raise ValueError(f"{folder}: config.json attention_bias=True is not a Mistral layout")
    _refuse(folder, cfg, "pretraining_tp", lambda v: v in (None, 1), "tensor-parallel slicing changes numerics")
    dim, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    _refuse(folder, cfg, "head_dim", lambda v: v in (None, dim // heads),
            f"LMConfig uses head_dim = hidden_size / num_attention_heads = {dim // heads}")
    max_len = cfg.get("max_position_embeddings", 2048)
    cap = _window_cap(cfg, folder, max_len)
    return LMConfig(
        vocab_size=cfg["vocab_size"],
        dim=dim,
        n_layers=cfg["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=cfg.get("num_key_value_heads") or heads,
        mlp_hidden=cfg["intermediate_size"],
        max_seq_len=cap,
        attn_window=cap if cap < max_len else None,  # recorded: a later max_seq_len may not pass the window
        attn_type="vanilla",
        attn_bias=attn_bias,
        rope_theta=_rope_theta(cfg, folder),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
    )


def from_hf_llama(folder: PathLike) -> DiffTransformerLM:
    """Load a local Hugging Face Llama / Mistral / Qwen2 checkpoint as a vanilla :class:`DiffTransformerLM`
    (fp32). The folder's ``tokenizer.json``, when present, becomes ``model.tokenizer``."""
    cfg = read_hf_config(folder)
    zcfg = llama_config_to_zoo(cfg, folder)
    state = read_hf_weights(folder)
    if zcfg.tie_embeddings and "lm_head.weight" in state:
        # a tied checkpoint that stores the head too (e.g. ``torch.save(model.state_dict())``): transformers
        # ties it when it equals the embedding and keeps it as a separate head otherwise
        if torch.equal(state["lm_head.weight"], state.get("model.embed_tokens.weight", torch.empty(0))):
            del state["lm_head.weight"]
        else:
            log.warning("%s: tie_word_embeddings=true but lm_head.weight differs from the embedding; "
                        "converting with an untied head (as transformers loads it)", folder)
            zcfg = dataclasses.replace(zcfg, tie_embeddings=False)
    model = DiffTransformerLM(zcfg)
    wmap = llama_weight_map(zcfg.n_layers, zcfg.tie_embeddings, zcfg.attn_bias)
    _load_mapped(model, state, wmap, folder)
    model.tokenizer = _hf_tokenizer(folder)
    return model.eval()


def _hf_tokenizer(folder: PathLike) -> Any:
    from zoo.data.tokenizers import BPE_NAME, HFTokenizer

    return HFTokenizer.from_hf_folder(folder) if (Path(folder) / BPE_NAME).is_file() else None


_HF_DECODERS = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def to_hf_llama(model: DiffTransformerLM, folder: PathLike, model_type: Optional[str] = None) -> Path:
    """Write ``model`` (vanilla attention) as a Hugging Face Llama / Mistral / Qwen2 folder.

    ``model_type`` defaults to ``qwen2`` for q/k/v-biased attention and ``llama`` otherwise.
    """
    c = model.config
    if not isinstance(model, DiffTransformerLM) or c.attn_type != "vanilla":
        raise ValueError(
            f"to_hf_llama writes vanilla-attention DiffTransformerLM models; got {type(model).__name__} "
            f"with attn_type={getattr(c, 'attn_type', None)!r} (Llama has no {getattr(c, 'attn_type', None)} attention)"
        )
    _check_no_adapters(model, "to_hf_llama")
    model_type = model_type or ("qwen2" if c.attn_bias == "qkv" else "llama")
    allowed = {"llama": (False, True), "mistral": (False,), "qwen2": ("qkv",)}
    if model_type not in allowed or c.attn_bias not in allowed[model_type]:
        raise ValueError(
            f"to_hf_llama: cannot write attn_bias={c.attn_bias!r} as model_type={model_type!r}; "
            f"supported: {allowed}"
        )
    cfg = {
        "architectures": [_HF_DECODERS[model_type]],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "intermediate_size": c.mlp_hidden,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.n_kv_heads or c.n_heads,
        "head_dim": c.dim // c.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "rope_scaling": None,
        "attention_bias": c.attn_bias is True,
        "mlp_bias": False,
        "tie_word_embeddings": c.tie_embeddings,
        "torch_dtype": "float32",
    }
    if model_type != "llama":
        cfg.update(sliding_window=None, use_sliding_window=False)
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "eos_id", None) is not None:
        # transformers' generate stops at config.json's eos ids (every one the converted folder listed)
        stops = list(getattr(tok, "stop_ids", None) or [tok.eos_id])
        cfg.update(bos_token_id=tok.bos_id, eos_token_id=stops[0] if len(stops) == 1 else stops)
    out = _save_mapped(model, llama_weight_map(c.n_layers, c.tie_embeddings, c.attn_bias), cfg, folder)
    _save_hf_tokenizer(tok, out)
    return out


def _save_hf_tokenizer(tok: Any, folder: Path) -> None:
    """A model's tokenizers-backed tokenizer (a converted model's own, or a trained BPE) as Hugging Face reads one:
    ``tokenizer.json`` plus a ``tokenizer_config.json`` naming its special tokens, so
    ``AutoTokenizer.from_pretrained(folder)`` works. The byte tokenizer has no such form: nothing is written."""
    backend = getattr(tok, "backend", None)
    if backend is None:
        return
    backend.save(str(folder / "tokenizer.json"))
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    # a pad equal to eos is zoo's fallback for a tokenizer without one (Llama's): written, it would make collators
    # that mask pad labels mask every EOS label too, so it is left out as the source left it
    pad = tok.pad_id if tok.pad_id != tok.eos_id else None
    for name, i in (("bos_token", tok.bos_id), ("eos_token", tok.eos_id), ("pad_token", pad)):
        token = backend.id_to_token(i) if i is not None else None
        if token is not None:
            config[name] = token
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------- BERT


def bert_config_to_zoo(cfg: dict[str, Any], folder: PathLike = "", pooler: bool = True) -> EncoderConfig:
    """Map a HF BERT / RoBERTa ``config.json`` to :class:`EncoderConfig` (``attn_type="vanilla"``)."""
    _check_arch(cfg, folder, BERT_ARCHITECTURES, BERT_MODEL_TYPES, "from_hf_bert")
    _require(cfg, folder, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    pad = cfg.get("pad_token_id") or 0
    offset = pad + 1 if cfg["model_type"] == "roberta" else 0  # RoBERTa numbers positions from padding_idx + 1
    _refuse(folder, cfg, "hidden_act", lambda v: v == "gelu", "zoo's GeluMlp uses exact (erf) gelu")
    _refuse(folder, cfg, "position_embedding_type", lambda v: v == "absolute", "only absolute positions")
    _refuse(folder, cfg, "is_decoder", lambda v: not v, "only bidirectional encoders")
    return EncoderConfig(
        vocab_size=cfg["vocab_size"],
        dim=cfg["hidden_size"],
        n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        mlp_hidden=cfg["intermediate_size"],
        max_seq_len=cfg.get("max_position_embeddings", 512) - offset,
        pos_offset=offset,
        type_vocab_size=cfg.get("type_vocab_size", 2),
        attn_type="vanilla",
        norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        bias=True,
        pooler=pooler,
        pad_token_id=pad,
    )


def from_hf_bert(folder: PathLike) -> TextEncoder:
    """Load a local Hugging Face ``BertModel`` / ``RobertaModel`` checkpoint as a :class:`TextEncoder` (fp32).

    The pooler is kept when the checkpoint has one. Checkpoints saved from a task model
    (``bert.``-prefixed names) are refused by the architecture check: save ``model.bert`` instead.
    """
    cfg = read_hf_config(folder)
    state = read_hf_weights(folder)
    zcfg = bert_config_to_zoo(cfg, folder, pooler="pooler.dense.weight" in state)
    model = TextEncoder(zcfg)
    _load_mapped(model, state, bert_weight_map(zcfg.n_layers, zcfg.pooler), folder)
    model.tokenizer = _hf_tokenizer(folder)
    return model.eval()


def to_hf_bert(model: TextEncoder, folder: PathLike) -> Path:
    """Write ``model`` (vanilla attention with biases) as a Hugging Face ``BertModel`` folder, or a
    ``RobertaModel`` one when its positions start at ``pad_token_id + 1``."""
    c = model.config
    if not isinstance(model, TextEncoder) or c.attn_type != "vanilla" or not c.bias:
        raise ValueError(
            f"to_hf_bert writes TextEncoder models with vanilla attention and biases; got {type(model).__name__} "
            f"(attn_type={getattr(c, 'attn_type', None)!r}, bias={getattr(c, 'bias', None)})"
        )
    _check_no_adapters(model, "to_hf_bert")
    if c.pos_offset not in (0, c.pad_token_id + 1):
        raise ValueError(
            f"to_hf_bert: pos_offset={c.pos_offset} fits neither BERT (0) nor RoBERTa (pad_token_id + 1 = "
            f"{c.pad_token_id + 1})"
        )
    kind = "roberta" if c.pos_offset else "bert"
    cfg = {
        "architectures": ["RobertaModel" if c.pos_offset else "BertModel"],
        "model_type": kind,
        "vocab_size": c.vocab_size,
        "hidden_size": c.dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "intermediate_size": c.mlp_hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": c.max_seq_len + c.pos_offset,
        "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.norm_eps,
        "pad_token_id": c.pad_token_id,
        "position_embedding_type": "absolute",
        "add_pooling_layer": c.pooler,
        "torch_dtype": "float32",
    }
    return _save_mapped(model, bert_weight_map(c.n_layers, c.pooler), cfg, folder)


def from_hf(folder: PathLike) -> nn.Module:
    """Load any supported local Hugging Face folder: decoders as ``DiffTransformerLM``, encoders as ``TextEncoder``."""
    cfg = read_hf_config(folder)
    mtype = cfg.get("model_type")
    if cfg.get("format") == "zoo-export":
        raise ValueError(f"{folder} is already a zoo export, not a Hugging Face folder: load it with zoo.load_pretrained "
                         "(zoo.convert.to_hf_llama / to_hf_bert write a Hugging Face folder from a zoo model)")
    if mtype in LLAMA_MODEL_TYPES:
        return from_hf_llama(folder)
    if mtype in BERT_MODEL_TYPES:
        return from_hf_bert(folder)
    raise ValueError(
        f"{folder}: config.json model_type={mtype!r} has no converter; supported: "
        f"{list(LLAMA_MODEL_TYPES + BERT_MODEL_TYPES)}"
    )


def convert_hf(folder: PathLike, out: PathLike, overwrite: bool = False) -> Path:
    """Convert a Hugging Face folder into a zoo export (config.json + model.safetensors + tokenizer).

    The export is what ``zoo.load_pretrained``, ``LanguageModelTask(pretrained=...)`` and the adapter
    configs read; its tokenizer serves ``data.tokenizer`` too.
    """
    from zoo.hub import export_model

    _refuse_hf_output(folder, out, overwrite)
    model = from_hf(folder)
    if getattr(model, "tokenizer", None) is None:
        # the export is what data.tokenizer and text prompts read: without a tokenizer they fail later, far from here
        from zoo.data.tokenizers import BPE_NAME

        slow = [n for n in ("tokenizer.model", "vocab.json", "vocab.txt") if (Path(folder) / n).is_file()]
        warnings.warn(
            f"{folder} has no {BPE_NAME}" + (f" (its {', '.join(slow)} is not read: only fast tokenizers are)" if slow
                                             else "")
            + f": the export carries no tokenizer, so text prompts and data.tokenizer: {out} will not work; write "
            f"{BPE_NAME} with transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(folder) and convert "
            "again", stacklevel=2,
        )
    return export_model(model, out, extra={"converted_from": str(folder)}, overwrite=overwrite)


def _refuse_hf_output(folder: PathLike, out: PathLike, overwrite: bool) -> None:
    """An export replaces same-named files (config.json, model.safetensors, tokenizer.json) of a folder that is not an
    earlier export: written into the source, or any Hugging Face model folder, it would leave that model unloadable."""
    src, dest = Path(folder), Path(out)
    if dest.exists() and src.exists() and dest.resolve() == src.resolve():
        raise ValueError(f"the output {out} is the source folder {folder}: the export would replace its config.json, "
                         "weights and tokenizer files; name a new folder")
    if overwrite:  # before converting (export_model refuses it too)
        from zoo.hub import refuse_hf_model_folder

        refuse_hf_model_folder(dest)


def _check_no_adapters(model: nn.Module, fn: str) -> None:
    if any(".adapter." in k for k in model.state_dict()):
        raise ValueError(
            f"{fn}: the model carries adapters (zoo.nn.adapters), which no Hugging Face layout holds (merge_adapters "
            "folds only DiffLoRA's LoRA; the differential part stays); convert the base without them: "
            "zoo.nn.adapters.remove_adapters(model), or zoo.load_pretrained(export_folder, adapter=False)"
        )


__all__ = [
    "bert_config_to_zoo", "bert_weight_map", "convert_hf", "from_hf", "from_hf_bert", "from_hf_llama", "llama_config_to_zoo",
    "llama_weight_map", "read_hf_config", "read_hf_weights", "to_hf_bert", "to_hf_llama",
]
