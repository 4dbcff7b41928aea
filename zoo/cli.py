"""``python -m zoo {fit,validate,test,predict,export,convert}``: LightningCLI over every domain.

The YAML names the LightningModule (``model.class_path``) and the datamodule (``data.class_path``);
the datamodule's ``data_info`` (vocab size, number of variables, charset...) is handed to the
model's ``data_info`` argument, so datamodules know nothing of models.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath
from typing import Any, Optional, Sequence

import torch
from jsonargparse import Namespace
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from zoo.hub import (_same_setting, checkpoint_task_class_of, load_checkpoint_task, read_checkpoint,
                     refuse_occupied)
from zoo.tasks.callbacks import ExportOnFitEnd, PredictionWriter, RunSummary


# Settings that only steer inference or its outputs: a value the user gives (config file or command line, null
# included: `--model.init_args.top_k null` turns top-k off) wins over the one stored in a --ckpt_path
# checkpoint; one the user leaves at its default takes the checkpoint's (LightningCLI's rule).
INFERENCE_ARGS = ("max_new_tokens", "temperature", "top_k", "top_p", "plot_columns", "eval_k", "rerank", "predict_top",
                  "eval_charset")
# Settings the checkpoint's weights fix: its values win (LightningCLI's rule), and one given otherwise is named in a
# warning, as architecture fields of model_args are (a config of another twin was read silently as the checkpoint's)
ARCH_ARGS = ("arch", "attn_type", "adapter")


def _spec(arch: Optional[str]) -> Any:
    """The registry entry of ``arch``, or None without one (an unknown name fails where the model is built, with
    its own message)."""
    from zoo.hub import get_spec

    try:
        return get_spec(arch) if arch is not None else None
    except ValueError:
        return None


def runtime_fields(arch: Optional[str]) -> frozenset:
    """Config fields of ``arch``'s model that may differ from a checkpoint's (the defaults without ``arch``)."""
    from zoo.hub import DEFAULT_RUNTIME_FIELDS

    spec = _spec(arch)
    return frozenset(getattr(spec.model_cls, "runtime_fields", DEFAULT_RUNTIME_FIELDS) if spec else DEFAULT_RUNTIME_FIELDS)


def arch_default(arch: Optional[str], key: str) -> Any:
    """The value ``key`` takes in ``arch``'s model when model_args leave it out (None when unknown)."""
    from zoo.hub import _config_defaults

    spec = _spec(arch)
    if spec is None:
        return None
    return spec.config[key] if key in spec.config else _config_defaults(spec.model_cls.config_class).get(key)


def _same_class(a: str, b: str) -> bool:
    """Whether two class paths name one class (``zoo.tasks.X`` and ``zoo.tasks.lm.X`` do)."""
    def load(path: str):
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    try:
        return load(a) is load(b)
    except (ImportError, AttributeError, ValueError):
        return a == b


SAME_SAVE_S = 2.0  # checkpoints of one save whose mtimes may differ (coarse filesystem clocks: FAT 2 s)


def last_checkpoint(trainer) -> Optional[str]:
    """The newest ``.ckpt`` of this run's checkpoint folders (the ``last*.ckpt`` of its save when there is one), or
    None: a ``ModelCheckpoint(dirpath=...)``'s folder, a fixed logger version's ``checkpoints``, else the logger's
    earlier ``version_*`` runs (no logger: ``default_root_dir/checkpoints``).

    ``--ckpt_path last`` in Lightning looks for ``last*.ckpt`` in the new run's own (empty) version folder only,
    so a second ``fit --ckpt_path last`` would start again from step 0.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    def ckpts(folders) -> list[Path]:
        return [p for f in folders if f.is_dir() for p in f.glob("*.ckpt") if p.is_file()]

    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    # a user-set ModelCheckpoint(dirpath=...) is the run's own folder: only those (as Lightning does)
    folders = [Path(cb.dirpath) for cb in callbacks if cb.dirpath]
    if not folders or len(folders) < len(callbacks):  # some checkpoints go to the logger's version folder
        if trainer.logger is None:
            folders.append(Path(trainer.default_root_dir) / "checkpoints")  # the layout without a logger
        else:
            # a save_dir of `~/runs` stays `~` in these while the logger (fsspec) writes under the home folder
            log_dir = getattr(trainer.logger, "log_dir", None)
            own = Path(log_dir).expanduser() / "checkpoints" if log_dir else None
            if own is not None and ckpts([own]):  # a fixed logger version: this run's own folder
                folders.append(own)
            elif getattr(trainer.logger, "root_dir", None):
                folders += sorted(Path(trainer.logger.root_dir).expanduser().glob("version_*/checkpoints"))

    def pick(found: list[Path]) -> Path:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        # within the newest checkpoint's folder, the run's end state (ModelCheckpoint(save_last=True)'s last*.ckpt)
        # over a best-k checkpoint written at about the same time (one save, mtimes a tick apart), which may be an
        # earlier epoch; an older last.ckpt (an earlier run's, in a shared dirpath) is not this run's end state
        t_newest = newest.stat().st_mtime
        last = [p for p in found if p.parent == newest.parent and p.name.startswith("last")
                and t_newest - p.stat().st_mtime <= SAME_SAVE_S]
        return max(last, key=lambda p: p.stat().st_mtime) if last else newest

    found = ckpts(folders)
    cut: list[str] = []
    while found:
        chosen = pick(found)
        why = checkpoint_damage(chosen)
        if why is None:
            break
        # a process killed while saving (SIGKILL, OOM) leaves the newest file cut short: the run resumes from the
        # newest whole one, said, instead of failing on the cut file with torch's error that names no file
        cut.append(f"{chosen} ({why})")
        found.remove(chosen)
    if cut:
        warnings.warn("--ckpt_path last: skipped " + "; ".join(cut) + (
            f"; resuming from {chosen}, the newest whole checkpoint" if found else "; no whole checkpoint is left")
            + " (remove the damaged file to silence this)", stacklevel=2)
    return str(chosen) if found else None


def checkpoint_damage(path: Any) -> Optional[str]:
    """Why ``path`` is not a whole checkpoint, or None when it looks whole. ``torch.save`` writes a zip archive
    whose directory comes last, so a file cut short (a process killed while saving or copying it) lacks it. A file
    that is not a zip archive (an older torch format, or no checkpoint at all) is left to torch to name."""
    import zipfile

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                return None
        with zipfile.ZipFile(path) as z:
            z.infolist()
    except zipfile.BadZipFile:
        return (f"cut short: {Path(path).stat().st_size} bytes without the zip directory torch.save writes at the end, "
                "as a process killed while saving or copying it leaves the file")
    except OSError as exc:
        return f"unreadable: {exc}"
    return None


def best_checkpoint(trainer) -> Optional[str]:
    """The best checkpoint of the run :func:`last_checkpoint` finds, as that run's ``ModelCheckpoint`` with the
    trainer's first one's settings (monitor, mode, save interval) recorded it in the run's newest checkpoint; None
    when there is none, or the file it names is gone.

    ``--ckpt_path best`` in Lightning is the best checkpoint of a ``fit`` in the same session: a new
    ``validate`` / ``test`` process has none, and Lightning's error says ModelCheckpoint "is not configured to save
    the best model" although the config's monitors a metric.
    """
    cb = trainer.checkpoint_callback
    newest = last_checkpoint(trainer) if cb is not None else None
    if newest is None:
        return None
    try:
        ckpt = torch.load(newest, map_location="cpu", weights_only=False, mmap=True)  # a run's own file, as Lightning
    except Exception:  # noqa: BLE001 -- an unreadable file records nothing; the caller names the problem
        return None
    state = (ckpt.get("callbacks") or {}).get(cb.state_key) if isinstance(ckpt, dict) else None
    best = (state or {}).get("best_model_path")
    if not best:
        return None
    name = (PureWindowsPath if "\\" in str(best) else Path)(str(best)).name  # a run written on Windows names C:\...\x.ckpt
    best = Path(best)
    if not best.is_file():  # the run's folder moved (or a relative path from another working directory): the same
        best = Path(newest).parent / name  # file name beside the checkpoint that names it
    return str(best) if best.is_file() else None


@contextmanager
def _quiet_lightning():
    """Lightning's info messages (devices, seed, tips) left out; its warnings still shown."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class ZooCLI(LightningCLI):
    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # The same input parsed without the parser's defaults holds exactly the keys the user gave
        # (a default and an explicit value, null or not, cannot be told apart in self.config). Only the keys
        # count (values are read from self.config): OmegaConf interpolation is left unresolved and unchecked, since
        # `${fit.data.init_args.seq_len}` names a key this parse leaves out when it is at its default.
        from jsonargparse._common import parser_context

        with parser_context(lenient_check=True):
            if isinstance(args, (dict, Namespace)):
                self._given = parser.parse_object(args, defaults=False)
            else:
                self._given = parser.parse_args(args, defaults=False)

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        keys = [f"{sub}.model.init_args.{k}" for k in INFERENCE_ARGS] if sub else []
        given = getattr(self, "_given", None)
        keep = {k: self.config.get(k) for k in keys if given is not None and k in given}
        fixed = [f"{sub}.model.init_args.{k}" for k in ARCH_ARGS] if sub else []
        asked = {k: self.config.get(k) for k in fixed if given is not None and k in given}
        # model_args the user gave: its runtime fields (decoding mode, refinement, dropout, backend) win over
        # the checkpoint's; its architecture fields cannot (the weights fix them)
        args_key = f"{sub}.model.init_args.model_args"
        user_args = self.config.get(args_key) if sub and given is not None and args_key in given else None
        task = self.config.get(f"{sub}.model.class_path") if sub else None
        ckpt_key = f"{sub}.ckpt_path"
        ckpt_path = self.config.get(ckpt_key) if sub else None
        if isinstance(ckpt_path, str) and ckpt_path.startswith("~"):
            # `--ckpt_path=~/run.ckpt` (no shell expands it) or a YAML value: Lightning's own check reads the path
            # as given, so the checkpoint's hyperparameters were skipped while its weights still loaded
            self.config[ckpt_key] = str(Path(ckpt_path).expanduser())
        path = self.config.get(ckpt_key) if sub else None
        if (isinstance(path, str) and "://" not in path and path not in ("last", "best", "hpc", "registry")
                and not path.startswith("registry:") and not Path(path).exists()):
            # before the data and the model are built (Lightning names a missing file only once both are)
            raise FileNotFoundError(f"--ckpt_path {path}: no such checkpoint file ({Path(path).absolute()}); pass a "
                                    "run's .ckpt, or last / best to take the newest / best checkpoint of earlier runs")
        why = checkpoint_damage(path) if isinstance(path, str) and Path(path).is_file() else None
        if why is not None:  # torch's error named no file (and with --ckpt_path last, which file was taken)
            raise ValueError(f"--ckpt_path {path} is not a whole checkpoint: {why}. Pass another checkpoint of the run "
                             "(--ckpt_path last skips a damaged file)")
        if not self._parse_python_ckpt_hparams(sub):
            super()._parse_ckpt_path()
        stored = self.config.get(f"{sub}.model.class_path") if sub else None
        if task and stored and not _same_class(task, stored):
            # Lightning would swap in the checkpoint's task and feed it this config's arguments and data
            raise ValueError(
                f"--ckpt_path {self.config.get(f'{sub}.ckpt_path')} was written by {stored}, but the config builds "
                f"{task}; use a config of the checkpoint's domain or a checkpoint of this one"
            )
        for k, v in keep.items():
            self.config[k] = v
        differ = {}
        # a config that fine-tunes an export: its arch only sized that build (the checkpoint carries the export's name)
        from_export = given is not None and given.get(f"{sub}.model.init_args.pretrained") is not None
        for k, v in asked.items():
            name, now = k.rsplit(".", 1)[1], self.config.get(k)
            if name == "arch" and from_export:
                continue
            if name == "attn_type" and now is None:  # unset: the model_args' type, else the arch's
                arch = self.config.get(f"{sub}.model.init_args.arch")
                now = dict(self.config.get(args_key) or {}).get("attn_type", arch_default(arch, "attn_type"))
            if v is not None and not _same_setting(now, v):
                differ[name] = (v, now)
        if differ:
            warnings.warn(f"--ckpt_path {self.config.get(ckpt_key)}: "
                          + "; ".join(f"{k} {a!r} not used, the checkpoint's {b!r} is" for k, (a, b) in differ.items())
                          + " (its weights fix the model; use a config of that model to silence this)", stacklevel=2)
        if user_args:
            arch = self.config.get(f"{sub}.model.init_args.arch")
            runtime = runtime_fields(arch)
            merged = dict(self.config.get(args_key) or {})
            ignored = {k: v for k, v in dict(user_args).items()
                       if k not in runtime and not _same_setting(merged.get(k, arch_default(arch, k)), v)}
            if ignored:  # Lightning's rule (the checkpoint's hyperparameters win), said instead of silent
                warnings.warn(f"--ckpt_path {self.config.get(ckpt_key)}: model_args {ignored} not used: the checkpoint's "
                              f"weights fix its architecture (its model_args: {merged}); only the runtime fields "
                              f"{sorted(runtime)} may differ", stacklevel=2)
            merged.update({k: v for k, v in dict(user_args).items() if k in runtime})
            self.config[args_key] = merged

    def _parse_python_ckpt_hparams(self, sub: Optional[str]) -> bool:
        """A checkpoint that a zoo task saved outside the CLI (``trainer.save_checkpoint`` in Python) holds its
        hyperparameters without the CLI's ``_class_path``, so Lightning parsed them against the base LightningModule
        ("Option 'data_info.borders.train' is not accepted"); its ``zoo_task_class`` names the class instead. Parses
        such hyperparameters as Lightning parses the CLI's own; returns False for every other checkpoint."""
        path = self.config.get(f"{sub}.ckpt_path") if sub else None
        if not (isinstance(path, str) and Path(path).is_file()):
            return False
        try:
            ckpt = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
        except Exception:  # noqa: BLE001 -- Lightning's own parse (and the loader) name an unreadable file
            return False
        hparams = dict(ckpt.get("hyper_parameters") or {}) if isinstance(ckpt, dict) else {}
        hparams.pop("_instantiator", None)
        task = ckpt.get("zoo_task_class") if isinstance(ckpt, dict) else None
        if not hparams or "_class_path" in hparams or not isinstance(task, str):
            return False
        try:
            self.config = self.parser.parse_object({sub: {"model": {"class_path": task, "dict_kwargs": hparams}}},
                                                   self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        return True

    def instantiate_classes(self) -> None:
        sub = self.config.get("subcommand")
        # (Lightning < 2.5 reads no hyperparameters from a checkpoint at all: nothing to match there)
        alias = self.config.get(f"{sub}.ckpt_path") if sub else None
        if alias in ("last", "best") and hasattr(LightningCLI, "_parse_ckpt_path"):
            # the alias names a file in the trainer's folders: found before the model and data are built, the model
            # is built once, from the checkpoint's hyperparameters as `--ckpt_path <file>` builds it (a fine-tune's
            # checkpoint holds every weight: the export it started from is not read, and may be gone)
            found = self._resolve_ckpt_alias(alias, self._folders_trainer(sub))
            if found is not None:
                self.config[f"{sub}.ckpt_path"] = found
                self._parse_ckpt_path()
                with _quiet_lightning():  # the random state `--ckpt_path <file>` builds with (its seed said once)
                    self._set_seed()
        try:
            super().instantiate_classes()
        except ValueError as exc:
            err = _class_error(exc)
            if err is exc:
                raise
            raise err from err.__cause__  # the class's own cause kept; jsonargparse's wrapping not shown

    def _folders_trainer(self, sub: str) -> Any:
        """A trainer of the config without its model and data (neither is built), to find the run's checkpoints in
        its folders; quiet, since the trainer the run uses says the same."""
        probe = self.config.clone()
        probe[f"{sub}.model"] = None
        probe[f"{sub}.data"] = None
        real = self.__dict__.get("config_init")
        try:
            with _quiet_lightning():
                self.config_init = self.parser.instantiate_classes(probe)
                return self.instantiate_trainer()
        finally:
            if real is None:
                self.__dict__.pop("config_init", None)
            else:
                self.config_init = real

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        # `--trainer.enable_checkpointing false` over a config that lists a ModelCheckpoint (the TS, STR and VLM
        # configs do): Lightning refuses the pair, and the command line cannot take one callback out of the config's
        # list. The switch is the later, narrower choice: the config's checkpoint callbacks are dropped, said once.
        from lightning.pytorch.callbacks import ModelCheckpoint

        listed = config.get("callbacks")
        if config.get("enable_checkpointing") is False and isinstance(listed, (list, ModelCheckpoint)):
            listed = listed if isinstance(listed, list) else [listed]
            dropped = [cb for cb in listed if isinstance(cb, ModelCheckpoint)]
            if dropped:
                config["callbacks"] = [cb for cb in listed if not isinstance(cb, ModelCheckpoint)]
            if dropped and not getattr(self, "_said_no_checkpoints", False):  # once (`last` / `best` build twice)
                self._said_no_checkpoints = True
                warnings.warn(f"trainer.enable_checkpointing is false: the config's {len(dropped)} ModelCheckpoint "
                              "callback(s) are left out and no checkpoint is saved (set it true to keep them)",
                              stacklevel=2)
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        # a fast_dev_run saves no checkpoint (Lightning's rule), but Lightning 2.6's ModelCheckpoint.on_train_end
        # writes save_last's last.ckpt without that check: the configs' save_last left <root>/checkpoints/last.ckpt
        if self.trainer.fast_dev_run:
            for cb in self.trainer.checkpoint_callbacks:
                if getattr(cb, "save_last", None):
                    cb.save_last = False

    def _resolve_ckpt_alias(self, alias: str, trainer: Any = None) -> Optional[str]:
        """The file ``--ckpt_path last`` / ``best`` names in ``trainer``'s folders (the run's trainer by default).
        ``last`` without one is None for fit (Lightning's rule: a first run starts afresh) and an error elsewhere,
        as ``best`` without one is: Lightning only warned and evaluated the randomly initialized model."""
        trainer = self.trainer if trainer is None else trainer
        if alias == "last":
            found = last_checkpoint(trainer)
            if found is None and self.config.get("subcommand") != "fit":
                logger = trainer.logger
                where = (getattr(logger, "root_dir", None) if logger is not None else None) or trainer.default_root_dir
                raise ValueError(
                    f"--ckpt_path last: no checkpoint found (the runs under {Path(where).expanduser()}, or a "
                    "ModelCheckpoint's dirpath): pass the checkpoint file (--ckpt_path <file>), or the "
                    "--trainer.default_root_dir / logger and checkpoint settings the fit ran with"
                )
            return found
        cb = trainer.checkpoint_callback
        if cb is None or getattr(cb, "best_model_path", ""):  # Lightning's own error / a fit of this session
            return None
        found = best_checkpoint(trainer)
        if found is None:
            newest = last_checkpoint(trainer)
            where = (f"the newest checkpoint, {newest}, records no best checkpoint of this ModelCheckpoint (or its file "
                     "is gone)" if newest else "no earlier run's checkpoint was found (where --ckpt_path last looks)")
            raise ValueError(
                f"--ckpt_path best: {where}; best is the checkpoint a ModelCheckpoint(monitor={cb.monitor!r}, "
                f"mode={cb.mode!r}) kept in the newest earlier run under {trainer.default_root_dir}. Pass the "
                "checkpoint file (--ckpt_path <file>), or the --trainer.default_root_dir / logger and checkpoint "
                "settings the fit ran with"
            )
        return found

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if kwargs.get("ckpt_path") in ("last", "best"):
            kwargs["ckpt_path"] = self._resolve_ckpt_alias(kwargs["ckpt_path"]) or kwargs["ckpt_path"]
        return kwargs

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.data_info", "model.init_args.data_info", apply_on="instantiate")
        # Callbacks run in the order they are added here: the export must exist before the fit summary
        # is printed, since the summary names the export folder.
        parser.add_lightning_class_args(ExportOnFitEnd, "export")
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.add_lightning_class_args(PredictionWriter, "predict_writer")


def export_main(argv: Sequence[str]) -> None:
    """``python -m zoo export CKPT OUT``: turn a Lightning checkpoint into an exported folder."""
    p = argparse.ArgumentParser(prog="python -m zoo export", description=export_main.__doc__)
    p.add_argument("ckpt", help="Lightning .ckpt written by `python -m zoo fit`")
    p.add_argument("out", help="new folder for config.json + model.safetensors + assets")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier zoo export in OUT (the files it wrote; other files stay)")
    args = p.parse_args(argv)
    ckpt_path = Path(args.ckpt)
    try:  # read once, memory-mapped: the load below takes this dictionary
        ckpt = read_checkpoint(ckpt_path)
        cls_path = checkpoint_task_class_of(ckpt, ckpt_path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    if not args.overwrite:  # before the (slow) load: nothing is overwritten
        try:
            refuse_occupied(Path(args.out), "name a new folder, or pass --overwrite to replace an earlier export there")
        except FileExistsError as exc:
            raise SystemExit(f"error: {exc}") from exc
    try:
        # the dtypes the checkpoint holds (a bf16-true run's bfloat16), as the fit's own export keeps them
        task = load_checkpoint_task(ckpt_path, checkpoint=ckpt, keep_dtypes=True)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    del ckpt  # its memory-mapped tensors: the task holds copies
    try:
        folder = task.export(args.out, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"exported {cls_path} from {ckpt_path} to {folder}")


def convert_main(argv: Sequence[str]) -> None:
    """``python -m zoo convert HF_FOLDER OUT``: a local Hugging Face model folder -> zoo export."""
    from zoo.convert import convert_hf

    p = argparse.ArgumentParser(prog="python -m zoo convert", description=convert_main.__doc__)
    p.add_argument("src", help="local Hugging Face folder (config.json + safetensors/.bin [+ tokenizer.json])")
    p.add_argument("out", help="new folder for the zoo export")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier zoo export in OUT (the files it wrote; other files stay)")
    args = p.parse_args(argv)
    try:
        if not args.overwrite:  # before the (slow) conversion: nothing is overwritten
            refuse_occupied(Path(args.out), "name a new folder, or pass --overwrite to replace an earlier export there")
        folder = convert_hf(args.src, args.out, overwrite=args.overwrite)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(f"converted {args.src} to {folder}")


USAGE = ("python -m zoo {fit,validate,test,predict} --config CONFIG.yaml [...]   (Lightning's CLI; below)\n"
         "python -m zoo export CKPT OUT [--overwrite]                         (a checkpoint -> an exported folder)\n"
         "python -m zoo convert HF_FOLDER OUT [--overwrite]                   (a Hugging Face model -> a zoo export)\n")


def _class_error(exc: ValueError) -> BaseException:
    """The error a task's or datamodule's ``__init__`` raised, out of jsonargparse's wrapping: "Does not validate
    against any of the Union subtypes", the class's own message among a NoneType alternative's, and the whole
    Namespace of arguments (``data_info`` with its scaler statistics, a charset) printed last, where the user reads.
    Any other error as it is, also one whose chained cause jsonargparse raised itself: it chains the first subtype's
    error, which for a single trainer callback is "Expected a <class 'list'>", not the callback's own message."""
    cause = exc.__cause__
    if str(exc).startswith("Does not validate against any of the Union subtypes") and isinstance(cause, Exception):
        tb = cause.__traceback__
        while tb is not None and tb.tb_next is not None:  # where it was raised: the class's code, or a type check
            tb = tb.tb_next
        if tb is not None and "jsonargparse" not in Path(tb.tb_frame.f_code.co_filename).parts:
            return cause
    return exc


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["export"]:
        export_main(args[1:])
        return
    if args[:1] == ["convert"]:
        convert_main(args[1:])
        return
    if args[:1] in (["-h"], ["--help"]):  # Lightning's help lists its subcommands; ours come first
        print(USAGE)
    elif not args or args[0] not in ("fit", "validate", "test", "predict") and not args[0].startswith("-"):
        # Lightning's error ("expected subcommand ... fit, validate, test, predict") would hide export / convert
        print(USAGE, file=sys.stderr)
    finished = False
    ours = not (torch.distributed.is_available() and torch.distributed.is_initialized())  # else the caller's group
    try:
        ZooCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf+", "prog": "python -m zoo"},
            args=None if argv is None else args,
            auto_configure_optimizers=False,
        )
        finished = True
    except SystemExit as exc:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exc, SIGTERMException) and not exc.code:
            # Lightning stops a run on SIGTERM (a preempted job) with SystemExit() and exit status 0, so a scheduler
            # or `fit && test` read the stopped run as finished (Lightning#19916); 128 + 15 as a killed process has
            print(f"python -m zoo: stopped by SIGTERM (exit status {128 + signal.SIGTERM}; a fit resumes with "
                  "--ckpt_path last)", file=sys.stderr, flush=True)
            raise SystemExit(128 + signal.SIGTERM) from exc
        raise
    finally:
        if ours:
            close_process_group(wait_for_peers=finished)


def close_process_group(wait_for_peers: bool = True, timeout_s: float = 60.0) -> None:
    """End a multi-process run's process group before the interpreter exits.

    Lightning destroys the group at exit only for NCCL; a gloo group (CPU DDP) left alive aborts the process at
    interpreter teardown now and then ("terminate called without an active exception", exit -6) although the run
    finished. After a clean run a gloo rank first waits up to ``timeout_s`` for the others, so none closes its
    connections while a peer still talks to it, and a peer that failed after training (its rank alone) costs that
    wait, not a hang; after an error here the group is destroyed at once. NCCL groups are destroyed as Lightning
    does, without a barrier.
    """
    from datetime import timedelta

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    if wait_for_peers and torch.distributed.get_backend() == "gloo":
        try:
            torch.distributed.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        except RuntimeError:  # a peer did not come (it failed): nothing left to wait for
            pass
    torch.distributed.destroy_process_group()
