"""Finding a dataset's files on disk."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional


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


def refuse_other_separator(path: Path, columns: list) -> None:
    """A CSV read as one column whose name holds ``;`` or a tab (``'date;a;b'``) was written with another
    separator: a ``ValueError`` that names it and the conversion, rather than a missing-column error whose advice
    (set the column's name) does not help."""
    if len(columns) != 1:
        return
    header = str(columns[0])
    for ch, name, sep, note in ((";", "semicolons", "';'", " (with decimal=',' for decimal commas)"), ("\t", "tabs", "'\\t'", "")):
        if ch in header:
            raise ValueError(
                f"{path} separates its columns with {name} (header {header!r}); the file must be comma-separated: "
                f"convert it, e.g. pandas.read_csv(path, sep={sep}).to_csv(new_path, index=False){note}"
            )


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
