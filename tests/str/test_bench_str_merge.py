"""scripts/bench_str.py --merge: every seed's arm result is kept (none overwritten) and summarized."""

import argparse
from pathlib import Path
import json
import statistics

import pytest


@pytest.fixture()
def bench(tmp_path, monkeypatch, load_script):
    mod = load_script("bench_str")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    monkeypatch.setattr(mod, "machine", lambda: {"cpu_model": "test CPU", "torch_threads": 1, "torch": "2.x"})
    return mod


def _row(attn, seed, acc, steps=8000, lr=7e-4, batch=32):
    return {"label": f"{attn} cross-attention", "params": 1000, "steps": steps, "batch_size": batch, "lr": lr, "seed": seed,
            "test_accuracy": acc, "test_one_minus_ned": acc + 10, "test_count": 1000, "train_s": 1.0}


def _write(bench, name, rows, data=None):
    payload = {"machine": {"cpu_model": "test CPU"}, "data": data or bench.DATA, "runs": rows}
    (bench.RESULTS / f"{name}.json").write_text(json.dumps(payload))


def _merge(bench, steps=8000):
    bench.merge_main(argparse.Namespace(steps=steps, batch_size=32, lr=7e-4))
    return json.loads((bench.RESULTS / "diff_vs_vanilla.json").read_text())


def test_merge_keeps_every_seed_and_reports_mean_and_sd(bench):
    _write(bench, "arm_vanilla_8000_s0", [_row("vanilla", 0, 71.3)])
    _write(bench, "arm_vanilla_8000_s1", [_row("vanilla", 1, 69.1)])
    _write(bench, "arm_diff_8000_s1", [_row("diff", 1, 70.0)])
    # the shipped model's run is seed 0 of the diff arm (same steps, batch, lr and data)
    _write(bench, "shipped_tiny", [_row("diff", 0, 65.9)])
    _write(bench, "arm_diff_2500_s0", [_row("diff", 0, 10.0, steps=2500)])  # another budget: not merged
    out = _merge(bench)
    got = sorted((r["label"].split()[0], r["seed"], r["test_accuracy"]) for r in out["runs"])
    assert got == [("diff", 0, 65.9), ("diff", 1, 70.0), ("vanilla", 0, 71.3), ("vanilla", 1, 69.1)]
    assert out["summary"]["diff"]["seeds"] == [0, 1]
    assert out["summary"]["vanilla"]["mean"] == pytest.approx((71.3 + 69.1) / 2)
    assert out["summary"]["diff"]["sd"] == pytest.approx(statistics.stdev([65.9, 70.0]))
    assert "over seeds [0, 1]" in (bench.RESULTS / "diff_vs_vanilla.md").read_text()


def test_merge_skips_runs_of_other_settings_and_names_a_missing_arm(bench):
    _write(bench, "arm_vanilla_8000_s0", [_row("vanilla", 0, 71.3)])
    _write(bench, "shipped_tiny", [_row("diff", 0, 65.9, lr=1e-3)])  # another lr: not the diff arm
    with pytest.raises(SystemExit, match="no diff arm at 8000 steps"):
        _merge(bench)


def test_an_arm_result_is_not_overwritten(bench, monkeypatch):
    _write(bench, "arm_vanilla_600_s0", [_row("vanilla", 0, 5.0, steps=600)])
    monkeypatch.setattr(bench, "run", lambda *a, **k: (_row("vanilla", 0, 6.0, steps=600), None))
    args = argparse.Namespace(attn="vanilla", steps=600, seed=0, n_test=10, lr=7e-4, batch_size=32, teacher=None,
                              overwrite=False, csd=False, init_from=None, val_every=0)
    with pytest.raises(SystemExit, match="exists"):
        bench.bench_main(args)
    assert json.loads((bench.RESULTS / "arm_vanilla_600_s0.json").read_text())["runs"][0]["test_accuracy"] == 5.0
    bench.bench_main(argparse.Namespace(**{**vars(args), "overwrite": True}))
    assert json.loads((bench.RESULTS / "arm_vanilla_600_s0.json").read_text())["runs"][0]["test_accuracy"] == 6.0


