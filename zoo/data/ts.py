"""Time-series forecasting data: CSV files in the standard benchmark layout, and a synthetic generator.

A CSV holds a date column (``date`` by default) followed by the variables, one row per time step,
as the ETT / Electricity / Weather files of the long-term-forecasting benchmarks. Windows of
``lookback`` rows are the input, the next ``horizon`` rows the target.

Splits follow the standard protocol (Informer / iTransformer / Time-Series-Library ``data_loader.py``):

* ``ett_hour``: train / val / test = the first 12 / next 4 / next 4 months of 30 days x 24 rows,
  i.e. rows ``[0, 8640)``, ``[8640 - L, 11520)``, ``[11520 - L, 14400)`` with ``L = lookback``
  (the validation and test inputs may reach back into the previous split; their targets never do).
* ``ett_minute``: the same months at 15-minute resolution (all borders x 4).
* ``ratio``: ``n_train = int(0.7 n)``, ``n_test = int(0.2 n)``, ``n_val = n - n_train - n_test``;
  rows ``[0, n_train)``, ``[n_train - L, n_train + n_val)``, ``[n - n_test - L, n)``.
* ``auto`` (default): ``ett_hour`` for files named ``ETTh*``, ``ett_minute`` for ``ETTm*``, else ``ratio``.

The ETT protocols count months in rows, so they refuse a series of another step (hourly / 15-minute).

The standard scaler (mean and population std, as scikit-learn's ``StandardScaler``) is fitted on the
training rows only and applied to every split. Features: ``M`` (all variables to all), ``S`` (the
target alone to itself), ``MS`` (all variables to the target). Optional time features encode the
date as in Time-Series-Library's ``timeF`` embedding (each in ``[-0.5, 0.5]``).

Batches are dicts: ``x`` ``[B, lookback, n_vars]``, ``y`` ``[B, horizon, n_out]`` (scaled) and, with
time features, ``x_mark`` ``[B, lookback, n_time_features]``. Predict batches hold the last
``lookback`` rows of the file (``x``, ``x_mark``), ``last_date`` (a string) and ``history_dates`` (the
rows' timestamps, int64 nanoseconds since the epoch).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.files import refuse_other_separator
from zoo.data.samplers import eval_sampler, pin_memory_for

__all__ = [
    "CSVTSDataModule",
    "SyntheticTSDataModule",
    "TSDataModule",
    "WindowDataset",
    "compute_borders",
    "fit_scaler",
    "future_dates",
    "infer_freq",
    "make_synthetic_frame",
    "prepare_frame",
    "read_ts_csv",
    "same_spacing",
    "time_feature_names",
    "time_features",
    "to_offset",
]

FEATURES = ("M", "S", "MS")
SPLITS = ("auto", "ett_hour", "ett_minute", "ratio")
# the ETT protocols' row step: their 12/4/4 "months" of 30 days are counted in rows of this step
_ETT_STEPS = {"ett_hour": pd.Timedelta(hours=1), "ett_minute": pd.Timedelta(minutes=15)}
_ETT_MONTH = pd.Timedelta(days=30)


# ---------------------------------------------------------------------------------------------
# Reading and validating a frame (shared by the datamodules and ``model.forecast``)
# ---------------------------------------------------------------------------------------------
def read_ts_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV file; a missing file raises ``FileNotFoundError`` naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"time-series CSV {path} not found (working directory {Path.cwd()}); pass data.path to a CSV "
            "file with a date column followed by the variables"
        )
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot parse {path} as CSV ({exc}); the file must be comma-separated with a header") from exc
    refuse_other_separator(path, list(df.columns))  # not "no date column", advising data.date_col
    if _values_as_header(df.columns):
        # the first row was taken for the header: "no date column", whose advice (data.date_col = that timestamp)
        # then read the file with its first row dropped and the variables named by their first values
        raise ValueError(
            f"{path} has no header line: its first line {[str(c) for c in df.columns]} holds values, not column "
            "names; add a header such as 'date,<variable names>' (pandas: pd.read_csv(path, header=None, "
            "names=[...]).to_csv(new_path, index=False))"
        )
    return df


def _values_as_header(columns: Sequence[Any]) -> bool:
    """Whether a header holds only numbers and timestamps, at least one timestamp (a file written without one)."""
    def number(name: str) -> bool:
        try:
            return math.isfinite(float(name))
        except ValueError:
            return False

    def timestamp(name: str) -> bool:  # digits required: 'Jan' or 'now' parse as timestamps but are names
        if not any(ch.isdigit() for ch in name):
            return False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pd.Timestamp(name) is not pd.NaT
        except (ValueError, TypeError, OverflowError):
            return False

    def kind(name: str) -> Optional[str]:
        return "timestamp" if timestamp(name) else "number" if number(name) else None

    names = [str(c) for c in columns]
    # pandas renames a repeated header value '0.0' to '0.0.1' (a first row with two equal values)
    kinds = [kind(n) or kind(re.sub(r"\.[1-9][0-9]*$", "", n)) for n in names]
    return len(names) >= 2 and all(kinds) and "timestamp" in kinds


def is_index_like(column: Any) -> bool:
    """pandas names a saved row index (``df.to_csv`` without ``index=False``) or the empty column after a
    trailing comma ``Unnamed: <k>``: no variable."""
    return str(column).startswith("Unnamed: ")


def prepare_frame(
    df: pd.DataFrame,
    *,
    date_col: str = "date",
    columns: Optional[Sequence[str]] = None,
    target: Optional[str] = None,
    interpolate: bool = False,
    source: str = "the data",
    date_format: Optional[str] = None,
    date_advice: str = "set data.date_col to the column holding the timestamps, or add one",
) -> tuple[pd.DatetimeIndex, pd.DataFrame]:
    """Validate a raw frame; return its parsed dates and the numeric variables (float64).

    ``columns`` selects the variables (default: every column but the date). Raises ``ValueError``
    naming the problem for a missing date / target / selected column, unparsable or unordered dates,
    non-numeric or infinite values and missing values (unless ``interpolate``, which fills gaps
    linearly in time and extends the edge values outward). Dates: see :func:`parse_dates`. ``date_advice``
    ends the missing-date-column message (the default's advice is the CLI's; the Python API says its own).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if date_col not in df.columns:
        raise ValueError(
            f"no date column {date_col!r} in {source} (columns: {list(df.columns)}); {date_advice}"
        )
    others = [c for c in df.columns if c != date_col]
    if columns is None:
        index_like = [c for c in others if is_index_like(c)]
        if index_like:
            warnings.warn(f"{source}: column(s) {index_like} look like a saved row index and are left out; "
                          "list them in data.columns to use them as variables", stacklevel=2)
        columns = [c for c in others if c not in index_like]
    else:
        columns = list(columns)
        absent = [c for c in columns if c not in df.columns]
        if absent:
            raise ValueError(f"column(s) {absent} not found in {source}; available: {others}")
    if target is not None and target not in df.columns:
        raise ValueError(f"target column {target!r} not found in {source}; set data.target to one of {others}")
    if target is not None and target not in columns:
        raise ValueError(f"target column {target!r} is not among the selected columns {columns}")
    if not columns:
        raise ValueError(f"{source} has no variables besides the date column {date_col!r}")

    dates = parse_dates(df[date_col], date_col=date_col, source=source, date_format=date_format)
    if len(dates) > 1:
        steps = np.diff(dates.asi8)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0]) + 1
            what = "repeats" if steps[i - 1] == 0 else "goes back in time"
            raise ValueError(
                f"date column {date_col!r} of {source} {what} at row {i} ({dates[i - 1]} -> {dates[i]}); "
                "sort the rows by date and remove duplicates"
            )

    values = {}
    for c in columns:
        col = df[c]
        if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
            num = pd.to_numeric(col, errors="coerce")
            wrong = num.isna() & col.notna()
            if wrong.any() or pd.api.types.is_bool_dtype(col):
                i = int(np.flatnonzero(wrong.to_numpy())[0]) if wrong.any() else 0
                raise ValueError(
                    f"column {c!r} of {source} is not numeric (value {col.iloc[i]!r} at row {i}, CSV line {i + 2}); "
                    "convert it to numbers or leave it out with data.columns"
                )
            col = num
        values[c] = col.astype("float64")
    frame = pd.DataFrame(values)
    frame.index = pd.RangeIndex(len(frame))
    infinite = np.isinf(frame.to_numpy())
    if infinite.any():
        r, c = (int(v[0]) for v in np.nonzero(infinite))
        if not interpolate:
            raise ValueError(
                f"{source} has {int(infinite.sum())} infinite value(s); the first is in column {columns[c]!r} at row {r} "
                f"({dates[r]}); set data.interpolate=true to treat them as gaps, or clean the file"
            )
        frame = frame.mask(infinite)  # gaps, filled below

    missing = frame.isna()
    if missing.to_numpy().any():
        empty = [c for c in columns if missing[c].all()]
        if empty:
            raise ValueError(f"column(s) {empty} of {source} hold no values at all; remove them with data.columns")
        if not interpolate:
            c = next(c for c in columns if missing[c].any())
            i = int(np.flatnonzero(missing[c].to_numpy())[0])
            total = int(missing.to_numpy().sum())
            raise ValueError(
                f"{source} has {total} missing (NaN) value(s); the first is in column {c!r} at row {i} "
                f"({dates[i]}); set data.interpolate=true to fill gaps by linear interpolation, or clean the file"
            )
        # linear in time, not in rows: a gap next to a missing row is weighted by the real spacing
        frame.index = dates
        frame = frame.interpolate(method="time", limit_direction="both")
        frame.index = pd.RangeIndex(len(frame))
    return dates, frame


