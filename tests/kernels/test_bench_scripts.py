"""scripts/bench_lm.py and scripts/bench_variants.py at tiny sizes on the CPU: what their numbers time and
where their results go."""

import json
import sys
import time

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def bench_lm(load_script):
    return load_script("bench_lm")


def test_training_seconds_leave_out_validation(bench_lm, monkeypatch):
    """bench_variants' training tokens/s divide by ``train_seconds``: validation (here 2 s a batch) is not in it."""
    from zoo.data import RetrievalDataModule
    from zoo.tasks import LanguageModelTask

    step = LanguageModelTask.validation_step

    def slow_validation_step(self, *args, **kwargs):
        time.sleep(2.0)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(LanguageModelTask, "validation_step", slow_validation_step)
    dm = RetrievalDataModule(seq_len=32, n_pairs=4, train_size=4 * 64, val_size=128, batch_size=64, seed=0)
    r = bench_lm.run("vanilla", 0, dm, {"dim": 32, "n_layers": 1, "n_heads": 2, "max_seq_len": 32},
                     steps=4, lr=3e-3, val_every=4, limit_val=None)
    assert r["steps"] == 4
    # 2 sanity-check batches + 2 validation batches at step 4: 8 s of sleep inside fit
    assert r["seconds"] >= 8.0
    # 4 steps of a 1-layer width-32 model take well under a second even on a loaded machine; a single
    # validation batch counted would add 2 s
    assert 0 < r["train_seconds"] < 1.9


def _fake_run(calls):
    def run(attn, seed, dm, model_args, steps, lr, val_every, limit_val):
        calls.append((attn, seed))
        return {"attn": attn, "seed": seed, "params": 10, "steps": steps, "seconds": 1.0, "train_seconds": 0.5,
                "final": {"val/acc": 0.5, "val/loss": 1.0, "val/bpb": 1.5}, "val_curve": [], "train_curve": []}

    return run


def test_missing_text_data_stops_before_any_training(bench_lm, monkeypatch, tmp_path):
    """Without tinyshakespeare, part (b) cannot run: say so before part (a)'s runs, not after them (their
    results were lost: nothing is written before the end)."""
    calls = []
    monkeypatch.setattr(bench_lm, "run", _fake_run(calls))
    monkeypatch.setattr(bench_lm, "SHAKESPEARE", tmp_path / "missing.txt")
    monkeypatch.setattr(sys, "argv", ["bench_lm.py", "--quick", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="not found"):
        bench_lm.main()
    assert calls == []


RECORDED = {"recorded": "full run", "types": {}, "adaptation": {}}


def test_quick_run_leaves_the_recorded_results_alone(bench_lm, monkeypatch, tmp_path):
    """``--quick`` (a smoke run) without --out must not overwrite the recorded results in scripts/results/lm."""
    recorded = tmp_path / "scripts" / "results" / "lm" / "bench_lm.json"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps(RECORDED))
    monkeypatch.setattr(bench_lm, "ROOT", tmp_path)
    monkeypatch.setattr(bench_lm, "QUICK_OUT", tmp_path / "quick")
    monkeypatch.setattr(bench_lm, "run", _fake_run([]))
    monkeypatch.setattr(sys, "argv", ["bench_lm.py", "--quick", "--skip-text"])
    bench_lm.main()
    assert json.loads(recorded.read_text()) == RECORDED
    quick = json.loads((tmp_path / "quick" / "lm" / "bench_lm.json").read_text())
    assert quick["args"]["quick"] and quick["retrieval"]["32/diff"]["acc"]["mean"] == 0.5


def test_quick_variants_run_leaves_the_recorded_results_alone(load_script, monkeypatch, tmp_path):
    bench = load_script("bench_variants")
    recorded = tmp_path / "scripts" / "results" / "variants" / "bench_variants.json"
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps(RECORDED))
    text = tmp_path / "text.txt"
    text.write_text("x")
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "QUICK_OUT", tmp_path / "quick")
    monkeypatch.setattr(bench, "SHAKESPEARE", text)
    monkeypatch.setattr(bench, "RetrievalDataModule", lambda **kw: None)
    monkeypatch.setattr(bench, "text_dm", lambda: None)
    monkeypatch.setattr(bench, "run", _fake_run([]))
    monkeypatch.setattr(sys, "argv", ["bench_variants.py", "--quick", "--only", "types"])
    bench.main()
    assert json.loads(recorded.read_text()) == RECORDED
    quick = json.loads((tmp_path / "quick" / "variants" / "bench_variants.json").read_text())
    # 3 steps of 64 x 32 tokens in 0.5 s of training
    assert quick["types"]["diff"]["mqar"]["tokens_per_s"] == pytest.approx(3 * 64 * 32 / 0.5)


def test_a_single_seed_shows_no_spread(bench_lm):
    """One run has no measured spread: 'mean (1 seed)', not 'mean ± 0.000'; two runs: the sample sd."""
    one = bench_lm.summarize([{"final": {"val/acc": 0.4}}], "val/acc")
    assert one["std"] is None and bench_lm.pm(one, 3) == "0.400 (1 seed)"
    two = bench_lm.summarize([{"final": {"val/acc": 0.4}}, {"final": {"val/acc": 0.6}}], "val/acc")
    assert bench_lm.pm(two, 3) == "0.500 ± 0.141"  # sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414