def test_shear_runs_are_kept_apart_from_plain_runs(bench, monkeypatch):
    """--shear records the training slant in the data settings and names its arm results apart, so a
    sheared arm neither overwrites nor merges with the plain arm of the same steps and seed."""
    import sys

    calls = []
    monkeypatch.setattr(bench, "run", lambda arch, steps, **k: calls.append(dict(bench.DATA)) or (_row("vanilla", 0, 6.0, steps=600), None))
    _write(bench, "arm_vanilla_600_s0", [_row("vanilla", 0, 5.0, steps=600)])
    monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", "vanilla", "--steps", "600", "--shear", "0.3"])
    bench.main()
    assert calls[0]["synth_train_shear"] == 0.3
    sheared = json.loads((bench.RESULTS / "arm_vanilla_600_s0_shear0.3.json").read_text())
    assert sheared["data"]["synth_train_shear"] == 0.3
    assert json.loads((bench.RESULTS / "arm_vanilla_600_s0.json").read_text())["runs"][0]["test_accuracy"] == 5.0
    monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", "vanilla", "--steps", "600", "--shear", "2"])
    with pytest.raises(SystemExit):
        bench.main()


def test_init_from_runs_are_named_recorded_and_not_merged(bench, monkeypatch):
    import sys

    seen = {}
    monkeypatch.setattr(bench, "run", lambda arch, steps, **k: seen.update(k) or
                        ({**_row("diff", 0, 90.0, steps=600), "init_from": k["init_from"]}, None))
    monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", "diff", "--steps", "600", "--init-from", "/w/str22k"])
    bench.main()
    assert seen["init_from"] == "/w/str22k"
    assert (bench.RESULTS / "arm_diff_600_s0_from-str22k.json").is_file()
    _write(bench, "arm_vanilla_600_s0", [_row("vanilla", 0, 5.0, steps=600)])
    with pytest.raises(SystemExit, match="no diff arm at 600 steps"):  # a fine-tuning stage is no from-scratch arm
        _merge(bench, steps=600)
    for argv in (["--init-from", "x"], ["--init-from", "x", "--attn", "diff", "--merge"]):
        monkeypatch.setattr(sys, "argv", ["bench_str.py", *argv])
        with pytest.raises(SystemExit):
            bench.main()


def test_added_train_fonts_are_recorded_and_named(bench, monkeypatch):
    import sys

    seen = []
    monkeypatch.setattr(bench, "run", lambda arch, steps, **k: seen.append(dict(bench.DATA)) or (_row("diff", 0, 9.0, steps=600), None))
    monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", "diff", "--steps", "600", "--add-train-fonts", "cmmi10"])
    bench.main()
    assert seen[0]["synth_train_fonts"][-1] == "cmmi10" and "cmr10" in seen[0]["synth_train_fonts"]
    assert (bench.RESULTS / "arm_diff_600_s0_fonts+cmmi10.json").is_file()
    monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", "diff", "--steps", "600", "--add-train-fonts", "cmti10"])
    with pytest.raises(SystemExit):  # a held-out test font
        bench.main()


def test_export_never_silently_replaces_a_better_shipped_model(bench, monkeypatch, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "config.json").write_text(json.dumps({"extra": {"test": {"test_accuracy": 93.2}}}))
    exported = []
    import zoo.hub

    monkeypatch.setattr(zoo.hub, "export_model", lambda model, folder, **k: exported.append(Path(folder)) or folder)
    monkeypatch.setattr(bench, "run", lambda *a, **k: (_row("diff", 0, 90.0), type("T", (), {"model": None})()))
    args = argparse.Namespace(steps=10, seed=0, n_test=10, lr=7e-4, val_every=0, batch_size=32, resume_dir=None,
                              budget_min=None, init_from=None, export_dir=str(shipped), overwrite=False)
    bench.export_main(args)
    assert exported[-1] == bench.RESULTS / "export_candidate"  # 90.0 < 93.2: kept apart
    assert not (bench.RESULTS / "shipped_tiny.json").exists()
    bench.export_main(argparse.Namespace(**{**vars(args), "overwrite": True}))
    assert exported[-1] == shipped
    monkeypatch.setattr(bench, "run", lambda *a, **k: (_row("diff", 0, 95.0), type("T", (), {"model": None})()))
    bench.export_main(args)
    assert exported[-1] == shipped  # better: shipped


