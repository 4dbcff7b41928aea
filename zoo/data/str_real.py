"""Real scene-text data: LMDB in the PARSeq layout, image folders with a labels file, an LMDB
builder, and RandAugment-style augmentation.

LMDB layout (PARSeq / ASTER / deep-text-recognition-benchmark): keys ``num-samples`` (decimal
count), ``image-%09d`` (encoded image bytes) and ``label-%09d`` (UTF-8 text), 1-based. A root
folder may hold several LMDBs (any depth); each one is a set of its own.

Image folder: ``labels.txt`` (``path<TAB>text`` or ``path text`` per line: the first whitespace
splits), ``labels.csv`` (a header naming one path column, ``path`` / ``image`` / ``filename`` / ``file_name``, and
one text column, ``text`` / ``label``, in any order among others; two of either are refused as ambiguous; or two
columns; Excel's ``sep=,`` first line is skipped), an ICDAR ``gt.txt`` (``word_1.png, "Tired"``; a name with spaces
ends in an image extension or is quoted) or Hugging Face's ``metadata.csv`` (``file_name`` / ``text`` columns). Paths
are relative to the folder; an image named in the other Unicode form (composed / decomposed accents), or with
Windows' backslashes as separators (``train\\img_1.png``), is found.

Build an LMDB:  ``python -m zoo.data.str_real build IMAGE_FOLDER OUT_LMDB [--labels labels.txt]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
import unicodedata
import warnings
from array import array
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import Dataset

from zoo.data.charsets import Charset, NormStats
from zoo.data.files import Strings, read_utf8, refuse_other_separator, say_hidden, skip_excel_sep, walk_files


# ---------------------------------------------------------------------------------------------
# LMDB
# ---------------------------------------------------------------------------------------------
def _open_env(path: Path):
    import lmdb

    if not (path / "data.mdb").is_file():
        raise FileNotFoundError(f"{path} is not an LMDB folder (no data.mdb); build one with `python -m zoo.data.str_real build`")
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=32)
    except lmdb.Error as exc:
        raise ValueError(f"cannot open LMDB {path} ({exc}); the database is corrupt, rebuild it") from exc
    try:
        # a data.mdb cut short (an interrupted copy or download) opens, and the first read past its end kills the
        # process with SIGBUS: its header (the meta page) says how many pages a complete file holds
        need, have = (env.info()["last_pgno"] + 1) * env.stat()["psize"], (path / "data.mdb").stat().st_size
    except lmdb.Error as exc:
        env.close()
        raise ValueError(f"cannot read LMDB {path} ({exc}); the database is corrupt, rebuild it") from exc
    if have < need:
        env.close()
        raise ValueError(f"LMDB {path} is truncated: its data.mdb holds {have} bytes of the {need} its header says; "
                         "the copy or download was cut short: copy it again, or rebuild it")
    return env


# one read-only handle per LMDB folder: python-lmdb refuses to open a path that is open already in the
# process (two datasets over one LMDB: train == val, a root and one of its LMDBs, fit then test)
_ENVS: dict[str, tuple[int, Any, Any]] = {}  # real path -> (pid, data.mdb stamp, handle)


def _stamp(path: Path) -> Any:
    """Identity of the database file: a rebuilt LMDB at the same path gets a new handle."""
    try:
        st = (path / "data.mdb").stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _shared_env(path: Path):
    """The process's handle on the LMDB at ``path`` (opened on first use, reopened when the file changed)."""
    key, stamp = os.path.realpath(path), _stamp(path)
    entry = _ENVS.pop(key, None)
    if entry is not None and (entry[0] != os.getpid() or entry[1] != stamp):
        # inherited through fork (DataLoader workers: not ours to use, and it blocks a new open until closed),
        # or the database was rebuilt or removed since
        try:
            entry[2].close()
        except Exception:  # noqa: BLE001 -- a handle that cannot close is dropped all the same
            pass
        entry = None
    if entry is None:
        entry = (os.getpid(), stamp, _open_env(path))
    _ENVS[key] = entry
    return entry[2]


