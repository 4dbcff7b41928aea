"""Long-term forecasting benchmark: Diff vs vanilla iTransformer and PatchTST on ETTh1 / ETTh2.

Protocol (shared/data/ett/README.md, METHODS section 5): lookback 96, horizons 96/192/336/720,
features M, ETT hourly splits 12/4/4 months, scaler fitted on the training rows, MSE/MAE on the
scaled test windows averaged over all variates. Training: Adam (lr 1e-4), batch 32, MSE loss, at most
``--max-epochs`` epochs, learning rate halved every epoch (``lradj=type1``), early stopping on the
validation MSE with ``--patience``; the test is run with the best-validation weights.

Sizes follow iTransformer's scripts: ETTh1 d_model = d_ff = 256 for horizons 96/192 and 512 for
336/720 (``ts-itransformer-*-base`` / ``-large``), ETTh2 128 (``-small``), 2 layers, 8 vanilla heads;
each Diff twin has 4 differential heads of twice the width (equal parameters up to the lambda
vectors and subln weights). PatchTST uses ``ts-patchtst-*-small`` (patch 16, stride 8) everywhere.
Where the H=96 validation sweep (``--pilot``) found a better setting by the rule in the report,
``TABLE_OVERRIDES`` replaces the reference one for that dataset and model (since 2026-11-27: ETTh2
iTransformers with 1 layer at lr 2e-4; since 2026-11-28 the ETTh2 Diff-iTransformer's attention is GDA, 2 signal
heads per noise head, which has fewer parameters than its vanilla twin).

Every finished run is appended to ``runs.jsonl`` (so the script resumes, and disjoint ``--shard``
processes can share the machine); ``--report`` (also run at the end) aggregates them into
``bench_ts.json``, ``bench_ts.md`` and ``bench_ts.png``. ``--export`` trains the shipped ETTh1
models and writes them to ``zoo/pretrained/<name>/``.

    python scripts/bench_ts.py --horizons 96                 # the anchor column first
    python scripts/bench_ts.py --shard 0/2 & python scripts/bench_ts.py --shard 1/2 &
    python scripts/bench_ts.py --report
    python scripts/bench_ts.py --export
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from benchmachine import machine  # noqa: E402  (scripts/ is on sys.path when run as a script)
from zoo.data.ts import CSVTSDataModule  # noqa: E402
from zoo.tasks.ts import ForecastTask  # noqa: E402

DATA_DIR = ROOT.parent / "shared" / "data" / "ett"
OUT_DIR = ROOT / "scripts" / "results" / "ts"
HORIZONS = (96, 192, 336, 720)
DATASETS = ("ETTh1", "ETTh2")
MODELS = {
    # key: (label, family, attention)
    "itr-diff": ("Diff-iTransformer", "itransformer", "diff"),
    "itr-vanilla": ("iTransformer (vanilla)", "itransformer", "vanilla"),
    "patch-diff": ("Diff-PatchTST", "patchtst", "diff"),
    "patch-vanilla": ("PatchTST (vanilla)", "patchtst", "vanilla"),
}
# METHODS.md section 5: published MSE / MAE at lookback 96, horizon 96 (iTransformer paper's table).
PUBLISHED = {
    ("ETTh1", 96, "itransformer"): (0.386, 0.405),
    ("ETTh1", 96, "patchtst"): (0.414, 0.419),
    ("ETTh2", 96, "itransformer"): (0.297, 0.349),
    ("ETTh2", 96, "patchtst"): (0.302, 0.348),
}
# runs.jsonl holds the runs of the current protocol (PROTOCOL); earlier protocols' runs stay in their own
# files and show in the table, footnoted, until the current protocol covers their seeds.
#   v1 (runs_v1.jsonl): learning rate halved from epoch 2 on (one epoch earlier than the reference loop)
#   v2 (runs_v2.jsonl): type1 as the reference loop applies it (full rate for epochs 1-2, then halved per
#       epoch), but the last incomplete training batch kept (a batch of one window on ETT)
#   v3 (runs.jsonl): v2 plus the reference's drop_last=True training loader
SCHEDULE = "type1"
PROTOCOL = "v3"
EARLIER = {
    "v1": ("runs_v1.jsonl", "†", "learning rate halved one epoch earlier than the reference loop (which keeps the full "
           "rate for two epochs)"),
    "v2": ("runs_v2.jsonl", "‡", "reference schedule, but the last incomplete training batch (one window) kept, where "
           "the reference loader drops it"),
}
TARGET = {"ETTh1": 0.386, "ETTh2": 0.297}  # Diff-iTransformer at horizon 96 should reach these MSEs
REFERENCE_LR = 1e-4  # iTransformer's run.py default
MAX_EPOCHS, PATIENCE = 10, 3  # the table's protocol: iTransformer's train_epochs and patience
# Table settings that the H=96 validation sweep moved off the reference ones, by the rule the report states: a
# setting run on all six table seeds replaces the reference when it lowers the validation MSE, paired seed by
# seed, by more than twice the standard error of that difference, and the one with the lowest mean validation
# MSE among those wins. They apply at every horizon of their dataset (the sweep runs at H=96 only). Chosen
# 2026-11-27 (`pilots.jsonl`; the reference size, 2 layers at lr 1e-4, is a sweep row since). 2026-11-28: on ETTh2
# the Diff-iTransformer's attention became grouped differential attention (GDA, 2 signal heads per noise head; its
# six H=96 sweep runs are the table's H=96 rows; validation -0.0007 +- 0.0003 paired, 2.2 standard errors).
TABLE_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("ETTh2", "itr-diff"): {"lr": 2e-4, "model_args": {"n_layers": 1, "attn_type": "gda", "attn_args": {"signal_ratio": 2}}},
    ("ETTh2", "itr-vanilla"): {"lr": 2e-4, "model_args": {"n_layers": 1}},
}

TABLE_SETTING = "the table's setting"  # the sweep's name for the table's own H=96 runs
SHIPPED = {"ts-itransformer-diff-etth1": True, "ts-patchtst-diff-etth1": False}  # name -> time features


def table_setting(dataset: str, key: str) -> tuple[float, dict[str, Any]]:
    """(lr, architecture overrides) of the table's runs of ``key`` on ``dataset``."""
    override = TABLE_OVERRIDES.get((dataset, key), {})
    return override.get("lr", REFERENCE_LR), dict(override.get("model_args", {}))


