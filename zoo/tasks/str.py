"""Scene-text recognition task: PARSeq-style multi-mask training, word accuracy and 1-NED per test
set, Cloze Self-Distillation (CSD), fine-tuning across charsets, and predict over folders."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.hub import _class_path, create_model, export_arch_config, read_export_config, resolve_pretrained
from zoo.data.charsets import Charset, resolve_charset
from zoo.models.str import SceneTextRecognizer, transfer_charset, unreadable_images_error, visibility
from zoo.tasks.base import ZooTask

MASK_MODES = ("ar", "nar", "cloze", "perm")
RECIPES = ("parseq", "v1")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (unit insert / delete / substitute), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def one_minus_ned(pred: str, gt: str) -> float:
    """``1 - edit_distance / max(len(pred), len(gt))`` (METHODS section 3); 1 for two empty strings."""
    n = max(len(pred), len(gt))
    return 1.0 if n == 0 else 1.0 - edit_distance(pred, gt) / n


class TextMetrics:
    """Word accuracy and mean 1-NED per named set, plus the combination weighted by sample count.

    Readings are kept per sample, keyed by ``(set, index)``: :meth:`sync` merges the ranks' readings
    under DDP, where the distributed sampler hands some samples to two ranks to even out the
    shards, so each sample still counts once.
    """

    def __init__(self) -> None:
        # (set, index) -> (correct, 1-NED), or None for a sample not scored (its label empty under eval_charset)
        self.samples: dict[tuple[str, int], Optional[tuple[float, float]]] = {}
        self._auto = 0

    def reset(self) -> None:
        self.samples, self._auto = {}, 0

    def update(self, preds: Sequence[Optional[str]], gts: Sequence[str], names: Sequence[str],
               indices: Optional[Sequence[int]] = None) -> None:
        """A ``None`` prediction: the sample is not scored (counted as ``unscored``)."""
        if indices is None:  # no dataset indices: number the samples in arrival order
            indices = range(self._auto, self._auto + len(preds))
            self._auto += len(preds)
        for p, g, n, i in zip(preds, gts, names, indices, strict=True):
            self.samples[(n, int(i))] = None if p is None else (float(p == g), one_minus_ned(p, g))

    def sync(self) -> None:
        """Merge every rank's readings (a collective under DDP; nothing to do in one process)."""
        from zoo.tasks.base import gather_objects

        merged: dict[tuple[str, int], Optional[tuple[float, float]]] = {}
        for part in gather_objects(self.samples):
            merged.update(part)
        self.samples = merged

    def compute(self) -> dict[str, dict[str, float]]:
        """``{set: {accuracy, one_minus_ned, count}}`` in percent, and ``combined``; with samples not scored (see
        :meth:`update`) each row also holds their number, ``unscored`` (a set with none scored has no row)."""
        sets: dict[str, list[float]] = {}
        for (name, _), reading in self.samples.items():
            s = sets.setdefault(name, [0.0, 0.0, 0.0, 0.0])
            if reading is None:
                s[3] += 1
                continue
            s[0] += reading[0]
            s[1] += reading[1]
            s[2] += 1
        skipped = any(v[3] for v in sets.values())

        def row(c: float, e: float, k: float, u: float) -> dict[str, float]:
            r = {"accuracy": 100 * c / k, "one_minus_ned": 100 * e / k, "count": int(k)}
            return {**r, "unscored": int(u)} if skipped else r

        out = {n: row(*v) for n, v in sorted(sets.items()) if v[2]}
        if out:
            out["combined"] = row(*(sum(v[i] for v in sets.values()) for i in range(4)))
        return out


def format_table(results: dict[str, dict[str, float]]) -> str:
    """The per-set table printed by ``python -m zoo test``."""
    width = max([len(k) for k in results] + [8])
    unscored = any("unscored" in r for r in results.values())  # eval_charset left some labels empty
    extra = f"  {'unscored':>8}" if unscored else ""
    lines = [f"{'set':<{width}}  {'word acc':>8}  {'1-NED':>7}  {'count':>7}{extra}", "-" * (width + 28 + len(extra))]
    for name, r in results.items():
        tail = f"  {r.get('unscored', 0):8d}" if unscored else ""
        lines.append(f"{name:<{width}}  {r['accuracy']:8.2f}  {r['one_minus_ned']:7.2f}  {r['count']:7d}{tail}")
    return "\n".join(lines)