def test_a_seed_given_twice_is_one_run(bench_lm, load_script, monkeypatch, tmp_path):
    """``--seeds 0 0`` trains seed 0 once: a second, identical run of it would read as a measured spread of zero
    over two seeds ('0.500 ± 0.000', n 2) where one seed was measured ('0.500 (1 seed)')."""
    calls = []
    monkeypatch.setattr(bench_lm, "run", _fake_run(calls))
    monkeypatch.setattr(sys, "argv", ["bench_lm.py", "--lens", "32", "--retrieval-steps", "4", "--skip-text",
                                      "--seeds", "0", "0", "--out", str(tmp_path / "lm")])
    bench_lm.main()
    assert calls == [("diff", 0), ("vanilla", 0)]
    acc = json.loads((tmp_path / "lm" / "bench_lm.json").read_text())["retrieval"]["32/diff"]["acc"]
    assert acc["n"] == 1 and acc["std"] is None
    assert "| 32 | 4 | 0.500 (1 seed) | 0.500 (1 seed) |" in (tmp_path / "lm" / "bench_lm.md").read_text()

    bench = load_script("bench_variants")
    text = tmp_path / "text.txt"
    text.write_text("x")
    calls.clear()
    monkeypatch.setattr(bench, "SHAKESPEARE", text)
    monkeypatch.setattr(bench, "RetrievalDataModule", lambda **kw: None)
    monkeypatch.setattr(bench, "text_dm", lambda: None)
    monkeypatch.setattr(bench, "run", _fake_run(calls))
    monkeypatch.setattr(sys, "argv", ["bench_variants.py", "--steps", "3", "--only", "types", "--seeds", "1", "1",
                                      "--out", str(tmp_path / "variants")])
    bench.main()
    assert calls == [(attn, 1) for attn in bench.TYPES for _ in ("mqar", "shakespeare")]
    assert json.loads((tmp_path / "variants" / "bench_variants.json").read_text())["types"]["diff"]["mqar"]["acc"]["n"] == 1


def test_runs_are_on_disk_as_they_finish(bench_lm, monkeypatch, tmp_path):
    """A benchmark that stops in its third run (a crash, a killed job) keeps the two runs it finished; a run
    that completes leaves only its result files, and an earlier run's leftover log is kept aside, not overwritten."""
    calls, fake = [], None

    def crashing(*args):
        if len(calls) == 2:
            raise RuntimeError("killed")
        return fake(*args)

    fake = _fake_run(calls)
    monkeypatch.setattr(bench_lm, "run", crashing)
    monkeypatch.setattr(sys, "argv", ["bench_lm.py", "--lens", "32", "--retrieval-steps", "4", "--skip-text", "--seeds", "0", "1",
                                      "--out", str(tmp_path)])
    with pytest.raises(RuntimeError, match="killed"):
        bench_lm.main()
    lines = [json.loads(x) for x in (tmp_path / "bench_lm.partial.jsonl").read_text().splitlines()]
    assert lines[0]["header"]["args"]["seeds"] == [0, 1]
    assert [x["label"] for x in lines[1:]] == ["retrieval 32/diff seed 0", "retrieval 32/diff seed 1"]
    assert [x["run"]["seed"] for x in lines[1:]] == [0, 1] and not (tmp_path / "bench_lm.json").exists()

    monkeypatch.setattr(bench_lm, "run", _fake_run([]))
    bench_lm.main()
    assert (tmp_path / "bench_lm.json").is_file() and not (tmp_path / "bench_lm.partial.jsonl").exists()
    kept = (tmp_path / "bench_lm.partial.jsonl.prev").read_text().splitlines()
    assert len(kept) == 3  # the crashed run's log, set aside when the next run started


def test_two_stopped_runs_in_a_row_both_keep_their_logs(load_script, tmp_path):
    """A second stopped run set its predecessor's log aside as `.prev` over the first one's `.prev`: the runs the
    first one measured were lost. Each stopped run's log stays, under its own name."""
    RunLog = load_script("benchmachine").RunLog
    path = tmp_path / "bench.partial.jsonl"
    first = RunLog(path, {"run": 1})
    first.add("a", {"v": 1})  # then stopped: no done()
    second = RunLog(path, {"run": 2})
    second.add("b", {"v": 2})  # stopped too
    RunLog(path, {"run": 3})
    logs = {p.name: [json.loads(x) for x in p.read_text().splitlines()] for p in tmp_path.iterdir()}
    assert logs == {
        "bench.partial.jsonl": [{"header": {"run": 3}}],
        "bench.partial.jsonl.prev": [{"header": {"run": 1}}, {"label": "a", "run": {"v": 1}}],
        "bench.partial.jsonl.prev2": [{"header": {"run": 2}}, {"label": "b", "run": {"v": 2}}],
    }


def test_bench_generate_times_each_batch_size_on_the_same_completions(load_script, tmp_path):
    """scripts/bench_generate.py --quick: one row per batch size, every batch size decoding the completions of the
    first (per-prompt decoding), with the machine it ran on."""
    load_script("bench_generate").main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench_generate.json").read_text())
    assert [r["batch_size"] for r in result["runs"]] == [1, 3]
    assert all(r["same_completions_as_first_batch_size"] and r["new_tokens_per_s"] > 0 for r in result["runs"])
    assert result["machine"]["cpu_model"] and result["device"] == "cpu"
    assert "| lm-diff-tiny |" in (tmp_path / "bench_generate.md").read_text()
