"""Naive fp32 differential attention: the reference the Triton kernel is tested against.

Written independently of ``zoo.nn.functional`` on purpose (tests must not compare the kernel with code
that shares its assumptions). It materializes both ``[B, H, Tq, Tk]`` probability maps, so use it at
small sizes only.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor


def visible_keys(tq: int, tk: int, causal: bool, key_mask: Optional[Tensor], device) -> Tensor:
    """Bool ``[B or 1, 1, Tq, Tk]``: True where query ``i`` may attend to key ``j``.

    Causal masking is bottom-right aligned: query ``i`` sits at absolute position ``tk - tq + i``.
    """
    vis = torch.ones(1, 1, tq, tk, dtype=torch.bool, device=device)
    if causal:
        qpos = torch.arange(tq, device=device)[:, None] + (tk - tq)
        kpos = torch.arange(tk, device=device)[None, :]
        vis = vis & (kpos <= qpos)
    if key_mask is not None:
        vis = vis & key_mask[:, None, None, :].to(device=device, dtype=torch.bool)
    return vis


def _probs(q: Tensor, k: Tensor, vis: Tensor, scale: float) -> Tensor:
    """Row softmax of ``q k^T * scale`` over visible keys; rows with no visible key are all zero."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = s.masked_fill(~vis, float("-inf"))
    row_has_key = vis.any(dim=-1, keepdim=True)
    # An all -inf row would give NaN (and NaN gradients); give it finite scores, then zero it.
    s = s.masked_fill(~row_has_key, 0.0)
    return torch.softmax(s, dim=-1) * row_has_key


def diff_attention_reference(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    v: Tensor,
    lam,
    *,
    causal: bool = False,
    key_mask: Optional[Tensor] = None,
    scale: Optional[float] = None,
    upcast: bool = True,
) -> Tensor:
    """``softmax(q1 k1^T s) v - lam * softmax(q2 k2^T s) v`` computed in fp32, returned in q1's dtype.

    ``upcast=False`` runs the same math in the inputs' dtype instead: the error of that plain
    low-precision implementation is the yardstick for the kernel's half-precision tolerances.

    Layout ``[B, H, T, D]``; ``k1``/``k2``/``v`` have ``Hkv`` heads and query head ``h`` uses KV group
    ``h // (H // Hkv)`` (map 1 with ``k1[g]``, map 2 with ``k2[g]``). ``lam`` broadcasts to
    ``[B, H, Tq, 1]``. Differentiable in every tensor input.
    """
    B, H, tq, d = q1.shape
    hkv, tk = k1.shape[1], k1.shape[2]
    rep = H // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    vis = visible_keys(tq, tk, causal, key_mask, q1.device)

    dtype = torch.float32 if upcast else q1.dtype

    def group(x: Tensor) -> Tensor:  # KV head g serves query heads g*rep .. g*rep+rep-1
        return x.to(dtype).repeat_interleave(rep, dim=1)

    vf = group(v)
    o1 = torch.matmul(_probs(q1.to(dtype), group(k1), vis, scale).to(dtype), vf)
    o2 = torch.matmul(_probs(q2.to(dtype), group(k2), vis, scale).to(dtype), vf)
    lam_t = lam if torch.is_tensor(lam) else torch.tensor(float(lam), device=q1.device)
    return (o1 - lam_t.to(dtype) * o2).to(q1.dtype)
