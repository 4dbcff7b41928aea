"""FDA benchmark: the same image-text model trained with and without FDA, then attacked.

    python scripts/bench_fda.py                      # train 2 x 2 runs, evaluate, write results
    python scripts/bench_fda.py --phase train        # only train (exports under --work)
    python scripts/bench_fda.py --phase eval         # only evaluate existing exports
    python scripts/bench_fda.py --export             # also copy the FDA model of the first seed to zoo/pretrained/vlm-fda-tiny
    python scripts/bench_fda.py --phase eval --transfer   # transfer attacks: crafted on another seed's no-FDA run
    python scripts/bench_fda.py --phase train --arms fda & python scripts/bench_fda.py --phase train --arms nofda
                                                     # one arm per process (cores), then --phase eval

A run trained under --work is reused only with the settings it was trained with (steps, batch size,
lr, warmup, ITM weight, scenes, and for the FDA arm --fda-args); other settings stop with an error that
names them. The no-FDA runs do not depend on --fda-args, so FDA variants can share them (link them in).

Equal budget: both variants see the same synthetic scenes (data seed 0), the same number of steps,
batch size and schedule; the training seed (init and data order) is 0, 1, ... for both. Evaluation
on the test split (distinct captions): clean R@1 (ITC ranking, ITM re-rank of the top k) and the
attack success rate (ASR, share of originally correct top-1 retrievals the attack makes wrong)
under image PGD, the greedy text attack and the co-attack (zoo.attacks). Writes
scripts/results/vlm/bench_fda.json and bench_fda.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from benchmachine import cpu_model  # noqa: E402  (scripts/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "vlm"


def train_one(fda: bool, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """Train one run with the Lightning Trainer and export it to ``out``."""
    import lightning as L

    from zoo.data.vlm import SyntheticVLMDataModule
    from zoo.tasks.vlm import VLMTask

    L.seed_everything(seed, workers=True)
    dm = SyntheticVLMDataModule(n_train=args.n_train, n_val=args.n_test, n_test=args.n_test, seed=0,
                                image_size=64, batch_size=args.batch_size)
    task = VLMTask(arch="vlm-fda-tiny" if fda else "vlm-tiny", fda=fda, data_info=dm.data_info, lr=args.lr, itm_weight=args.itm_weight,
                   model_args=dict(args.fda_args) if fda else None,
                   pretrained=str(Path(args.init_from) / f"{arm(False)}_s{seed}") if args.init_from else None,
                   warmup_steps=args.warmup, eval_k=args.k)
    trainer = L.Trainer(accelerator="cpu", max_steps=args.steps, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    t0 = time.time()
    trainer.fit(task, datamodule=dm)
    wall = time.time() - t0
    task.export(out, overwrite=True)
    meta = {"fda": fda, "seed": seed, **train_settings(args, fda), "train_wall_s": wall, "params": task.model.num_params()}
    (out / "bench_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"trained fda={fda} seed={seed}: {wall:.0f}s", flush=True)
    return meta


def fda_args_type(text: str) -> dict:
    """``--fda-args``: a JSON object of FDA settings (the no-FDA arm has none to match)."""
    from zoo.tasks.vlm import FDA_FIELDS

    keys = [k for k in FDA_FIELDS if k != "fda"] + ["function_words"]  # the list FDA de-attends is an FDA setting
    try:
        out = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--fda-args is not JSON: {e}") from None
    if not isinstance(out, dict) or set(out) - set(keys):
        raise argparse.ArgumentTypeError(f"--fda-args takes a JSON object with keys from {keys}, got {text!r}")
    return out


def arm(fda: bool) -> str:
    """The variant's name: in --arms, run folders (``<arm>_s<seed>``) and the summary."""
    return "fda" if fda else "nofda"


# of runs whose meta predates the field; "decay_exempt": up to 2026-11-27 the ViT's position embedding and
# class token were weight-decayed too (ZooTask now leaves out what a module's no_weight_decay() lists, as timm)
TRAIN_DEFAULTS = {"lr": 5e-4, "warmup": 50, "itm_weight": 1.0, "n_train": 12000, "fda_args": {}, "init_from": None,
                  "decay_exempt": "none"}


def train_settings(args: argparse.Namespace, fda: bool) -> dict:
    """The settings a trained run depends on (recorded in its bench_meta.json); ``fda_args`` only shape
    the FDA arm, so the no-FDA runs are shared by every FDA variant."""
    out = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
           "itm_weight": args.itm_weight, "n_train": args.n_train,
           "init_from": str(Path(args.init_from).resolve()) if args.init_from else None, "decay_exempt": "no_weight_decay"}
    return {**out, "fda_args": dict(args.fda_args)} if fda else out