# ---------------------------------------------------------------------------------------------
# Dates: parsing, frequency, time features, future timestamps
# ---------------------------------------------------------------------------------------------
DATE_FORMAT_HINT = "set data.date_format (e.g. '%d/%m/%Y %H:%M' for day-first dates; Python strptime codes)"


def parse_dates(
    raw: pd.Series, *, date_col: str = "date", source: str = "the data", date_format: Optional[str] = None
) -> pd.DatetimeIndex:
    """The timestamps of a date column.

    With ``date_format`` every value must match it. Without, pandas infers one layout from the
    first value (month-first when ambiguous); values it cannot read are retried as ISO 8601, so
    midnight written as a bare date (``2016-07-01`` among ``2016-07-01 01:00:00``) is fine.
    Timestamps with UTC offsets (which change across daylight saving) are converted to UTC and kept
    as naive UTC times. Numbers are refused (they are not timestamps without a unit) unless
    ``date_format`` reads their digits (``%Y%m%d``).
    """
    numbers = pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_datetime64_any_dtype(raw)
    if numbers and date_format is not None:
        raw = raw.astype(str)  # 20160701 read as a number: date_format (%Y%m%d) reads its digits
    elif numbers:
        raise ValueError(
            f"date column {date_col!r} of {source} holds numbers (e.g. {raw.iloc[0]}), not timestamps; set "
            "data.date_format to read their digits (e.g. '%Y' for years such as 1990, '%Y%m%d' for 20160701), convert "
            "them first (epoch seconds: pd.to_datetime(values, unit='s')) or point data.date_col at the timestamps"
        )

    def parse(**kw: Any) -> pd.Series:
        try:
            return pd.to_datetime(raw, errors="coerce", **kw)
        except (ValueError, TypeError) as exc:  # mixed UTC offsets across daylight saving, mostly
            if kw.get("utc"):
                raise ValueError(f"date column {date_col!r} of {source} cannot be parsed ({exc}); {DATE_FORMAT_HINT}") from exc
            return parse(**kw, utc=True)

    if date_format is not None:
        dates = parse(format=date_format)
    else:
        dates = parse()
        if dates.isna().any() and raw[dates.isna()].notna().any():
            iso = parse(format="ISO8601")
            if int(iso.isna().sum()) < int(dates.isna().sum()):
                dates = iso
    if dates.isna().any():
        i = int(np.flatnonzero(dates.isna().to_numpy())[0])
        layout = f"does not match data.date_format {date_format!r}" if date_format else "is unparsable or empty"
        raise ValueError(
            f"date column {date_col!r} of {source} {layout}: value {raw.iloc[i]!r} at row {i} (CSV line {i + 2}); "
            f"fix the timestamp or remove the row" + ("" if date_format else f", or {DATE_FORMAT_HINT}")
        )
    dates = pd.DatetimeIndex(dates)
    if dates.tz is not None:
        dates = dates.tz_convert("UTC").tz_localize(None)
    return dates


