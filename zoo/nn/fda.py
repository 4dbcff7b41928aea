"""Function-word De-Attention (FDA, arXiv 2512.07222) on top of the core cross-attention.

In a text-to-image cross-attention layer, the caption's queries give the map ``A`` over image keys.
A second map ``A_f`` comes from queries of the same caption with every content word replaced by
[PAD] (function words kept), through the same ``Wq`` and the same image keys. FDA removes it:

    A' = relu(A - g * A_f)        (g learnable, init 1, on a subset of heads)

:class:`FDACrossAttention` wraps a layer built by :func:`zoo.nn.build_attention` (``vanilla`` or
``diff``) and reuses its projections, output projection and, for ``diff``, its lambda, subln and
``(1 - lambda_init)`` scale; it materializes the maps because FDA edits them.

``direction`` (how the two softmax directions combine; the reference code michaeltian108/FDA
computes the subtraction for the softmax over keys ("ver") and over queries ("hor") and keeps the
elementwise minimum):

* ``"keys"``: single direction, ``relu(A_k - g A_fk)`` (softmax over image keys).
* ``"both"`` (default): ``min(relu(A_k - g A_fk), A_k * relu(A_q - g A_fq) / A_q)``. The reference
  takes ``min`` of two maps on different scales (rows vs columns sum to one), so at ``g = 0`` it is
  not plain attention; we express the query-direction subtraction as the share of each entry it
  keeps and apply that share to the key-direction map. Paper leaves the scale open; this choice
  keeps both directions and the minimum, and equals plain attention at ``g = 0`` exactly.
* ``"reference"``: the reference code literally, ``min(relu(A_q - g m A_fq), relu(A_k - g m A_fk))``
  on every head (``m`` = 1 on FDA heads, 0 elsewhere); for comparison only.

Heads outside ``heads`` keep the plain map (except in ``"reference"``). Padded text queries
(``query_mask``) are left out of the softmax over queries (the reference includes them).

On ``diff`` the subtraction acts on each of the two softmax maps (``A1' = FDA(A1, A1_f)``,
``A2' = FDA(A2, A2_f)``, output ``(A1' - lambda A2') V``): the differential map itself can be
negative, so relu on it would change the layer at ``g = 0``. Paper leaves this open (it has no
differential attention); we keep ``g = 0`` exact.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.nn.attention import AttentionBase, DiffAttention, VanillaAttention

DIRECTIONS = ("both", "keys", "reference")


def _masked_softmax(s: Tensor, mask: Optional[Tensor], dim: int) -> Tensor:
    """Softmax along ``dim`` with ``mask`` (bool, True = keep, broadcastable); all-masked slices give 0."""
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(s, dim=dim), nan=0.0)


def _masked_log_softmax(s: Tensor, mask: Optional[Tensor], dim: int) -> Tensor:
    """Log-softmax along ``dim`` with ``mask`` (True = keep): -inf where masked, NaN in all-masked slices."""
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.log_softmax(s, dim=dim)


def fda_combine(
    s: Tensor,
    s_f: Tensor,
    g: Tensor,
    head_mask: Tensor,
    direction: str,
    key_mask: Optional[Tensor] = None,
    query_mask: Optional[Tensor] = None,
) -> Tensor:
    """FDA-corrected attention probabilities from scores ``s`` (caption) and ``s_f`` (function words).

    ``s``, ``s_f``: ``[B, H, Tq, Tk]`` scaled scores; ``head_mask`` bool ``[H]`` (FDA heads);
    ``key_mask`` bool ``[B, Tk]`` or per query ``[B, Tq, Tk]``, ``query_mask`` bool ``[B, Tq]`` (True = real token).
    """
    kmask = None if key_mask is None else (key_mask[:, None] if key_mask.dim() == 3 else key_mask[:, None, None, :])
    qmask = query_mask[:, None, :, None] if query_mask is not None else None
    both = kmask if qmask is None else (qmask if kmask is None else kmask & qmask)
    a_k = _masked_softmax(s, kmask, -1)
    gh = g * head_mask.to(s.dtype)[None, :, None, None]
    a_fk = _masked_softmax(s_f, kmask, -1)
    if direction == "keys":
        return torch.where(head_mask[None, :, None, None], F.relu(a_k - gh * a_fk), a_k)
    if direction == "reference":
        a_q, a_fq = _masked_softmax(s, both, -2), _masked_softmax(s_f, both, -2)
        return torch.minimum(F.relu(a_q - gh * a_fq), F.relu(a_k - gh * a_fk))
    # the share of each entry kept, relu(1 - g * A_fq / A_q), with the ratio from log-softmaxes: A_q may be
    # vanishingly small (other queries outweigh this one on that key) or subnormal, where a floor on it wiped the
    # entry out even at g = 0 and dividing by it gave inf / NaN gradients; exp capped at e^80 (keep is 0 long
    # before: g * e^80 >> 1 for any g that subtracts); 1 where A_q is masked out
    lq = _masked_log_softmax(s, both, -2)
    real = torch.isfinite(lq)
    ratio = torch.exp(torch.where(real, _masked_log_softmax(s_f, both, -2) - lq, 0.0).clamp(max=80.0))
    keep_q = torch.where(real, F.relu(1.0 - gh * ratio), 1.0)
    out = torch.minimum(F.relu(a_k - gh * a_fk), a_k * keep_q)
    return torch.where(head_mask[None, :, None, None], out, a_k)


class FDACrossAttention(nn.Module):
    """Cross-attention with Function-word De-Attention around a core ``vanilla`` / ``diff`` layer.

    Args:
        attn: the layer from :func:`zoo.nn.build_attention` (its projections are used as they are).
        heads: indices of the FDA heads; default the first half (as the reference code).
        direction: ``both`` / ``keys`` / ``reference`` (module docstring).
        g_init: initial value of the learnable gate ``g`` (the paper: 1).
    """

    def __init__(
        self,
        attn: AttentionBase,
        heads: Optional[Sequence[int]] = None,
        direction: str = "both",
        g_init: float = 1.0,
    ) -> None:
        super().__init__()
        # exactly these two: the variants built on DiffAttention (dint, gda, shared_diff) attend otherwise, and the
        # maps FDA recomputes here would silently drop their own terms (DINT's mean over queries, GDA's groups)
        if type(attn) not in (VanillaAttention, DiffAttention):
            raise ValueError(
                f"FDA works on 'vanilla' or 'diff' cross-attention, got {type(attn).__name__} "
                f"({getattr(attn, 'attn_type', '?')!r}); build the fusion layer with one of those"
            )
        if direction not in DIRECTIONS:
            raise ValueError(f"FDA direction must be one of {DIRECTIONS}, got {direction!r}")
        H = attn.n_heads
        heads = list(range(H // 2 if H > 1 else 1)) if heads is None else list(heads)
        # True indexed the mask as a bool mask (IndexError), 1.0 passed as head 1
        bad = [h for h in heads if isinstance(h, bool) or not isinstance(h, numbers.Integral) or not 0 <= h < H]
        if bad or not heads:
            raise ValueError(f"FDA heads {list(heads)} must be a non-empty subset of the integers 0..{H - 1}")
        self.attn, self.direction = attn, direction
        self.g = nn.Parameter(torch.tensor(float(g_init)))
        mask = torch.zeros(H, dtype=torch.bool)
        mask[[int(h) for h in heads]] = True
        self.register_buffer("head_mask", mask, persistent=False)

    @property
    def is_diff(self) -> bool:
        return isinstance(self.attn, DiffAttention)

    def _queries(self, x: Tensor) -> Tensor:
        a = self.attn
        return a.q_proj(x).view(x.shape[0], x.shape[1], a.n_heads, a.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        *,
        fw: Optional[Tensor] = None,
        key_mask: Optional[Tensor] = None,
        query_mask: Optional[Tensor] = None,
        return_maps: bool = False,
    ):
        """Attend from text ``x`` ``[B, Tq, dim]`` to image tokens ``context`` ``[B, Tk, kv_dim]``.

        ``fw``: the function-word caption's query states ``[B, Tq, dim]``; without it the layer is the
        plain core cross-attention. ``return_maps`` also returns the corrected maps (list, one per
        softmax map: one for vanilla, two for diff).
        """
        a = self.attn
        if fw is None:
            out = a(x, context, key_mask=key_mask)
            return (out, []) if return_maps else out
        if fw.shape != x.shape:
            raise ValueError(f"function-word states {tuple(fw.shape)} must have the caption's shape {tuple(x.shape)}")
        q, k, v = a._project(x, context)
        qf = self._queries(fw)
        rep = a.n_heads // a.n_kv_heads
        dt = torch.promote_types(q.dtype, torch.float32)  # maps in at least fp32; a float64 model keeps float64
        k, v = k.repeat_interleave(rep, 1).to(dt), v.repeat_interleave(rep, 1).to(dt)
        q, qf = q.to(dt), qf.to(dt)
        B, H, tq, _ = q.shape
        if self.is_diff:
            d = a.head_dim // 2
            q, qf, k = q.view(B, H, tq, 2, d), qf.view(B, H, tq, 2, d), k.view(B, H, -1, 2, d)
            pairs = [(q[..., i, :], qf[..., i, :], k[..., i, :]) for i in (0, 1)]
            scale = 1.0 / math.sqrt(d)
        else:
            pairs, scale = [(q, qf, k)], 1.0 / math.sqrt(a.head_dim)
        maps = []
        for qi, qfi, ki in pairs:
            s = qi @ ki.transpose(-1, -2) * scale
            s_f = qfi @ ki.transpose(-1, -2) * scale
            p = fda_combine(s, s_f, self.g, self.head_mask, self.direction, key_mask, query_mask)
            maps.append(F.dropout(p, a.dropout, training=a.training) if a.dropout > 0 else p)
        if self.is_diff:
            lam = a.lambda_full()
            out = maps[0] @ v - lam * (maps[1] @ v)
            out = a.head_norm(out)
        else:
            out = maps[0] @ v
        out = a.o_proj(out.to(x.dtype).transpose(1, 2).reshape(B, tq, H * out.shape[-1]))
        return (out, maps) if return_maps else out


__all__ = ["DIRECTIONS", "FDACrossAttention", "fda_combine"]