def check_trained(folder: Path, args: argparse.Namespace, fda: bool) -> dict:
    """The meta of the run trained in ``folder``; ``SystemExit`` if it was trained with other settings
    (a rerun with new settings must not report an old run under them)."""
    meta = json.loads((folder / "bench_meta.json").read_text())
    differ = [f"{k}: trained {meta.get(k, TRAIN_DEFAULTS.get(k))!r}, asked {v!r}"
              for k, v in train_settings(args, fda).items() if meta.get(k, TRAIN_DEFAULTS.get(k)) != v]
    if differ:
        raise SystemExit(f"{folder} holds a run trained with other settings ({'; '.join(differ)}); "
                         "pass another --work folder or remove it")
    return meta


def transfer_source(work: Path, seeds: list[int], seed: int) -> Path:
    """The no-FDA run that crafts the transfer attacks on seed ``seed``'s models: the next seed's (cyclically), a
    model neither arm of ``seed`` shares weights or training order with."""
    return work / f"nofda_s{seeds[(seeds.index(seed) + 1) % len(seeds)]}"


def evaluate_one(folder: Path, args: argparse.Namespace, eps: float, source: Optional[Path] = None) -> dict:
    """Clean retrieval and ASR under each attack for the export in ``folder`` (attacks crafted on the export in
    ``source`` when given: transfer)."""
    import zoo
    from zoo.attacks import AttackConfig, run_attack_suite
    from zoo.data.vlm import SyntheticVLMDataModule

    model = zoo.load_pretrained(folder)
    dm = SyntheticVLMDataModule(n_train=1, n_val=args.n_test, n_test=args.n_test, seed=0, image_size=64)
    ds = dm.splits()["test"]
    items = [ds[i] for i in range(len(ds))]
    images = torch.stack([it["image"] for it in items])
    captions = [it["captions"] for it in items]
    cfg = AttackConfig(eps=eps / 255.0, steps=args.pgd_steps, text_changes=args.text_changes, k=args.k)
    t0 = time.time()
    res = run_attack_suite(model, images, captions, cfg, source=source)  # a folder: run_attack_suite loads it
    res["eval_wall_s"] = time.time() - t0
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", choices=["all", "train", "eval"], default="all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", choices=["nofda", "fda"], default=["nofda", "fda"],
                   help="train only these arms (e.g. one per process); the tables need both")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--itm-weight", type=float, default=2.0,
                   help="weight of the ITM loss next to ITC (at 600 steps and weight 1 the ITM head stayed near chance)")
    p.add_argument("--n-train", type=int, default=12000)
    p.add_argument("--init-from", default=None,
                   help="fine-tuning protocol: both arms of seed s start from the no-FDA run nofda_s<s> in this work "
                        "folder (FDA is added to it for the FDA arm, as the paper adds FDA when fine-tuning ALBEF)")
    p.add_argument("--fda-args", type=fda_args_type, default={},
                   help='JSON of FDA-arm architecture overrides, e.g. \'{"fda_direction": "keys", "fda_layers": [0]}\'')
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--k", type=int, default=16, help="ITM re-ranks the ITC top k")
    p.add_argument("--eps", type=float, nargs="+", default=[4.0],
                   help="PGD L-inf budgets in 1/255 units (2..8); one table per budget")
    p.add_argument("--pgd-steps", type=int, default=10)
    p.add_argument("--text-changes", type=int, default=1, help="edits the text attack may make (one word, or two neighbours swapped)")
    p.add_argument("--work", default="/tmp/vlm_bench")
    p.add_argument("--export", action="store_true",
                   help="ship the FDA model of the first --seeds value as zoo/pretrained/vlm-fda-tiny (after the evaluation)")
    p.add_argument("--results", default=str(RESULTS), help="folder for bench_fda.json / bench_fda.md")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--transfer", action="store_true",
                   help="transfer (black-box) attacks: both arms of each seed are attacked with examples crafted on "
                        "the next seed's no-FDA run (needs 2+ seeds); results go to <results>/transfer (a --results "
                        "folder named transfer is used as it is)")
    args = p.parse_args()
    args.seeds = list(dict.fromkeys(args.seeds))  # a seed given twice is one run: it counts once in the means
    args.eps = list(dict.fromkeys(args.eps))  # a budget given twice is one evaluation, one table
    if args.export and args.phase == "train":
        p.error("--export ships the model after its evaluation: use --phase all or --phase eval")
    if args.transfer and len(args.seeds) < 2:
        p.error("--transfer crafts each seed's attacks on another seed's no-FDA run: give 2 or more --seeds")
    if args.transfer and args.export:
        p.error("--export ships the white-box benchmark's model: run it without --transfer")
    if args.transfer and Path(args.results).name != "transfer":
        # the white-box tables in --results stay as they are (the default's and a fine-tuning protocol's alike)
        args.results = str(Path(args.results) / "transfer")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    runs = [(fda, s) for s in args.seeds for fda in (False, True) if arm(fda) in args.arms]
    if args.phase in ("all", "train"):
        for fda, s in runs:
            out = work / f"{arm(fda)}_s{s}"
            if (out / "bench_meta.json").is_file():
                check_trained(out, args, fda)
                print(f"skip {out} (already trained with these settings)", flush=True)
                continue
            train_one(fda, s, args, out)
    if args.phase == "train":
        return
    if set(args.arms) != {"nofda", "fda"}:
        raise SystemExit("the tables compare both arms: evaluate with --arms nofda fda (the default)")
    rows = []
    for eps in args.eps:
        for fda, s in runs:
            folder = work / f"{arm(fda)}_s{s}"
            if not (folder / "bench_meta.json").is_file():
                raise SystemExit(f"{folder} has no trained run: train it first (--phase train)")
            meta = check_trained(folder, args, fda)
            source = transfer_source(work, args.seeds, s) if args.transfer else None
            if source is not None:  # before its examples are crafted (and cached under its name), not at its own turn
                if not (source / "bench_meta.json").is_file():
                    raise SystemExit(f"--transfer: {source} (the attacks' source for seed {s}) has no trained run")
                check_trained(source, args, fda=False)
            cache = folder / (f"eval_eps{eps:g}_n{args.n_test}_k{args.k}_pgd{args.pgd_steps}_t{args.text_changes}"
                              + (f"_from-{source.name}" if source is not None else "") + ".json")
            if cache.is_file():
                res = json.loads(cache.read_text())
            else:
                res = evaluate_one(folder, args, eps, source)
                cache.write_text(json.dumps(res, indent=2) + "\n")
            rows.append({**meta, "eps": eps, "attack_source": source.name if source is not None else "itself", **res})
            print(json.dumps({k: v for k, v in rows[-1].items() if not isinstance(v, dict)}), flush=True)
    write_results(rows, args)
    if args.export:
        dst = ROOT / "zoo" / "pretrained" / "vlm-fda-tiny"
        src = work / f"fda_s{args.seeds[0]}"
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            shutil.copy2(src / name, dst / name)
        print(f"shipped {src} -> {dst}", flush=True)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _pct(value: Optional[float]) -> str:
    return "undefined (no attack succeeded without FDA)" if value is None else f"{value:+.1f}%"


