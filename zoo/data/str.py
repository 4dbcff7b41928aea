"""Scene-text recognition data: synthetic crops (the embedded default), LMDB in the PARSeq layout,
and image folders with a labels file; one datamodule that combines them.

Batches are dicts: ``images`` float ``[B, 3, 32, 128]`` normalized to ``[-1, 1]`` (PARSeq), ``targets``
long ``[B, max_length + 1]`` (class ids, EOS after the text, ``-100`` padding), ``texts`` (list of
str) and ``set`` (list of the test-set names, for per-set tables).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from zoo.data.charsets import Charset, NormStats
from zoo.data.files import say_hidden, walk_files
from zoo.data.images import load_image
from zoo.data.samplers import eval_sampler, pin_memory_for
from zoo.data.str_io import to_tensor  # Lightning-free, for STRModel.read; re-exported here
from zoo.data import str_synth
from zoo.data.str_synth import TEST_FONTS, TRAIN_FONTS, check_shear, font_path, make_sample, usable_fonts

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
              ".pbm", ".pnm", ".tga", ".jp2", ".avif")


def encode_targets(charset: Charset, texts: Sequence[str]) -> torch.Tensor:
    """``[B, max_length + 1]`` class ids with EOS after each text and ``-100`` padding."""
    T = charset.max_length + 1
    out = torch.full((len(texts), T), -100, dtype=torch.long)
    for b, t in enumerate(texts):
        ids = charset.encode(t)
        out[b, : len(ids)] = torch.tensor(ids)
    return out


# ---------------------------------------------------------------------------------------------
# Datasets: every item is (PIL image, normalized text)
# ---------------------------------------------------------------------------------------------
def check_train_fonts(stems: Sequence[str], chars: str) -> tuple[str, ...]:
    """Training fonts as given, or an error naming a held-out test font, a missing font or one that
    cannot render ``chars`` (nothing is dropped silently)."""
    stems = tuple(stems)
    if not stems:
        raise ValueError("synth_train_fonts is empty; leave it unset for the default training fonts")
    leak = sorted(set(stems) & set(TEST_FONTS))
    if leak:
        raise ValueError(f"synth_train_fonts holds held-out test font(s) {leak}: the test split must use fonts unseen in training")
    for s in stems:
        font_path(s)  # FileNotFoundError naming the font
    try:
        usable = usable_fonts(stems, chars)
    except str_synth.UncoveredCharset:  # named below, font by font ("use an ASCII charset" misled under "36")
        usable = ()
    dropped = [s for s in stems if s not in usable]
    if dropped:
        raise ValueError(f"synth_train_fonts {dropped} cannot render every character of the charset")
    return stems


class SyntheticSTRDataset(Dataset):
    """``n`` rendered words of ``split`` (see :mod:`zoo.data.str_synth`); item ``i`` is sample ``start + i``,
    a pure function of ``(seed, split, start + i)`` (``start`` continues a stream, e.g. a resumed run).

    With ``cache_dir`` the samples are read from crops rendered once into that folder
    (:meth:`build_cache`, in parallel) instead of being rendered on every access: the same words and the
    same pixels, without the renderer's CPU cost per step (about 1.7 ms a crop), which lets several runs
    share one machine's cores. The cache is keyed by everything that determines a crop, the generator's
    source code and the versions of the libraries that draw it included, so a stale cache is never read."""

    def __init__(
        self, n: int, charset: Charset, split: str = "train", seed: int = 0, min_len: int = 1,
        max_len: Optional[int] = None, strength: float = 1.0, fonts: Optional[Sequence[str]] = None,
        img_size: tuple[int, int] = (32, 128), start: int = 0, shear: float = 0.0,
        cache_dir: Optional[str | Path] = None,
    ) -> None:
        if int(start) < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.n, self.charset, self.split, self.seed, self.start = int(n), charset, split, int(seed), int(start)
        self.min_len, self.max_len = int(min_len), int(max_len or charset.max_length)
        if not 1 <= self.min_len <= self.max_len <= charset.max_length:
            raise ValueError(f"need 1 <= min_len <= max_len <= charset max_length ({charset.max_length}), got {min_len}, {max_len}")
        self.strength, self.img_size, self.shear = strength, tuple(img_size), check_shear(shear)
        self.fonts = usable_fonts(fonts or (TEST_FONTS if split == "test" else TRAIN_FONTS), charset.chars)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._cached: Optional[tuple[np.ndarray, list[str]]] = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cached": None}  # loader / render processes open the memory map themselves

    def __len__(self) -> int:
        return self.n

    def render(self, index: int) -> tuple[Image.Image, str]:
        """Sample ``index`` of the stream (not of this dataset's window), rendered now."""
        return make_sample(
            self.seed, self.split, index, self.charset.chars, min_len=self.min_len, max_len=self.max_len,
            strength=self.strength, size=self.img_size, fonts=self.fonts, shear=self.shear,
        )

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        if self.cache_dir is None:
            return self.render(self.start + i)
        if self._cached is None:  # opened in each loader process, after the fork
            self._cached = self.open_cache()
        images, texts = self._cached
        return Image.fromarray(images[self.start + i]), texts[self.start + i]

    # -- the rendered-crop cache ------------------------------------------------------------------
    def cache_key(self) -> dict[str, Any]:
        """Everything a crop depends on (the sample window excluded: a cache holds samples 0..count-1)."""
        import matplotlib
        import PIL

        return {"format": 1, "seed": self.seed, "split": self.split, "chars": self.charset.chars,
                "min_len": self.min_len, "max_len": self.max_len, "strength": self.strength,
                "fonts": list(self.fonts), "img_size": list(self.img_size), "shear": self.shear,
                "generator_sha1": hashlib.sha1(Path(str_synth.__file__).read_bytes()).hexdigest(),
                "numpy": np.__version__, "matplotlib": matplotlib.__version__, "PIL": PIL.__version__}

    def cache_path(self) -> Path:
        if self.cache_dir is None:
            raise ValueError("this dataset has no cache_dir")
        digest = hashlib.sha1(json.dumps(self.cache_key(), sort_keys=True).encode()).hexdigest()[:16]
        return self.cache_dir / f"synth_{self.split}_{digest}"

    def cached_count(self) -> int:
        """How many samples (from index 0) the complete cache holds; 0 when there is none."""
        meta = self.cache_path() / "meta.json"  # written last: its presence marks a complete cache
        if not meta.is_file():
            return 0
        return int(json.loads(meta.read_text())["count"])

    def open_cache(self) -> tuple[np.ndarray, list[str]]:
        path, need = self.cache_path(), self.start + self.n
        have = self.cached_count()
        if have < need:
            raise FileNotFoundError(
                f"synthetic-crop cache {path} holds {have} samples, this dataset reads samples {self.start} to "
                f"{need - 1}: build it first (SyntheticSTRDataset.build_cache, or STRDataModule.prepare_data)")
        meta = json.loads((path / "meta.json").read_text())
        if meta["key"] != self.cache_key():
            raise ValueError(f"synthetic-crop cache {path} was built for other settings; remove the folder")
        images = np.load(path / "images.npy", mmap_mode="r")
        texts = json.loads((path / "texts.json").read_text())
        h, w = self.img_size
        if images.shape != (have, h, w, 3) or images.dtype != np.uint8 or len(texts) != have:
            raise ValueError(f"synthetic-crop cache {path} is damaged: images {images.shape} {images.dtype}, "
                             f"{len(texts)} texts, meta.json says {have} samples of {h}x{w}; remove the folder")
        return images, texts

    def build_cache(self, workers: int = 0) -> Path:
        """Render samples ``0 .. start + n - 1`` into the cache (``workers`` processes, 0 = every core)
        unless a complete cache already holds them. Written to a temporary folder and renamed, so a
        reader never sees a partial cache and two processes building at once both end with a valid one."""
        path, need = self.cache_path(), self.start + self.n
        if self.cached_count() >= need:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            h, w = self.img_size
            images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(need, h, w, 3))
            del images  # each chunk is written through its own map, in this process or in a worker
            workers = workers or os.cpu_count() or 1
            step = max(1, min(4096, -(-need // workers)))
            chunks = [(lo, min(need, lo + step)) for lo in range(0, need, step)]
            if workers > 1 and len(chunks) > 1:
                import multiprocessing as mp
                from concurrent.futures import ProcessPoolExecutor

                ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
                with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                    parts = list(pool.map(_render_chunk, [(self, tmp / "images.npy", lo, hi) for lo, hi in chunks]))
            else:
                parts = [_render_chunk((self, tmp / "images.npy", lo, hi)) for lo, hi in chunks]
            (tmp / "texts.json").write_text(json.dumps([t for part in parts for t in part]))
            (tmp / "meta.json").write_text(json.dumps({"count": need, "key": self.cache_key()}, indent=1))
            if path.exists():  # a smaller (or concurrently built) cache: keep whichever holds more
                if self.cached_count() >= need:
                    shutil.rmtree(tmp)
                    return path
                old = path.parent / f".{path.name}.{os.getpid()}.old"
                os.replace(path, old)  # open memory maps of readers stay valid
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, path)
            except OSError:  # another process renamed its cache into place in between
                if self.cached_count() < need:
                    raise
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


def _render_chunk(job: tuple[SyntheticSTRDataset, Path, int, int]) -> list[str]:
    """Render samples ``lo .. hi - 1`` of ``ds``'s stream into the cache file; return their texts."""
    ds, file, lo, hi = job
    images = np.load(file, mmap_mode="r+")
    texts = []
    for k in range(lo, hi):
        img, text = ds.render(k)
        images[k] = np.asarray(img.convert("RGB"), dtype=np.uint8)
        texts.append(text)
    images.flush()
    return texts


class TensorizedDataset(Dataset):
    """Wraps an (image, text) dataset: optional augmentation, tensor conversion, set name.

    Items are ``(tensor, text, set name, offset + i)``: the last is the sample's index in the
    split's concatenated sets, which lets evaluation count each sample once across DDP ranks."""

    def __init__(self, base: Dataset, name: str, img_size: tuple[int, int], augment: Any = None, offset: int = 0) -> None:
        self.base, self.name, self.img_size, self.augment, self.offset = base, name, tuple(img_size), augment, offset

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, str, int]:
        img, text = self.base[i]
        if self.augment is not None:
            img = self.augment(img)
        return to_tensor(img, self.img_size), text, self.name, self.offset + i


class UnreadableImage(NamedTuple):
    """The item of an image :class:`ImageFolderDataset` cannot read, in place of its tensor: why."""

    reason: str


class ImageFolderDataset(Dataset):
    """Every image file in a folder (sorted, by extension), for prediction: items ``(tensor, path)``.

    An unreadable image's item is ``(UnreadableImage(reason), path)``, not an exception: predict goes on checking
    the others and then raises naming every one (see :func:`collate_predict`), so no prediction is silently missing
    and a folder with several bad crops does not take one run per bad crop."""

    def __init__(self, folder: str | Path, img_size: tuple[int, int] = (32, 128)) -> None:
        self.folder = Path(folder).expanduser()
        if self.folder.is_file():
            raise NotADirectoryError(f"predict folder {self.folder} is a file, not a folder: give the folder holding the "
                                     "images (one image: zoo.load_pretrained(...).read(path))")
        if not self.folder.is_dir():
            raise FileNotFoundError(f"predict folder {self.folder} not found")
        hidden: list[Path] = []
        files = walk_files(self.folder, hidden)
        say_hidden([p for p in hidden if p.suffix.lower() in IMAGE_EXTS], self.folder, "images")
        self.paths = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTS)}) in {self.folder}")
        others = sorted({p.suffix.lower() or p.name for p in files if p.suffix.lower() not in IMAGE_EXTS})
        if others:
            warnings.warn(f"{len(files) - len(self.paths)} file(s) in {self.folder} are not read as images "
                          f"({', '.join(others[:8])}); convert them to PNG or JPEG to include them", stacklevel=2)
        self.img_size = tuple(img_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | UnreadableImage, str]:
        name = str(self.paths[i].relative_to(self.folder))
        try:
            return to_tensor(load_image(self.paths[i]), self.img_size), name
        except (OSError, ValueError) as exc:  # corrupt, empty, removed meanwhile, not readable by this user
            return UnreadableImage(str(exc)), name

    def require_utf8_names(self) -> None:
        """Raise naming the files whose names are not UTF-8 (a Latin-1 name from an old archive, which Python holds
        as surrogate escapes): a CSV of predictions cannot spell them, so they are refused before any image is read."""
        names = [str(p.relative_to(self.folder)) for p in self.paths]
        bad = [n for n in names if not _is_utf8(n)]
        if bad:
            raise ValueError(
                f"{len(bad)} image file name(s) under {self.folder} are not valid UTF-8 ({', '.join(map(ascii, bad[:3]))}"
                f"{', ...' if len(bad) > 3 else ''}): predictions.csv cannot name them; rename them to UTF-8 names "
                "(e.g. with convmv), or move them out of the folder"
            )


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def collate_predict(items: list) -> dict[str, Any]:
    """``images`` (``None`` when none of the batch could be read) and their ``paths``; ``unreadable``: ``(path,
    reason)`` of the batch's images that could not be read (the task names them all when predict ends)."""
    good = [(x, p) for x, p in items if not isinstance(x, UnreadableImage)]
    out: dict[str, Any] = {"images": torch.stack([x for x, _ in good]) if good else None, "paths": [p for _, p in good]}
    if len(good) < len(items):
        out["unreadable"] = [(p, x.reason) for x, p in items if isinstance(x, UnreadableImage)]
    return out