def irregular_steps(dates: pd.DatetimeIndex) -> tuple[int, Optional[pd.Timedelta]]:
    """``(number of steps that differ from the most common one, that step)``."""
    if len(dates) < 3:
        return 0, None
    steps = dates.to_series().diff().iloc[1:]
    step = steps.mode().iloc[0]
    return int((steps != step).sum()), step


def _pandas_freq(dates: pd.DatetimeIndex) -> Optional[str]:
    """``pd.infer_freq`` as a string (``None`` for irregular dates)."""
    try:  # pandas >= 3 announces offsets instead of strings; ask for them and take freqstr
        with pd.option_context("future.infer_freq_returns_offset", True):
            freq = pd.infer_freq(dates)
    except (KeyError, pd.errors.OptionError):
        freq = pd.infer_freq(dates)
    return getattr(freq, "freqstr", freq)


_MONTHS = re.compile(r"^DateOffset\(months=([1-9][0-9]*)\)$")


def to_offset(freq: str) -> pd.DateOffset:
    """The pandas offset of a frequency string: a pandas alias (``'h'``, ``'MS'``...), or
    ``'DateOffset(months=k)'`` (the same day of the month every ``k`` months, e.g. monthly data dated on the 15th,
    which no pandas alias names)."""
    m = _MONTHS.match(freq)
    return pd.DateOffset(months=int(m.group(1))) if m else pd.tseries.frequencies.to_offset(freq)


def _same_day_months(dates: pd.DatetimeIndex) -> Optional[str]:
    """``'DateOffset(months=k)'`` when every date falls on one day of the month (28th or before) at one time of
    day and ``k`` months is the most common step; ``None`` otherwise."""
    if len(dates) < 3 or dates.day.nunique() != 1 or dates[0].day > 28 or (dates - dates.normalize()).nunique() != 1:
        return None
    months = np.diff(np.asarray(dates.year) * 12 + np.asarray(dates.month))
    k = int(pd.Series(months).mode().iloc[0])
    return f"DateOffset(months={k})" if k >= 1 else None


