"""Export -> load_pretrained -> forecast(df) round trip, checkpoints with assets, shipped ETTh1 models."""


import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

import zoo
from zoo.data.ts import CSVTSDataModule
from zoo.hub import PRETRAINED_DIR
from zoo.tasks.ts import ForecastTask

LB, H = 24, 8
ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def _write(tmp_path, n=300, freq="15min"):
    rng = np.random.default_rng(2)
    t = np.arange(n)
    values = np.stack([np.sin(t / 4) * 5 + 20, rng.normal(size=n).cumsum() + 3, np.cos(t / 9) * 2 - 7], 1)
    df = pd.DataFrame(values, columns=["a", "b", "tgt"])
    df.insert(0, "date", pd.date_range("2022-02-27 22:00", periods=n, freq=freq))
    df.to_csv(tmp_path / "series.csv", index=False)
    return df


def _trained(tmp_path, features="M", arch="ts-itransformer-diff-tiny"):
    dm = CSVTSDataModule(str(tmp_path / "series.csv"), lookback=LB, horizon=H, features=features, target="tgt",
                         time_features=True, batch_size=16)
    torch.manual_seed(0)
    task = ForecastTask(arch=arch, data_info=dm.data_info, lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=2,
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    return task, trainer


def _calendar_15min(dates):
    d = pd.DatetimeIndex(dates)
    cols = [d.minute / 59, d.hour / 23, d.day_of_week / 6, (d.day - 1) / 30, (d.day_of_year - 1) / 365]
    return np.stack([np.asarray(c, dtype=np.float64) for c in cols], 1) - 0.5


@pytest.mark.parametrize("features", ["M", "MS"])
def test_export_load_forecast_round_trip(tmp_path, features):
    df = _write(tmp_path)
    task, _ = _trained(tmp_path, features)
    task.export(tmp_path / "exp")
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "model.safetensors", "ts_meta.json"]
    fc = zoo.load_pretrained(tmp_path / "exp")
    history = df.iloc[:250]  # any frame with the same columns; its last LB rows are the input
    out = fc.forecast(history)

    # Timestamps continue the input's 15-minute steps.
    expected_dates = pd.date_range(history["date"].iloc[-1], periods=H + 1, freq="15min")[1:]
    assert list(out["date"]) == list(expected_dates)
    # Values: the model's scaled output times std plus mean, with the scaler computed here.
    raw = df[["a", "b", "tgt"]].to_numpy()
    n_train = int(len(df) * 0.7)
    mean, std = raw[:n_train].mean(0), raw[:n_train].std(0)
    x = torch.tensor((raw[250 - LB : 250] - mean) / std, dtype=torch.float32)[None]
    marks = torch.tensor(_calendar_15min(history["date"].iloc[-LB:]), dtype=torch.float32)[None]
    with torch.no_grad():
        y = fc(x, marks)[0].double().numpy()
    cols = ["a", "b", "tgt"] if features == "M" else ["tgt"]
    idx = [["a", "b", "tgt"].index(c) for c in cols]
    assert list(out.columns) == ["date"] + cols
    np.testing.assert_allclose(out[cols].to_numpy(), y[:, idx] * std[idx] + mean[idx], rtol=1e-5, atol=1e-5)
    # The same from a CSV path.
    history.to_csv(tmp_path / "hist.csv", index=False)
    np.testing.assert_allclose(fc.forecast(tmp_path / "hist.csv")[cols].to_numpy(), out[cols].to_numpy(), rtol=1e-6)
    # Dates as the frame's index (read_csv(index_col="date", parse_dates=True), or an unnamed DatetimeIndex) were
    # refused as a missing date column; the forecast keeps the input's layout: its dates in the index.
    for indexed in (history.set_index("date"), history.set_index("date").rename_axis(None)):
        got = fc.forecast(indexed)
        assert list(got.index) == list(expected_dates) and list(got.columns) == cols
        np.testing.assert_allclose(got[cols].to_numpy(), out[cols].to_numpy(), rtol=1e-6)


