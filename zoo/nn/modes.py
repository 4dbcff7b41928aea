"""Train / eval mode helpers shared by the inference APIs (read, forecast, similarity, generate, attacks, export)."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``module`` in eval mode (no dropout) and give every submodule back the mode it had, also
    when the block raises: a model fresh from ``fit`` stays in train mode, and a submodule kept in eval on purpose
    (a frozen teacher, a frozen encoder) stays in eval (``module.train(was_training)`` would switch it to train)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
