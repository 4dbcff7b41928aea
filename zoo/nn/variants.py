"""Differential-attention variants for training from scratch: Shared DIFF, DINT, GDA.

All three keep the constructor and forward of :class:`zoo.nn.AttentionBase` (extra keyword
arguments have defaults), so ``attn_type: shared_diff | dint | gda`` works from YAML in every
domain. They share Diff Transformer's lambda re-parametrization, per-head RMSNorm (subln) and
``(1 - lambda_init)`` output scale (inherited from :class:`zoo.nn.DiffAttention`).

Which ones run on the fused kernel (through :func:`zoo.nn.diff_attention`, so the ``triton``
backend serves them on CUDA when the kernel supports the call):

* ``shared_diff``: yes -- only the projections differ from ``diff``.
* ``gda``: yes -- noise heads are expanded to the signal heads before the call (parameter
  saving, not a compute saving).
* ``dint``: no -- the integral term needs ``A1 V`` on its own, so it makes two single-map calls
  (:func:`zoo.nn.functional.attention`, SDPA or naive) and combines them.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from zoo.nn.attention import DiffAttention, register_attention
from zoo.nn.functional import attention, check_lambda, check_maps, diff_attention


def _positive_int(value: Any, what: str, hint: str) -> int:
    """``value`` as an int when it is a whole number >= 1 (3 or 3.0); otherwise a ValueError naming ``what``."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer {hint}, got {value!r}")
    return int(value)


