"""Callbacks the CLI always adds: end-of-run summary, export after fit, prediction writer."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import IO, Any, Callable, Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from zoo.hub import refuse_occupied


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder (``lightning_logs/version_N`` by default).

    ``trainer.log_dir`` is a collective under DDP: call this on every rank, never in rank-zero-only code.
    A logger's ``save_dir`` of ``~/runs`` (a YAML value, or ``--trainer.logger.save_dir=~/runs``: no shell expands it
    there) stays ``~`` in ``log_dir`` while the logger writes under the home folder: expanded here as it is there.
    """
    return Path(trainer.log_dir or trainer.default_root_dir).expanduser()


def create_new(path: Path, fill: Callable[[IO[str]], Any], newline: Optional[str] = None) -> Path:
    """Create ``path`` (UTF-8; an existing file is a ``FileExistsError`` and stays untouched) and write it with
    ``fill(f)``; a write that fails part-way removes the file, so no half-written file is left for a later run to
    trust or be refused over."""
    f = open(path, "x", encoding="utf-8", newline=newline)
    try:
        with f:
            fill(f)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def write_json_new(folder: Path, name: str, data: Any) -> Path:
    """Write ``data`` as JSON to ``folder / name``, or to ``<stem>_1<suffix>``, ``<stem>_2<suffix>``... when that is
    taken (an earlier run into the same folder: no logger, a fixed logger version, a second ``trainer.test`` in one
    session): nothing is overwritten, and the message says where it went. The text is made before the file is
    created; a write that fails part-way removes its file. A non-finite float (a NaN metric of a diverged model or of
    data it is undefined on) is written as ``null``, not as the bare ``NaN`` / ``Infinity`` that is not JSON, and a
    warning names it."""
    bad: list[str] = []
    text = json.dumps(_finite_or_null(data, "", bad), indent=2, allow_nan=False) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    stem, suffix = Path(name).stem, Path(name).suffix
    k = 0
    while True:
        path = folder / (name if k == 0 else f"{stem}_{k}{suffix}")
        try:
            create_new(path, lambda f: f.write(text))
        except FileExistsError:
            k += 1
            continue
        if k:
            print(f"{folder / name} exists (an earlier run); this run's are in {path}", flush=True)
        if bad:
            counts = {key: bad.count(key) for key in dict.fromkeys(bad)}
            named = ", ".join(key if n == 1 else f"{key} ({n} values)" for key, n in counts.items())
            warnings.warn(f"{path}: non-finite (NaN or infinite) values written as null: {named}", stacklevel=2)
        return path


