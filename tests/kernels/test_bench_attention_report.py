"""scripts/bench_attention.py without a GPU: its report of a (partial) results.json and its arguments."""

import json
import sys

import pytest

ROW = {"d": 128, "dv": 256, "H": 8, "B": 8, "T": 4096, "causal": True, "flops_fwd": 1.0,
       "triton": {"fwd": {"ms": 2.5, "peak_mib": 128.0, "tflops": 300.0},
                  "fwd_bwd": {"ms": 10.0, "peak_mib": 260.0, "tflops": 280.0}},
       "naive": {"fwd": {"error": "OOM"}, "fwd_bwd": {"error": "OOM"}},
       "sdpa_x2": {"fwd": {"ms": 2.0, "peak_mib": 512.0, "tflops": 420.0},
                   "fwd_bwd": {"ms": 9.5, "peak_mib": 516.0, "tflops": 300.0}}}


def _result(**extra):
    return {"device": "Test GPU", "dtype": "bf16", "torch": "t", "triton": "x", "tokens_per_batch": 32768,
            "matmul": {"ms": 1.0, "tflops": 800.0}, "complete": False, "training": [ROW], **extra}


@pytest.fixture()
def bench(load_script):
    return load_script("bench_attention")


def test_partial_report_names_what_it_measured(bench):
    md = bench.markdown(_result(lm_step=[{"T": 2048, "B": 8, "diff_triton": {"ms": 100.0, "tokens_per_s": 163840.0},
                                          "diff_sdpa": {"error": "RuntimeError: x"}}]))
    assert "**Partial run**" in md
    assert "| 128 | True | 4096 | 8 | 2.500 (300.0) [128] | OOM | 2.000 (420.0) [512] |" in md
    # 163840 tokens/s is 164 k tokens/s; an arm that failed says so instead of a number
    assert "| 2048 | 8 | 100.000 [164] | n/a | - | - |" in md
    assert "Decode" not in md  # no decode rows, no empty decode table
    assert "**Partial run**" not in bench.markdown(_result(complete=True))


def test_render_rewrites_the_report_from_json(bench, tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text(json.dumps(_result()))
    monkeypatch.setattr(sys, "argv", ["bench_attention.py", "--render", "--out", str(tmp_path)])
    assert bench.main() == 0
    assert "| 128 | True | 4096 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.png").stat().st_size > 0


def test_bad_arguments_are_named(bench, tmp_path, monkeypatch, capsys):
    for argv, expect in ((["--render", "--out", str(tmp_path / "none")], "does not exist"),
                         (["--parts", "training,speed"], "unknown section(s) ['speed']")):
        monkeypatch.setattr(sys, "argv", ["bench_attention.py", *argv])
        with pytest.raises(SystemExit):
            bench.main()
        assert expect in capsys.readouterr().err
