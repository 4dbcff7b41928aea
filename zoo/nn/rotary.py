"""Rotary position embedding (RoPE), in the rotate-half convention of Llama / Hugging Face."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    """Caches cos/sin tables up to ``max_seq_len`` and rotates ``[B, H, T, D]`` tensors.

    Rotate-half pairs channel ``i`` with ``i + D/2``, the layout of Hugging Face Llama checkpoints,
    so converted weights need no permutation.
    """

    def __init__(self, head_dim: int, max_seq_len: int = 2048, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self._cache: tuple[Tensor, Tensor] | None = None

    def _inv_freq(self, device: torch.device | None = None) -> Tensor:
        return 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device) / self.head_dim))

    def _tables(self, end: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._cache is None or self._cache[0].shape[0] < end or self._cache[0].device != device:
            n = max(end, self.max_seq_len)
            # normal tensors even when first called under torch.inference_mode (validate / generate): an
            # inference-mode table could not be saved for backward by a later training step
            with torch.inference_mode(False):
                t = torch.arange(n, device=device, dtype=torch.float32)
                # from fp32 frequencies, not the buffer: model.to(bf16) rounds it, rotating late positions radians off
                freqs = torch.outer(t, self._inv_freq(device))
                emb = torch.cat([freqs, freqs], dim=-1)
                self._cache = (emb.cos(), emb.sin())
        return self._cache

    def forward(self, x: Tensor, start_pos: int = 0) -> Tensor:
        """Rotate ``x`` ([B, H, T, D]) whose first token sits at absolute position ``start_pos``."""
        t = x.shape[-2]
        cos, sin = self._tables(start_pos + t, x.device)
        cos = cos[start_pos : start_pos + t].to(x.dtype)
        sin = sin[start_pos : start_pos + t].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin
