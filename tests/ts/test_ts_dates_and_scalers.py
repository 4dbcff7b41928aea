"""Dates users' CSVs really hold (gaps, day-first, bare midnights, UTC offsets, numbers), infinite
values, and a checkpoint restored over another file: the model keeps its own scaler."""

import re
import warnings

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

import zoo
from zoo.data.ts import CSVTSDataModule, future_dates, infer_freq, prepare_frame, same_spacing, time_features
from zoo.tasks.ts import ForecastTask

LB, H = 24, 8


def _frame(n=200, start="2021-01-01", freq="h", seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    df = pd.DataFrame({"a": np.sin(t / 5) * 4 + 10 + rng.normal(0, 0.1, n), "b": rng.normal(size=n).cumsum()})
    df.insert(0, "date", pd.date_range(start, periods=n, freq=freq))
    return df


def test_a_missing_row_keeps_the_hourly_step_and_warns():
    df = _frame(40)
    df["date"] = df["date"].astype(str)
    df = df.drop(index=[5]).reset_index(drop=True)
    dates, _ = prepare_frame(df)
    with pytest.warns(UserWarning, match="1 of 38 time steps differ from the series' step h"):
        freq = infer_freq(dates)
    assert pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) == pd.Timedelta(hours=1)


@pytest.mark.parametrize("freq", ["h", "B"])
def test_missing_rows_late_in_a_long_series_are_reported(freq):
    """Rows missing after the first 1000 (the rows the frequency is read from) are warned about too: a
    long file with a gap late in it was taken as regular in silence."""
    dates = pd.date_range("2020-01-01", periods=3000, freq=freq).delete(range(2000, 2005))
    off = pd.tseries.frequencies.to_offset(freq)
    n_odd = int(((dates[:-1] + off) != dates[1:]).sum())  # independent count: consecutive dates one step apart
    assert n_odd == 1
    with pytest.warns(UserWarning, match=f"1 of {len(dates) - 1} time steps differ from the series' step {freq}"):
        assert infer_freq(dates) == freq


def _tiny_forecaster(tmp_path, df, lookback=LB):
    """A tiny untrained iTransformer built on ``df`` (written as a CSV; the ratio split)."""
    df.to_csv(tmp_path / "s.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "s.csv"), lookback=lookback, horizon=H, split="ratio", batch_size=8)
    torch.manual_seed(0)
    return ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info).model


def test_forecast_timestamps_after_a_gap_are_hourly(tmp_path):
    df = _frame(120)
    model = _tiny_forecaster(tmp_path, df)
    gap = df.drop(index=[3]).astype({"date": str})
    with pytest.warns(UserWarning, match="differ from the series' step"):
        out = model.forecast(gap)
    want = pd.date_range(df["date"].iloc[-1] + pd.Timedelta(hours=1), periods=H, freq="h")
    assert list(pd.DatetimeIndex(out["date"])) == list(want)