def test_other_batch_sizes_are_named_and_merged_apart(bench, monkeypatch):
    """A run at another batch size (the GPU arms use 64) gets a _b<N> arm name and its own merged table;
    the batch-32 table is left as it was."""
    import sys

    monkeypatch.setattr(bench, "run", lambda arch, steps, **k: (
        {**_row(arch.split("-")[1], 0, 80.0, steps=steps, batch=64), "device": "NVIDIA H100"}, None))
    for attn in ("diff", "vanilla"):
        monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", attn, "--steps", "600", "--batch-size", "64"])
        bench.main()
        assert (bench.RESULTS / f"arm_{attn}_600_s0_b64.json").is_file()
    _write(bench, "arm_diff_600_s1", [_row("diff", 1, 50.0, steps=600)])  # batch 32: not in the batch-64 table
    _write(bench, "arm_vanilla_600_s1", [_row("vanilla", 1, 55.0, steps=600)])
    bench.merge_main(argparse.Namespace(steps=600, batch_size=64, lr=7e-4))
    out = json.loads((bench.RESULTS / "diff_vs_vanilla_b64.json").read_text())
    assert sorted((r["label"].split()[0], r["seed"]) for r in out["runs"]) == [("diff", 0), ("vanilla", 0)]
    assert "trained on: NVIDIA H100" in (bench.RESULTS / "diff_vs_vanilla_b64.md").read_text()
    assert not (bench.RESULTS / "diff_vs_vanilla.json").exists()


def test_model_args_variants_are_recorded_named_and_not_merged(bench, monkeypatch, capsys):
    """--model-args (e.g. a one-head diff cross-attention) reaches the run, names the arm file and its
    label, and the variant stays out of the merged table of the registered twins (--merge without --model-args)."""
    import sys

    seen = []
    monkeypatch.setattr(bench, "run", lambda arch, steps, **k: seen.append(k["model_args"]) or (
        {**_row(arch.split("-")[1], 0, 90.0, steps=steps), "model_args": k["model_args"]}, None))
    monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", "diff", "--steps", "600", "--model-args", '{"dec_heads": 1}'])
    bench.main()
    assert seen == [{"dec_heads": 1}]
    variant = json.loads((bench.RESULTS / "arm_diff_600_s0_dec_heads1.json").read_text())["runs"][0]
    assert variant["label"] == "diff cross-attention dec_heads=1" and variant["model_args"] == {"dec_heads": 1}
    _write(bench, "arm_vanilla_600_s0", [_row("vanilla", 0, 55.0, steps=600)])
    with pytest.raises(SystemExit, match="no diff arm at 600 steps"):  # the variant is not the diff twin
        bench.merge_main(argparse.Namespace(steps=600, batch_size=32, lr=7e-4))
    for bad, msg in (("[1]", "must be a JSON object"), ('{"dec_heads": 1}', "--attn does not apply")):
        extra = ["--merge", "--attn", "diff"] if msg.startswith("--attn") else []
        monkeypatch.setattr(sys, "argv", ["bench_str.py", "--steps", "600", "--model-args", bad, *extra])
        with pytest.raises(SystemExit):
            bench.main()
        assert msg in capsys.readouterr().err


def test_merge_with_model_args_adds_that_variant_as_a_third_arm(bench):
    """--merge --model-args X: the registered diff twin, the diff runs of exactly X, and vanilla, each with its
    own mean and sd, in a table of its own; runs of other overrides stay out and the twins' table is untouched."""
    v2 = {"attn_type": "diff_v2", "dec_heads": 4}
    _write(bench, "arm_diff_8000_s0", [_row("diff", 0, 66.0)])
    _write(bench, "arm_diff_8000_s0_attn_typediff_v2_dec_heads4", [{**_row("diff", 0, 77.0), "model_args": v2}])
    _write(bench, "arm_diff_8000_s1_attn_typediff_v2_dec_heads4", [{**_row("diff", 1, 74.0), "model_args": v2}])
    _write(bench, "arm_diff_8000_s0_dec_heads4", [{**_row("diff", 0, 50.0), "model_args": {"dec_heads": 4}}])  # other overrides
    _write(bench, "arm_vanilla_8000_s0", [_row("vanilla", 0, 71.0)])
    _write(bench, "arm_vanilla_8000_s1", [_row("vanilla", 1, 78.0)])
    bench.merge_main(argparse.Namespace(steps=8000, batch_size=32, lr=7e-4, model_args=v2))
    out = json.loads((bench.RESULTS / "diff_vs_vanilla_attn_typediff_v2_dec_heads4.json").read_text())
    key = "diff attn_type=diff_v2 dec_heads=4"
    assert list(out["summary"]) == ["diff", key, "vanilla"]
    assert out["summary"][key]["mean"] == pytest.approx(75.5) and out["summary"][key]["seeds"] == [0, 1]
    assert out["summary"][key]["sd"] == pytest.approx(statistics.stdev([77.0, 74.0]))
    assert out["summary"]["diff"]["mean"] == pytest.approx(66.0) and out["summary"]["diff"]["sd"] is None
    se = ((statistics.stdev([77.0, 74.0]) ** 2 + statistics.stdev([71.0, 78.0]) ** 2) / 2) ** 0.5
    assert out["summary"][key]["minus_vanilla"] == pytest.approx({"mean": 1.0, "se": se})
    assert out["summary"]["diff"]["minus_vanilla"] == {"mean": pytest.approx(66.0 - 74.5), "se": None}  # one seed: no se
    assert "minus vanilla +1.00 ± " in (bench.RESULTS / "diff_vs_vanilla_attn_typediff_v2_dec_heads4.md").read_text()
    assert sorted(r["test_accuracy"] for r in out["runs"]) == [66.0, 71.0, 74.0, 77.0, 78.0]
    assert not (bench.RESULTS / "diff_vs_vanilla.json").exists()
    with pytest.raises(SystemExit, match="no diff lambda_init=0.5 arm at 8000 steps.*--model-args"):
        bench.merge_main(argparse.Namespace(steps=8000, batch_size=32, lr=7e-4, model_args={"lambda_init": 0.5}))


