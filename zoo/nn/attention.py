"""Multi-head attention layers with one constructor and one forward signature.

Every attention type (``vanilla``, ``diff``, ``diff_v2``, and those other modules register) is
built by :func:`build_attention` from a string, so any domain swaps attention from YAML::

    attn = build_attention("diff", dim=512, n_heads=4, layer_idx=3, causal=True, rope=True)
    y = attn(x)                       # self-attention
    y = attn(x, context=img_tokens)   # cross-attention (Tq != Tk)

Head layout: ``n_heads`` heads of output width ``head_dim`` (default ``dim // n_heads``). A ``diff``
head splits its queries and keys into two sub-heads of ``head_dim // 2`` (the paper's ``d``) and
reads values of width ``head_dim`` (the paper's ``2d``), so ``vanilla`` and ``diff`` with the same
arguments have the same projection parameters; the paper's layout (baseline with ``2h`` heads of
``d``) is ``n_heads = h``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from zoo.nn.functional import attention, diff_attention, resolve_backend
from zoo.nn.norm import RMSNorm
from zoo.nn.rotary import RotaryEmbedding

ATTENTION_TYPES: dict[str, type["AttentionBase"]] = {}


def register_attention(name: str) -> Callable[[type], type]:
    """Class decorator: make an attention layer buildable by ``build_attention(name, ...)``."""

    def deco(cls: type) -> type:
        if name in ATTENTION_TYPES and ATTENTION_TYPES[name] is not cls:
            raise ValueError(f"attention type {name!r} is already registered by {ATTENTION_TYPES[name]}")
        ATTENTION_TYPES[name] = cls
        cls.attn_type = name
        return cls

    return deco


def list_attention_types() -> list[str]:
    """Names accepted by :func:`build_attention`."""
    return sorted(ATTENTION_TYPES)


def build_attention(attn_type: str, dim: int, n_heads: int, **kwargs) -> "AttentionBase":
    """Build an attention layer by type name; see :class:`AttentionBase` for the arguments."""
    if attn_type not in ATTENTION_TYPES:
        raise ValueError(
            f"unknown attention type {attn_type!r}; known types: {list_attention_types()}. "
            "Set attn_type to one of them (new types are added with zoo.nn.register_attention)."
        )
    return ATTENTION_TYPES[attn_type](dim, n_heads, **kwargs)


def check_attn_args(attn_args: Any, config_fields: dict[str, str]) -> dict[str, Any]:
    """``attn_args`` (extra keyword arguments of the attention type, e.g. ``{"signal_ratio": 2}`` for ``gda``) as a
    dict. Keys the model sets from its own config fields (``config_fields``: keyword -> field) are refused naming
    the field to set instead (they reached the layer twice: a TypeError deep in the build)."""
    if not isinstance(attn_args, dict) or not all(isinstance(k, str) for k in attn_args):
        raise ValueError(f"attn_args must be a mapping of keyword arguments of the attention type, got {attn_args!r}")
    taken = sorted(set(attn_args) & set(config_fields))
    if taken:
        raise ValueError(f"attn_args {taken} are set by the config itself: use "
                         + ", ".join(f"{config_fields[k]} (not attn_args.{k})" for k in taken))
    return dict(attn_args)


def lambda_init_fn(layer_idx: int) -> float:
    """Depth-dependent lambda_init of Diff Transformer; ``layer_idx`` is 0-based (paper's l - 1)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


def takes_lambda_init(attn_type: str) -> bool:
    """Whether layers of ``attn_type`` (a registered name) accept a fixed ``lambda_init``."""
    return issubclass(ATTENTION_TYPES[attn_type], DiffAttention)


def require_differential(setting: str, **attn_types: str) -> None:
    """Refuse a setting only differential attention takes (keyword: the config field, value: the type name)
    unless at least one of the attention types it would reach is differential."""
    if not any(takes_lambda_init(t) for t in attn_types.values()):
        named = " and ".join(f"{field} {t!r}" for field, t in attn_types.items())
        raise ValueError(
            f"{setting} applies to differential attention; {named} {'has' if len(attn_types) == 1 else 'have'} "
            f"none (leave {setting} unset)"
        )


def check_lambda_init_for(value: Any, **attn_types: str) -> Optional[float]:
    """A config's ``lambda_init`` (``None`` passes through), checked against the attention types it would reach
    (keyword: the config field, value: the type name): refused unless at least one of them is differential."""
    if value is None:
        return None
    require_differential("lambda_init", **attn_types)
    return check_lambda_init(value)


def lambda_init_kwargs(attn_type: str, lambda_init: Optional[float], subln: bool = True) -> dict[str, Any]:
    """``{"lambda_init": value}`` for a differential type when a value is set (and ``"subln": False`` when
    the head norm is switched off), else ``{}``."""
    if not takes_lambda_init(attn_type):
        return {}
    return {**({"lambda_init": lambda_init} if lambda_init is not None else {}), **({} if subln else {"subln": False})}


def check_lambda_init(value: Any) -> float:
    """A fixed lambda_init: a number in ``[0, 1)`` (the output is scaled by ``1 - lambda_init``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(
            f"lambda_init must be a number in [0, 1) (the output is scaled by 1 - lambda_init), got {value!r}"
        )
    return float(value)


class KVCache:
    """Key/value cache of one layer for incremental decoding.

    Holds any number of ``[B, heads, T, dim]`` tensors (keys, values; ``diff`` stores both key
    maps), preallocated to ``max_len`` on first use.
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.pos = 0
        self._buffers: list[Tensor] | None = None

    def update(self, *xs: Tensor) -> tuple[Tensor, ...]:
        """Append ``xs`` along time; return the cached tensors up to and including them."""
        t = xs[0].shape[2]
        if self._buffers is None:
            self._buffers = [x.new_zeros(x.shape[0], x.shape[1], self.max_len, x.shape[3]) for x in xs]
        if self.pos + t > self.max_len:
            raise ValueError(
                f"KV cache overflow: {self.pos} cached + {t} new tokens > max_len {self.max_len}; "
                "generate fewer tokens or build the model with a larger max_seq_len"
            )
        for buf, x in zip(self._buffers, xs):
            buf[:, :, self.pos : self.pos + t] = x
        self.pos += t
        return tuple(buf[:, :, : self.pos] for buf in self._buffers)

    def reset(self) -> None:
        self.pos = 0
        self._buffers = None


class AttentionBase(nn.Module):
    """Shared constructor, projections, RoPE and cache handling.

    Args:
        dim: model width of the queries' input.
        n_heads: number of heads ``H``.
        n_kv_heads: key/value heads (GQA); ``H`` must be a multiple. Default ``H``.
        head_dim: output width per head. Default ``dim // n_heads``.
        kv_dim: width of the cross-attention ``context``. Default ``dim``.
        layer_idx: 0-based depth (sets ``diff``'s lambda_init).
        causal: mask future keys (bottom-right aligned, works with a KV cache).
        rope: rotate queries/keys (self-attention only).
        rope_theta, max_seq_len: RoPE base and table length.
        dropout: attention-probability dropout.
        bias: biases on the projections: ``True`` (all four), ``False``, or ``"qkv"`` (query, key and
            value only, as in Qwen2).
        backend: force ``naive`` / ``sdpa`` / ``triton`` (default: ``ZOO_ATTN_BACKEND`` or auto).
    """

    attn_type = "base"
    q_mult = 1  # query projection width in units of n_heads * head_dim

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        n_kv_heads: Optional[int] = None,
        head_dim: Optional[int] = None,
        kv_dim: Optional[int] = None,
        layer_idx: int = 0,
        causal: bool = False,
        rope: bool = False,
        rope_theta: float = 10000.0,
        max_seq_len: int = 2048,
        dropout: float = 0.0,
        bias: Union[bool, str] = False,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        if bias not in (True, False, "qkv"):
            raise ValueError(f"bias must be True, False or 'qkv', got {bias!r}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads <= 0 or n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a positive multiple of n_kv_heads ({n_kv_heads})")
        if head_dim is None:
            if dim % n_heads:
                raise ValueError(f"dim ({dim}) is not divisible by n_heads ({n_heads}); set head_dim explicitly")
            head_dim = dim // n_heads
        self.dim, self.n_heads, self.n_kv_heads, self.head_dim = dim, n_heads, n_kv_heads, head_dim
        self.kv_dim = kv_dim or dim
        if backend is not None:
            resolve_backend(backend)  # a misspelt name fails here, where the model is built, not at its first forward
        self.layer_idx, self.causal, self.dropout, self.backend = layer_idx, causal, dropout, backend
        qkv_bias = bool(bias)
        self.q_proj = nn.Linear(dim, self.q_mult * n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(self.kv_dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(self.kv_dim, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=bias is True)
        self.rotary = RotaryEmbedding(self.rope_dim, max_seq_len, rope_theta) if rope else None

    @property
    def rope_dim(self) -> int:
        """Width of the query/key heads that RoPE rotates."""
        return self.head_dim

    def _project(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Return q ``[B, q_mult*H, Tq, hd]`` and k, v ``[B, Hkv, Tk, hd]``."""
        src = x if context is None else context
        if src.shape[-1] != self.kv_dim:
            raise ValueError(f"context width {src.shape[-1]} != kv_dim {self.kv_dim} of this attention layer")
        B, tq, _ = x.shape
        tk = src.shape[1]
        # explicit head counts, not -1: an empty batch (B = 0) has no size to infer
        q = self.q_proj(x).view(B, tq, self.q_mult * self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(src).view(B, tk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(src).view(B, tk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a cross-attention ``context`` ([B, Tk, kv_dim]), as ``forward(x, context_kv=...)``
        takes them: projected once and reused by every call that attends to the same context (the decoding steps
        of a recognizer over one image). Both are ``[B, Hkv, Tk, ...]`` in the layer's own layout."""
        _, k, v = self._project(context.new_zeros(context.shape[0], 0, self.dim), context)  # no queries
        return k, v

    @staticmethod
    def _check_cache(x: Tensor, context: Optional[Tensor], key_mask: Optional[Tensor], cache: Optional[KVCache]) -> None:
        """A cached call is self-attention, and its ``key_mask`` covers the cached keys too; checked before the
        cache takes this call's keys, so a refused call leaves the cache as it was (every forward calls this)."""
        if cache is None:
            return
        if context is not None:
            raise ValueError("KV caching is for self-attention; pass cache=None with a context")
        if key_mask is not None and tuple(key_mask.shape) != (x.shape[0], cache.pos + x.shape[1]):
            raise ValueError(
                f"with a KV cache, key_mask covers the cached keys too: expected [{x.shape[0]}, "
                f"{cache.pos} cached + {x.shape[1]} new], got {list(key_mask.shape)}"
            )

    def _rope(self, t: Tensor, start: int, is_self: bool) -> Tensor:
        return self.rotary(t, start) if (self.rotary is not None and is_self) else t

    def forward(
        self,
        x: Tensor,
        context: Optional[Tensor] = None,
        *,
        key_mask: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
        query_mask: Optional[Tensor] = None,
        context_kv: Optional[tuple[Tensor, Tensor]] = None,
    ) -> Tensor:
        """Attend from ``x`` ([B, Tq, dim]) to itself or to ``context`` ([B, Tk, kv_dim]).

        ``context_kv``: instead of ``context``, its keys and values from :meth:`project_context` (the same
        output as passing ``context``, without projecting it again).

        ``key_mask`` (bool [B, Tk], True = real token) masks padded keys; with ``cache`` it covers
        the cached keys too. Without a cache it may also be a per-query visibility [B, Tq, Tk] (True = query
        ``i`` sees key ``j``), on every type but ``dint``, whose mean over queries would mix visibilities. ``cache`` appends this call's keys/values (self-attention only).
        ``query_mask`` (bool [B, Tq], True = real query) names padded queries, for the types whose
        output mixes queries (``dint``'s mean over queries; in self-attention it defaults to the
        queries' part of ``key_mask``); row-wise types ignore it.
        """
        src = context if context is not None else (context_kv[0] if context_kv is not None else None)
        if src is not None and src.shape[0] != x.shape[0]:
            raise ValueError(f"x has batch {x.shape[0]} but the {'context' if context is not None else 'context_kv'} "
                             f"has batch {src.shape[0]}; they must be the same samples")
        if context_kv is not None:
            if context is not None:
                raise ValueError("pass either context or context_kv (its project_context output), not both")
            if cache is not None:
                raise ValueError("KV caching is for self-attention; pass cache=None with context_kv")
            q, _, _ = self._project(x, x.new_zeros(x.shape[0], 0, self.kv_dim))  # queries only
            k, v = context_kv
        else:
            self._check_cache(x, context, key_mask, cache)
            q, k, v = self._project(x, context)
        self._check_query_mask(x, query_mask)
        start = cache.pos if cache is not None else 0
        # passed only when given, so an _attend written without it still serves every other call
        extra = {} if query_mask is None else {"query_mask": query_mask}
        out = self._attend(q, k, v, x, start, context is None and context_kv is None, key_mask, cache, **extra)
        B, H, tq, dv = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, tq, H * dv))  # no -1: B = 0 or tq = 0 has no size to infer

    def _op_kwargs(self, key_mask: Optional[Tensor]) -> dict:
        return dict(
            causal=self.causal,
            key_mask=key_mask,
            dropout_p=self.dropout,
            training=self.training,
            backend=self.backend,
        )

    @staticmethod
    def _check_query_mask(x: Tensor, query_mask: Optional[Tensor]) -> None:
        if query_mask is not None and (query_mask.dtype != torch.bool or tuple(query_mask.shape) != tuple(x.shape[:2])):
            raise ValueError(f"query_mask must be a bool tensor of shape [batch, Tq] = {tuple(x.shape[:2])}, "
                             f"got {query_mask.dtype} {tuple(query_mask.shape)}")

    def _attend(self, q, k, v, x, start, is_self, key_mask, cache, query_mask=None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


@register_attention("vanilla")
class VanillaAttention(AttentionBase):
    """Standard multi-head softmax attention (the baseline)."""

    def _attend(self, q, k, v, x, start, is_self, key_mask, cache, query_mask=None):
        q, k = self._rope(q, start, is_self), self._rope(k, start, is_self)
        if cache is not None:
            k, v = cache.update(k, v)
        return attention(q, k, v, **self._op_kwargs(key_mask))


@register_attention("diff")
class DiffAttention(AttentionBase):
    """Multi-head differential attention (Diff Transformer, arXiv 2410.05258).

    ``(softmax(Q1 K1^T/sqrt(d)) - lambda softmax(Q2 K2^T/sqrt(d))) V`` per head, then a per-head
    RMSNorm over the ``2d`` value channels and a ``(1 - lambda_init)`` scale.
    ``lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init`` with four fp32 vectors of size ``d``.
    The projections store sub-heads interleaved per head (``[H, 2, d]``), as the reference code.
    ``lambda_init`` fixes the constant in ``[0, 1)`` (the paper's ablation uses 0.5 and 0.8); ``None``
    takes the depth-dependent schedule :func:`lambda_init_fn`. ``subln=False`` leaves out the per-head
    RMSNorm and the ``(1 - lambda_init)`` scale (an ablation; Diff Transformer V2 has neither).
    """

    def __init__(self, dim: int, n_heads: int, *, lambda_init: Optional[float] = None, subln: bool = True,
                 **kwargs) -> None:
        super().__init__(dim, n_heads, **kwargs)
        if not isinstance(subln, bool):
            raise ValueError(f"subln must be True or False, got {subln!r}")
        if self.head_dim % 2:
            raise ValueError(f"diff attention needs an even head_dim (two q/k sub-heads), got {self.head_dim}")
        d = self.head_dim // 2
        self.lambda_init = lambda_init_fn(self.layer_idx) if lambda_init is None else check_lambda_init(lambda_init)
        self.lambda_q1 = nn.Parameter(torch.empty(d, dtype=torch.float32))
        self.lambda_k1 = nn.Parameter(torch.empty(d, dtype=torch.float32))
        self.lambda_q2 = nn.Parameter(torch.empty(d, dtype=torch.float32))
        self.lambda_k2 = nn.Parameter(torch.empty(d, dtype=torch.float32))
        self.subln = RMSNorm(self.head_dim, eps=1e-5) if subln else None
        self.reset_lambda()

    def head_norm(self, out: Tensor) -> Tensor:
        """Per-head RMSNorm then the ``(1 - lambda_init)`` scale; the identity with ``subln=False``."""
        return out if self.subln is None else self.subln(out) * (1.0 - self.lambda_init)

    @property
    def rope_dim(self) -> int:
        return self.head_dim // 2

    def reset_lambda(self) -> None:
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)

    def lambda_full(self) -> Tensor:
        """The layer's scalar lambda (at least fp32: a float64 model keeps float64; differentiable)."""
        dt = torch.promote_types(self.lambda_q1.dtype, torch.float32)
        l1 = torch.exp(torch.sum(self.lambda_q1.to(dt) * self.lambda_k1.to(dt)))
        l2 = torch.exp(torch.sum(self.lambda_q2.to(dt) * self.lambda_k2.to(dt)))
        return l1 - l2 + self.lambda_init

    def _attend(self, q, k, v, x, start, is_self, key_mask, cache, query_mask=None):
        B, H, tq, _ = q.shape
        d = self.head_dim // 2
        q = q.view(B, H, tq, 2, d)
        k = k.view(B, self.n_kv_heads, k.shape[2], 2, d)
        q1, q2 = self._rope(q[..., 0, :], start, is_self), self._rope(q[..., 1, :], start, is_self)
        k1, k2 = self._rope(k[..., 0, :], start, is_self), self._rope(k[..., 1, :], start, is_self)
        if cache is not None:
            k1, k2, v = cache.update(k1, k2, v)
        out = diff_attention(q1, q2, k1, k2, v, self.lambda_full(), **self._op_kwargs(key_mask))
        return self.head_norm(out)


@register_attention("diff_v2")
class DiffAttentionV2(AttentionBase):
    """Differential attention V2 (microsoft/unilm Diff-Transformer-V2).

    ``2H`` query heads of ``head_dim`` against ordinary K/V heads; heads ``0::2`` and ``1::2`` are the
    two maps of one output head: ``a1 - lambda * a2`` with ``lambda = sigmoid(Linear(x))`` per token
    and head. No subln, no lambda_init. The extra queries cost ``dim * H * head_dim`` parameters
    over ``vanilla``. Paper leaves the lambda projection's init open; we use zero weights and bias
    (lambda = 0.5 everywhere at the start).
    """

    q_mult = 2

    def __init__(self, dim: int, n_heads: int, **kwargs) -> None:
        super().__init__(dim, n_heads, **kwargs)
        self.lambda_proj = nn.Linear(dim, n_heads, bias=True)
        nn.init.zeros_(self.lambda_proj.weight)
        nn.init.zeros_(self.lambda_proj.bias)
        self.lambda_proj._zoo_keep_init = True  # model-wide re-inits leave it alone

    def _attend(self, q, k, v, x, start, is_self, key_mask, cache, query_mask=None):
        q = self._rope(q, start, is_self)
        k = self._rope(k, start, is_self)
        if cache is not None:
            k, v = cache.update(k, v)
        logits = self.lambda_proj(x)
        lam = torch.sigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32)))  # float64 stays float64
        lam = lam.transpose(1, 2).unsqueeze(-1)  # [B, H, Tq, 1]
        return diff_attention(q[:, 0::2], q[:, 1::2], k, k, v, lam, **self._op_kwargs(key_mask))
