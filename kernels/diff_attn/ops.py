"""Launchers, the autograd wrapper and the capability check of the fused differential-attention kernel.

Public entry points (re-exported by ``zoo.kernels.diff_attn``):

* :func:`supports` -- can the kernel run this call? ``(ok, reason)``; ``zoo.nn.functional`` falls back
  to SDPA when it says no.
* :func:`diff_attention` -- ``softmax(q1 k1^T s) v - lam * softmax(q2 k2^T s) v`` with autograd.
* :func:`diff_attention_decode` -- split-K (flash-decoding) path for one query token per sequence.

A kernel whose tiles do not fit the GPU (``triton.runtime.errors.OutOfResources``, e.g. fp32 at head
dims 128 / 256 on a GPU with little shared memory) runs the call on ``fallback`` where the caller
passes one (``zoo.nn.functional`` under ``auto``: its PyTorch path, one warning per shape and kind of
call: decode step, inference forward, training), and is named with the shape otherwise (a forced
``triton`` backend).

Conventions are those of ``zoo.nn.functional.diff_attention``: layout ``[B, H, T, D]``, GQA by index
(query head ``h`` reads KV group ``h // (H // Hkv)``, map 1 from ``k1``, map 2 from ``k2``), causal
mask aligned bottom-right, ``key_mask`` bool ``[B, Tk]`` (True = real key), ``lam`` broadcastable to
``[B, H, Tq, 1]`` and differentiable. Rows without a visible key return 0.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from typing import Callable, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton.runtime.errors import OutOfResources

from . import triton_kernels as _K

MAX_HEAD_DIM = 128  # q/k head dim; the register budget of the two accumulators sets the limits
MAX_V_HEAD_DIM = 256
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# kernel module (compiled or interpreted) and launch configurations


def _interpreted(fn) -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(fn, InterpretedFunction)


def interpreter_state() -> tuple[bool, str]:
    """``(interpreted, problem)``: do the kernels run in the Triton interpreter, and is the setup broken?

    ``@triton.jit`` decides between compiling and interpreting when a module is imported, for
    triton's own library functions as well as for ours, so ``TRITON_INTERPRET=1`` must be set before
    ``triton`` is first imported (lightning and ``torch._dynamo`` import it too). A process that set
    it in between has a mix that cannot run; ``problem`` then names the fix.
    """
    ours = _interpreted(_K._fwd_kernel)
    theirs = _interpreted(tl.zeros)
    if ours != theirs:
        return ours, ("TRITON_INTERPRET changed between importing triton and importing zoo.kernels "
                      "(triton was imported " + ("compiled" if ours else "interpreted") + "); set "
                      "TRITON_INTERPRET=1 before anything imports triton, e.g. at the very top of the "
                      "script or in the environment")
    return ours, ""


def interpret_requested() -> bool:
    """True when the kernels run in the Triton interpreter (fixed when triton was imported)."""
    return interpreter_state()[0]


def _cfg(block_m: int, block_n: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# (BLOCK_M, BLOCK_N, num_warps, num_stages) candidates; BLOCK_M indexes queries, BLOCK_N keys.
# Two fp32 accumulators of width BLOCK_DV live in registers, so wide value heads get smaller tiles.
_FWD = {
    "small": [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 32, 4, 2)],
    "wide": [(64, 64, 4, 2), (64, 32, 4, 2), (128, 64, 8, 2), (64, 64, 8, 2), (128, 32, 8, 2), (32, 32, 4, 1)],
}
_DKDV = {  # the key tile (BLOCK_N) holds dK1, dK2, dV accumulators
    "small": [(32, 64, 4, 2), (64, 64, 4, 2), (32, 128, 8, 2), (64, 128, 8, 2), (16, 64, 4, 2)],
    "wide": [(16, 64, 4, 2), (32, 64, 8, 2), (32, 32, 4, 2), (16, 32, 4, 2), (32, 32, 8, 1), (16, 32, 4, 1)],
}
_DQ = {
    "small": [(64, 32, 4, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 2)],
    "wide": [(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 2), (32, 64, 4, 2), (64, 64, 8, 2), (16, 32, 4, 1)],
}
# The last "wide" entries are small enough to fit shared memory anywhere; the autotuner skips
# candidates that fail to compile for lack of resources.
_INTERPRET_BLOCK = 16  # small tiles keep the CPU interpreter fast and exercise multi-tile loops
_TUNE_KEY = ["D", "DV", "CAUSAL", "HAS_KM", "TUNE_TQ", "TUNE_TK"]


AUTOTUNE_ENV = "ZOO_DIFF_ATTN_AUTOTUNE"


def autotune_enabled() -> bool:
    """False when ``$ZOO_DIFF_ATTN_AUTOTUNE`` is 0 / false / off / no: each kernel then compiles one
    tile (the last candidate, which fits shared memory anywhere) instead of tuning over all of them,
    a faster start for tests and short jobs at some cost in speed. Read when a kernel is first used."""
    value = os.environ.get(AUTOTUNE_ENV, "1").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    if value in ("1", "true", "on", "yes", ""):
        return True
    raise ValueError(f"{AUTOTUNE_ENV}={value!r}: use 1 (tune over the candidate tiles, default) or 0 (one tile)")


def candidates(table: str, width: str, interpret: bool, autotune: bool) -> list[tuple[int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) tiles the autotuner chooses from."""
    if interpret:
        return [(_INTERPRET_BLOCK, _INTERPRET_BLOCK, 4, 1)]
    tiles = {"fwd": _FWD, "dkdv": _DKDV, "dq": _DQ}[table][width]
    return tiles if autotune else tiles[-1:]


