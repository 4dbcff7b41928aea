"""CSV / synthetic forecasting data: split protocol, scaler, feature modes, time features, bad input."""

import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from zoo.data.ts import CSVTSDataModule, SyntheticTSDataModule, make_synthetic_frame, time_features

ETTH1 = Path(__file__).resolve().parents[3] / "shared/data/ett/ETTh1.csv"


def write_csv(path, n_rows, n_vars=3, freq="h", seed=0, names=None):
    rng = np.random.default_rng(seed)
    names = names or [f"c{j}" for j in range(n_vars)]
    values = rng.normal(size=(n_rows, len(names))).cumsum(0) + np.arange(len(names)) * 10
    df = pd.DataFrame(values, columns=names)
    df.insert(0, "date", pd.date_range("2016-07-01", periods=n_rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S"))
    df.to_csv(path, index=False)
    return values


def test_ett_hour_borders_follow_the_protocol(tmp_path):
    L, H = 24, 12
    values = write_csv(tmp_path / "ETTh9.csv", 14500)
    dm = CSVTSDataModule(str(tmp_path / "ETTh9.csv"), lookback=L, horizon=H)
    month = 30 * 24
    expected = {"train": [0, 12 * month], "val": [12 * month - L, 16 * month], "test": [16 * month - L, 20 * month]}
    assert dm.data_info["borders"] == expected
    assert dm.data_info["split"] == "ett_hour"
    mean, std = values[: 12 * month].mean(0), values[: 12 * month].std(0)
    for split, (b1, b2) in expected.items():
        ds = dm.dataset(split)
        assert len(ds) == (b2 - b1) - L - H + 1
        first, last = ds[0], ds[len(ds) - 1]
        np.testing.assert_allclose(first["x"].numpy(), (values[b1 : b1 + L] - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(first["y"].numpy(), (values[b1 + L : b1 + L + H] - mean) / std, rtol=1e-5, atol=1e-5)
        # The last target row is the last row of the split (rows after 20 months are never used).
        np.testing.assert_allclose(last["y"][-1].numpy(), (values[b2 - 1] - mean) / std, rtol=1e-5, atol=1e-5)


def test_ett_minute_borders_are_four_times_the_hourly_ones(tmp_path):
    write_csv(tmp_path / "ETTm7.csv", 57700, n_vars=1, freq="15min")
    dm = CSVTSDataModule(str(tmp_path / "ETTm7.csv"), lookback=96, horizon=96)
    m = 4 * 30 * 24
    assert dm.data_info["borders"] == {"train": [0, 12 * m], "val": [12 * m - 96, 16 * m], "test": [16 * m - 96, 20 * m]}
    assert dm.data_info["freq"] == "15min"


@pytest.mark.parametrize("name, split, freq, rows", [
    ("ETTh1_15min.csv", "auto", "15min", 57700),  # named ETTh* (auto: ett_hour) but 15-minute rows
    ("mine.csv", "ett_hour", "15min", 57700),
    ("mine.csv", "ett_minute", "h", 57700),
])
def test_ett_month_borders_refuse_a_series_of_another_step(tmp_path, name, split, freq, rows):
    # 12 "months" of 720 rows are 3 months of 15-minute rows: refused, not silently trained on 3/1/1 months
    write_csv(tmp_path / name, rows, n_vars=2, freq=freq)
    with pytest.raises(ValueError, match="split"):
        CSVTSDataModule(str(tmp_path / name), lookback=24, horizon=12, split=split).data_info


def test_other_files_split_0_7_0_1_0_2(tmp_path):
    write_csv(tmp_path / "custom.csv", 1001)
    dm = CSVTSDataModule(str(tmp_path / "custom.csv"), lookback=30, horizon=10)
    n_train, n_test = 700, 200  # int(0.7 * 1001), int(0.2 * 1001)
    n_val = 1001 - n_train - n_test
    assert dm.data_info["split"] == "ratio"
    assert dm.data_info["borders"] == {
        "train": [0, n_train], "val": [n_train - 30, n_train + n_val], "test": [1001 - n_test - 30, 1001],
    }


@pytest.mark.parametrize("split", ["auto", "ett_hour"])
def test_ratios_on_an_ett_file_are_refused_not_ignored(tmp_path, split):
    # data.ratios split by fractions (README: split: ratio); an ETTh* file (auto) or split ett_hour took the 12/4/4
    # months and dropped the ratios asked for without a word
    write_csv(tmp_path / "ETTh9.csv", 14500, n_vars=2)
    with pytest.raises(ValueError, match=r"data\.ratios.*data\.split: ratio"):
        CSVTSDataModule(str(tmp_path / "ETTh9.csv"), lookback=24, horizon=12, split=split, ratios=(0.6, 0.2, 0.2)).data_info
    dm = CSVTSDataModule(str(tmp_path / "ETTh9.csv"), lookback=24, horizon=12, split="ratio", ratios=(0.6, 0.2, 0.2))
    assert dm.data_info["borders"]["train"] == [0, int(14500 * 0.6)]


def test_scaler_is_fitted_on_training_rows_only(tmp_path):
    values = write_csv(tmp_path / "data.csv", 500)
    values[350:] += 100.0  # a level shift after the training rows must not leak into the scaler
    df = pd.read_csv(tmp_path / "data.csv")
    df.iloc[350:, 1:] += 100.0
    df.to_csv(tmp_path / "data.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "data.csv"), lookback=20, horizon=5)
    np.testing.assert_allclose(dm.data_info["mean"], values[:350].mean(0), rtol=1e-9)
    np.testing.assert_allclose(dm.data_info["std"], values[:350].std(0), rtol=1e-9)
    test = dm.dataset("test")
    b1 = dm.data_info["borders"]["test"][0]
    np.testing.assert_allclose(test[3]["x"].numpy(), (values[b1 + 3 : b1 + 23] - values[:350].mean(0)) / values[:350].std(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("level", [0.1, 1.1, 13.37])
def test_a_column_constant_over_the_training_rows_is_scaled_by_one(tmp_path, level):
    # scikit-learn's StandardScaler takes a scale of 1 for a constant feature, also when float rounding leaves its
    # std at 1e-17 instead of 0 (np.full(n, 0.1).std()): dividing by that scaled 0.1 to 1.0 and 0.2 to 7e15
    n = 400
    stuck = np.full(n, level)
    stuck[300:] = level + 0.1  # a sensor stuck through the training rows (0.7 * 400 = 280), then moving
    df = pd.DataFrame({"date": pd.date_range("2021-01-01", periods=n, freq="h"), "stuck": stuck,
                       "y": np.sin(np.arange(n) / 5)})
    df.to_csv(tmp_path / "stuck.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "stuck.csv"), lookback=16, horizon=8)
    assert dm.data_info["std"][0] == 1.0
    np.testing.assert_allclose(dm.data_info["mean"][0], level, rtol=1e-12)
    x = torch.cat([dm.dataset("train")[0]["x"][:, 0], dm.dataset("test")[-1]["y"][:, 0]]).numpy()
    np.testing.assert_allclose(x, np.r_[np.zeros(16), np.full(8, 0.1)], atol=1e-6)


def _write_spaced_csv(tmp_path):
    """plain.csv (date, c0, c1) and spaced.csv: the same rows as "date, v0, v1" with a space after every comma;
    returns the values written."""
    values = write_csv(tmp_path / "plain.csv", 300, n_vars=2)
    lines = (tmp_path / "plain.csv").read_text().splitlines()
    (tmp_path / "spaced.csv").write_text("date, v0, v1\n" + "\n".join(", ".join(ln.split(",")) for ln in lines[1:]) + "\n")
    return values


def test_a_header_with_spaces_after_its_commas_names_the_columns_without_them(tmp_path):
    """"date, v0, v1" (a space after each comma, values too): the variables are v0 and v1 (data.target: v1), the
    values those written; a DataFrame whose names carry the spaces gets an error that says so."""
    from zoo.data.ts_frames import prepare_frame

    values = _write_spaced_csv(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "spaced.csv"), lookback=20, horizon=5, features="S", target="v1")
    assert dm.data_info["columns"] == ["v1"]
    train_end = dm.data_info["borders"]["train"][1]
    np.testing.assert_allclose(dm.data_info["mean"], [values[:train_end, 1].mean()], rtol=1e-9)
    spaced = pd.read_csv(tmp_path / "spaced.csv")  # plain pandas keeps " v0", " v1"
    with pytest.raises(ValueError, match=r"differ by spaces: ' v0' for 'v0', ' v1' for 'v1'.*str.strip"):
        prepare_frame(spaced, columns=["v0", "v1"])
    with pytest.raises(ValueError, match=r"target column 'v1' not found.*differ by spaces"):
        prepare_frame(spaced, target="v1")


def test_names_written_with_their_spaces_still_name_the_columns_of_a_spaced_header(tmp_path):
    """A header "date, v0, v1" read before skipinitialspace named its variables " v0", " v1": a config with
    data.target: " v1", and a model trained then (its columns " v0", " v1"), read that file; with the header's
    spaces dropped they were 'not found' (advising df.columns.str.strip(), which the file's reader had done).
    Reference: the values written to the file and their training-rows mean computed here."""
    from zoo.data.ts_frames import prepare_frame, read_ts_csv

    values = _write_spaced_csv(tmp_path)
    dm = CSVTSDataModule(str(tmp_path / "spaced.csv"), lookback=20, horizon=5, features="S", target=" v1")
    assert dm.data_info["columns"] == [" v1"]
    train_end = dm.data_info["borders"]["train"][1]
    np.testing.assert_allclose(dm.data_info["mean"], [values[:train_end, 1].mean()], rtol=1e-9)
    _, frame = prepare_frame(read_ts_csv(tmp_path / "spaced.csv"), columns=[" v0", " v1"])  # a model trained then
    assert list(frame.columns) == [" v0", " v1"]
    np.testing.assert_allclose(frame.to_numpy(), values, rtol=1e-12)
    _, frame = prepare_frame(read_ts_csv(tmp_path / "spaced.csv"), columns=["v0", "v1"])  # as the header reads now
    np.testing.assert_allclose(frame.to_numpy(), values, rtol=1e-12)
    plain = pd.read_csv(tmp_path / "plain.csv").rename(columns={"c0": "v0", "c1": "v1"})
    with pytest.raises(ValueError, match=r"target column ' v1' not found.*differ by spaces: 'v1' for ' v1'; name them "
                                         r"without the spaces"):
        prepare_frame(plain, target=" v1")


@pytest.mark.parametrize("features,n_in,n_out", [("M", 4, 4), ("S", 1, 1), ("MS", 4, 1)])
def test_feature_modes_shapes_and_target(tmp_path, features, n_in, n_out):
    values = write_csv(tmp_path / "d.csv", 300, names=["a", "b", "OT", "d"])
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=16, horizon=8, features=features, target="OT", batch_size=5)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (5, 16, n_in)
    assert batch["y"].shape == (5, 8, n_out)
    info = dm.data_info
    assert info["n_vars"] == n_in and info["n_out"] == n_out
    if features != "M":
        assert info["out_columns"] == ["OT"]
        item = dm.dataset("train")[7]
        mean, std = values[:210, 2].mean(), values[:210, 2].std()
        np.testing.assert_allclose(item["y"][:, 0].numpy(), (values[7 + 16 : 7 + 24, 2] - mean) / std, rtol=1e-4, atol=1e-5)


def test_target_defaults_to_the_last_column(tmp_path):
    write_csv(tmp_path / "d.csv", 300, names=["a", "b", "z"])
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=16, horizon=8, features="MS")
    assert dm.data_info["target"] == "z" and dm.data_info["out_index"] == [2]


@pytest.mark.parametrize("features", ["S", "MS"])
def test_a_trailing_comma_column_is_no_default_target(tmp_path, features):
    """Lines ending in a comma give pandas an empty 'Unnamed: 3' column: the default target is still the
    last variable (b), as the README says."""
    write_csv(tmp_path / "d.csv", 300, names=["a", "b"])
    lines = (tmp_path / "d.csv").read_text().splitlines()
    (tmp_path / "t.csv").write_text("\n".join(line + "," for line in lines) + "\n")
    dm = CSVTSDataModule(str(tmp_path / "t.csv"), lookback=16, horizon=8, features=features)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = dm.data_info
    assert info["target"] == "b" and info["out_columns"] == ["b"]
    # MS reads every variable: the blank column is named as left out, as what it is (not a saved row index)
    said = [str(w.message) for w in caught if "Unnamed: 3" in str(w.message)]
    assert (features == "MS") == bool(said)
    assert all("empty" in m and "comma" in m and "row index" not in m for m in said)


def test_time_features_match_calendar(tmp_path):
    dates = pd.DatetimeIndex(["2016-01-01 00:00", "2016-07-04 23:00", "2016-12-31 12:00"])
    got = time_features(dates, ["hour_of_day", "day_of_week", "day_of_month", "day_of_year"])
    # 2016-01-01 is a Friday (weekday 4), 2016-07-04 a Monday, 2016-12-31 (leap year) day 366.
    expected = np.array([
        [0 / 23, 4 / 6, 0 / 30, 0 / 365],
        [23 / 23, 0 / 6, 3 / 30, 185 / 365],
        [12 / 23, 5 / 6, 30 / 30, 365 / 365],
    ]) - 0.5
    np.testing.assert_allclose(got, expected, atol=1e-6)
    write_csv(tmp_path / "d.csv", 300)
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=16, horizon=8, time_features=True)
    batch = next(iter(dm.val_dataloader()))
    assert batch["x_mark"].shape == (batch["x"].shape[0], 16, 4)


@pytest.mark.parametrize("freq, ref_unit", [("90min", "Minute"), ("36h", "Hour"), ("10D", "Day"), ("h", "Hour"),
                                            ("15min", "Minute"), ("30s", "Second"), ("D with gaps", "Day")])
def test_time_features_follow_the_reference_by_the_offsets_unit(tmp_path, freq, ref_unit):
    # Time-Series-Library's time_features_from_frequency_str picks the features by the offset's class: a 36h series is
    # Hour (its rows alternate midnight / noon: hour_of_day tells them apart), 90min is Minute (:00 / :30); a daily
    # series with many gaps (its step read as 24h) is still Day
    if freq == "D with gaps":
        d = pd.date_range("2016-07-01", periods=400, freq="D").delete(list(range(3, 400, 7)))[:300]
    else:
        d = pd.date_range("2016-07-01", periods=300, freq=freq)
    ref = {  # utils/timefeatures.py, in its order
        "Second": [d.second / 59.0, d.minute / 59.0, d.hour / 23.0, d.day_of_week / 6.0, (d.day - 1) / 30.0,
                   (d.day_of_year - 1) / 365.0],
        "Minute": [d.minute / 59.0, d.hour / 23.0, d.day_of_week / 6.0, (d.day - 1) / 30.0, (d.day_of_year - 1) / 365.0],
        "Hour": [d.hour / 23.0, d.day_of_week / 6.0, (d.day - 1) / 30.0, (d.day_of_year - 1) / 365.0],
        "Day": [d.day_of_week / 6.0, (d.day - 1) / 30.0, (d.day_of_year - 1) / 365.0],
    }[ref_unit]
    expected = np.stack([np.asarray(f, dtype=np.float64) - 0.5 for f in ref], axis=1)
    df = pd.DataFrame({"date": d, "v": np.sin(np.arange(300) / 7.0)})
    df.to_csv(tmp_path / "d.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gaps are warned about
        dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=16, horizon=8, time_features=True)
        item = dm.dataset("train")[5]
    np.testing.assert_allclose(item["x_mark"].numpy(), expected[5:21], atol=1e-6)


# -- bad input ---------------------------------------------------------------------------------
def _frame(n=200):
    df = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h"), "a": np.arange(n, dtype=float),
                       "b": np.sin(np.arange(n))})
    return df


def _dm(tmp_path, df, **kw):
    df.to_csv(tmp_path / "bad.csv", index=False)
    return CSVTSDataModule(str(tmp_path / "bad.csv"), lookback=12, horizon=6, **kw)


def test_missing_date_column(tmp_path):
    with pytest.raises(ValueError, match=r"no date column 'date'.*data.date_col"):
        _dm(tmp_path, _frame().rename(columns={"date": "time"})).data_info
    assert _dm(tmp_path, _frame().rename(columns={"date": "time"}), date_col="time").data_info["n_vars"] == 2


@pytest.mark.parametrize("sep,name", [(";", "semicolons"), ("\t", "tabs")])
def test_semicolon_or_tab_separated_csv_is_named(tmp_path, sep, name):
    """A semicolon- (European Excel) or tab-separated file read as one column 'date;a;b': the error said "no date
    column 'date'" and advised setting data.date_col. It names the separator and how to convert the file."""
    _frame().to_csv(tmp_path / "bad.csv", index=False, sep=sep)
    with pytest.raises(ValueError, match=rf"bad.csv separates its columns with {name} .*comma-separated"):
        CSVTSDataModule(str(tmp_path / "bad.csv"), lookback=12, horizon=6).data_info


@pytest.mark.parametrize("shape", ["bom", "crlf", "bom_crlf", "date_not_first"])
def test_legal_csv_shapes_read_as_written(tmp_path, shape):
    """A UTF-8 BOM (Excel's "CSV UTF-8"), CRLF line ends and a date column that is not the first one read as the
    frame that was written (reference: the numbers themselves)."""
    from zoo.data.ts import prepare_frame, read_ts_csv

    df = _frame(30)
    df["date"] = df["date"].dt.strftime("%Y-%m-%d %H:%M:%S")
    if shape == "date_not_first":
        df = df[["a", "date", "b"]]
    text = df.to_csv(index=False)
    if "crlf" in shape:
        text = text.replace("\n", "\r\n")
    (tmp_path / "d.csv").write_bytes(("\ufeff" if "bom" in shape else "").encode() + text.encode())
    dates, frame = prepare_frame(read_ts_csv(tmp_path / "d.csv"))
    assert list(frame.columns) == ["a", "b"]
    np.testing.assert_array_equal(frame["a"].to_numpy(), np.arange(30, dtype=float))
    np.testing.assert_allclose(frame["b"].to_numpy(), np.sin(np.arange(30)), rtol=1e-12)
    assert (dates == pd.date_range("2020-01-01", periods=30, freq="h")).all()


@pytest.mark.parametrize("features", ["S", "MS"])
def test_missing_target_column(tmp_path, features):
    with pytest.raises(ValueError, match=r"target column 'OT' not found.*set data.target to one of \['a', 'b'\]"):
        _dm(tmp_path, _frame(), features=features, target="OT").data_info


def test_non_numeric_column(tmp_path):
    df = _frame()
    df["b"] = df["b"].astype(object)
    df.loc[17, "b"] = "n/a?"
    with pytest.raises(ValueError, match=r"column 'b' .*not numeric.*'n/a\?' at row 17"):
        _dm(tmp_path, df).data_info


def test_thousands_separators_are_named_as_the_cause(tmp_path):
    """'1,000.5' (quoted in the CSV) is not read as a number, and not silently either: the error names the thousands
    separators and how to remove them; a plain non-number gets no such hint."""
    df = _frame()
    df["a"] = [f"{v:,.1f}" for v in df["a"] * 10 + 900]
    assert '"1,000.0"' in df.to_csv(index=False)
    with pytest.raises(ValueError, match=r"column 'a' .*not numeric.*'1,000.0' at row 10.*thousands separator") as err:
        _dm(tmp_path, df).data_info
    assert "thousands=','" in str(err.value)
    for other in (["n/a?"] * len(df), [f"{v:.3f}".replace(".", ",") for v in np.linspace(0.1, 12.5, len(df))]):
        df["a"] = other  # not a number; decimal commas ("0,125", "12,375"), which thousands=',' would corrupt
        with pytest.raises(ValueError, match="not numeric") as err:
            _dm(tmp_path, df).data_info
        assert "thousands separator" not in str(err.value)


def test_nan_gap_raises_or_is_interpolated(tmp_path):
    df = _frame()
    df.loc[40:42, "a"] = np.nan
    with pytest.raises(ValueError, match=r"3 missing \(NaN\).*column 'a' at row 40.*interpolate"):
        _dm(tmp_path, df).data_info
    df.loc[20, "b"] = np.nan  # the first gap is the first row's, whatever its column (column a was named first)
    with pytest.raises(ValueError, match=r"4 missing \(NaN\).*column 'b' at row 20.*interpolate"):
        _dm(tmp_path, df).data_info
    df.loc[20, "b"] = 0.5
    dm = _dm(tmp_path, df, interpolate=True)
    raw = dm.prepared()["values"]
    np.testing.assert_allclose(raw[39:44, 0], [39, 40, 41, 42, 43])  # linear between rows 39 and 43


def test_too_few_rows(tmp_path):
    with pytest.raises(ValueError, match=r"too few rows.*lookback \+ horizon = 12 \+ 6 = 18"):
        _dm(tmp_path, _frame(40)).data_info
    write_csv(tmp_path / "ETTh1.csv", 1000)
    with pytest.raises(ValueError, match=r"needs 14400 rows but the data has 1000.*split: ratio"):
        CSVTSDataModule(str(tmp_path / "ETTh1.csv")).data_info


def test_a_file_of_a_header_or_one_row_is_too_few_rows_by_name(tmp_path):
    """A header-only or one-row CSV failed in the frequency inference ("need at least two timestamps"), naming
    neither the file nor the fix; it is too few rows for lookback + horizon, as any short file."""
    for n in (0, 1):
        _frame(n).to_csv(tmp_path / f"short{n}.csv", index=False)
        with pytest.raises(ValueError, match=rf"too few rows in .*short{n}.csv: {n} rows.*12 \+ 6 = 18"):
            CSVTSDataModule(str(tmp_path / f"short{n}.csv"), lookback=12, horizon=6).data_info


def test_a_csv_without_a_header_line_is_named(tmp_path):
    """A CSV written without its header (df.to_csv(header=False)): pandas takes the first row for the header, the
    error said "no date column 'date'" and advised data.date_col; set to that first timestamp, the file was read
    with its first row dropped and the variables named by their first values. The missing header is named."""
    df = _frame(60)
    df.to_csv(tmp_path / "nohdr.csv", index=False, header=False)
    first = str(df["date"].iloc[0])
    for kw in ({}, {"date_col": first}):
        with pytest.raises(ValueError, match=r"nohdr.csv has no header line.*add a header"):
            CSVTSDataModule(str(tmp_path / "nohdr.csv"), lookback=12, horizon=6, **kw).data_info
    # variables named by numbers (a legal header) read as written: reference, the numbers themselves
    df.rename(columns={"a": "1", "b": "2.5"}).to_csv(tmp_path / "numbered.csv", index=False)
    frame = CSVTSDataModule(str(tmp_path / "numbered.csv"), lookback=12, horizon=6).prepared()
    assert frame["columns"] == ["1", "2.5"]
    np.testing.assert_array_equal(frame["values"][:, 0], np.arange(60, dtype=float))


def test_unordered_dates_and_missing_file(tmp_path):
    df = _frame()
    df.loc[[5, 6], "date"] = df.loc[[6, 5], "date"].to_numpy()
    with pytest.raises(ValueError, match=r"goes back in time at row 6"):
        _dm(tmp_path, df).data_info
    with pytest.raises(FileNotFoundError, match="nothere.csv not found"):
        CSVTSDataModule(str(tmp_path / "nothere.csv")).data_info
    # a folder (say, the dataset's directory instead of its CSV) is named as a folder, with the CSVs it holds
    (tmp_path / "ett").mkdir()
    _frame().to_csv(tmp_path / "ett" / "ETTh1.csv", index=False)
    with pytest.raises(IsADirectoryError, match=r"ett is a folder, not a CSV file.*ETTh1\.csv"):
        CSVTSDataModule(str(tmp_path / "ett")).data_info


def test_dates_without_their_times_are_named_not_called_duplicates(tmp_path):
    """A "Date,Time,..." file (the UCI household power layout): every hour repeats its day's date. "Remove duplicates"
    left one row a day; the error names the time column and the join. A lone duplicate keeps the old advice."""
    stamps = pd.date_range("2021-03-01", periods=72, freq="h")
    df = pd.DataFrame({"date": stamps.strftime("%Y-%m-%d"), "Time": stamps.strftime("%H:%M:%S"),
                       "a": np.arange(72.0)})
    with pytest.raises(ValueError, match=r"repeats at row 1 .*69 of 71 rows repeat the previous row's date: the dates "
                                         r"lack their time of day, which column 'Time' holds: join them into one "
                                         r"timestamp, e.g. df\['date'\] = df\['date'\] \+ ' ' \+ df.pop\('Time'\)"):
        _dm(tmp_path, df).data_info
    joined = df.assign(date=df["date"] + " " + df.pop("Time"))  # the advice, followed
    assert list(pd.to_datetime(joined["date"])) == list(stamps)
    np.testing.assert_array_equal(_dm(tmp_path, joined).prepared()["dates"], stamps)
    with pytest.raises(ValueError, match=r"69 of 71 rows repeat the previous row's date: the dates lack their time of day: "
                                         "write full timestamps"):
        _dm(tmp_path, df[["date", "a"]]).data_info
    # long format, one row per date and store: a pivot is the fix (not full timestamps); followed, the file reads
    days = pd.date_range("2021-03-01", periods=80, freq="D").strftime("%Y-%m-%d")
    long = pd.DataFrame({"date": np.repeat(days, 3), "store": ["north", "south", "west"] * 80,
                         "sales": np.arange(240.0)})
    long["note"] = "x"  # a constant text column: neither the key nor the values
    with pytest.raises(ValueError, match=r"160 of 239 rows repeat the previous row's date: the table is in long format, "
                                         r"one row per date and 'store'; make one column per series, e.g. "
                                         r"df.pivot\(index='date', columns='store', values='sales'\).reset_index\(\)"):
        _dm(tmp_path, long).data_info
    wide = long.pivot(index="date", columns="store", values="sales").reset_index()  # the advice, as printed
    assert list(wide.columns) == ["date", "north", "south", "west"]  # one header row (a list of values made two)
    np.testing.assert_array_equal(_dm(tmp_path, wide).prepared()["values"][:, 1], np.arange(1.0, 240, 3))
    # hourly rows without their times beside an on / off status: (date, status) repeats, so no series key (its
    # pivot fails on duplicate entries): the full-timestamps advice
    status = df.assign(status=np.where(np.arange(72) % 3, "on", "off"))[["date", "status", "a"]]
    with pytest.raises(ValueError, match=r"the dates lack their time of day: write full timestamps"):
        _dm(tmp_path, status).data_info
    once = _frame()
    once = pd.concat([once.iloc[:6], once.iloc[5:]], ignore_index=True)
    with pytest.raises(ValueError, match=r"repeats at row 6 .*; sort the rows by date and remove duplicates$"):
        _dm(tmp_path, once).data_info


def test_bad_arguments():
    with pytest.raises(ValueError, match="features must be one of"):
        SyntheticTSDataModule(features="X")
    with pytest.raises(ValueError, match="lookback must be an integer >= 1"):
        SyntheticTSDataModule(lookback=0)


# -- synthetic ---------------------------------------------------------------------------------
def test_synthetic_is_deterministic_seasonal_and_coupled():
    a, b, c = make_synthetic_frame(3000, 4, seed=0), make_synthetic_frame(3000, 4, seed=0), make_synthetic_frame(3000, 4, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["v1"], c["v1"])
    v = a["v0"].to_numpy()
    v = v - np.convolve(v, np.ones(168) / 168, mode="same")  # remove the trend
    v = v[200:-200]

    def ac(lag):
        return np.corrcoef(v[:-lag], v[lag:])[0, 1]

    assert ac(24) > 0.5 and ac(12) < -0.3  # a daily cycle
    dm = SyntheticTSDataModule(n_rows=600, n_vars=3, lookback=24, horizon=12)
    info = dm.data_info
    assert info["kind"] == "ts" and info["n_vars"] == 3 and info["freq"] == "h"
    assert torch.isfinite(next(iter(dm.train_dataloader()))["x"]).all()


# -- the real benchmark file -------------------------------------------------------------------
@pytest.mark.skipif(not ETTH1.is_file(), reason="../shared/data not present (CI provides it)")
def test_real_etth1_protocol():
    with open(ETTH1) as f:
        rows = list(csv.reader(f))
    header, data = rows[0], np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    dm = CSVTSDataModule(str(ETTH1), lookback=96, horizon=96)
    info = dm.data_info
    assert info["columns"] == header[1:] and info["n_rows"] == 17420
    assert info["borders"] == {"train": [0, 8640], "val": [8544, 11520], "test": [11424, 14400]}
    np.testing.assert_allclose(info["mean"], data[:8640].mean(0), rtol=1e-9)
    np.testing.assert_allclose(info["std"], data[:8640].std(0), rtol=1e-9)
    assert len(dm.dataset("train")) == 8449 and len(dm.dataset("val")) == 2785 and len(dm.dataset("test")) == 2785


def test_training_loader_drops_the_last_incomplete_batch_like_the_reference(tmp_path):
    # 12-month train split of an hourly ETT-shaped file, L=24, H=12: 8640 - 36 + 1 = 8605 windows,
    # 8605 = 268 * 32 + 29, so the reference loader (drop_last=True) runs 268 full batches.
    write_csv(tmp_path / "ETTh9.csv", 14500)
    dm = CSVTSDataModule(str(tmp_path / "ETTh9.csv"), lookback=24, horizon=12, batch_size=32)
    n = len(dm.dataset("train"))
    assert n == 8605
    sizes = [len(b["x"]) for b in dm.train_dataloader()]
    assert len(sizes) == n // 32 and set(sizes) == {32}
    # validation / test keep every window; drop_last=False keeps the short training batch
    assert sum(len(b["x"]) for b in dm.val_dataloader()) == len(dm.dataset("val"))
    keep = CSVTSDataModule(str(tmp_path / "ETTh9.csv"), lookback=24, horizon=12, batch_size=32, drop_last=False)
    assert sum(len(b["x"]) for b in keep.train_dataloader()) == n


def test_training_split_smaller_than_a_batch_keeps_its_short_batch_with_a_warning():
    dm = SyntheticTSDataModule(n_rows=200, n_vars=2, lookback=24, horizon=12, batch_size=256)
    n = len(dm.dataset("train"))
    assert 0 < n < 256
    with pytest.warns(UserWarning, match="fewer than data.batch_size"):
        loader = dm.train_dataloader()
    assert sum(len(b["x"]) for b in loader) == n


@pytest.mark.parametrize("features", ["S", "MS"])
def test_a_target_outside_the_selected_columns_is_refused_in_every_mode(tmp_path, features):
    # data.columns without the target: an error in S as in MS, not a silent switch to the unselected target
    write_csv(tmp_path / "d.csv", 300, names=["a", "b", "OT"])
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=16, horizon=8, features=features, target="OT",
                         columns=["a", "b"])
    with pytest.raises(ValueError, match=r"target column 'OT' is not among the selected columns \['a', 'b'\]"):
        dm.data_info
    # the target among them: S reads it alone
    dm = CSVTSDataModule(str(tmp_path / "d.csv"), lookback=16, horizon=8, features="S", target="OT", columns=["a", "OT"])
    assert dm.data_info["columns"] == ["OT"]


def test_a_column_named_twice_is_refused(tmp_path):
    # columns [a, a] used to train on one 'a' silently; the user asked for two inputs
    write_csv(tmp_path / "d.csv", 300, names=["a", "b", "OT"])
    with pytest.raises(ValueError, match=r"data.columns names \['a'\] more than once"):
        CSVTSDataModule(str(tmp_path / "d.csv"), lookback=16, horizon=8, features="M", columns=["a", "a", "b"])


@pytest.mark.parametrize("crlf", [False, True])
def test_excels_sep_line_is_honoured(tmp_path, crlf):
    """Excel writes a first line `sep=,` (CSV in some locales; Excel's own hint for reading the file back): it was
    read as the header, and the error blamed decimal commas. It is skipped, as Excel does; another separator it
    declares is named with the conversion (reference: the numbers written)."""
    from zoo.data.ts import prepare_frame, read_ts_csv

    df = _frame(30)
    text = "sep=,\n" + df.to_csv(index=False)
    (tmp_path / "x.csv").write_bytes(("\ufeff" + (text.replace("\n", "\r\n") if crlf else text)).encode())
    dates, frame = prepare_frame(read_ts_csv(tmp_path / "x.csv"))
    assert list(frame.columns) == ["a", "b"]
    np.testing.assert_array_equal(frame["a"].to_numpy(), np.arange(30, dtype=float))
    assert (dates == pd.date_range("2020-01-01", periods=30, freq="h")).all()
    (tmp_path / "s.csv").write_text("sep=;\n" + df.to_csv(index=False, sep=";"))
    with pytest.raises(ValueError, match=r"s.csv starts with Excel's 'sep=;' line.*comma-separated.*skiprows=1"):
        read_ts_csv(tmp_path / "s.csv")


def test_a_column_name_written_twice_is_refused(tmp_path):
    """A header naming a column twice (date,a,a,b): pandas renamed the second 'a.1' and it was trained on (and
    exported) under a name the file does not hold; a DataFrame with two 'a' columns given to prepare_frame
    (model.forecast) failed with an unnamed TypeError. Both name the column."""
    from zoo.data.ts import prepare_frame, read_ts_csv

    df = _frame(30)
    (tmp_path / "d.csv").write_text(df.to_csv(index=False).replace("date,a,b", "date,a, a"))
    with pytest.raises(ValueError, match=r"d.csv names column\(s\) \['a'\] more than once"):
        read_ts_csv(tmp_path / "d.csv")
    # a header that really names 'a' and 'a.1' is read as written
    (tmp_path / "ok.csv").write_text(df.to_csv(index=False).replace("date,a,b", "date,a,a.1"))
    assert list(read_ts_csv(tmp_path / "ok.csv").columns) == ["date", "a", "a.1"]
    twice = df.set_axis(["date", "a", "a"], axis=1)
    with pytest.raises(ValueError, match=r"column\(s\) \['a'\] of the data appear more than once"):
        prepare_frame(twice)
    _, frame = prepare_frame(df.assign(c=df["a"]).set_axis(["date", "a", "b", "b"], axis=1), columns=["a"])
    np.testing.assert_array_equal(frame["a"].to_numpy(), np.arange(30, dtype=float))  # a twice-named unused column


def test_a_pipe_is_named_not_reported_missing(tmp_path):
    """A named pipe (or /dev/stdin, <(zcat ...)) exists but was reported "not found"; the file is read more than
    once (header, then the data), which a pipe cannot give: named as such."""
    import os

    from zoo.data.ts import read_ts_csv

    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(ValueError, match=r"pipe.csv is not a regular file .*save it to a file"):
        read_ts_csv(tmp_path / "pipe.csv")


def test_a_predict_file_of_another_spacing_is_said(tmp_path):
    """data.predict_path read daily rows for a model of hourly data without a word: the forecast took them as hourly
    history and was stamped hourly after the last day (model.forecast(df) says so for the same input)."""
    n, t = 300, np.arange(300)
    pd.DataFrame({"date": pd.date_range("2021-01-01", periods=n, freq="h"), "a": np.sin(t / 5) * 3 + 1,
                  "OT": np.cos(t / 7)}).to_csv(tmp_path / "h.csv", index=False)
    # the same variables in another column order, hourly: the last 24 rows scaled by the training rows' scaler
    later = pd.DataFrame({"date": pd.date_range("2021-03-01", periods=40, freq="h"), "OT": t[:40] * 0.1,
                          "a": t[:40] * -0.2})
    later.to_csv(tmp_path / "later.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "h.csv"), lookback=24, horizon=12, predict_path=str(tmp_path / "later.csv"))
    train = pd.read_csv(tmp_path / "h.csv")[["a", "OT"]].to_numpy()[: int(0.7 * n)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        item = dm.predict_item()
    want = (later[["a", "OT"]].to_numpy()[-24:] - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(item["x"].numpy(), want, rtol=1e-5, atol=1e-6)
    later["date"] = pd.date_range("2021-03-01", periods=40, freq="D")
    later.to_csv(tmp_path / "later.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "h.csv"), lookback=24, horizon=12, predict_path=str(tmp_path / "later.csv"))
    with pytest.warns(UserWarning, match=r"later.csv is D-spaced but .*h.csv.* is h-spaced.*resample"):
        dm.predict_item()
    # a gap in the predict file older than its last 24 rows: never read; the error says so
    later["date"] = pd.date_range("2021-03-01", periods=40, freq="h")
    later.loc[3, "OT"] = np.nan
    later.to_csv(tmp_path / "later.csv", index=False)
    dm = CSVTSDataModule(str(tmp_path / "h.csv"), lookback=24, horizon=12, predict_path=str(tmp_path / "later.csv"))
    with pytest.raises(ValueError, match=r"later.csv has 1 missing .*row 3 .*data.interpolate=true.*reads only the "
                                         r"last 24 rows, which have none: give a file of the last rows"):
        dm.predict_item()
