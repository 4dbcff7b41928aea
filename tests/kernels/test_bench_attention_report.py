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
    assert "| 2048 | 8 | 100.000 [164] | failed | - | - |" in md
    assert "- LM step T=2048 diff_sdpa: RuntimeError: x" in md  # the failure's message is in the report
    assert "Decode" not in md  # no decode rows, no empty decode table
    assert "**Partial run**" not in bench.markdown(_result(complete=True))


def test_a_planned_skip_a_failure_and_an_oom_read_apart(bench):
    row = {**ROW, "naive": {"fwd": {"error": "skipped (T x T maps would not fit)"},
                            "fwd_bwd": {"error": "skipped (T x T maps would not fit)"}},
           "sdpa_x2": {"fwd": {"error": "OOM"}, "fwd_bwd": {"error": "ValueError: bad stride"}}}
    md = bench.markdown(_result(training=[row], decode=[{"d": 128, "B": 1, "Tk": 1024, "triton": {"error": "OOM"},
                                                        "sdpa_x2": {"error": "KeyError: k"}, "naive": {"ms": 1.0}}]))
    fwd, fwd_bwd = (line for line in md.splitlines() if line.startswith("| 128 | True | 4096 |"))
    assert fwd.endswith("| skipped | OOM |") and fwd_bwd.endswith("| skipped | failed |")
    assert "- training d=128 causal=True T=4096 sdpa_x2 fwd_bwd: ValueError: bad stride" in md
    assert "- decode d=128 B=1 cache=1024 sdpa_x2: KeyError: k" in md
    assert "skipped (T x T" not in md and "OOM:" not in md  # planned skips and OOMs are not listed as failures
    md = bench.markdown(_result(matmul={"error": "RuntimeError: CUBLAS_STATUS_NOT_SUPPORTED"}))
    assert "matmul 8192^3): failed TFLOP/s" in md and "- matmul peak: RuntimeError: CUBLAS_STATUS_NOT_SUPPORTED" in md
    h = {"cpu_model": "Test CPU", "cpu_count": 16, "platform": "Linux-x", "lightning": "2.6"}
    assert "Host: Test CPU, 16 CPU cores, Linux-x, lightning 2.6." in bench.markdown(_result(host=h))


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


def _row(d, causal, T, ms):
    res = {"peak_mib": 1.0, "tflops": 1.0}
    return {**ROW, "d": d, "causal": causal, "T": T,
            "triton": {"fwd": {"ms": ms, **res}, "fwd_bwd": {"ms": 4 * ms, **res}}}


def test_merge_adds_and_replaces_rows_by_shape(bench):
    base = _result(training=[_row(128, True, 512, 1.0), _row(128, True, 1024, 2.0)])
    new = _result(training=[_row(128, True, 1024, 3.0), _row(64, False, 512, 0.5)])
    merged, changes = bench.merge_results(base, new, "second call")
    shapes = [(r["d"], r["causal"], r["T"], r["triton"]["fwd"]["ms"]) for r in merged["training"]]
    # the 1024 row comes from the new run; the d=64 row goes after d=128 (a full run's order)
    assert shapes == [(128, True, 512, 1.0), (128, True, 1024, 3.0), (64, False, 512, 0.5)]
    assert sorted(changes) == ["training {'d': 128, 'causal': True, 'T': 1024}: replaced",
                               "training {'d': 64, 'causal': False, 'T': 512}: added"]
    # the merged rows' own software and matmul peak are kept beside them (the header is the base run's)
    assert merged["runs"]["training"] == f"second call (torch {new['torch']}, triton {new['triton']}; matmul peak 800 TFLOP/s)"
    assert base["training"][1]["triton"]["fwd"]["ms"] == 2.0  # the input is not changed in place


def test_merge_refuses_another_device(bench):
    with pytest.raises(ValueError, match="device differs"):
        bench.merge_results(_result(), {**_result(), "device": "Other GPU"})
    with pytest.raises(ValueError, match="no training, lm_step or decode rows"):
        bench.merge_results(_result(), _result(training=[]))
    with pytest.raises(ValueError, match="quick differs"):  # a --quick run's timings do not join a full table
        bench.merge_results(_result(), {**_result(), "quick": True})