@functools.lru_cache(maxsize=None)
def _tuned(name: str, table: str, width: str):
    """``triton.autotune`` over the candidate tiles (a single fixed tile under the interpreter or
    with autotuning switched off)."""
    tiles = candidates(table, width, _K.INTERPRET, autotune_enabled())
    return triton.autotune(configs=[_cfg(*c) for c in tiles], key=_TUNE_KEY)(getattr(_K, name))


def _block(d: int) -> int:
    return max(16, triton.next_power_of_2(d))  # tl.dot needs every dimension >= 16


def _width(block_dv: int) -> str:
    return "wide" if block_dv > 128 else "small"


def _bucket(n: int) -> int:
    """Autotuning key for a length: retune per power of two, not per exact length."""
    return triton.next_power_of_2(max(n, 1))


def _dot_precision(dtype: torch.dtype) -> Optional[str]:
    """fp32 inputs follow torch's own matmul switch (exact "ieee" by default); half types use the
    backend default (None)."""
    if dtype != torch.float32:
        return None
    # torch >= 2.9 has the fp32_precision API; once it has been set, reading the legacy allow_tf32 flag
    # raises ("mix of the legacy and new APIs"), so ask the new API first (it resolves inheritance
    # from torch.backends.fp32_precision and reflects the legacy flag too).
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is not None:
        return "tf32" if precision == "tf32" else "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _strides3(x: Tensor):
    return x.stride(0), x.stride(1), x.stride(2)


def _lam_view(lam: Tensor, shape) -> Tensor:
    """fp32 ``[B, H, Tq]`` broadcast view of ``lam`` (stride 0 on broadcast dims, no copy)."""
    B, H, tq = shape
    return torch.broadcast_to(lam.detach().to(torch.float32), (B, H, tq, 1))[..., 0]


def _key_mask_args(key_mask: Optional[Tensor], dummy: Tensor):
    if key_mask is None:
        return dummy, 0, 0, False
    km = key_mask.view(torch.uint8)  # same bytes as bool; Triton reads it as integers
    return km, km.stride(0), km.stride(1), True


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _on_device(t: Tensor):
    """Launch on the tensor's CUDA device (no-op on CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# The batch is a launch grid's axis z (axis y of the decode reduction), which CUDA caps at 65535 programs
# (a launch past it fails with "invalid argument"): larger batches (PatchTST folds channels into the batch,
# 128 windows x 862 traffic sensors) launch in slices of the batch.
MAX_GRID_BATCH = 65535
# The query heads (KV heads in the backward's dK/dV and the decode split) are axis y of the launch grids, capped at
# 65535 programs as well: ``supports`` declines more heads (``auto`` runs such a call on SDPA).
MAX_GRID_HEADS = 65535


def _batch_slices(*tensors, n: int):
    """``tensors`` (batch-first, or None) cut into batch slices of at most ``MAX_GRID_BATCH`` rows of ``n``,
    or None when one launch holds the batch."""
    if n <= MAX_GRID_BATCH:
        return None
    return [[None if t is None else t[b0:b0 + MAX_GRID_BATCH] for t in tensors]
            for b0 in range(0, n, MAX_GRID_BATCH)]


def _cat_parts(parts):
    """The launchers' tuples of batch slices, joined back per position (None stays None)."""
    return tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts))


