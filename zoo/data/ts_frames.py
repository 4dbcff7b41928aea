"""Reading and validating a time-series frame, and its dates (frequency, time features, future timestamps):
the Lightning-free part of the TS data, shared by the datamodules (:mod:`zoo.data.ts` re-exports it) and
``model.forecast``."""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from zoo.data.files import refuse_binary, refuse_other_separator, skip_excel_sep


# ---------------------------------------------------------------------------------------------
# Reading and validating a frame (shared by the datamodules and ``model.forecast``)
# ---------------------------------------------------------------------------------------------
def _advice(api: bool, cli: str, python: str) -> str:
    """An error's advice in the caller's terms: the config option (``data.*``) or the Python argument."""
    return python if api else cli


def read_ts_csv(path: str | Path, api: bool = False) -> pd.DataFrame:
    """Read a CSV file; a missing file raises ``FileNotFoundError`` naming it, a folder ``IsADirectoryError``.
    ``api``: the caller is ``model.forecast`` (advice names its arguments, not the ``data.*`` options)."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.csv"))
        raise IsADirectoryError(f"{path} is a folder, not a CSV file: "
                                + _advice(api, "pass data.path to the CSV itself", "pass the CSV file itself")
                                + (f" (this folder holds {', '.join(inside[:5])}{' ...' if len(inside) > 5 else ''})" if inside else ""))
    if path.exists() and not path.is_file():  # "not found" named a file that is there
        raise ValueError(f"{path} is not a regular file (a pipe, /dev/stdin or <(...) process substitution): it is "
                         "read more than once; save it to a file first (pandas reads .csv.gz / .zip files itself)")
    if not path.is_file():
        raise FileNotFoundError(
            f"time-series CSV {path} not found (working directory {Path.cwd()}); "
            + _advice(api, "pass data.path to a CSV", "pass a CSV") + " file with a date column followed by the variables"
        )
    refuse_binary(path, "file")
    first, skip = _first_row(path, 0), 0
    if skip_excel_sep(path, first, decimal=True):
        first, skip = _first_row(path, 1), 1
    try:
        # "date, v0, v1" (a space after each comma) names v0, v1
        df = pd.read_csv(path, skipinitialspace=True, skiprows=skip)
    except UnicodeDecodeError as exc:  # not "must be comma-separated": the separator may well be right
        raise ValueError(
            f"{path} is not UTF-8 text (bad byte at offset {exc.start}; Excel's 'Unicode Text' is UTF-16, its "
            "'CSV' cp1252); re-encode it as UTF-8, e.g. pandas.read_csv(path, encoding=<its encoding>)"
            ".to_csv(new_path, index=False)"
        ) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot parse {path} as CSV ({exc}); the file must be comma-separated with a header") from exc
    if not isinstance(df.index, pd.RangeIndex):
        df = _unshift(path, df)
    # the header as written (first): a config (or a model trained before skipinitialspace) may name " v1"
    if len(first) == len(df.columns):
        df.attrs[_WRITTEN] = {s: w for s, w in zip(df.columns, first) if w and s != w}
    refuse_other_separator(path, list(df.columns))  # not "no date column", advising data.date_col
    if _values_as_header(df.columns):
        # the first row was taken for the header: "no date column", whose advice (data.date_col = that timestamp)
        # then read the file with its first row dropped and the variables named by their first values
        raise ValueError(
            f"{path} has no header line: its first line {[str(c) for c in df.columns]} holds values, not column "
            "names; add a header such as 'date,<variable names>' (pandas: pd.read_csv(path, header=None, "
            "names=[...]).to_csv(new_path, index=False))"
        )
    # pandas names a second 'a' 'a.1': trained and exported under a name the file does not hold
    twice = [n for n, k in Counter(w.lstrip(" ") for w in first if w.lstrip(" ")).items() if k > 1]
    if twice:
        raise ValueError(f"{path} names column(s) {twice} more than once in its header; give each column its own "
                         "name (or remove the copies)")
    return df


def _first_row(path: Path, skip: int) -> list[str]:
    """The first row of the file after ``skip`` lines, as written (no renaming of repeated names, spaces kept);
    ``[]`` when it cannot be read (the full read says why)."""
    try:
        row = pd.read_csv(path, header=None, nrows=1, skiprows=skip, dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return []
    return [str(v) for v in row.iloc[0]] if len(row) else []


def _unshift(path: Path, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as its file's rows hold it when they have more fields than the header: pandas took the first field(s)
    of every row for an index and shifted the values one column to the left of their names (the dates in the index,
    the first variable's values under 'date'). A last field empty in every row (a separator ending each data row
    but not the header) is dropped; values there are an error naming the file."""
    extra, names = df.index.nlevels, list(df.columns)
    fields = pd.concat([df.index.to_frame(index=False), df.reset_index(drop=True)], axis=1, ignore_index=True)
    tail = fields.iloc[:, len(names):]
    if tail.notna().to_numpy().any():
        row = int(np.flatnonzero(tail.notna().any(axis=1).to_numpy())[0])
        raise ValueError(
            f"{path}: line {row + 2} holds {len(names) + extra} values but the header names {len(names)} columns "
            f"({names}); a value without a column (decimal commas such as 1,5 split a number in two: write "
            "decimal points or quote the values, or name every column in the header)"
        )
    out = fields.iloc[:, : len(names)]
    out.columns = names
    return out


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


