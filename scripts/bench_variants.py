"""Attention variants and adaptation methods, measured through the same task/datamodules as the CLI.

(a) every attention type (vanilla, diff, diff_v2, shared_diff, dint, gda) with the same width, depth
    and heads, the same step budget: MQAR retrieval accuracy and tinyshakespeare validation loss,
    parameters, training tokens/s (and peak GPU memory on CUDA);
(b) adaptation: pretrain a small vanilla LM on tinyshakespeare, then adapt it with DEX / DiffLoRA /
    OpAmp on at most 1% of the pretraining tokens, against continuing vanilla training on the same
    tokens: validation loss and in-context retrieval accuracy. Retrieval is measured with the copy
    probe (``zoo.data.retrieval.make_copy_probe``): a random validation-text segment shown twice, scored
    on the second copy's tokens, which the model can only get right by retrieving them from context
    (MQAR would need its own vocabulary, which a text-pretrained LM does not have).

Writes ``<out>/bench_variants.json`` and ``<out>/bench_variants.md``.

    python scripts/bench_variants.py            # README numbers (CPU)
    python scripts/bench_variants.py --quick    # smoke run (default --out: a temp folder)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from bench_lm import QUICK_OUT, SHAKESPEARE, RunLog, machine, pm, run, summarize  # scripts/ is on sys.path when run as a script
from zoo.data import RetrievalDataModule, TextDataModule
from zoo.data.retrieval import make_copy_probe
from zoo.tasks import LanguageModelTask

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("vanilla", "diff", "diff_v2", "shared_diff", "dint", "gda")
# gda at 2:1 signal:noise heads: the benchmark shapes have 2 and 4 heads (3:1 needs multiples of 3)
ATTN_ARGS = {"gda": {"signal_ratio": 2}}
ADAPTERS = {"dex": {}, "difflora": {"rank": 8}, "opamp": {"rank": 8}}


def text_dm() -> TextDataModule:
    return TextDataModule(train_path=str(SHAKESPEARE), block_size=128, batch_size=16, tokenizer="byte")


def with_peak(fn):
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    r = fn()
    r["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return r


PROBE = {"n_samples": 256, "seg_len": 64, "seed": 1234}  # 2 * seg_len = the benchmark's block size


@torch.no_grad()
def copy_accuracy(model: torch.nn.Module, dm: TextDataModule) -> float:
    """Share of the copy probe's labelled tokens (second copy) that ``model`` predicts by argmax."""
    ids, labels = make_copy_probe(dm.token_streams()["val"], **PROBE)
    model.eval()
    hits = total = 0
    for i in range(0, len(ids), 64):
        x, y = torch.from_numpy(ids[i : i + 64]), torch.from_numpy(labels[i : i + 64])
        pred = model(x).argmax(-1)
        keep = y != -100
        hits += int((pred[keep] == y[keep]).sum())
        total += int(keep.sum())
    return hits / total


