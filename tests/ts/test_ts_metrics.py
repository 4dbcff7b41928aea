"""Forecast metrics against numpy; inverse scaling against the raw data; task-level test metrics."""

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from zoo.data.ts import CSVTSDataModule
from zoo.tasks.ts import ForecastMetrics, ForecastTask


def test_metrics_match_numpy_per_step_and_original_scale():
    rng = np.random.default_rng(0)
    H, C = 5, 3
    mean, std = rng.normal(size=C) * 10, rng.uniform(0.5, 4, size=C)
    preds = [rng.normal(size=(4, H, C)), rng.normal(size=(7, H, C))]
    trues = [rng.normal(size=(4, H, C)), rng.normal(size=(7, H, C))]
    metric = ForecastMetrics(H)
    for p, t in zip(preds, trues):
        metric.update(torch.tensor(p, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), torch.tensor(std))
    got = metric.compute()
    P, T = np.concatenate(preds), np.concatenate(trues)
    P, T = P.astype(np.float32).astype(np.float64), T.astype(np.float32).astype(np.float64)
    P_orig, T_orig = P * std + mean, T * std + mean  # inverse transform of both, as a user would
    np.testing.assert_allclose(float(got["mse"]), np.mean((P - T) ** 2), rtol=1e-9)
    np.testing.assert_allclose(float(got["mae"]), np.mean(np.abs(P - T)), rtol=1e-9)
    np.testing.assert_allclose(float(got["mse_orig"]), np.mean((P_orig - T_orig) ** 2), rtol=1e-9)
    np.testing.assert_allclose(float(got["mae_orig"]), np.mean(np.abs(P_orig - T_orig)), rtol=1e-9)
    np.testing.assert_allclose(got["mse_per_step"], ((P - T) ** 2).mean(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(got["mae_orig_per_step"], np.abs(P_orig - T_orig).mean(axis=(0, 2)), rtol=1e-9)


def _csv(tmp_path, n=400):
    rng = np.random.default_rng(1)
    values = np.stack([np.sin(np.arange(n) / 5) * 10 + 50, rng.normal(size=n).cumsum() * 3 - 20], 1)
    df = pd.DataFrame(values, columns=["load", "OT"])
    df.insert(0, "date", pd.date_range("2021-03-01", periods=n, freq="30min"))
    df.to_csv(tmp_path / "d.csv", index=False)
    return values


def test_inverse_scaling_recovers_the_raw_data(tmp_path):
    values = _csv(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=24, horizon=12, features="MS", target="OT")
    info = dm.data_info
    item = dm.dataset("test")[10]
    b1 = info["borders"]["test"][0]
    x_orig = item["x"].double().numpy() * np.array(info["std"]) + np.array(info["mean"])
    y_orig = item["y"][:, 0].double().numpy() * info["std"][1] + info["mean"][1]
    np.testing.assert_allclose(x_orig, values[b1 + 10 : b1 + 34], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(y_orig, values[b1 + 34 : b1 + 46, 1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("features", ["M", "MS"])
def test_task_test_metrics_cover_every_window(tmp_path, features):
    values = _csv(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=24, horizon=12, features=features, target="OT",
                         eval_batch_size=7)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    # the scaler std of the errors and the forecast columns' index are put on the device once, not made on the host
    # and copied every step (a blocking host-to-device copy waits for the device: a GPU sync per evaluation step)
    made, real_tensor, real_getitem, real_step = [], torch.tensor, torch.Tensor.__getitem__, task.test_step

    def tensor(*args, **kwargs):
        made.append("tensor")
        return real_tensor(*args, **kwargs)

    def getitem(self, idx):
        if any(isinstance(i, list) for i in (idx if isinstance(idx, tuple) else (idx,))):
            made.append("list index")  # indexing by a list makes an index tensor on the host
        return real_getitem(self, idx)

    def counted(*args, **kwargs):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(torch, "tensor", tensor)
            m.setattr(torch.Tensor, "__getitem__", getitem)
            return real_step(*args, **kwargs)

    task.test_step = counted
    trainer.test(task, datamodule=dm, verbose=False)
    steps = -(-len(dm.dataset("test")) // 7)
    assert steps > 3 and len(made) <= 2, made
    # what the test made under inference mode serves a training step's backward too (a fit validates first)
    dm.setup("fit")
    task.trainer = None  # the step on its own (no loop to log into)
    task.training_step(next(iter(dm.train_dataloader())), 0).backward()
    res = task.results["test"]
    # Reference: every test window through the model by hand, errors in numpy on the original scale.
    info = dm.data_info
    b1, b2 = info["borders"]["test"]
    mean, std = np.array(info["mean"]), np.array(info["std"])
    out = [0, 1] if features == "M" else [1]
    starts = np.arange(b1, b2 - 36 + 1)
    assert len(starts) == len(dm.dataset("test"))
    x = np.stack([(values[s : s + 24] - mean) / std for s in starts])
    true = np.stack([values[s + 24 : s + 36][:, out] for s in starts])
    task.model.eval()
    with torch.no_grad():
        pred = task.model(torch.tensor(x, dtype=torch.float32)).double().numpy()[..., out] * std[out] + mean[out]
    se, ae, se_o = ((pred - true) / std[out]) ** 2, np.abs(pred - true) / std[out], (pred - true) ** 2
    np.testing.assert_allclose(res["mse"], np.mean(se), rtol=1e-4)
    np.testing.assert_allclose(res["mae"], np.mean(ae), rtol=1e-4)
    np.testing.assert_allclose(res["mse_orig"], np.mean(se_o), rtol=1e-4)
    assert (tmp_path / "test_metrics.json").is_file()


def test_a_second_test_run_into_the_same_folder_keeps_the_first_ones_metrics(tmp_path, capsys):
    """Two `test` runs into one folder (no logger, as here, or a fixed logger version): the second wrote its
    test_metrics.json over the first one's. It goes to test_metrics_1.json and says so; the first file stays."""
    import json

    _csv(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=24, horizon=12)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)

    def test_once() -> dict:
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path / "run")
        trainer.test(task, datamodule=dm, verbose=False)
        return dict(task.results["test"])

    first = test_once()
    with torch.no_grad():  # other weights: other errors
        for p in task.model.parameters():
            p.mul_(0.5)
    second = test_once()
    assert first["mse"] != pytest.approx(second["mse"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["test_metrics.json", "test_metrics_1.json"]
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["mse"] == pytest.approx(first["mse"])
    assert json.loads((tmp_path / "run" / "test_metrics_1.json").read_text())["mse"] == pytest.approx(second["mse"])
    assert f"this run's are in {tmp_path / 'run' / 'test_metrics_1.json'}" in capsys.readouterr().out
    # a fast_dev_run logs nothing, so writes no metrics file (it wrote one into the working directory)
    L.Trainer(accelerator="cpu", fast_dev_run=1, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path / "smoke").test(task, datamodule=dm, verbose=False)
    assert not (tmp_path / "smoke").exists() or not list((tmp_path / "smoke").rglob("test_metrics*.json"))


def _strict_json(text: str):
    """json.loads that refuses the NaN / Infinity constants (as JSON.parse, jq and strict parsers do)."""
    import json

    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _diverged(tmp_path):
    """A CSV datamodule and a tiny forecaster whose weights are all NaN (a diverged model)."""
    _csv(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=24, horizon=12)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    with torch.no_grad():
        for p in task.model.parameters():
            p.fill_(float("nan"))
    return dm, task


def test_non_finite_test_metrics_are_written_as_null_and_named(tmp_path):
    """A diverged model (NaN weights) tests to NaN errors: test_metrics.json held the bare token NaN, which is not JSON
    (JSON.parse, jq and strict parsers reject it). Non-finite values are written as null and a warning names them.
    Reference: a strict json.loads (any NaN / Infinity constant raises) against the task's in-memory results."""
    import math

    from zoo.tasks.callbacks import write_json_new

    strict = _strict_json

    def as_json(v):  # the in-memory results with every non-finite float as None
        if isinstance(v, dict):
            return {k: as_json(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [as_json(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    dm, task = _diverged(tmp_path)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match=r"non-finite.*\bmse\b.*mae_orig_per_step") as caught:
        trainer.test(task, datamodule=dm, verbose=False)
    res = task.results["test"]
    assert math.isnan(res["mse"])  # the case: NaN errors in memory
    got = strict((tmp_path / "run" / "test_metrics.json").read_text())
    assert got == as_json(res) and got["mse"] is None and got["mse_per_step"] == [None] * 12
    assert any("test_metrics.json" in str(w.message) for w in caught)
    # infinities, nested, next to finite values that stay as they are; a finite result warns nothing
    data = {"a": float("inf"), "b": {"c": [1.5, float("-inf")], "d": 2}, "e": "text"}
    with pytest.warns(UserWarning, match=r"a, b/c") as caught:
        path = write_json_new(tmp_path / "w", "m.json", data)
    assert strict(path.read_text()) == {"a": None, "b": {"c": [1.5, None], "d": 2}, "e": "text"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_json_new(tmp_path / "w", "ok.json", {"x": 0.25, "y": [1.0, 2]})
    assert strict(path.read_text()) == {"x": 0.25, "y": [1.0, 2]}


def test_non_finite_predictions_are_written_as_null_and_named(tmp_path):
    """The same diverged model predicts NaN forecasts: predictions.jsonl held bare NaN tokens (not JSON). They are
    written as null, a warning names the columns once, the dates stay. Reference: a strict json.loads."""
    from zoo.tasks.callbacks import PredictionWriter

    dm, task = _diverged(tmp_path)
    out = tmp_path / "pred.jsonl"
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path / "run", callbacks=[PredictionWriter(str(out), echo=False)])
    with pytest.warns(UserWarning, match="non-finite.*predictions written as null") as caught:
        trainer.predict(task, datamodule=dm)
    named = [str(w.message) for w in caught if "predictions written as null" in str(w.message)]
    assert len(named) == 1, named
    rows = [_strict_json(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        values = {k: v for k, v in row.items() if k != "date"}
        assert values and all(v is None for v in values.values()), row
        assert isinstance(row["date"], str)


def test_halving_schedule_follows_the_reference_type1_loop():
    """lradj=type1 as the iTransformer loop applies it: after epoch e (0-based) it sets
    lr * 0.5 ** ((e + 1) - 1), so the first two epochs share the full rate."""
    import lightning as L

    from zoo.data.ts import SyntheticTSDataModule

    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=24, horizon=12, batch_size=8)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, lr=1e-3, scheduler="halving",
                        model_args={"lookback": 24, "horizon": 12}, warmup_steps=0)
    seen: list[float] = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(accelerator="cpu", max_epochs=5, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[Record()])
    trainer.fit(task, datamodule=dm)
    expected, lr = [], 1e-3
    for epoch in range(5):  # the reference loop, written out
        expected.append(lr)
        lr = 1e-3 * 0.5 ** ((epoch + 1 - 1) // 1)
    assert seen == pytest.approx(expected)


def test_metric_sums_stay_float64_under_a_module_cast():
    metric = ForecastMetrics(3).to(torch.bfloat16)
    assert all(v.dtype == torch.float64 for v in metric.metric_state.values())
    metric.reset()
    assert all(v.dtype == torch.float64 for v in metric.metric_state.values())


def test_bf16_true_test_metrics_match_numpy(tmp_path):
    from zoo.data.ts import SyntheticTSDataModule

    """precision "bf16-true" casts the whole LightningModule: the error sums, the window count and the scaler
    std used for the original-scale errors must not become bf16 (the MSE came out 1.25 for 1.217)."""
    L.seed_everything(0, verbose=False)
    dm = SyntheticTSDataModule(n_rows=1500, n_vars=3, lookback=24, horizon=6, features="M", eval_batch_size=64)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        precision="bf16-true", default_root_dir=tmp_path)
    trainer.test(task, datamodule=dm, verbose=False)
    res = task.results["test"]
    ds = dm.dataset("test")
    x = torch.stack([ds[i]["x"] for i in range(len(ds))])
    y = torch.stack([ds[i]["y"] for i in range(len(ds))]).bfloat16().double().numpy()
    task.model.eval()
    with torch.no_grad():  # in the test loader's batches: bf16 matmuls may round differently in other shapes
        pred = torch.cat([task.model(x[i : i + 64].bfloat16()) for i in range(0, len(x), 64)]).double().numpy()
    std = np.array(dm.data_info["std"])
    np.testing.assert_allclose(res["mse"], np.mean((pred - y) ** 2), rtol=1e-6)
    np.testing.assert_allclose(res["mae"], np.mean(np.abs(pred - y)), rtol=1e-6)
    np.testing.assert_allclose(res["mse_orig"], np.mean(((pred - y) * std) ** 2), rtol=1e-6)
    np.testing.assert_allclose(res["mae_orig_per_step"], np.abs((pred - y) * std).mean(axis=(0, 2)), rtol=1e-6)


def test_a_nan_validation_epoch_is_never_the_best():
    # a diverged epoch (NaN loss) used to be kept as the best when it came first: no later loss is < nan,
    # so restore_best put back the diverged weights
    from zoo.data.ts import SyntheticTSDataModule

    dm = SyntheticTSDataModule(n_rows=400, n_vars=2, lookback=16, horizon=4)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    task._consider_best(float("nan"), 0)
    assert task.best_val is None
    with torch.no_grad():
        task.model.head.bias.fill_(1.0)
    task._consider_best(0.5, 1)
    assert task.best_val == (0.5, 1) and torch.all(task._best_state["head.bias"] == 1.0)
    task._consider_best(float("nan"), 2)
    task._consider_best(0.7, 3)
    assert task.best_val == (0.5, 1)
    task._consider_best(0.4, 4)
    assert task.best_val == (0.4, 4)


@pytest.mark.parametrize("features", ["M", "MS"])
def test_a_loaded_checkpoint_tested_on_another_file_reports_that_files_units(tmp_path, features):
    """ForecastTask.load_from_checkpoint keeps the training file's data facts; tested on another file (other units,
    columns in another order) the original-scale errors were computed with the training file's std (and the
    batches taken as scaled by its scaler). Reference: the model on the raw windows scaled by its own scaler."""
    rng = np.random.default_rng(3)
    n, cols = 400, ["load", "OT", "z"]

    def write(name, scale, order):
        t = np.arange(n)
        v = np.stack([np.sin(t / 5) * 10 * scale + 50, rng.normal(size=n).cumsum() * 3 * scale - 20,
                      rng.normal(size=n) * 5 * scale + 3], 1)
        df = pd.DataFrame(v, columns=cols)
        df.insert(0, "date", pd.date_range("2021-03-01", periods=n, freq="30min"))
        df[["date"] + order].to_csv(tmp_path / name, index=False)
        return v

    write("a.csv", 1.0, cols)
    raw_b = write("b.csv", 4.0, ["z", "OT", "load"])  # raw_b in the training file's column order
    kw = dict(lookback=24, horizon=12, features=features, target="OT")
    dm_a = CSVTSDataModule(str(tmp_path / "a.csv"), batch_size=16, **kw)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm_a.data_info, lr=3e-3)
    trainer_kw = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, default_root_dir=tmp_path / "fit", **trainer_kw)
    trainer.fit(task, datamodule=dm_a)
    trainer.save_checkpoint(tmp_path / "a.ckpt")

    loaded = ForecastTask.load_from_checkpoint(tmp_path / "a.ckpt", map_location="cpu")
    dm_b = CSVTSDataModule(str(tmp_path / "b.csv"), eval_batch_size=7, **kw)
    # the conversion between the two scalers (and column orders) is put on the device once, not made on the host and
    # copied every step (a blocking host-to-device copy: a GPU sync per step)
    made, real_tensor, real_getitem, real_step = [], torch.tensor, torch.Tensor.__getitem__, loaded.test_step

    def tensor(*args, **kwargs):
        made[-1].append("tensor")
        return real_tensor(*args, **kwargs)

    def getitem(self, idx):
        if any(isinstance(i, list) for i in (idx if isinstance(idx, tuple) else (idx,))):
            made[-1].append("list index")  # indexing by a list makes an index tensor on the host
        return real_getitem(self, idx)

    def counted(*args, **kwargs):
        made.append([])
        with pytest.MonkeyPatch.context() as m:
            m.setattr(torch, "tensor", tensor)
            m.setattr(torch.Tensor, "__getitem__", getitem)
            return real_step(*args, **kwargs)

    loaded.test_step = counted
    L.Trainer(default_root_dir=tmp_path / "test", **trainer_kw).test(loaded, datamodule=dm_b, verbose=False)
    assert len(made) > 3 and made[1:] == [[]] * (len(made) - 1), made
    res = loaded.results["test"]

    info_a, info_b = dm_a.data_info, dm_b.data_info
    mean, std = np.array(info_a["mean"]), np.array(info_a["std"])  # the model's own scaler
    out = [1] if features == "MS" else [0, 1, 2]
    b1, b2 = info_b["borders"]["test"]
    starts = np.arange(b1, b2 - 36 + 1)
    x = np.stack([(raw_b[s : s + 24] - mean) / std for s in starts])
    true = np.stack([raw_b[s + 24 : s + 36][:, out] for s in starts])
    task.model.eval()
    with torch.no_grad():
        pred = task.model(torch.tensor(x, dtype=torch.float32)).double().numpy()[..., out] * std[out] + mean[out]
    std_b = np.array([info_b["std"][info_b["columns"].index(cols[i])] for i in out])  # file b's scaler
    np.testing.assert_allclose(res["mse_orig"], np.mean((pred - true) ** 2), rtol=1e-4)
    np.testing.assert_allclose(res["mae_orig"], np.mean(np.abs(pred - true)), rtol=1e-4)
    np.testing.assert_allclose(res["mse"], np.mean(((pred - true) / std_b) ** 2), rtol=1e-4)


def _fit_and_reload(tmp_path, **data_kw):
    """Three steps on ``d.csv`` saved to ``a.ckpt``; the task back from ForecastTask.load_from_checkpoint."""
    _csv(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), batch_size=16, **data_kw)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info, lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path / "fit")
    trainer.fit(task, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    return ForecastTask.load_from_checkpoint(tmp_path / "a.ckpt", map_location="cpu")


def _run_never_steps(task, stage, dm, tmp_path):
    """Run ``stage`` and fail the test if a batch reaches the model (the refusal must come at setup)."""
    def forward(*args, **kwargs):
        raise AssertionError("a step ran")

    task.model.forward = forward
    trainer = L.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path / stage)
    getattr(trainer, stage)(task, datamodule=dm)


@pytest.mark.parametrize("stage", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize("lookback,horizon,named", [(48, 12, r"lookback 24 \(the data's 48\)"),
                                                    (24, 8, r"horizon 12 \(the data's 8\)"),
                                                    (24, 1, r"horizon 12 \(the data's 1\)")])
def test_data_of_another_lookback_or_horizon_is_refused_by_name_at_setup(tmp_path, stage, lookback, horizon, named):
    # it failed inside a step as "prediction (32, 12, 3) and target (32, 8, 3) differ in shape" (or the model's
    # input check), and predict wrote a forecast of the model's horizon where the data asked for another
    task = _fit_and_reload(tmp_path, lookback=24, horizon=12)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=lookback, horizon=horizon)
    with pytest.raises(ValueError, match=named):
        _run_never_steps(task, stage, dm, tmp_path)


@pytest.mark.parametrize("stage", ["test", "predict", "validate"])
@pytest.mark.parametrize("features,target,named", [("MS", "load", r"\['OT'\].*target 'OT'.*target 'load'"),
                                                   ("M", None, r"\['OT'\].*features M.*\['load'\]"),
                                                   ("S", "load", r"\['OT'\].*target 'OT'.*target 'load'")])
def test_a_features_ms_model_refuses_another_target_by_name(tmp_path, stage, features, target, named):
    # an MS model trained on OT was scored on 'load' (its never-trained output channel for that variable), or on
    # every variable under features M, without a word
    task = _fit_and_reload(tmp_path, lookback=24, horizon=12, features="MS", target="OT")
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=24, horizon=12, features=features, target=target)
    with pytest.raises(ValueError, match=named):
        _run_never_steps(task, stage, dm, tmp_path)


def test_an_m_model_scored_on_one_target_is_scored_on_its_forecast_of_that_target(tmp_path):
    """An M model forecasts every variable: tested with features MS it is scored on its own forecast of the target.
    Reference: the model's forecast of the target column on the test windows, by hand."""
    values = _csv(tmp_path)
    task = _fit_and_reload(tmp_path, lookback=24, horizon=12)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=24, horizon=12, features="MS", target="OT")
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path / "t").test(task, datamodule=dm, verbose=False)
    info = dm.data_info
    mean, std = np.array(info["mean"]), np.array(info["std"])
    b1, b2 = info["borders"]["test"]
    starts = np.arange(b1, b2 - 36 + 1)
    x = np.stack([(values[s : s + 24] - mean) / std for s in starts])
    true = np.stack([values[s + 24 : s + 36, 1] for s in starts])
    task.model.eval()
    with torch.no_grad():
        pred = task.model(torch.tensor(x, dtype=torch.float32)).double().numpy()[..., 1] * std[1] + mean[1]
    np.testing.assert_allclose(task.results["test"]["mse_orig"], np.mean((pred - true) ** 2), rtol=1e-4)


@pytest.mark.parametrize("data_kw", [dict(features="S", target="OT"), dict(features="M", columns=["OT"])])
def test_a_features_m_model_refuses_fewer_variables_by_name_at_setup(tmp_path, data_kw):
    # an M model reads every variable: under features S (the target alone) or a column subset it failed in a step
    # ("trained on the variables ...") without saying which setting chose the columns
    import re

    task = _fit_and_reload(tmp_path, lookback=24, horizon=12)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=24, horizon=12, **data_kw)
    want = f"variables ['load', 'OT'] (features M) but the data has ['OT'] (features {data_kw['features']})"
    with pytest.raises(ValueError, match=re.escape(want)):
        _run_never_steps(task, "test", dm, tmp_path)