def _off_steps(dates: pd.DatetimeIndex, freq: str) -> int:
    """How many consecutive pairs of ``dates`` are not one ``freq`` step apart."""
    offset = to_offset(freq)
    with warnings.catch_warnings():  # calendar offsets (B, MS) are applied element by element, which pandas notes
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        return int(((dates[:-1] + offset) != dates[1:]).sum())


FREQ_CHUNK = 8  # dates per stretch when a series with gaps is read stretch by stretch


def infer_freq(dates: pd.DatetimeIndex) -> str:
    """Pandas frequency string of regular ``dates`` (``'h'``, ``'15min'``, ``'D'``, ``'MS'``, ``'B'``...), or
    ``'DateOffset(months=k)'`` for dates on one day of the month every ``k`` months (see :func:`to_offset`).

    A series with gaps (missing rows, holidays) is read stretch by stretch: the frequency most of its
    gap-free stretches have, so calendar steps (month starts, business days) survive a gap; a fixed
    step (the most common one) when that explains the series better. Either way the gaps are warned about.
    """
    if len(dates) < 2:
        raise ValueError("need at least two timestamps to infer the series frequency")
    head = dates[: min(len(dates), 1000)]
    freq = _pandas_freq(head) if len(head) >= 3 else None
    # the head is regular: rows missing after it are still counted (and warned about) below
    n_odd = _off_steps(dates[len(head) - 1 :], freq) if freq is not None else 0
    if freq is None:
        # the steps as Timedeltas: raw integers would be in the index's unit (pandas 3 parses strings at
        # microsecond resolution), which pd.Timedelta(int) would read as nanoseconds
        n_odd, step = irregular_steps(dates)
        freq = pd.tseries.frequencies.to_offset(step if step is not None else dates[1] - dates[0]).freqstr
        votes = Counter(f for s in range(0, len(head) - 2, FREQ_CHUNK)
                        if (f := _pandas_freq(head[s : s + FREQ_CHUNK])) is not None)
        # calendar steps: the stretches' vote, and one day of the month every k months (no pandas alias for it)
        calendars = [c for c in (votes.most_common(1)[0][0] if votes else None, _same_day_months(head)) if c]
        if calendars:
            calendar = min(calendars, key=lambda c: _off_steps(head, c))
            if _off_steps(head, calendar) <= _off_steps(head, freq):
                freq, n_odd = calendar, _off_steps(dates, calendar)
    if n_odd:
        warnings.warn(
            f"{n_odd} of {len(dates) - 1} time steps differ from the series' step {freq} (missing rows, a "
            f"daylight-saving gap, or day-first dates read month-first: {DATE_FORMAT_HINT}); the series is "
            f"taken as {freq}-spaced",
            stacklevel=2,
        )
    return freq


def same_spacing(a: str, b: str) -> bool:
    """Whether frequency strings ``a`` and ``b`` step alike (``'24h'`` and ``'D'`` do; ``'MS'`` and ``'744h'`` do not)."""
    off_a, off_b = (to_offset(f) for f in (a, b))
    if off_a == off_b:
        return True
    start = pd.Timestamp("2001-01-31")  # a month end: month-based offsets move by different days from here on
    return all(x == y for x, y in zip(pd.date_range(start, periods=14, freq=off_a), pd.date_range(start, periods=14, freq=off_b)))


def _step(freq: str) -> pd.Timedelta:
    start = pd.Timestamp("2001-01-01")
    rng = pd.date_range(start, periods=2, freq=to_offset(freq))
    return rng[1] - rng[0]


def time_feature_names(freq: str) -> list[str]:
    """The ``timeF`` features of Time-Series-Library for a series of frequency ``freq``."""
    step = _step(freq)
    if step < pd.Timedelta(minutes=1):
        return ["second_of_minute", "minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"]
    if step < pd.Timedelta(hours=1):
        return ["minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"]
    if step < pd.Timedelta(days=1):
        return ["hour_of_day", "day_of_week", "day_of_month", "day_of_year"]
    if step < pd.Timedelta(days=7):
        return ["day_of_week", "day_of_month", "day_of_year"]
    if step < pd.Timedelta(days=28):
        return ["day_of_month", "week_of_year"]
    return ["month_of_year"]


def time_features(dates: pd.DatetimeIndex, names: Sequence[str]) -> np.ndarray:
    """``[len(dates), len(names)]`` float32 calendar features, each scaled to ``[-0.5, 0.5]``."""
    d = pd.DatetimeIndex(dates)
    table = {
        "second_of_minute": lambda: d.second / 59.0,
        "minute_of_hour": lambda: d.minute / 59.0,
        "hour_of_day": lambda: d.hour / 23.0,
        "day_of_week": lambda: d.day_of_week / 6.0,
        "day_of_month": lambda: (d.day - 1) / 30.0,
        "day_of_year": lambda: (d.day_of_year - 1) / 365.0,
        "month_of_year": lambda: (d.month - 1) / 11.0,
        "week_of_year": lambda: (d.isocalendar().week.to_numpy() - 1) / 52.0,
    }
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown time features {unknown}; known: {sorted(table)}")
    if not names:
        return np.zeros((len(d), 0), dtype=np.float32)
    return np.stack([np.asarray(table[n](), dtype=np.float64) - 0.5 for n in names], axis=1).astype(np.float32)


