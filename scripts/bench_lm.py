"""Diff vs vanilla Transformer LMs at equal parameter count and equal step budget.

(a) key-information retrieval (synthetic multi-query associative recall): answer accuracy at
    several context lengths (one model trained per length);
(b) tinyshakespeare, byte level: validation loss and bits per byte.

Every run goes through the same LanguageModelTask + datamodules as ``python -m zoo fit``.
Writes ``<out>/bench_lm.json``, ``<out>/bench_lm.md`` and ``<out>/bench_lm_loss.png``.

    python scripts/bench_lm.py                      # the README numbers (CPU, ~1 h on 2 cores)
    python scripts/bench_lm.py --quick              # smoke run, a few steps (default --out: a temp folder)
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from benchmachine import RunLog, machine  # scripts/ is on sys.path when run as a script
from zoo.data import RetrievalDataModule, TextDataModule
from zoo.tasks import LanguageModelTask

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
QUICK_OUT = Path(tempfile.gettempdir()) / "zoo_bench_quick"  # a --quick run's default --out (not scripts/results)


class Curve(L.Callback):
    """Records (step, train loss), (step, val loss / acc) and the seconds spent training: from the start of
    training to its end, less the validation runs in between (the sanity check and setup come before)."""

    def __init__(self) -> None:
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, dict[str, float]]] = []
        self.train_seconds = 0.0
        self._since: float | None = None  # when the current stretch of training began

    def _pause(self) -> None:
        if self._since is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()  # the steps queued on the GPU belong to this stretch
            self.train_seconds += time.perf_counter() - self._since
            self._since = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._since = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self._pause()

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % 10 == 0:
            self.train.append((trainer.global_step, float(outputs["loss"])))

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.val.append((trainer.global_step, m))
            if trainer.state.fn == "fit":
                self._since = time.perf_counter()  # back to training after a validation inside fit


def run(attn: str, seed: int, dm: L.LightningDataModule, model_args: dict, steps: int, lr: float,
        val_every: int, limit_val: int | None) -> dict:
    L.seed_everything(seed, verbose=False)
    # vanilla gets 2x heads of half width: the paper's baseline layout, same parameter count
    heads = 2 * model_args["n_heads"] if attn == "vanilla" else model_args["n_heads"]
    task = LanguageModelTask(
        arch="lm-vanilla-tiny" if attn == "vanilla" else "lm-diff-tiny", attn_type=attn,
        model_args={**model_args, "n_heads": heads}, data_info=dm.data_info,
        lr=lr, warmup_steps=min(100, steps // 10),
    )
    curve = Curve()
    trainer = L.Trainer(
        max_steps=steps, val_check_interval=val_every, limit_val_batches=limit_val, check_val_every_n_epoch=None,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[curve], accelerator="auto", devices=1,
    )
    t0 = time.time()
    trainer.fit(task, datamodule=dm)
    secs = time.time() - t0
    if not curve.val or curve.val[-1][0] != trainer.global_step:  # the last check fell before the last step
        trainer.validate(task, datamodule=dm, verbose=False)  # recorded by the curve at the final step
    final = curve.val[-1][1] if curve.val else {}
    return {
        "attn": attn, "seed": seed, "params": task.model.num_params(), "steps": trainer.global_step,
        "seconds": round(secs, 1), "train_seconds": curve.train_seconds, "final": final, "val_curve": curve.val,
        "train_curve": curve.train,
    }


def summarize(runs: list[dict], key: str) -> dict:
    """Mean, sample sd (None for a single run: no spread was measured) and count of ``key`` over ``runs``."""
    vals = [r["final"][key] for r in runs if key in r["final"]]
    return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def pm(summary: dict, digits: int) -> str:
    """``mean ± sd`` of a :func:`summarize` result; one seed shows its mean and says so (not a ``± 0``)."""
    if summary.get("std") is None:
        return f"{summary['mean']:.{digits}f} (1 seed)"
    return f"{summary['mean']:.{digits}f} ± {summary.get('std'):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (default: scripts/results/lm; with --quick, a temp folder)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--lens", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--retrieval-steps", type=int, default=1500)
    ap.add_argument("--text-steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few steps of everything (smoke test)")
    ap.add_argument("--skip-text", action="store_true")
    args = ap.parse_args()
    args.seeds = list(dict.fromkeys(args.seeds))  # a seed given twice is one run, not a second sample of the spread
    if args.quick:
        args.retrieval_steps, args.text_steps, args.lens, args.seeds = 4, 4, [32], [0]
    if args.out is None:  # a smoke run must not overwrite the recorded results
        args.out = str(QUICK_OUT / "lm" if args.quick else ROOT / "scripts" / "results" / "lm")
    if not args.skip_text and not SHAKESPEARE.is_file():  # before (a)'s runs: nothing is written until the end
        raise SystemExit(f"{SHAKESPEARE} not found: (b) needs ../shared/data (or pass --skip-text)")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    result: dict = {"machine": machine(), "args": vars(args), "retrieval": {}, "text": {}}
    log = RunLog(out / "bench_lm.partial.jsonl", {"machine": result["machine"], "args": vars(args)})

    # (a) retrieval accuracy vs context length
    retr_model = {"dim": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": max(args.lens)}
    for length in args.lens:
        pairs = max(4, length // 8)
        for attn in ("diff", "vanilla"):
            runs = []
            for seed in args.seeds:
                dm = RetrievalDataModule(
                    task="mqar", seq_len=length, n_pairs=pairs, n_keys=64, n_values=64,
                    train_size=args.retrieval_steps * 64, val_size=512, batch_size=64, seed=seed,
                )
                r = run(attn, seed, dm, retr_model, args.retrieval_steps, 3e-3, max(args.retrieval_steps // 5, 1), None)
                print(f"[retrieval L={length} pairs={pairs}] {attn} seed {seed}: acc {r['final'].get('val/acc')}", flush=True)
                log.add(f"retrieval {length}/{attn} seed {seed}", r)
                runs.append(r)
            result["retrieval"][f"{length}/{attn}"] = {
                "seq_len": length, "n_pairs": pairs, "attn": attn, "params": runs[0]["params"],
                "acc": summarize(runs, "val/acc"), "runs": runs,
            }

    # (b) tinyshakespeare byte-level validation loss
    if not args.skip_text:
        text_model = {"dim": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 128}
        for attn in ("diff", "vanilla"):
            runs = []
            for seed in args.seeds:
                dm = TextDataModule(train_path=str(SHAKESPEARE), block_size=128, batch_size=16, tokenizer="byte")
                r = run(attn, seed, dm, text_model, args.text_steps, 2e-3, max(args.text_steps // 6, 1), 40)
                print(f"[shakespeare] {attn} seed {seed}: val loss {r['final'].get('val/loss')}", flush=True)
                log.add(f"text {attn} seed {seed}", r)
                runs.append(r)
            result["text"][attn] = {
                "params": runs[0]["params"], "loss": summarize(runs, "val/loss"), "bpb": summarize(runs, "val/bpb"),
                "runs": runs,
            }
    result["total_seconds"] = round(time.time() - t_start, 1)
    (out / "bench_lm.json").write_text(json.dumps(result, indent=1))
    md = table(result)
    (out / "bench_lm.md").write_text(md)
    plot(result, out / "bench_lm_loss.png")
    log.done()
    print(md)


def table(res: dict) -> str:
    m = res["machine"]
    a = res["args"]
    lines = [
        f"Measured on {m.get('cpu_model', m['processor'])} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads, {m['device']}), "
        f"torch {m['torch']}; seeds {a['seeds']}; total {res['total_seconds'] / 60:.1f} min.",
        "",
        f"(a) Multi-query associative recall, answer accuracy after {a['retrieval_steps']} steps (batch 64):",
        "",
        "| context | pairs | diff acc | vanilla acc | params diff / vanilla |",
        "|---|---|---|---|---|",
    ]
    for length in a["lens"]:
        d, v = res["retrieval"][f"{length}/diff"], res["retrieval"][f"{length}/vanilla"]
        lines.append(
            f"| {length} | {d['n_pairs']} | {pm(d['acc'], 3)} | "
            f"{pm(v['acc'], 3)} | {d['params']:,} / {v['params']:,} |"
        )
    if res["text"]:
        d, v = res["text"]["diff"], res["text"]["vanilla"]
        lines += [
            "",
            f"(b) tinyshakespeare, byte level, validation after {a['text_steps']} steps (batch 16 x 128):",
            "",
            "| model | params | val loss | val bits/byte |",
            "|---|---|---|---|",
            f"| diff | {d['params']:,} | {pm(d['loss'], 4)} | {d['bpb']['mean']:.4f} |",
            f"| vanilla | {v['params']:,} | {pm(v['loss'], 4)} | {v['bpb']['mean']:.4f} |",
        ]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for attn, color in (("diff", "tab:red"), ("vanilla", "tab:blue")):
        for r in res["text"].get(attn, {}).get("runs", []):
            xs, ys = zip(*r["train_curve"]) if r["train_curve"] else ([], [])
            axes[0].plot(xs, ys, color=color, alpha=0.5, label=f"{attn} seed {r['seed']}")
        lens = res["args"]["lens"]
        accs = [res["retrieval"][f"{n}/{attn}"]["acc"]["mean"] for n in lens]
        axes[1].plot(lens, accs, marker="o", color=color, label=attn)
    axes[0].set(title="tinyshakespeare train loss", xlabel="step", ylabel="loss (nats/byte)")
    axes[1].set(title="MQAR accuracy vs context length", xlabel="context length", ylabel="accuracy", ylim=(0, 1))
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