# 1,000.5: a number written with thousands separators (not 0,125: a decimal comma)
_THOUSANDS = re.compile(r"[+-]?[1-9]\d{0,2}(,\d{3})+(\.\d*)?")

_WRITTEN = "zoo_header_as_written"  # df.attrs of read_ts_csv: {name read: name as written} where spaces were dropped


def _as_written(df: pd.DataFrame, asked: Sequence[Any]) -> pd.DataFrame:
    """``df`` with a column read without its leading spaces named as written where a name asked for is the
    written one (``data.target: " v1"`` for a header ``date, v0, v1``, as it was read before skipinitialspace)."""
    written = df.attrs.get(_WRITTEN) or {}
    if not any(w in asked and w not in df.columns for w in written.values()):
        return df
    # the whole header as written then, as before: not " v1" next to "v0"
    return df.rename(columns={s: w for s, w in written.items() if s in df.columns and w not in df.columns})


def _spaced(missing: Sequence[Any], available: Sequence[Any]) -> str:
    """A hint when a missing name is an available one but for surrounding spaces (`` v1`` for ``v1``)."""
    pairs = [(m, a) for m in missing for a in available if str(a) != str(m) and str(a).strip() == str(m).strip()]
    if not pairs:
        return ""
    shown = ", ".join(f"{a!r} for {m!r}" for m, a in pairs)
    if all(str(m) != str(m).strip() for m, _ in pairs):  # the names asked for carry the spaces, not the data's
        return f" (the names differ by spaces: {shown}; name them without the spaces)"
    return f" (the names differ by spaces: {shown}; strip them, e.g. df.columns = df.columns.str.strip())"


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
    api: bool = False,
    reads_last: Optional[int] = None,
) -> tuple[pd.DatetimeIndex, pd.DataFrame]:
    """Validate a raw frame; return its parsed dates and the numeric variables (float64).

    ``columns`` selects the variables (default: every column but the date). Raises ``ValueError``
    naming the problem for a missing date / target / selected column, unparsable or unordered dates,
    non-numeric or infinite values and missing values (unless ``interpolate``, which fills gaps
    linearly in time and extends the edge values outward). Dates: see :func:`parse_dates`. ``date_advice``
    ends the missing-date-column message (the default's advice is the CLI's; the Python API says its own).
    ``api``: the caller is ``model.forecast``, whose columns are the model's: advice names its arguments
    (``interpolate=True``, ``date_format=...``), not the ``data.*`` options.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    df = _as_written(df, [date_col, target, *(columns or [])])
    twice = set(df.columns[df.columns.duplicated()])
    if date_col not in df.columns:
        raise ValueError(
            f"no date column {date_col!r} in {source} (columns: {list(df.columns)}); {date_advice}"
            + _spaced([date_col], list(df.columns))
        )
    others = [c for c in df.columns if c != date_col]
    # before the columns: features S reads the target alone, a missing one is the target, not a data.columns entry
    if target is not None and target not in df.columns:
        raise ValueError(f"target column {target!r} not found in {source}; set data.target to one of {others}"
                         + _spaced([target], others))
    if columns is None:
        index_like = [c for c in others if is_index_like(c)]
        blank = [c for c in index_like if df[c].isna().all()]
        if blank:
            warnings.warn(f"{source}: column(s) {blank} have no name and no values (a comma ending every line leaves "
                          "an empty last column) and are left out", stacklevel=2)
        if len(blank) < len(index_like):
            warnings.warn(f"{source}: column(s) {[c for c in index_like if c not in blank]} look like a saved row "
                          "index and are left out; list them in data.columns to use them as variables", stacklevel=2)
        columns = [c for c in others if c not in index_like]
    else:
        columns = list(columns)
        absent = [c for c in columns if c not in df.columns]
        if absent:
            spaced = _spaced(absent, others)
            raise ValueError(
                f"column(s) {absent} not found in {source}; available: {others}" + spaced
                + ("" if spaced or not api else
                   f"; the model reads the variables it was trained on, {columns}: name the input's columns so if they "
                   "hold the same quantities (df.rename(columns={...})), or fine-tune it on these variables "
                   "(ForecastTask(pretrained=<this model>, data_info=...), --model.init_args.pretrained in the CLI)")
            )
    if target is not None and target not in columns:
        raise ValueError(f"target column {target!r} is not among the selected columns {columns}")
    if not columns:
        raise ValueError(f"{source} has no variables besides the date column {date_col!r}")
    used = [c for c in dict.fromkeys([date_col, *columns]) if c in twice]
    if used:  # df[c] is then a frame of both columns
        raise ValueError(f"column(s) {used} of {source} appear more than once; give each column its own name")

    dates = parse_dates(df[date_col], date_col=date_col, source=source, date_format=date_format, api=api)
    if len(dates) > 1:
        steps = np.diff(dates.asi8)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0]) + 1
            what = "repeats" if steps[i - 1] == 0 else "goes back in time"
            # one step on, less an hour: wall-clock times (no UTC offsets) as daylight saving ends, not disorder
            # (on a Sunday's small hours, when clocks turn back: a repeated hourly row elsewhere is a duplicate)
            turned_back = (i >= 2 and dates[i] - dates[i - 1] == dates[i - 1] - dates[i - 2] - pd.Timedelta(hours=1)
                           and dates[i].day_of_week == 6 and dates[i].hour < 4)
            advice = "sort the rows by date and remove duplicates"
            repeats = int((steps == 0).sum())
            if turned_back:
                advice = ("the clock turned back an hour, as local times do when daylight saving ends: give the dates "
                          f"their UTC offsets (read as UTC), e.g. df[{date_col!r}] = pd.to_datetime(df[{date_col!r}])"
                          ".dt.tz_localize('<your timezone>', ambiguous='infer') before saving, or write them in UTC")
            elif repeats >= 2 and 2 * repeats >= len(steps):
                # most rows share the previous row's date: dates without their times (a "Date,Time,..." layout), not
                # duplicates to remove (which left one row a day)
                clock = [c for c in df.columns if c != date_col and not pd.api.types.is_numeric_dtype(df[c])
                         and df[c].astype(str).str.strip().str.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d*)?)?").all()]
                # or long format, one row per date and series (date, store, sales): a text column that takes several
                # values within each date names the series, and a pivot gives one column per series. Such a key never
                # repeats within a date ((date, key) is unique: a status that takes on / off within a day is no key,
                # its pivot fails on duplicates) and takes fewer values than there are dates
                n_dates = df[date_col].nunique()
                keys = [] if clock else [
                    c for c in df.columns if c != date_col and not pd.api.types.is_numeric_dtype(df[c])
                    and 2 <= df[c].nunique() < n_dates and not df.duplicated([date_col, c]).any()
                    and (df.groupby(df[date_col].astype(str), sort=False)[c].nunique() > 1).mean() >= 0.5]
                values = [c for c in df.columns if c != date_col and c not in keys
                          and pd.api.types.is_numeric_dtype(df[c])]
                if clock:
                    advice = (f"{repeats} of {len(steps)} rows repeat the previous row's date: the dates lack their time "
                              f"of day, which column {clock[0]!r} holds: join them into one timestamp, e.g. "
                              f"df[{date_col!r}] = df[{date_col!r}] + ' ' + df.pop({clock[0]!r})")
                elif keys:
                    advice = (f"{repeats} of {len(steps)} rows repeat the previous row's date: the table is in long format, "
                              f"one row per date and {keys[0]!r}; make one column per series, e.g. "
                              f"df.pivot(index={date_col!r}, columns={keys[0]!r}, values={values[0] if values else '<value>'!r}"
                              ").reset_index()")
                else:
                    advice = (f"{repeats} of {len(steps)} rows repeat the previous row's date: the dates lack their time "
                              "of day: write full timestamps (date and time) in the date column")
            raise ValueError(f"date column {date_col!r} of {source} {what} at row {i} ({dates[i - 1]} -> {dates[i]}); "
                             + advice)

    values = {}
    for c in columns:
        col = df[c]
        if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
            num = pd.to_numeric(col, errors="coerce")
            wrong = num.isna() & col.notna()
            if wrong.any() or pd.api.types.is_bool_dtype(col):
                i = int(np.flatnonzero(wrong.to_numpy())[0]) if wrong.any() else 0
                if wrong.any() and col[wrong].astype(str).str.strip().str.fullmatch(_THOUSANDS.pattern).all():
                    raise ValueError(
                        f"column {c!r} of {source} is not numeric (value {col.iloc[i]!r} at row {i}, CSV line "
                        f"{i + 2}): its values have thousands separators, which are not read as numbers; remove them "
                        + _advice(api, "from the file, e.g. pd.read_csv(path, thousands=',').to_csv(new_path, "
                                  "index=False)", f"first, e.g. df[{c!r}] = df[{c!r}].str.replace(',', '').astype(float)")
                    )
                raise ValueError(
                    f"column {c!r} of {source} is not numeric (value {col.iloc[i]!r} at row {i}, CSV line {i + 2}); "
                    + _advice(api, "convert it to numbers or leave it out with data.columns",
                              "the model reads it as a variable: convert it to numbers")
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
                f"({dates[r]}); " + _advice(api, "set data.interpolate=true", "pass interpolate=True")
                + " to treat them as gaps, or clean the file"
            )
        frame = frame.mask(infinite)  # gaps, filled below

    missing = frame.isna()
    if missing.to_numpy().any():
        empty = [c for c in columns if missing[c].all()]
        if empty:
            raise ValueError(f"column(s) {empty} of {source} hold no values at all; "
                             + _advice(api, "remove them with data.columns", "the model reads them as variables"))
        if not interpolate:
            rows = np.flatnonzero(missing.to_numpy().any(axis=1))
            i = int(rows[0])
            c = next(c for c in columns if missing[c].iat[i])
            total = int(missing.to_numpy().sum())
            # a forecast reads only the last rows: a gap older than them (a long history's) need not be filled
            outside = (reads_last is not None and len(frame) >= reads_last
                       and int(rows[-1]) < len(frame) - reads_last)
            raise ValueError(
                f"{source} has {total} missing (NaN) value(s); the first is in column {c!r} at row {i} "
                f"({dates[i]}); " + _advice(api, "set data.interpolate=true", "pass interpolate=True")
                + " to fill gaps by linear interpolation, or clean the file"
                + (f"; the forecast reads only the last {reads_last} rows, which have none: "
                   + _advice(api, "give a file of the last rows", f"pass data.tail({reads_last})") if outside else "")
            )
        # linear in time, not in rows: a gap next to a missing row is weighted by the real spacing
        frame.index = dates
        frame = frame.interpolate(method="time", limit_direction="both")
        frame.index = pd.RangeIndex(len(frame))
    return dates, frame


def scale_values(
    values: np.ndarray, mean: np.ndarray, std: np.ndarray, *, columns: Sequence[Any], dates: pd.DatetimeIndex,
    source: str = "the data", first_row: int = 0, api: bool = False,
) -> np.ndarray:
    """``(values - mean) / std`` as float32 (the models' inputs); ``dates`` are the rows' own, ``first_row`` the
    first one's row number in ``source``.

    A value the scaling takes out of float32's range is an error naming its column, row and date: a finite but
    huge value (1e300, a placeholder or a typo) overflowed the training rows' variance (a "constant" column then,
    scaled by 1) or float32, and the model trained and forecast on infinities (NaN losses and forecasts)."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = ((values - mean) / std).astype(np.float32)
    bad = ~np.isfinite(scaled)
    if not bad.any():
        return scaled
    c = int(np.flatnonzero(bad.any(axis=0))[0])
    r = int(np.argmax(np.abs(values[:, c])))  # the culprit: the column's largest value, not its first scaled row
    with np.errstate(over="ignore", invalid="ignore"):
        overflowed = std[c] == 1.0 and not np.isfinite(values[:, c].var())
    raise ValueError(
        f"column {columns[c]!r} of {source} holds a value too large to scale: {values[r, c]:g} at row "
        f"{first_row + r} ({dates[r]}); standardized by the training rows' mean {float(mean[c]):.4g} and std "
        f"{float(std[c]):.4g}" + (" (their variance overflows float64, so the column counts as constant)" if overflowed
                                   else "")
        + ", its values leave float32's range (about 3.4e38): the model would "
        + _advice(api, "train and forecast on", "forecast from") + " infinities; a value this size is usually a "
        "placeholder or a typo: fix it, or blank it and "
        + _advice(api, "set data.interpolate=true", "pass interpolate=True")
        + (" (or rescale the column, e.g. to other units)" if overflowed else "")
    )


