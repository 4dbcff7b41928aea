"""2-process DDP on CPU (gloo) through the CLI: both ranks end with identical, trained weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _ddp_fit(config, args, tmp_path, steps):
    """``python -m zoo fit`` on 2 gloo processes; returns each rank's saved weights, checked identical."""
    cb = [{"class_path": "ddp_probe.SaveRankWeights", "init_args": {"out_dir": str(tmp_path)}}]
    cmd = [
        sys.executable, "-m", "zoo", "fit", "--config", config, "--trainer.strategy=ddp", "--trainer.devices=2",
        "--trainer.accelerator=cpu", f"--trainer.max_steps={steps}", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}", f"--trainer.callbacks={json.dumps(cb)}", *args,
    ]
    # the probe's folder joins (not replaces) PYTHONPATH, which may hold the install itself
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-3000:]}"
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["step"] == r1["step"] == steps
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks differ in {k}"
    return r0, r1


def test_ddp_two_processes_identical_weights(tmp_path):
    r0, _ = _ddp_fit("configs/lm/tiny.yaml", ["--trainer.val_check_interval=3", "--trainer.limit_val_batches=1",
                                              "--data.init_args.train_size=512"], tmp_path, steps=3)
    # and training really moved the weights away from the seed's initialisation
    torch.manual_seed(0)
    import zoo

    init = zoo.create_model("lm-diff-tiny", dim=64, n_layers=2, n_heads=2, max_seq_len=128,
                            vocab_size=r0["state"]["model.embed.weight"].shape[0])
    assert not torch.equal(init.embed.weight, r0["state"]["model.embed.weight"])


def _zoo(args, tmp_path, devices):
    """``python -m zoo ARGS`` on ``devices`` CPU processes (gloo DDP when 2), in a fresh root folder."""
    root = tmp_path / f"devices{devices}"
    cmd = [
        sys.executable, "-m", "zoo", *args, "--trainer.accelerator=cpu", f"--trainer.devices={devices}",
        f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}", "--trainer.logger=true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-3000:]}"
    _no_unsynced_warning(proc.stderr)
    return root


def _no_unsynced_warning(stderr: str) -> None:
    """zoo's epoch-level metrics are whole-split values on every rank; Lightning warned, once per metric, that they
    were one rank's ("It is recommended to use `self.log(..., sync_dist=True)`") until they were logged so."""
    assert "sync_dist=True" not in stderr, stderr[-3000:]


def _only(root, name):
    found = list(root.rglob(name))
    assert len(found) == 1, f"expected one {name} under {root}, found {found}"
    return found[0]


def test_ddp_str_test_metrics_and_predictions_cover_every_sample_once(tmp_path):
    # 51 test crops: the distributed sampler gives each rank 26, repeating one; predictions use the
    # unrepeated sampler (26 + 25). The reference is the same command in one process.

    from zoo.data.str_synth import make_sample

    pred_dir = tmp_path / "crops"
    pred_dir.mkdir()
    for i in range(7):
        img, _ = make_sample(3, "test", i, "0123456789abcdefghijklmnopqrstuvwxyz", min_len=2, max_len=5, strength=0.2)
        img.save(pred_dir / f"crop{i:02d}.png")
    data = [
        "--config", "configs/str/synthetic.yaml", "--model.init_args.pretrained=str-diff-tiny",
        "--data.init_args.synthetic={train: 0, val: 0, test: 51}", "--data.init_args.eval_batch_size=8",
    ]
    results = {}
    for devices in (1, 2):
        root = _zoo(["test", *data], tmp_path / "test", devices)
        results[devices] = json.loads(_only(root, "test_metrics.json").read_text())
    assert results[1]["combined"]["count"] == results[2]["combined"]["count"] == 51
    assert results[2].keys() == results[1].keys()
    for name, row in results[1].items():
        assert results[2][name] == pytest.approx(row, abs=1e-9), name  # summation order only
    # predictions: the reader API in this process is the reference for the 2-process CLI's CSV
    from zoo.tasks.str import read_folder

    read_folder("str-diff-tiny", pred_dir, tmp_path / "reference.csv")
    root = _zoo(["predict", *data, f"--data.init_args.predict_dir={pred_dir}"], tmp_path / "predict", 2)
    got = _only(root, "predictions.csv").read_text()
    assert got == (tmp_path / "reference.csv").read_text()
    assert got.count("crop") == 7
    # predictions.jsonl holds both ranks' rows too, in the folder's order, as the CSV
    rows = [json.loads(line) for line in _only(root, "predictions.jsonl").read_text().splitlines()]
    reference = (tmp_path / "reference.csv").read_text().splitlines()[1:]
    assert [r["image"] for r in rows] == [line.split(",")[0] for line in reference]


