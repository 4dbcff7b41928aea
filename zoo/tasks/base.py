"""What every domain's LightningModule shares: optimizer and schedule, assets in checkpoints, export."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

from zoo.data.files import PathsAsText, plain_paths
from zoo.hub import export_model


def wide_float(device: torch.device) -> torch.dtype:
    """The widest float ``device`` computes in: float64, except on Apple's MPS, which has no float64 (float32)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


class Float64Metric(Metric):
    """A torchmetrics ``Metric`` whose states stay float64 whatever the module is cast to: a Trainer with
    precision "bf16-true" / "16-true" calls ``.to(dtype)`` on the LightningModule (and runs the steps with that
    default dtype), which would otherwise turn evaluation sums and counts into half-precision running sums
    (whole numbers exact only up to 256 in bf16). On a device without float64 (MPS: ``accelerator: auto`` on an
    Apple-silicon Mac) the states are float32 (:func:`wide_float`); updates accumulate in the states' dtype."""

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "Float64Metric":
        this = super()._apply(fn, *args, **kwargs)
        for name, default in this._defaults.items():
            if torch.is_tensor(default) and default.dtype != wide_float(default.device):
                this._defaults[name] = default.to(wide_float(default.device))
            value = getattr(this, name)
            if torch.is_tensor(value) and value.dtype != wide_float(value.device):
                setattr(this, name, value.to(wide_float(value.device)))
        return this


def _rng_states() -> dict[str, Any]:
    """This process's global random states (torch, CUDA once initialized, numpy, Python), in plain values and
    tensors only, so a checkpoint holding them still loads with ``torch.load(weights_only=True)``."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    """Put back the states :func:`_rng_states` collected."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if states.get("cuda") and torch.cuda.is_available():
        for i, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state.cpu(), i)