def test_forecast_bad_input(tmp_path):
    df = _write(tmp_path)
    task, _ = _trained(tmp_path)
    fc = task.model.eval()
    with pytest.raises(ValueError, match=r"column\(s\) \['b'\] not found"):
        fc.forecast(df.drop(columns=["b"]))
    with pytest.raises(ValueError, match="too few rows to forecast.*lookback is 24"):
        fc.forecast(df.iloc[:10])
    # the Python API names the column the model was trained with (data.date_col is the CLI's setting)
    with pytest.raises(ValueError, match=r"no date column 'date' in the input .*'time'.*trained with its timestamps in 'date'") as err:
        fc.forecast(df.rename(columns={"date": "time"}))
    assert "data.date_col" not in str(err.value)
    gappy = df.copy()
    gappy.loc[290, "a"] = np.nan
    with pytest.raises(ValueError, match="missing.*pass interpolate=True") as err:  # its argument, not data.*
        fc.forecast(gappy)
    assert "data." not in str(err.value)
    with pytest.raises(ValueError, match="column 'b' of the input is not numeric.*convert it to numbers") as err:
        fc.forecast(df.assign(b="x"))
    assert "data." not in str(err.value)
    with pytest.raises(ValueError, match="unparsable.*pass date_format") as err:
        fc.forecast(df.assign(date=["2020-01-01"] * (len(df) - 1) + ["soon"]))
    assert "data." not in str(err.value)
    with pytest.raises(FileNotFoundError, match="pass a CSV file") as err:
        fc.forecast(tmp_path / "nothing.csv")
    assert "data." not in str(err.value)
    assert len(fc.forecast(gappy, interpolate=True)) == H
    # a name written twice (the date column: an AttributeError on the frame's dtype before, naming nothing)
    for twice in ("date", "a"):
        copy = pd.concat([df, df[[twice]]], axis=1)
        with pytest.raises(ValueError, match=rf"column\(s\) \['{twice}'\] of the input appear more than once"):
            fc.forecast(copy)
    bare = zoo.create_model("ts-itransformer-diff-tiny", lookback=LB, horizon=H)
    with pytest.raises(ValueError, match="carries no data facts"):
        bare.forecast(df)


def test_forecast_takes_a_series_and_names_what_it_takes(tmp_path):
    # a univariate model's natural input is a pandas Series with dates as its index (df.set_index("date")["tgt"]);
    # it was passed to Path() and failed with "expected str, bytes or os.PathLike object, not Series"
    df = _write(tmp_path)
    task, _ = _trained(tmp_path, features="S")
    fc = task.model.eval()
    indexed = df.set_index("date")
    expected = fc.forecast(indexed[["tgt"]])  # the documented DataFrame input, dates as the index
    pd.testing.assert_frame_equal(fc.forecast(indexed["tgt"]), expected)
    # an unnamed Series is the model's one variable
    pd.testing.assert_frame_equal(fc.forecast(indexed["tgt"].rename(None)), expected)
    with pytest.raises(TypeError, match="DataFrame.*ndarray"):
        fc.forecast(df[["tgt"]].to_numpy())


def test_checkpoint_carries_scaler_assets(tmp_path):
    _write(tmp_path)
    task, trainer = _trained(tmp_path)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ForecastTask.load_from_checkpoint(tmp_path / "m.ckpt", map_location="cpu")
    assert loaded.model.meta == task.model.meta
    ckpt = torch.load(tmp_path / "m.ckpt", map_location="cpu", weights_only=False)
    assert "ts_meta.json" in ckpt["zoo_assets"]
    for k, v in task.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v)