class Collate:
    """Stacks images and encodes targets with the charset."""

    def __init__(self, charset: Charset) -> None:
        self.charset = charset

    def __call__(self, items: list) -> dict[str, Any]:
        images, texts, names, *index = zip(*items)
        out = {
            "images": torch.stack(images), "targets": encode_targets(self.charset, texts),
            "texts": list(texts), "set": list(names),
        }
        if index:
            out["index"] = list(index[0])
        return out


# ---------------------------------------------------------------------------------------------
# Datamodule
# ---------------------------------------------------------------------------------------------
class STRDataModule(L.LightningDataModule):
    """Scene-text data for ``RecognitionTask``: synthetic by default, or LMDB / image-folder sources.

    Args:
        charset: ``36`` / ``62`` / ``94`` or a charset file (see :mod:`zoo.data.charsets`).
        max_length: label length cap (PARSeq: 25).
        synthetic: sizes of the synthetic splits ``{train, val, test}`` (0 = none); used when no
            real source is given for that split.
        synth_seed, synth_min_len, synth_max_len, synth_strength: the generator's knobs.
        synth_train_fonts: the fonts (matplotlib file stems) of the synthetic training and validation
            words instead of ``str_synth.TRAIN_FONTS``; a held-out test font is refused, and so is a
            font that cannot render the charset.
        synth_train_shear: right slant (italic-like) of half the synthetic training words, up to this
            horizontal shift per unit height (0.3 is about 17 degrees; 0 = off). Training split only:
            validation and the held-out-font test stay as they are.
        synth_train_start: index of the first synthetic training sample (a resumed run continues on
            words it has not seen).
        synth_cache: a folder for rendered synthetic crops. Each split's crops are rendered once
            (``prepare_data``, in ``synth_cache_workers`` processes, 0 = every core) and then read from
            there: the same words and pixels as rendering on every access, without its CPU cost per
            step. The cache is keyed by the generator's settings, source and library versions.
        train_dirs / val_dirs / test_dirs: real sources (an LMDB folder, a root holding several
            LMDBs, or an image folder with ``labels.txt``/``labels.csv``); each test source is its
            own set in the per-set table.
        predict_dir: a folder of images to read with ``python -m zoo predict`` (labels not needed).
        augment: RandAugment-style augmentation on real training images.
        batch_size, eval_batch_size, num_workers.
    """

    def __init__(
        self,
        charset: str = "36",
        max_length: int = 25,
        synthetic: Optional[dict[str, int]] = None,
        synth_seed: int = 0,
        synth_min_len: int = 1,
        synth_max_len: Optional[int] = None,
        synth_strength: float = 1.0,
        synth_train_shear: float = 0.0,
        synth_train_fonts: Optional[list[str]] = None,
        synth_train_start: int = 0,
        synth_cache: Optional[str] = None,
        synth_cache_workers: int = 0,
        train_dirs: Optional[list[str]] = None,
        val_dirs: Optional[list[str]] = None,
        test_dirs: Optional[list[str]] = None,
        predict_dir: Optional[str] = None,
        augment: bool = True,
        img_size: tuple[int, int] = (32, 128),
        batch_size: int = 64,
        eval_batch_size: int = 128,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.charset = Charset(charset, max_length)
        self.synthetic = {"train": 20000, "val": 500, "test": 1000, **(synthetic or {})}
        bad = sorted(set(self.synthetic) - {"train", "val", "test"})
        if bad:
            raise ValueError(f"synthetic split sizes take keys train/val/test, got {bad}")
        self.synth_kw = dict(seed=synth_seed, min_len=synth_min_len, max_len=synth_max_len, strength=synth_strength)
        self.synth_train_shear = check_shear(synth_train_shear, "synth_train_shear")
        self.synth_train_fonts = None if synth_train_fonts is None else check_train_fonts(synth_train_fonts, self.charset.chars)
        self.synth_train_start = int(synth_train_start)
        if not isinstance(synth_cache_workers, int) or isinstance(synth_cache_workers, bool) or synth_cache_workers < 0:
            raise ValueError(f"synth_cache_workers must be an integer >= 0 (0: every core), got {synth_cache_workers!r}")
        self.synth_cache, self.synth_cache_workers = synth_cache, synth_cache_workers
        # one path given as such (train_dirs="my_lmdb") is one source, not one per character of its name
        self.dirs = {split: [d] if isinstance(d, (str, Path)) else list(d or [])
                     for split, d in (("train", train_dirs), ("val", val_dirs), ("test", test_dirs))}
        self.augment, self.img_size, self.predict_dir = augment, tuple(img_size), predict_dir
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.norm_stats: dict[str, NormStats] = {}
        self._sets: dict[str, list[TensorizedDataset]] = {}

    @property
    def data_info(self) -> dict[str, Any]:
        """Facts the task needs: the charset and the label length cap."""
        return {"kind": "str", "charset": self.charset.chars, "max_length": self.charset.max_length, "img_size": list(self.img_size)}

    def _sources(self, split: str) -> list[TensorizedDataset]:
        if split in self._sets:
            return self._sets[split]
        sets: list[TensorizedDataset] = []
        aug = None
        if split == "train" and self.augment and self.dirs["train"]:
            from zoo.data.str_real import RandAugment

            aug = RandAugment()
        for d in self.dirs[split]:
            from zoo.data.str_real import open_source

            for name, ds in open_source(d, self.charset):
                taken = {t.name for t in sets} | {"combined"}  # "combined" names the weighted row of the table
                if name in taken:  # two sources under one folder name (A/IIIT5k, B/IIIT5k): each keeps a row
                    name = next(f"{name}_{k}" for k in range(2, len(taken) + 3) if f"{name}_{k}" not in taken)
                self.norm_stats[f"{split}:{name}"] = ds.stats
                print(ds.stats.report(f"{split} set {name} ({d})"), file=sys.stderr, flush=True)
                if len(ds) == 0:
                    raise ValueError(f"{split} source {d} (set {name}) has no usable sample: {ds.stats.report(name)}")
                sets.append(TensorizedDataset(ds, name, self.img_size, aug, offset=sum(map(len, sets))))
        ds = self._synthetic(split)
        if ds is not None and split != "train" and self.dirs["train"]:
            # validation picks the checkpoint ModelCheckpoint keeps: on synthetic words, for a model of real crops
            warnings.warn(f"the {split} split is synthetic words (data.{split}_dirs is unset; data.synthetic.{split}="
                          f"{self.synthetic[split]}) while training reads data.train_dirs: its metrics measure rendered "
                          f"words, not your data; give data.{split}_dirs, or set data.synthetic.{split}: 0", stacklevel=2)
        if ds is not None:
            if ds.cache_dir is not None:
                ds.build_cache(self.synth_cache_workers)  # a no-op after prepare_data
            sets.append(TensorizedDataset(ds, f"synthetic_{split}", self.img_size, offset=sum(map(len, sets))))
        self._sets[split] = sets
        return sets

    def _synthetic(self, split: str) -> Optional[SyntheticSTRDataset]:
        """The split's synthetic words, when it has no real source and a positive size."""
        if self.dirs[split] or self.synthetic.get(split, 0) <= 0:
            return None
        start = self.synth_train_start if split == "train" else 0
        shear = self.synth_train_shear if split == "train" else 0.0
        fonts = self.synth_train_fonts if split != "test" else None
        try:
            return SyntheticSTRDataset(self.synthetic[split], self.charset, split, img_size=self.img_size, start=start,
                                       shear=shear, fonts=fonts, cache_dir=self.synth_cache, **self.synth_kw)
        except str_synth.UncoveredCharset as exc:
            raise ValueError(
                f"the {split} split has no data.{split}_dirs, so it would be synthetic words "
                f"(data.synthetic.{split}={self.synthetic[split]}), which cannot be rendered for this charset ({exc}); "
                f"give data.{split}_dirs, or set data.synthetic.{split}: 0"
            ) from exc

    def prepare_data(self) -> None:
        """Render the synthetic splits into ``synth_cache`` (once per machine; Lightning calls this on one
        process before the others set up)."""
        if self.synth_cache is None:
            return
        for split in ("train", "val", "test"):
            ds = self._synthetic(split)
            if ds is not None:
                path = ds.build_cache(self.synth_cache_workers)
                print(f"synthetic {split} crops: {ds.start + ds.n} cached in {path}", file=sys.stderr, flush=True)

    def _loader(self, split: str, shuffle: bool) -> Optional[DataLoader]:
        sets = self._sources(split)
        if not sets:
            return None
        ds = sets[0] if len(sets) == 1 else ConcatDataset(sets)
        bs = self.batch_size if split == "train" else self.eval_batch_size
        # persistent workers (as the other domains' loaders): under spawn (macOS / Windows) a fresh worker re-imports
        # torch, matplotlib and zoo, seconds per worker, at every epoch and every validation run
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, num_workers=self.num_workers, collate_fn=Collate(self.charset),
                          drop_last=False, persistent_workers=self.num_workers > 0, pin_memory=pin_memory_for(self.trainer))

    def train_dataloader(self) -> DataLoader:
        dl = self._loader("train", True)
        if dl is None:
            raise ValueError("no training data: give data.train_dirs or a positive data.synthetic.train")
        return dl

    def val_dataloader(self) -> Any:
        return self._loader("val", False) or []

    def test_dataloader(self) -> Any:
        dl = self._loader("test", False)
        if dl is None:
            raise ValueError("no test data: give data.test_dirs or a positive data.synthetic.test")
        return dl

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dir is None:
            raise ValueError("set data.predict_dir to a folder of images to read")
        ds = ImageFolderDataset(self.predict_dir, self.img_size)
        ds.require_utf8_names()
        sampler = eval_sampler(ds, self.trainer, "predict", advice="give data.predict_dir at least one image per "
                               "process, or predict on fewer devices")
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_predict, pin_memory=pin_memory_for(self.trainer))


__all__ = ["Collate", "ImageFolderDataset", "UnreadableImage", "collate_predict", "STRDataModule", "SyntheticSTRDataset",
           "TensorizedDataset", "encode_targets", "load_image", "to_tensor"]