def requested_setting(args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    """(lr, architecture overrides) given on the command line (--lr / --model-args; main() allows them only
    with --pilot): the reference lr and the registered architecture when absent."""
    return (args.lr if args.lr is not None else REFERENCE_LR), dict(args.model_args)


def run_key(r: dict[str, Any]) -> tuple:
    """What a run trained: grid point, seed, learning rate, architecture overrides and calendar tokens."""
    return (r["dataset"], r["horizon"], r["arch"], r["seed"], r["lr"], json.dumps(r.get("model_args") or {}, sort_keys=True),
            bool(r["time_features"]))


def table_time_features(family: str) -> bool:
    """Calendar tokens in the table's runs: iTransformer reads them (as its reference code), PatchTST does not."""
    return family == "itransformer"


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` -> ``(i, n)`` with ``0 <= i < n``."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be i/n (e.g. 0/2), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: the shard index must be in [0, {count}) (0/2 and 1/2 split the grid in two)")
    return index, count


def arch_for(family: str, attn: str, dataset: str, horizon: int) -> str:
    if family == "patchtst":
        return f"ts-patchtst-{attn}-small"
    if dataset == "ETTh1":
        return f"ts-itransformer-{attn}-{'base' if horizon <= 192 else 'large'}"
    return f"ts-itransformer-{attn}-small"


def train_one(
    dataset: str, horizon: int, arch: str, seed: int, time_features: bool, args: argparse.Namespace,
    lr: float = REFERENCE_LR, model_args: Optional[dict[str, Any]] = None,
) -> tuple[dict[str, Any], ForecastTask]:
    """Train with early stopping, test with the best-validation weights (the task restores them); at the
    reference lr and the registered architecture unless ``lr`` / ``model_args`` say otherwise."""
    model_args = dict(model_args or {})
    L.seed_everything(seed, workers=True, verbose=False)
    dm = CSVTSDataModule(
        str(args.data_dir / f"{dataset}.csv"), lookback=96, horizon=horizon, features="M",
        time_features=time_features, batch_size=32, eval_batch_size=256,
    )
    task = ForecastTask(
        arch=arch, data_info=dm.data_info, model_args=model_args, lr=lr, scheduler="halving",
        weight_decay=0.0,
    )
    with tempfile.TemporaryDirectory(prefix="bench_ts_") as scratch:  # the task writes test_metrics.json there
        trainer = L.Trainer(
            accelerator="cpu", max_epochs=args.max_epochs, logger=False, enable_checkpointing=False,
            default_root_dir=scratch,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            callbacks=[L.pytorch.callbacks.EarlyStopping("val/loss", patience=args.patience, mode="min")],
        )
        t0 = time.time()
        trainer.fit(task, datamodule=dm)
        fit_s = time.time() - t0
        trainer.test(task, datamodule=dm, verbose=False)
    test = task.results["test"]
    record = {
        "dataset": dataset, "horizon": horizon, "lookback": 96, "arch": arch, "seed": seed,
        "attn_type": task.model.config.attn_type, "params": task.model.num_params(),
        "config": dataclasses.asdict(task.model.config),
        "time_features": time_features, "lr": lr, "lr_schedule": SCHEDULE, "protocol": PROTOCOL, "model_args": model_args,
        "max_epochs": args.max_epochs, "patience": args.patience, "epochs_run": trainer.current_epoch,
        "best_epoch": task.best_val[1] + 1, "best_val_mse": task.best_val[0],
        "mse": test["mse"], "mae": test["mae"], "mse_orig": test["mse_orig"], "mae_orig": test["mae_orig"],
        "mse_per_step": [round(v, 5) for v in test["mse_per_step"]],
        "train_s": round(fit_s, 1), "total_s": round(time.time() - t0, 1),
    }
    return record, task


def run_grid(args: argparse.Namespace) -> None:
    # pilots (--pilot NOTE) try a setting off the table's: they go to pilots.jsonl and never resume
    runs_path = args.out / ("pilots.jsonl" if args.pilot else "runs.jsonl")
    done = set()
    if runs_path.exists() and not args.pilot:
        done = {run_key(r) for r in read_runs(runs_path)}
    grid = list(dict.fromkeys(  # a grid point given twice (--seeds 0 0) trains once
        (d, h, k, s) for h in args.horizons for d in args.datasets for k in args.models for s in args.seeds
    ))
    index, count = parse_shard(args.shard)
    grid = [g for i, g in enumerate(grid) if i % count == index]
    for dataset, horizon, key, seed in grid:
        label, family, attn = MODELS[key]
        arch = arch_for(family, attn, dataset, horizon)
        lr, model_args = requested_setting(args) if args.pilot else table_setting(dataset, key)
        tf = table_time_features(family) and args.time_features == "itransformer"
        point = {"dataset": dataset, "horizon": horizon, "arch": arch, "seed": seed, "lr": lr, "model_args": model_args,
                 "time_features": tf}
        if run_key(point) in done:
            continue
        rec, _ = train_one(dataset, horizon, arch, seed, tf, args, lr=lr, model_args=model_args)
        rec.update(model=label, model_key=key, machine=machine())
        if args.pilot:
            rec["pilot_note"] = args.pilot
        with open(runs_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        done.add(run_key(rec))
        print(
            f"{dataset} H={horizon} {label:24s} seed {seed}: mse {rec['mse']:.4f} mae {rec['mae']:.4f} "
            f"({rec['epochs_run']} epochs, best {rec['best_epoch']}, {rec['total_s']:.0f}s)", flush=True,
        )


def export_shipped(args: argparse.Namespace) -> None:
    """Train the shipped ETTh1 models (L=96, H=96, seed 0) and export them into zoo/pretrained."""
    records = []
    for name, tf in SHIPPED.items():
        lr, model_args = requested_setting(args)
        rec, task = train_one("ETTh1", 96, name, 0, tf, args, lr=lr, model_args=model_args)
        folder = ROOT / "zoo" / "pretrained" / name
        task.model.meta["source"] = "ETTh1.csv"  # not this machine's absolute path
        task.export(folder, overwrite=True)
        sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
        rec.update(model=name, export=str(folder.relative_to(ROOT)), file_bytes=sizes)
        records.append(rec)
        print(f"exported {name}: test mse {rec['mse']:.4f} mae {rec['mae']:.4f}, files {sizes}", flush=True)
    (args.out / "exports.json").write_text(json.dumps({"machine": machine(), "exports": records}, indent=2) + "\n")


def _mean_sd(values: list[float]) -> tuple[float, Optional[float]]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def runs_by_seed(runs: list[dict]) -> dict[int, list[dict]]:
    """``runs`` grouped by seed: a seed a pilot ran twice (pilots never resume) is one seed, the mean of its runs."""
    by_seed: dict[int, list[dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], []).append(r)
    return by_seed


def paired_delta(runs: list[dict], table: dict[int, dict]) -> dict[str, Any]:
    """Setting minus the table's setting on the seeds both ran: mean validation / test MSE difference, and the
    standard error of the validation difference (None below two shared seeds)."""
    by_seed = runs_by_seed([r for r in runs if r["seed"] in table])
    if not by_seed:
        return {"paired_seeds": 0}
    d_val = [statistics.fmean(r["best_val_mse"] for r in rs) - table[s]["best_val_mse"] for s, rs in by_seed.items()]
    return {
        "paired_seeds": len(by_seed), "d_val_mse": statistics.fmean(d_val),
        "d_val_se": statistics.stdev(d_val) / len(d_val) ** 0.5 if len(d_val) > 1 else None,
        "d_mse": statistics.fmean(statistics.fmean(r["mse"] for r in rs) - table[s]["mse"] for s, rs in by_seed.items()),
    }


def read_runs(path: Path) -> list[dict]:
    """The run records of a ``.jsonl`` file (none when it is absent); a line that is not JSON (a run killed
    while its line was written) is an error naming the file and line."""
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SystemExit(
                f"{path}, line {i}: not a JSON run record ({exc.msg}: {line[:60]!r}); a run stopped while writing it "
                "leaves such a line: delete it and run again (that run is then redone)"
            ) from exc
    return out


def report(args: argparse.Namespace) -> None:
    read = read_runs

    runs_path = args.out / "runs.jsonl"
    by_protocol = {PROTOCOL: read(runs_path)}
    for version, (name, _, _) in EARLIER.items():
        by_protocol[version] = read(args.out / name)
    if not any(by_protocol.values()):
        raise SystemExit(f"no runs in {runs_path}; run the benchmark first")

    def key(r: dict) -> tuple:
        return (r["dataset"], r["horizon"], r["model_key"])

    for r in by_protocol[PROTOCOL]:
        lr, model_args = table_setting(r["dataset"], r["model_key"])
        protocol = (r.get("max_epochs", MAX_EPOCHS), r.get("patience", PATIENCE), bool(r["time_features"]))
        if protocol != (MAX_EPOCHS, PATIENCE, table_time_features(MODELS[r["model_key"]][1])):
            raise SystemExit(
                f"{runs_path} holds a {r['dataset']} H={r['horizon']} {r['model_key']} run (seed {r['seed']}) trained with "
                f"max_epochs {protocol[0]}, patience {protocol[1]}, calendar tokens {protocol[2]}: not the table's "
                "protocol; move it to pilots.jsonl (with a pilot_note) or rerun it"
            )
        if (r["lr"], r.get("model_args") or {}) != (lr, model_args):
            raise SystemExit(
                f"{runs_path} holds a {r['dataset']} H={r['horizon']} {r['model_key']} run (seed {r['seed']}) at lr "
                f"{r['lr']:g} with {r.get('model_args') or {}}, but the table's setting there is lr {lr:g} with "
                f"{model_args} (TABLE_OVERRIDES); move that run to pilots.jsonl (with a pilot_note) or rerun it"
            )
    found: dict[tuple, dict[str, list[dict]]] = {}
    for version, rs in by_protocol.items():
        for r in rs:
            found.setdefault(key(r), {}).setdefault(version, []).append({**r, "protocol": version})
    # a grid point shows the newest protocol's runs once they cover every seed an earlier protocol ran;
    # until then it keeps the newest runs that do, footnoted in the table
    groups = {}
    for k, versions in found.items():
        order = sorted(versions, reverse=True)  # "v3" > "v2" > "v1"
        for i, version in enumerate(order):
            seeds = {r["seed"] for r in versions[version]}
            if all(seeds >= {r["seed"] for r in versions[v]} for v in order[i + 1 :]):
                groups[k] = versions[version]
                break
    runs = [r for rs in groups.values() for r in rs]
    summary = []
    for (dataset, horizon, key), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], list(MODELS).index(kv[0][2]))):
        label, family, _ = MODELS[key]
        mse, mse_sd = _mean_sd([r["mse"] for r in rs])
        mae, mae_sd = _mean_sd([r["mae"] for r in rs])
        pub = PUBLISHED.get((dataset, horizon, family))
        summary.append({
            "dataset": dataset, "horizon": horizon, "model": label, "model_key": key, "arch": rs[0]["arch"],
            "params": rs[0]["params"], "seeds": sorted(r["seed"] for r in rs),
            "mse_mean": mse, "mse_sd": mse_sd, "mae_mean": mae, "mae_sd": mae_sd,
            "mse_min": min(r["mse"] for r in rs), "mse_max": max(r["mse"] for r in rs),
            "mse_orig_mean": statistics.fmean(r["mse_orig"] for r in rs),
            "mae_orig_mean": statistics.fmean(r["mae_orig"] for r in rs),
            "epochs_run": [r["epochs_run"] for r in rs],
            "published_mse": pub[0] if pub else None, "published_mae": pub[1] if pub else None,
            "protocol": rs[0]["protocol"],
            "mean_run_s": statistics.fmean(r["total_s"] for r in rs),
        })
    targets = {}
    for dataset, goal in TARGET.items():
        row = next((s for s in summary if s["dataset"] == dataset and s["horizon"] == 96 and s["model_key"] == "itr-diff"), None)
        if row is not None:
            targets[dataset] = {
                "target_mse": goal, "mean_mse": row["mse_mean"], "met_by_mean": row["mse_mean"] <= goal,
                "met_by_best_seed": row["mse_min"] <= goal,
            }
    pilots_path = args.out / "pilots.jsonl"
    pilot_records = read_runs(pilots_path)
    pilots = [
        {k: r.get(k) for k in ("dataset", "horizon", "model", "arch", "seed", "lr", "model_args", "time_features",
                               "pilot_note", "protocol", "best_val_mse", "mse", "mae", "epochs_run", "best_epoch", "total_s")}
        for r in pilot_records
    ]
    # the validation sweep: current-protocol pilots next to the table's H=96 setting, by mean validation MSE
    # a pilot setting is what was trained (architecture, lr, overrides, calendar tokens, epoch budget), not its free-text
    # note: runs of one setting group together whatever their notes say, and the group shows every note
    sweep_groups: dict[tuple, list[dict]] = {}
    for r in pilot_records:
        if r.get("protocol") == PROTOCOL and r["horizon"] == 96:
            # --pilot allows --max-epochs / --patience; a record without them predates the fields (the table's)
            budget = (r.get("max_epochs") or MAX_EPOCHS, r.get("patience") or PATIENCE)
            setting = (r["arch"], r["lr"], json.dumps(r.get("model_args") or {}, sort_keys=True), r["time_features"], budget)
            sweep_groups.setdefault((r["dataset"], r["model"], setting), []).append(r)
    piloted = {(d, m) for d, m, _ in sweep_groups}  # a PatchTST pilot is paired with PatchTST's table runs too
    for r in runs:
        if r["protocol"] == PROTOCOL and r["horizon"] == 96 and (
                r["model_key"].startswith("itr") or (r["dataset"], r["model"]) in piloted):
            sweep_groups.setdefault((r["dataset"], r["model"], TABLE_SETTING), []).append(r)
    table_by_seed = {
        (d, m): {r["seed"]: r for r in rs} for (d, m, setting), rs in sweep_groups.items() if setting == TABLE_SETTING
    }

    def off_budget(max_epochs: int, patience: int) -> dict[str, int]:
        """A pilot's epoch budget where it is not the table's (the sweep's rows name it)."""
        return {k: v for k, v, table_v in (("max_epochs", max_epochs, MAX_EPOCHS), ("patience", patience, PATIENCE))
                if v != table_v}

    def setting_name(setting: Any, rs: list[dict]) -> str:
        if setting == TABLE_SETTING:
            return TABLE_SETTING
        return " / ".join(dict.fromkeys(r["pilot_note"].removeprefix(f"{PROTOCOL} sweep: ") for r in rs))

    def seed_mean(rs: list[dict], field: str) -> float:
        """Mean of ``field`` over the seeds (runs_by_seed), as in paired_delta."""
        return statistics.fmean(statistics.fmean(r[field] for r in v) for v in runs_by_seed(rs).values())

    sweep = sorted(
        ({"dataset": d, "model": m, "setting": setting_name(setting, rs), "lr": rs[0]["lr"],
          "model_args": rs[0].get("model_args") or {}, "seeds": sorted({r["seed"] for r in rs}),
          **({} if setting == TABLE_SETTING else off_budget(*setting[-1])),
          "val_mse": seed_mean(rs, "best_val_mse"), "mse": seed_mean(rs, "mse"),
          **({} if setting == TABLE_SETTING else paired_delta(rs, table_by_seed.get((d, m), {})))}
         for (d, m, setting), rs in sweep_groups.items()),
        key=lambda w: (w["dataset"], w["model"], w["val_mse"]),
    ) if any(r.get("protocol") == PROTOCOL for r in pilots) else []
    result = {
        "sweep": sweep,
        "benchmark": "long-term forecasting, lookback 96, features M, ETT hourly protocol 12/4/4 months",
        "machines": sorted({json.dumps(r["machine"], sort_keys=True) for r in runs}),
        "report_machine": machine(),
        "settings": {
            "optimizer": "Adam (AdamW, weight_decay 0), betas (0.9, 0.999)", "batch_size": 32,
            "lr": sorted({r["lr"] for r in runs}),
            "lr_schedule": "type1 as the reference loop applies it: full rate for epochs 1-2, then halved per epoch",
            "train_loader": "shuffled, last incomplete batch dropped (as the reference)",
            "protocol": PROTOCOL,
            "earlier_protocols": {v: note for v, (_, _, note) in EARLIER.items()},
            "max_epochs": MAX_EPOCHS, "early_stopping": f"val MSE, patience {PATIENCE}",
            "test": "best-validation weights, every test window (no drop_last)",
            "itransformer_sizes": "ETTh1: base (256) for H<=192, large (512) for H>=336; ETTh2: small (128)",
            "table_overrides": [{"dataset": d, "model_key": k, **v} for (d, k), v in TABLE_OVERRIDES.items()],
            "patchtst_size": "small (dim 64, 2 layers, patch 16, stride 8)",
            "time_features": "iTransformer: calendar tokens (timeF); PatchTST: none",
        },
        "published_source": "METHODS.md section 5 (iTransformer paper table, horizon 96 only)",
        "target": targets,
        "total_compute_s": round(sum(r["total_s"] for r in runs), 1),
        "n_runs": len(runs),
        "summary": summary,
        "runs": runs,
        "pilot_runs_note": (
            "single-seed ETTh1 H=96 runs made before the grid to pick the shared training setting by validation "
            "MSE (lr, attention dropout, size, calendar tokens); not part of the table"
        ),
        "pilot_runs": pilots,
    }
    (args.out / "bench_ts.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_ts.md").write_text(markdown(result))
    plot(summary, args.out / "bench_ts.png")
    print((args.out / "bench_ts.md").read_text())


def _vs_target(mean: float, goal: float) -> str:
    """``mean`` to 3 decimals, or as many more as it takes for the printed value to sit on the same side of
    ``goal`` as the mean itself (0.3864 against 0.386 prints 0.3864, not a 0.386 that would meet it)."""
    for digits in range(3, 10):
        text = f"{mean:.{digits}f}"
        if (float(text) <= goal) == (mean <= goal):
            return text
    return repr(mean)


def _fmt(mean: float, sd: Optional[float]) -> str:
    return f"{mean:.3f} ± {sd:.4f}" if sd is not None else f"{mean:.3f}"


def markdown(result: dict[str, Any]) -> str:
    m = json.loads(result["machines"][0])
    lines = [
        "| dataset | H | model | params | MSE (mean ± sd) | MAE (mean ± sd) | seeds | published MSE / MAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in result["summary"]:
        pub = f"{s['published_mse']:.3f} / {s['published_mae']:.3f}" if s["published_mse"] is not None else "—"
        mark = f" {EARLIER[s['protocol']][1]}" if s["protocol"] in EARLIER else ""
        lines.append(
            f"| {s['dataset']} | {s['horizon']} | {s['model']}{mark} | {s['params'] / 1e3:.0f}k | "
            f"{_fmt(s['mse_mean'], s['mse_sd'])} | {_fmt(s['mae_mean'], s['mae_sd'])} | {len(s['seeds'])} | {pub} |"
        )
    lines.append("")
    for dataset, t in result["target"].items():
        lines.append(
            f"- Target {dataset} Diff-iTransformer H=96 MSE <= {t['target_mse']}: mean {_vs_target(t['mean_mse'], t['target_mse'])} -> "
            f"{'met' if t['met_by_mean'] else 'not met'} (best seed {'meets' if t['met_by_best_seed'] else 'misses'} it)"
        )
    lines.append(
        f"- Machines: {'; '.join(sorted({json.loads(x).get('cpu_model', 'unrecorded CPU') for x in result['machines']}))} ({m['processor']}), "
        f"{m['cpu_count']} CPU cores, torch {m['torch']} ({m['torch_threads']} thread(s) "
        f"per run), {result['n_runs']} runs, {result['total_compute_s'] / 3600:.2f} h of run time in total (wall "
        "times; two runs in parallel, sharing the cores with other jobs)."
    )
    lines.append("- Published numbers: METHODS.md section 5 (horizon 96 only); '—' = none given there.")
    for o in result["settings"].get("table_overrides", []):
        arch = ", ".join(f"{k} {v}" for k, v in (o.get("model_args") or {}).items()) or "the registered architecture"
        lines.append(
            f"- {o['dataset']} {MODELS[o['model_key']][0]}: lr {o.get('lr', REFERENCE_LR):g}, {arch}, at every "
            "horizon: off the reference setting by the validation sweep below (run at H=96)."
        )
    for version, (name, mark, note) in EARLIER.items():
        if any(s["protocol"] == version for s in result["summary"]):
            lines.append(f"- {mark} Earlier runs (`{name}`): {note}; not yet rerun with the current protocol.")
    first = [p for p in result["pilot_runs"] if p.get("protocol") is None]
    if first:
        lines.append(
            f"- The shared setting (lr 1e-4 with the type1 halving, attention dropout 0.1, calendar tokens for iTransformer) "
            f"was picked by validation MSE in {len(first)} single-seed ETTh1 H=96 pilot runs "
            "(listed in bench_ts.json, `pilot_runs`; run with the v1 schedule)."
        )
    if result["sweep"]:
        lines += [
            "",
            "Validation sweep at H=96 (current protocol; settings off the table's; test MSE shown for the record, "
            "not used to choose). The Δ columns pair each setting with the table's run of the same seed (setting minus "
            "table; ± the standard error of the mean difference). The table keeps the reference settings unless a "
            "setting run on all six seeds lowers the validation MSE, paired seed by seed, by more than twice that "
            "standard error; of several such settings the one with the lowest mean validation MSE replaces them "
            "(rows compared against the reference before the switch keep their run records, and are paired here "
            "with the table's current setting):",
            "",
            "| dataset | model | setting | trained with | seeds | val MSE (mean) | test MSE (mean) | Δ val MSE (paired) | Δ test MSE (paired) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for w in result["sweep"]:
            if w.get("paired_seeds"):
                se = f" ± {w['d_val_se']:.4f}" if w["d_val_se"] is not None else ""
                deltas = f"{w['d_val_mse']:+.4f}{se} ({w['paired_seeds']} seeds) | {w['d_mse']:+.4f}"
            else:
                deltas = "— | —"
            trained = "; ".join([f"lr {w['lr']:g}", *(f"{k} {v}" for k, v in sorted(w["model_args"].items())),
                                 *(f"{k} {w[k]}" for k in ("max_epochs", "patience") if k in w)])
            lines.append(
                f"| {w['dataset']} | {w['model']} | {w['setting']} | {trained} | {len(w['seeds'])} | {w['val_mse']:.4f} | "
                f"{w['mse']:.4f} | {deltas} |"
            )
    return "\n".join(lines) + "\n"


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({s["dataset"] for s in summary})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for key, (label, _, attn) in MODELS.items():
            rows = sorted((s for s in summary if s["dataset"] == dataset and s["model_key"] == key), key=lambda s: s["horizon"])
            if rows:
                ax.errorbar(
                    [s["horizon"] for s in rows], [s["mse_mean"] for s in rows],
                    yerr=[s["mse_sd"] or 0.0 for s in rows], marker="o", capsize=3, label=label,
                    linestyle="-" if attn == "diff" else "--",
                )
        for (d, h, fam), (mse, _) in PUBLISHED.items():
            if d == dataset:
                ax.scatter([h], [mse], marker="x", color="k", zorder=5)
        ax.set_title(f"{dataset} (lookback 96; x = published)")
        ax.set_xlabel("horizon")
        ax.set_ylabel("test MSE (scaled)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--horizons", nargs="+", type=int, default=list(HORIZONS))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--max-epochs", type=int, default=MAX_EPOCHS, help="(another value needs --pilot)")
    p.add_argument("--patience", type=int, default=PATIENCE, help="(another value needs --pilot)")
    p.add_argument("--lr", type=float, default=None,
                   help="with --pilot: peak learning rate (default 1e-4, iTransformer's run.py default); the table's "
                        "runs take theirs from TABLE_OVERRIDES")
    p.add_argument("--model-args", type=json.loads, default={},
                   help="with --pilot: JSON architecture overrides for every model (the table's: TABLE_OVERRIDES)")
    p.add_argument("--time-features", choices=["itransformer", "none"], default="itransformer",
                   help="calendar tokens for iTransformer (as its reference code) or for no model")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th grid point starting at i")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--pilot", metavar="NOTE", help="write the runs to pilots.jsonl with this note (a setting "
                   "tried off the table's, picked or rejected by validation MSE); the table is not touched")
    p.add_argument("--report", action="store_true", help="only aggregate runs.jsonl into the JSON/markdown/PNG")
    p.add_argument("--export", action="store_true", help="train and export the shipped ETTh1 models")
    args = p.parse_args(argv)
    if not args.pilot and (args.lr is not None or args.model_args) and not args.report:
        p.error("--lr / --model-args try a setting off the table's: pass --pilot NOTE (the table's runs use "
                "TABLE_OVERRIDES, else the reference lr 1e-4 and the registered architecture)")
    off_protocol = (args.max_epochs, args.patience, args.time_features) != (MAX_EPOCHS, PATIENCE, "itransformer")
    if not args.pilot and off_protocol and not args.report and not args.export:
        p.error(f"--max-epochs / --patience / --time-features none leave the table's protocol ({MAX_EPOCHS} epochs, "
                f"patience {PATIENCE}, calendar tokens for iTransformer): pass --pilot NOTE")
    try:
        parse_shard(args.shard)
    except ValueError as exc:
        p.error(str(exc))
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report and not args.data_dir.is_dir():
        raise SystemExit(f"data folder {args.data_dir} not found; pass --data-dir with ETTh1.csv and ETTh2.csv")
    if args.export:
        export_shipped(args)
        return
    if not args.report:
        run_grid(args)
    if not args.pilot:
        report(args)


if __name__ == "__main__":
    main()
