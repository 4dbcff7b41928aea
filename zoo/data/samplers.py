"""Samplers for evaluation under torch.distributed."""

from __future__ import annotations

from typing import Any, Optional

from torch.utils.data import Dataset, Sampler


def eval_sampler(dataset: Dataset, trainer: Any, split: str, advice: Optional[str] = None) -> Optional[Sampler]:
    """For a ``trainer`` on several processes, a sampler that gives every item of ``split`` to one rank once
    (Lightning's default pads the ranks' shares with repeated items, which summed metrics would count
    twice); None on one process (Lightning's own loader then).

    Also for ``predict`` loaders: Lightning's own unrepeated predict sampler stops with a bare AssertionError
    when a rank would get no item; this one names the cause (``advice``: what to do instead)."""
    world = getattr(trainer, "world_size", 1) if trainer is not None else 1
    if world <= 1:
        return None
    if len(dataset) < world:
        raise ValueError(
            f"the {split} split has {len(dataset)} item(s) for {world} processes: every process needs at least one; "
            + (advice or f"make the {split} split larger or evaluate on fewer devices")
        )
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=trainer.global_rank, shuffle=False)


def pin_memory_for(trainer: Any) -> bool:
    """Whether a loader pins its batches in page-locked host memory: when ``trainer`` runs on a CUDA device (the
    host-to-GPU copies then run asynchronously, as Lightning and PyTorch advise); never on the CPU or without a trainer."""
    try:
        return trainer is not None and trainer.strategy.root_device.type == "cuda"
    except (AttributeError, RuntimeError):  # a trainer whose strategy is not set up yet
        return False
