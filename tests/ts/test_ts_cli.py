"""The time-series configs through the CLI: fit (fast_dev_run), export, predict with CSV + PNG output."""

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

from zoo.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "ts").glob("*.yaml"))


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"synthetic.yaml", "synthetic_vanilla.yaml", "finetune_etth2.yaml"} <= names
    assert sum(n.startswith("etth1_") for n in names) >= 4


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "zoo.tasks.ForecastTask" in printed and "zoo.data.ts." in printed


def test_a_run_shortened_by_max_steps_ends_and_exports(tmp_path, monkeypatch):
    """`--trainer.max_steps` below one epoch (no validation ran) ends the run as Lightning's own examples do:
    the configs' EarlyStopping waits for validation instead of failing at the training epoch's end."""
    monkeypatch.chdir(ROOT)
    main(["fit", "--config", str(ROOT / "configs" / "ts" / "synthetic.yaml"), "--trainer.max_steps=2",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar=false"])
    assert next(tmp_path.rglob("export/model.safetensors")).is_file()


def test_a_cli_checkpoint_loads_with_its_hparams_file(tmp_path, monkeypatch):
    """Lightning's load_from_checkpoint(ckpt, hparams_file=...) on a `zoo fit` run: the file's values
    override the checkpoint's (Lightning reads it into an OmegaConf DictConfig, which the CLI's saved
    instantiator refused for data_info)."""
    import yaml

    from zoo.tasks.ts import ForecastTask

    monkeypatch.chdir(ROOT)
    main(["fit", "--config", str(ROOT / "configs" / "ts" / "synthetic.yaml"), "--trainer.max_steps=2",
          "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar=false"])
    ckpt, hparams = next(tmp_path.rglob("*.ckpt")), next(tmp_path.rglob("hparams.yaml"))
    values = yaml.safe_load(hparams.read_text())
    assert "_instantiator" in values and values["plot_columns"] == 8
    values["plot_columns"] = 3
    hparams.write_text(yaml.safe_dump(values))
    back = ForecastTask.load_from_checkpoint(ckpt, hparams_file=hparams, map_location="cpu")
    assert back.hparams.plot_columns == 3 and back.model.meta["columns"] == values["data_info"]["columns"]
    assert ForecastTask.load_from_checkpoint(ckpt, hparams_file=hparams, plot_columns=5).hparams.plot_columns == 5
    with pytest.raises(ValueError, match="not a mapping"):
        (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
        ForecastTask.load_from_checkpoint(ckpt, hparams_file=tmp_path / "list.yaml")


@pytest.mark.parametrize("config", CONFIGS, ids=[p.name for p in CONFIGS])
def test_early_stopping_checks_after_validation(config):
    import yaml

    callbacks = yaml.safe_load(config.read_text())["trainer"].get("callbacks", [])
    for cb in callbacks:
        if cb["class_path"].endswith("EarlyStopping"):
            assert cb["init_args"].get("check_on_train_epoch_end") is False, config.name


def test_synthetic_fit_then_predict_writes_forecast_files(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = str(ROOT / "configs" / "ts" / "synthetic.yaml")
    fit_dir = tmp_path / "fit"
    main(["fit", "--config", cfg, "--trainer.fast_dev_run=1", "--trainer.default_root_dir", str(fit_dir)])
    export = next(fit_dir.rglob("export"))
    assert (export / "ts_meta.json").is_file()
    # a smoke run (no logger, no run folder) exports under lightning_logs/fast_dev_run, and the next one replaces it
    assert export == fit_dir / "lightning_logs" / "fast_dev_run" / "export"
    main(["fit", "--config", cfg, "--trainer.fast_dev_run=1", "--trainer.default_root_dir", str(fit_dir)])
    assert [p for p in fit_dir.rglob("export") if p.is_dir()] == [export]

    pred_dir = tmp_path / "pred"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main([
            "predict", "--config", cfg, "--trainer.default_root_dir", str(pred_dir), "--trainer.logger=false",
            "--model.init_args.pretrained", str(export), "--predict_writer.echo=false",
        ])
    assert not any("randomly initialized" in str(w.message) for w in caught)
    csv = next(pred_dir.rglob("forecast.csv"))
    assert (csv.parent / "forecast.png").stat().st_size > 1000
    fc = pd.read_csv(csv, parse_dates=["date"])
    meta = json.loads((export / "ts_meta.json").read_text())
    assert list(fc.columns) == ["date"] + meta["columns"] and len(fc) == 96
    # The synthetic series has 4000 hourly rows from 2020-01-01; the forecast starts one hour later.
    assert fc["date"].iloc[0] == pd.Timestamp("2020-01-01") + pd.Timedelta(hours=4000)
    assert (fc["date"].diff().dropna() == pd.Timedelta(hours=1)).all()
    lines = next(pred_dir.rglob("predictions.jsonl")).read_text().splitlines()
    assert len(lines) == 96

    # predicting again into that folder: refused before any prediction is written (predictions.jsonl and
    # Lightning's config.yaml moved aside, so only the forecast files stand in the way), and the earlier
    # forecast stays as it was
    jsonl = next(pred_dir.rglob("predictions.jsonl"))
    jsonl.rename(jsonl.with_suffix(".old"))
    (pred_dir / "config.yaml").rename(pred_dir / "config.old")
    before = csv.read_bytes()
    with pytest.raises(FileExistsError, match=r"forecast\.(csv|png) exists"):
        main([
            "predict", "--config", cfg, "--trainer.default_root_dir", str(pred_dir), "--trainer.logger=false",
            "--model.init_args.pretrained", str(export), "--predict_writer.echo=false",
        ])
    assert not jsonl.exists() and csv.read_bytes() == before

    # with no weights at all (no --ckpt_path, no pretrained) the forecast is noise: said in a warning
    with pytest.warns(UserWarning, match="predicts with randomly initialized weights: pass --ckpt_path"):
        main(["predict", "--config", cfg, "--trainer.default_root_dir", str(tmp_path / "random"),
              "--trainer.logger=false", "--predict_writer.echo=false"])


def test_plot_columns_given_at_predict_wins_over_the_checkpoints(tmp_path, monkeypatch):
    # an output setting: `--model.init_args.plot_columns 2` with --ckpt_path drew every column (the checkpoint's 8)
    import zoo.tasks.ts as ts_task

    monkeypatch.chdir(ROOT)
    cfg = str(ROOT / "configs" / "ts" / "synthetic.yaml")
    main(["fit", "--config", cfg, "--trainer.max_steps=1", "--trainer.limit_val_batches=1", "--trainer.logger=false",
          "--trainer.default_root_dir", str(tmp_path / "fit"), "--export.enabled=false"])
    ckpt = next((tmp_path / "fit").rglob("*.ckpt"))
    drawn = []
    monkeypatch.setattr(ts_task, "plot_forecast", lambda *a, max_columns, **k: drawn.append(max_columns))
    main(["predict", "--config", cfg, f"--ckpt_path={ckpt}", "--model.init_args.plot_columns=2",
          "--trainer.logger=false", "--trainer.default_root_dir", str(tmp_path / "pred"), "--predict_writer.echo=false"])
    assert drawn == [2]


@pytest.mark.parametrize("attn,key", [("diff", "itr-diff"), ("vanilla", "itr-vanilla")])
def test_etth_configs_train_what_the_benchmark_table_trains(attn, key, load_script):
    """configs/ts/etth{1,2}_itransformer_*.yaml at H=96 use the benchmark's architecture, learning rate and
    overrides (bench_ts.arch_for / table_setting), so the README's numbers are what the configs reproduce."""
    import yaml

    bench = load_script("bench_ts")
    for dataset in ("ETTh1", "ETTh2"):
        cfg = yaml.safe_load((ROOT / "configs" / "ts" / f"{dataset.lower()}_itransformer_{attn}.yaml").read_text())
        model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
        lr, model_args = bench.table_setting(dataset, key)
        assert model["arch"] == bench.arch_for("itransformer", attn, dataset, 96)
        assert (model["lr"], model.get("model_args") or {}) == (lr, model_args)
        assert data["path"].endswith(f"{dataset}.csv") and data["horizon"] == 96 and data["time_features"] is True