class LMDBDataset(Dataset):
    """One PARSeq-layout LMDB; labels are normalized up front (skips counted in ``stats``).

    The kept samples are held in numpy arrays (their keys, and their normalized labels as
    :class:`~zoo.data.files.Strings`), not a Python list: a DataLoader worker touching a list's tuples and
    strings copies them (reference counts write to their pages), which for MJSynth + SynthText (15M samples,
    ~2 GB of tuples) cost that again in every worker. Images are decoded lazily; an undecodable image raises naming the key.
    """

    def __init__(self, path: str | Path, charset: Charset) -> None:
        import lmdb

        self.path, self.charset = Path(path), charset
        self.stats = NormStats()
        env = _shared_env(self.path)
        keys = array("q")  # image-%09d key of each kept sample
        # a label read before gives the same text and counts: MJSynth's 9M crops spell ~90k words
        seen: dict[bytes, Optional[str]] = {}  # raw label -> normalized, None when skipped
        again: dict[bytes, int] = {}  # how often a remembered label was read again (counted in stats below)

        def kept(txn: Any, n: int):
            """The normalized labels of the kept samples, in key order (their keys appended to ``keys``)."""
            for i in range(1, n + 1):
                label = txn.get(b"label-%09d" % i)
                if label is None:
                    zero = " (it holds label-000000000: its keys are 0-based)" if txn.get(_KEY0) is not None else ""
                    raise ValueError(
                        f"LMDB {self.path} says num-samples={n} but has no key label-{i:09d}{zero}; wrong layout "
                        "(keys must be 1-based, zero-padded to 9 digits) or truncated database"
                    )
                text = seen.get(label, _UNSEEN)
                if text is _UNSEEN:
                    text = self.charset.normalize(label.decode("utf-8", errors="replace"), self.stats)
                    if len(seen) < _LABEL_MEMO:
                        seen[label] = text
                else:
                    again[label] = again.get(label, 0) + 1
                if text is not None:
                    keys.append(i)
                    yield text

        try:
            with env.begin() as txn:
                raw = txn.get(b"num-samples")
                if raw is None:
                    raise ValueError(
                        f"LMDB {self.path} has no 'num-samples' key: it is not in the PARSeq layout "
                        "(num-samples, image-%09d, label-%09d, 1-based)"
                    )
                try:
                    n = int(raw.decode())
                except ValueError as exc:
                    raise ValueError(f"LMDB {self.path}: 'num-samples' is {raw[:20]!r}, not an integer; the database is corrupt") from exc
                if n < 0:
                    raise ValueError(f"LMDB {self.path}: 'num-samples' is {n}; the database is corrupt")
                self._labels = Strings(kept(txn, n))
                count, first = _unread_labels(txn, n)
        except lmdb.Error as exc:
            raise ValueError(f"cannot read LMDB {self.path} ({exc}); the database is corrupt, rebuild it") from exc
        if count:
            # PARSeq's reader ignores them too, but silently: a 0-based LMDB whose num-samples is its last key lost
            # its first sample, one whose num-samples is too small lost its tail
            shown = ", ".join(k.decode(errors="replace") for k in first) + (", ..." if count > len(first) else "")
            warnings.warn(
                f"LMDB {self.path} holds {count} label key(s) that the PARSeq layout (keys label-000000001 .. "
                f"label-{n:09d} for num-samples={n}) never reads: {shown}; those samples are skipped. Rebuild the LMDB "
                "(`python -m zoo.data.str_real build`) or correct num-samples to read them", stacklevel=2,
            )
        for label, times in again.items():  # each read counts, as if normalized again
            one = NormStats()
            self.charset.normalize(label.decode("utf-8", errors="replace"), one)
            self.stats.merge(one, times)
        self.keys = np.frombuffer(keys, dtype=np.int64).copy()

    def __len__(self) -> int:
        return len(self.keys)

    def label(self, k: int) -> str:
        """The normalized label of sample ``k`` (no image read)."""
        return self._labels[self._position(k)]

    def _position(self, k: int) -> int:
        n = len(self.keys)
        if not -n <= k < n:
            raise IndexError(f"sample {k} out of range for {n} samples of LMDB {self.path}")
        return int(k) % n

    def __getitem__(self, k: int) -> tuple[Image.Image, str]:
        from zoo.data.str import load_image

        k = self._position(k)
        text, i = self._labels[k], int(self.keys[k])
        with _shared_env(self.path).begin() as txn:  # per process (DataLoader workers), shared by datasets
            data = txn.get(b"image-%09d" % i)
        if data is None:
            raise ValueError(f"LMDB {self.path} lacks key image-{i:09d} although label-{i:09d} exists; rebuild the database")
        try:
            return load_image(bytes(data)), text
        except ValueError as exc:
            raise ValueError(f"LMDB {self.path}, image-{i:09d}: {exc}") from exc