@pytest.mark.parametrize("freq, drop, n_odd, last, want", [
    # month starts with one month missing: the next months are month starts, not 31-day steps
    ("MS", [30], 1, "2029-12-01", ["2030-01-01", "2030-02-01", "2030-03-01"]),
    # business days with three holidays out: a Friday is followed by a Monday, not a Saturday
    ("B", [7, 20, 33], 3, None, None),
    # quarter starts with a gap
    ("QS", [10], 1, "2049-10-01", ["2050-01-01", "2050-04-01", "2050-07-01"]),
    # twice a month (1st and 15th; 15th and month end), which pandas' infer_freq does not name: it was read as 336h,
    # its forecast on the 29th, 12th, 26th (59 of 119 steps "differ"); with and without a gap
    ("SMS", [], 0, "2024-12-15", ["2025-01-01", "2025-01-15", "2025-02-01"]),
    ("SMS", [50], 1, "2024-12-15", ["2025-01-01", "2025-01-15", "2025-02-01"]),
    ("SME", [7], 1, "2024-12-31", ["2025-01-15", "2025-01-31", "2025-02-15"]),
])
def test_calendar_steps_survive_gaps(freq, drop, n_odd, last, want):
    dates = pd.date_range("2020-01-01" if freq != "B" else "2024-01-01", periods=120, freq=freq).delete(drop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = infer_freq(dates)
    said = [str(w.message).split(" from the series' step")[0] for w in caught]
    assert said == [f"{n_odd} of {len(dates) - 1} time steps differ"][:n_odd]
    off = pd.tseries.frequencies.to_offset(got)
    assert off == pd.tseries.frequencies.to_offset(freq)
    if freq == "B":  # from the last date, a Friday (2024-06-14), business days by the calendar
        assert dates[-1].day_name() == "Friday"
        assert [d.day_name() for d in future_dates(dates[-1], 3, got)] == ["Monday", "Tuesday", "Wednesday"]
    else:
        assert str(dates[-1].date()) == last
        assert [str(d.date()) for d in future_dates(dates[-1], 3, got)] == want


@pytest.mark.parametrize("freq, last, want", [
    ("B", "2024-06-15", ["2024-06-17", "2024-06-18", "2024-06-19"]),  # a Saturday row: Monday comes next
    ("W-SUN", "2024-06-10", ["2024-06-16", "2024-06-23", "2024-06-30"]),  # a Monday: the coming Sunday
    ("MS", "2024-06-15", ["2024-07-01", "2024-08-01", "2024-09-01"]),  # mid-month: the next month start
    ("B", "2024-06-14", ["2024-06-17", "2024-06-18", "2024-06-19"]),  # on the calendar already (a Friday)
    ("h", "2024-06-14 10:30", ["2024-06-14 11:30", "2024-06-14 12:30", "2024-06-14 13:30"]),
])
def test_future_dates_start_at_the_first_step_after_the_last_date(freq, last, want):
    """The forecast's first timestamp is the first one of the frequency after the last date, also when that date is
    not on the frequency's calendar (a weekend row in business-day data, a predict file's other weekday): one
    step was skipped (pandas' date_range rolls such a start forward, and the first date was then dropped)."""
    assert list(future_dates(pd.Timestamp(last), 3, freq)) == [pd.Timestamp(d) for d in want]


@pytest.mark.parametrize("months, drop", [(1, []), (1, [40]), (3, []), (12, [])])
def test_dates_on_one_day_of_the_month_step_by_months(months, drop):
    """Monthly data dated on the 15th (no pandas alias names it) steps by calendar months: the forecast's
    dates stay on the 15th, not 31-day steps that drift (read as '744h' before)."""
    dates = pd.DatetimeIndex([pd.Timestamp(2001 + (m // 12), m % 12 + 1, 15, 6) for m in range(0, 60 * months, months)])
    dates = dates.delete(drop)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        freq = infer_freq(dates)
    assert [str(w.message)[:26] for w in caught] == ["1 of 58 time steps differ "] * len(drop)
    # the calendar: from 2005-12-15 (monthly) the next three are the 15ths of Jan, Feb, Mar 2006
    last = dates[-1]
    want = [pd.Timestamp(last.year + (last.month - 1 + months * i) // 12, (last.month - 1 + months * i) % 12 + 1, 15, 6)
            for i in (1, 2, 3)]
    assert list(future_dates(last, 3, freq)) == want
    assert same_spacing(freq, freq) and not same_spacing(freq, "MS") and not same_spacing(freq, "744h")


def test_a_model_trained_on_mid_month_data_forecasts_mid_month_dates(tmp_path):
    df = _frame(120, start="2010-01-01", freq="MS")  # 2010-01 .. 2019-12
    df["date"] = df["date"] + pd.Timedelta(days=14)
    df.to_csv(tmp_path / "m.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "m.csv"), lookback=LB, horizon=H, split="ratio", batch_size=8,
                         time_features=True)
    assert dm.data_info["time_features"] == ["month_of_year"]
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no gap or spacing warning: the series is regular
        out = zoo.load_pretrained(task.export(tmp_path / "export")).forecast(df.astype({"date": str}))
    assert [str(d.date()) for d in pd.DatetimeIndex(out["date"])][:3] == ["2020-01-15", "2020-02-15", "2020-03-15"]


def test_a_gap_in_daily_data_is_not_a_different_spacing(tmp_path):
    df = _frame(400, freq="D")
    model = _tiny_forecaster(tmp_path, df)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.forecast(df.drop(index=[350]).astype({"date": str}))
    messages = [str(w.message) for w in caught]
    assert any("differ from the series' step D" in m for m in messages), messages
    assert not any("model was trained on" in m for m in messages), messages
    assert list(pd.DatetimeIndex(out["date"])) == list(pd.date_range(df["date"].iloc[-1], periods=H + 1, freq="D")[1:])
    assert same_spacing("24h", "D") and not same_spacing("744h", "MS") and not same_spacing("D", "B")


def test_date_layouts():
    iso = _frame(30)
    want = pd.DatetimeIndex(iso["date"])
    dayfirst = iso.assign(date=iso["date"].dt.strftime("%d/%m/%Y %H:%M"))
    got, _ = prepare_frame(dayfirst, date_format="%d/%m/%Y %H:%M")
    assert list(got) == list(want)
    long = _frame(24 * 14).assign(date=lambda d: d["date"].dt.strftime("%d/%m/%Y %H:%M"))  # day 13 is no month
    with pytest.raises(ValueError, match="13/01/2021 00:00.*data.date_format"):
        prepare_frame(long)
    with pytest.raises(ValueError, match="does not match data.date_format"):
        prepare_frame(iso.assign(date=iso["date"].astype(str)), date_format="%d/%m/%Y %H:%M")
    # midnight written as a bare date among full timestamps
    bare = iso.assign(date=[str(d.date()) if d.hour == 0 else str(d) for d in iso["date"]])
    assert list(prepare_frame(bare)[0]) == list(want)
    # UTC offsets that change across daylight saving: converted to UTC, one hour apart
    local = pd.date_range("2021-03-27 22:00", periods=8, freq="h", tz="UTC").tz_convert("Europe/Berlin")
    got, _ = prepare_frame(pd.DataFrame({"date": [d.isoformat() for d in local], "a": range(8)}))
    assert list(got) == list(pd.date_range("2021-03-27 22:00", periods=8, freq="h"))
    with pytest.raises(ValueError, match="holds numbers .* not timestamps"):
        prepare_frame(pd.DataFrame({"date": 1_600_000_000 + 3600 * np.arange(5), "a": range(5)}))
    days = pd.DataFrame({"date": [20160701 + i for i in range(5)], "a": range(5)})  # read_csv makes these ints
    assert list(prepare_frame(days, date_format="%Y%m%d")[0]) == list(pd.date_range("2016-07-01", periods=5, freq="D"))


@pytest.mark.parametrize("later", ["%m/%d/%Y", "%d/%m/%Y", "%B %d, %Y"])
def test_a_column_of_mixed_layouts_is_named_with_the_conversion_that_reads_it(later):
    """ISO dates, then (from row 20, 2021-01-21) another layout: one data.date_format cannot read both, yet the
    error advised setting one. It names both values and pandas' format='mixed' conversion, which reads the column."""
    want = pd.date_range("2021-01-01", periods=40, freq="D")
    written = [d.strftime("%Y-%m-%d" if i < 20 else later) for i, d in enumerate(want)]
    df = pd.DataFrame({"date": written, "a": np.arange(40.0)})
    with pytest.raises(ValueError, match=rf"date column 'date' of the data mixes layouts: value '{re.escape(written[20])}' "
                                         r"at row 20 \(CSV line 22\) is written otherwise than '2021-01-01' at row 0.*"
                                         r"format='mixed'"):
        prepare_frame(df)
    fixed = pd.to_datetime(df["date"], format="mixed")  # the advice, followed
    if later == "%d/%m/%Y":  # read month-first, as the message says: day-first rows take their own format
        assert want[31] == pd.Timestamp("2021-02-01") and fixed[31] == pd.Timestamp("2021-01-02")
        fixed[20:] = pd.to_datetime(df["date"][20:], format=later)
    assert list(prepare_frame(df.assign(date=fixed))[0]) == list(want)


@pytest.mark.parametrize("freq", ["h", "10min"])
def test_local_times_turned_back_by_daylight_saving_are_named_as_such(freq):
    """Local wall-clock times without offsets repeat an hour when daylight saving ends (02:00 twice, hourly; 02:50 ->
    02:00 every 10 minutes): "sort the rows by date and remove duplicates" would interleave or drop that hour. The
    error names the change and the UTC offsets that read it; rows merely out of order keep the sorting advice."""
    wall = pd.date_range("2021-10-30 22:00", "2021-10-31 06:00", freq=freq, tz="Europe/Berlin").tz_localize(None)
    df = pd.DataFrame({"date": wall.strftime("%Y-%m-%d %H:%M"), "a": np.arange(len(wall), dtype=float)})
    row = int(np.flatnonzero(np.diff(wall.asi8) <= 0)[0]) + 1
    assert wall[row].strftime("%H:%M") == "02:00" and wall[row - 1] >= wall[row]
    with pytest.raises(ValueError, match=rf"at row {row} .*daylight saving.*UTC offset") as err:
        prepare_frame(df)
    assert "sort the rows" not in str(err.value)
    swapped = _frame(20).astype({"date": str})
    swapped.loc[[5, 6], "date"] = swapped.loc[[6, 5], "date"].to_numpy()
    with pytest.raises(ValueError, match="goes back in time at row 6.*sort the rows by date") as err:
        prepare_frame(swapped)
    assert "daylight" not in str(err.value)
    hourly = pd.date_range("2021-06-16 06:00", periods=12, freq="h")  # a Wednesday: an hour repeated is a duplicate
    dup = pd.DataFrame({"date": hourly.insert(6, hourly[5]).strftime("%Y-%m-%d %H:%M"), "a": np.arange(13.0)})
    with pytest.raises(ValueError, match="repeats at row 6.*sort the rows by date and remove duplicates") as err:
        prepare_frame(dup)
    assert "daylight" not in str(err.value)


def test_a_column_of_years_names_the_date_format_that_reads_it():
    """A yearly series dated by a 'year' column of ints (1990, 1991...): the error advised epoch seconds or another
    date column, though data.date_format '%Y' reads the years. It names date_format; followed, the dates are
    the years' 1 January (reference: pandas' date_range)."""
    years = pd.DataFrame({"year": 1990 + np.arange(6), "gdp": np.arange(6.0)})
    with pytest.raises(ValueError, match=r"holds numbers .*data.date_format.*'%Y' for years"):
        prepare_frame(years, date_col="year")
    got, _ = prepare_frame(years, date_col="year", date_format="%Y")
    assert list(got) == list(pd.date_range("1990-01-01", periods=6, freq="YS"))


def test_infinite_values_are_errors_or_gaps():
    df = _frame(20)
    df.loc[4, "b"] = np.inf
    with pytest.raises(ValueError, match=r"1 infinite value\(s\); the first is in column 'b' at row 4"):
        prepare_frame(df)
    _, frame = prepare_frame(df, interpolate=True)
    assert frame["b"].iloc[4] == pytest.approx((df["b"].iloc[3] + df["b"].iloc[5]) / 2)


@pytest.mark.parametrize("huge", [1e300, 1e200, 1e308])
def test_a_huge_value_is_named_not_trained_on_as_infinity(tmp_path, huge):
    """A finite but huge value (1e300: a placeholder or a typo) passed the infinite-value check; its square overflows
    float64 (np.var is inf, so the column counted as constant and was scaled by 1) and the float32 windows held
    -inf everywhere (-4.8e297 in float32): NaN losses, metrics and forecasts, with numpy's overflow warnings alone.
    It is an error naming the column, row and value, in training, predict_path and forecast(df)."""
    df = _frame(120)
    df.loc[10, "b"] = huge
    with np.errstate(over="ignore"):  # why it is refused: scaled by anything, its column leaves float32
        assert not np.isfinite(np.float32(df["b"].to_numpy() - df["b"].iloc[:84].mean())).all()
    value = re.escape(f"{huge:g}")
    df.to_csv(tmp_path / "huge.csv", index=False)
    with pytest.raises(ValueError, match=rf"column 'b' of .*huge.csv holds a value too large to scale: {value} at row "
                                         r"10 \(2021-01-01 10:00:00\).*set data.interpolate=true"):
        _ = CSVTSDataModule(str(tmp_path / "huge.csv"), lookback=LB, horizon=H, split="ratio").data_info
    clean = _frame(120)
    model = _tiny_forecaster(tmp_path, clean)
    late = clean.copy()
    late.loc[110, "a"] = huge  # in the input window: row 110 of 120
    with pytest.raises(ValueError, match=rf"column 'a' of the input holds a value too large to scale: {value} at row "
                                         r"110 .*pass interpolate=True"):
        model.forecast(late)
    late.to_csv(tmp_path / "late.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "s.csv"), lookback=LB, horizon=H, split="ratio",
                         predict_path=str(tmp_path / "late.csv"))
    with pytest.raises(ValueError, match=rf"column 'a' of .*late.csv holds a value too large to scale: {value} at row 110"):
        dm.predict_item()
    assert np.isfinite(model.forecast(clean).drop(columns="date").to_numpy()).all()


def test_interpolation_is_linear_in_time_not_in_rows():
    """Hourly rows with three missing hours (06:00-08:00 absent): a NaN at 05:00 between 04:00 and 09:00
    is filled at 1/5 of the way, as numpy's interp over the timestamps says; the edges take the nearest value."""
    dates = pd.DatetimeIndex(["2020-01-01 03:00", "2020-01-01 04:00", "2020-01-01 05:00", "2020-01-01 09:00",
                              "2020-01-01 10:00", "2020-01-01 11:00"])
    a = np.array([np.nan, 10.0, np.nan, 20.0, np.nan, 26.0])
    df = pd.DataFrame({"date": dates.strftime("%Y-%m-%d %H:%M:%S"), "a": a})
    _, frame = prepare_frame(df, interpolate=True)
    t = dates.asi8.astype(float)
    ok = ~np.isnan(a)
    np.testing.assert_allclose(frame["a"].to_numpy(), np.interp(t, t[ok], a[ok]))
    assert frame["a"].iloc[2] == pytest.approx(12.0) and list(frame.index) == list(range(6))


def _train_on_old_checkpoint(tmp_path, **data_kw):
    """Three steps on ``old.csv`` saved to ``run.ckpt``: the new file's datamodule, the task and the checkpoint."""
    kw = dict(lookback=LB, horizon=H, split="ratio", batch_size=8, **data_kw)
    dm_old, dm_new = CSVTSDataModule(str(tmp_path / "old.csv"), **kw), CSVTSDataModule(str(tmp_path / "new.csv"), **kw)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm_old.data_info, lr=3e-3)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, limit_val_batches=1, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm_old)
    ckpt = tmp_path / "run.ckpt"
    trainer.save_checkpoint(ckpt)
    return dm_new, task, ckpt


def test_a_checkpoint_restored_over_another_file_keeps_its_own_scaler(tmp_path):
    old, new = _frame(240, seed=1), _frame(240, seed=2)
    new[["a", "b"]] = new[["a", "b"]] * 3 + 50  # another scale altogether
    old.to_csv(tmp_path / "old.csv", index=False)
    new.to_csv(tmp_path / "new.csv", index=False)
    dm_new, task, ckpt = _train_on_old_checkpoint(tmp_path)
    export = task.export(tmp_path / "export")
    want = zoo.load_pretrained(export).forecast(tmp_path / "new.csv")  # the API scales with the model's scaler

    fresh = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm_new.data_info)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path / "p").predict(
            fresh, datamodule=dm_new, ckpt_path=ckpt)
    got = pd.DataFrame(rows[0])
    np.testing.assert_allclose(got[["a", "b"]].to_numpy(), want[["a", "b"]].to_numpy(), rtol=1e-4, atol=1e-4)
    # the test metrics on the new file's scale: the model's output carried back to that scale
    batch = next(iter(dm_new.test_dataloader()))
    fresh.eval()
    with torch.no_grad():
        pred = fresh._predict(batch).double()
        m, s = (np.asarray(fresh.model.meta[k]) for k in ("mean", "std"))
        md, sd = (np.asarray(dm_new.data_info[k]) for k in ("mean", "std"))
        raw = batch["x"].double().numpy() * sd + md  # reference: rescale by hand
        ref = fresh.model(torch.as_tensor((raw - m) / s, dtype=torch.float32), batch.get("x_mark")).double().numpy()
        ref = (ref * s + m - md) / sd
    np.testing.assert_allclose(pred.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_a_checkpoint_restored_over_a_file_with_its_columns_reordered(tmp_path):
    """`predict` / `test --ckpt_path` on a file with the training columns in another order (as forecast(df) takes
    them): each variable goes to the model by name. It was refused ("point data.path at a file with the same
    columns") though the file had the same columns."""
    old = _frame(240, seed=1)
    old["c"] = np.cos(np.arange(240) / 3) * 20 - 7
    new = _frame(240, seed=2)
    new["c"] = np.cos(np.arange(240) / 4) * 5 + 30
    new[["a", "b"]] = new[["a", "b"]] * 3 + 50
    old.to_csv(tmp_path / "old.csv", index=False)
    new[["c", "b", "date", "a"]].to_csv(tmp_path / "new.csv", index=False)
    dm_new, task, ckpt = _train_on_old_checkpoint(tmp_path, features="MS", target="a", time_features=True)
    model, meta = task.model.eval(), task.model.meta
    assert meta["columns"] == ["a", "b", "c"]
    m, s = np.asarray(meta["mean"]), np.asarray(meta["std"])

    def by_hand(rows):  # the rows [n, >= LB] of `new` in the training order, scaled by the model's own scaler
        x = (new[["a", "b", "c"]].to_numpy()[rows] - m) / s
        marks = torch.as_tensor(time_features(pd.DatetimeIndex(new["date"].iloc[rows]), meta["time_features"]))[None]
        with torch.no_grad():
            y = model(torch.as_tensor(x, dtype=torch.float32)[None], marks)[0].double().numpy()
        return y[:, 0] * s[0] + m[0]  # the target a, original units

    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = L.Trainer(**quiet, default_root_dir=tmp_path / "p").predict(
            ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm_new.data_info), datamodule=dm_new, ckpt_path=ckpt)
    got = pd.DataFrame(rows[0])
    np.testing.assert_allclose(got["a"].to_numpy(), by_hand(slice(-LB, None)), rtol=1e-4, atol=1e-4)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = L.Trainer(**quiet, default_root_dir=tmp_path / "t").test(
            ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm_new.data_info), datamodule=dm_new,
            ckpt_path=ckpt, verbose=False)[0]
    t0, t1 = dm_new.data_info["borders"]["test"]
    errs = np.stack([by_hand(slice(i, i + LB)) - new["a"].to_numpy()[i + LB : i + LB + H] for i in range(t0, t1 - LB - H + 1)])
    assert res["test/mse_orig"] == pytest.approx(np.mean(errs**2), rel=1e-4)
    assert res["test/mae_orig"] == pytest.approx(np.mean(np.abs(errs)), rel=1e-4)


def test_many_variables_in_another_order_and_scale_match_a_per_column_rescaling():
    """Data of many variables in another column order and scale than the model's: each step's input is the
    data's, column by column, re-scaled to the model's; the forecast comes back the same way. The column mapping is
    made once, and made again when the data facts change."""
    from zoo.data.ts import SyntheticTSDataModule

    n = 40
    info = SyntheticTSDataModule(n_rows=200, n_vars=n, lookback=LB, horizon=H).data_info
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=info).eval()
    meta = task.model.meta
    rng = np.random.default_rng(0)
    for _ in range(2):
        perm = [int(i) for i in rng.permutation(n)]
        cols = [meta["columns"][i] for i in perm]
        md = {c: float(v) for c, v in zip(cols, rng.normal(0, 5, n))}
        sd = {c: float(v) for c, v in zip(cols, rng.uniform(0.5, 3, n))}
        task._take_data_info({**info, "columns": cols, "out_columns": cols, "out_index": list(range(n)),
                              "mean": [md[c] for c in cols], "std": [sd[c] for c in cols]})
        x = torch.randn(3, LB, n, dtype=torch.float64)
        with torch.no_grad():
            got = task._predict({"x": x.float()}).double()
            assert task._data_to_model_scale() is task._data_to_model_scale()
        ref_in = torch.zeros_like(x)  # by hand, one column at a time, by name
        for j, c in enumerate(cols):
            k = meta["columns"].index(c)
            ref_in[..., k] = (x[..., j] * sd[c] + md[c] - meta["mean"][k]) / meta["std"][k]
        with torch.no_grad():
            out = task.model(ref_in.float()).double()
        ref = torch.zeros_like(out)
        for j, c in enumerate(cols):
            k = meta["columns"].index(c)
            ref[..., j] = (out[..., k] * meta["std"][k] + meta["mean"][k] - md[c]) / sd[c]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_a_saved_row_index_is_not_a_variable(tmp_path):
    df = _frame(30)
    df.to_csv(tmp_path / "with_index.csv")  # index=True: pandas reads it back as "Unnamed: 0"
    from zoo.data.ts import read_ts_csv

    with pytest.warns(UserWarning, match=r"\['Unnamed: 0'\] look like a saved row index"):
        _, frame = prepare_frame(read_ts_csv(tmp_path / "with_index.csv"))
    assert list(frame.columns) == ["a", "b"]
    _, frame = prepare_frame(read_ts_csv(tmp_path / "with_index.csv"), columns=["Unnamed: 0", "a"])
    assert list(frame.columns) == ["Unnamed: 0", "a"]


