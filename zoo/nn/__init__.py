"""The shared core: differential attention (self and cross), its variants, norms, rotary, MLPs."""

from zoo.nn.attention import (
    ATTENTION_TYPES,
    AttentionBase,
    DiffAttention,
    DiffAttentionV2,
    KVCache,
    VanillaAttention,
    build_attention,
    lambda_init_fn,
    list_attention_types,
    register_attention,
)
# `attention` (the single-map op) stays in zoo.nn.functional: exporting it here would shadow
# the zoo.nn.attention submodule.
from zoo.nn.functional import BACKENDS, diff_attention, resolve_backend
from zoo.nn.mlp import GeluMlp, SwiGLU, swiglu_hidden
from zoo.nn.modes import eval_mode
from zoo.nn.norm import RMSNorm
from zoo.nn.rotary import RotaryEmbedding

__all__ = [
    "ATTENTION_TYPES", "AttentionBase", "BACKENDS", "DiffAttention", "DiffAttentionV2", "GeluMlp",
    "KVCache", "RMSNorm", "RotaryEmbedding", "SwiGLU", "VanillaAttention",
    "build_attention", "diff_attention", "eval_mode", "lambda_init_fn", "list_attention_types",
    "register_attention", "resolve_backend", "swiglu_hidden",
]
import zoo.nn.variants  # noqa: F401,E402