_I32_MAX = 2 ** 31 - 1


def _needs_i64(*tensors) -> bool:
    """Whether a kernel's row / key offsets of these tensors (or None) pass int32: the span of the dims after
    batch and head (after the batch for a 2-d key mask), whose indices meet their strides in int32 inside the
    kernels unless ``I64`` is set (batch and head offsets are int64 always). True only past 2^31 elements of
    one (batch, head) slice, e.g. 524k tokens at a token stride of 4096: every other call keeps the int32
    arithmetic."""
    for t in tensors:
        if t is None:
            continue
        first = 2 if t.dim() >= 3 else 1
        if sum((n - 1) * abs(st) for n, st in zip(t.shape[first:], t.stride()[first:]) if n > 0) > _I32_MAX:
            return True
    return False


# ----------------------------------------------------------------------------------------------
# launchers


def _forward(q1, q2, k1, k2, v, lam_v, causal, key_mask, scale, store_stats):
    """Launch the fused forward. Returns ``(out, o2, lse1, lse2)`` (the last three None unless stats)."""
    slices = _batch_slices(q1, q2, k1, k2, v, lam_v, key_mask, n=q1.shape[0])
    if slices is not None:
        return _cat_parts([_forward(*t[:6], causal, t[6], scale, store_stats) for t in slices])
    B, H, tq, d = q1.shape
    hkv, tk, dv = k1.shape[1], k1.shape[2], v.shape[3]
    out = torch.empty(B, H, tq, dv, device=q1.device, dtype=q1.dtype)
    if store_stats:
        o2 = torch.empty_like(out)  # input dtype, like the saved o2 of the two-SDPA path
        lse1 = torch.empty(B, H, tq, device=q1.device, dtype=torch.float32)
        lse2 = torch.empty_like(lse1)
    else:
        o2, lse1, lse2 = out, out, out  # never written (STORE_STATS=False)
    km, s_kmb, s_kmt, has_km = _key_mask_args(key_mask, q1)
    bd, bdv = _block(d), _block(dv)
    kernel = _tuned("_fwd_kernel", "fwd", _width(bdv))
    grid = lambda meta: (triton.cdiv(tq, meta["BLOCK_M"]), H, B)  # noqa: E731
    with _on_device(q1):
        kernel[grid](
            q1, q2, k1, k2, v, lam_v, km, out, o2, lse1, lse2,
            *_strides3(q1), *_strides3(q2), *_strides3(k1), *_strides3(k2), *_strides3(v),
            *lam_v.stride(), s_kmb, s_kmt, *_strides3(out),
            H, H // hkv, tq, tk, scale * math.log2(math.e), _bucket(tq), _bucket(tk),
            D=d, DV=dv, BLOCK_D=bd, BLOCK_DV=bdv, CAUSAL=bool(causal), HAS_KM=has_km,
            STORE_STATS=store_stats, DOT_PREC=_dot_precision(q1.dtype),
            I64=_needs_i64(q1, q2, k1, k2, v, lam_v, key_mask, out),
        )
    if not store_stats:
        return out, None, None, None
    return out, o2, lse1, lse2