_LABEL_MEMO = 1 << 18  # distinct raw labels whose normalization an LMDB scan remembers
_UNSEEN = object()
_KEY0 = b"label-%09d" % 0


def _unread_labels(txn: Any, n: int) -> tuple[int, list[bytes]]:
    """How many ``label-%09d`` keys lie outside ``1..n`` (``label-000000000``, or past ``num-samples``: samples an
    LMDB holds that its layout does not read), and the first three. Only counted past those (a num-samples that
    reads a subset of MJSynth's 9M keys walks them without holding them)."""
    count, first = 0, []
    if txn.get(_KEY0) is not None:
        count, first = 1, [_KEY0]
    cursor = txn.cursor()
    if cursor.set_range(b"label-%09d" % (n + 1)):  # nine-digit keys sort as their numbers do
        for key in cursor.iternext(values=False):
            if not key.startswith(b"label-"):
                break
            count += 1
            if len(first) < 3:
                first.append(bytes(key))
    return count, first


def find_lmdbs(root: str | Path) -> list[Path]:
    """Every LMDB folder (holding ``data.mdb``) under ``root``, sorted."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} not found")
    return _lmdb_folders(_root_files(root))


def _root_files(root: Path) -> list[Path]:
    """The files under ``root`` (walk_files), saying which hidden LMDBs are left out."""
    hidden: list[Path] = []
    files = walk_files(root, hidden)
    say_hidden([p for p in hidden if p.name == "data.mdb"], root, "LMDBs")
    return files


def _lmdb_folders(files: list[Path]) -> list[Path]:
    return sorted({p.parent for p in files if p.name == "data.mdb"})


# ---------------------------------------------------------------------------------------------
# Image folder + labels file
# ---------------------------------------------------------------------------------------------
# an image folder's labels file, first found (metadata.csv: Hugging Face's imagefolder layout, file_name / text columns)
LABEL_FILES = ("labels.txt", "labels.csv", "gt.txt", "metadata.csv")
_PATH_COLUMNS, _TEXT_COLUMNS = ("path", "image", "filename", "file_name"), ("text", "label")


def read_labels(folder: str | Path, labels: Optional[str | Path] = None) -> list[tuple[str, str]]:
    """``(relative path, text)`` pairs from ``labels.txt``, ``labels.csv`` or an ICDAR ``gt.txt``
    (``word_1.png, "Tired"``, a quote inside a label escaped as ``\\"``) in ``folder`` (or ``labels``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} " + ("is a file, not a folder" if folder.exists()
                                                              else "does not exist"))
    if labels and not Path(labels).is_file():
        raise FileNotFoundError(f"labels file {labels} " + ("is a folder, not a file" if Path(labels).exists()
                                                            else "does not exist"))
    found = [n for n in LABEL_FILES if (folder / n).is_file()]
    if not labels and len(found) > 1:  # reading the first could train on the other's labels without a word
        raise ValueError(f"{folder} holds {len(found)} labels files ({', '.join(found)}): keep one, or name it "
                         "(`python -m zoo.data.str_real build FOLDER OUT --labels FILE`)")
    path = Path(labels) if labels else (folder / found[0] if found else None)
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"no labels file in {folder}: add labels.txt ('path<TAB>text' per line) or labels.csv (columns path,text; "
            "or Hugging Face's metadata.csv, columns file_name,text)"
        )
    pairs: list[tuple[str, str]] = []
    if path.suffix.lower() == ".csv":
        # bom: Excel's "CSV UTF-8" starts with one
        reader = csv.reader(io.StringIO(read_utf8(path, "labels file", bom=True), newline=""))
        # (file line, row); blank lines are skipped, as in labels.txt
        rows = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
        if rows and skip_excel_sep(path, rows[0][1]):  # Excel's `sep=,` line, above the header
            rows = rows[1:]
        if rows and len(rows[0][1]) == 1:  # `path;text`: named, not "expected 2 columns, got ['path;text']"
            refuse_other_separator(path, rows[0][1], "first line")
        head = [c.strip().lower() for c in rows[0][1]] if rows else []
        # a header names the path and text columns, in any order among others (Hugging Face's imagefolder finds
        # file_name wherever it stands)
        found = [[i for i, c in enumerate(head) if c in names] for names in (_PATH_COLUMNS, _TEXT_COLUMNS)]
        at = [f[0] if f else None for f in found]
        if None not in at:
            for what, f in zip(("path", "text"), found):
                if len(f) > 1:  # taking the first could train on the wrong column without a word
                    raise ValueError(
                        f"{path}: the header names {len(f)} {what} columns ({', '.join(repr(rows[0][1][i]) for i in f)}); "
                        f"keep one of them under that name and rename the other(s)"
                    )
            columns = len(rows[0][1])  # a header may declare further columns
            rows = rows[1:]
        else:  # without one: (path, text) and the further columns every row has; a longer row split a label
            columns = max(2, min((len(row) for _, row in rows), default=2))
            at = [0, 1]
        for n, row in rows:
            if len(row) <= max(at):
                raise ValueError(f"{path}, line {n}: expected {max(2, max(at) + 1)} columns (path, text), got {row}")
            if len(row) > columns:
                raise ValueError(
                    f"{path}, line {n}: {len(row)} columns where {columns} are expected, got {row}; "
                    'quote a label that holds a comma ("a,b")'
                )
            pairs.append((row[at[0]].strip(), row[at[1]]))
    else:
        from zoo.data.str import IMAGE_EXTS

        icdar = path.name.lower() == "gt.txt"  # ICDAR word recognition: `word_1.png, "Tired"`
        # lines end at CR / LF only (str.splitlines also breaks at U+2028, U+0085, form feed: characters of a label)
        for n, line in enumerate(re.split(r"\r\n|\r|\n", read_utf8(path, "labels file", bom=True)), 1):
            if not line.strip():
                continue
            # `path, text` (a whitespace-separated gt.txt, `word_1.png a,b`, reads below): a path without spaces, or
            # one quoted, ending in an image extension or followed by a quoted label (`word 1.png, "Hi"`)
            m = re.fullmatch(r'\s*("[^"]*"|[^,]*?)\s*,\s*(.*?)\s*', line) if icdar else None
            if m and m.group(1) and (not re.search(r"\s", m.group(1)) or m.group(1)[0] == '"'
                                     or os.path.splitext(m.group(1))[1].lower() in IMAGE_EXTS
                                     or re.fullmatch(r'".*"', m.group(2))):
                # ICDAR 2013 / 2015 escape quotes (and backslashes) inside a quoted label with a backslash: "(412\")";
                # an unquoted label keeps its backslashes (a\b, or one at the end of the line, which csv read as \n)
                quoted = m.group(2).startswith('"')
                row = [m.group(1).strip('"'), *next(csv.reader([m.group(2)], escapechar="\\" if quoted else None), [])]
                if len(row) > 2:
                    raise ValueError(f"{path}, line {n}: {len(row)} columns, got {row}; quote a label that holds a comma (\"a,b\")")
                pairs.append((row[0], row[1] if len(row) > 1 else ""))
                continue
            parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
            # a line with a path and no text is an empty label: kept, normalized and counted as skipped
            pairs.append((parts[0].strip(), parts[1] if len(parts) > 1 else ""))
    return pairs


