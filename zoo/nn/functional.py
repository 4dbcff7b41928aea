"""Functional attention ops with one backend switch.

Two ops share every convention:

* :func:`attention` -- one softmax map, ``softmax(q k^T * scale) v``.
* :func:`diff_attention` -- the differential map of Diff Transformer,
  ``softmax(q1 k1^T * scale) v - lam * softmax(q2 k2^T * scale) v``.

Conventions (all backends):

* Layout ``[batch, heads, time, head_dim]``. ``q*`` has ``H`` heads, ``k*``/``v`` have ``Hkv``
  heads with ``H % Hkv == 0`` (GQA). Query head ``h`` reads KV group ``h // (H // Hkv)``; in
  :func:`diff_attention` its map 1 uses that group's ``k1`` and its map 2 that group's ``k2``.
* ``causal=True`` aligns the mask bottom-right: query ``i`` sits at absolute position
  ``Tk - Tq + i``, so a query block appended to a KV cache sees the whole cache.
* ``key_mask``: bool ``[batch, Tk]``, ``True`` where the key is a real token, or a per-query
  visibility ``[batch, Tq, Tk]`` (query ``i`` sees key ``j`` where ``True``; e.g. PARSeq's
  permutation masks; the PyTorch backends only). A query with no visible key at all (e.g. a padded
  query under a causal mask) returns zeros.
* ``lam`` is a tensor broadcastable to ``[batch, H, Tq, 1]`` (a scalar, ``[H, 1, 1]``, or per
  token ``[batch, H, Tq, 1]``) and stays differentiable.

Backends: ``naive`` (materialized fp32 softmax, the reference), ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``), ``triton`` (the fused kernel in
``zoo.kernels``; CUDA, or CPU under ``TRITON_INTERPRET=1``), and ``auto``, which picks Triton when
the kernel supports the call and SDPA otherwise, except for small single-token decode steps
(batch x cache < ``AUTO_DECODE_MIN_KEYS``), where two SDPA calls were faster on an H100, and for CUDA tensors
in a process with ``TRITON_INTERPRET=1`` (the CPU interpreter). Under ``auto`` a call whose kernel does not
fit the GPU (triton's ``OutOfResources``) runs on SDPA, with one warning per shape; a forced ``triton`` raises
it, named with the shape. The choice comes from the ``backend`` argument,
else the ``ZOO_ATTN_BACKEND`` environment variable, else ``auto``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

BACKENDS = ("auto", "naive", "sdpa", "triton")
ENV_VAR = "ZOO_ATTN_BACKEND"


def resolve_backend(backend: Optional[str] = None) -> str:
    """Return the requested backend name: the argument, else ``$ZOO_ATTN_BACKEND``, else ``auto``."""
    name = backend or os.environ.get(ENV_VAR) or "auto"
    name = name.lower()
    if name not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {name!r} (from {'argument' if backend else ENV_VAR}); "
            f"choose one of {BACKENDS}"
        )
    return name


def _check_shapes(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor]) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "attention expects [batch, heads, time, head_dim] tensors, got "
            f"q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
        )
    B, H, _, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"q{tuple(q.shape)}, k{tuple(k.shape)} and v{tuple(v.shape)} disagree on batch, KV heads or key length"
        )
    if k.shape[3] != D:
        raise ValueError(f"q and k head dims differ: {D} vs {k.shape[3]}")
    if H % k.shape[1] != 0:
        raise ValueError(f"query heads ({H}) must be a multiple of KV heads ({k.shape[1]})")
    if key_mask is not None and (
        key_mask.dtype != torch.bool or tuple(key_mask.shape) not in ((B, k.shape[2]), (B, q.shape[2], k.shape[2]))
    ):
        raise ValueError(
            f"key_mask must be a bool tensor of shape [batch, Tk] = {(B, k.shape[2])} or, per query, "
            f"[batch, Tq, Tk] = {(B, q.shape[2], k.shape[2])}; got {key_mask.dtype} {tuple(key_mask.shape)}"
        )


def visibility_mask(
    tq: int, tk: int, causal: bool, key_mask: Optional[Tensor], device: torch.device
) -> Optional[Tensor]:
    """Bool mask broadcastable to ``[B, 1, Tq, Tk]`` (True = visible), or None when all is visible."""
    mask = None
    if causal and not (tq == 1):
        qpos = torch.arange(tk - tq, tk, device=device)[:, None]
        kpos = torch.arange(tk, device=device)[None, :]
        mask = (kpos <= qpos)[None, None]
    if key_mask is not None:
        km = key_mask[:, None] if key_mask.dim() == 3 else key_mask[:, None, None, :]
        mask = km if mask is None else (mask & km)
    return mask


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _naive_single(q, k, v, mask, scale, dropout_p, training) -> Tensor:
    """Materialized fp32 softmax attention; the reference every backend is tested against."""
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    dt = torch.promote_types(q.dtype, torch.float32)  # at least fp32: float64 inputs stay float64
    s = torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if mask is not None:
        p = torch.nan_to_num(p, nan=0.0)  # rows with no visible key
    if dropout_p > 0.0 and training:
        p = F.dropout(p, dropout_p)
    return torch.matmul(p, v.to(dt))


def _sdpa_single(q, k, v, mask, scale, dropout_p, causal_only) -> Tensor:
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        # enable_gqa exists from torch 2.5; repeat is the portable fallback.
        k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    if q.device.type == "cpu" and dropout_p == 0.0 and q.shape[-1] < v.shape[-1]:
        # PyTorch's fused CPU kernel needs one head dim for q, k and v; with diff attention's wider values
        # it falls back to the unfused math path (slower, and a full -inf scan per row). Zero channels leave
        # q k^T as it is (the scale is explicit). Dropout runs the math path either way (and its random draws).
        pad = v.shape[-1] - q.shape[-1]
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
    if causal_only:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale)
    # A finite additive mask keeps fully masked rows NaN-free; they are zeroed afterwards.
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~mask, torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    return out * mask.any(dim=-1, keepdim=True).to(out.dtype)


def _triton_impl():
    try:
        from zoo.kernels import diff_attn as impl  # noqa: WPS433 (optional, heavy import)
    except Exception as exc:  # noqa: BLE001 -- any import failure means "no kernel"
        log.debug("triton backend unavailable: %s", exc)
        return None
    return impl


# Single-token decode below this many keys over the batch (batch x cache length) goes to SDPA under
# ``auto``: on an H100 (bf16, scripts/results/attention) the split-K kernel sat at a ~0.09 ms launch
# floor while two SDPA calls took 0.03-0.08 ms there, and it won from 32k keys on (1.2-1.5x).
AUTO_DECODE_MIN_KEYS = 32768


def small_decode(batch: int, tq: int, tk: int, needs_grad: bool) -> bool:
    """True for a single-token, gradient-free step over fewer than ``AUTO_DECODE_MIN_KEYS`` keys."""
    return tq == 1 and not needs_grad and batch * tk < AUTO_DECODE_MIN_KEYS


def _pick(backend: str, on_cuda: bool, supported_by_triton, small_decode_step: bool = False, on_cpu: bool = False) -> str:
    if backend == "triton" and not on_cuda:
        # a model forced to `triton` still runs on other tensors, on the PyTorch path; the kernel serves CPU
        # tensors only when the Triton interpreter was requested (TRITON_INTERPRET=1, tests)
        impl = _triton_impl()
        return "triton" if on_cpu and impl is not None and impl.interpret_requested() else "sdpa"
    if backend != "auto":
        return backend
    if not on_cuda:
        return "sdpa"  # CPU tensors take the PyTorch path (Triton on CPU is the slow interpreter)
    if small_decode_step:
        return "sdpa"
    impl = _triton_impl()
    if impl is not None and impl.interpret_requested():
        # TRITON_INTERPRET=1 (set for the kernel tests) would run CUDA tensors through the CPU interpreter, orders of
        # magnitude slower than SDPA; a forced `triton` still does (the user asked for the kernel)
        log.debug("auto backend: the Triton interpreter is on; CUDA tensors use sdpa")
        return "sdpa"
    if impl is not None:
        ok, why = supported_by_triton(impl)
        if ok:
            return "triton"
        log.debug("auto backend: triton skipped (%s); using sdpa", why)
    return "sdpa"


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    training: bool = True,
    backend: Optional[str] = None,
) -> Tensor:
    """Single-map multi-head attention ``softmax(q k^T * scale) v`` (see module docstring)."""
    _check_shapes(q, k, v, key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    name = resolve_backend(backend)
    if name == "triton":
        # the fused kernel is differential: a model forced to `triton` (ZOO_ATTN_BACKEND, attn_backend) runs
        # its single-map layers (vanilla, DINT's extra map, encoders) on SDPA
        name = "sdpa"
    tq, tk = q.shape[2], k.shape[2]
    mask = visibility_mask(tq, tk, causal, key_mask, q.device)
    p = dropout_p if training else 0.0
    if name == "naive":
        return _naive_single(q, k, v, mask, scale, p, training).to(q.dtype)
    return _sdpa_single(q, k, v, mask, scale, p, causal and key_mask is None and tq == tk and tq > 1)


def check_maps(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, key_mask: Optional[Tensor]) -> None:
    """Shapes of a two-map call (:func:`diff_attention`, DINT): each map as :func:`attention` takes it, and both
    maps equally shaped, else ``o1 - lam * o2`` could broadcast silently."""
    if q1.shape != q2.shape or k1.shape != k2.shape:
        raise ValueError(f"the two maps disagree: q1{tuple(q1.shape)} q2{tuple(q2.shape)} "
                         f"k1{tuple(k1.shape)} k2{tuple(k2.shape)}; pass equally shaped q1/q2 and k1/k2")
    _check_shapes(q1, k1, v, key_mask)
    _check_shapes(q2, k2, v, key_mask)


def check_lambda(lam, q: Tensor) -> Tensor:
    """``lam`` as a tensor (a Python number: at least fp32, as the maps; a float64 call keeps float64), refused by
    name unless it broadcasts *to* ``[batch, H, Tq, 1]`` of the queries ``q``: ``[H]`` would scale value channels,
    ``[2, 1, 1, 1]`` at batch 1 widen the batch."""
    if not torch.is_tensor(lam):
        lam = torch.tensor(float(lam), dtype=torch.promote_types(q.dtype, torch.float32), device=q.device)
    want = (q.shape[0], q.shape[1], q.shape[2], 1)
    try:
        fits = torch.broadcast_shapes(tuple(lam.shape), want) == want
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"lam of shape {tuple(lam.shape)} does not broadcast to [batch, H, Tq, 1] = {want}; "
                         "pass a scalar, [H, 1, 1] (per head) or [batch, H, Tq, 1] (per token)")
    return lam


def diff_attention(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    v: Tensor,
    lam: Tensor,
    *,
    causal: bool = False,
    key_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    training: bool = True,
    backend: Optional[str] = None,
) -> Tensor:
    """Differential attention ``A1 v - lam * A2 v`` with ``Ai = softmax(qi ki^T * scale)``.

    Returns ``[batch, H, Tq, v_dim]`` in the dtype of ``q1``. See the module docstring for
    shapes, masks and backends.
    """
    check_maps(q1, q2, k1, k2, v, key_mask)
    scale = 1.0 / math.sqrt(q1.shape[-1]) if scale is None else scale
    lam = check_lambda(lam, q1)
    p = dropout_p if training else 0.0
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q1, q2, k1, k2, v, lam))
    requested = resolve_backend(backend)
    name = _pick(
        requested,
        q1.is_cuda,
        lambda impl: impl.supports(q1, k1, v, lam, causal=causal, key_mask=key_mask, dropout_p=p),
        small_decode(q1.shape[0], q1.shape[2], k1.shape[2], grad),
        on_cpu=q1.device.type == "cpu",
    )
    if name == "triton" and key_mask is not None and key_mask.dim() == 3:
        # the fused kernel masks keys per row of the batch, not per query: a per-query mask (PARSeq's permutation
        # masks) runs on SDPA, also where the model is forced to `triton`, as its single-map layers do
        log.debug("per-query key_mask %s: diff_attention runs on sdpa", tuple(key_mask.shape))
        name = "sdpa"
    if name == "triton" and min(q1.shape[:3] + k1.shape[2:3]) == 0:
        # an empty batch or sequence is a call like any other (as on every other backend); the kernel declines
        # empty tensors, and the PyTorch path gives the empty output (without keys: zero rows, zero gradients)
        name = "sdpa"
    if name == "triton":
        impl = _triton_impl()
        if impl is None:
            raise RuntimeError("backend 'triton' was requested but zoo.kernels.diff_attn could not be imported")
        ok, why = impl.supports(q1, k1, v, lam, causal=causal, key_mask=key_mask, dropout_p=p)
        if not ok:
            raise ValueError(f"backend 'triton' cannot run this call: {why}")
        # under auto, a call whose kernel does not fit the GPU (OutOfResources) runs on SDPA, with a warning; a forced
        # `triton` raises it, named
        fallback = None if requested == "triton" else (
            lambda *t: _two_maps("sdpa", *t, causal=causal, key_mask=key_mask, scale=scale, p=p, training=training))
        return impl.diff_attention(q1, q2, k1, k2, v, lam, causal=causal, key_mask=key_mask, scale=scale,
                                   fallback=fallback)
    return _two_maps(name, q1, q2, k1, k2, v, lam, causal=causal, key_mask=key_mask, scale=scale, p=p,
                     training=training)


def _two_maps(name: str, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, lam: Tensor, *, causal: bool,
              key_mask: Optional[Tensor], scale: float, p: float, training: bool) -> Tensor:
    """:func:`diff_attention` on a PyTorch backend (``naive`` or ``sdpa``)."""
    tq, tk = q1.shape[2], k1.shape[2]
    mask = visibility_mask(tq, tk, causal, key_mask, q1.device)
    if name == "naive":
        o1 = _naive_single(q1, k1, v, mask, scale, p, training)
        o2 = _naive_single(q2, k2, v, mask, scale, p, training)
    else:
        causal_only = causal and key_mask is None and tq == tk and tq > 1
        o1 = _sdpa_single(q1, k1, v, mask, scale, p, causal_only)
        o2 = _sdpa_single(q2, k2, v, mask, scale, p, causal_only)
    # the subtraction in at least fp32, as the fused kernel does: in bf16, lambda's rounding (0.882 -> 0.8828)
    # and the product's would be magnified by the cancellation (and by OpAmp's gain after it)
    ct = torch.promote_types(o1.dtype, torch.float32)
    return (o1.to(ct) - lam.to(ct) * o2.to(ct)).to(q1.dtype)