def test_ddp_vlm_retrieval_is_scored_against_the_whole_gallery(tmp_path):
    # 51 test scenes over 2 ranks: each rank holds 26 (one repeated); retrieval must still rank every
    # query against all 51 items once, as the one-process run does.
    data = [
        "--config", "configs/vlm/synthetic.yaml", "--model.init_args.pretrained=vlm-fda-tiny",
        "--data.init_args.n_train=64", "--data.init_args.n_val=16", "--data.init_args.n_test=51",
        "--data.init_args.batch_size=16",
    ]
    metrics = {}
    for devices in (1, 2):
        root = _zoo(["test", *data], tmp_path, devices)
        metrics[devices] = json.loads(_only(root, "test_metrics.json").read_text())
    assert metrics[1].keys() == metrics[2].keys()
    for k, v in metrics[1].items():
        assert abs(metrics[2][k] - v) < 1e-6, (k, v, metrics[2][k])


def test_ddp_vlm_training_contrasts_across_ranks(tmp_path):
    # VLM fit on 2 processes end to end: ITC gathers both ranks' features every step (a collective
    # inside training_step, which must not hang or diverge); both ranks finish with identical weights.
    # The gathered loss itself is checked against written-out math in tests/vlm/test_itc_ddp.py.
    _ddp_fit("configs/vlm/synthetic.yaml", [
        "--trainer.limit_val_batches=0", "--data.init_args.n_train=64", "--data.init_args.n_val=16",
        "--data.init_args.n_test=16", "--data.init_args.batch_size=8",
    ], tmp_path, steps=2)


def _summary_metrics(stdout: str) -> dict[str, float]:
    """The ``name  value`` lines of the zoo run summary."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and "/" in parts[0]:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return out


@pytest.mark.parametrize("config, args", [
    # 5 validation sequences / 105 test windows over 2 ranks: Lightning's default sampler would repeat one
    ("configs/lm/tiny.yaml", ["--data.init_args.val_size=5", "--data.init_args.batch_size=2", "--data.init_args.train_size=64"]),
    ("configs/ts/synthetic.yaml", ["--data.init_args.n_rows=1000", "--data.init_args.eval_batch_size=8"]),
])
def test_ddp_evaluation_counts_every_item_once(config, args, tmp_path):
    """LM and time-series metrics are sums over items: under DDP every item is scored once, so the
    2-process numbers equal the 1-process ones (a repeated item would weigh twice)."""
    sub = "validate" if "lm" in config else "test"
    metrics = {}
    for devices in (1, 2):
        root = tmp_path / f"devices{devices}"
        cmd = [sys.executable, "-m", "zoo", sub, "--config", config, *args, "--trainer.accelerator=cpu",
               f"--trainer.devices={devices}", f"--trainer.strategy={'ddp' if devices > 1 else 'auto'}",
               "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"]
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-3000:]}"
        _no_unsynced_warning(proc.stderr)
        metrics[devices] = _summary_metrics(proc.stdout)
    assert metrics[1] and metrics[1].keys() == metrics[2].keys()
    for k, v in metrics[1].items():
        assert metrics[2][k] == pytest.approx(v, abs=2e-4), k


def test_ddp_predict_with_fewer_items_than_processes_names_the_cause(tmp_path):
    # A forecast is one window: on 2 processes Lightning's unrepeated predict sampler leaves rank 1 without
    # it and stops on a bare AssertionError. The run must name the cause and write nothing.
    cmd = [sys.executable, "-m", "zoo", "predict", "--config", "configs/ts/synthetic.yaml", "--data.init_args.n_rows=200",
           "--data.init_args.lookback=16", "--data.init_args.horizon=8", "--trainer.callbacks=[]",
           "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
           "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 0
    assert "a forecast is one window: predict on one process" in proc.stderr, proc.stderr[-3000:]
    assert "AssertionError" not in proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(("forecast", "predictions"))]