def _backward(do, q1, q2, k1, k2, v, lam_v, out, o2, lse1, lse2, causal, key_mask, scale):
    """Launch preprocess, dK/dV and dQ kernels. Returns the five input grads and ``delta2``."""
    slices = _batch_slices(do, q1, q2, k1, k2, v, lam_v, out, o2, lse1, lse2, key_mask, n=q1.shape[0])
    if slices is not None:
        return _cat_parts([_backward(*t[:11], causal, t[11], scale) for t in slices])
    B, H, tq, d = q1.shape
    hkv, tk, dv = k1.shape[1], k1.shape[2], v.shape[3]
    delta1 = torch.empty(B, H, tq, device=q1.device, dtype=torch.float32)
    delta2 = torch.empty_like(delta1)
    bd, bdv = _block(d), _block(dv)
    km, s_kmb, s_kmt, has_km = _key_mask_args(key_mask, q1)
    # fresh contiguous buffers: the kernels store dq2 / dk2 with dq1's / dk1's strides
    dq1 = torch.empty(q1.shape, device=q1.device, dtype=q1.dtype)
    dq2 = torch.empty(q2.shape, device=q2.device, dtype=q2.dtype)
    dk1 = torch.empty(k1.shape, device=k1.device, dtype=k1.dtype)
    dk2 = torch.empty(k2.shape, device=k2.device, dtype=k2.dtype)
    dvv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    qk_scale = scale * math.log2(math.e)
    i64 = _needs_i64(do, q1, q2, k1, k2, v, lam_v, key_mask, out, o2, dq1, dk1, dvv)
    common = dict(D=d, DV=dv, BLOCK_D=bd, BLOCK_DV=bdv, CAUSAL=bool(causal), HAS_KM=has_km,
                  DOT_PREC=_dot_precision(q1.dtype), I64=i64)
    pre_block = _INTERPRET_BLOCK if _K.INTERPRET else 64
    with _on_device(q1):
        _K._bwd_preprocess_kernel[(triton.cdiv(tq, pre_block), H, B)](
            out, o2, do, lam_v, delta1, delta2, *_strides3(out), *_strides3(do), *lam_v.stride(),
            H, tq, DV=dv, BLOCK_DV=bdv, BLOCK_M=pre_block, I64=i64,
        )
        inputs = (q1, q2, k1, k2, v, do, lam_v, km, lse1, lse2, delta1, delta2)
        in_strides = (*_strides3(q1), *_strides3(q2), *_strides3(k1), *_strides3(k2), *_strides3(v),
                      *_strides3(do), *lam_v.stride(), s_kmb, s_kmt)
        tail = (H, H // hkv, tq, tk, scale, qk_scale, _bucket(tq), _bucket(tk))
        _tuned("_bwd_dkdv_kernel", "dkdv", _width(bdv))[
            lambda meta: (triton.cdiv(tk, meta["BLOCK_N"]), hkv, B)
        ](*inputs, dk1, dk2, dvv, *in_strides, *_strides3(dk1), *_strides3(dvv), *tail, **common)
        _tuned("_bwd_dq_kernel", "dq", _width(bdv))[
            lambda meta: (triton.cdiv(tq, meta["BLOCK_M"]), H, B)
        ](*inputs, dq1, dq2, *in_strides, *_strides3(dq1), *tail, **common)
    return dq1, dq2, dk1, dk2, dvv, delta2


# ----------------------------------------------------------------------------------------------
# kernels that do not fit the GPU

Fallback = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]

# (kind, device, dtype, D, DV, causal, key mask) classes a kernel ran out of resources on: later calls of the
# class go to the fallback at once (no new launch, no second warning). The kind names the kernels a call
# launches, which need different resources: "decode" (split-K), "forward" (no gradients) or "train" (forward
# with statistics and the backward kernels), so a failed decode step leaves training on the kernel and back.
_NO_ROOM: set = set()
_KINDS = {"decode": "decode-step", "forward": "inference", "train": "training"}


def _room_key(kind: str, q1: Tensor, v: Tensor, causal: bool, key_mask: Optional[Tensor]) -> tuple:
    causal = bool(causal) and kind != "decode"  # one query sees the whole cache: the decode kernel has no mask
    return (kind, str(q1.device), q1.dtype, q1.shape[-1], v.shape[-1], causal, key_mask is not None)