# ---------------------------------------------------------------------------------------------
# Dates: parsing, frequency, time features, future timestamps
# ---------------------------------------------------------------------------------------------
def _date_format_hint(api: bool = False) -> str:
    return (_advice(api, "set data.date_format", "pass date_format")
            + " (e.g. '%d/%m/%Y %H:%M' for day-first dates; Python strptime codes)")


DATE_FORMAT_HINT = _date_format_hint()


def parse_dates(
    raw: pd.Series, *, date_col: str = "date", source: str = "the data", date_format: Optional[str] = None,
    api: bool = False,
) -> pd.DatetimeIndex:
    """The timestamps of a date column.

    With ``date_format`` every value must match it. Without, pandas infers one layout from the
    first value (month-first when ambiguous); values it cannot read are retried as ISO 8601, so
    midnight written as a bare date (``2016-07-01`` among ``2016-07-01 01:00:00``) is fine.
    Timestamps with UTC offsets (which change across daylight saving) are converted to UTC and kept
    as naive UTC times, except daily or coarser ones written as text at one time of day, which keep their written
    (wall-clock) times (see :func:`_wall_clock_days`). Numbers are refused (they are not timestamps without a unit) unless
    ``date_format`` reads their digits (``%Y%m%d``).
    """
    numbers = pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_datetime64_any_dtype(raw)
    if numbers and date_format is not None:
        raw = raw.astype(str)  # 20160701 read as a number: date_format (%Y%m%d) reads its digits
    elif numbers:
        lo, hi = raw.min(), raw.max()
        if 10000 <= lo and hi < 100000:  # 1927..2173 as days since Excel's epoch; no year, %Y%m%d or epoch seconds
            raise ValueError(
                f"date column {date_col!r} of {source} holds numbers (e.g. {raw.iloc[0]}), not timestamps: they look "
                "like Excel serial day numbers (a date column not formatted as dates; 43831 is 2020-01-01); format "
                "the column as dates in Excel before saving, or convert them: "
                f"df[{date_col!r}] = pd.to_datetime(df[{date_col!r}], unit='D', origin='1899-12-30').dt.round('s') "
                "(rounded: a fraction of a day in binary is off by microseconds)"
            )
        raise ValueError(
            f"date column {date_col!r} of {source} holds numbers (e.g. {raw.iloc[0]}), not timestamps; "
            + _advice(api, "set data.date_format", "pass date_format")
            + " to read their digits (e.g. '%Y' for years such as 1990, '%Y%m%d' for 20160701), convert them first "
            "(epoch seconds: pd.to_datetime(values, unit='s')) or "
            + _advice(api, "point data.date_col at the timestamps", f"put the timestamps in {date_col!r}")
        )

    def parse(**kw: Any) -> pd.Series:
        try:
            return pd.to_datetime(raw, errors="coerce", **kw)
        except (ValueError, TypeError) as exc:  # mixed UTC offsets across daylight saving, mostly
            if kw.get("utc"):
                raise ValueError(f"date column {date_col!r} of {source} cannot be parsed ({exc}); "
                                 f"{_date_format_hint(api)}") from exc
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
        option = _advice(api, "data.date_format", "date_format")
        layout = f"does not match {option} {date_format!r}" if date_format else "is unparsable or empty"
        first = int(np.flatnonzero(dates.notna().to_numpy())[0]) if dates.notna().any() else None
        if (date_format is None and first is not None and _shape(raw.iloc[i]) != _shape(raw.iloc[first])
                and _alone_a_date(raw.iloc[i])):
            # a timestamp in another layout than the first one's (pandas reads a column in one layout): one
            # data.date_format cannot read both, which the advice to set one sent the user around in circles for
            raise ValueError(
                f"date column {date_col!r} of {source} mixes layouts: value {raw.iloc[i]!r} at row {i} (CSV line "
                f"{i + 2}) is written otherwise than {raw.iloc[first]!r} at row {first}, whose layout the column is "
                "read in; write every date in one layout, e.g. df[" + repr(date_col) + "] = pd.to_datetime(df["
                + repr(date_col) + "], format='mixed') (which reads 04/11/2021 month-first: convert day-first rows with "
                "their own format, e.g. pd.to_datetime(values, format='%d/%m/%Y'))"
                + ("" if api else " and save the file again")
            )
        raise ValueError(
            f"date column {date_col!r} of {source} {layout}: value {raw.iloc[i]!r} at row {i} (CSV line {i + 2}); "
            f"fix the timestamp or remove the row" + ("" if date_format else f", or {_date_format_hint(api)}")
        )
    dates = pd.DatetimeIndex(dates)
    if dates.tz is not None:
        utc = dates.tz_convert("UTC").tz_localize(None)
        dates = _wall_clock_days(raw, utc)
        if dates is None:
            dates = utc
    return dates


