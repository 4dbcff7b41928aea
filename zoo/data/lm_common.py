"""Pieces shared by the token-sequence datamodules (text and synthetic retrieval)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from zoo.data.samplers import eval_sampler, pin_memory_for

IGNORE_INDEX = -100  # label value that contributes no loss (torch cross_entropy's default ignore_index)

__all__ = ["IGNORE_INDEX", "make_loader", "check_at_least"]


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, trainer: Any = None,
                split: str = "evaluation", advice: Any = None) -> DataLoader:
    """DataLoader with the settings every sequence datamodule uses; an evaluation loader (no shuffle) of a
    ``trainer`` on several processes gives every block to one rank once (:func:`zoo.data.samplers.eval_sampler`);
    batches are pinned when the trainer runs on a GPU."""
    sampler = None if shuffle else eval_sampler(dataset, trainer, split, advice)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory_for(trainer),
    )


def check_at_least(name: str, value: int, minimum: int) -> None:
    """Raise a ValueError naming the argument when ``value < minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
