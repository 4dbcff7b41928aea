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
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.data.samplers import eval_sampler, pin_memory_for
from zoo.data import ts_frames
from zoo.data.ts_frames import (  # noqa: F401 (Lightning-free, for model.forecast; re-exported here)
    DATE_FORMAT_HINT,
    FREQ_CHUNK,
    _step,
    future_dates,
    infer_freq,
    irregular_steps,
    is_index_like,
    parse_dates,
    prepare_frame,
    read_ts_csv,
    same_spacing,
    scale_values,
    time_feature_names,
    time_features,
    to_offset,
)

__all__ = [
    "CSVTSDataModule", "SyntheticTSDataModule", "TSDataModule", "WindowDataset", "compute_borders", "fit_scaler",
    "make_synthetic_frame", *ts_frames.__all__,
]

FEATURES = ("M", "S", "MS")
SPLITS = ("auto", "ett_hour", "ett_minute", "ratio")
# the ETT protocols' row step: their 12/4/4 "months" of 30 days are counted in rows of this step
_ETT_STEPS = {"ett_hour": pd.Timedelta(hours=1), "ett_minute": pd.Timedelta(minutes=15)}
_ETT_MONTH = pd.Timedelta(days=30)
_DEFAULT_RATIOS = (0.7, 0.1, 0.2)


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
    """Mean and population std per column; a constant column's std becomes 1, as scikit-learn's StandardScaler.

    Constant as scikit-learn tells it (``_is_constant_feature``): a variance within float rounding of zero, since
    ``np.full(n, 0.1).std()`` is 1.4e-17, not 0 (dividing by it scaled the column to 1.0 and a later 0.2 to 7e15)."""
    with np.errstate(over="ignore", invalid="ignore"):  # a huge value overflows: scale_values names it
        mean = values.mean(axis=0)
        var = values.var(axis=0)
        eps, n = np.finfo(np.float64).eps, len(values)
        constant = var <= n * eps * var + (n * mean * eps) ** 2
    std = np.where(constant, 1.0, np.sqrt(var))
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
        del df  # the raw frame (its dates as text): freed before the scaled copies are made, not after
        columns = list(frame.columns)
        split = resolve_split(self.split, self.source_name)
        if split in _ETT_STEPS and self.ratios != _DEFAULT_RATIOS:
            # the ETT protocols count months; data.ratios would have been dropped without a word
            chosen = "data.split: auto (the file's name)" if self.split == "auto" else f"data.split: {split}"
            raise ValueError(
                f"data.ratios {list(self.ratios)} split by fractions, but {chosen} selects the {split} protocol "
                f"(12/4/4 months) for {self.source_name}, which takes no ratios; set data.split: ratio to split by "
                "data.ratios, or leave data.ratios unset for the ETT protocol"
            )
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
        scaled = scale_values(values, mean, std, columns=columns, dates=dates, source=self.source_name)
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
                interpolate=self.interpolate, source=source, date_format=self.date_format, reads_last=self.lookback,
            )
            values = frame.to_numpy(dtype=np.float64)
            self._say_other_spacing(dates, p["freq"], source)
        if len(values) < self.lookback:
            raise ValueError(
                f"too few rows in {source} to forecast: {len(values)} rows but lookback is {self.lookback}"
            )
        x = scale_values(values[-self.lookback :], p["mean"], p["std"], columns=p["columns"],
                         dates=dates[-self.lookback :], source=source, first_row=len(values) - self.lookback)
        item: dict[str, Any] = {"x": torch.from_numpy(x), "last_date": str(dates[-1]),
                                # the window's own timestamps (ns since the epoch): a file with missing rows is
                                # plotted at its real dates, not at a regular range ending on the last one
                                "history_dates": torch.from_numpy(pd.DatetimeIndex(dates[-self.lookback :]).as_unit("ns").asi8.copy())}
        if p["time_feature_names"]:
            item["x_mark"] = torch.from_numpy(time_features(dates[-self.lookback :], p["time_feature_names"]))
        return item

    def _say_other_spacing(self, dates: pd.DatetimeIndex, freq: str, source: str) -> None:
        """Warn when the predict file is spaced otherwise than the data (as model.forecast(df) does): its rows were
        read as ``freq`` steps of history and the forecast stamped at ``freq`` after its last date."""
        if len(dates) < 2 or ts_frames._off_steps(dates, freq) == 0:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the file's own gaps are not what is said here
                own = infer_freq(dates)
        except ValueError:
            return
        if not same_spacing(own, freq):
            warnings.warn(
                f"data.predict_path {source} is {own}-spaced but {self.source_name} (the model's data) is {freq}-spaced: "
                f"its rows are read as {freq} steps of history and the forecast is of {freq} steps after its last date; "
                f"resample it to {freq}", stacklevel=3,
            )

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