SHIPPED = ["ts-itransformer-diff-etth1", "ts-patchtst-diff-etth1"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_by_name_offline(name):
    assert name in zoo.list_models("ts-*", pretrained=True)
    folder = PRETRAINED_DIR / name
    for f in folder.iterdir():
        assert f.stat().st_size < 2 * 1024 * 1024, f"{f} is larger than 2 MB"
    fc = zoo.load_pretrained(name)
    assert fc.meta["columns"] == ETT_COLUMNS and fc.meta["freq"] == "h"
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(120, 7)) + 10, columns=ETT_COLUMNS)
    df.insert(0, "date", pd.date_range("2018-01-01", periods=120, freq="h"))
    out = fc.forecast(df)
    assert out.shape == (96, 8)
    assert out["date"].iloc[0] == pd.Timestamp("2018-01-06 00:00")
    assert np.isfinite(out[ETT_COLUMNS].to_numpy()).all()
    # a user's own variables: the error says what to do (rename, or fine-tune), not only which columns are missing
    mine = df.set_axis(["date", "load", "temp", "a", "b", "c", "d", "e"], axis=1)
    with pytest.raises(ValueError, match=r"not found in the input; available: \['load', .*\]; the model reads the "
                                         r"variables it was trained on, \['HUFL'.*df.rename.*or fine-tune it"):
        fc.forecast(mine)
    # a gap older than the lookback: the forecast never reads it; the error says so (df.tail), and the tail forecasts
    # as the frame without the gap does. A gap inside the window: no such advice
    gappy = df.copy()
    gappy.loc[[5, 7], "OT"] = np.nan
    gappy.loc[6, "HUFL"] = np.nan
    with pytest.raises(ValueError, match=r"3 missing \(NaN\) value\(s\); the first is in column 'OT' at row 5 .*"
                                         r"interpolate=True.*reads only the last 96 rows, which have none: pass "
                                         r"data.tail\(96\)"):
        fc.forecast(gappy)
    pd.testing.assert_frame_equal(fc.forecast(gappy.tail(96)), out)
    gappy.loc[100, "OT"] = np.nan
    with pytest.raises(ValueError, match="interpolate=True") as err:
        fc.forecast(gappy)
    assert "tail" not in str(err.value)