def _finite_or_null(data: Any, key: str, bad: list[str]) -> Any:
    """``data`` with every NaN / infinite float replaced by ``None``; the key path of each goes into ``bad``
    (``outer/inner``; a list's items under the list's key)."""
    if isinstance(data, dict):
        return {k: _finite_or_null(v, f"{key}/{k}" if key else str(k), bad) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite_or_null(v, key, bad) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        bad.append(key or "(value)")
        return None
    return data


class ExportOnFitEnd(L.Callback):
    """After ``fit``, export the model to ``<run dir>/export`` for ``zoo.load_pretrained``.

    Args:
        enabled: turn the export off.
        folder: export folder; default ``<run dir>/export``. An existing non-empty folder is an error,
            raised when fit starts (before any training), not when it ends.
    """

    def __init__(self, enabled: bool = True, folder: Optional[str] = None) -> None:
        self.enabled, self.folder = enabled, folder
        self.exported: Optional[Path] = None

    def _target(self, trainer: L.Trainer) -> Path:
        if self.folder:
            return Path(self.folder).expanduser()
        if trainer.fast_dev_run:
            # a smoke run has no logger, hence no run folder: its export goes to one place of its own, which
            # each smoke run replaces (it only ever holds a smoke run's export)
            return Path(trainer.default_root_dir) / "lightning_logs" / "fast_dev_run" / "export"
        return run_dir(trainer) / "export"

    def _smoke(self, trainer: L.Trainer) -> bool:
        return bool(trainer.fast_dev_run) and not self.folder

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled or not hasattr(pl_module, "export") or self._smoke(trainer):
            return
        # every rank (run_dir is a collective), and every rank raises alike
        refuse_occupied(
            self._target(trainer),
            "the model is exported there when fit ends and nothing is overwritten; choose a new --export.folder "
            "or pass --export.enabled=false",
            what="export folder",
        )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or not hasattr(pl_module, "export"):
            return
        folder = self._target(trainer)
        finish = getattr(pl_module, "finish_fit", None)
        if callable(finish):  # e.g. the forecaster's restore_best, also when on_train_end did not run
            finish()
        if trainer.is_global_zero:
            self.exported = pl_module.export(folder, overwrite=self._smoke(trainer))


def fit_epochs(trainer: L.Trainer) -> str:
    """The epochs a fit went through: the count of whole ones, and the batches of the last one where the run stopped
    part-way into it (``max_steps``, an early stop at a mid-epoch validation). Lightning's ``current_epoch`` counts
    the epoch a run stopped inside as done: a run stopped 3 batches into its first epoch (which saved
    ``epoch=0-step=3.ckpt``) said ``epochs: 1``. A fit resumed at its ``max_steps`` runs no loop: the counts are the
    checkpoint's, saved inside its last batch (that batch ready, not completed; its epoch started, not completed)."""
    epochs = trainer.fit_loop.epoch_progress.current
    total = trainer.num_training_batches
    batches = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    if not isinstance(total, int) or not 0 < batches <= total:  # an endless loader (no length), no batch run
        return str(trainer.current_epoch)
    begun = max(epochs.started, epochs.completed)  # the epochs begun, the last one included
    return f"{begun - 1} + {batches}/{total} batches" if batches < total else str(begun)


class RunSummary(L.Callback):
    """Prints a readable summary when fit / validate / test ends.

    The fit summary names the folder an :class:`ExportOnFitEnd` wrote, so that callback must come
    before this one in ``trainer.callbacks`` (hooks run in list order; ``zoo.cli`` adds them so).

    Args:
        enabled: turn the summary off.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._t0 = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.time()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.state.fn == "fit":
            self._t0 = time.time()

    on_test_start = on_validation_start

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(trainer, pl_module, "fit")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._print(trainer, pl_module, "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(trainer, pl_module, "test")

    def _print(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        logs = run_dir(trainer)  # collective: every rank
        if not trainer.is_global_zero:
            return
        lines = [f"zoo {stage} summary", "-" * 60]
        lines += getattr(pl_module, "summary_lines", lambda: [])()
        progress = f"steps: {trainer.global_step}  epochs: {fit_epochs(trainer)}  "
        step, epoch = getattr(pl_module, "checkpoint_progress", (None, None)) if trainer.ckpt_path else (None, None)
        if stage != "fit" and step is not None:  # validate / test restore no loop progress: say the weights'
            progress = f"checkpoint saved at step {step} (epoch {epoch}, 0-based)  "
        elif stage != "fit" and not trainer.global_step:  # nothing trained here, no checkpoint: no count to give
            progress = ""
        lines.append(f"{progress}time: {time.time() - self._t0:.1f}s  device: {pl_module.device}")
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}
        width = max((len(k) for k in metrics), default=0)
        for k in sorted(metrics):
            lines.append(f"  {k:<{width}}  {metrics[k]:.4f}")
        for cb in trainer.callbacks:
            if isinstance(cb, ExportOnFitEnd) and cb.exported is not None and stage == "fit":
                lines.append(f"exported model: {cb.exported}")
                lines.append(f"  load it with: zoo.load_pretrained({str(cb.exported)!r})")
            best = getattr(cb, "best_model_path", "")
            # validate / test restore the fit's checkpoint callback state: its best is not what they evaluated
            if best and stage == "fit":
                # without a monitor Lightning's best_model_path is the latest save (its default callback, or a
                # latest-{step} one beside a metric's): "best" is said only of a checkpoint a metric chose
                monitor = getattr(cb, "monitor", None)
                label = f"best checkpoint ({monitor}, {cb.mode})" if monitor else "latest checkpoint"
                saved = getattr(cb, "_last_global_step_saved", None)  # Lightning saves on validation / epoch end
                note = "resume with --ckpt_path"
                if not monitor and isinstance(saved, int) and 0 < saved < trainer.global_step:
                    # another checkpoint callback's later save (coco_minilm.yaml's val/r1 one with save_last, beside
                    # its latest-{step} one) holds the steps this one missed: not "saved nowhere"
                    newest = max((s for c in trainer.checkpoint_callbacks
                                  if isinstance(s := getattr(c, "_last_global_step_saved", None), int)), default=0)
                    if saved < newest:
                        note = (f"step {saved} of {trainer.global_step}; another checkpoint of this run holds step "
                                f"{newest}: --ckpt_path last resumes from the newest")
                    else:  # a run that stops between two saves: its last steps are in the export, not in a checkpoint
                        kept = ("are in the export only" if any(isinstance(c, ExportOnFitEnd) and c.exported is not None
                                                                for c in trainer.callbacks) else "were saved nowhere")
                        note = (f"step {saved} of {trainer.global_step}: the last {trainer.global_step - saved} "
                                f"step(s) {kept}; --ckpt_path resumes from step {saved}")
                lines.append(f"{label}: {best} ({note})")
        if stage != "fit" and trainer.ckpt_path:
            lines.append(f"evaluated checkpoint: {trainer.ckpt_path}")
        # a fast_dev_run has no logger: nothing was written to a run folder
        lines.append("logs: none (fast_dev_run logs nothing)" if trainer.fast_dev_run else f"logs: {logs}")
        print("\n" + "\n".join(lines) + "\n", flush=True)


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict_step`` returns (lists of dicts) to ``<run dir>/predictions.jsonl``.

    Args:
        output: output file; default ``<run dir>/predictions.jsonl``. An existing file is an error. Rows go to
            ``<output>.partial`` while predicting, renamed to ``output`` when predict ends: a stopped run leaves
            only the ``.partial`` file, never a file that looks complete.
        echo: also print each prediction.
    """

    def __init__(self, output: Optional[str] = None, echo: bool = True) -> None:
        super().__init__(write_interval="batch_and_epoch")
        self.output, self.echo = output, echo
        self.path: Optional[Path] = None
        # under DDP each rank predicts its own share: rows are gathered when the epoch ends
        self._held: list[tuple[Optional[list[int]], list]] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # expanduser: `--predict_writer.output=~/p.jsonl` (no shell expands it) made a folder named "~" here
        folder = run_dir(trainer)  # a collective under DDP: every rank
        self._warned: set[str] = set()  # keys already named as non-finite in this run
        if trainer.fast_dev_run and not self.output:  # no run folder: the rows are printed only
            self.path = None
            if trainer.is_global_zero:
                print("fast_dev_run: no predictions.jsonl is written (a smoke run writes no files; "
                      "--predict_writer.output names a file to write anyway)", flush=True)
            return
        self.path = Path(self.output).expanduser() if self.output else folder / "predictions.jsonl"
        if trainer.is_global_zero:
            if self.path.exists():
                raise FileExistsError(f"{self.path} exists; choose another --predict_writer.output")
            if self._partial.exists():
                raise FileExistsError(
                    f"{self._partial} exists: the rows of a predict run that stopped part-way; remove it (or keep it "
                    "elsewhere) or choose another --predict_writer.output"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def _partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.path is not None and self._partial.exists():
            self._partial.replace(self.path)

    def write_on_batch_end(self, trainer, pl_module, prediction: Any, batch_indices, batch, batch_idx, dataloader_idx):
        if not isinstance(prediction, list) or (not prediction and trainer.world_size <= 1):
            return  # nothing to write (a task that writes its own file at the epoch's end)
        if trainer.world_size > 1:
            self._held.append((list(batch_indices) if batch_indices is not None else None, prediction))
        elif trainer.is_global_zero:
            self._write(prediction)

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        if trainer.world_size <= 1:
            return
        from zoo.tasks.base import gather_objects

        parts = gather_objects(self._held)  # a collective: every rank
        self._held = []
        if not trainer.is_global_zero:
            return
        batches = [b for part in parts for b in part]
        if all(idx is not None and len(idx) == len(rows) for idx, rows in batches):
            # one row per sample: back in dataset order (the ranks' shares interleave)
            pairs = [(i, r) for idx, rows in batches for i, r in zip(idx, rows)]
            self._write([row for _, row in sorted(pairs, key=lambda pair: pair[0])])
        else:
            self._write([row for _, rows in batches for row in rows])

    def _write(self, rows: list) -> None:
        if not rows:
            return
        bad: list[str] = []
        rows = _finite_or_null(rows, "", bad)  # a diverged model's NaN: null, as in test_metrics.json
        if self.path is not None:
            with open(self._partial, "a", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, default=str, allow_nan=False) + "\n")
        if self.echo or self.path is None:  # a smoke run's rows are printed, as the only output it gives
            for row in rows:
                print(json.dumps(row, default=str, ensure_ascii=False, allow_nan=False), flush=True)
        new = [key for key in dict.fromkeys(bad) if key not in self._warned]
        if new:
            self._warned.update(new)
            warnings.warn(f"{self.path or 'predictions'}: non-finite (NaN or infinite) predictions written as null: "
                          f"{', '.join(new)}", stacklevel=2)