def _wall_clock_days(raw: pd.Series, utc: pd.DatetimeIndex) -> Optional[pd.DatetimeIndex]:
    """Daily (or coarser) timestamps written with UTC offsets, as written (their wall-clock times), or None.

    ``df.to_csv`` writes a timezone-aware daily series as local midnights with offsets ('2021-01-01 00:00:00+01:00');
    read in UTC they were the previous day's 23:00 (22:00 in summer): every calendar feature a day early, the steps
    23 or 25 hours across daylight-saving changes (warned as irregular), the forecast stamped at 22:00 / 23:00. A
    sub-daily series stays in UTC, where its hours neither repeat nor go missing; so do written times of day that
    differ (no one local clock)."""
    if len(utc) < 2 or pd.api.types.is_datetime64_any_dtype(raw) or (utc[1:] - utc[:-1]).min() < pd.Timedelta(hours=23):
        return None
    # the instants as the column was read, moved by each row's written offset (none or Z: 0). Each value parsed again
    # alone was read month-first (01/02/2021 of a day-first column as January 2: rows out of order), at 1 ms a row
    parts = raw.astype(str).str.strip().str.extract(r"([+-])(\d{2}):?(\d{2})$")
    sign = np.where(parts[0] == "-", -1, 1)
    minutes = (parts[1].fillna("0").astype(int) * 60 + parts[2].fillna("0").astype(int)) * sign
    wall = pd.DatetimeIndex(utc + pd.to_timedelta(minutes.to_numpy(), unit="min"), name=utc.name)
    return wall if (wall - wall.normalize()).nunique() == 1 else None


