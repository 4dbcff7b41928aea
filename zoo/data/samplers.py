"""Samplers for evaluation under torch.distributed."""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import Dataset, Sampler


def eval_sampler(dataset: Dataset) -> Optional[Sampler]:
    """Under torch.distributed, a sampler that gives every item to one rank once (Lightning's default pads
    the ranks' shares with repeated items, which summed metrics would count twice); else None."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, shuffle=False)