class ZooTask(PathsAsText, L.LightningModule):
    """Base LightningModule: holds ``self.model`` (a zoo model) and trains it with AdamW.

    Args:
        lr: peak learning rate.
        weight_decay: AdamW decay, applied to matrices only (not norms, biases, lambdas), and not to the
            tensors a module lists in its ``no_weight_decay()`` (timm's convention: position embeddings,
            class tokens; see :meth:`no_weight_decay_names`).
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        scheduler: ``cosine`` (decay to ``min_lr_ratio * lr`` over the run) or ``constant``.
        min_lr_ratio: floor of the cosine schedule.
    """

    model: nn.Module
    # Architecture fields a datamodule decides (data_info keys of the same name); a checkpoint of a model
    # built from ``pretrained`` leaves them to the data, as one trained from scratch does.
    data_fields: tuple[str, ...] = ()

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        scheduler: str = "cosine",
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"scheduler must be 'cosine' or 'constant', got {scheduler!r}")
        self.opt_args = dict(
            lr=lr, weight_decay=weight_decay, betas=tuple(betas), warmup_steps=warmup_steps,
            scheduler=scheduler, min_lr_ratio=min_lr_ratio,
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward (``task(x)`` as Lightning users call it, and what ``to_onnx`` traces)."""
        return self.model(*args, **kwargs)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, map_location: Any = None, hparams_file: Any = None,
                             strict: Optional[bool] = None, **kwargs: Any) -> Any:
        """Lightning's ``load_from_checkpoint``; keyword arguments override the saved hyperparameters, as Lightning
        documents, except ``model_args``: a dict given here is merged over the saved one, key by key
        (``model_args={"dropout": 0.0}`` changes the dropout and keeps the architecture the weights were trained
        with; Lightning would replace the whole dict, and the model built from the rest would not fit the weights).

        An ``hparams_file`` (a run's ``hparams.yaml``) is read as plain YAML and its values override the
        checkpoint's, as Lightning documents (its ``model_args`` then is the one ``model_args`` is merged over).
        (Lightning reads it into an OmegaConf ``DictConfig`` when omegaconf is installed, which the
        ``LightningCLI`` instantiator that ``zoo fit`` saves in the checkpoint refuses for dict arguments such as
        ``data_info``.)

        A checkpoint another task class wrote (its ``zoo_task_class``: another domain) is refused by name; one
        loaded with ``ZooTask`` itself, which builds no model, is loaded with the class it names."""
        writer = _refuse_other_task(cls, _peek_task_class(checkpoint_path, kwargs.get("weights_only")))
        if cls is ZooTask and writer is not None and writer is not ZooTask:
            return writer.load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                               strict=strict, **kwargs)
        file_hparams: dict[str, Any] = {}
        if hparams_file is not None:
            import yaml

            path = Path(hparams_file)
            if path.suffix.lower() not in (".yaml", ".yml"):
                raise ValueError(f"hparams_file must be a .yaml / .yml file (a run's hparams.yaml), got {path}")
            hparams = yaml.safe_load(path.read_text()) or {}
            if not isinstance(hparams, dict):
                raise ValueError(f"{path} holds a {type(hparams).__name__}, not a mapping of hyperparameters")
            # the instantiator and class path are the checkpoint's business; explicit kwargs win over the file
            file_hparams = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
        given = kwargs.get("model_args")
        if isinstance(given, Mapping):
            if "model_args" in file_hparams:
                saved = file_hparams["model_args"]
            else:
                saved = _saved_hparams(checkpoint_path, kwargs.get("weights_only")).get("model_args")
            kwargs["model_args"] = {**dict(saved or {}), **dict(given)}
        kwargs = {**file_hparams, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, strict=strict, **kwargs)

    # -- optimization
    def no_weight_decay_names(self) -> set[str]:
        """Names (as in ``named_parameters()``) of the matrices kept out of weight decay: those each submodule
        returns from ``no_weight_decay()`` (timm's convention, names relative to that module; a timm ViT lists
        ``pos_embed`` and ``cls_token``), joined to the module's path."""
        out = set()
        for path, module in self.named_modules():
            fn = getattr(module, "no_weight_decay", None)
            if module is not self and callable(fn):
                out |= {f"{path}.{name}" if path else name for name in fn()}
        return out

    def _param_groups(self, exempt: set[str]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 and name not in exempt else no_decay).append(p)
        return decay, no_decay

    def configure_optimizers(self) -> Any:
        if self._trainer is not None and str(self.trainer.precision) == "16-true":
            # float16 weights and AdamW moments: eps=1e-8 rounds to 0 in float16, so the first step divides by
            # zero and every weight turns NaN (bf16 has float32's range; the mixed modes keep float32 weights)
            raise ValueError(
                "precision '16-true' trains the weights and AdamW's state in float16, where its eps (1e-8) rounds to "
                "0 and the first step turns the weights NaN; train with precision '16-mixed' or 'bf16-mixed' "
                "(float32 weights) or 'bf16-true' ('16-true' is fine for validate / test / predict)"
            )
        a = self.opt_args
        exempt = getattr(self, "_resumed_exempt", None)
        decay, no_decay = self._param_groups(self.no_weight_decay_names() if exempt is None else exempt)
        # the saved hyperparameter when there is one: Lightning's Tuner.lr_find (update_attr=True) and users set
        # hparams.lr, which the optimizer ignored when it read the value kept at construction
        lr = self.hparams.get("lr", a["lr"])
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": a["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            betas=a["betas"],
        )
        warm, floor, cosine = a["warmup_steps"], a["min_lr_ratio"], a["scheduler"] == "cosine"
        total = 1
        if cosine and self._trainer is not None:
            estimate = self.trainer.estimated_stepping_batches
            if not math.isfinite(estimate):  # max_epochs=-1 (a run bounded by max_time) or an endless loader
                raise ValueError(
                    "the cosine schedule needs the run's length: set trainer.max_steps (or max_epochs), or use "
                    "scheduler: constant for a run bounded by trainer.max_time"
                )
            total = max(int(estimate), 1)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            if not cosine:
                return 1.0
            t = min((step - warm) / max(total - warm, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``; the weights count as trained ones (Lightning's manual load,
        ``task.load_state_dict(torch.load(ckpt)["state_dict"])``, is no random init to warn about)."""
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._weights_loaded = True
        return out

    def _trained_in_this_process(self) -> bool:
        """Whether the weights came from a checkpoint (--ckpt_path, load_from_checkpoint) or a fit in this process."""
        return getattr(self, "_weights_loaded", False) or getattr(self, "_fitted", False)

    def _warn_if_untrained(self, verb: str) -> None:
        # weights come from pretrained=, a checkpoint (--ckpt_path, load_from_checkpoint) or a fit in this process
        trained = self.hparams.get("pretrained") is not None or self._trained_in_this_process()
        if not trained:
            warnings.warn(
                f"{type(self).__name__} {verb} with randomly initialized weights: pass --ckpt_path <.ckpt> or "
                "--model.init_args.pretrained <export>", stacklevel=3,
            )

    def on_predict_start(self) -> None:
        self._warn_if_untrained("predicts")

    def on_validation_start(self) -> None:
        if self._trainer is not None and self.trainer.state.fn == "validate":  # not fit's validation loop
            self._warn_if_untrained("validates")

    def on_test_start(self) -> None:
        self._warn_if_untrained("tests")

    def on_train_start(self) -> None:
        self._restore_best_k()
        # A resumed fit's optimizer holds the learning rate its checkpoint's schedule set for the next step; a run
        # resumed with another length (a longer max_steps) rebuilt the schedule for that length, yet took its first
        # step at the old schedule's rate. Each group's rate at the restored position of the schedule built here
        # (the same value when the length is unchanged).
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.LambdaLR) and sched.last_epoch > 0:
                for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                    group["lr"] = base * fn(sched.last_epoch)
                sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]

    def _restore_best_k(self) -> None:
        """Give each monitoring ``ModelCheckpoint`` of a resumed fit the best checkpoints its run kept so far.

        A resumed ``python -m zoo fit`` saves into a new version folder, and Lightning reloads a ModelCheckpoint's
        scores only when its folder is unchanged: the resumed run's first validation became "best" however it
        scored, and the fit summary and ``--ckpt_path best`` named it over the earlier, better checkpoint. The
        earlier files that still exist are ranked as kept (Lightning never deletes a file outside the callback's own
        folder); a callback that already holds scores (same folder) is left as Lightning restored it."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        saved, self._resumed_callbacks = getattr(self, "_resumed_callbacks", None) or {}, None
        for cb in self.trainer.checkpoint_callbacks:
            state = saved.get(cb.state_key) if isinstance(cb, ModelCheckpoint) and cb.monitor else None
            if not state or cb.best_k_models or state.get("dirpath") == cb.dirpath:
                continue
            kept = {path: score for path, score in (state.get("best_k_models") or {}).items()
                    if Path(path).is_file() and torch.is_tensor(score)}
            if not kept or cb.save_top_k == 0:
                continue
            ranked = sorted(kept, key=lambda path: float(kept[path]), reverse=cb.mode == "max")  # best first
            if cb.save_top_k > 0:
                ranked = ranked[: cb.save_top_k]
            cb.best_k_models = {path: kept[path] for path in ranked}
            cb.best_model_path, cb.best_model_score = ranked[0], kept[ranked[0]]
            cb.kth_best_model_path, cb.kth_value = ranked[-1], kept[ranked[-1]]

    def on_fit_start(self) -> None:
        self._fitted = True
        # torchmetrics' reset() under validate / test (inference mode) leaves inference tensors as metric
        # states, which fit's validation (no_grad) cannot update in place: fit starts from fresh states
        from torchmetrics import Metric

        with torch.inference_mode(False):
            for m in self.modules():
                if isinstance(m, Metric):
                    m.reset()

    # -- assets (tokenizer, scaler, charset) travel inside .ckpt files too
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["zoo_task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        # every process's random states (a collective: Lightning calls this hook on every rank), for an exact resume
        checkpoint["zoo_rng_states"] = gather_objects(_rng_states())
        hp = checkpoint.get("hyper_parameters")
        if hp is not None and hp.get("pretrained") is not None:
            hp.update(self._rebuild_hparams(hp))
        # a pathlib.Path (Python API) as text: Lightning loads checkpoints weights-only. save_hyperparameters does it
        # for the zoo's own classes; this covers a user's datamodule and hparams edited after __init__
        for key in ("hyper_parameters", "datamodule_hyper_parameters"):  # the task's and the datamodule's
            if isinstance(checkpoint.get(key), dict):
                checkpoint[key].update({k: plain_paths(v) for k, v in checkpoint[key].items()})
        if hasattr(self, "arch"):  # the model's registered name (None for a converted checkpoint), which the
            checkpoint["zoo_arch"] = self.arch  # rebuilt hparams' name need not be (see _rebuild_hparams)
        if getattr(self.model, "adapter_config", None):
            # its record of the base (checksums of the pretrained weights); a model rebuilt from the config
            # re-applies the adapter over fresh weights, so the record travels with the checkpoint
            checkpoint["zoo_adapter_config"] = self.model.adapter_config
        if hasattr(self.model, "save_assets"):
            with tempfile.TemporaryDirectory() as tmp:
                self.model.save_assets(tmp)
                checkpoint["zoo_assets"] = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}

    def _warn_epoch_count(self, checkpoint: dict[str, Any]) -> None:
        """Lightning (2.6) counts one epoch too many when a fit with both ``max_steps`` and a finite ``max_epochs``
        resumes from a checkpoint saved at an epoch's end (its epoch progress processed, not yet completed; see
        Lightning#19617): if ``max_epochs`` is what ends the run, it stops an epoch early without a word."""
        t = self._trainer
        total = (((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_progress") or {}).get("total") or {}
        max_epochs = t.max_epochs if t.max_epochs is not None else -1
        if t.max_steps != -1 and max_epochs != -1 and total.get("processed", 0) > total.get("completed", 0):
            warnings.warn(
                f"resuming from a checkpoint of epoch {total.get('processed', 1) - 1} (saved at its end, or inside it "
                f"where max_steps stopped that run) with both "
                f"max_steps ({t.max_steps}) and max_epochs ({max_epochs}) set: Lightning counts one epoch too many "
                "there (Lightning#19617), so if max_epochs is what ends this run it stops one epoch early; set "
                "--trainer.max_epochs -1 to train to max_steps, or one more epoch", stacklevel=2,
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        _refuse_other_task(type(self), checkpoint.get("zoo_task_class"))
        self._weights_loaded = True
        # how far the loaded weights were trained (validate / test restore no loop progress: the trainer says 0)
        self.checkpoint_progress = (checkpoint.get("global_step"), checkpoint.get("epoch"))
        self._resumed_exempt = None
        saved = [len(g["params"]) for g in (checkpoint.get("optimizer_states") or [{}])[0].get("param_groups", [])]
        fitting = self._trainer is not None and self._trainer.state.fn == "fit"
        self._resumed_callbacks = checkpoint.get("callbacks") if fitting else None  # see _restore_best_k
        if fitting:
            self._warn_epoch_count(checkpoint)
        rng = checkpoint.get("zoo_rng_states")
        if fitting and rng:  # never for load_from_checkpoint (no trainer) or validate / test / predict
            # a resumed fit goes on with the random states saved with the checkpoint (Lightning saves none): the
            # next epoch's shuffle (RandomSampler seeds from torch's global RNG when the fit loop makes the epoch's
            # iterator; nothing between here and there draws, the sanity check runs under isolate_rng) and dropout
            # masks are those of the uninterrupted run
            if len(rng) == self._trainer.world_size:
                _set_rng_states(rng[self._trainer.global_rank])
            else:
                warnings.warn(
                    f"{type(self).__name__}: the checkpoint holds the random states of {len(rng)} process(es), this "
                    f"run has {self._trainer.world_size}: the resumed run draws its data order and dropout afresh",
                    stacklevel=2,
                )
        if fitting and saved:  # resuming fit: the saved optimizer state must fit the groups (test / predict ignore it)
            now = [len(g) for g in self._param_groups(self.no_weight_decay_names())]
            if saved != now and saved == [len(g) for g in self._param_groups(set())]:
                # saved before no_weight_decay() was honoured (2026-11-27): the run goes on as it started
                warnings.warn(
                    f"{type(self).__name__}: the checkpoint's optimizer weight-decays every matrix (saved before "
                    "modules' no_weight_decay() was honoured); the resumed run keeps that grouping", stacklevel=2,
                )
                self._resumed_exempt = set()
            elif saved != now:
                raise ValueError(
                    f"the checkpoint's optimizer has parameter groups of sizes {saved} (weight-decayed, not), this "
                    f"{type(self).__name__} {now}: it was saved with other weight-decay settings (e.g. another STR "
                    "recipe); resume it with the settings it was trained with"
                )
        if "zoo_arch" in checkpoint:
            self.arch = checkpoint["zoo_arch"]
        if checkpoint.get("zoo_adapter_config") and getattr(self.model, "adapter_config", None):
            self.model.adapter_config = checkpoint["zoo_adapter_config"]
        assets = checkpoint.get("zoo_assets")
        if assets and hasattr(self.model, "load_assets"):
            with tempfile.TemporaryDirectory() as tmp:
                for name, data in assets.items():
                    (Path(tmp) / name).write_bytes(data)
                self.model.load_assets(tmp)

    def _rebuild_hparams(self, hp: dict[str, Any]) -> dict[str, Any]:
        """``pretrained`` / ``model_args`` that rebuild this model's architecture without the folder it
        started from: the checkpoint holds every weight and asset, so it loads after that folder is moved
        or deleted (and resuming ``fit`` from it does not read the folder again)."""
        from zoo.hub import DEFAULT_RUNTIME_FIELDS, export_arch_config, list_models

        arch = getattr(self, "arch", None) or hp.get("arch")  # the export's name when it had one
        if arch not in list_models():  # registered where the export was made, not here: the config's name built it
            arch = hp.get("arch")  # (the checkpoint's zoo_arch keeps the export's)
        fields = export_arch_config(arch, dataclasses.asdict(self.model.config))
        info = hp.get("data_info") or {}
        fields = {k: v for k, v in fields.items() if not (k in self.data_fields and k in info)}
        runtime = getattr(self.model, "runtime_fields", DEFAULT_RUNTIME_FIELDS)
        given = {k: v for k, v in (hp.get("model_args") or {}).items() if k in runtime}
        return {"pretrained": None, "model_args": {**fields, **given}, **({"arch": arch} if "arch" in hp else {})}

    def _run_dir(self) -> Optional[Path]:
        """The run's folder (:func:`zoo.tasks.callbacks.run_dir`; a DDP collective), None without a trainer."""
        if self._trainer is None:
            return None
        from zoo.tasks.callbacks import run_dir

        return run_dir(self.trainer)

    def finish_fit(self) -> None:
        """Last changes to the weights at the end of a fit (none here). Called by ``on_train_end`` where a
        task needs it, and by :class:`~zoo.tasks.callbacks.ExportOnFitEnd` before it exports: Lightning
        skips ``on_train_end`` when a resumed fit has nothing left to train (``--ckpt_path`` at
        ``max_steps``), so the export cannot rely on it."""

    # -- sharing
    def export(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Export the model (config.json + model.safetensors + assets) for ``zoo.load_pretrained``."""
        return export_model(self.model, folder, arch=getattr(self, "arch", None), extra=self.export_extra(),
                            overwrite=overwrite)

    def export_extra(self) -> Optional[dict[str, Any]]:
        """What an export records under ``extra`` in its config.json (provenance; None: nothing)."""
        return None

    def summary_lines(self) -> list[str]:
        """Extra lines for the end-of-run summary (domain specific)."""
        return []

    def _model_name(self, name: Any) -> str:
        """``name`` for the summary's model line, with where the weights came from when they came from an export
        (the registered name only sizes the model then: the export's architecture is built under it)."""
        source = self.hparams.get("pretrained")
        return f"{name}" if source is None else f"{name}, weights from {source}"


def _task_class(name: Any) -> Optional[type]:
    """The ZooTask class a checkpoint's ``zoo_task_class`` (``module.Class``) names, looked up among the modules
    already imported (a checkpoint's name imports nothing, as Lightning's class check); None when it names none
    there (a user's subclass whose module this process has not imported)."""
    import sys

    if not isinstance(name, str) or "." not in name:
        return None
    module, _, attr = name.rpartition(".")
    found = getattr(sys.modules.get(module), attr, None)
    return found if isinstance(found, type) and issubclass(found, ZooTask) else None


def _task_lineage(cls: type) -> set[str]:
    """``module.Qualname`` of ``cls`` and of its bases that are zoo tasks (ZooTask itself left out): by name, so a
    class defined again (a notebook cell run twice) is still the class its earlier instances saved."""
    return {f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__ if issubclass(c, ZooTask) and c is not ZooTask}


def _refuse_other_task(cls: type, name: Any) -> Optional[type]:
    """The task class that wrote a checkpoint (its ``zoo_task_class`` entry ``name``), after refusing ``cls`` when
    the two share no task class (another domain's task, whose hyperparameters and weights ``cls`` cannot take); None
    when the checkpoint names no importable class."""
    writer = _task_class(name)
    if writer is None or cls is ZooTask or (_task_lineage(writer) | {name}) & _task_lineage(cls):
        return writer
    raise ValueError(
        f"the checkpoint was written by {name}, not a {cls.__name__} (nor a subclass of it): load it with "
        f"{writer.__name__}.load_from_checkpoint (or zoo.load_pretrained(<ckpt>) for its model), or give the "
        f"{cls.__name__} a checkpoint of its own (ckpt_path / --ckpt_path)"
    )


def _peek_task_class(checkpoint_path: Any, weights_only: Optional[bool] = None) -> Any:
    """A local checkpoint's (a path or an open binary file) ``zoo_task_class``, read without copying the weights;
    None for a remote one (read once, by Lightning: ``on_load_checkpoint`` checks it then)."""
    if not hasattr(checkpoint_path, "read"):
        try:
            if not Path(checkpoint_path).is_file():
                return None
        except (TypeError, ValueError):
            return None
    try:
        return _saved_entries(checkpoint_path, weights_only)[1]
    except Exception:  # noqa: BLE001 -- an unreadable file: Lightning's own load names the problem
        return None


def _saved_hparams(checkpoint_path: Any, weights_only: Optional[bool] = None) -> dict[str, Any]:
    """The hyperparameters saved in a checkpoint (a path, a URL or an open binary file, left where it was), read
    without copying the weights (a local file is memory-mapped)."""
    return _saved_entries(checkpoint_path, weights_only)[0]


def _saved_entries(checkpoint_path: Any, weights_only: Optional[bool] = None) -> tuple[dict[str, Any], Any]:
    """The hyperparameters and the ``zoo_task_class`` saved in a checkpoint (see :func:`_saved_hparams`)."""
    from lightning.fabric.utilities.cloud_io import _load

    if hasattr(checkpoint_path, "read"):
        start = checkpoint_path.tell()
        try:
            ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=weights_only)
        finally:
            checkpoint_path.seek(start)
    else:
        try:
            ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=weights_only, mmap=True)
        except Exception:  # noqa: BLE001 -- a URL, a remote file system or a file torch cannot memory-map
            ckpt = _load(checkpoint_path, map_location="cpu", weights_only=weights_only)
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    task = ckpt.get("zoo_task_class") if isinstance(ckpt, dict) else None
    return (dict(hparams) if isinstance(hparams, Mapping) else {}), task


def data_info_value(data_info: Optional[dict], key: str, default: Any = None) -> Any:
    return (data_info or {}).get(key, default)


def gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` under torch.distributed (a collective), else ``[obj]``.

    For evaluation state that is not a tensor metric (retrieval galleries, per-sample readings):
    every rank must call it, and every rank gets the whole list.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