@register_attention("shared_diff")
class SharedDiffAttention(DiffAttention):
    """Shared DIFF (arXiv 2501.17900): both maps share a base projection plus low-rank updates.

    ``Wq1 = W_q + U1 V1``, ``Wq2 = W_q + U2 V2`` (same for keys, with their own base), values as in
    ``diff``. ``q_proj``/``k_proj`` are the shared bases (width ``heads * d``); the updates are
    ``q_lora{1,2}`` / ``k_lora{1,2}`` (``Linear(dim, rank) -> Linear(rank, heads * d)``).

    Args:
        rank: rank of each low-rank update. Paper leaves the default open; we use ``max(1, d // 4)``
            with ``d = head_dim // 2``. Init follows the model's (random, so the two maps differ).
        **kwargs: see :class:`zoo.nn.AttentionBase`.
    """

    def __init__(self, dim: int, n_heads: int, *, rank: Optional[int] = None, **kwargs) -> None:
        super().__init__(dim, n_heads, **kwargs)
        d = self.head_dim // 2
        self.rank = max(1, d // 4) if rank is None else _positive_int(rank, "shared_diff rank", "(or None for max(1, head_dim // 4))")
        bias = self.q_proj.bias is not None
        self.q_proj = nn.Linear(dim, n_heads * d, bias=bias)
        self.k_proj = nn.Linear(self.kv_dim, self.n_kv_heads * d, bias=bias)

        def lowrank(inp: int, out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(inp, self.rank, bias=False), nn.Linear(self.rank, out, bias=False))

        self.q_lora1, self.q_lora2 = lowrank(dim, n_heads * d), lowrank(dim, n_heads * d)
        self.k_lora1, self.k_lora2 = lowrank(self.kv_dim, self.n_kv_heads * d), lowrank(self.kv_dim, self.n_kv_heads * d)

    def _project(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        src = x if context is None else context
        if src.shape[-1] != self.kv_dim:
            raise ValueError(f"context width {src.shape[-1]} != kv_dim {self.kv_dim} of this attention layer")
        B, tq, _ = x.shape
        tk = src.shape[1]
        d = self.head_dim // 2
        qb, kb = self.q_proj(x), self.k_proj(src)
        # Interleave per head ([H, 2, d]) so DiffAttention._attend reads map 1 / map 2 as for ``diff``.
        q = torch.stack([qb + self.q_lora1(x), qb + self.q_lora2(x)], dim=-1)  # [B, T, H*d, 2]
        q = q.view(B, tq, self.n_heads, d, 2).transpose(-1, -2).reshape(B, tq, self.n_heads, 2 * d)
        k = torch.stack([kb + self.k_lora1(src), kb + self.k_lora2(src)], dim=-1)
        k = k.view(B, tk, self.n_kv_heads, d, 2).transpose(-1, -2).reshape(B, tk, self.n_kv_heads, 2 * d)
        v = self.v_proj(src).view(B, tk, self.n_kv_heads, self.head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def dint_attention(
    q1: Tensor,
    q2: Tensor,
    k1: Tensor,
    k2: Tensor,
    v: Tensor,
    lam: Tensor,
    *,
    causal: bool = False,
    key_mask: Optional[Tensor] = None,
    query_mask: Optional[Tensor] = None,
    prefix: Optional[tuple[Tensor, Tensor]] = None,
    dropout_p: float = 0.0,
    training: bool = True,
    backend: Optional[str] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Differential-integral attention ``(A1 - lam A2 + lam G) V`` (DINT, arXiv 2501.17486).

    ``G`` repeats, for every query, the mean over queries of ``A1``'s rows (how much the queries
    attend to each key), so each row of ``A1 - lam A2 + lam G`` sums to exactly 1. Since
    ``G V = mean_i (A1 V)_i``, the op needs ``o1 = A1 V`` and ``o2 = A2 V`` only.
    Paper leaves causal models open; we use the causal (running) mean over queries up to ``i``,
    which keeps the map causal and its rows summing to 1. ``query_mask`` ([B, Tq] bool) drops
    padded queries from the mean; ``prefix`` = (sum of ``o1`` weights, count) over earlier
    (cached) queries. Returns the output and the updated prefix.
    """
    check_maps(q1, q2, k1, k2, v, key_mask)
    if key_mask is not None and key_mask.dim() == 3:
        raise ValueError(
            "dint_attention takes key_mask [batch, Tk] only: its integral term averages attention rows over the "
            f"queries, which under a per-query mask {tuple(key_mask.shape)} would carry keys hidden from a query "
            "into its output; call it once per query group that shares one visibility"
        )
    lam = check_lambda(lam, q1)
    kw = dict(causal=causal, key_mask=key_mask, dropout_p=dropout_p, training=training, backend=backend)
    dt = torch.promote_types(q1.dtype, torch.float32)  # at least fp32: float64 inputs stay float64
    o1 = attention(q1, k1, v, **kw).to(dt)
    o2 = attention(q2, k2, v, **kw).to(dt)
    B, H, tq, _ = o1.shape
    w = o1.new_ones(B, 1, tq, 1) if query_mask is None else query_mask[:, None, :, None].to(dt)
    s_prev, n_prev = prefix if prefix is not None else (o1.new_zeros(B, H, 1, o1.shape[-1]), o1.new_zeros(B, 1, 1, 1))
    if causal:
        s = s_prev + torch.cumsum(o1 * w, dim=2)
        n = n_prev + torch.cumsum(w, dim=2)
        new_prefix = (s[:, :, -1:], n[:, :, -1:]) if tq else (s_prev, n_prev)  # an empty chunk keeps the state
    else:
        s = s_prev + (o1 * w).sum(dim=2, keepdim=True)
        n = n_prev + w.sum(dim=2, keepdim=True)
        new_prefix = (s, n)
    g = s / n.clamp(min=1e-12)
    lam = lam.to(dt) if torch.is_tensor(lam) else torch.tensor(float(lam), dtype=dt, device=o1.device)
    out = o1 - lam * o2 + lam * g
    return out.to(q1.dtype), new_prefix


@register_attention("dint")
class DintAttention(DiffAttention):
    """DINT attention: ``diff`` plus a global-importance integral term (see :func:`dint_attention`).

    Same parameters and lambda as ``diff``. Runs on two single-map calls (SDPA or naive), not the
    fused differential kernel. Decoding with a KV cache keeps the running mean on the cache.
    Padded queries stay out of the mean: in self-attention those ``key_mask`` marks, in cross-attention
    those ``query_mask`` marks (``forward(x, context, query_mask=...)``).
    """

    def _attend(self, q, k, v, x, start, is_self, key_mask, cache, query_mask=None):
        B, H, tq, _ = q.shape
        d = self.head_dim // 2
        q = q.view(B, H, tq, 2, d)
        k = k.view(B, self.n_kv_heads, k.shape[2], 2, d)
        q1, q2 = self._rope(q[..., 0, :], start, is_self), self._rope(q[..., 1, :], start, is_self)
        k1, k2 = self._rope(k[..., 0, :], start, is_self), self._rope(k[..., 1, :], start, is_self)
        prefix = None
        if cache is not None:
            prefix = getattr(cache, "_dint_prefix", None) if start > 0 else None
            k1, k2, v = cache.update(k1, k2, v)
        if query_mask is None and key_mask is not None and is_self:
            query_mask = key_mask[:, -tq:]
        out, new_prefix = dint_attention(
            q1, q2, k1, k2, v, self.lambda_full(), query_mask=query_mask, prefix=prefix,
            **self._op_kwargs(key_mask),
        )
        if cache is not None:
            cache._dint_prefix = new_prefix  # running mean state for the next decoding step
        return self.head_norm(out)


@register_attention("gda")
class GroupedDiffAttention(DiffAttention):
    """Grouped Differential Attention (Motif-2, arXiv 2511.07464): fewer noise heads than signal heads.

    ``n_heads`` signal heads (map 1, query/key sub-heads of ``d = head_dim // 2``, values of
    ``head_dim``) and ``n_heads // signal_ratio`` noise heads (map 2); noise head ``j`` serves
    signal heads ``j*r .. j*r + r - 1``. Keys: ``n_kv_heads`` signal key heads and
    ``max(1, n_kv_heads // signal_ratio)`` noise key heads. Output head ``h`` is
    ``A_sig[h] V[g(h)] - lambda A_noise[h // r] V[g(h)]``. ``signal_ratio=1`` is ``diff`` with a
    non-interleaved layout. Noise heads are expanded before the fused call, so the saving is in
    parameters (and K-cache), not in attention FLOPs.

    Args:
        signal_ratio: signal heads per noise head (3 or 4 reported best; default 3).
    """

    def __init__(self, dim: int, n_heads: int, *, signal_ratio: int = 3, **kwargs) -> None:
        super().__init__(dim, n_heads, **kwargs)
        r = _positive_int(signal_ratio, "gda signal_ratio", "(signal heads per noise head)")
        if n_heads % r:
            raise ValueError(f"gda: n_heads ({n_heads}) must be a multiple of signal_ratio ({signal_ratio})")
        self.signal_ratio = r
        self.n_noise_heads = n_heads // r
        self.n_noise_kv_heads = max(1, self.n_kv_heads // r)
        if self.n_noise_heads % self.n_noise_kv_heads:
            raise ValueError(
                f"gda: noise heads ({self.n_noise_heads}) must be a multiple of noise KV heads "
                f"({self.n_noise_kv_heads} = n_kv_heads // signal_ratio); pick n_kv_heads accordingly"
            )
        d = self.head_dim // 2
        bias = self.q_proj.bias is not None
        self.q_proj = nn.Linear(dim, (n_heads + self.n_noise_heads) * d, bias=bias)
        self.k_proj = nn.Linear(self.kv_dim, (self.n_kv_heads + self.n_noise_kv_heads) * d, bias=bias)

    def _project(self, x: Tensor, context: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        src = x if context is None else context
        if src.shape[-1] != self.kv_dim:
            raise ValueError(f"context width {src.shape[-1]} != kv_dim {self.kv_dim} of this attention layer")
        B, tq, _ = x.shape
        tk = src.shape[1]
        d = self.head_dim // 2
        q = self.q_proj(x).view(B, tq, self.n_heads + self.n_noise_heads, d).transpose(1, 2)  # [B, H + Hn, T, d]
        k = self.k_proj(src).view(B, tk, self.n_kv_heads + self.n_noise_kv_heads, d).transpose(1, 2)
        v = self.v_proj(src).view(B, tk, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def _attend(self, q, k, v, x, start, is_self, key_mask, cache, query_mask=None):
        H, Hkv = self.n_heads, self.n_kv_heads
        q1, q2 = self._rope(q[:, :H], start, is_self), self._rope(q[:, H:], start, is_self)
        k1, k2 = self._rope(k[:, :Hkv], start, is_self), self._rope(k[:, Hkv:], start, is_self)
        if cache is not None:
            k1, k2, v = cache.update(k1, k2, v)
        r, Hn, Hnkv = self.signal_ratio, self.n_noise_heads, self.n_noise_kv_heads
        # Expand to one map-2 query/key per output head: head h -> noise head h // r -> key h // r // (Hn/Hnkv).
        noise_idx = torch.arange(H, device=q.device) // r
        q2 = q2[:, noise_idx]
        k2 = k2[:, noise_idx // (Hn // Hnkv)]
        k1 = k1.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        out = diff_attention(q1, q2, k1, k2, v, self.lambda_full(), **self._op_kwargs(key_mask))
        return self.head_norm(out)


__all__ = ["DintAttention", "GroupedDiffAttention", "SharedDiffAttention", "dint_attention"]
