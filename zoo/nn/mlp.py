"""Feed-forward blocks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden(dim: int, multiple_of: int = 64) -> int:
    """Hidden width ``8/3 * dim`` rounded up to ``multiple_of`` (Llama / Diff Transformer)."""
    hidden = int(8 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``; names follow Hugging Face Llama for direct weight maps."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


class GeluMlp(nn.Module):
    """Two-layer GELU MLP (ViT / BERT style).

    ``dropout`` acts on the output; ``act_dropout`` on the hidden activations (timm's ``drop`` after the
    activation, the reference iTransformer's FFN), off by default as in BERT.
    """

    def __init__(self, dim: int, hidden: int, bias: bool = True, dropout: float = 0.0, act_dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.act_dropout = nn.Dropout(act_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.act_dropout(F.gelu(self.fc1(x)))))
