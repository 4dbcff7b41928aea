"""Finding a dataset's files on disk."""

from __future__ import annotations

import os
from pathlib import Path


def walk_files(root: Path) -> list[Path]:
    """Every file under ``root``, following linked folders (benchmark sets are often linked into one
    root) but each real folder once; sorted."""
    seen, out = set(), []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to the same folder
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        out.extend(p for p in (Path(folder) / f for f in files) if p.is_file())  # not a link to nothing
    return sorted(out)


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