def _on_disk(folder: Path, rel: str) -> Optional[str]:
    """``rel`` as the file under ``folder`` spells it: as written, or in the other Unicode form (a decomposed name
    from a macOS archive, "e" + U+0301, listed composed by a labels file written elsewhere, or the other way round),
    or with Windows' backslashes as this system's separators (``train\\img_1.png`` from a labels file written on
    Windows, beside its CRLF line ends and BOM); ``None`` when none exists."""
    if (folder / rel).is_file():
        return rel
    spellings = [rel] + ([rel.replace("\\", "/")] if "\\" in rel and os.sep == "/" else [])
    other = [q for r in spellings for q in dict.fromkeys([r] + [unicodedata.normalize(f, r) for f in ("NFC", "NFD")])
             if q != rel and (folder / q).is_file()]
    return other[0] if other else None


def _require_images(folder: Path, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``pairs`` with each path as the file spells it (:func:`_on_disk`); raise naming the images that ``folder``'s
    labels list but that do not exist."""
    found = [(_on_disk(folder, p), p, t) for p, t in pairs]
    missing = [p for q, p, _ in found if q is None]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images named in the labels of {folder} do not exist, e.g. {missing[:5]}")
    return [(q, t) for q, _, t in found]


class FolderDataset(Dataset):
    """Images of a folder listed in its labels file; missing image files are an error naming them.

    The kept samples' paths and normalized labels are held as :class:`~zoo.data.files.Strings` (UTF-8 blobs), not a
    list of tuples: a DataLoader worker reading the list copied its objects (~150 B a crop in every worker)."""

    def __init__(self, folder: str | Path, charset: Charset, labels: Optional[str | Path] = None) -> None:
        self.folder, self.charset = Path(folder), charset
        self.stats = NormStats()
        pairs = _require_images(self.folder, read_labels(self.folder, labels))
        kept = [(p, t) for p, raw in pairs if (t := charset.normalize(raw, self.stats)) is not None]
        del pairs
        self._paths, self._labels = Strings(p for p, _ in kept), Strings(t for _, t in kept)

    @property
    def items(self) -> list[tuple[str, str]]:
        """The ``(relative path, normalized label)`` samples (rebuilt as Python objects on each access)."""
        return [(self._paths[k], self._labels[k]) for k in range(len(self._paths))]

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, k: int) -> tuple[Image.Image, str]:
        from zoo.data.str import load_image

        return load_image(self.folder / self._paths[k]), self._labels[k]


def open_source(path: str | Path, charset: Charset) -> list[tuple[str, Dataset]]:
    """``(set name, dataset)`` for an LMDB, a root of LMDBs, or an image folder with labels."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data source {path} not found")
    # "." and "sets/.." are named by the folder they mean (a link keeps its own name)
    label = path.name if path.name not in ("", "..") else path.resolve().name or str(path)
    files = _root_files(path) if path.is_dir() else []  # one walk for the LMDBs and the labels files beside them
    lmdbs = _lmdb_folders(files)
    if lmdbs:
        # image folders in or under the root (an LMDB built into the image folder it came from, or a folder of
        # crops put beside benchmark LMDBs): only LMDBs are read from a root, so say which labels are not
        beside = [str(p.relative_to(path)) for p in files if p.name in LABEL_FILES]
        if beside:
            shown = ", ".join(beside[:5]) + (", ..." if len(beside) > 5 else "")
            warnings.warn(
                f"{path} holds both {shown} (an image folder's labels) and LMDBs ({', '.join(str(p.relative_to(path)) or '.' for p in lmdbs)}); "
                f"reading the LMDBs only ({len(beside)} labels file(s) ignored: give such an image folder as a source of its own)",
                stacklevel=2,
            )
        return [(str(p.relative_to(path)) if p != path else label, LMDBDataset(p, charset)) for p in lmdbs]
    if path.is_dir():
        nested = [str(p.relative_to(path)) for p in files if p.name in LABEL_FILES and p.parent != path]
        if nested and not any((path / n).is_file() for n in LABEL_FILES):
            # a root of image folders (A/labels.txt, B/gt.txt): "add labels.txt to the root" misled
            shown = ", ".join(nested[:5]) + (", ..." if len(nested) > 5 else "")
            raise FileNotFoundError(
                f"{path} has no labels file of its own, but folders under it do ({shown}); only LMDBs are read from "
                "a root: give each image folder as a source of its own (data.test_dirs: [root/A, root/B]), or build "
                "each into an LMDB under one root (`python -m zoo.data.str_real build FOLDER ROOT/NAME`)"
            )
        return [(label, FolderDataset(path, charset))]
    raise ValueError(f"{path} is neither an LMDB folder, a folder of LMDBs, nor an image folder with labels.txt/labels.csv")