def summarize(rows: list[dict]) -> tuple[dict, dict, dict]:
    """Means over seeds per variant, and the relative ASR drop with FDA (re-ranked, ITM only)."""
    attacks = [k for k in rows[0]["asr"]]
    summary = {}
    for fda in (False, True):
        rs = [r for r in rows if r["fda"] == fda]
        summary[arm(fda)] = {
            "clean_r1_itm": _mean([r["clean"]["itm_r1"] for r in rs]),
            "clean_r1_itc": _mean([r["clean"]["itc_r1"] for r in rs]),
            "clean_r1_itm_only": _mean([r["clean"]["itm_only_r1"] for r in rs]),
            "asr": {a: _mean([r["asr"][a]["mean"] for r in rs]) for a in attacks},
            "asr_itm_only": {a: _mean([r["asr_itm_only"][a]["mean"] for r in rs]) for a in attacks},
            "asr_itc": {a: _mean([r["asr_itc"][a]["mean"] for r in rs]) for a in attacks},
        }

    def drop(key: str) -> dict[str, Optional[float]]:
        # relative to the no-FDA ASR: undefined (None) where no attack succeeded without FDA
        return {a: (summary["nofda"][key][a] - summary["fda"][key][a]) / summary["nofda"][key][a] * 100
                if summary["nofda"][key][a] > 0 else None for a in attacks}

    return summary, drop("asr"), drop("asr_itm_only")


