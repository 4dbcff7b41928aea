"""Rotary position embedding (RoPE), in the rotate-half convention of Llama / Hugging Face."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Rotates ``[B, H, T, D]`` tensors by their positions' angles (``max_seq_len`` is kept for reference).

    Rotate-half pairs channel ``i`` with ``i + D/2``, the layout of Hugging Face Llama checkpoints,
    so converted weights need no permutation.
    """

    def __init__(self, head_dim: int, max_seq_len: int = 2048, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta

    _last: tuple[tuple, tuple[Tensor, Tensor]] | None = None  # see cos_sin

    def _inv_freq(self, device: torch.device | None = None) -> Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim))

    def angles(self, start_pos: int, t: int, device: torch.device) -> Tensor:
        """The rotation angles ``[t, D]`` of positions ``start_pos .. start_pos + t - 1``, in float32.

        Computed per call, not cached: a table of ``max_seq_len`` positions per layer would hold
        ``max_seq_len * D * 8`` bytes in every layer (131072 positions of head dim 128, a converted Llama 3:
        134 MB a layer), and a lazily filled cache is Python state that torch.compile guards on (a second
        compile on the second call). From fp32 frequencies, not the buffer: model.to(bf16) rounds it, rotating
        late positions radians off. An elementwise product (autocast leaves it in fp32)."""
        pos = torch.arange(start_pos, start_pos + t, device=device, dtype=torch.float32)
        freqs = pos[:, None] * self._inv_freq(device)[None, :]
        return torch.cat([freqs, freqs], dim=-1)

    def cos_sin(self, start_pos: int, t: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``cos`` and ``sin`` of :meth:`angles`, in ``dtype``. The last result is kept (one entry, shared by every
        RotaryEmbedding of the same head dim and theta): the queries and keys of a layer, and every layer of a
        model, rotate the same positions in one forward. Not under torch.compile, which traces the computation."""
        def compute() -> tuple[Tensor, Tensor]:
            emb = self.angles(start_pos, t, device)
            return emb.cos().to(dtype), emb.sin().to(dtype)

        if torch.compiler.is_compiling():
            return compute()
        key = (self.head_dim, self.theta, start_pos, t, device, dtype)
        last = RotaryEmbedding._last
        if last is not None and last[0] == key:
            return last[1]
        # normal tensors even when first made under torch.inference_mode (validate / generate): an
        # inference-mode tensor could not be saved for backward by a later training step
        with torch.inference_mode(False):
            out = compute()
        RotaryEmbedding._last = (key, out)
        return out

    def forward(self, x: Tensor, start_pos: int = 0) -> Tensor:
        """Rotate ``x`` ([B, H, T, D]) whose first token sits at absolute position ``start_pos``."""
        cos, sin = self.cos_sin(start_pos, x.shape[-2], x.device, x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin
