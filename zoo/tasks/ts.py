"""Time-series forecasting task: MSE/MAE on the scaled and the original scale, per horizon step, forecast files."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.hub import create_model, export_arch_config, get_spec, read_export_config, resolve_pretrained
from zoo.models.ts import read_meta
from zoo.tasks.base import Float64Metric, ZooTask, wide_float

_DATA_FIELDS = ("lookback", "horizon", "n_time_features")  # architecture fields the data decides


class ForecastMetrics(Float64Metric):
    """Sums of squared and absolute errors per horizon step, on the scaled and on the original scale.

    ``update(pred, target, std)`` takes scaled ``[B, H, C]`` tensors and the scaler std ``[C]`` of the
    forecast columns; on the original scale the error is ``(pred - target) * std`` (the means
    cancel). ``compute()`` returns overall ``mse``/``mae``/``mse_orig``/``mae_orig`` (averaged over
    every step, sample and column, as the benchmarks) and per-step lists ``*_per_step``.
    """

    full_state_update = False

    def __init__(self, horizon: int) -> None:
        super().__init__()
        for name in ("se", "ae", "se_orig", "ae_orig"):
            self.add_state(name, default=torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, std: Optional[Tensor] = None) -> None:  # type: ignore[override]
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        dt = self.se.dtype  # float64 (float32 on MPS: Float64Metric)
        err = pred.detach().to(dt) - target.to(dt)
        err_orig = err * (std.to(dt) if std is not None else 1.0)
        self.se += err.pow(2).sum(dim=(0, 2))
        self.ae += err.abs().sum(dim=(0, 2))
        self.se_orig += err_orig.pow(2).sum(dim=(0, 2))
        self.ae_orig += err_orig.abs().sum(dim=(0, 2))
        self.count += pred.shape[0] * pred.shape[2]

    def compute(self) -> dict[str, Any]:
        n = self.count.clamp(min=1)
        out: dict[str, Any] = {}
        for key, state in (("mse", self.se), ("mae", self.ae), ("mse_orig", self.se_orig), ("mae_orig", self.ae_orig)):
            out[key] = state.sum() / (n * state.numel())
            out[f"{key}_per_step"] = (state / n).tolist()
        return out


def _refuse_other_variables(meta: dict[str, Any], info: dict[str, Any], what: str) -> None:
    """A model (``meta``) fed data (``info``) of other variables, in any order, is refused by name: no scaler or
    column mapping carries it over."""
    if sorted(meta["columns"]) != sorted(info["columns"]):
        raise ValueError(
            f"{what} was trained on the variables {list(meta['columns'])} (features {meta.get('features')}) "
            f"but the data has {list(info['columns'])} (features {info.get('features')}); point data.path at a "
            "file with the same columns and set data.columns / data.features as in training"
        )


class ForecastTask(ZooTask):
    """Train, evaluate or fine-tune a forecaster from the registry (``zoo.list_models("ts-*")``).

    Args:
        arch: registered architecture name, e.g. ``ts-itransformer-diff-small``, ``ts-patchtst-vanilla-small``.
        attn_type: attention type override (``diff``, ``vanilla``, ``diff_v2``...).
        model_args: further architecture overrides (``dim``, ``n_layers``, ``revin``, ``patch_len``...).
        pretrained: exported model folder (or shipped name, e.g. ``ts-itransformer-diff-etth1``) to
            fine-tune from; its architecture is used, and the data's lookback / horizon / time
            features must agree with it. The model then carries the new data's scaler.
        data_info: filled in from the datamodule by the CLI (variables, scaler, lookback, horizon...).
        loss: ``mse`` (the benchmarks' loss) or ``mae``.
        restore_best: at the end of ``fit``, put back the weights of the epoch with the lowest
            ``val/loss`` (kept in memory), so the export and a following test use them.
        plot_columns: at most this many forecast columns are drawn in ``forecast.png`` (None: every one).
        lr, weight_decay, betas, warmup_steps, min_lr_ratio: see :class:`ZooTask`.
        scheduler: ``cosine`` / ``constant`` (see :class:`ZooTask`) or ``halving`` (``lradj=type1`` of the
            iTransformer / Time-Series-Library code: full rate for two epochs, then halved every epoch).
    """

    data_fields = _DATA_FIELDS

    def __init__(
        self,
        arch: str = "ts-itransformer-diff-small",
        attn_type: Optional[str] = None,
        model_args: Optional[dict[str, Any]] = None,
        pretrained: Optional[str] = None,
        data_info: Optional[dict[str, Any]] = None,
        loss: str = "mse",
        restore_best: bool = True,
        plot_columns: Optional[int] = 8,
        lr: float = 5e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        scheduler: str = "cosine",
        min_lr_ratio: float = 0.0,
    ) -> None:
        if scheduler not in ("cosine", "constant", "halving"):
            raise ValueError(f"scheduler must be 'cosine', 'constant' or 'halving', got {scheduler!r}")
        if loss not in ("mse", "mae"):
            raise ValueError(f"loss must be 'mse' or 'mae', got {loss!r}")
        if plot_columns is not None and (
            not isinstance(plot_columns, numbers.Integral) or isinstance(plot_columns, bool) or plot_columns < 1
        ):
            raise ValueError(f"plot_columns must be an integer >= 1 (or None: every column), got {plot_columns!r} (the "
                             "most forecast columns drawn in forecast.png)")
        if scheduler == "halving" and (warmup_steps or min_lr_ratio):
            warnings.warn("scheduler 'halving' (full rate for two epochs, then halved every epoch) has no warm-up or "
                          "floor: warmup_steps / min_lr_ratio are not used (scheduler: cosine uses them)", stacklevel=2)
        base_scheduler = "constant" if scheduler == "halving" else scheduler
        super().__init__(lr, weight_decay, betas, warmup_steps, base_scheduler, min_lr_ratio)
        self.save_hyperparameters()
        self.arch, self.loss_name, self.halving = arch, loss, scheduler == "halving"
        self.data_info = dict(data_info or {})
        if self.data_info and self.data_info.get("kind") != "ts":
            raise ValueError(
                f"ForecastTask needs a time-series datamodule (data_info kind 'ts'), got kind "
                f"{self.data_info.get('kind')!r}; use zoo.data.ts.CSVTSDataModule or SyntheticTSDataModule"
            )
        self.model = self._build_model(arch, attn_type, dict(model_args or {}), pretrained)
        if self.data_info:
            self.model.set_meta(self.data_info)
        self._take_data_info(self.data_info)
        self.metrics = torch.nn.ModuleDict(
            {s: ForecastMetrics(self.model.config.horizon) for s in ("val", "test")}
        )
        self.results: dict[str, dict[str, Any]] = {}
        self.restore_best = restore_best
        self.best_val: Optional[tuple[float, int]] = None  # (val loss, epoch)
        self._best_step: Optional[int] = None  # the optimizer step of that validation
        self._best_state: Optional[dict[str, Tensor]] = None
        self._forecasts: list[tuple[Any, Any]] = []
        self._device_copies: dict[str, tuple[tuple, Tensor]] = {}  # see _on_device
        self._scale_conv: Optional[tuple[tuple, Any]] = None  # see _data_to_model_scale

    def _take_data_info(self, info: dict[str, Any]) -> None:
        """The facts of the data the batches come from: its forecast columns and their scaler std."""
        self.data_info = dict(info)
        out_index = self.data_info.get("out_index")
        self.out_index: Optional[list[int]] = list(out_index) if out_index is not None else None
        std = self.data_info.get("std")
        out_std = [std[i] for i in out_index] if std is not None and out_index is not None else None
        # a plain list, not a buffer: a module cast (precision "bf16-true") would round the scaler to bf16
        self.out_std: Optional[list[float]] = out_std or None

    def setup(self, stage: str) -> None:
        # The batches come scaled by the datamodule's scaler, in its column order. A task holding other data facts
        # (ForecastTask.load_from_checkpoint keeps the training file's; the CLI links the datamodule's) took the
        # batches for the training file's: the original-scale errors came out in its units and the forecasts
        # un-scaled with its mean / std. The model keeps its own scaler (model.meta); the batches are carried over.
        info = self._datamodule_info()
        if info is None:
            return
        c = self.model.config
        arch = {"lookback": c.lookback, "horizon": c.horizon, "n_time_features": getattr(c, "n_time_features", 0)}
        self._refuse_other_data(info, arch, self.model.meta, "the model")
        if info != self.data_info:
            if self.model.meta is None:
                self.model.set_meta(info)
            self._take_data_info(info)

    def _datamodule_info(self) -> Optional[dict[str, Any]]:
        info = getattr(getattr(self._trainer, "datamodule", None), "data_info", None)
        return info if isinstance(info, dict) and info.get("kind") == "ts" else None

    @staticmethod
    def _refuse_other_data(info: dict[str, Any], arch: dict[str, Any], meta: Optional[dict[str, Any]], what: str) -> None:
        """Refuse, by name and before any step, data the model was not built or trained for: another lookback /
        horizon / number of calendar features than its architecture's (``arch``), forecast columns it was not
        trained to forecast (``meta``: features MS / S with another target, an MS model under features M) or
        other variables. (Left to the steps, these failed as a shape mismatch or were scored silently on an
        untrained output channel.)"""
        wrong = [f"{k} {arch[k]} (the data's {info[k]})" for k in _DATA_FIELDS
                 if k in arch and k in info and arch[k] != info[k]]
        if wrong:
            raise ValueError(
                f"{what} was built for {', '.join(wrong)} of {info.get('source')}; set data.lookback / "
                "data.horizon / data.time_features to the model's, or train a model for this data"
            )
        if not meta or info.get("out_columns") is None or meta.get("out_columns") is None:
            return
        untrained = [c for c in info["out_columns"] if c not in meta["out_columns"]]
        if untrained:
            raise ValueError(
                f"{what} was trained to forecast {list(meta['out_columns'])} (features {meta.get('features')}, "
                f"target {meta.get('target')!r}) but the data asks for {list(info['out_columns'])} (features "
                f"{info.get('features')}, target {info.get('target')!r}): its output for {untrained} was never "
                f"trained; set data.features: {meta.get('features')} and data.target: {meta.get('target')}, or "
                "fine-tune an export on this target (model.init_args.pretrained)"
            )
        _refuse_other_variables(meta, info, what)

    # -- model construction
    def _build_model(self, arch: str, attn_type: Optional[str], overrides: dict[str, Any], pretrained: Optional[str]):
        if attn_type is not None:
            overrides["attn_type"] = attn_type
        spec = get_spec(arch)
        fields = {f.name for f in dataclasses.fields(spec.model_cls.config_class)}
        info = self.data_info
        from_data = {k: info[k] for k in _DATA_FIELDS if k in fields and k in info}
        if info.get("n_time_features") and "n_time_features" not in fields:
            raise ValueError(
                f"{arch} takes no calendar features (each channel's patches are its only tokens, as in the "
                f"reference PatchTST), but the data makes {info['n_time_features']} "
                f"({', '.join(info.get('time_features') or [])}); set data.init_args.time_features=false"
            )
        for k, v in from_data.items():
            if k in overrides and overrides[k] != v:
                raise ValueError(
                    f"model_args.{k}={overrides[k]} disagrees with the data's {k}={v}; set it on the data "
                    f"(data.init_args.{'time_features' if k == 'n_time_features' else k}) only"
                )
        if pretrained is None:
            return create_model(arch, **{**from_data, **overrides})
        folder = resolve_pretrained(pretrained)
        meta = read_export_config(folder)
        cfg = meta["config"]
        self.arch = meta.get("arch") or arch  # the export's architecture, named as it (see RecognitionTask)
        wrong = [f"{k}: checkpoint={cfg.get(k)} data={v}" for k, v in from_data.items() if cfg.get(k, 0) != v]
        if wrong:
            advice = "set data.lookback / data.horizon / data.time_features to match the checkpoint"
            saved_tf, data_tf = cfg.get("n_time_features", 0), from_data.get("n_time_features", 0)
            if "n_time_features" in from_data and (saved_tf == 0) != (data_tf == 0):
                # calendar tokens on one side only: the switch decides, not the spacing (the spacing advice sent a
                # user of hourly data, data.time_features=false, to resample it to hourly)
                advice = (f"set data.time_features={'true' if saved_tf else 'false'} (the checkpoint reads "
                          f"{saved_tf or 'no'} calendar tokens) and data.lookback / data.horizon to match it")
            elif "n_time_features" in from_data and saved_tf != data_tf:
                # the calendar features follow the data's spacing: daily data never makes an hourly model's four
                saved = read_meta(folder) or {}
                advice = (f"the checkpoint's calendar tokens ({', '.join(saved.get('time_features') or []) or 'none'}) "
                          f"came from {saved.get('freq', '?')}-spaced data, the data's "
                          f"({', '.join(info.get('time_features') or []) or 'none'}) from its {info.get('freq', '?')} "
                          "spacing, which decides them: resample the data to the checkpoint's spacing (and set "
                          "data.lookback / data.horizon to match the checkpoint)")
            raise ValueError(
                f"checkpoint {folder} does not fit the data ({'; '.join(wrong)}); {advice}, or train from scratch"
            )
        # The checkpoint's architecture wins; explicit overrides must agree (checked on load).
        model = create_model(arch, pretrained=folder, adapter=False, **{**export_arch_config(arch, cfg), **overrides})
        _report_new_variables(folder, model.meta, info)
        return model

    # -- optimization
    def configure_optimizers(self) -> Any:
        cfg = super().configure_optimizers()
        if self.halving:
            # The reference calls adjust_learning_rate(epoch + 1) after each epoch with
            # lr * 0.5 ** (epoch - 1): epochs 1 and 2 both run at the full rate, then it halves.
            sched = torch.optim.lr_scheduler.LambdaLR(cfg["optimizer"], lambda epoch: 0.5 ** max(epoch - 1, 0))
            cfg["lr_scheduler"] = {"scheduler": sched, "interval": "epoch"}
        return cfg

    # -- steps
    def _data_to_model_scale(self) -> Optional[tuple[list[float], list[float], Optional[list[int]]]]:
        """Per-variate ``(a, b, order)`` with ``model-scaled = a * data-scaled[..., order] + b``, or None when
        they agree; ``order`` (None: the same) takes the data's columns to the model's.

        The model owns its scaler (``model.meta``, saved with it). A checkpoint restored with
        ``--ckpt_path`` over another file (``data.path`` with more rows, another series of the same
        variables, in any column order) keeps its own; the batches come scaled by the file's, so they are carried over.
        """
        meta, info = self.model.meta, self.data_info
        if meta is None or info.get("mean") is None:
            return None
        # made once per pair of scalers (a step compares them, as _on_device its values): not a search a variable
        key = tuple(tuple(d[k]) for d in (meta, info) for k in ("columns", "mean", "std"))
        if self._scale_conv is None or self._scale_conv[0] != key:
            self._scale_conv = (key, self._scale_conversion(meta, info))
        return self._scale_conv[1]

    @staticmethod
    def _scale_conversion(
        meta: dict[str, Any], info: dict[str, Any]
    ) -> Optional[tuple[list[float], list[float], Optional[list[int]]]]:
        """:meth:`_data_to_model_scale` computed from the model's ``meta`` and the data's ``info``."""
        if (meta["mean"], meta["std"]) == (info["mean"], info["std"]):
            return None
        _refuse_other_variables(meta, info, "the model")
        position = {c: i for i, c in enumerate(info["columns"])}
        order = [position[c] for c in meta["columns"]]
        # in Python floats (float64), made into device tensors once by _on_device (not on the host every step)
        md, sd = ([float(info[k][i]) for i in order] for k in ("mean", "std"))
        mm, sm = [float(v) for v in meta["mean"]], [float(v) for v in meta["std"]]
        return ([s / m for s, m in zip(sd, sm)], [(d - m) / s for d, m, s in zip(md, mm, sm)],
                None if order == sorted(order) else order)

    def _model_input(self, x: Tensor) -> tuple[Tensor, Optional[tuple[list[float], list[float], Optional[list[int]]]]]:
        """``x`` (data-scaled, the data's column order) in the model's scale and order, and the ``(a, b, order)``
        used (None: the scalers agree)."""
        conv = self._data_to_model_scale()
        if conv is None:
            return x, None
        a, b, order = conv
        if order is not None:
            x = x.index_select(-1, self._on_device("to_model_order", order, torch.long, x.device))
        scale = self._on_device("to_model_a", a, x.dtype, x.device)
        return x * scale + self._on_device("to_model_b", b, x.dtype, x.device), conv

    def _predict(self, batch: dict[str, Tensor]) -> Tensor:
        """The forecast in the data's scale (the batches' own), whatever scaler the model was trained with."""
        x, conv = self._model_input(batch["x"])
        out = self.model(x, batch.get("x_mark"))
        if conv is not None:  # back: data-scaled = (model-scaled - b) / a, on the channels the model returns
            a, b, order = conv
            keep = range(len(a)) if out.shape[-1] == len(a) else list(self.out_index or [])
            b_out, a_out = ([v[i] for i in keep] for v in (b, a))
            out = ((out - self._on_device("from_model_b", b_out, out.dtype, out.device))
                   / self._on_device("from_model_a", a_out, out.dtype, out.device))
            if order is not None and out.shape[-1] == len(a):  # the model's column order back to the data's
                back = sorted(range(len(order)), key=order.__getitem__)
                out = out.index_select(-1, self._on_device("from_model_order", back, torch.long, out.device))
        if self.out_index is not None and len(self.out_index) != out.shape[-1]:
            out = out.index_select(-1, self._on_device("out_index", self.out_index, torch.long, out.device))
        return out

    def _on_device(self, name: str, values: Sequence[Any], dtype: torch.dtype, device: torch.device) -> Tensor:
        """``values`` as a ``dtype`` tensor on ``device``, made once and kept (``name`` keys it): made on the host and
        copied every step, it was a blocking host-to-device copy, which waits for the device (a GPU sync a step)."""
        key = (tuple(values), dtype, device)
        if name not in self._device_copies or self._device_copies[name][0] != key:
            # made on the CPU in this dtype, then moved (MPS has no float64: wide_float chose the dtype); a normal
            # tensor even when first made under validation's inference mode (a training step's backward saves it)
            with torch.inference_mode(False):
                self._device_copies[name] = (key, torch.tensor(list(values), dtype=dtype).to(device))
        return self._device_copies[name][1]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        pred = self._predict(batch)
        loss = F.mse_loss(pred, batch["y"]) if self.loss_name == "mse" else F.l1_loss(pred, batch["y"])
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Tensor]) -> None:
        pred = self._predict(batch)
        # in the device's widest float (MPS has no float64)
        std = None if self.out_std is None else self._on_device("out_std", self.out_std, wide_float(pred.device),
                                                                pred.device)
        self.metrics[stage].update(pred, batch["y"], std)

    def _report(self, stage: str) -> None:
        res = self.metrics[stage].compute()
        self.metrics[stage].reset()
        self.results[stage] = {k: (float(v) if torch.is_tensor(v) else v) for k, v in res.items()}
        # only a fit's epochs compete for restore_best: trainer.validate outside a fit (another file, changed weights)
        # overwrote the remembered best epoch, which a checkpoint saved afterwards carried into a resumed fit
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._consider_best(float(res[self.loss_name]), int(self.current_epoch))
        # sync_dist: the metric states are summed across ranks, so every rank holds the whole split's value (the
        # mean of equal values is the value); without it Lightning warns under DDP that it is one rank's
        self.log(f"{stage}/loss", res[self.loss_name], prog_bar=stage == "val", sync_dist=True)
        for key in ("mse", "mae", "mse_orig", "mae_orig"):
            self.log(f"{stage}/{key}", res[key], prog_bar=stage == "val" and key == "mae", sync_dist=True)

    def _consider_best(self, loss: float, epoch: int) -> None:
        """Keep ``epoch`` as the best so far if its validation ``loss`` is lower; a NaN loss (a diverged
        epoch) is never the best and never blocks a later finite one."""
        if math.isnan(loss) or (self.best_val is not None and not loss < self.best_val[0]):
            return
        self.best_val, self._best_step = (loss, epoch), int(self.global_step)
        if self.restore_best:
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # the best epoch so far travels with a resumable checkpoint, so restore_best after a resumed fit
        # puts back the best of the whole run, not only of the part after the resume
        if self.best_val is not None:
            checkpoint["zoo_best_val"] = {"val": self.best_val, "state": self._best_state, "step": self._best_step}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        info = self._datamodule_info()
        if info is not None:
            # --ckpt_path: the task was built for the datamodule (setup ran before this); the checkpoint's model
            # (its data facts now in model.meta) must fit it too, or its weights failed to load as a size mismatch
            hp = checkpoint.get("hyper_parameters") or {}
            arch = {k: v for src in (hp.get("model_args") or {}, hp.get("data_info") or {})
                    for k, v in src.items() if k in _DATA_FIELDS}
            self._refuse_other_data(info, arch, self.model.meta, "the checkpoint")
        best = checkpoint.get("zoo_best_val")
        if best is not None:
            # copies: a checkpoint read memory-mapped (zoo.hub.read_checkpoint) would keep the file mapped for the
            # task's life, and a file rewritten in place under it crashes the process when the state is read (SIGBUS)
            self.best_val, self._best_step = tuple(best["val"]), best.get("step")  # (no step before 2026-11-29)
            state = best.get("state")  # None: a fit with restore_best=False keeps the best epoch's loss, not its weights
            self._best_state = None if state is None else {k: v.clone() if torch.is_tensor(v) else v
                                                           for k, v in state.items()}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._finished = False
        if self.trainer.ckpt_path is None:
            # a new fit restores the best epoch of its own (a fit resumed with ckpt_path keeps the checkpoint's, read in
            # on_load_checkpoint before this hook): a second fit on the same task could put back the first one's weights
            self.best_val, self._best_state, self._best_step = None, None, None

    def finish_fit(self) -> None:
        """restore_best: put back the best epoch's weights, once per fit. Runs in on_train_end (before the
        callbacks' on_fit_end, so the export holds them), from the export callback and in on_fit_end: a
        fit resumed from a checkpoint already at max_steps skips on_train_end."""
        if getattr(self, "_finished", True):
            return
        self._finished = True
        if self.restore_best and self._best_state is not None:
            self.model.load_state_dict(self._best_state)
            loss, epoch = self.best_val
            # the step too: with val_check_interval, an epoch validates more than once
            at = f"epoch {epoch}" if self._best_step is None else f"epoch {epoch}, step {self._best_step}"
            print(f"restored the weights of {at} (val/loss {loss:.4f}) (restore_best=True)", flush=True)

    def on_train_end(self) -> None:
        self.finish_fit()

    def on_fit_end(self) -> None:
        self.finish_fit()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._report("test")
        folder = self._run_dir()
        # a fast_dev_run logs nothing (Lightning's convention): no metrics file in the working directory either
        if folder is not None and self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            from zoo.tasks.callbacks import write_json_new

            write_json_new(folder, "test_metrics.json", self.results["test"])

    # -- predict: future rows (predictions.jsonl via the CLI's writer), forecast CSV and PNG
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        import numpy as np
        import pandas as pd

        from zoo.data.ts import future_dates, to_offset

        meta = self.model.meta
        if meta is None:
            raise ValueError("the model carries no data facts (scaler, columns); train it or load an export first")
        if not isinstance(batch, dict) or "last_date" not in batch:
            raise ValueError(
                "predict forecasts past the file's end: it reads the batches of the datamodule's predict_dataloader(), "
                "not training / validation / test windows; use trainer.test for those, or task.model(x, x_mark) on them"
            )
        x_in, _ = self._model_input(batch["x"])  # the window comes scaled by the data's scaler; the model wants its own
        y = self.model(x_in, batch.get("x_mark")).cpu().double().numpy()  # float64 on the CPU (MPS has none)
        x = x_in.cpu().double().numpy()
        mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
        idx = list(meta["out_index"])
        L, H = self.model.config.lookback, self.model.config.horizon
        rows: list[dict[str, Any]] = []
        for b in range(x.shape[0]):
            last = pd.Timestamp(batch["last_date"][b])
            hist = pd.DataFrame(x[b] * std + mean, columns=meta["columns"])
            if "history_dates" in batch:
                hist_dates = pd.to_datetime(batch["history_dates"][b].cpu().numpy(), unit="ns")
            else:  # a batch made without the window's dates: a regular range ending on the last one
                hist_dates = pd.date_range(end=last, periods=L, freq=to_offset(meta["freq"]))
            hist.insert(0, meta["date_col"], hist_dates)
            fc = pd.DataFrame(y[b][:, idx] * std[idx] + mean[idx], columns=meta["out_columns"])
            fc.insert(0, meta["date_col"], future_dates(last, H, meta["freq"]))
            self._forecasts.append((hist, fc))
            for r in fc.to_dict("records"):
                rows.append({k: (str(v) if k == meta["date_col"] else float(v)) for k, v in r.items()})
        return rows

    def on_predict_start(self) -> None:
        super().on_predict_start()
        # Refuse earlier forecast files before predicting, so a refused run leaves no predictions.jsonl behind.
        folder = self._run_dir()
        if folder is None or not folder.is_dir() or self.trainer.fast_dev_run:  # a fast_dev_run writes no forecast files
            return
        taken = sorted(p for p in folder.iterdir() if re.fullmatch(r"forecast(_\d+)?\.(csv|png)", p.name))
        if taken:
            raise FileExistsError(
                f"{taken[0]} exists; predict into a new run folder (--trainer.default_root_dir)"
            )

    def on_predict_epoch_start(self) -> None:
        self._forecasts = []

    def on_predict_epoch_end(self) -> None:
        folder = self._run_dir()
        if folder is None or not self._forecasts or not self.trainer.is_global_zero:
            return
        if self.trainer.fast_dev_run:  # no run folder: the files would land in the working directory
            print("fast_dev_run: no forecast.csv / forecast.png written (a smoke run writes no files)", flush=True)
            return
        folder.mkdir(parents=True, exist_ok=True)
        date_col = self.model.meta["date_col"]
        for i, (hist, fc) in enumerate(self._forecasts):
            stem = "forecast" if len(self._forecasts) == 1 else f"forecast_{i}"
            csv, png = folder / f"{stem}.csv", folder / f"{stem}.png"
            for p in (csv, png):
                if p.exists():
                    raise FileExistsError(f"{p} exists; predict into a new run folder (--trainer.default_root_dir)")
            try:  # both files or neither: a failed plot left the CSV alone, and the rerun was refused over it
                fc.to_csv(csv, index=False)
                plot_forecast(hist, fc, png, date_col=date_col, max_columns=self.hparams.plot_columns)
            except BaseException:
                for p in (csv, png):
                    p.unlink(missing_ok=True)
                raise
            print(f"forecast written to {csv} and {png}", flush=True)

    def summary_lines(self) -> list[str]:
        c = self.model.config
        lines = [
            f"model: {self._model_name(self.arch)} ({c.attn_type} attention, {c.n_layers} layers x {c.dim}, {c.n_heads} heads, "
            f"revin={c.revin}), {self.model.num_params() / 1e6:.3f}M parameters",
            f"lookback {c.lookback} -> horizon {c.horizon}",
        ]
        info = self.data_info
        if info:
            lines.append(
                f"data: {info.get('source')} ({info.get('n_vars')} variables, features {info.get('features')}, "
                f"split {info.get('split')}, time features {info.get('time_features') or 'none'})"
            )
        return lines


def _report_new_variables(folder: Any, trained: Optional[dict[str, Any]], info: dict[str, Any]) -> None:
    """Warn when a fine-tuning starts from an export trained on other variables (names, order or
    forecast targets): the weights are shared across variates, so it runs, but the user should know."""
    if not trained or "columns" not in info:
        return
    before = (list(trained.get("columns") or []), list(trained.get("out_columns") or []))
    after = (list(info["columns"]), list(info.get("out_columns") or info["columns"]))
    if before == after:
        return
    warnings.warn(
        f"fine-tuning {folder}, trained on the variables {before[0]} (forecasting {before[1]}), on "
        f"{info.get('source')} with the variables {after[0]} (forecasting {after[1]}): every weight is kept "
        "(the model's weights are shared across variates), and the new variables are learned from them",
        stacklevel=3,
    )


def plot_forecast(
    history: Any, forecast: Any, path: str | Path, date_col: str = "date", max_columns: int = 8,
    columns: Optional[Sequence[str]] = None,
) -> Path:
    """Draw the input history and the forecast of each forecast column into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(columns or [c for c in forecast.columns if c != date_col])[:max_columns]
    fig, axes = plt.subplots(len(cols), 1, figsize=(10, 2.2 * len(cols)), sharex=True, squeeze=False)
    for ax, col in zip(axes[:, 0], cols):
        if col in history.columns:
            ax.plot(history[date_col], history[col], color="0.3", lw=1.0, label="history")
        ax.plot(forecast[date_col], forecast[col], color="tab:red", lw=1.2, label="forecast")
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper left", fontsize=8)
    axes[0, 0].set_title("history and forecast")
    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
