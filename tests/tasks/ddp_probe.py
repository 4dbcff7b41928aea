"""Callback used by test_ddp.py inside the DDP worker processes: saves each rank's weights."""

from pathlib import Path

import lightning as L
import torch


class SaveRankWeights(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_fit_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save(
            {"state": state, "world_size": trainer.world_size, "step": trainer.global_step},
            Path(self.out_dir) / f"rank{trainer.global_rank}.pt",
        )