def test_finetune_from_shipped_takes_the_new_scaler(tmp_path):
    n = 2000
    rng = np.random.default_rng(5)
    df = pd.DataFrame(rng.normal(size=(n, 7)).cumsum(0), columns=ETT_COLUMNS)
    df.insert(0, "date", pd.date_range("2019-01-01", periods=n, freq="h"))
    df.to_csv(tmp_path / "other.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "other.csv"), lookback=96, horizon=96, time_features=True)
    name = "ts-itransformer-diff-etth1"
    task = ForecastTask(arch=name, pretrained=name, data_info=dm.data_info)
    shipped = zoo.load_pretrained(name)
    for k, v in shipped.state_dict().items():
        torch.testing.assert_close(task.model.state_dict()[k], v)
    np.testing.assert_allclose(task.model.meta["mean"], df[ETT_COLUMNS].to_numpy()[: int(0.7 * n)].mean(0))
    short = CSVTSDataModule(str(tmp_path / "other.csv"), lookback=96, horizon=48, time_features=True)
    with pytest.raises(ValueError, match=r"does not fit the data \(horizon: checkpoint=96 data=48\)"):
        ForecastTask(arch=name, pretrained=name, data_info=short.data_info)
    # daily data makes 3 calendar tokens, never the hourly model's 4: the advice names both lists and the spacing
    # (it said "set data.time_features to match the checkpoint", which no daily file can)
    daily = df.assign(date=pd.date_range("2019-01-01", periods=n, freq="D"))
    daily.to_csv(tmp_path / "daily.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "daily.csv"), lookback=96, horizon=96, time_features=True)
    assert dm.data_info["n_time_features"] == 3
    with pytest.raises(ValueError, match=r"n_time_features: checkpoint=4 data=3\); the checkpoint's calendar tokens "
                                         r"\(hour_of_day, day_of_week, day_of_month, day_of_year\) came from h-spaced "
                                         r"data, the data's \(day_of_week, day_of_month, day_of_year\) from its D"):
        ForecastTask(arch=name, pretrained=name, data_info=dm.data_info)
    # hourly data without calendar tokens (data.time_features false): the switch is the fix, not a resampling (it said
    # "came from h-spaced data, the data's (none) from its h spacing ...: resample the data to the checkpoint's spacing")
    off = CSVTSDataModule(str(tmp_path / "other.csv"), lookback=96, horizon=96, time_features=False)
    with pytest.raises(ValueError, match=r"n_time_features: checkpoint=4 data=0\); set data.time_features=true") as err:
        ForecastTask(arch=name, pretrained=name, data_info=off.data_info)
    assert "resample" not in str(err.value)
    # and the other way: PatchTST reads none; an iTransformer export without calendar tokens given data with them
    base = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=off.data_info).export(tmp_path / "no_tf")
    on = CSVTSDataModule(str(tmp_path / "other.csv"), lookback=96, horizon=96, time_features=True)
    with pytest.raises(ValueError, match=r"n_time_features: checkpoint=0 data=4\); set data.time_features=false") as err:
        ForecastTask(arch="ts-itransformer-diff-tiny", pretrained=str(base), data_info=on.data_info)
    assert "resample" not in str(err.value)


def test_finetuned_checkpoint_loads_without_the_export_it_started_from(tmp_path):
    import shutil

    _write(tmp_path)
    task, _ = _trained(tmp_path)
    base = task.export(tmp_path / "base")
    dm = CSVTSDataModule(str(tmp_path / "series.csv"), lookback=LB, horizon=H, time_features=True, batch_size=16)
    ft = ForecastTask(arch="ts-itransformer-diff-small", pretrained=str(base), data_info=dm.data_info,
                      model_args={"dropout": 0.2})
    # the run summary names where the weights came from, under the export's own name (the config's arch name only
    # registers), next to the export's sizes
    line = ft.summary_lines()[0]
    assert line.startswith(f"model: {task.arch}, weights from {base} ("), line
    assert task.arch == "ts-itransformer-diff-tiny"
    assert f"layers x {task.model.config.dim}," in line
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1,
                        default_root_dir=tmp_path)
    trainer.fit(ft, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    shutil.rmtree(base)
    back = ForecastTask.load_from_checkpoint(tmp_path / "ft.ckpt", map_location="cpu")
    # the export's architecture (tiny, not the small the arch name registers), the run's dropout
    assert back.model.config.dim == task.model.config.dim != zoo.create_model("ts-itransformer-diff-small").config.dim
    assert back.model.config.dropout == 0.2 and back.model.meta == ft.model.meta
    for k, v in ft.model.state_dict().items():
        torch.testing.assert_close(back.model.state_dict()[k], v)


def test_validate_then_fit(tmp_path):
    """trainer.validate (inference mode) resets the metric states; a fit on the same task still runs."""
    from zoo.data.ts import SyntheticTSDataModule

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=LB, horizon=H, batch_size=8)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=2, default_root_dir=tmp_path)
    L.Trainer(**kw).validate(task, datamodule=dm, verbose=False)
    L.Trainer(max_epochs=1, limit_train_batches=2, **kw).fit(task, datamodule=dm)  # validates after its epoch
    assert task.best_val is not None and np.isfinite(task.best_val[0])