def test_forecasting_data_of_another_spacing_warns(tmp_path):
    df = _frame(120)
    model = _tiny_forecaster(tmp_path, df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the training spacing: no warning
        model.forecast(df)
    quarter = _frame(60, freq="15min")
    with pytest.warns(UserWarning, match="input is 15min-spaced but the model was trained on h-spaced data"):
        model.forecast(quarter)


def test_a_business_day_model_given_its_lookback_of_one_week_forecasts_business_days(tmp_path):
    """A business-day model of lookback 5 given its last five rows, Monday to Friday: read alone they look daily,
    so the forecast was stamped on Saturday and Sunday, with a warning to resample the input to B (it was B).
    The input steps by the model's frequency: the forecast takes the next business days (reference: pandas'
    bdate_range)."""
    df = _frame(200, start="2021-01-04", freq="B")
    model = _tiny_forecaster(tmp_path, df, lookback=5)
    friday = int(np.flatnonzero(df["date"].dt.dayofweek == 4)[-1])
    week = df.iloc[friday - 4 : friday + 1]
    assert list(week["date"].dt.dayofweek) == [0, 1, 2, 3, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model's spacing: no warning
        out = model.forecast(week)
    assert list(pd.DatetimeIndex(out["date"])) == list(pd.bdate_range(week["date"].iloc[-1], periods=H + 1)[1:])


def test_predict_plots_the_history_at_its_own_dates(tmp_path):
    """A file with a missing row inside the input window: forecast.png's history is drawn at the rows'
    real timestamps (a regular range ending on the last date would shift every row before the gap)."""
    df = _frame(150).drop(index=[140]).reset_index(drop=True)
    df.to_csv(tmp_path / "s.csv", index=False)
    with pytest.warns(UserWarning, match="differ from the series' step"):
        dm = CSVTSDataModule(str(tmp_path / "s.csv"), lookback=LB, horizon=H, split="ratio", batch_size=8)
        dm.setup()
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the untrained-weights notice
        trainer.predict(task, datamodule=dm)
    hist, fc = task._forecasts[0]
    assert list(pd.DatetimeIndex(hist["date"])) == list(df["date"].iloc[-LB:])
    np.testing.assert_allclose(hist[["a", "b"]].to_numpy(), df[["a", "b"]].to_numpy()[-LB:], rtol=1e-5, atol=1e-5)
    assert fc["date"].iloc[0] == df["date"].iloc[-1] + pd.Timedelta(hours=1)


def test_a_failed_plot_leaves_no_forecast_csv_behind(tmp_path, monkeypatch):
    """forecast.csv and forecast.png are written together or not at all: a plot that fails left the CSV, and the
    next predict into the folder was refused over it."""
    import zoo.tasks.ts as ts_task

    _frame(120).to_csv(tmp_path / "s.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "s.csv"), lookback=LB, horizon=H, split="ratio", batch_size=8)
    torch.manual_seed(0)
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info)

    def broken_plot(*a, **kw):
        raise RuntimeError("no display")

    monkeypatch.setattr(ts_task, "plot_forecast", broken_plot)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path / "run")
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="no display"):
        warnings.simplefilter("ignore")
        trainer.predict(task, datamodule=dm)
    assert not list((tmp_path / "run").glob("forecast*"))


