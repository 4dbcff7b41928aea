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
        "best_val_mse": mse + 0.3, "lr": 1e-4, "total_s": 1.0, "time_features": key.startswith("itr"), "machine": {"cpu_model": "test CPU", "processor": "x86_64", "cpu_count": 2, "torch": "2.x",
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


def test_sweep_pairs_each_setting_with_the_tables_run_of_the_same_seed(tmp_path, bench):
    # the table's H=96 runs (seeds 0-2) and a pilot setting on seeds 0, 1 and 5 (5 has no table twin)
    table_val = {0: 0.70, 1: 0.68, 2: 0.69}
    _write(tmp_path / "runs.jsonl", [
        _run("ETTh1", 96, "itr-diff", s, 0.39, best_val_mse=v, protocol="v3") for s, v in table_val.items()
    ])
    pilot_val = {0: 0.69, 1: 0.66, 5: 0.60}
    note = "v3 sweep: a setting"
    _write(tmp_path / "pilots.jsonl", [
        _run("ETTh1", 96, "itr-diff", s, 0.38 - s / 1000, best_val_mse=v, protocol="v3", pilot_note=note)
        for s, v in pilot_val.items()
    ])
    bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    sweep = {w["setting"]: w for w in json.loads((tmp_path / "bench_ts.json").read_text())["sweep"]}
    w = sweep["a setting"]
    # by hand: val differences on seeds 0 and 1 are -0.01 and -0.02 -> mean -0.015, sd 0.00707, se 0.005
    assert w["paired_seeds"] == 2 and w["seeds"] == [0, 1, 5]
    assert w["d_val_mse"] == pytest.approx(-0.015) and w["d_val_se"] == pytest.approx(0.005)
    assert w["d_mse"] == pytest.approx(((0.38 - 0.39) + (0.379 - 0.39)) / 2)
    assert "paired_seeds" not in sweep["the table's setting"]
    md = (tmp_path / "bench_ts.md").read_text()
    assert "| ETTh1 | itr-diff | a setting | lr 0.0001 | 3 | 0.6500 | 0.3780 | -0.0150 ± 0.0050 (2 seeds) | -0.0105 |" in md


def test_sweep_groups_runs_by_what_was_trained_not_by_their_note(tmp_path, bench):
    """Two notes for one setting (same arch, lr, overrides) make one group that shows both notes; one note
    over two settings (other model_args) makes two groups."""
    _write(tmp_path / "runs.jsonl", [_run("ETTh1", 96, "itr-diff", s, 0.39, protocol="v3") for s in (0, 1)])
    pilots = [
        _run("ETTh1", 96, "itr-diff", 0, 0.38, protocol="v3", pilot_note="v3 sweep: lambda 0.8", model_args={"lambda_init": 0.8}),
        _run("ETTh1", 96, "itr-diff", 1, 0.37, protocol="v3", pilot_note="v3 sweep: lambda_init 0.8 again", model_args={"lambda_init": 0.8}),
        _run("ETTh1", 96, "itr-diff", 0, 0.36, protocol="v3", pilot_note="v3 sweep: heads", model_args={"n_heads": 8}),
        _run("ETTh1", 96, "itr-diff", 0, 0.35, protocol="v3", pilot_note="v3 sweep: heads", model_args={"n_heads": 2}),
    ]
    _write(tmp_path / "pilots.jsonl", pilots)
    bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    sweep = json.loads((tmp_path / "bench_ts.json").read_text())["sweep"]
    got = sorted((w["setting"], w["seeds"], round(w["mse"], 4)) for w in sweep)
    assert got == sorted([("lambda 0.8 / lambda_init 0.8 again", [0, 1], 0.375), ("heads", [0], 0.36), ("heads", [0], 0.35),
                          ("the table's setting", [0, 1], 0.39)])


def test_table_runs_take_the_sweeps_overrides_and_pilots_their_own_setting(tmp_path, bench, monkeypatch):
    """A grid point with a TABLE_OVERRIDES entry trains at that lr / architecture; a pilot at what it was given;
    a recorded run of another setting does not count as done."""
    monkeypatch.setattr(bench, "TABLE_OVERRIDES", {("ETTh2", "itr-diff"): {"lr": 2e-4, "model_args": {"n_layers": 1}}})
    trained = []

    def fake_train(dataset, horizon, arch, seed, tf, args, lr=None, model_args=None):
        trained.append((dataset, lr, model_args))
        return {**_run(dataset, horizon, "itr-diff", seed, 0.3, arch=arch, best_epoch=2), "lr": lr, "model_args": model_args}, None

    monkeypatch.setattr(bench, "train_one", fake_train)
    monkeypatch.setattr(bench, "machine", lambda: {"cpu_model": "test CPU"})
    # an earlier table run at the reference setting (lr 1e-4, no overrides) for ETTh2 seed 0
    ref = _run("ETTh2", 96, "itr-diff", 0, 0.30, arch=bench.arch_for("itransformer", "diff", "ETTh2", 96), model_args={})
    _write(tmp_path / "runs.jsonl", [ref])
    args = argparse.Namespace(out=tmp_path, pilot=None, lr=None, model_args={}, shard="0/1", horizons=[96],
                              datasets=["ETTh1", "ETTh2"], models=["itr-diff"], seeds=[0], time_features="itransformer")
    bench.run_grid(args)
    assert trained == [("ETTh1", 1e-4, {}), ("ETTh2", 2e-4, {"n_layers": 1})]
    # the reference-setting ETTh2 run in runs.jsonl now contradicts the table: the report says which and what to do
    with pytest.raises(SystemExit, match=r"ETTh2 H=96 itr-diff run \(seed 0\) at lr 0.0001 with \{\}.*lr 0.0002 with "
                                         r"\{'n_layers': 1\}.*move that run to pilots.jsonl"):
        bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    trained.clear()
    bench.run_grid(argparse.Namespace(**{**vars(args), "pilot": "v3 sweep: x", "lr": 5e-5, "model_args": {"dropout": 0.2}}))
    assert trained == [("ETTh1", 5e-5, {"dropout": 0.2}), ("ETTh2", 5e-5, {"dropout": 0.2})]
    pilots = [json.loads(line) for line in (tmp_path / "pilots.jsonl").read_text().splitlines()]
    assert [p["pilot_note"] for p in pilots] == ["v3 sweep: x"] * 2


def test_lr_or_model_args_without_pilot_are_refused(bench, tmp_path):
    for extra in (["--lr", "2e-4"], ["--model-args", '{"n_layers": 1}']):
        with pytest.raises(SystemExit):
            bench.main(["--out", str(tmp_path), "--datasets", "ETTh1", *extra])


def test_the_tables_protocol_is_fixed_and_each_grid_point_trains_once(tmp_path, bench, monkeypatch, capsys):
    trained = []

    def fake_train(dataset, horizon, arch, seed, time_features, args, lr, model_args):
        trained.append((dataset, seed, time_features))
        rec = _run(dataset, horizon, "itr-diff", seed, 0.3, arch=arch, best_epoch=2, time_features=time_features,
                   max_epochs=args.max_epochs, patience=args.patience)
        return {**rec, "lr": lr, "model_args": model_args}, None

    monkeypatch.setattr(bench, "train_one", fake_train)
    monkeypatch.setattr(bench, "machine", lambda: {"cpu_model": "test CPU", "processor": "x86_64", "cpu_count": 2,
                                                   "torch": "2.x", "torch_threads": 1})
    base = ["--datasets", "ETTh1", "--horizons", "96", "--models", "itr-diff", "--out", str(tmp_path),
            "--data-dir", str(tmp_path)]
    bench.main([*base, "--seeds", "0", "0"])  # a seed given twice trains once
    assert trained == [("ETTh1", 0, True)]
    bench.main([*base, "--seeds", "0"])  # done: nothing trains again
    assert len(trained) == 1
    for off in (["--time-features", "none"], ["--max-epochs", "1"], ["--patience", "1"]):
        with pytest.raises(SystemExit):
            bench.main([*base, "--seeds", "1", *off])
        assert "leave the table's protocol" in capsys.readouterr().err
    for bad in ("1/1", "0/0", "x"):
        with pytest.raises(SystemExit):
            bench.main([*base, "--shard", bad])
        assert "--shard" in capsys.readouterr().err
    # a run of another protocol in runs.jsonl (as written before this check existed) stops the report
    rows = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    _write(tmp_path / "runs.jsonl", rows + [{**rows[0], "seed": 1, "max_epochs": 1}])
    with pytest.raises(SystemExit, match=r"trained with max_epochs 1, patience 3.*not the table's protocol"):
        bench.report(argparse.Namespace(out=tmp_path))


def test_sweep_keeps_pilots_of_another_epoch_budget_apart(tmp_path, bench):
    """--pilot allows --max-epochs / --patience: a pilot trained for 20 epochs is another setting than one of the
    same lr and architecture trained under the table's 10 (a record without the fields predates them: 10 / 3)."""
    _write(tmp_path / "runs.jsonl", [_run("ETTh1", 96, "itr-diff", s, 0.39, best_val_mse=0.70, protocol="v3") for s in (0, 1)])
    _write(tmp_path / "pilots.jsonl", [
        _run("ETTh1", 96, "itr-diff", 0, 0.38, best_val_mse=0.68, protocol="v3", pilot_note="v3 sweep: x"),  # no fields: 10 / 3
        _run("ETTh1", 96, "itr-diff", 1, 0.38, best_val_mse=0.66, protocol="v3", pilot_note="v3 sweep: x", max_epochs=10, patience=3),
        _run("ETTh1", 96, "itr-diff", 0, 0.30, best_val_mse=0.50, protocol="v3", pilot_note="v3 sweep: x", max_epochs=20, patience=3),
    ])
    bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    sweep = [w for w in json.loads((tmp_path / "bench_ts.json").read_text())["sweep"] if w["setting"] != "the table's setting"]
    got = sorted((w["seeds"], round(w["val_mse"], 4)) for w in sweep)
    # by hand: the 10-epoch pilots (seeds 0, 1) average (0.68 + 0.66) / 2 = 0.67; the 20-epoch one stands alone at 0.50
    assert got == [([0], 0.5), ([0, 1], 0.67)]
    md = (tmp_path / "bench_ts.md").read_text()
    assert "| lr 0.0001; max_epochs 20 | 1 | 0.5000 |" in md and "| lr 0.0001 | 2 | 0.6700 |" in md


def test_sweep_pairs_a_seed_once_when_a_pilot_ran_it_twice(tmp_path, bench):
    """Pilots never resume: the same --pilot command run twice records a seed twice. The paired difference counts
    that seed once (the mean of its runs), not as two independent seeds."""
    _write(tmp_path / "runs.jsonl", [_run("ETTh1", 96, "itr-diff", s, 0.39, best_val_mse=v, protocol="v3")
                                     for s, v in {0: 0.70, 1: 0.68}.items()])
    _write(tmp_path / "pilots.jsonl", [
        _run("ETTh1", 96, "itr-diff", s, 0.38, best_val_mse=v, protocol="v3", pilot_note="v3 sweep: x")
        for s, v in ((0, 0.69), (0, 0.67), (1, 0.66))
    ])
    bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    w = next(w for w in json.loads((tmp_path / "bench_ts.json").read_text())["sweep"] if w["setting"] == "x")
    # by hand: seed 0 -> (0.69 + 0.67) / 2 - 0.70 = -0.02; seed 1 -> 0.66 - 0.68 = -0.02; mean -0.02, sd 0, se 0
    assert w["paired_seeds"] == 2
    assert w["d_val_mse"] == pytest.approx(-0.02) and w["d_val_se"] == pytest.approx(0.0, abs=1e-12)
    assert w["d_mse"] == pytest.approx(-0.01)


def test_sweep_row_counts_a_seed_run_twice_once(tmp_path, bench):
    """The row's seed count and means treat a seed run twice as one seed, as its paired column does: seeds 0
    (twice) and 1 are two seeds (the rule asks for six), and seed 0 weighs as much as seed 1 in the means."""
    _write(tmp_path / "runs.jsonl", [_run("ETTh1", 96, "itr-diff", s, 0.39, best_val_mse=v, protocol="v3")
                                     for s, v in {0: 0.70, 1: 0.68}.items()])
    _write(tmp_path / "pilots.jsonl", [
        _run("ETTh1", 96, "itr-diff", s, m, best_val_mse=v, protocol="v3", pilot_note="v3 sweep: x")
        for s, v, m in ((0, 0.69, 0.38), (0, 0.67, 0.36), (1, 0.66, 0.40))
    ])
    bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    w = next(w for w in json.loads((tmp_path / "bench_ts.json").read_text())["sweep"] if w["setting"] == "x")
    # by hand: seed 0 -> val (0.69 + 0.67) / 2 = 0.68, test 0.37; seed 1 -> 0.66, 0.40; means 0.67 and 0.385
    assert w["seeds"] == [0, 1]
    assert w["val_mse"] == pytest.approx(0.67) and w["mse"] == pytest.approx(0.385)
    md = (tmp_path / "bench_ts.md").read_text()
    assert "| ETTh1 | itr-diff | x | lr 0.0001 | 2 | 0.6700 | 0.3850 | -0.0200 ± 0.0000 (2 seeds) |" in md


def test_a_patchtst_pilot_is_paired_with_patchtsts_table_runs(tmp_path, bench):
    """The sweep pairs a PatchTST pilot with PatchTST's own H=96 table runs (it showed '— | —' and no reference
    row, as if the table had no run of its seeds)."""
    _write(tmp_path / "runs.jsonl", [_run("ETTh1", 96, k, s, 0.39, best_val_mse=v, protocol="v3")
                                     for k in ("itr-diff", "patch-diff") for s, v in {0: 0.70, 1: 0.68}.items()])
    _write(tmp_path / "pilots.jsonl", [
        _run("ETTh1", 96, "patch-diff", s, 0.38, best_val_mse=v, protocol="v3", pilot_note="v3 sweep: y")
        for s, v in ((0, 0.69), (1, 0.66))
    ])
    bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    sweep = json.loads((tmp_path / "bench_ts.json").read_text())["sweep"]
    w = next(w for w in sweep if w["setting"] == "y")
    # by hand: -0.01 and -0.02 -> mean -0.015, sd 0.00707, se 0.005; test 0.38 - 0.39 on both seeds
    assert w["paired_seeds"] == 2
    assert w["d_val_mse"] == pytest.approx(-0.015) and w["d_val_se"] == pytest.approx(0.005)
    assert w["d_mse"] == pytest.approx(-0.01)
    assert any(x["model"] == "patch-diff" and x["setting"] == "the table's setting" for x in sweep)


def test_target_line_never_prints_a_mean_that_contradicts_its_verdict(tmp_path, bench):
    """A mean of 0.3864 is above the 0.386 target (not met); printed to 3 decimals it would read 0.386, which
    meets it. The line prints as many decimals as the verdict needs."""
    _write(tmp_path / "runs.jsonl", [_run("ETTh1", 96, "itr-diff", s, m, protocol="v3") for s, m in ((0, 0.3860), (1, 0.3868))])
    bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    md = (tmp_path / "bench_ts.md").read_text()
    assert "Target ETTh1 Diff-iTransformer H=96 MSE <= 0.386: mean 0.3864 -> not met (best seed meets it)" in md


def test_a_run_cut_off_while_writing_its_line_is_named(tmp_path, bench):
    """A killed run can leave half a JSON line in runs.jsonl: the report names the file and line (it was a bare
    JSONDecodeError); blank lines are no records."""
    good = json.dumps(_run("ETTh1", 96, "itr-diff", 0, 0.3))
    (tmp_path / "runs.jsonl").write_text(good + "\n\n" + good[:40] + "\n")
    assert bench.read_runs(tmp_path / "nothing.jsonl") == []
    with pytest.raises(SystemExit, match=r"runs.jsonl, line 3: not a JSON run record .*delete it and run again"):
        bench.report(argparse.Namespace(out=tmp_path, max_epochs=10, patience=3))
    (tmp_path / "runs.jsonl").write_text(good + "\n\n")
    assert bench.read_runs(tmp_path / "runs.jsonl") == [json.loads(good)]
