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
        out.extend(Path(folder) / f for f in files)
    return sorted(out)