def test_restore_best_names_the_step_of_an_epoch_that_validates_several_times(tmp_path, capsys):
    """With val_check_interval an epoch validates more than once; "restored the weights of epoch 0" did not say which
    validation's. Reference: the val/loss each validation logged, recorded by a callback, and its step."""
    from zoo.data.ts import SyntheticTSDataModule

    seen = []

    class Record(L.Callback):
        def on_validation_end(self, trainer, module):
            if not trainer.sanity_checking:
                seen.append((float(trainer.callback_metrics["val/loss"]), trainer.global_step))

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=LB, horizon=H, batch_size=8)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, lr=3e-2, scheduler="constant")
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=2, max_epochs=1, limit_train_batches=6,
              val_check_interval=2, callbacks=[Record()], default_root_dir=tmp_path).fit(task, datamodule=dm)
    assert len(seen) == 3
    loss, step = min(seen)
    assert f"restored the weights of epoch 0, step {step} (val/loss {loss:.4f})" in capsys.readouterr().out


def test_restore_best_covers_a_resumed_fit(tmp_path):
    """The best validation epoch before a resume is still the one restore_best puts back after it."""
    from zoo.data.ts import SyntheticTSDataModule

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=LB, horizon=H, batch_size=8)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_train_batches=2, limit_val_batches=2, default_root_dir=tmp_path)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, lr=1e-3, scheduler="constant")
    trainer = L.Trainer(max_epochs=2, **kw)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    before = task.best_val
    # pretend the first part had an unbeatable epoch: its weights must come back after the resumed part
    ckpt = torch.load(tmp_path / "mid.ckpt", weights_only=False)
    marker = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in ckpt["zoo_best_val"]["state"].items()}
    ckpt["zoo_best_val"] = {"val": (-1.0, 0), "state": marker}
    torch.save(ckpt, tmp_path / "mid.ckpt")
    resumed = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, lr=1e-3, scheduler="constant")
    L.Trainer(max_epochs=4, **kw).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "mid.ckpt")
    assert before is not None and resumed.best_val == (-1.0, 0)
    for k, v in resumed.model.state_dict().items():
        if v.is_floating_point():
            assert torch.all(v == 0.5), k
    # the best state read from a checkpoint is the task's own copy: loaded memory-mapped (python -m zoo export,
    # zoo.load_pretrained(ckpt)), it kept the file mapped for the task's life (SIGBUS once the file is rewritten)
    from zoo.hub import load_checkpoint_task, read_checkpoint

    mapped = read_checkpoint(tmp_path / "mid.ckpt")
    loaded = load_checkpoint_task(tmp_path / "mid.ckpt", checkpoint=mapped)
    saved = mapped["zoo_best_val"]["state"]
    assert loaded._best_state.keys() == saved.keys()
    for k, v in loaded._best_state.items():
        assert torch.equal(v, saved[k]) and v.untyped_storage().data_ptr() != saved[k].untyped_storage().data_ptr(), k


def test_a_checkpoint_of_a_fit_without_restore_best_loads(tmp_path):
    """restore_best=False keeps the best epoch's loss but no weights: the checkpoint holds zoo_best_val with state
    None, and loading it (test / predict / export / resume) failed on None.items() once the state was copied.
    Reference: the val/loss the fit logged."""
    from zoo.data.ts import SyntheticTSDataModule
    from zoo.hub import load_checkpoint_task, read_checkpoint

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=LB, horizon=H, batch_size=8)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, restore_best=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=2, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    assert torch.load(tmp_path / "plain.ckpt", weights_only=False)["zoo_best_val"]["state"] is None
    logged = float(trainer.callback_metrics["val/loss"])
    for back in (ForecastTask.load_from_checkpoint(tmp_path / "plain.ckpt"),
                 load_checkpoint_task(tmp_path / "plain.ckpt", checkpoint=read_checkpoint(tmp_path / "plain.ckpt"))):
        assert back.best_val[0] == pytest.approx(logged) and back._best_state is None