def adapt_run(src: Path, method: str | None, seed: int, steps: int, lr: float) -> dict:
    """Continue (method None) or adapt the exported base for ``steps`` steps; val loss and copy accuracy."""
    L.seed_everything(seed, verbose=False)
    dm = text_dm()
    adapter = {"method": method, **ADAPTERS[method]} if method else None
    if method == "dex":
        adapter["anneal_steps"] = max(steps // 2, 1)
    task = LanguageModelTask(pretrained=str(src), data_info=dm.data_info, adapter=adapter, lr=lr,
                             warmup_steps=1, scheduler="constant")
    trainable = sum(p.numel() for p in task.parameters() if p.requires_grad)
    trainer = L.Trainer(max_steps=steps, limit_val_batches=40, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    val = trainer.validate(task, datamodule=dm, verbose=False)[0]
    return {"method": method or "continue-vanilla", "seed": seed, "trainable_params": trainable,
            "val_loss": val["val/loss"], "copy_acc": copy_accuracy(task.model, dm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output folder (default: scripts/results/variants; with --quick, a temp folder)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=300, help="steps per run in (a)")
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["types", "adapt"], help="run one half of the benchmark")
    args = ap.parse_args()
    args.seeds = list(dict.fromkeys(args.seeds))  # a seed given twice is one run, not a second sample of the spread
    if args.quick:
        args.steps, args.pretrain_steps, args.seeds = 3, 100, [0]
    if args.out is None:  # a smoke run must not overwrite (or, with --only, merge into) the recorded results
        args.out = str(QUICK_OUT / "variants" if args.quick else ROOT / "scripts" / "results" / "variants")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not SHAKESPEARE.is_file():
        raise SystemExit(f"{SHAKESPEARE} not found: this benchmark needs ../shared/data")
    t0 = time.time()
    res: dict = {"machine": machine(), "args": vars(args), "types": {}, "adaptation": {}}
    previous = out / "bench_variants.json"
    if args.only and previous.is_file():  # rerunning one half keeps the other half's results
        kept = json.loads(previous.read_text())
        res["types" if args.only == "adapt" else "adaptation"] = kept["types" if args.only == "adapt" else "adaptation"]
        # the kept half's own record: an earlier --only run already names it in other_half
        res["other_half"] = kept.get("other_half") if kept.get("args", {}).get("only") == args.only else None
        res["other_half"] = res["other_half"] or {k: kept.get(k) for k in ("machine", "args", "total_seconds")}

    log = RunLog(out / "bench_variants.partial.jsonl", {"machine": res["machine"], "args": vars(args)})

    # (a) every attention type at the same shape and step budget
    retr = {"dim": 64, "n_layers": 2, "n_heads": 2, "max_seq_len": 32}
    text = {"dim": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 128}
    for attn in TYPES if args.only != "adapt" else ():
        entry = {}
        for name, shape, make_dm, key, lr in (
            ("mqar", retr, lambda s: RetrievalDataModule(seq_len=32, n_pairs=4, train_size=args.steps * 64,
                                                         val_size=512, batch_size=64, seed=s), "val/acc", 3e-3),
            ("shakespeare", text, lambda s: text_dm(), "val/loss", 2e-3),
        ):
            runs = []
            for seed in args.seeds:
                dm = make_dm(seed)
                r = with_peak(lambda: run(attn, seed, dm, {**shape, "attn_args": ATTN_ARGS.get(attn)}, args.steps, lr,
                                          args.steps, 40))
                tokens = r["steps"] * (64 * 32 if name == "mqar" else 16 * 128)
                r["tokens_per_s"] = tokens / r["train_seconds"]  # training only: not setup or validation
                r.pop("train_curve")
                print(f"[{name}] {attn} seed {seed}: {key} {r['final'].get(key)}", flush=True)
                log.add(f"types {attn} {name} seed {seed}", r)
                runs.append(r)
            entry[name] = {"params": runs[0]["params"], key.split("/")[1]: summarize(runs, key),
                           "tokens_per_s": sum(r["tokens_per_s"] for r in runs) / len(runs),
                           "peak_gpu_mem_mb": runs[0]["peak_gpu_mem_mb"], "runs": runs}
        res["types"][attn] = entry

    # (b) adaptation of a pretrained vanilla LM with <= 1% of its pretraining tokens
    if args.only != "types":
        with tempfile.TemporaryDirectory(prefix="bench_variants_") as tmp:  # the pretrained base's export
            adaptation(args, res, tmp, text, log)
    res["total_seconds"] = round(time.time() - t0, 1)
    (out / "bench_variants.json").write_text(json.dumps(res, indent=1))
    md = table(res)
    (out / "bench_variants.md").write_text(md)
    log.done()
    print(md)


def adaptation(args: argparse.Namespace, res: dict, tmp: str, text: dict, log: RunLog) -> None:
    """(b) adaptation of a pretrained vanilla LM (``text`` shape, 8 heads) with <= 1% of its pretraining tokens;
    the base is exported to ``tmp``."""
    L.seed_everything(0, verbose=False)
    dm = text_dm()
    base = LanguageModelTask(arch="lm-vanilla-tiny", model_args={**text, "n_heads": 8}, data_info=dm.data_info,
                             lr=2e-3, warmup_steps=50)
    trainer = L.Trainer(max_steps=args.pretrain_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=40,
                        num_sanity_val_steps=0)
    trainer.fit(base, datamodule=dm)
    base_val = trainer.validate(base, datamodule=dm, verbose=False)[0]["val/loss"]
    base_copy = copy_accuracy(base.model, dm)
    src = base.export(Path(tmp) / "base")
    adapt_steps = max(args.pretrain_steps // 100, 1)  # 1% of the pretraining tokens (same batch shape)
    res["adaptation"] = {"pretrain_steps": args.pretrain_steps, "adapt_steps": adapt_steps,
                         "base_val_loss": base_val, "base_copy_acc": base_copy, "probe": PROBE, "methods": {}}
    log.add("adaptation base", {k: v for k, v in res["adaptation"].items() if k != "methods"})
    for method in (None, "dex", "difflora", "opamp"):
        label = method or "continue-vanilla"
        runs = []
        for seed in args.seeds:
            runs.append(adapt_run(src, method, seed, adapt_steps, 1e-3))
            log.add(f"adaptation {label} seed {seed}", runs[-1])
        print(f"[adapt] {label}: {[(r['val_loss'], r['copy_acc']) for r in runs]}", flush=True)
        res["adaptation"]["methods"][label] = {
            "trainable_params": runs[0]["trainable_params"],
            "val_loss": summarize([{"final": {"l": r["val_loss"]}} for r in runs], "l"),
            "copy_acc": summarize([{"final": {"a": r["copy_acc"]}} for r in runs], "a"), "runs": runs,
        }


def _measured(meta: dict, steps: bool = True) -> str:
    m, a = meta["machine"], meta["args"]
    per_run = f"{a['steps']} steps per run; " if steps else ""
    return (
        f"Measured on {m.get('cpu_model', m['processor'])} ({m['cpu_count']} CPUs, {m['torch_threads']} torch threads, {m['device']}), "
        f"torch {m['torch']}; seeds {a['seeds']}; {per_run}total {meta['total_seconds'] / 60:.1f} min."
    )


def table(res: dict) -> str:
    here = {k: res[k] for k in ("machine", "args", "total_seconds")}
    other = res.get("other_half")  # the half kept from an earlier run (``--only``)
    types_meta = other if other and res["args"]["only"] == "adapt" else here
    adapt_meta = other if other and res["args"]["only"] == "types" else here
    lines = [
        _measured(types_meta),
        "",
        "| attention | params (mqar / text) | MQAR acc | text val loss | tokens/s (mqar / text) |",
        "|---|---|---|---|---|",
    ]
    for attn, e in res["types"].items():  # empty with --only adapt
        q, t = e["mqar"], e["shakespeare"]
        lines.append(
            f"| {attn} | {q['params']:,} / {t['params']:,} | {pm(q['acc'], 3)} | "
            f"{pm(t['loss'], 3)} | {q['tokens_per_s']:,.0f} / {t['tokens_per_s']:,.0f} |"
        )
    ad = res["adaptation"]
    if not ad:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        _measured(adapt_meta, steps=False) + f" Adaptation: {adapt_meta['args']['pretrain_steps']} pretraining steps.",
        "",
        f"Adaptation: vanilla base pretrained {ad['pretrain_steps']} steps (val loss {ad['base_val_loss']:.3f}, "
        f"copy-retrieval accuracy {ad['base_copy_acc']:.3f}), then {ad['adapt_steps']} steps (1% of the pretraining "
        f"tokens). Copy retrieval: {ad['probe']['n_samples']} validation segments of {ad['probe']['seg_len']} bytes "
        "shown twice, accuracy on the second copy:",
        "",
        "| method | trainable params | val loss | copy-retrieval acc |",
        "|---|---|---|---|",
    ]
    for label, e in ad["methods"].items():
        lines.append(
            f"| {label} | {e['trainable_params']:,} | {pm(e['val_loss'], 4)} | "
            f"{pm(e['copy_acc'], 3)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
