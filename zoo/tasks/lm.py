"""Language modeling task: next-token loss, perplexity, bits per byte, retrieval accuracy, generation."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from zoo.hub import _class_path, create_model, read_export_config, resolve_pretrained
from zoo.models.lm import DiffTransformerLM, check_generation, check_top_k, check_top_p
from zoo.nn.adapters import METHODS as ADAPTER_METHODS
from zoo.nn.adapters import apply_adapter, step_adapters
from zoo.tasks.base import Float64Metric, ZooTask, wide_float

IGNORE = -100


class _Float64Sum(Float64Metric):
    """A running sum (synced over processes) kept in float64 (see :class:`Float64Metric`)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor) -> None:  # type: ignore[override]
        self.total += value.detach().to(self.total.dtype).sum()  # float64 (float32 on MPS: Float64Metric)

    def compute(self) -> torch.Tensor:
        return self.total


class LanguageModelTask(ZooTask):
    """Train or fine-tune a decoder-only LM from the registry.

    Args:
        arch: registered architecture name (``zoo.list_models("lm-*")``).
        attn_type: attention type override (``diff``, ``vanilla``, ``diff_v2``, ...).
        model_args: further architecture overrides (``dim``, ``n_layers``, ``max_seq_len``...).
        pretrained: exported model folder (or shipped name) to fine-tune from; its architecture is
            used and ``arch``/``attn_type`` must agree with it.
        data_info: filled in from the datamodule by the CLI (vocab size, data kind).
        adapter: adapt the (pretrained) model with differential attention instead of training all of it:
            ``{method: dex | difflora | opamp, layers: null | [indices], ...method kwargs}`` (see
            :func:`zoo.nn.adapters.apply_adapter`). The base is frozen; only adapter weights train, and
            ``export`` writes the base plus ``adapter.safetensors`` / ``adapter_config.json``
            (``zoo.load_pretrained(folder)`` applies it; ``adapter=False`` gives the base).
        max_new_tokens, temperature, top_k, top_p: generation settings for ``predict``; ``top_k`` null or 0
            samples from the whole vocabulary (Hugging Face's convention), negative is an error; ``top_p`` in
            [0, 1] samples from the nucleus (the likeliest tokens holding that probability), null for none.
        lr, weight_decay, betas, warmup_steps, scheduler, min_lr_ratio: see :class:`ZooTask`.
    """

    def __init__(
        self,
        arch: str = "lm-diff-tiny",
        attn_type: Optional[str] = None,
        model_args: Optional[dict[str, Any]] = None,
        pretrained: Optional[str] = None,
        data_info: Optional[dict[str, Any]] = None,
        adapter: Optional[dict[str, Any]] = None,
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: Optional[int] = 50,
        top_p: Optional[float] = None,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        scheduler: str = "cosine",
        min_lr_ratio: float = 0.1,
    ) -> None:
        super().__init__(lr, weight_decay, betas, warmup_steps, scheduler, min_lr_ratio)
        check_top_k(top_k)  # at config time, not after a whole fit
        check_top_p(top_p)
        check_generation(max_new_tokens, temperature)
        self.save_hyperparameters()
        self.arch = arch
        self.data_info = dict(data_info or {})
        overrides = dict(model_args or {})
        if attn_type is not None:
            overrides["attn_type"] = attn_type
        data_vocab = self.data_info.get("vocab_size")
        # the Hugging Face folder a converted base came from: an adapted export (the same base) keeps saying so
        self._converted_from: Optional[str] = None
        if pretrained is not None:
            folder = resolve_pretrained(pretrained)
            meta = read_export_config(folder)
            lm_class = _class_path(DiffTransformerLM)
            if meta["model_class"] != lm_class:  # e.g. a converted BERT / MiniLM: an encoder, not an LM
                raise ValueError(
                    f"checkpoint {folder} holds a {meta['model_class']} (family {meta.get('family')!r}), not a language "
                    f"model ({lm_class}); LanguageModelTask fine-tunes or adapts language-model exports (a zoo LM, or a "
                    "converted Llama / Mistral / Qwen2)"
                )
            cfg = meta["config"]
            extra = meta.get("extra")
            self._converted_from = extra.get("converted_from") if isinstance(extra, dict) else None
            self.arch = meta.get("arch")  # None for a converted checkpoint: no registered name describes it
            # fewer tokens than embedding rows is fine for the export's own tokenizer (converted Qwen2 / Llama
            # pad the embedding); setup checks that the data's tokenizer is that one
            own = _own_vocab_size(folder) if data_vocab is not None and data_vocab != cfg["vocab_size"] else None
            padded = data_vocab is not None and data_vocab < cfg["vocab_size"] and own == data_vocab
            if own is not None and own == data_vocab > cfg["vocab_size"]:
                # tokens added to a Hugging Face tokenizer (a pad token) without resizing the model's embeddings: the
                # data's tokenizer is the checkpoint's own, so pointing data.tokenizer at it (the usual fix) changes nothing
                raise ValueError(
                    f"checkpoint {folder}'s own tokenizer has {own} tokens but its embedding only {cfg['vocab_size']} "
                    f"rows: ids {cfg['vocab_size']}..{own - 1} were added to the tokenizer without resizing the model. "
                    "Resize the source model's embeddings (transformers: model.resize_token_embeddings(len(tokenizer)); "
                    "model.save_pretrained(folder)) and convert it again, or remove the added tokens from its tokenizer.json"
                )
            if data_vocab is not None and data_vocab != cfg["vocab_size"] and not padded:
                raise ValueError(
                    f"the data's tokenizer has {data_vocab} tokens but checkpoint {folder} was trained with "
                    f"{cfg['vocab_size']}; set data.tokenizer to the checkpoint folder so both use its tokenizer"
                )
            # The checkpoint's architecture wins; explicit overrides must agree (checked on load). The task trains
            # the export's base (an adapter comes from `adapter`), not an adapter the export may hold.
            self.model = create_model(arch, pretrained=folder, adapter=False, **{**_arch_fields(cfg), **overrides})
            from zoo.nn.adapters import ADAPTER_FILE

            if (folder / ADAPTER_FILE).is_file():
                warnings.warn(
                    f"checkpoint {folder} holds an adapter ({ADAPTER_FILE}); this task starts from its base weights "
                    "only and does not load it (zoo.load_pretrained(folder) applies it; model.init_args.adapter "
                    "trains a new one)", stacklevel=2,
                )
        else:
            if data_vocab is not None:
                overrides.setdefault("vocab_size", data_vocab)
            self.model = create_model(arch, **overrides)
        max_len = self.data_info.get("max_len", self.data_info.get("block_size"))
        if max_len is not None and max_len > self.model.config.max_seq_len:
            raise ValueError(
                f"the data yields sequences of {max_len} tokens but the model's max_seq_len is "
                f"{self.model.config.max_seq_len}; lower the data's block_size/seq_len or set "
                "model.init_args.model_args.max_seq_len"
            )
        if adapter:
            spec = dict(adapter)
            if "method" not in spec:
                raise ValueError(f"adapter needs a method (one of {list(ADAPTER_METHODS)}), got {adapter}")
            apply_adapter(self.model, spec.pop("method"), layers=spec.pop("layers", None), **spec)
        self._metrics = torch.nn.ModuleDict()
        self._byte_table: Optional[tuple[Any, torch.Tensor]] = None  # (tokenizer, UTF-8 bytes per id): bits per byte
        # token-weighted gradient accumulation (training_step / optimizer_step)
        self._loss_unit: Optional[float] = None
        self._window_tokens: Any = 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if getattr(self.model, "adapter_config", None):
            step_adapters(self.model, self.global_step)  # DEX's lambda annealing

    # -- data hand-over: the tokenizer lives on the datamodule, travels with the model
    def _datamodule_tokenizer(self) -> Any:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(dm, "tokenizer", None)

    def _check_tokenizer(self, tok: Any) -> None:
        """The datamodule's tokenizer ``tok`` must be the one the model was trained with."""
        if self.model.tokenizer is not None and _tok_signature(self.model.tokenizer) != _tok_signature(tok):
            raise ValueError(
                "the datamodule's tokenizer differs from the checkpoint's tokenizer; set data.tokenizer to the "
                "checkpoint folder (an exported model folder holds its tokenizer)"
            )

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        info = getattr(dm, "data_info", None) if "kind" not in self.data_info else None
        if isinstance(info, dict) and "kind" in info:
            # built in Python without data_info (the CLI links it): retrieval data are scored by accuracy all the same
            self.data_info["kind"] = info["kind"]
        tok = self._datamodule_tokenizer()
        if tok is None:
            if stage == "fit" and self.data_info.get("kind") == "text" and self.model.tokenizer is None:
                # plain DataLoaders (trainer.fit(task, loader)): the datamodule that holds the tokenizer is not seen
                warnings.warn(
                    "training on text without its tokenizer: the model gets none, so val/bpb is not logged and the "
                    "checkpoint and export hold no tokenizer (text prompts then fail); fit with datamodule=dm, or "
                    "set task.model.tokenizer = dm.tokenizer first", stacklevel=2,
                )
            return
        self._check_tokenizer(tok)
        if tok.vocab_size > self.model.config.vocab_size:
            raise ValueError(
                f"tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {self.model.config.vocab_size}"
                "; build the task with data_info=dm.data_info (the CLI links it), which sizes the model for it"
            )
        self.model.tokenizer = tok

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the checkpoint's tokenizer, then check it against the datamodule's.

        With ``--ckpt_path`` Lightning runs ``setup`` before it restores the checkpoint, so the check in
        ``setup`` only saw the datamodule's own tokenizer (or a ``pretrained`` one); the checkpoint's
        tokenizer arrives here and gets the same check.
        """
        self._converted_from = checkpoint.get("zoo_converted_from", self._converted_from)
        tok = self._datamodule_tokenizer()
        if tok is not None:
            self.model.tokenizer = None  # setup attached the datamodule's; only the checkpoint's counts now
        super().on_load_checkpoint(checkpoint)
        if tok is not None:
            self._check_tokenizer(tok)
            if self.model.tokenizer is None:  # a checkpoint without a tokenizer keeps the datamodule's
                self.model.tokenizer = tok

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self._converted_from:  # the checkpoint's hparams drop `pretrained`: the provenance travels on its own
            checkpoint["zoo_converted_from"] = self._converted_from

    def export_extra(self) -> Optional[dict[str, Any]]:
        """An adapted model over a converted base keeps the base's ``converted_from`` (the export's
        ``model.safetensors`` is that base, unchanged)."""
        if self._converted_from and getattr(self.model, "adapter_config", None):
            return {"converted_from": self._converted_from}
        return None

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        labels = batch["labels"]
        wide = logits.to(torch.promote_types(logits.dtype, torch.float32))  # a float64 model's loss stays float64
        nll = F.cross_entropy(wide.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        mask = labels != IGNORE
        correct = ((logits.argmax(-1) == labels) & mask).sum()
        return nll, mask.sum(), correct

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        nll, n, correct = self._loss(batch)
        loss = nll / n.clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        if self.data_info.get("kind") == "retrieval":
            self.log("train/acc", correct / n.clamp(min=1), prog_bar=True, batch_size=batch["input_ids"].shape[0])
        trainer = self._trainer
        if trainer is not None and (trainer.accumulate_grad_batches > 1 or trainer.world_size > 1):
            # Every scored token of an optimizer step weighs alike (Hugging Face's rule since transformers 4.46):
            # Lightning averages the accumulated batches' (and the processes') mean losses, which over-weighs the
            # tokens of a smaller batch and divides an epoch's last, incomplete window by accumulate_grad_batches.
            # Backward the sum over a fixed unit here; optimizer_step divides by the step's token count.
            if self._loss_unit is None:
                self._loss_unit = float(batch["labels"].numel())
            self._window_tokens = self._window_tokens + n.detach()
            return nll * trainer.accumulate_grad_batches / self._loss_unit
        return loss

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._window_tokens = 0  # a fit stopped mid-window (an interrupt) must not scale the next fit's first step

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        # The window's rescale runs inside the closure, right after its last backward: Lightning calls the callbacks'
        # on_before_optimizer_step (gradient-norm loggers), then this module's, then clips, all after the closure, so
        # each of them sees the final gradients (the module hook ran after the callbacks and was lost to an override
        # that did not call super()).
        def closure() -> Any:
            result = optimizer_closure()
            self._rescale_window(optimizer)
            return result

        super().optimizer_step(epoch, batch_idx, optimizer, closure if optimizer_closure is not None else None)

    def _rescale_window(self, optimizer: Any) -> None:
        if self._loss_unit is None or not torch.is_tensor(self._window_tokens):
            return
        # the window's tokens over every process (the same factor on each: DDP averaged the gradients already)
        tokens = self._window_tokens.to(wide_float(self._window_tokens.device))  # float32 on MPS (no float64)
        total = self.trainer.strategy.reduce(tokens, reduce_op="sum")
        self._window_tokens = 0
        factor = self.trainer.world_size * self._loss_unit / total.clamp(min=1)
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.mul_(factor.to(p.grad.dtype))

    def _label_bytes(self, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """UTF-8 bytes of the scored label tokens (0 for special ids), or None without a text datamodule."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tok = getattr(dm, "tokenizer", None)
        if not callable(getattr(dm, "bytes_per_token", None)) or not hasattr(tok, "token_byte_lengths"):
            return None
        if self._byte_table is None or self._byte_table[0] is not tok or self._byte_table[1].device != labels.device:
            self._byte_table = (tok, torch.as_tensor(tok.token_byte_lengths(), dtype=torch.long).to(labels.device))
        # masked in place, not selected with labels[labels != IGNORE]: a boolean index has a data-dependent size, a
        # device sync every evaluation step on a GPU
        scored = labels != IGNORE
        return torch.where(scored, self._byte_table[1][labels.masked_fill(~scored, 0)], 0).sum()

    def _accumulate(self, prefix: str, batch: dict[str, torch.Tensor]) -> None:
        nll, n, correct = self._loss(batch)
        values = [("nll", nll), ("n", n), ("correct", correct)]
        if self.data_info.get("kind") != "retrieval":
            # bits per byte = total nats / (ln 2 * bytes of the scored tokens): the bytes of exactly the tokens
            # scored (a limit_val_batches subset, blocks' unscored first tokens), not the split's average
            nbytes = self._label_bytes(batch["labels"])
            if nbytes is not None:
                values.append(("bytes", nbytes))
        for name, value in values:
            key = f"{prefix.replace('/', '|')}|{name}"
            if key not in self._metrics:
                self._metrics[key] = _Float64Sum().to(self.device)
            self._metrics[key].update(value)

    def _report(self, stage: str) -> dict[str, float]:
        """Log ``stage``'s metrics; returns them keyed as logged without the stage (``loss``, ``len64/acc``...)."""
        out: dict[str, float] = {}

        def log(name: str, value: torch.Tensor, **kw: Any) -> None:
            # sync_dist: the value is already the whole split's (metric states summed across ranks); it only says
            # so to Lightning, which otherwise warns under DDP that an epoch-level value is one rank's
            self.log(name, value, sync_dist=True, **kw)
            out[name.split("/", 1)[1]] = float(value)

        prefixes = sorted({k.rsplit("|", 1)[0] for k in self._metrics if k.startswith(stage)})
        # Bits per byte divides by the bytes per token of the split being reported (val or test),
        # never another split's: the ratio depends on the text, not only on the tokenizer.
        per_split = getattr(getattr(self.trainer, "datamodule", None), "bytes_per_token", None)
        bpt = per_split(stage) if callable(per_split) else None
        for p in prefixes:
            nll = self._metrics[f"{p}|nll"].compute()
            n = self._metrics[f"{p}|n"].compute().clamp(min=1)
            correct = self._metrics[f"{p}|correct"].compute()
            nbytes = self._metrics[f"{p}|bytes"].compute() if f"{p}|bytes" in self._metrics else None  # one sync
            name = p.replace("|", "/")
            loss = nll / n
            log(f"{name}/loss", loss, prog_bar=stage == "val")
            log(f"{name}/ppl", torch.exp(loss))  # inf only past float range (a diverged model), never capped
            if self.data_info.get("kind") == "retrieval":
                log(f"{name}/acc", correct / n, prog_bar=stage == "val")
            elif nbytes is not None and float(nbytes) > 0:
                log(f"{name}/bpb", nll / (math.log(2) * nbytes))
            elif bpt:
                log(f"{name}/bpb", loss / (math.log(2) * bpt))
            for k in ("nll", "n", "correct", "bytes"):
                if f"{p}|{k}" in self._metrics:
                    self._metrics[f"{p}|{k}"].reset()
        return out

    def _eval_prefix(self, stage: str, dataloader_idx: int) -> str:
        lens = getattr(getattr(self.trainer, "datamodule", None), "test_seq_lens", None)
        if stage == "test" and lens:
            return f"test/len{lens[dataloader_idx]}"
        return stage if dataloader_idx == 0 else f"{stage}/{dataloader_idx}"

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._accumulate(self._eval_prefix("val", dataloader_idx), batch)

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._accumulate(self._eval_prefix("test", dataloader_idx), batch)

    def on_test_epoch_end(self) -> None:
        results = self._report("test")
        folder = self._run_dir()  # a DDP collective: every rank
        # as the other domains: test_metrics.json in the run folder (a fast_dev_run logs nothing, so writes nothing)
        if folder is not None and results and self.trainer.is_global_zero and not self.trainer.fast_dev_run:
            from zoo.tasks.callbacks import write_json_new

            write_json_new(folder, "test_metrics.json", results)

    def on_predict_start(self) -> None:
        super().on_predict_start()
        limit = self.model.config.max_seq_len
        room = self.model.prompt_room(self.hparams.max_new_tokens)  # max_seq_len + 1 tokens in all (see prompt_room)
        if room < 1:
            raise ValueError(
                f"max_new_tokens {self.hparams.max_new_tokens} leaves no room for a prompt within the model's "
                f"max_seq_len {limit}; lower it (--model.init_args.max_new_tokens)"
            )
        # every prompt checked before the first is written: a long one part-way left a partial predictions file
        prompts = getattr(getattr(self.trainer, "datamodule", None), "prompts", None)
        if prompts and self.model.tokenizer is not None:
            from zoo.models.lm import prompt_ids

            long = [(i, n) for i, p in enumerate(prompts) if (n := len(prompt_ids(self.model.tokenizer, p))) > room]
            if long:
                i, n = long[0]
                raise ValueError(
                    f"{len(long)} of {len(prompts)} prompts do not fit the model's max_seq_len {limit} with "
                    f"max_new_tokens {self.hparams.max_new_tokens}: prompt {i} ({prompts[i][:40]!r}...) has {n} tokens, "
                    f"at most {room} fit; shorten it or lower --model.init_args.max_new_tokens"
                )

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, str]]:
        hp = self.hparams
        if not isinstance(batch, dict) or "prompt" not in batch:
            raise ValueError(
                "predict completes prompts: it reads the batches of the datamodule's predict_dataloader() (data.prompts), "
                "not training / validation / test blocks; use trainer.test for those, or model.generate(ids) on them"
            )
        prompts = list(batch["prompt"])  # one left-padded generation for the batch (data.batch_size prompts)
        texts = self.model.generate(prompts, max_new_tokens=hp.max_new_tokens, temperature=hp.temperature,
                                    top_k=hp.top_k, top_p=hp.get("top_p"), batch_size=len(prompts))
        return [{"prompt": p, "completion": t} for p, t in zip(prompts, texts)]

    def summary_lines(self) -> list[str]:
        c = self.model.config
        line = (f"model: {self._model_name(self.arch or 'converted (no registered name)')} ({c.attn_type} attention, "
                f"{c.n_layers} layers x {c.dim}, {c.n_heads} heads), {self.model.num_params() / 1e6:.2f}M parameters")
        adapter = getattr(self.model, "adapter_config", None)
        if adapter:  # what the run trains: the adapter over a frozen base
            trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            line += f"; {adapter['method']} adapter on {len(adapter['layers'])} layers, {trained / 1e6:.4f}M trainable"
        return [line]


def _own_vocab_size(folder: Path) -> Optional[int]:
    """Vocabulary size of the tokenizer an exported folder carries (None without one)."""
    from zoo.data.tokenizers import CONFIG_NAME, load_tokenizer

    return load_tokenizer(folder).vocab_size if (folder / CONFIG_NAME).is_file() else None


def _arch_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in ("dropout", "attn_dropout", "attn_backend")}


def _tok_signature(tok: Any) -> tuple:
    """What identifies a tokenizer: its kind, size, special ids, one encoded sample and, for the
    ``tokenizers`` backends (BPE, Hugging Face), a digest of the whole token -> id table."""
    enc = getattr(tok, "encode", None)
    sample = tuple(enc("Hello, zoo! 123")) if enc else ()
    get_vocab = getattr(getattr(tok, "backend", None), "get_vocab", None)
    table = None
    if get_vocab is not None:
        vocab = sorted(get_vocab(with_added_tokens=True).items())
        table = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
    specials = tuple(getattr(tok, k, None) for k in ("bos_id", "eos_id", "pad_id"))
    return (type(tok).__name__, tok.vocab_size, specials, sample, table)