def test_csd_results_are_named_by_budget_and_teacher_and_not_overwritten(bench, monkeypatch):
    """--csd writes csd_<steps>_b<batch>_s<seed>_teacher-<name>.*: the earlier csd.json and a run with
    another teacher or budget are kept; the same run again is refused unless --overwrite."""
    (bench.RESULTS / "csd.json").write_text("{}")
    monkeypatch.setattr(bench, "run", lambda arch, steps, **k: ({**_row("diff", 0, 50.0, steps=steps), "teacher": k["teacher"]}, None))
    args = argparse.Namespace(steps=600, batch_size=32, seed=0, n_test=8, lr=7e-4, val_every=0, overwrite=False)
    bench.csd_main(args, "str-diff-tiny")
    out = json.loads((bench.RESULTS / "csd_600_b32_s0_teacher-str-diff-tiny.json").read_text())
    assert out["runs"][0]["label"] == "teacher str-diff-tiny" and out["runs"][0]["test_count"] == 8
    assert out["runs"][1]["teacher"] == "str-diff-tiny"
    with pytest.raises(SystemExit, match="exists"):
        bench.csd_main(args, "str-diff-tiny")
    assert (bench.RESULTS / "csd.json").read_text() == "{}"


def test_the_default_bench_stops_before_training_when_its_csd_result_exists(bench, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "run", lambda *a, **k: calls.append(a) or (_row("diff", 0, 1.0), None))
    (bench.RESULTS / "csd_600_b32_s1_teacher-bench_teacher.json").write_text("{}")
    args = argparse.Namespace(attn="both", steps=600, seed=0, n_test=10, lr=7e-4, batch_size=32, teacher=None,
                              overwrite=False, csd=False, init_from=None, val_every=0, skip_csd=False)
    with pytest.raises(SystemExit, match="csd_600_b32_s1_teacher-bench_teacher.json exists"):
        bench.bench_main(args)
    assert calls == []


def test_merge_leaves_out_fine_tuning_stages_other_test_sets_and_names_every_machine(bench):
    _write(bench, "arm_vanilla_8000_s0", [_row("vanilla", 0, 71.3)])
    _write(bench, "arm_diff_8000_s1", [_row("diff", 1, 70.0)])
    # a shipped model fine-tuned from earlier weights, with its own overrides: not a from-scratch diff run
    _write(bench, "shipped_tiny", [{**_row("diff", 0, 96.0), "init_from": "str22k", "model_args": {"dec_heads": 1}}])
    _write(bench, "arm_diff_8000_s2", [{**_row("diff", 2, 10.0), "test_count": 20}])  # 20 test crops, not 1000
    payload = {"machine": {"cpu_model": "GPU host", "torch_threads": 1, "torch": "2.y", "device": "NVIDIA H100"},
               "data": bench.DATA, "runs": [_row("vanilla", 1, 80.0)]}
    (bench.RESULTS / "arm_vanilla_8000_s1.json").write_text(json.dumps(payload))
    out = _merge(bench)
    assert sorted((r["label"].split()[0], r["seed"]) for r in out["runs"]) == [("diff", 1), ("vanilla", 0), ("vanilla", 1)]
    assert [m["cpu_model"] for m in out["machines"]] == ["test CPU", "GPU host"]
    assert "Machines: test CPU, ?" in (bench.RESULTS / "diff_vs_vanilla.md").read_text()
    assert "GPU host, 1 thread(s), NVIDIA H100" in (bench.RESULTS / "diff_vs_vanilla.md").read_text()