def _load_recognizer(source: str) -> SceneTextRecognizer:
    """An exported folder / shipped name, or a Lightning ``.ckpt`` of :class:`RecognitionTask`."""
    if str(source).endswith(".ckpt"):
        path = Path(source).expanduser()  # as an export folder's path is: "teacher: ~/runs/best.ckpt" in a YAML
        try:  # weights_only: the peek unpickles nothing but tensors and plain values
            saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            task_class = saved.get("zoo_task_class")
            kind = ((saved.get("hyper_parameters") or {}).get("data_info") or {}).get("kind")
        except Exception as exc:  # noqa: BLE001 -- a folder, a missing, empty or foreign file
            if not path.is_file():
                from zoo.hub import checkpoint_task_class

                checkpoint_task_class(path)  # names a missing file or a folder (reads no file: nothing is unpickled)
            raise ValueError(f"cannot read {path} as a checkpoint ({exc}); give a str-* .ckpt that a fit wrote, an "
                             "export folder or a shipped name") from exc
        from zoo.tasks.base import _refuse_other_task

        # another domain's checkpoint, named here with the file and the fix a teacher / read_folder source takes
        # (load_from_checkpoint's refusal, the same test, names neither and speaks of --ckpt_path). A class this
        # process has not imported (a user's subclass saved from a script's __main__), or none named, cannot be
        # tested: the saved data kind tells (a RecognitionTask's data_info is 'str'; by its name, a subclass was refused)
        try:
            foreign = _refuse_other_task(RecognitionTask, task_class) is None and kind not in (None, "str")
        except ValueError:
            foreign = True
        if foreign:
            writer = task_class or f"a task of {kind!r} data"
            raise ValueError(f"{path} is a checkpoint of {writer}, not of a scene-text RecognitionTask; "
                             "give a str-* checkpoint, export folder or shipped name")
        return RecognitionTask.load_from_checkpoint(path, map_location="cpu").model
    import zoo

    model = zoo.load_pretrained(source)
    if not isinstance(model, SceneTextRecognizer):
        raise ValueError(f"{source} holds a {type(model).__name__}, not a scene-text recognizer (SceneTextRecognizer); "
                         "give a str-* checkpoint, export folder or shipped name")
    return model


