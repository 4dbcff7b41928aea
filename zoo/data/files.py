"""Finding a dataset's files on disk."""

from __future__ import annotations

import os
import re
import warnings
from array import array
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np


def plain_paths(value):
    """``value`` with every ``os.PathLike`` in it (also inside dicts, lists and tuples) as its string."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value) is dict:
        return {k: plain_paths(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(plain_paths(v) for v in value)
    return value


class PathsAsText:
    """Mixin for a LightningModule / LightningDataModule: ``save_hyperparameters`` keeps a ``pathlib.Path`` argument
    (Python API) as its text, so the run's hparams.yaml reads back with ``yaml.safe_load`` (a Path dumps as a
    ``!!python/object`` tag) and checkpoints load weights-only. Put it before the Lightning class in the bases."""

    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        if frame is None:  # Lightning reads the arguments from the caller's frame: the __init__ calling us
            import inspect

            frame = inspect.currentframe().f_back
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        for name in ("_hparams", "_hparams_initial"):
            hp = getattr(self, name, None)
            if hp is not None:
                hp.update({k: plain_paths(v) for k, v in hp.items()})


class Strings:
    """Strings held as one UTF-8 blob with end offsets (numpy): no Python object per string, which a DataLoader worker
    reading it would copy (reference counts write to the objects' pages). Any ``str`` round-trips (surrogatepass:
    JSON may hold a lone surrogate, a file name an undecodable byte); indexed as a list is (negative from the end)."""

    def __init__(self, texts: Iterable[str]) -> None:
        ends, blob = array("q"), bytearray()  # no list of encoded strings beside the blob while it is built
        for t in texts:
            blob += t.encode("utf-8", "surrogatepass")
            ends.append(len(blob))
        self._ends = np.frombuffer(ends, dtype=np.int64).copy()
        self._blob = bytes(blob)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        n = len(self._ends)
        if not -n <= i < n:
            raise IndexError(f"string {i} out of range for {n} strings")
        i = int(i) % n
        start = int(self._ends[i - 1]) if i else 0
        return self._blob[start : int(self._ends[i])].decode("utf-8", "surrogatepass")


def walk_files(root: Path, hidden: Optional[list[Path]] = None) -> list[Path]:
    """Every file under ``root``, following linked folders (benchmark sets are often linked into one
    root) but each real folder once; sorted. Hidden files and folders below ``root`` (names starting with
    ``.``: ``.ipynb_checkpoints`` copies, macOS ``._name`` resource files, ``.git``) are left out; pass a list
    as ``hidden`` to get the files left out, so the caller can say so."""
    seen, out, hidden_dirs, broken = set(), [], [], []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        hidden_dirs.extend(Path(folder) / d for d in sorted(dirs) if d.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for p in (Path(folder) / f for f in files):
            if p.is_file():  # not a link to nothing
                if not p.name.startswith("."):
                    out.append(p)
                elif hidden is not None:
                    hidden.append(p)
            elif p.is_symlink() and not p.name.startswith("."):
                broken.append(p)
    if broken:  # a dataset linked in from a folder since moved: say so rather than read fewer files silently
        shown = ", ".join(str(p) for p in sorted(broken)[:3]) + (", ..." if len(broken) > 3 else "")
        warnings.warn(f"{len(broken)} link(s) under {root} point to nothing and are skipped: {shown}", stacklevel=2)
    # the hidden folders after the whole visible tree, with the same once-per-real-folder rule: a hidden link to a
    # folder that is read adds nothing, and hidden links back up the tree end (each hidden folder walked on its own
    # retraced the tree once per link at every level)
    for top in hidden_dirs if hidden is not None else ():
        for folder, dirs, files in os.walk(top, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            hidden.extend(p for p in (Path(folder) / f for f in files) if p.is_file())
    return sorted(out)


def refuse_other_separator(path: Path, columns: Sequence, what: str = "header") -> None:
    """A CSV read as one column whose name holds ``;`` or a tab (``'date;a;b'``) was written with another
    separator: a ``ValueError`` that names it and the conversion, rather than a missing-column error whose advice
    (set the column's name) does not help. ``what`` names the row ``columns`` is (a headerless file's first line)."""
    if len(columns) != 1:
        return
    header = str(columns[0])
    for ch, name, sep, note in ((";", "semicolons", "';'", " (with decimal=',' for decimal commas)"), ("\t", "tabs", "'\\t'", "")):
        if ch in header:
            raise ValueError(
                f"{path} separates its columns with {name} ({what} {header!r}); the file must be comma-separated: "
                f"convert it, e.g. pandas.read_csv(path, sep={sep}).to_csv(new_path, index=False){note}"
            )


def skip_excel_sep(path: Path, row: Sequence[str], decimal: bool = False) -> bool:
    """Whether ``row`` (a file's first row, split at commas) is Excel's ``sep=,`` line (its hint for reading the
    file back, written by "CSV" in some locales): no header and no data, to skip. A ``sep=`` line naming another
    separator is a ``ValueError`` naming it and the conversion (``decimal``: mention decimal commas for ``;``)."""
    m = re.fullmatch(r"sep=(.)", ",".join(row), flags=re.IGNORECASE | re.DOTALL)
    if m is None:
        return False
    sep = m.group(1)
    if sep != ",":
        raise ValueError(
            f"{path} starts with Excel's {'sep=' + sep!r} line: its columns are separated by {sep!r}; the file must be "
            f"comma-separated: convert it, e.g. pandas.read_csv(path, sep={sep!r}, skiprows=1"
            + (", decimal=','" if decimal and sep == ";" else "") + ").to_csv(new_path, index=False)"
        )
    return True


def refuse_binary(path: Path, what: str) -> None:
    """A ``ValueError`` naming the format of a spreadsheet workbook or Parquet file given where a CSV is read (its
    bytes otherwise read as "not UTF-8 text", whose advice, re-encode it, cannot help)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return  # the read proper says why
    suffix = Path(path).suffix.lower()
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1") or (head.startswith(b"PK\x03\x04") and suffix != ".zip"):
        kind, reader = ("an Excel workbook" if suffix in (".xls", ".xlsx", ".xlsm") or head[0] == 0xD0
                        else "a ZIP archive (an .xlsx / .ods workbook?)"), "read_excel"
    elif head.startswith(b"PAR1"):
        kind, reader = "a Parquet file", "read_parquet"
    else:
        return
    raise ValueError(f"{path} is {kind}, not a CSV {what}: save it as CSV (Excel: Save As, 'CSV UTF-8'), e.g. "
                     f"pandas.{reader}(path).to_csv(new_path, index=False)")


def say_hidden(hidden: list[Path], root: Path, what: str) -> None:
    """Warn that the ``hidden`` files under ``root`` (those of interest to the caller) were not read as ``what``."""
    if hidden:
        names = ", ".join(str(p.relative_to(root)) for p in sorted(hidden)[:3])
        warnings.warn(
            f"{len(hidden)} hidden file(s) under {root} not read as {what} ({names}{', ...' if len(hidden) > 3 else ''}): "
            "names starting with '.' (notebook checkpoints, macOS resource files) are skipped; rename them to include them",
            stacklevel=3,
        )


def read_utf8(path: Path, what: str, bom: bool = False) -> str:
    """The text of ``path`` as UTF-8 (bytes, not ``read_text``: newline translation would change it); with
    ``bom`` a leading byte-order mark is dropped. Another encoding is an error naming ``what`` and the file."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig" if bom else "utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what}: {path} is not valid UTF-8 (bad byte at offset {err.start}); re-encode it as UTF-8, "
            "e.g. iconv -f <its charset> -t utf-8"
        ) from err