def _hourly_forecaster(tmp_path):
    """An hourly frame, a tiny untrained forecaster built on it, and its forecast's values for the plain frame."""
    df = _frame(120)
    model = _tiny_forecaster(tmp_path, df)
    return df, model, model.forecast(df)[["a", "b"]].to_numpy()


@pytest.mark.parametrize("name", ["date", "timestamp", None])
@pytest.mark.parametrize("tz", [None, "Asia/Tokyo"])
def test_forecast_with_dates_as_the_index_keeps_the_index_name_and_timezone(tmp_path, name, tz):
    """Dates as the frame's index: the forecast's index has the input's name and timezone (it came back named
    'date' and in naive UTC, so pd.concat([history, forecast]) lost the index name or mixed naive and aware dates)."""
    df, model, want_values = _hourly_forecaster(tmp_path)
    idx = pd.DatetimeIndex(df["date"])
    if tz is not None:  # the same instants, seen from Tokyo
        idx = idx.tz_localize("UTC").tz_convert(tz)
    indexed = df.drop(columns=["date"]).set_axis(idx.rename(name))
    out = model.forecast(indexed)
    want = pd.date_range(idx[-1] + pd.Timedelta(hours=1), periods=H, freq="h", name=name)
    assert out.index.name == name and str(out.index.tz) == str(tz)
    assert list(out.index) == list(want)
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(), want_values, rtol=1e-6)