def test_forecast_restores_the_train_mode_when_the_forward_fails(monkeypatch):
    """forecast switches to eval mode for the forward; an error there (or an interrupt) gives the mode back."""
    fc = zoo.load_pretrained("ts-patchtst-diff-etth1").train()
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(96, 7)) + 10, columns=ETT_COLUMNS)
    df.insert(0, "date", pd.date_range("2018-01-01", periods=96, freq="h"))  # exactly lookback rows

    def boom(*args, **kwargs):
        assert not fc.training  # the forward itself runs in eval mode
        raise RuntimeError("interrupted")

    monkeypatch.setattr(fc, "_forward", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        fc.forecast(df)
    assert fc.training


def test_restore_best_when_the_resumed_fit_has_nothing_left_to_train(tmp_path):
    """Resuming a checkpoint already at its epoch limit skips Lightning's training loop and on_train_end:
    the export and the task must still hold the best epoch's weights, not the checkpoint's last ones."""
    from zoo.data.ts import SyntheticTSDataModule
    from zoo.tasks.callbacks import ExportOnFitEnd

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=LB, horizon=H, batch_size=8)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_train_batches=2, limit_val_batches=2, default_root_dir=tmp_path)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, scheduler="constant")
    trainer = L.Trainer(max_epochs=2, **kw)
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    ckpt = torch.load(tmp_path / "end.ckpt", weights_only=False)
    marker = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in ckpt["zoo_best_val"]["state"].items()}
    ckpt["zoo_best_val"] = {"val": (-1.0, 0), "state": marker}
    torch.save(ckpt, tmp_path / "end.ckpt")

    resumed = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, scheduler="constant")
    export = ExportOnFitEnd(folder=str(tmp_path / "exp"))
    L.Trainer(max_epochs=2, callbacks=[export], **kw).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "end.ckpt")
    exported = zoo.load_pretrained(tmp_path / "exp")
    for k, v in exported.state_dict().items():
        if v.is_floating_point():
            assert torch.all(v == 0.5), k
            assert torch.all(resumed.model.state_dict()[k] == 0.5), k


def test_a_second_fit_restores_its_own_best_epoch(tmp_path):
    """restore_best after a second trainer.fit on the same task (no ckpt_path) puts back that fit's best epoch, not
    an earlier fit's (here an unbeatable marker left from the first)."""
    from zoo.data.ts import SyntheticTSDataModule

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=LB, horizon=H, batch_size=8)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_train_batches=2, limit_val_batches=2, default_root_dir=tmp_path)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, scheduler="constant")
    L.Trainer(max_epochs=1, **kw).fit(task, datamodule=dm)
    task.best_val = (-1.0, 0)
    task._best_state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in task.model.state_dict().items()}
    L.Trainer(max_epochs=2, **kw).fit(task, datamodule=dm)
    assert task.best_val[0] > 0
    assert not all(torch.all(v == 0.5) for v in task.model.state_dict().values() if v.is_floating_point())


def test_finetuning_on_other_variables_says_so(tmp_path):
    df = _write(tmp_path)
    task, _ = _trained(tmp_path)
    base = task.export(tmp_path / "base")
    other = df.rename(columns={"a": "load", "b": "temp", "tgt": "price"})
    other.to_csv(tmp_path / "other.csv", index=False)
    kw = dict(lookback=LB, horizon=H, time_features=True, batch_size=16)
    with pytest.warns(UserWarning, match=r"trained on the variables \['a', 'b', 'tgt'\].*"
                                         r"with the variables \['load', 'temp', 'price'\]"):
        ForecastTask(arch="ts-itransformer-diff-tiny", pretrained=str(base),
                     data_info=CSVTSDataModule(str(tmp_path / "other.csv"), **kw).data_info)
    # the same variables: nothing to say
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ForecastTask(arch="ts-itransformer-diff-tiny", pretrained=str(base),
                     data_info=CSVTSDataModule(str(tmp_path / "series.csv"), **kw).data_info)