def test_missing_shapes_names_the_rows_a_full_run_would_have(bench):
    g = bench.FULL_GRID
    full = [_row(d, c, T, 1.0) for d in g["dims"] for c in g["causals"] for T in g["seqlens"]]
    assert bench.missing_shapes(_result(training=full)) == []
    miss = bench.missing_shapes(_result(training=full[1:]))
    assert miss == [f"training: d={g['dims'][0]}/causal={g['causals'][0]}/T={g['seqlens'][0]}"]
    md = bench.markdown(_result(training=full[1:]))
    assert f"- not measured, {miss[0]}" in md


def test_merge_command_rewrites_the_report(bench, tmp_path, monkeypatch, capsys):
    (tmp_path / "results.json").write_text(json.dumps(_result()))
    new = tmp_path / "new.json"
    new.write_text(json.dumps(_result(training=[_row(64, True, 512, 0.25)])))
    monkeypatch.setattr(sys, "argv", ["bench_attention.py", "--out", str(tmp_path), "--merge", str(new)])
    assert bench.main() == 0
    md = (tmp_path / "results.md").read_text()
    assert "| 64 | True | 512 |" in md and "| 128 | True | 4096 |" in md
    assert "training {'d': 64, 'causal': True, 'T': 512}: added" in capsys.readouterr().out
    new.write_text(json.dumps({**_result(), "device": "Other GPU"}))
    with pytest.raises(SystemExit):
        bench.main()
    assert "device differs" in capsys.readouterr().err


def test_missing_shapes_follow_the_parts_a_run_was_asked_for(bench):
    # --parts lm writes lm_step rows: a run asked for "lm" with no T=8192 row lacks it
    miss = bench.missing_shapes(_result(parts=["lm"], training=[], lm_step=[{"T": 2048, "B": 8}]))
    assert miss == ["lm_step: T=8192"]
    merged, _ = bench.merge_results(_result(training=[_row(128, True, 512, 1.0)]),
                                    _result(parts=["lm"], training=[], lm_step=[{"T": 2048, "B": 8}]))
    assert merged["parts"] == ["training", "lm_step"]


def test_quick_or_subset_run_leaves_the_recorded_report_alone(bench, tmp_path, monkeypatch):
    """Without --out, a --quick or subset run writes to a scratch folder: the recorded full report in the
    default folder was replaced at the run's first row."""
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    (recorded / "results.json").write_text(json.dumps(_result(complete=True)))
    monkeypatch.setattr(bench, "DEFAULT_OUT", recorded)
    monkeypatch.setattr(bench, "SCRATCH_OUT", tmp_path / "scratch")
    # a CUDA device as far as main() asks: the measurements themselves are stubs
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda *a: "Test GPU")
    monkeypatch.setattr(bench.torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(bench, "bench_matmul", lambda dtype, quick: {"ms": 1.0, "tflops": 800.0})
    row = {"d": 128, "dv": 256, "H": 8, "Hkv": 4, "B": 1, "Tk": 1024, "cache_mib": 1.5,
           "triton": {"ms": 0.5, "peak_mib": 1.0, "gbps": 3.1}, "sdpa_x2": {"ms": 1.0, "peak_mib": 2.0},
           "naive": {"ms": 2.0, "peak_mib": 4.0}}

    def bench_decode(batches, caches, dims, dtype, quick, on_row):
        on_row([row])
        return [row]

    monkeypatch.setattr(bench, "bench_decode", bench_decode)
    before = (recorded / "results.json").read_text()
    for argv in (["--quick", "--parts", "decode"], ["--parts", "decode", "--dims", "128"]):
        assert bench.main(argv) == 0
        assert (recorded / "results.json").read_text() == before
        new = json.loads((tmp_path / "scratch" / "attention" / "results.json").read_text())
        assert new["decode"] == [row] and new["device"] == "Test GPU"
        assert "| 128 | 1 | 1024 | 0.500 | 3 | 1.000 | 2.000 |" in (tmp_path / "scratch" / "attention" / "results.md").read_text()