def _shape(value: Any) -> str:
    """A timestamp's layout: its runs of digits and of letters as 9 and a (``13/01/2021`` and ``10/01/2021`` alike:
    one layout read month-first, which data.date_format fixes; ``2021-01-01`` and ``04/11/2021`` not)."""
    return re.sub(r"[A-Za-z]+", "a", re.sub(r"[0-9]+", "9", str(value).strip()))


def _alone_a_date(value: Any) -> bool:
    """Whether pandas reads ``value`` alone as a timestamp (a date in a layout of its own)."""
    if not isinstance(value, str) or not any(ch.isdigit() for ch in value):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "could not infer format": a single value is read by dateutil
            return pd.to_datetime(value) is not pd.NaT
    except (ValueError, TypeError, OverflowError):
        return False


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


def _semi_month(dates: pd.DatetimeIndex) -> Optional[str]:
    """``'SMS'`` for dates on the 1st and 15th of the month, ``'SME'`` on the 15th and the month's last day (at
    midnight); ``None`` otherwise."""
    if len(dates) < 3 or (dates != dates.normalize()).any():
        return None
    if set(dates.day) == {1, 15}:
        return "SMS"
    if (dates.is_month_end | (dates.day == 15)).all() and dates.is_month_end.any() and (dates.day == 15).any():
        return "SME"
    return None