def future_dates(last: pd.Timestamp | str, horizon: int, freq: str) -> pd.DatetimeIndex:
    """The ``horizon`` timestamps after ``last`` at frequency ``freq`` (from the first one after ``last``, also
    when ``last`` is off the frequency's calendar: a Saturday in business days)."""
    offset = to_offset(freq)
    return pd.date_range(pd.Timestamp(last) + offset, periods=horizon, freq=offset)


# ---------------------------------------------------------------------------------------------
# Splits and scaling
# ---------------------------------------------------------------------------------------------
def resolve_split(split: str, source_name: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"data.split must be one of {SPLITS}, got {split!r}")
    if split != "auto":
        return split
    stem = Path(source_name).name.lower()
    if stem.startswith("etth"):
        return "ett_hour"
    if stem.startswith("ettm"):
        return "ett_minute"
    return "ratio"


def compute_borders(
    n_rows: int, lookback: int, split: str = "ratio", ratios: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of the train / val / test splits (see the module docstring)."""
    if split in _ETT_STEPS:
        per_month = _ETT_MONTH // _ETT_STEPS[split]
        tr, va, te = 12 * per_month, 4 * per_month, 4 * per_month
        if n_rows < tr + va + te:
            raise ValueError(
                f"the {split} protocol (12/4/4 months) needs {tr + va + te} rows but the data has {n_rows}; "
                "set data.split: ratio for other files"
            )
        return {"train": (0, tr), "val": (tr - lookback, tr + va), "test": (tr + va - lookback, tr + va + te)}
    if split != "ratio":
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"data.ratios must be three positive fractions summing to 1, got {list(ratios)}")
    r_train, _, r_test = ratios
    n_train, n_test = int(n_rows * r_train), int(n_rows * r_test)
    n_val = n_rows - n_train - n_test
    return {
        "train": (0, n_train),
        "val": (max(n_train - lookback, 0), n_train + n_val),
        "test": (max(n_rows - n_test - lookback, 0), n_rows),
    }


def fit_scaler(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std per column (a zero std becomes 1, as scikit-learn's StandardScaler)."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
class WindowDataset(Dataset):
    """Sliding windows over one split: ``x = rows[i : i+L]``, ``y = rows[i+L : i+L+H, out_idx]``."""

    def __init__(
        self,
        data: np.ndarray,
        lookback: int,
        horizon: int,
        out_idx: Sequence[int],
        marks: Optional[np.ndarray] = None,
    ) -> None:
        self.data = torch.as_tensor(np.ascontiguousarray(data), dtype=torch.float32)
        self.target = self.data[:, list(out_idx)].contiguous()
        self.marks = None if marks is None or marks.shape[1] == 0 else torch.as_tensor(marks, dtype=torch.float32)
        self.lookback, self.horizon = lookback, horizon

    def __len__(self) -> int:
        return max(len(self.data) - self.lookback - self.horizon + 1, 0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        L, H = self.lookback, self.horizon
        item = {"x": self.data[i : i + L], "y": self.target[i + L : i + L + H]}
        if self.marks is not None:
            item["x_mark"] = self.marks[i : i + L]
        return item


class _PredictDataset(Dataset):
    def __init__(self, item: dict[str, Any]) -> None:
        self.item = item

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.item


# ---------------------------------------------------------------------------------------------
# Datamodules
# ---------------------------------------------------------------------------------------------
class TSDataModule(L.LightningDataModule):
    """Shared windowing / splitting / scaling over a frame; subclasses say where the frame comes from."""

    source_name = "data"

    def __init__(
        self,
        lookback: int = 96,
        horizon: int = 96,
        features: str = "M",
        target: Optional[str] = None,
        columns: Optional[list[str]] = None,
        date_col: str = "date",
        split: str = "auto",
        ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
        time_features: bool = False,
        interpolate: bool = False,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        predict_path: Optional[str] = None,
        drop_last: bool = True,
        date_format: Optional[str] = None,
    ) -> None:
        super().__init__()
        for name, value, low in (("lookback", lookback, 1), ("horizon", horizon, 1), ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"data.{name} must be an integer >= {low}, got {value!r}")
        if features not in FEATURES:
            raise ValueError(
                f"data.features must be one of {FEATURES} (M: all->all, S: target->target, MS: all->target), "
                f"got {features!r}"
            )
        if split not in SPLITS:
            raise ValueError(f"data.split must be one of {SPLITS}, got {split!r}")
        if columns is not None:
            repeated = sorted({c for c in columns if list(columns).count(c) > 1})
            if repeated:
                raise ValueError(f"data.columns names {repeated} more than once; list each column once")
        self.lookback, self.horizon, self.features = lookback, horizon, features
        self.target, self.columns, self.date_col = target, columns, date_col
        self.split, self.ratios = split, tuple(ratios)
        self.use_time_features, self.interpolate = time_features, interpolate
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.predict_path = num_workers, predict_path
        self.drop_last, self.date_format = drop_last, date_format
        self._prep: Optional[dict[str, Any]] = None
        self._data_info: Optional[dict[str, Any]] = None

    # -- subclasses
    def load_frame(self) -> pd.DataFrame:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- preparation (lazy, once)
    def _select_columns(self, df: pd.DataFrame) -> tuple[Optional[list[str]], Optional[str]]:
        """Columns to read and the target, following the features mode."""
        target = self.target
        if self.features in ("S", "MS") and target is None:
            candidates = [c for c in (self.columns or df.columns) if c != self.date_col
                          and (self.columns is not None or not is_index_like(c))]
            target = candidates[-1] if candidates else None  # Time-Series-Library convention: target last
        if self.features == "S" and (self.columns is None or target in self.columns):
            return ([target] if target is not None else self.columns), target
        return self.columns, target

    def prepared(self) -> dict[str, Any]:
        """Validated, split and scaled arrays (computed at first use, then cached)."""
        if self._prep is not None:
            return self._prep
        df = self.load_frame()
        columns, target = self._select_columns(df)
        dates, frame = prepare_frame(
            df, date_col=self.date_col, columns=columns, target=target, interpolate=self.interpolate,
            source=self.source_name, date_format=self.date_format,
        )
        columns = list(frame.columns)
        split = resolve_split(self.split, self.source_name)
        need = self.lookback + self.horizon
        if len(frame) < need:  # before the frequency, which a file of 0 or 1 rows has none of
            raise ValueError(
                f"too few rows in {self.source_name}: {len(frame)} rows but lookback + horizon = {self.lookback} + "
                f"{self.horizon} = {need} rows are needed for one window; use a longer series or a shorter "
                "data.lookback / data.horizon"
            )
        freq = infer_freq(dates)
        protocol_step = _ETT_STEPS.get(split)
        if protocol_step is not None and _step(freq) != protocol_step:
            # the protocol's months are counted in rows: at another step they are not months
            chosen = "data.split: auto (the file's name)" if self.split == "auto" else f"data.split: {split}"
            raise ValueError(
                f"{chosen} selects the {split} protocol (12/4/4 months of {protocol_step} rows) but {self.source_name} "
                f"is {freq}-spaced; set data.split: {'ett_minute' if split == 'ett_hour' else 'ett_hour'} or ratio "
                "to match the data"
            )
        borders = compute_borders(len(frame), self.lookback, split, self.ratios)
        for name, (b1, b2) in borders.items():
            if b2 - b1 < need:
                raise ValueError(
                    f"too few rows in {self.source_name}: the {name} split has {b2 - b1} rows (rows [{b1}, {b2}) of "
                    f"{len(frame)}) but lookback + horizon = {self.lookback} + {self.horizon} = {need} rows are needed "
                    "for one window; use a longer series or a shorter data.lookback / data.horizon"
                )
        values = frame.to_numpy(dtype=np.float64)
        tr0, tr1 = borders["train"]
        mean, std = fit_scaler(values[tr0:tr1])
        scaled = ((values - mean) / std).astype(np.float32)
        tf_names = time_feature_names(freq) if self.use_time_features else []
        marks = time_features(dates, tf_names) if tf_names else None
        target_index = columns.index(target) if target is not None else None
        out_idx = list(range(len(columns))) if self.features == "M" else [target_index]
        self._prep = dict(
            dates=dates, values=values, scaled=scaled, marks=marks, columns=columns, target=target,
            target_index=target_index, out_idx=out_idx, mean=mean, std=std, borders=borders, split=split,
            freq=freq, time_feature_names=tf_names,
        )
        return self._prep

    @property
    def data_info(self) -> dict[str, Any]:
        """JSON-able facts the model needs (variables, scaler, lookback, horizon, frequency...)."""
        if self._data_info is None:
            p = self.prepared()
            self._data_info = {
                "kind": "ts",
                "source": self.source_name,
                "n_vars": len(p["columns"]),
                "n_out": len(p["out_idx"]),
                "columns": list(p["columns"]),
                "out_columns": [p["columns"][i] for i in p["out_idx"]],
                "out_index": list(p["out_idx"]),
                "target": p["target"],
                "target_index": p["target_index"],
                "features": self.features,
                "lookback": self.lookback,
                "horizon": self.horizon,
                "date_col": self.date_col,
                "date_format": self.date_format,
                "freq": p["freq"],
                "time_features": list(p["time_feature_names"]),
                "n_time_features": len(p["time_feature_names"]),
                "mean": [float(v) for v in p["mean"]],
                "std": [float(v) for v in p["std"]],
                "split": p["split"],
                "borders": {k: [int(a), int(b)] for k, (a, b) in p["borders"].items()},
                "n_rows": int(len(p["values"])),
            }
        return self._data_info

    def dataset(self, split: str) -> WindowDataset:
        """The windows of ``split`` (train / val / test)."""
        p = self.prepared()
        b1, b2 = p["borders"][split]
        marks = p["marks"][b1:b2] if p["marks"] is not None else None
        return WindowDataset(p["scaled"][b1:b2], self.lookback, self.horizon, p["out_idx"], marks)

    def predict_item(self) -> dict[str, Any]:
        """The last ``lookback`` rows (of ``predict_path`` when set) as one scaled input window."""
        p = self.prepared()
        if self.predict_path is None:
            dates, values = p["dates"], p["values"]
            source = self.source_name
        else:
            source = str(self.predict_path)
            dates, frame = prepare_frame(
                read_ts_csv(self.predict_path), date_col=self.date_col, columns=p["columns"],
                interpolate=self.interpolate, source=source, date_format=self.date_format,
            )
            values = frame.to_numpy(dtype=np.float64)
        if len(values) < self.lookback:
            raise ValueError(
                f"too few rows in {source} to forecast: {len(values)} rows but lookback is {self.lookback}"
            )
        x = ((values[-self.lookback :] - p["mean"]) / p["std"]).astype(np.float32)
        item: dict[str, Any] = {"x": torch.from_numpy(x), "last_date": str(dates[-1]),
                                # the window's own timestamps (ns since the epoch): a file with missing rows is
                                # plotted at its real dates, not at a regular range ending on the last one
                                "history_dates": torch.from_numpy(pd.DatetimeIndex(dates[-self.lookback :]).as_unit("ns").asi8.copy())}
        if p["time_feature_names"]:
            item["x_mark"] = torch.from_numpy(time_features(dates[-self.lookback :], p["time_feature_names"]))
        return item

    # -- Lightning hooks
    def setup(self, stage: Optional[str] = None) -> None:
        self.prepared()

    def _loader(self, ds: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False,
                sampler: Optional[Any] = None) -> DataLoader:
        return DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle if sampler is None else None, sampler=sampler,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, drop_last=drop_last,
            pin_memory=pin_memory_for(self.trainer),
        )

    def train_dataloader(self) -> DataLoader:
        # The reference loaders drop the last incomplete training batch (on ETTh1 a batch of a single
        # window, which would otherwise weigh as much as a full one in its step). A training split with
        # fewer windows than one batch keeps its one short batch instead of training on nothing.
        ds = self.dataset("train")
        drop = self.drop_last and len(ds) >= self.batch_size
        if self.drop_last and not drop:
            warnings.warn(
                f"the training split has {len(ds)} windows, fewer than data.batch_size = {self.batch_size}: "
                "training on one short batch per epoch (data.drop_last needs at least one full batch)",
                stacklevel=2,
            )
        return self._loader(ds, self.batch_size, True, drop)

    def _eval_loader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        # under DDP: every window on one rank once (summed metrics)
        return self._loader(ds, self.eval_batch_size, False, sampler=eval_sampler(ds, self.trainer, split))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        ds = _PredictDataset(self.predict_item())
        # one window: on several processes Lightning's predict sampler would leave a rank without it
        sampler = eval_sampler(ds, self.trainer, "predict", advice="a forecast is one window: predict on one process "
                               "(--trainer.devices=1)")
        return DataLoader(ds, batch_size=1, sampler=sampler)


class CSVTSDataModule(TSDataModule):
    """Forecasting windows from a CSV file (a date column, then the variables).

    Args:
        path: the CSV file (e.g. ``../shared/data/ett/ETTh1.csv``).
        lookback: input rows per window (L).
        horizon: forecast rows per window (H).
        features: ``M`` (all variables to all), ``S`` (target only), ``MS`` (all variables to the target).
        target: target column for ``S`` / ``MS`` (default: the last column, the benchmarks' convention).
        columns: variables to use (default: every column except the date).
        date_col: name of the timestamp column.
        split: ``auto`` | ``ett_hour`` | ``ett_minute`` | ``ratio`` (see the module docstring).
        ratios: train / val / test fractions for ``split: ratio``.
        time_features: add calendar features of the dates (``x_mark``).
        interpolate: fill missing values by linear interpolation instead of raising.
        batch_size: training batch size.
        eval_batch_size: validation / test batch size (default ``batch_size``).
        num_workers: DataLoader worker processes.
        predict_path: CSV whose last ``lookback`` rows ``predict`` forecasts from (default ``path``).
        drop_last: drop the last incomplete training batch, as the reference loaders do (validation and
            test always use every window).
        date_format: strptime layout of the date column (e.g. ``%d/%m/%Y %H:%M``); default: inferred,
            month-first when ambiguous (:func:`parse_dates`). Saved with the model for its forecasts.
    """

    def __init__(
        self,
        path: str,
        lookback: int = 96,
        horizon: int = 96,
        features: str = "M",
        target: Optional[str] = None,
        columns: Optional[list[str]] = None,
        date_col: str = "date",
        split: str = "auto",
        ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
        time_features: bool = False,
        interpolate: bool = False,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        predict_path: Optional[str] = None,
        drop_last: bool = True,
        date_format: Optional[str] = None,
    ) -> None:
        super().__init__(
            lookback, horizon, features, target, columns, date_col, split, ratios, time_features, interpolate,
            batch_size, eval_batch_size, num_workers, predict_path, drop_last, date_format,
        )
        self.path = path
        self.source_name = str(path)

    def load_frame(self) -> pd.DataFrame:
        return read_ts_csv(self.path)


# ---------------------------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------------------------
def make_synthetic_frame(
    n_rows: int = 4000,
    n_vars: int = 5,
    seed: int = 0,
    freq: str = "h",
    start: str = "2020-01-01",
    noise: float = 0.3,
) -> pd.DataFrame:
    """A multivariate series with trends, several seasonalities, cross-variate lags and noise.

    Variable ``v0`` is a driver (daily + weekly cycles, a slow trend, a random-period cycle); every
    further variable ``vj`` mixes its own cycles and trend with a copy of ``v(j-1)`` delayed by a
    few steps, plus AR(1) noise. Deterministic for a given ``seed``.
    """
    if n_rows < 2 or n_vars < 1:
        raise ValueError(f"n_rows must be >= 2 and n_vars >= 1, got {n_rows}, {n_vars}")
    rng = np.random.default_rng(seed)
    t = np.arange(n_rows, dtype=np.float64)
    step_hours = _step(freq) / pd.Timedelta(hours=1)
    day, week = 24.0 / step_hours, 168.0 / step_hours  # periods in rows
    out = np.zeros((n_rows, n_vars))
    for j in range(n_vars):
        a_day, a_week, a_other = rng.uniform(0.5, 2.0), rng.uniform(0.2, 1.0), rng.uniform(0.1, 0.6)
        period = rng.uniform(8.0, 60.0)
        phases = rng.uniform(0, 2 * math.pi, size=3)
        trend = rng.uniform(-1.0, 1.0) * t / n_rows + rng.uniform(-0.5, 0.5) * (t / n_rows) ** 2
        season = (
            a_day * np.sin(2 * math.pi * t / day + phases[0])
            + a_week * np.sin(2 * math.pi * t / week + phases[1])
            + a_other * np.sin(2 * math.pi * t / period + phases[2])
        )
        eps = rng.normal(0.0, noise, size=n_rows)
        ar = np.zeros(n_rows)
        for i in range(1, n_rows):
            ar[i] = 0.7 * ar[i - 1] + eps[i]
        series = season + trend + ar
        if j > 0:
            lag = int(rng.integers(1, 13))
            lagged = np.concatenate([np.full(lag, out[0, j - 1]), out[:-lag, j - 1]])
            series = series + rng.uniform(0.4, 0.9) * lagged
        out[:, j] = series * rng.uniform(0.5, 3.0) + rng.uniform(-5, 5)
    frame = pd.DataFrame(out, columns=[f"v{j}" for j in range(n_vars)])
    frame.insert(0, "date", pd.date_range(start, periods=n_rows, freq=to_offset(freq)))
    return frame


class SyntheticTSDataModule(TSDataModule):
    """The embedded default: a synthetic multivariate series (see :func:`make_synthetic_frame`).

    Splits 0.7 / 0.1 / 0.2 of the rows; other arguments as :class:`CSVTSDataModule`.

    Args:
        n_rows: series length.
        n_vars: number of variables (``v0`` ... ``v{n-1}``; the target defaults to the last).
        seed: generator seed (the data is a pure function of the arguments).
        freq: pandas frequency of the timestamps.
        start: first timestamp.
        noise: standard deviation of the innovations of the AR(1) noise.
    """

    source_name = "synthetic"

    def __init__(
        self,
        n_rows: int = 4000,
        n_vars: int = 5,
        seed: int = 0,
        freq: str = "h",
        start: str = "2020-01-01",
        noise: float = 0.3,
        lookback: int = 96,
        horizon: int = 96,
        features: str = "M",
        target: Optional[str] = None,
        time_features: bool = False,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
        drop_last: bool = True,
    ) -> None:
        super().__init__(
            lookback, horizon, features, target, None, "date", "ratio", ratios, time_features, False,
            batch_size, eval_batch_size, num_workers, None, drop_last,
        )
        self.gen_args = dict(n_rows=n_rows, n_vars=n_vars, seed=seed, freq=freq, start=start, noise=noise)
        self.source_name = "synthetic(" + ", ".join(f"{k}={v}" for k, v in self.gen_args.items()) + ")"

    def load_frame(self) -> pd.DataFrame:
        return make_synthetic_frame(**self.gen_args)
