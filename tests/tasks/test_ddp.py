"""2-process DDP on CPU (gloo) through the CLI: both ranks end with identical, trained weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_ddp_two_processes_identical_weights(tmp_path):
    cb = [{"class_path": "ddp_probe.SaveRankWeights", "init_args": {"out_dir": str(tmp_path)}}]
    cmd = [
        sys.executable, "-m", "zoo", "fit", "--config", "configs/lm/tiny.yaml",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
        "--trainer.val_check_interval=3", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.callbacks={json.dumps(cb)}",
        "--data.init_args.train_size=512",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["step"] == r1["step"] == 3
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ in {k}"
    # and training really moved the weights away from the seed's initialisation
    torch.manual_seed(0)
    import zoo

    init = zoo.create_model("lm-diff-tiny", dim=64, n_layers=2, n_heads=2, max_seq_len=128,
                            vocab_size=r0["state"]["model.embed.weight"].shape[0])
    assert not torch.equal(init.embed.weight, r0["state"]["model.embed.weight"])