def test_patchtst_refuses_calendar_features(tmp_path):
    _write(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "series.csv"), lookback=LB, horizon=H, time_features=True)
    with pytest.raises(ValueError, match="takes no calendar features.*time_features=false"):
        ForecastTask(arch="ts-patchtst-diff-tiny", data_info=dm.data_info)
    plain = CSVTSDataModule(str(tmp_path / "series.csv"), lookback=LB, horizon=H, time_features=False)
    ForecastTask(arch="ts-patchtst-diff-tiny", data_info=plain.data_info)


def test_validate_outside_a_fit_leaves_the_best_epoch_alone(tmp_path):
    """Only a fit's epochs compete for restore_best: trainer.validate on a task that never fitted remembered its
    loss and weights as the best epoch, and a checkpoint saved afterwards carried them into a resumed fit."""
    from zoo.data.ts import SyntheticTSDataModule

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=LB, horizon=H, batch_size=8)
    kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=2, default_root_dir=tmp_path)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    trainer = L.Trainer(**kw)
    trainer.validate(task, datamodule=dm, verbose=False)
    assert np.isfinite(task.results["val"]["mse"])  # it did validate
    assert task.best_val is None and task._best_state is None
    trainer.save_checkpoint(tmp_path / "v.ckpt")
    assert "zoo_best_val" not in torch.load(tmp_path / "v.ckpt", weights_only=False)


def _fit_checkpoint(tmp_path, arch="ts-itransformer-diff-tiny", **data_kw):
    dm = CSVTSDataModule(str(tmp_path / "series.csv"), lookback=LB, horizon=H, batch_size=16, **data_kw)
    torch.manual_seed(0)
    task = ForecastTask(arch=arch, data_info=dm.data_info, lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1,
                        default_root_dir=tmp_path / "fit")
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    return tmp_path / "run.ckpt"


@pytest.mark.parametrize("stage", ["test", "predict"])
@pytest.mark.parametrize("trained,now,named", [
    (dict(features="MS", target="tgt"), dict(lookback=2 * LB, features="MS", target="tgt"),
     rf"lookback {LB} \(the data's {2 * LB}\)"),
    (dict(features="MS", target="tgt"), dict(horizon=H + 4, features="MS", target="tgt"),
     rf"horizon {H} \(the data's {H + 4}\)"),
    (dict(features="MS", target="tgt"), dict(features="MS", target="a"), r"\['tgt'\].*target 'tgt'.*target 'a'"),
    (dict(features="MS", target="tgt"), dict(features="M"), r"\['tgt'\].*features M"),
])
def test_a_checkpoint_restored_with_ckpt_path_refuses_data_it_does_not_fit(tmp_path, stage, trained, now, named):
    """``zoo test / predict --ckpt_path``: the task is built for the datamodule, then the checkpoint (another
    lookback / horizon, another MS target) is loaded into it. Another lookback / horizon failed as a state-dict size
    mismatch; another target was scored (or forecast) silently on the model's untrained output for it."""
    _write(tmp_path)
    ckpt = _fit_checkpoint(tmp_path, **trained)
    kw = {"lookback": LB, "horizon": H, **now}
    dm = CSVTSDataModule(str(tmp_path / "series.csv"), **kw)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=named):
        getattr(trainer, stage)(task, datamodule=dm, ckpt_path=ckpt)


def test_a_patchtst_checkpoint_refuses_calendar_features_instead_of_ignoring_them(tmp_path):
    """PatchTST reads no calendar features; restored and tested on a datamodule that makes them, it dropped them
    unread (the README: refused with a message rather than ignored)."""
    _write(tmp_path)
    ckpt = _fit_checkpoint(tmp_path, arch="ts-patchtst-diff-tiny")
    loaded = ForecastTask.load_from_checkpoint(ckpt, map_location="cpu")
    dm = CSVTSDataModule(str(tmp_path / "series.csv"), lookback=LB, horizon=H, time_features=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"n_time_features 0 \(the data's 5\).*data.time_features"):
        trainer.test(loaded, datamodule=dm, verbose=False)