def _off_steps(dates: pd.DatetimeIndex, freq: str) -> int:
    """How many consecutive pairs of ``dates`` are not one ``freq`` step apart."""
    offset = to_offset(freq)
    with warnings.catch_warnings():  # calendar offsets (B, MS) are applied element by element, which pandas notes
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        return int(((dates[:-1] + offset) != dates[1:]).sum())


FREQ_CHUNK = 8  # dates per stretch when a series with gaps is read stretch by stretch


def infer_freq(dates: pd.DatetimeIndex, api: bool = False) -> str:
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
        # calendar steps: the stretches' vote, one day of the month every k months (no pandas alias for it), and
        # twice a month (pandas' infer_freq knows no semi-month offset: 1st / 15th data was read as 336h-spaced)
        calendars = [c for c in (votes.most_common(1)[0][0] if votes else None, _same_day_months(head),
                                 _semi_month(head)) if c]
        if calendars:
            calendar = min(calendars, key=lambda c: _off_steps(head, c))
            if _off_steps(head, calendar) <= _off_steps(head, freq):
                freq, n_odd = calendar, _off_steps(dates, calendar)
    if n_odd:
        warnings.warn(
            f"{n_odd} of {len(dates) - 1} time steps differ from the series' step {freq} (missing rows, a "
            f"daylight-saving gap, or day-first dates read month-first: {_date_format_hint(api)}); the series is "
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


_SECOND = ["second_of_minute", "minute_of_hour", "hour_of_day", "day_of_week", "day_of_month", "day_of_year"]
# (unit, the timeF features of Time-Series-Library for a series stepped in it), largest unit first
_UNIT_FEATURES = (
    (pd.Timedelta(days=28), ["month_of_year"]),
    (pd.Timedelta(days=7), ["day_of_month", "week_of_year"]),
    (pd.Timedelta(days=1), _SECOND[3:]),
    (pd.Timedelta(hours=1), _SECOND[2:]),
    (pd.Timedelta(minutes=1), _SECOND[1:]),
)
_TICKS = ("Day", "Hour", "Minute", "Second", "Milli", "Micro", "Nano")  # pandas' fixed-length offsets


def time_feature_names(freq: str) -> list[str]:
    """The ``timeF`` features of Time-Series-Library for a series of frequency ``freq``.

    A fixed step takes the features of the largest unit it is a whole number of, as the reference picks them by
    the class of pandas' offset for it: ``36h`` is hours (its rows alternate midnight and noon), ``90min`` minutes,
    ``24h`` (a daily series with gaps) days; calendar steps (business days, weeks, months...) by their length."""
    step = _step(freq)
    if type(to_offset(freq)).__name__ in _TICKS:  # a tick offset is at most days: no week or month features
        units = [(u, names) for u, names in _UNIT_FEATURES if u <= pd.Timedelta(days=1) and step % u == pd.Timedelta(0)]
    else:
        units = [(u, names) for u, names in _UNIT_FEATURES if step >= u]
    return list(units[0][1] if units else _SECOND)


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


__all__ = [
    "DATE_FORMAT_HINT",
    "FREQ_CHUNK",
    "future_dates",
    "infer_freq",
    "irregular_steps",
    "is_index_like",
    "parse_dates",
    "prepare_frame",
    "read_ts_csv",
    "same_spacing",
    "scale_values",
    "time_feature_names",
    "time_features",
    "to_offset",
]