def write_results(rows: list[dict], args: argparse.Namespace) -> None:
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    attacks = [k for k in rows[0]["asr"]]
    machine = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "note": "2-core machine shared with other jobs; wall times are indicative only"}
    per_eps = {}
    for eps in args.eps:
        summary, rel, rel_itm_only = summarize([r for r in rows if r["eps"] == eps])
        per_eps[f"{eps:g}"] = {"summary": summary, "asr_relative_drop_pct": rel,
                               "asr_itm_only_relative_drop_pct": rel_itm_only}
    out = {"settings": {k: v for k, v in vars(args).items() if k not in ("phase", "results", "work")}, "machine": machine,
           "runs": rows, "by_eps": per_eps,
           "target": "FDA lowers image-PGD ASR by >= 15% relative with clean R@1 within 1 point (paper)"}
    (results / "bench_fda.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "# FDA benchmark (synthetic scenes)",
        "",
        f"Machine: {machine['cpu']}, {machine['threads']} thread(s), torch {machine['torch']} ({machine['note']}).",
        f"Budget per run: {rows[0]['steps']} steps x batch {rows[0]['batch_size']}, lr {args.lr}; seeds {args.seeds}; "
        f"test gallery {args.n_test} images / captions; ITM re-rank of the ITC top {args.k}; "
        f"ITM loss weight {args.itm_weight:g}; FDA arm {json.dumps(args.fda_args) if args.fda_args else 'as registered (vlm-fda-tiny)'}"
        + (f"; fine-tuning: both arms start from the no-FDA runs in {args.init_from}." if args.init_from else "."),
        f"Attacks: image PGD L-inf eps {', '.join(f'{e:g}' for e in args.eps)} (/255), {args.pgd_steps} steps; text: greedy, "
        f"{args.text_changes} edit(s) (each one word changed or two neighbouring words swapped: character edits and word swaps; independent of eps); co-attack: text then PGD."
        + (" **Transfer attacks**: every example is crafted on another seed's no-FDA run (seed s's arms attacked "
           "from " + ", ".join(f"s{s} <- {transfer_source(Path(args.work), args.seeds, s).name}" for s in args.seeds)
           + "), not on the attacked model." if args.transfer else " White-box: each model is attacked through its own gradients and scores."),
        "R@1 = mean of image-to-text and text-to-image R@1 (%). ASR = share (%) of originally correct top-1 "
        "retrievals made wrong, mean of both directions (ITM re-ranked retrieval; ASR under ITC ranking, which "
        "FDA does not touch at inference, is in the JSON as asr_itc).",
        "",
        "Two rankings: **re-ranked** = ITC top k re-scored by ITC/temperature + ITM (the default, and the score "
        "the attacks lower); **ITM only** = ALBEF's re-ranking by the ITM logit alone (FDA acts only there).",
    ]
    for eps in args.eps:
        e = per_eps[f"{eps:g}"]
        summary, rel, rel_itm_only = e["summary"], e["asr_relative_drop_pct"], e["asr_itm_only_relative_drop_pct"]
        lines += [
            "",
            f"## PGD eps {eps:g}/255",
            "",
            "| model | seed | clean R@1 re-ranked | clean R@1 ITC | clean R@1 ITM only | "
            + " | ".join(f"ASR {a}" for a in attacks) + " | " + " | ".join(f"ASR {a} (ITM only)" for a in attacks) + " |",
            "|---|---|---|---|---|" + "---|" * (2 * len(attacks)),
        ]
        for r in (r for r in rows if r["eps"] == eps):
            lines.append(
                f"| {'FDA' if r['fda'] else 'no FDA'} | {r['seed']} | {r['clean']['itm_r1']:.1f} | {r['clean']['itc_r1']:.1f} | "
                f"{r['clean']['itm_only_r1']:.1f} | " + " | ".join(f"{r['asr'][a]['mean']:.1f}" for a in attacks) + " | "
                + " | ".join(f"{r['asr_itm_only'][a]['mean']:.1f}" for a in attacks) + " |"
            )
        for key, name in (("nofda", "no FDA (mean)"), ("fda", "FDA (mean)")):
            s = summary[key]
            lines.append(f"| **{name}** | | {s['clean_r1_itm']:.1f} | {s['clean_r1_itc']:.1f} | {s['clean_r1_itm_only']:.1f} | "
                         + " | ".join(f"{s['asr'][a]:.1f}" for a in attacks) + " | "
                         + " | ".join(f"{s['asr_itm_only'][a]:.1f}" for a in attacks) + " |")
        lines += [
            "",
            "Relative ASR change with FDA (positive = FDA lowers ASR), re-ranked: "
            + ", ".join(f"{a} {_pct(rel[a])}" for a in attacks) + "; ITM only: "
            + ", ".join(f"{a} {_pct(rel_itm_only[a])}" for a in attacks) + ".",
            f"Clean R@1 difference FDA - no FDA: re-ranked {summary['fda']['clean_r1_itm'] - summary['nofda']['clean_r1_itm']:+.1f}, "
            f"ITM only {summary['fda']['clean_r1_itm_only'] - summary['nofda']['clean_r1_itm_only']:+.1f} points.",
        ]
    lines += [
        "",
        "Paper target: >= 15% relative ASR drop on image PGD with clean R@1 within 1 point.",
        "",
        "Notes: the attacks lower the re-ranked score (ITC / temperature + ITM), so the ITM-only ASR measures "
        "transfer to ALBEF's ranking; each ASR is taken over the queries its own model got right, which differ "
        f"between variants and seeds as the clean R@1 does. {len(args.seeds)} seed(s) only: differences of a few "
        "points are within seed noise (compare the per-seed rows).",
        "",
    ]
    (results / "bench_fda.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