def build_lmdb(folder: str | Path, out: str | Path, labels: Optional[str | Path] = None, map_size: int = 1 << 32) -> int:
    """Write the images of ``folder`` (listed in its labels file) into a PARSeq-layout LMDB at ``out``.

    Labels are stored as given (normalization happens when reading, with the model's charset);
    unreadable images are an error naming every such file. Returns the sample count.
    """
    import lmdb

    from zoo.hub import refuse_occupied

    # expanduser as every reader here does: "~/lmdb" from Python made a folder named "~" in the working directory
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    refuse_occupied(out, "choose a new output folder")
    pairs = read_labels(folder, Path(labels).expanduser() if labels else None)
    if not pairs:
        raise ValueError(f"the labels file of {folder} lists no images")
    pairs = _require_images(folder, pairs)  # a stat per file, before anything is created
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # the map is address space, not disk: size it for every image and label with room for page overhead
    payload = sum((folder / p).stat().st_size + len(t.encode("utf-8")) for p, t in pairs)
    env = lmdb.open(str(out), map_size=max(map_size, 2 * payload + (64 << 20)))
    bad: list[tuple[Path, str]] = []  # every unreadable image is named at once: not one per rerun of the build
    try:
        with env.begin(write=True) as txn:  # one read per image; bad ones abort the transaction once all are checked
            for i, (p, text) in enumerate(pairs, 1):
                data = (folder / p).read_bytes()
                problem = _image_problem(data)
                if problem is not None:
                    bad.append((folder / p, problem))
                if not bad:
                    txn.put(b"image-%09d" % i, data)
                    txn.put(b"label-%09d" % i, text.encode("utf-8"))
            if len(bad) == 1:
                raise ValueError(f"cannot add {bad[0][0]} to the LMDB: {bad[0][1]}")
            if bad:
                raise ValueError(
                    f"cannot add {len(bad)} of the {len(pairs)} images to the LMDB (nothing was written): "
                    + "; ".join(f"{q}: {why}" for q, why in bad[:10]) + ("; ..." if len(bad) > 10 else "")
                    + "; fix or remove them (and their lines in the labels file), then build again"
                )
            txn.put(b"num-samples", str(len(pairs)).encode())
    except BaseException:
        env.close()  # nothing half-written stays behind: a corrected rerun can use the same folder
        for f in out.iterdir():
            f.unlink()
        if created:
            out.rmdir()
        raise
    env.close()
    return len(pairs)


