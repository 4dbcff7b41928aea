"""scripts/bench_ts.py --report: a grid point shows the newest protocol's runs once they cover its seeds."""

import argparse
import json

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_ts")


def _run(dataset, horizon, key, seed, mse, **extra):
    return {
        "dataset": dataset, "horizon": horizon, "model_key": key, "model": key, "arch": f"arch-{key}", "seed": seed,
        "params": 1000, "mse": mse, "mae": mse / 2, "mse_orig": mse * 10, "mae_orig": mse * 5, "epochs_run": 5,
        "best_val_mse": mse + 0.3, "lr": 1e-4, "total_s": 1.0, "machine": {"cpu_model": "test CPU", "processor": "x86_64", "cpu_count": 2, "torch": "2.x",
                                                           "torch_threads": 1}, **extra,
    }


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_prefers_the_newest_protocol_that_covers_the_seeds(tmp_path, bench):
    # H=96: v3 covers seeds {0, 1} -> v3; H=192: v3 has seed 0 only -> v2 (both seeds); H=336: v1 only
    _write(tmp_path / "runs_v1.jsonl", [_run("ETTh1", h, "itr-diff", s, 0.5 + h / 1000) for h in (96, 192, 336) for s in (0, 1)])
    _write(tmp_path / "runs_v2.jsonl", [_run("ETTh1", h, "itr-diff", s, 0.4 + h / 1000) for h in (96, 192) for s in (0, 1)])
    _write(tmp_path / "runs.jsonl", [_run("ETTh1", 96, "itr-diff", 0, 0.30), _run("ETTh1", 96, "itr-diff", 1, 0.32),
                                     _run("ETTh1", 192, "itr-diff", 0, 0.33)])
    args = argparse.Namespace(out=tmp_path, max_epochs=10, patience=3)
    bench.report(args)
    result = json.loads((tmp_path / "bench_ts.json").read_text())
    by_h = {s["horizon"]: s for s in result["summary"]}
    assert by_h[96]["protocol"] == "v3" and by_h[96]["mse_mean"] == pytest.approx(0.31)
    assert by_h[192]["protocol"] == "v2" and by_h[192]["mse_mean"] == pytest.approx(0.4 + 0.192)
    assert by_h[336]["protocol"] == "v1" and by_h[336]["mse_mean"] == pytest.approx(0.5 + 0.336)
    assert result["target"]["ETTh1"]["met_by_mean"] is True  # 0.31 <= 0.386
    md = (tmp_path / "bench_ts.md").read_text()
    assert "| ETTh1 | 192 | Diff-iTransformer ‡ |" in md and "| ETTh1 | 336 | Diff-iTransformer † |" in md and "| ETTh1 | 96 | Diff-iTransformer |" in md