@pytest.mark.parametrize("freq", ["h", "M"])
def test_forecast_with_periods_as_the_index_answers_in_periods(tmp_path, freq):
    """A PeriodIndex (df.to_period(), pandas' monthly / quarterly habit) is read as its periods' start times and
    the forecast's index is periods again (it was refused as a frame without a date column)."""
    df = _frame(120) if freq == "h" else _frame(120).assign(date=pd.date_range("2000-01-01", periods=120, freq="MS"))
    model = _tiny_forecaster(tmp_path, df)
    want_values = model.forecast(df)[["a", "b"]].to_numpy()
    periods = df.drop(columns=["date"]).set_axis(pd.PeriodIndex(df["date"], freq=freq).rename("date"))
    out = model.forecast(periods)
    last = pd.Period(df["date"].iloc[-1], freq=freq)
    assert isinstance(out.index, pd.PeriodIndex) and out.index.name == "date"
    assert list(out.index) == [last + k for k in range(1, H + 1)]
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(), want_values, rtol=1e-6)


def test_forecast_on_a_timezone_aware_date_column_answers_in_that_timezone(tmp_path):
    """A date column of timezone-aware timestamps (dtype datetime64[ns, tz]): the forecast's dates are the next
    instants in the same timezone (they came back as naive UTC wall times, 9 hours off Tokyo's clock)."""
    df, model, want_values = _hourly_forecaster(tmp_path)
    tokyo = df.assign(date=pd.DatetimeIndex(df["date"]).tz_localize("UTC").tz_convert("Asia/Tokyo"))
    out = model.forecast(tokyo)
    last = tokyo["date"].iloc[-1]
    want = [last + pd.Timedelta(hours=h) for h in range(1, H + 1)]
    assert str(out["date"].dt.tz) == "Asia/Tokyo"
    assert list(out["date"]) == want
    np.testing.assert_allclose(out[["a", "b"]].to_numpy(), want_values, rtol=1e-6)