def _image_problem(data: bytes) -> Optional[str]:
    """Why ``data`` cannot be read as an image, or ``None`` when it can."""
    from zoo.data.str import load_image

    if not data:
        return "the file is empty (0 bytes)"
    try:
        load_image(data)
    except ValueError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------
def _global_rank() -> int:
    """This process's rank under a Lightning strategy (0 outside distributed training)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


class RandAugment:
    """RandAugment-style policy for text crops (as PARSeq): ``n`` ops drawn uniformly from a list
    of photometric and mild geometric ops, each at magnitude ``m`` of 10 with a random sign; then
    Gaussian blur or noise with probability ``p_blur``. PARSeq adds its own op list; we keep the
    ops that do not destroy text (no flips, no large rotations).

    Random state: in the main process a generator seeded with ``seed`` (when ``None``: with torch's
    seed, ``torch.initial_seed()`` at the first call, so ``seed_everything`` makes ``num_workers=0``
    reproducible too); in a DataLoader worker a generator seeded from the worker's torch seed, so the
    workers (and each epoch's new workers) draw different augmentations instead of replaying the
    parent's copy, and ``seed_everything`` makes them reproducible. Under DDP the global rank is mixed
    in (every rank has the same torch seed), so the ranks do not apply one augmentation sequence."""

    OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y", "brightness", "contrast", "sharpness",
           "color", "posterize", "solarize", "autocontrast", "equalize", "invert")

    def __init__(self, n: int = 3, m: int = 5, p_blur: float = 0.3, seed: Optional[int] = None) -> None:
        if not 0 <= m <= 10 or n < 0:
            raise ValueError(f"RandAugment needs n >= 0 and 0 <= m <= 10, got n={n}, m={m}")
        self.n, self.m, self.p_blur, self.seed = n, m, p_blur, seed
        # made at the first call: the rank is known by then (the strategy sets it after construction), and with seed
        # None torch's seed is drawn then (seed_everything may come after construction)
        self.rng: Optional[np.random.Generator] = None
        self._worker_seed: Optional[int] = None
        self._rank: Optional[int] = None  # the parent's global rank, for a spawned worker (set when pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rank": _global_rank()}

    def _generator(self) -> np.random.Generator:
        import torch
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        rank = self._rank if self._rank is not None else _global_rank()  # a forked worker inherits the parent's
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.rng = np.random.default_rng([info.seed, self.seed or 0] + ([rank] if rank else []))
        elif self.rng is None:
            # rank 0: default_rng([seed]) draws as default_rng(seed) did
            self.rng = np.random.default_rng([torch.initial_seed() if self.seed is None else self.seed]
                                             + ([rank] if rank else []))
        return self.rng

    def __call__(self, img: Image.Image) -> Image.Image:
        r = self._generator()
        for op in r.choice(self.OPS, size=self.n):
            img = self._apply(str(op), img, self.m / 10 * (1 if r.random() < 0.5 else -1))
        if r.random() < self.p_blur:
            img = img.filter(ImageFilter.GaussianBlur(float(r.uniform(0.1, 1.2))))
        return img

    def _apply(self, op: str, img: Image.Image, v: float) -> Image.Image:
        w, h = img.size
        fill = (128, 128, 128)
        if op == "rotate":
            return img.rotate(15 * v, resample=Image.BILINEAR, fillcolor=fill)
        if op == "shear_x":
            return img.transform(img.size, Image.AFFINE, (1, 0.3 * v, 0, 0, 1, 0), Image.BILINEAR, fillcolor=fill)
        if op == "shear_y":
            return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0.3 * v, 1, 0), Image.BILINEAR, fillcolor=fill)
        if op == "translate_x":
            return img.transform(img.size, Image.AFFINE, (1, 0, 0.1 * v * w, 0, 1, 0), Image.BILINEAR, fillcolor=fill)
        if op == "translate_y":
            return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, 0.2 * v * h), Image.BILINEAR, fillcolor=fill)
        if op in ("brightness", "contrast", "sharpness", "color"):
            enh = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                   "sharpness": ImageEnhance.Sharpness, "color": ImageEnhance.Color}[op]
            return enh(img).enhance(1 + 0.9 * v)
        if op == "posterize":
            return ImageOps.posterize(img, int(8 - 4 * abs(v)))
        if op == "solarize":
            return ImageOps.solarize(img, int(256 - 256 * abs(v)))
        if op == "autocontrast":
            return ImageOps.autocontrast(img)
        if op == "equalize":
            return ImageOps.equalize(img)
        if op == "invert":
            return ImageOps.invert(img)
        raise ValueError(f"unknown augmentation op {op!r}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m zoo.data.str_real", description="scene-text data tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a PARSeq-layout LMDB from an image folder + labels file")
    b.add_argument("folder")
    b.add_argument("out")
    b.add_argument("--labels", default=None, help="labels file (default: FOLDER/labels.txt or labels.csv)")
    args = p.parse_args(argv)
    try:
        n = build_lmdb(args.folder, args.out, args.labels)
    except (OSError, ValueError) as exc:  # a bad folder, labels file or image: the message, as `zoo export` gives it
        raise SystemExit(f"error: {exc}") from exc
    print(f"wrote {n} samples to {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])

__all__ = ["FolderDataset", "LMDBDataset", "RandAugment", "build_lmdb", "find_lmdbs", "open_source", "read_labels"]