def _same(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def write_predictions_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``image,text,confidence`` rows; an existing file is an error (nothing is overwritten)."""
    import csv

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; predict into a new run folder (--trainer.default_root_dir) or remove it")
    path.parent.mkdir(parents=True, exist_ok=True)
    from zoo.tasks.callbacks import create_new

    def fill(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=["image", "text", "confidence"])
        w.writeheader()
        w.writerows(rows)

    # exclusive: a file made meanwhile is not overwritten either; a row that fails leaves no half-written CSV
    return create_new(path, fill, newline="")


def read_folder(model: Any, folder: str | Path, out_csv: Optional[str | Path] = None, batch_size: int = 64) -> list[dict[str, Any]]:
    """Read every image of ``folder`` with a recognizer (or exported name/path); optionally write a CSV."""
    from zoo.data.str import ImageFolderDataset

    if not isinstance(model, SceneTextRecognizer):
        model = _load_recognizer(str(model))
    ds = ImageFolderDataset(folder)
    if out_csv is not None:
        ds.require_utf8_names()
    readings = model.read([str(p) for p in ds.paths], batch_size=batch_size)
    rows = [{"image": str(p.relative_to(ds.folder)), "text": r.text, "confidence": round(r.confidence, 6)} for p, r in zip(ds.paths, readings)]
    if out_csv is not None:
        write_predictions_csv(rows, out_csv)
    return rows


class RecognitionTask(ZooTask):
    """Train / evaluate a scene-text recognizer from the registry (``zoo.list_models("str-*")``).

    Args:
        arch: registered name, e.g. ``str-diff-tiny``, ``str-vanilla-small``.
        attn_type: cross-attention type override (``diff`` / ``vanilla`` / ...).
        model_args: further architecture overrides (``dec_depth``, ``dec_dim``, ``self_attn_type``...).
        pretrained: exported folder or shipped name to start from. When the data's charset differs,
            every weight is kept except the rows of new characters (a report is printed).
        data_info: from the datamodule (charset, max_length); filled in by the CLI.
        masks: visibility masks trained each step (``ar``, ``nar``, ``cloze``, ``perm`` = one random
            permutation per batch, as PARSeq's permutation LM); the loss is their mean.
        recipe: ``parseq`` (default) trains as PARSeq does: the ``perm`` ordering permutes the batch's
            longest label's character positions and keeps its end (EOS) last, with EOS targets dropped from it
            (a shorter label's EOS slot is among the shuffled ones; PARSeq learns EOS from its canonical
            orderings, here ``ar``, ``nar`` and ``cloze``; the CSD KL term skips the same slots), and the character embedding,
            the position queries and the encoder's position embedding are not weight-decayed (PARSeq's and
            timm's ``no_weight_decay``). ``v1``: zoo's recipe until 2026-11-27, kept to reproduce the
            benchmark rows trained with it: one permutation of all slots, EOS and padding included, and every
            matrix decayed.
        label_smoothing: cross-entropy label smoothing.
        teacher: CSD teacher (exported folder, shipped name or ``.ckpt``). With it, training targets
            are the teacher's pseudolabels and a KL term pulls every mask's prediction towards the
            teacher's cloze distribution; each step logs ``train/csd_pseudolabel_accuracy``, the percentage of the
            batch's labelled words whose pseudolabel is the label.
        csd_temperature: softmax temperature of the KL term (scaled by ``T^2``).
        csd_kl_weight: weight of the KL term; the pseudolabel cross-entropy has weight 1.
        eval_charset: score validation and test as PARSeq scores the case-insensitive benchmarks with a model of
            a larger charset (its 95.95% is a 94-character model tested on ``36``): each prediction and label is
            normalized with this charset (a named set, a charset file or the characters) before they are compared
            (``36``: lower-cased, other characters dropped); a label it leaves empty is not scored (counted in the
            run summary). ``None``: compared as read. Also given at test time with ``--ckpt_path``.
        lr, weight_decay, betas, warmup_steps, scheduler, min_lr_ratio: see :class:`ZooTask`.
    """

    data_fields = ("charset", "max_length", "img_size")

    def __init__(
        self,
        arch: str = "str-diff-tiny",
        attn_type: Optional[str] = None,
        model_args: Optional[dict[str, Any]] = None,
        pretrained: Optional[str] = None,
        data_info: Optional[dict[str, Any]] = None,
        masks: Sequence[str] = MASK_MODES,
        label_smoothing: float = 0.0,
        teacher: Optional[str] = None,
        csd_temperature: float = 2.0,
        csd_kl_weight: float = 1.0,
        recipe: str = "parseq",
        eval_charset: Optional[str] = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup_steps: int = 200,
        scheduler: str = "cosine",
        min_lr_ratio: float = 0.01,
    ) -> None:
        super().__init__(lr, weight_decay, betas, warmup_steps, scheduler, min_lr_ratio)
        self.save_hyperparameters()
        bad = [m for m in masks if m not in MASK_MODES]
        if bad or not masks:
            raise ValueError(f"masks must be a non-empty subset of {MASK_MODES}, got {list(masks)}")
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        if not csd_temperature > 0:  # NaN too: the KL term, and so the loss, would be NaN from the first step
            raise ValueError(f"csd_temperature must be positive, got {csd_temperature}")
        if not csd_kl_weight >= 0:  # NaN too: a negative weight would push the student away from the teacher
            raise ValueError(f"csd_kl_weight must be >= 0 (0: pseudolabels only), got {csd_kl_weight}")
        self.arch, self.masks, self.label_smoothing, self.recipe = arch, list(masks), label_smoothing, recipe
        # the comparison charset (PARSeq's charset_test); its length cap is the data's business, not the comparison's
        self.eval_charset = Charset(eval_charset, max_length=10**9) if eval_charset is not None else None
        self.data_info = dict(data_info or {})
        if self.data_info and self.data_info.get("kind") != "str":
            raise ValueError(
                f"RecognitionTask needs a scene-text datamodule (data_info kind 'str'), got {self.data_info.get('kind')!r}; "
                "use zoo.data.str.STRDataModule"
            )
        self.transfer_report: Optional[dict[str, Any]] = None
        self.model = self._build_model(arch, attn_type, dict(model_args or {}), pretrained)
        # the CSD teacher is read when fit starts (``setup``): a student's checkpoint holds every weight it
        # needs, so loading it for test / predict / export does not need the teacher's folder
        self._teacher: Optional[SceneTextRecognizer] = None
        self.metrics = {"val": TextMetrics(), "test": TextMetrics()}
        self.results: dict[str, Any] = {}
        # the last evaluation's per-sample readings: {stage: {(set, index): (correct, 1-NED)}}
        self.readings: dict[str, dict[tuple[str, int], tuple[float, float]]] = {}
        self._predictions: list[dict[str, Any]] = []
        self._unreadable: list[tuple[str, str]] = []
        self._predict_seen = 0

    @property
    def teacher(self) -> Optional[SceneTextRecognizer]:
        """The CSD teacher (frozen, not a submodule: it stays out of checkpoints and optimizers), read on
        first use; ``None`` without ``teacher``."""
        if self._teacher is None and self.hparams.get("teacher") is not None:
            source = self.hparams.teacher
            try:
                t = _load_recognizer(source).eval()
            except FileNotFoundError as exc:  # a run may name a pretrained folder too: say which one is missing
                raise FileNotFoundError(f"CSD teacher (model.init_args.teacher): {exc}") from exc
            if t.charset.chars != self.model.charset.chars or t.num_slots != self.model.num_slots:
                def show(m: SceneTextRecognizer) -> str:
                    chars = m.charset.chars
                    return f"{len(chars)} characters {chars[:40]!r}{'...' if len(chars) > 40 else ''}, max_length {m.config.max_length}"

                raise ValueError(
                    f"CSD teacher {source} reads {show(t)}; the student {show(self.model)}. Train both on the same "
                    "data (charset and max_length)"
                )
            if list(t.config.img_size) != list(self.model.config.img_size):
                raise ValueError(
                    f"CSD teacher {source} reads img_size {list(t.config.img_size)} crops, the student "
                    f"{list(self.model.config.img_size)}; the teacher reads the student's batches"
                )
            for p in t.parameters():
                p.requires_grad_(False)
            object.__setattr__(self, "_teacher", t)
        return self._teacher

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "recipe" not in checkpoint.get("hyper_parameters", {"recipe": None}) and self.recipe != "v1":
            # saved before recipes existed, so trained with v1: a resumed run goes on as it started
            warnings.warn(
                "RecognitionTask: the checkpoint predates training recipes (it was trained with 'v1'); "
                "continuing with recipe 'v1'", stacklevel=2,
            )
            self.recipe = self.hparams["recipe"] = "v1"
        self._check_checkpoint_data(checkpoint)
        super().on_load_checkpoint(checkpoint)

    def _differing(self, info: dict[str, Any], keys: Sequence[str]) -> list[str]:
        """The data facts among ``keys`` that ``info`` states otherwise than the model's config."""
        return [k for k in keys if k in info and _same(info[k]) != _same(getattr(self.model.config, k))]

    def _check_checkpoint_data(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint's charset / label length / crop size must be this model's (built from the data's): else
        loading its weights failed with a bare "size mismatch for model.head.weight" (or, at equal sizes, read
        with another charset's characters)."""
        saved = dict((checkpoint.get("hyper_parameters") or {}).get("data_info") or {})
        if not saved:
            return
        ours = {k: getattr(self.model.config, k) for k in self.data_fields}
        if "charset" in saved and saved["charset"] != ours["charset"]:
            try:  # a task built in Python may hold a charset's spec ("36", a file) as its data_info
                saved["charset"] = resolve_charset(saved["charset"])
            except Exception:  # noqa: BLE001 -- not a spec: the characters themselves, compared as they are
                pass
        wrong = self._differing(saved, self.data_fields)
        if not wrong:
            return

        def show(k: str, v: Any) -> str:
            if k == "charset":
                return f"{len(v)} characters {v[:40]!r}{'...' if len(v) > 40 else ''}"
            return repr(v)

        raise ValueError(
            "the checkpoint's model was trained on other data settings than the data given now ("
            + "; ".join(f"{k}: checkpoint {show(k, saved[k])} vs data {show(k, ours[k])}" for k in wrong)
            + "); set them to the checkpoint's (data.charset: the charset it was trained with, e.g. its charset file; "
            "data.max_length; data.img_size), or fine-tune with pretrained=<export> to move it to a new charset"
        )

    def setup(self, stage: str) -> None:
        self._check_data(getattr(self._trainer, "datamodule", None), stage)
        if stage == "fit" and self.recipe == "parseq" and set(self.masks) == {"perm"}:
            # checked when training starts, not in __init__: older checkpoints (no recipe: parseq) still load
            raise ValueError(
                "masks=['perm'] with recipe 'parseq' never trains the end of a word: its perm ordering drops the EOS "
                "targets (PARSeq learns EOS from canonical orderings); add 'ar', 'nar' or 'cloze' to masks, or use recipe 'v1'"
            )
        if stage == "fit":
            self.teacher  # noqa: B018 -- a wrong or missing teacher fails before the first step, not in it

    def _check_data(self, datamodule: Any, stage: str = "fit") -> None:
        """The datamodule's charset, length cap and crop size must be the model's: another charset would
        index the wrong output rows (or past them). Predicting reads no labels: only the crop size counts."""
        info = getattr(datamodule, "data_info", None)
        if not info or info.get("kind") != "str":
            return
        keys = ("img_size",) if stage == "predict" else self.data_fields
        wrong = [f"{k}: data {info[k]!r} vs model {getattr(self.model.config, k)!r}" for k in self._differing(info, keys)]
        if wrong:
            raise ValueError(
                "the datamodule does not fit the model (" + "; ".join(w if len(w) < 160 else w[:157] + "..." for w in wrong)
                + "); build the task with data_info=datamodule.data_info (the CLI does), or fine-tune with "
                "pretrained=<export> to move a trained model to a new charset"
            )

    # -- model construction
    def _build_model(self, arch: str, attn_type: Optional[str], overrides: dict[str, Any], pretrained: Optional[str]):
        if attn_type is not None:
            overrides["attn_type"] = attn_type
        info = self.data_info
        from_data = {k: info[k] for k in ("charset", "max_length", "img_size") if k in info}
        for k, v in from_data.items():
            if k in overrides and overrides[k] != v:
                raise ValueError(f"model_args.{k}={overrides[k]!r} disagrees with the data's {k}; set it on the data only")
        if pretrained is None:
            return create_model(arch, **{**from_data, **overrides})
        folder = resolve_pretrained(pretrained)
        # a run's .ckpt is read through a temporary export: messages name the file the user gave, not that folder
        shown = pretrained if Path(str(pretrained)).expanduser().is_file() else folder
        meta = read_export_config(folder)
        if meta["model_class"] != _class_path(SceneTextRecognizer):
            # another domain's export: named, not reported as a max_length / charset mismatch
            raise ValueError(f"pretrained {shown} holds a {meta['model_class']}, not a scene-text recognizer "
                             "(SceneTextRecognizer); give a str-* export folder or shipped name")
        cfg = meta["config"]
        arch_cfg = export_arch_config(arch, cfg)
        # the model is the export's architecture (built under `arch`'s name): its exports and checkpoints say the
        # export's name, as the LM task's do (a str-vanilla-small fine-tuned by a str-diff-tiny config said the latter)
        self.arch = meta.get("arch") or arch
        if cfg.get("max_length") != from_data.get("max_length", cfg.get("max_length")):
            raise ValueError(f"checkpoint {shown} has max_length {cfg.get('max_length')}, the data {from_data['max_length']}; set data.max_length to match")
        if "img_size" in from_data and _same(from_data["img_size"]) != _same(cfg.get("img_size")):
            # the encoder's position table is sized by the crop: the weights fit no other size
            raise ValueError(f"checkpoint {shown} reads img_size {list(cfg.get('img_size') or [])} crops, the data "
                             f"{list(from_data['img_size'])}; set data.img_size to match")
        if "charset" not in from_data or from_data["charset"] == cfg["charset"]:
            return create_model(arch, pretrained=folder, adapter=False, **{**arch_cfg, **overrides})
        # the overrides other than the data's fields are checked against the export as on its own charset (an
        # attn_type or head count of another architecture is named, not built and filled with the tensors that fit)
        same = {k: v for k, v in overrides.items() if k not in SceneTextRecognizer.data_fields}
        src = create_model(arch, pretrained=folder, adapter=False, **{**arch_cfg, **same})
        dst = create_model(arch, **{**arch_cfg, **from_data, **overrides})
        self.transfer_report = transfer_charset(src, dst)
        r = self.transfer_report
        print(
            f"fine-tuning {shown} on a new charset: kept {r['kept_tensors']} tensors whole and the rows of "
            f"{r['kept_char_rows']} characters in the character embedding and classifier; "
            f"reinitialized {len(r['reinitialized_chars'])} new characters {''.join(r['reinitialized_chars'])!r}; "
            f"dropped {len(r['dropped_chars'])} characters the data's charset lacks {''.join(r['dropped_chars'])!r}",
            flush=True,
        )
        return dst

    # -- training
    def no_weight_decay_names(self) -> set[str]:
        return super().no_weight_decay_names() if self.recipe == "parseq" else set()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        # the perm ordering's length (the longest label's slots, EOS included) read from the host batch: read from
        # the moved targets in training_step it was a device sync every GPU step (a CSD teacher's pseudolabels are
        # made on the device: those are read there)
        targets = batch.get("targets") if isinstance(batch, dict) else None
        if not (self.training and torch.is_tensor(targets) and targets.device.type == "cpu" and targets.dim() == 2):
            return batch
        if self.hparams.get("teacher") is not None:
            # the labelled rows the pseudolabel accuracy is over, counted on the host (no device sync a step)
            batch = {**batch, "labelled_rows": int((targets != -100).any(-1).sum())}
        elif "perm" in self.masks and self.recipe == "parseq":
            batch = {**batch, "longest_label": int((targets != -100).sum(-1).max())}
        return batch

    @property
    def _async_copy(self) -> bool:
        # CUDA stages a pageable host tensor before the call returns; MPS may read it after it is freed (silent
        # garbage: pytorch/pytorch#139550), so elsewhere the copy waits
        return self.device.type == "cuda"

    def _mask(self, mode: str, targets: Tensor, longest: Optional[int] = None) -> tuple[Tensor, Optional[Tensor]]:
        """The visibility mask of ``mode`` and the targets it is trained on (None: no target left). ``longest``: the
        batch's longest label in slots (EOS included), read on the host (None: read from ``targets``)."""
        T = targets.shape[1]
        if mode != "perm":
            return visibility(mode, T, self.device), targets
        # the permutation is drawn on the host (torch's global RNG, as before): its mask is built there and copied
        # without waiting for the device (a blocking copy is a device sync)
        if self.recipe == "v1":
            return visibility(torch.randperm(T), T).to(self.device, non_blocking=self._async_copy), targets
        # PARSeq: permute the character positions of the batch's longest label; its EOS slot comes last, the
        # slots after it (padding in every row) keep their order
        n = (int((targets != -100).sum(-1).max()) if longest is None else int(longest)) - 1
        order = torch.cat([torch.randperm(n), torch.arange(n, T)])
        # with EOS targets dropped, a batch of empty (pseudo)labels (n == 0) has no target left
        kept = targets.masked_fill(targets == self.model.charset.EOS, -100) if n > 0 else None
        return visibility(order, T).to(self.device, non_blocking=self._async_copy), kept

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, targets = batch["images"], batch["targets"]
        soft = None
        if self.teacher is not None:
            labels = targets
            targets, soft = self._teacher_targets(images)
            self._log_pseudolabel_accuracy(targets, labels, batch.get("labelled_rows"))
        memory = self.model.encode(images)
        kv = self.model.memory_kv(memory) if len(self.masks) > 1 else None  # projected once for every mask
        tokens, valid = self.model.content_tokens(targets)
        C = self.model.num_classes
        ce = kl = torch.zeros((), device=images.device)
        longest = batch.get("longest_label") if soft is None else None  # the host's count, for these targets only
        for mode in self.masks:
            mask, tgt = self._mask(mode, targets, longest)
            logits = self.model.decode_step(memory, tokens, mask, valid, memory_kv=kv)
            if tgt is None:  # parseq's perm of empty (pseudo)labels: no target left (a mean would be NaN)
                ce = ce + logits.sum() * 0.0  # in the graph: every rank's backward reaches the same parameters
                continue
            ce = ce + F.cross_entropy(logits.reshape(-1, C), tgt.reshape(-1), ignore_index=-100, label_smoothing=self.label_smoothing)
            if soft is not None:
                kl = kl + self._kl(logits, soft, tgt)
        loss = (ce + self.hparams.csd_kl_weight * kl) / len(self.masks)
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        if soft is not None:
            self.log("train/kl", kl / len(self.masks), batch_size=images.shape[0])
        return loss

    @torch.no_grad()
    def _teacher_targets(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher pseudolabels (its decoding + refinement) and its cloze logits given them."""
        t = self.teacher.to(images.device).eval()
        # in the teacher's dtype: under a 'bf16-true' / '64-true' trainer the batch comes in the student's
        # dtype, while the teacher (not a submodule) keeps its own
        images = images.to(next(t.parameters()).dtype)
        memory = t.encode(images)
        probs = t.decode(memory)
        ids = probs.argmax(-1)
        # the last slot is for EOS only: a reading with no EOS is cut at max_length characters (decode_probs),
        # so its pseudolabel is those characters then EOS, as the data encodes a label
        ids[:, -1] = t.charset.EOS
        ended = (ids == t.charset.EOS).long().cumsum(-1)
        # keep up to and including the first EOS; the rest is padding
        targets = ids.masked_fill(ended - (ids == t.charset.EOS).long() > 0, -100)
        return targets, t.cloze_logits(images, targets, memory=memory)

    def _log_pseudolabel_accuracy(self, pseudolabels: Tensor, labels: Tensor, n: Optional[int] = None) -> None:
        """``train/csd_pseudolabel_accuracy``: the percentage of the batch's labelled words whose teacher pseudolabel is
        the label, word for word (as ``val/accuracy`` scores readings; CSD papers report pseudolabel quality). Rows
        without a label (every slot ``-100``) are left out; a batch with none logs nothing. ``n``: their count, as
        the host batch gave it (else counted here: a device sync)."""
        labelled = (labels != -100).any(-1)
        n = int(labelled.sum()) if n is None else n
        if n == 0:
            return
        agree = ((pseudolabels == labels).all(-1) & labelled).sum()
        self.log("train/csd_pseudolabel_accuracy", 100.0 * agree / n, batch_size=n)

    def _kl(self, logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
        tau = self.hparams.csd_temperature
        valid = targets != -100
        # per slot, padding masked in place and the sum over the valid slots' count (batchmean over them): selected
        # with logits[valid], the slots made tensors of data-dependent size, a device sync twice per mask on a GPU
        log_p, q = F.log_softmax(logits / tau, -1), F.softmax(teacher_logits / tau, -1)
        per_slot = F.kl_div(log_p, q, reduction="none").sum(-1)
        return torch.where(valid, per_slot, 0).sum() / valid.sum() * tau * tau

    # -- evaluation
    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        readings = self.model.decode_probs(self.model(batch["images"]))
        preds: list[Optional[str]] = [r.text for r in readings]
        gts = list(batch["texts"])
        if self.eval_charset is not None:
            # PARSeq's test: the label as the test charset reads it (one it leaves empty is no sample: not scored,
            # counted), and the prediction through the same adapter
            gts = [self.eval_charset.clean(g)[0] for g in gts]
            preds = [self.eval_charset.clean(p)[0] if g else None for p, g in zip(preds, gts)]
        self.metrics[stage].update(preds, gts, batch["set"], batch.get("index"))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def _report(self, stage: str) -> None:
        self.metrics[stage].sync()  # a DDP collective: every rank calls it
        res = self.metrics[stage].compute()
        self.readings[stage] = {k: v for k, v in self.metrics[stage].samples.items() if v is not None}
        self.metrics[stage].reset()
        if not res:
            return
        self.results[stage] = res
        comb = res["combined"]
        # sync_dist: every rank holds the synced whole-split value (the mean of equal values is the value); without it
        # Lightning warns under DDP that an epoch-level value is one rank's
        self.log(f"{stage}/accuracy", comb["accuracy"], prog_bar=True, sync_dist=True)
        self.log(f"{stage}/one_minus_ned", comb["one_minus_ned"], sync_dist=True)
        if stage == "test" and self._trainer is not None and not self.trainer.sanity_checking:
            print("\n" + format_table(res) + "\n", flush=True)
            from zoo.tasks.callbacks import run_dir, write_json_new

            folder = run_dir(self.trainer)
            if self.trainer.is_global_zero and not self.trainer.fast_dev_run:  # a fast_dev_run logs nothing
                write_json_new(folder, "test_metrics.json", res)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    # -- predict: one row per image (the CLI writes predictions.jsonl; predict_folder writes CSV)
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        unreadable = batch.get("unreadable") or []
        self._unreadable.extend(unreadable)
        self._predict_seen += len(unreadable) + (0 if batch["images"] is None else len(batch["images"]))
        if self._unreadable:  # predict ends in an error naming every unreadable image: the rest is only checked
            return []
        readings = self.model.decode_probs(self.model(batch["images"]))
        keys = batch.get("paths") or batch.get("texts")
        return [{"image": k, "text": r.text, "confidence": round(r.confidence, 6)} for k, r in zip(keys, readings)]

    def on_predict_start(self) -> None:
        super().on_predict_start()
        r = self.transfer_report
        if r and r["reinitialized_chars"] and not self._trained_in_this_process():
            # pretrained=<export> under a data.charset of other characters: the export was moved to that charset
            # (as for fine-tuning), and the new characters' rows are untrained
            warnings.warn(
                f"predicting with {len(r['reinitialized_chars'])} characters the pretrained model never learned "
                f"({''.join(r['reinitialized_chars'])!r}: their rows were initialized at random because data.charset "
                "differs from the export's); set data.charset to the export's to read with it as trained, or "
                "fine-tune first", stacklevel=2,
            )
        folder = self._run_dir()  # a DDP collective: every rank, and every rank raises alike
        if folder is None or self.trainer.fast_dev_run:  # a fast_dev_run writes no predictions.csv
            return
        # refused before any image is read (it was refused after the whole run, with predictions.jsonl written)
        path = folder / "predictions.csv"
        if path.exists():
            raise FileExistsError(f"{path} exists; predict into a new run folder (--trainer.default_root_dir) or remove it")

    def on_predict_epoch_start(self) -> None:
        self._predictions = []
        self._unreadable, self._predict_seen = [], 0  # (path, reason) of the images that could not be read

    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, list):
            self._predictions.extend(outputs)

    def on_predict_epoch_end(self) -> None:
        if self._trainer is None:
            return
        from zoo.tasks.callbacks import run_dir

        from zoo.tasks.base import gather_objects

        path = run_dir(self.trainer) / "predictions.csv"  # DDP collectives: every rank runs both
        gathered = gather_objects((self._predictions, self._unreadable, self._predict_seen))
        parts = [g[0] for g in gathered]
        bad = sorted(b for g in gathered for b in g[1])
        if bad:  # every rank raises alike; the LMDB builder names all its bad images the same way
            folder = getattr(self.trainer.datamodule, "predict_dir", None)
            where = f"images of {folder}" if folder else "images"
            raise unreadable_images_error(bad, sum(g[2] for g in gathered), where, "no predictions.csv was written")
        if not self.trainer.is_global_zero:
            return
        # Lightning shards prediction with an unrepeated sampler: rank r reads samples r, r + W, ...
        # so interleaving the ranks' rows restores the dataset order.
        rows = [parts[r][i] for i in range(max(map(len, parts), default=0)) for r in range(len(parts)) if i < len(parts[r])]
        if not rows:
            return
        if self.trainer.fast_dev_run:  # no run folder: predictions.csv would land in the working directory
            print(f"fast_dev_run: {len(rows)} predictions read, no predictions.csv written (a smoke run writes no "
                  "files)", flush=True)
            return
        write_predictions_csv(rows, path)
        print(f"{len(rows)} predictions written to {path}", flush=True)

    def summary_lines(self) -> list[str]:
        c = self.model.config
        lines = [
            f"model: {self._model_name(self.arch)} (ViT {c.enc_depth}x{c.enc_dim}, decoder {c.dec_depth}x{c.dec_dim}, {c.attn_type} "
            f"cross-attention, {c.self_attn_type} self-attention), {self.model.num_params() / 1e6:.3f}M parameters",
            f"charset: {len(c.charset)} characters, max length {c.max_length}; decoding {c.decode} + {c.refine_iters} refinement",
        ]
        if self.hparams.get("teacher") is not None:
            lines.append(f"CSD teacher: {self.hparams.teacher} (T={self.hparams.csd_temperature}, KL weight {self.hparams.csd_kl_weight})")
        if self.transfer_report:
            r = self.transfer_report
            lines.append(f"charset transfer: kept {r['kept_char_rows']} rows, reinitialized {r['reinitialized_chars']}")
        return lines


__all__ = ["MASK_MODES", "RecognitionTask", "read_folder", "write_predictions_csv", "TextMetrics", "edit_distance", "format_table", "one_minus_ned"]