def _no_room(exc: OutOfResources, kind: str, q1: Tensor, k1: Tensor, v: Tensor, causal: bool,
             key_mask: Optional[Tensor], fallback: Optional[Fallback], where: str) -> None:
    """An ``OutOfResources`` of a launch of ``kind`` (see ``_NO_ROOM``): warn and remember the class when there
    is a ``fallback`` to run, else raise it again, named with the shape and the backends that run it."""
    what = (f"the fused diff-attention kernel ({where}) does not fit this GPU for q{tuple(q1.shape)} "
            f"k{tuple(k1.shape)} v{tuple(v.shape)} {str(q1.dtype).replace('torch.', '')} ({exc})")
    if fallback is None:
        raise RuntimeError(f"{what}; use attention backend 'auto' (it runs such calls on SDPA) or 'sdpa' "
                           "(backend=, $ZOO_ATTN_BACKEND or attn_backend), or half precision") from exc
    _NO_ROOM.add(_room_key(kind, q1, v, causal, key_mask))
    warnings.warn(f"{what}; running {_KINDS[kind]} calls of this head dim and dtype on the PyTorch path instead",
                  RuntimeWarning, stacklevel=3)


class DiffAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: fused forward saves ``O``, ``O2`` and both LSEs; backward recomputes.

    ``fallback`` (or None) recomputes the gradients with PyTorch autograd when the backward kernels do
    not fit the GPU."""

    @staticmethod
    def forward(ctx, q1, q2, k1, k2, v, lam, causal, key_mask, scale, fallback=None):
        lam_v = _lam_view(lam, (q1.shape[0], q1.shape[1], q1.shape[2]))
        out, o2, lse1, lse2 = _forward(q1, q2, k1, k2, v, lam_v, causal, key_mask, scale, True)
        ctx.save_for_backward(q1, q2, k1, k2, v, lam, out, o2, lse1, lse2, key_mask)
        ctx.causal, ctx.scale, ctx.fallback = causal, scale, fallback
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, do):
        q1, q2, k1, k2, v, lam, out, o2, lse1, lse2, key_mask = ctx.saved_tensors
        B, H, tq = q1.shape[:3]
        lam_v = _lam_view(lam, (B, H, tq))
        try:
            dq1, dq2, dk1, dk2, dv, delta2 = _backward(
                _last_dim_contiguous(do), q1, q2, k1, k2, v, lam_v, out, o2, lse1, lse2,
                ctx.causal, key_mask, ctx.scale,
            )
        except OutOfResources as exc:
            _no_room(exc, "train", q1, k1, v, ctx.causal, key_mask, ctx.fallback, "backward")
            inputs = [t.detach().requires_grad_(need)
                      for t, need in zip((q1, q2, k1, k2, v, lam), ctx.needs_input_grad)]
            with torch.enable_grad():
                wanted = [t for t in inputs if t.requires_grad]
                grads = iter(torch.autograd.grad(ctx.fallback(*inputs), wanted, do))
            return (*(next(grads) if t.requires_grad else None for t in inputs), None, None, None, None)
        dlam = None
        if ctx.needs_input_grad[5]:
            # d out / d lam_i = -O2_i, so dlam_i = -rowsum(dO * O2) = -delta2, summed to lam's shape.
            dlam = (-delta2).unsqueeze(-1).sum_to_size(lam.shape).to(lam.dtype)
        return dq1, dq2, dk1, dk2, dv, dlam, None, None, None, None


def _decode(q1, q2, k1, k2, v, lam, key_mask, scale, num_splits: Optional[int]) -> Tensor:
    # lam broadcasts to [B, H, 1, 1]: only a 4-d lam of batch B has a batch to cut
    per_row = lam.dim() == 4 and lam.shape[0] > 1
    slices = _batch_slices(q1, q2, k1, k2, v, lam if per_row else None, key_mask, n=q1.shape[0])
    if slices is not None:
        return torch.cat([_decode(*t[:5], t[5] if per_row else lam, t[6], scale, num_splits) for t in slices])
    B, H, _, d = q1.shape
    hkv, tk, dv = k1.shape[1], k1.shape[2], v.shape[3]
    n_rep = H // hkv
    block_n = _INTERPRET_BLOCK if _K.INTERPRET else 64
    n_tiles = triton.cdiv(tk, block_n)
    if num_splits is None:
        # Enough programs to fill the device, but at least 4 tiles (256 keys) of work per split.
        n_sm = torch.cuda.get_device_properties(q1.device).multi_processor_count if q1.is_cuda else 4
        num_splits = min(triton.cdiv(2 * n_sm, B * hkv), triton.cdiv(n_tiles, 4), 128)
    num_splits = max(1, min(int(num_splits), n_tiles))
    chunk = triton.cdiv(n_tiles, num_splits) * block_n
    num_splits = triton.cdiv(tk, chunk)  # drop splits that would start past the end
    po1 = torch.empty(B, H, num_splits, dv, device=q1.device, dtype=torch.float32)
    po2 = torch.empty_like(po1)
    plse1 = torch.empty(B, H, num_splits, device=q1.device, dtype=torch.float32)
    plse2 = torch.empty_like(plse1)
    km, s_kmb, s_kmt, has_km = _key_mask_args(key_mask, q1)
    lam_v = _lam_view(lam, (B, H, 1))
    out = torch.empty(B, H, 1, dv, device=q1.device, dtype=q1.dtype)
    bd, bdv = _block(d), _block(dv)
    with _on_device(q1):
        _K._decode_split_kernel[(num_splits, hkv, B)](
            q1, q2, k1, k2, v, km, po1, po2, plse1, plse2,
            q1.stride(0), q1.stride(1), q2.stride(0), q2.stride(1),
            *_strides3(k1), *_strides3(k2), *_strides3(v), s_kmb, s_kmt,
            H, n_rep, tk, chunk, num_splits, scale * math.log2(math.e),
            D=d, DV=dv, BLOCK_D=bd, BLOCK_DV=bdv, HAS_KM=has_km, DOT_PREC=_dot_precision(q1.dtype),
            I64=_needs_i64(k1, k2, v, key_mask), BLOCK_R=max(16, triton.next_power_of_2(n_rep)), BLOCK_N=block_n,
            num_warps=4, num_stages=2,
        )
        _K._decode_reduce_kernel[(H, B)](
            po1, po2, plse1, plse2, lam_v, out, lam_v.stride(0), lam_v.stride(1),
            out.stride(0), out.stride(1), H, num_splits,
            DV=dv, BLOCK_DV=bdv, BLOCK_S=triton.next_power_of_2(num_splits), num_warps=4,
        )
    return out


# ----------------------------------------------------------------------------------------------
# public API


def supports(q: Tensor, k: Tensor, v: Tensor, lam, *, causal: bool, key_mask: Optional[Tensor],
             dropout_p: float) -> tuple[bool, str]:
    """Whether the fused kernel can run this call, and if not, why (for the SDPA fallback's log).

    ``q``/``k``/``v`` stand for both maps (``q1``/``q2`` and ``k1``/``k2`` must match in shape and
    dtype, which :func:`diff_attention` checks).
    """
    if dropout_p and dropout_p > 0.0:
        return False, f"attention dropout (dropout_p={dropout_p}) is not implemented in the fused kernel"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False, "expects 4-d [batch, heads, time, head_dim] tensors"
    devices = {q.device, k.device, v.device}
    if len(devices) != 1:
        return False, f"q, k, v are on different devices ({sorted(map(str, devices))})"
    if q.dtype not in DTYPES:
        return False, f"dtype {q.dtype} is not supported (float16, bfloat16, float32)"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return False, f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them to one dtype"
    B, H, tq, d = q.shape
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[3]
    if k.shape[0] != B or v.shape[0] != B or v.shape[1] != hkv or v.shape[2] != tk or k.shape[3] != d:
        return False, f"inconsistent shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}"
    if hkv == 0 or H % hkv:
        return False, f"query heads ({H}) must be a multiple of KV heads ({hkv})"
    if min(B, H, tq, tk, d, dv) == 0:
        return False, "empty tensors"
    if H > MAX_GRID_HEADS:
        return False, (f"{H} query heads exceed the {MAX_GRID_HEADS} programs of a CUDA launch grid's axis y, "
                       "which holds the heads; use backend 'sdpa' or 'auto', or fold heads into the batch")
    if d > MAX_HEAD_DIM:
        return False, f"q/k head dim {d} > {MAX_HEAD_DIM} is not supported by the fused kernel"
    if dv > MAX_V_HEAD_DIM:
        return False, f"v head dim {dv} > {MAX_V_HEAD_DIM} is not supported by the fused kernel"
    if not torch.is_tensor(lam):
        lam = torch.tensor(float(lam))
    if not lam.is_floating_point():
        return False, f"lambda must be a floating tensor, got {lam.dtype}"
    if lam.device != q.device and lam.dim() != 0:
        return False, f"lambda is on {lam.device} but q on {q.device}"
    if lam.dim() > 4:
        return False, f"lambda has {lam.dim()} dims; expected at most 4 ([B, H, Tq, 1])"
    try:  # lam must broadcast *to* [B, H, Tq, 1], not merely with it (e.g. [2, 1, 1, 1] at B=1 widens it)
        fits = torch.broadcast_shapes(tuple(lam.shape), (B, H, tq, 1)) == (B, H, tq, 1)
    except RuntimeError:
        fits = False
    if not fits:
        return False, f"lambda of shape {tuple(lam.shape)} does not broadcast to [B, H, Tq, 1] = {(B, H, tq, 1)}"
    if key_mask is not None:
        if key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, tk):
            return False, (f"key_mask must be bool [B, Tk] = {(B, tk)}, got {key_mask.dtype} {tuple(key_mask.shape)} "
                           "(per-query masks [B, Tq, Tk] run on the PyTorch backends)")
        if key_mask.device != q.device:
            return False, f"key_mask is on {key_mask.device} but q on {q.device}"
    # Device policy last, so that shape and dtype problems are reported wherever the call runs.
    interpreted, problem = interpreter_state()
    if problem:
        return False, problem
    if interpreted and q.dtype == torch.bfloat16:
        # The interpreter's tl.dot multiplies the raw bf16 bit patterns (numpy has no bfloat16): the
        # results would be garbage, on CPU and CUDA tensors alike.
        return False, ("bf16 is not supported under the Triton interpreter (its tl.dot mishandles bf16); "
                       "use float16 / float32, or a CUDA device without TRITON_INTERPRET")
    if q.is_cuda:
        # Under the interpreter CUDA tensors also work (slowly, via host copies): the user asked for it.
        if not interpreted and torch.cuda.get_device_capability(q.device) < (8, 0) and q.dtype == torch.bfloat16:
            return False, "bf16 tl.dot needs compute capability >= 8.0"
    elif q.device.type == "cpu":
        if not interpreted:
            return False, ("CPU tensors run only under the Triton interpreter; set TRITON_INTERPRET=1 before "
                           "triton is imported (slow, for tests) or use a CUDA device")
    else:
        return False, f"device type {q.device.type!r} is not supported (CUDA, or CPU under TRITON_INTERPRET=1)"
    return True, ""


def _prepare(q1, q2, k1, k2, v, lam, key_mask, scale, causal=False):
    if q1.shape != q2.shape or k1.shape != k2.shape:
        raise ValueError(f"the two maps disagree: q1{tuple(q1.shape)} q2{tuple(q2.shape)} "
                         f"k1{tuple(k1.shape)} k2{tuple(k2.shape)}; pass equally shaped q1/q2 and k1/k2")
    if len({q1.dtype, q2.dtype, k1.dtype, k2.dtype, v.dtype}) != 1:
        raise ValueError(f"q1, q2, k1, k2, v must share one dtype, got "
                         f"{[t.dtype for t in (q1, q2, k1, k2, v)]}; cast them first")
    ok, why = supports(q1, k1, v, lam, causal=causal, key_mask=key_mask, dropout_p=0.0)
    if not ok:
        raise ValueError(f"the fused diff-attention kernel cannot run this call: {why}")
    if not torch.is_tensor(lam):
        lam = torch.tensor(float(lam), device=q1.device)
    lam = lam.to(q1.device)
    q1, q2, k1, k2, v = (_last_dim_contiguous(t) for t in (q1, q2, k1, k2, v))
    if key_mask is not None:
        key_mask = key_mask.contiguous()
    scale = 1.0 / math.sqrt(q1.shape[-1]) if scale is None else float(scale)
    return q1, q2, k1, k2, v, lam, key_mask, scale


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _launch(run, kind: str, q1, q2, k1, k2, v, lam, causal, key_mask, fallback: Optional[Fallback]) -> Tensor:
    """``run()`` (kernels of ``kind``, see ``_NO_ROOM``), or ``fallback`` on the same tensors where a kernel
    does not fit the GPU (see the module docstring)."""
    if fallback is not None and _room_key(kind, q1, v, causal, key_mask) in _NO_ROOM:
        return fallback(q1, q2, k1, k2, v, lam)
    try:
        return run()
    except OutOfResources as exc:
        _no_room(exc, kind, q1, k1, v, causal, key_mask, fallback, "decode" if kind == "decode" else "forward")
        return fallback(q1, q2, k1, k2, v, lam)


def diff_attention(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, lam, *,
                   causal: bool = False, key_mask: Optional[Tensor] = None,
                   scale: Optional[float] = None, fallback: Optional[Fallback] = None) -> Tensor:
    """Fused ``softmax(q1 k1^T s) v - lam * softmax(q2 k2^T s) v``, differentiable in all tensors.

    Returns ``[B, H, Tq, Dv]`` in q1's dtype. A single query token without gradients takes the
    split-K decode path (:func:`diff_attention_decode`). ``fallback(q1, q2, k1, k2, v, lam)``, the same
    op in PyTorch, serves a call whose kernels do not fit the GPU (with one warning per shape); without
    it such a call raises, named with the shape.
    """
    q1, q2, k1, k2, v, lam, key_mask, scale = _prepare(q1, q2, k1, k2, v, lam, key_mask, scale, causal)
    if not _needs_grad(q1, q2, k1, k2, v, lam):
        if q1.shape[2] == 1:  # causal or not, one bottom-right query sees the whole cache
            kind = "decode"
            run = lambda: _decode(q1, q2, k1, k2, v, lam, key_mask, scale, None)  # noqa: E731
        else:
            lam_v = _lam_view(lam, q1.shape[:3])
            kind = "forward"
            run = lambda: _forward(q1, q2, k1, k2, v, lam_v, causal, key_mask, scale, False)[0]  # noqa: E731
    else:
        kind = "train"
        run = lambda: DiffAttentionFunction.apply(  # noqa: E731
            q1, q2, k1, k2, v, lam, bool(causal), key_mask, scale, fallback)
    return _launch(run, kind, q1, q2, k1, k2, v, lam, causal, key_mask, fallback)


def diff_attention_decode(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, v: Tensor, lam, *,
                          key_mask: Optional[Tensor] = None, scale: Optional[float] = None,
                          num_splits: Optional[int] = None, fallback: Optional[Fallback] = None) -> Tensor:
    """One query token (``Tq == 1``) against a KV cache, split over the keys (flash-decoding).

    Pass 1 computes both maps' partial softmax results per KV split (all query heads of a GQA group
    in one tile); pass 2 merges them by their log-sum-exps and subtracts. ``num_splits`` overrides
    the heuristic (enough programs to fill the GPU, at least 4 key tiles per split). Inference only:
    when gradients are needed the call goes through the autograd kernel instead. ``fallback`` as in
    :func:`diff_attention`.
    """
    if q1.dim() != 4 or q1.shape[2] != 1:
        raise ValueError(f"diff_attention_decode takes one query token per sequence ([B, H, 1, D]), "
                         f"got q1{tuple(q1.shape)}; use diff_attention for longer query blocks")
    q1, q2, k1, k2, v, lam, key_mask, scale = _prepare(q1, q2, k1, k2, v, lam, key_mask, scale)
    if _needs_grad(q1, q2, k1, k2, v, lam):
        kind = "train"
        run = lambda: DiffAttentionFunction.apply(  # noqa: E731
            q1, q2, k1, k2, v, lam, False, key_mask, scale, fallback)
    else:
        kind = "decode"
        run = lambda: _decode(q1, q2, k1, k2, v, lam, key_mask, scale, num_splits)  # noqa: E731
    return _launch(run, kind, q1, q2, k1, k2, v, lam, False, key_mask, fallback)