@pytest.mark.parametrize("as_index", [False, True])
def test_daily_forecast_in_a_daylight_saving_timezone_stays_at_local_midnight(tmp_path, as_index):
    """A daily model given Berlin dates across the spring change (March 30th): the forecast steps calendar days on
    Berlin's clock (pandas' date_range in that timezone). It stepped 24 hours in UTC, landing at 01:00 local after
    the change (and the input, 23 hours apart there in UTC, read as irregular)."""
    model = _tiny_forecaster(tmp_path, _frame(120, start="2025-01-01", freq="D"))
    local = pd.date_range("2025-03-30", periods=LB, freq="D", tz="Europe/Berlin").shift(-LB // 2)  # spans the change
    x = pd.DataFrame({"date": local, "a": np.arange(LB) / LB, "b": np.ones(LB)})
    want = list(pd.date_range(local[-1] + pd.Timedelta(days=1), periods=H, freq="D", tz="Europe/Berlin"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "irregular" / "other spacing" warning either
        out = model.forecast(x.set_index("date")) if as_index else model.forecast(x)
    got = list(out.index) if as_index else list(out["date"])
    assert got == want and all(t.hour == 0 for t in got)


def test_a_daily_csv_written_with_utc_offsets_keeps_its_calendar_days(tmp_path):
    """A timezone-aware daily series saved with df.to_csv is local midnights with offsets ('... 00:00:00+01:00'). Read
    in UTC they were the previous day's 23:00 / 22:00: calendar features a day early (day_of_week of 2021-01-01, a
    Friday, read as Thursday), steps of 23 / 25 hours warned as irregular, forecasts stamped at 22:00. They are the
    days written; an hourly series with offsets stays in UTC (its repeated autumn hour is no disorder there)."""
    local = pd.date_range("2021-01-01", periods=200, freq="D", tz="Europe/Berlin")  # spans the March change
    df = _frame(200).assign(date=local)
    df.to_csv(tmp_path / "berlin.csv", index=False)
    assert pd.read_csv(tmp_path / "berlin.csv")["date"].iloc[100] == "2021-04-11 00:00:00+02:00"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "time steps differ" warning
        dm = CSVTSDataModule(str(tmp_path / "berlin.csv"), lookback=LB, horizon=H, time_features=True)
        dates = dm.prepared()["dates"]
    days = local.tz_localize(None)
    assert list(dates) == list(days) and dm.data_info["freq"] == "D"
    marks = dm.dataset("train")[0]["x_mark"].numpy()
    np.testing.assert_allclose(marks[:, 0], days[:LB].day_of_week / 6.0 - 0.5, atol=1e-6)  # 2021-01-01 a Friday: 4
    model = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info).model
    out = model.forecast(pd.read_csv(tmp_path / "berlin.csv"))
    assert list(out["date"]) == list(pd.date_range(days[-1] + pd.Timedelta(days=1), periods=H, freq="D"))
    hourly = pd.date_range("2021-10-30 22:00", periods=8, freq="h", tz="UTC").tz_convert("Europe/Berlin")
    got, _ = prepare_frame(pd.DataFrame({"date": [str(t) for t in hourly], "a": range(8)}))
    assert list(got) == list(hourly.tz_convert("UTC").tz_localize(None))  # 02:00 twice locally: UTC keeps them apart


def test_a_day_first_daily_csv_with_utc_offsets_keeps_its_days_in_order():
    """Day-first local midnights with offsets ('13/01/2021 00:00:00+01:00'): the column is read day-first (its first
    value says so), but the wall-clock days were each parsed again alone, month-first: 01/02/2021 became January 2,
    and the valid file was refused as "not increasing ... sort the rows". Reference: pandas' own local calendar days."""
    local = pd.date_range("2021-01-13", periods=90, freq="D", tz="Europe/Berlin")  # a month change and the March one
    text = [t.strftime("%d/%m/%Y %H:%M:%S") + t.strftime("%z")[:3] + ":" + t.strftime("%z")[3:] for t in local]
    assert text[19] == "01/02/2021 00:00:00+01:00" and text[-1].endswith("+02:00")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas' "parsing dates in %d/%m/%Y format when dayfirst=False"
        dates, _ = prepare_frame(pd.DataFrame({"date": text, "a": np.arange(90.0)}))
    assert list(dates) == list(local.tz_localize(None))


def test_rows_with_a_trailing_comma_the_header_lacks_are_read_as_written(tmp_path):
    # some exporters end every data row with a separator but not the header: pandas then takes the first field of
    # each row for an index and shifts every column one to the left (the dates into the index, 'a' into 'date')
    from zoo.data.ts import read_ts_csv

    df = _frame(12)
    lines = ["date,a,b"] + [f"{d:%Y-%m-%d %H:%M:%S},{a!r},{b!r}," for d, a, b in df.itertuples(index=False)]
    (tmp_path / "trailing.csv").write_text("\n".join(lines) + "\n")
    dates, frame = prepare_frame(read_ts_csv(tmp_path / "trailing.csv"))
    assert list(dates) == list(df["date"])
    np.testing.assert_array_equal(frame.to_numpy(), df[["a", "b"]].to_numpy())


def test_rows_with_more_values_than_the_header_names_are_an_error_naming_them(tmp_path):
    # decimal commas in a comma-separated file: "1,5" is two fields; the data is not in the columns the header names
    from zoo.data.ts import read_ts_csv

    text = "date,a\n" + "".join(f"2021-01-01 {h:02d}:00:00,{h},5\n" for h in range(6))
    (tmp_path / "decimal_commas.csv").write_text(text)
    with pytest.raises(ValueError, match=r"decimal_commas\.csv.* 3 values .* 2 columns"):
        read_ts_csv(tmp_path / "decimal_commas.csv")


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1"])
def test_a_csv_in_another_encoding_is_named_as_such(tmp_path, encoding):
    from zoo.data.ts import read_ts_csv

    (tmp_path / "enc.csv").write_bytes("date,température\n2021-01-01,1.5\n".encode(encoding))
    with pytest.raises(ValueError, match=r"enc\.csv is not UTF-8.*re-encode"):
        read_ts_csv(tmp_path / "enc.csv")


@pytest.mark.parametrize("name,magic", [("data.xlsx", b"PK\x03\x04"), ("data.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"),
                                        ("data.parquet", b"PAR1")])
def test_a_workbook_or_parquet_file_is_named_not_called_another_encoding(tmp_path, name, magic):
    """An Excel workbook (or a Parquet file) given as the CSV was reported as "not UTF-8 text ... re-encode it",
    advice that cannot help: it is named by its format (its first bytes), with the conversion to CSV."""
    from zoo.data.ts import read_ts_csv

    (tmp_path / name).write_bytes(magic + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=rf"{name} is an? (Excel workbook|Parquet file), not a CSV.*to_csv"):
        read_ts_csv(tmp_path / name)


def test_excel_serial_dates_are_named_with_the_conversion_that_reads_them():
    """Excel writes dates as serial day numbers when a column is not formatted as dates (43831.5 = 2020-01-01 12:00).
    The error advised epoch seconds, which read them as 1970-01-01 12:10: it names Excel's serials and their origin.
    Followed, the dates are the hours of 2020-01-01 (reference: Excel's epoch, 1899-12-30, and pandas' date_range)."""
    serial = 43831 + np.arange(6) / 24
    df = pd.DataFrame({"date": serial, "a": np.arange(6.0)})
    with pytest.raises(ValueError, match=r"Excel serial day numbers.*unit='D', origin='1899-12-30'\)\.dt\.round\('s'\)"):
        prepare_frame(df)
    df["date"] = pd.to_datetime(df["date"], unit="D", origin="1899-12-30").dt.round("s")
    got, _ = prepare_frame(df)
    assert list(got) == list(pd.date_range("2020-01-01", periods=6, freq="h"))


def test_predicting_on_test_windows_says_predict_reads_the_predict_loader(tmp_path):
    """`trainer.predict(task, dataloaders=dm.test_dataloader())` (a Lightning user's script) failed with a bare
    KeyError 'last_date': predict forecasts past the file's end from predict_dataloader() batches."""
    df = _frame(400, freq="h")
    df.to_csv(tmp_path / "s.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "s.csv"), lookback=LB, horizon=H, split="ratio", batch_size=8)
    dm.setup("test")
    task = ForecastTask(arch="ts-itransformer-diff-tiny", data_info=dm.data_info).eval()
    batch = next(iter(dm.test_dataloader()))
    with pytest.raises(ValueError, match="predict forecasts past the file's end: it reads the batches of the "
                                         "datamodule's predict_dataloader"):
        task.predict_step(batch, 0)