def test_an_export_elsewhere_is_not_the_shipped_models_record(bench, monkeypatch, tmp_path):
    import zoo.hub

    monkeypatch.setattr(zoo.hub, "export_model", lambda model, folder, **k: folder)
    monkeypatch.setattr(bench, "run", lambda *a, **k: (_row("diff", 0, 10.0), type("T", (), {"model": None})()))
    args = argparse.Namespace(steps=10, seed=0, n_test=10, lr=7e-4, val_every=0, batch_size=32, resume_dir=None,
                              budget_min=None, init_from=None, export_dir=str(tmp_path / "mine"), overwrite=False)
    bench.export_main(args)
    assert (bench.RESULTS / "export_mine.json").is_file() and not (bench.RESULTS / "shipped_tiny.json").exists()


def test_both_arms_in_one_run_are_named_by_budget_batch_and_overrides(bench, monkeypatch):
    monkeypatch.setattr(bench, "run", lambda arch, steps, **k: (_row(arch.split("-")[1], 0, 5.0, steps=steps, batch=128), None))
    _write(bench, "diff_vs_vanilla", [_row("diff", 0, 66.0)])
    args = argparse.Namespace(attn="both", steps=5, seed=0, n_test=10, lr=7e-4, batch_size=128, teacher="x",
                              overwrite=False, csd=False, init_from=None, val_every=0, skip_csd=True,
                              model_args={"dec_heads": 4})
    bench.bench_main(args)
    out = json.loads((bench.RESULTS / "diff_vs_vanilla_5steps_b128_dec_heads4.json").read_text())
    assert [r["label"] for r in out["runs"]] == ["diff cross-attention dec_heads=4", "vanilla cross-attention dec_heads=4"]
    assert json.loads((bench.RESULTS / "diff_vs_vanilla.json").read_text())["runs"][0]["test_accuracy"] == 66.0
    with pytest.raises(SystemExit, match="exists"):  # the same run again: refused before training
        bench.bench_main(args)


def test_a_recipe_reaches_the_task_is_recorded_named_and_merged_apart(bench, monkeypatch, tmp_path):
    """--recipe parseq trains RecognitionTask with that recipe (a real two-step run), records it in the arm's
    row and settings, suffixes the arm file, and --merge --recipe parseq combines only runs of that recipe
    (every recorded row without the field is a v1 run)."""
    import sys
    import tempfile

    import zoo.tasks.str as str_tasks

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    recipes, real = [], str_tasks.RecognitionTask
    monkeypatch.setattr(str_tasks, "RecognitionTask", lambda *a, **k: recipes.append(k.get("recipe")) or real(*a, **k))
    monkeypatch.setattr(sys, "argv", ["bench_str.py", "--attn", "vanilla", "--steps", "2", "--batch-size", "4", "--n-test", "8",
                                      "--recipe", "parseq"])
    bench.main()
    assert recipes == ["parseq"]
    row = json.loads((bench.RESULTS / "arm_vanilla_2_s0_b4_recipe-parseq.json").read_text())["runs"][0]
    assert row["recipe"] == "parseq"
    # v1 rows of both arms (no recipe field, as every older record) and a parseq diff row
    _write(bench, "arm_diff_2_s0_b4", [_row("diff", 0, 40.0, steps=2, batch=4)])
    _write(bench, "arm_vanilla_2_s0_b4", [_row("vanilla", 0, 50.0, steps=2, batch=4)])
    args = argparse.Namespace(steps=2, batch_size=4, lr=7e-4, n_test=8)
    with pytest.raises(SystemExit, match="no diff arm at 2 steps"):  # the parseq table has no parseq diff run yet
        bench.merge_main(args)
    _write(bench, "arm_diff_2_s0_b4_recipe-parseq", [{**_row("diff", 0, 45.0, steps=2, batch=4), "test_count": 8, "recipe": "parseq"}])
    bench.merge_main(args)
    out = json.loads((bench.RESULTS / "diff_vs_vanilla_b4_recipe-parseq.json").read_text())
    assert sorted((r["label"].split()[0], r.get("recipe")) for r in out["runs"]) == [("diff", "parseq"), ("vanilla", "parseq")]
    bench.TRAIN["recipe"] = "v1"
    bench.merge_main(argparse.Namespace(steps=2, batch_size=4, lr=7e-4, n_test=1000))
    out = json.loads((bench.RESULTS / "diff_vs_vanilla_b4.json").read_text())
    assert sorted((r["test_accuracy"], r.get("recipe")) for r in out["runs"]) == [(40.0, None), (50.0, None)]
