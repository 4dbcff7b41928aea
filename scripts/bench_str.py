"""Scene-text recognition benchmark and the training of the shipped ``str-diff-tiny``.

    python scripts/bench_str.py --export            # train str-diff-tiny, export to zoo/pretrained/str-diff-tiny
    python scripts/bench_str.py --export --steps 40000 --resume-dir scripts/results/str/long --budget-min 60
                                                    # a long run over several sessions: each call trains 60 min,
                                                    # checkpoints, and the last one tests and exports
    python scripts/bench_str.py --steps 600         # diff vs vanilla decoder (equal params, equal budget),
                                                    # then CSD student vs its teacher
Everything runs on the synthetic data (zoo.data.str_synth): training fonts for train/val, held-out
fonts for test. Each run writes JSON + a markdown table into scripts/results/str/ with the machine,
thread count, seeds and wall time. Single-threaded by default (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from benchmachine import machine  # noqa: E402  (scripts/ is on sys.path when run as a script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "scripts" / "results" / "str"
SHIPPED = ROOT / "zoo" / "pretrained" / "str-diff-tiny"

# Data of every run: 36-char charset, words of 1-6 characters, distortion strength 0.4 (chosen so a
# one-core budget can reach the target; a first try at 1-8 characters / strength 0.6 / lr 2e-3 / batch 64
# plateaued at ~1% word accuracy after 1200 steps; 1-6 characters / strength 0.4 / lr 7e-4 / batch 32 also
# sat at the prior's loss for 600 steps until the encoder position embedding got its sin-cos start).
DATA = dict(charset="36", max_length=6, synth_min_len=1, synth_max_len=6, synth_strength=0.4)
# RecognitionTask's training recipe (--recipe): every row up to 2026-11-27 trained with "v1" (one permutation
# of all slots, every matrix weight-decayed), so v1 stays the benchmark's default and rows of another recipe
# record it, get a _recipe-<name> suffix and are merged only with their own kind.
TRAIN = {"recipe": "v1"}


RESUME_CKPT, RESUME_STATE = "last.ckpt", "progress.json"
SAVE_EVERY = 1000  # steps between checkpoints of a resumable run
N_TEST = 1000  # held-out-font test crops of every benchmark table


def run(*args: Any, out_dir: Optional[Path] = None, **kwargs: Any) -> tuple[Optional[dict[str, Any]], Any]:
    """``train_run`` in ``out_dir``, or in a scratch folder removed afterwards (the test writes its metrics there)."""
    if out_dir is not None:
        return train_run(*args, out_dir=out_dir, **kwargs)
    with tempfile.TemporaryDirectory(prefix="bench_str_") as scratch:
        return train_run(*args, out_dir=Path(scratch), **kwargs)


def train_run(
    arch: str, steps: int, seed: int = 0, batch_size: int = 32, n_test: int = 1000, lr: float = 7e-4,
    teacher: Optional[str] = None, out_dir: Optional[Path] = None, val_every: int = 0, data_seed: int = 0,
    resume_dir: Optional[Path] = None, budget_s: Optional[float] = None, stop_at: Optional[int] = None,
    init_from: Optional[str] = None, accelerator: str = "cpu", num_workers: int = 0,
    model_args: Optional[dict[str, Any]] = None, synth_cache: Optional[str] = None,
) -> tuple[Optional[dict[str, Any]], Any]:
    """Train ``arch`` for ``steps`` on fresh synthetic words; return held-out-font test metrics and the task.

    With ``resume_dir`` the run can span several processes: it stops at a step boundary once ``budget_s``
    seconds of training have passed (or at step ``stop_at``), saves a Lightning checkpoint (weights,
    optimizer, schedule position) there and returns ``(None, task)``; the same call later resumes it on the
    synthetic words after the ones already seen, under the same schedule over ``steps``.
    ``init_from`` (an exported folder or shipped name) starts from those weights instead of a fresh
    model: a fine-tuning stage with its own warmup and schedule. ``accelerator`` is Lightning's ("gpu" on a
    CUDA machine, where ``num_workers`` loader processes render the synthetic crops); neither changes the
    data or the schedule, so runs on different machines compare step for step. ``model_args`` overrides
    the registered architecture (e.g. ``{"dec_heads": 1}``) and is recorded in the result. ``synth_cache``
    reads the synthetic crops from a folder they are rendered into once (the same pixels, so not a setting
    of the run; see ``prepare_cache``).
    """
    import lightning as L

    from zoo.data.str import STRDataModule
    from zoo.tasks.str import RecognitionTask

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if accelerator != "cpu":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on a GPU
    settings = {"arch": arch, "steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "teacher": teacher,
                "val_every": val_every, "data_seed": data_seed, "data": dict(DATA),
                **({"init_from": str(init_from)} if init_from else {}), **({"model_args": model_args} if model_args else {}),
                **recipe_record()}
    ckpt, state = None, {"settings": settings, "done": 0, "train_s": 0.0, "val": []}
    if resume_dir is not None:
        resume_dir = Path(resume_dir)
        if (resume_dir / RESUME_STATE).is_file():
            state = json.loads((resume_dir / RESUME_STATE).read_text())
            if state["settings"] != settings:
                differ = sorted(k for k in settings if state["settings"].get(k) != settings[k])
                raise SystemExit(f"{resume_dir} holds a run with other settings ({differ}); pass another --resume-dir")
            if state["done"] >= steps:
                raise SystemExit(f"the run in {resume_dir} is complete ({steps} steps, tested and exported); "
                                 "remove the folder to train again")
            ckpt = resume_dir / RESUME_CKPT
            if state["done"] == 0:  # stopped before its first checkpoint: nothing to resume, start afresh
                ckpt, state = None, {"settings": settings, "done": 0, "train_s": 0.0, "val": [], "parts": 0}
            elif not ckpt.is_file():
                raise SystemExit(f"{resume_dir / RESUME_STATE} records step {state['done']} but {ckpt} is missing "
                                 "(checkpoints are git-ignored: a fresh clone has none); pass another --resume-dir")
            else:
                print(f"resuming {resume_dir} at step {state['done']} of {steps}", flush=True)
                # validations after the checkpoint belong to the lost stretch that this part trains again
                state["val"] = [v for v in state["val"] if v["step"] <= state["done"]]
        state["parts"] = state.get("parts", 0) + 1
    done = state["done"]
    L.seed_everything(seed + done, workers=True)
    dm = STRDataModule(
        **DATA, synthetic={"train": (steps - done) * batch_size, "val": 256 if val_every else 0, "test": n_test},
        synth_seed=data_seed, synth_train_start=done * batch_size, batch_size=batch_size, eval_batch_size=128,
        num_workers=num_workers, synth_cache=synth_cache,
    )

    def write_state(train_s: float) -> None:
        resume_dir.mkdir(parents=True, exist_ok=True)
        (resume_dir / RESUME_STATE).write_text(json.dumps({**state, "train_s": round(train_s, 1)}, indent=2) + "\n")

    def save_state(trainer: Any, train_s: float) -> None:
        """Checkpoint (when the run is not over) and progress file of a resumable run. A finished run drops
        its last periodic checkpoint: it cannot be continued, and its weights are the test's / the export's."""
        state["done"] = trainer.global_step
        resume_dir.mkdir(parents=True, exist_ok=True)
        if trainer.global_step < steps:
            trainer.save_checkpoint(resume_dir / RESUME_CKPT)
        write_state(train_s)
        if trainer.global_step >= steps:
            (resume_dir / RESUME_CKPT).unlink(missing_ok=True)

    class Progress(L.Callback):
        """Prints loss / validation accuracy (the bar is off in logs), records validation, stops on budget,
        checkpoints a resumable run every SAVE_EVERY steps (a killed part loses at most that)."""

        def on_train_batch_end(self, trainer, *_: Any) -> None:
            if trainer.global_step % 100 == 0:
                m = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
                print(f"step {trainer.global_step} {time.time() - t0:.0f}s {m}", flush=True)
            if resume_dir is not None and trainer.global_step % SAVE_EVERY == 0 and trainer.global_step < steps:
                save_state(trainer, state["train_s"] + time.time() - t0)
            over = (budget_s is not None and time.time() - t0 > budget_s) or (stop_at is not None and trainer.global_step >= stop_at)
            if resume_dir is not None and over and trainer.global_step < steps:
                trainer.should_stop = True

        def on_validation_end(self, trainer, *_: Any) -> None:
            if not trainer.sanity_checking:
                m = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
                state["val"].append({"step": trainer.global_step, **m})
                if resume_dir is not None:  # kept even if the part is killed before its next checkpoint
                    write_state(state["train_s"] + time.time() - t0)

    task = RecognitionTask(arch=arch, data_info=dm.data_info, lr=lr, warmup_steps=min(100, steps // 10), teacher=teacher,
                           model_args={"dropout": 0.0, **(model_args or {})}, pretrained=init_from, recipe=TRAIN["recipe"])
    trainer = L.Trainer(
        # max_epochs=-1: the schedule's length is max_steps also when a resumed run's loader holds only the rest
        accelerator=accelerator, devices=1, max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=50,
        val_check_interval=val_every or None, check_val_every_n_epoch=None if val_every else 1,
        limit_val_batches=1.0 if val_every else 0, num_sanity_val_steps=0,
        default_root_dir=str(out_dir), callbacks=[Progress()],
    )
    t0 = time.time()
    with warnings.catch_warnings():
        # the resumed loader deliberately holds only the words not seen yet (synth_train_start), so
        # Lightning's warning about restarting a non-resumable loader mid-epoch does not apply
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(task, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    state["train_s"] = round(state["train_s"] + time.time() - t0, 1)
    if resume_dir is not None:
        save_state(trainer, state["train_s"])
        if trainer.global_step < steps:
            print(f"stopped at step {trainer.global_step} of {steps} ({state['train_s']:.0f} s of training so far); "
                  f"run the same command again to continue from {resume_dir}", flush=True)
            return None, task
    t0 = time.time()
    trainer.test(task, datamodule=dm, verbose=False)
    res = task.results["test"]["combined"]
    by_font = accuracy_by_font(task.readings["test"], data_seed)
    return {
        "arch": arch, "arch_config": {k: v for k, v in dataclasses.asdict(task.model.config).items() if k != "charset"},
        "params": task.model.num_params(), "steps": steps, "batch_size": batch_size, "seed": seed,
        "data_seed": data_seed, "lr": lr, "teacher": teacher, "device": machine().get("device", "cpu") if accelerator != "cpu" else "cpu", "train_s": state["train_s"], "test_s": round(time.time() - t0, 1),
        "test_accuracy": res["accuracy"], "test_one_minus_ned": res["one_minus_ned"], "test_count": res["count"],
        "test_by_font": by_font, **({"init_from": str(init_from)} if init_from else {}),
        **({"model_args": model_args} if model_args else {}), **recipe_record(),
        # the attention backend chosen by environment (the same maps either way; recorded for the timings)
        **({"attn_backend": os.environ["ZOO_ATTN_BACKEND"]} if os.environ.get("ZOO_ATTN_BACKEND") else {}),
        **({"val_history": state["val"], "parts": state["parts"]} if resume_dir is not None else {}),
    }, task


def accuracy_by_font(readings: dict[tuple[str, int], tuple[float, float]], data_seed: int) -> dict[str, dict[str, Any]]:
    """Word accuracy / 1-NED (%) and count per held-out font, from the test's per-sample readings."""
    from zoo.data.charsets import Charset
    from zoo.data.str_synth import sample_font

    chars = Charset(DATA["charset"], DATA["max_length"]).chars
    sums: dict[str, list[float]] = {}
    for (_, index), (correct, ned) in readings.items():
        stem = sample_font(data_seed, "test", index, chars, min_len=DATA["synth_min_len"], max_len=DATA["synth_max_len"])
        s = sums.setdefault(stem, [0.0, 0.0, 0])
        s[0], s[1], s[2] = s[0] + correct, s[1] + ned, s[2] + 1
    return {f: {"accuracy": round(100 * c / k, 2), "one_minus_ned": round(100 * e / k, 2), "count": k}
            for f, (c, e, k) in sorted(sums.items())}


def write(name: str, payload: dict[str, Any], table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")
    print(table, flush=True)


def table(rows: list[dict[str, Any]], title: str, machine_info: Optional[dict[str, Any] | list[dict[str, Any]]] = None) -> str:
    """Markdown table of runs; the footer names ``machine_info`` (one machine or a list; default: this machine,
    where the runs trained)."""
    lines = [f"### {title}", "", "| model | params | steps | seed | word acc (%) | 1-NED (%) | test n | train s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['params']:,} | {r['steps']} | {r['seed']} | {r['test_accuracy']:.2f} | "
            f"{r['test_one_minus_ned']:.2f} | {r['test_count']} | {r['train_s']:.0f} |"
        )
    fonts = sorted({f for r in rows for f in r.get("test_by_font", {})})
    if fonts:  # runs from before the per-font breakdown show a dash
        lines += ["", "Word accuracy (%) by held-out font:", "", "| model | seed | " + " | ".join(fonts) + " |",
                  "|---|---|" + "---|" * len(fonts)]
        for r in rows:
            acc = [f"{r['test_by_font'][f]['accuracy']:.1f}" if f in r.get("test_by_font", {}) else "-" for f in fonts]
            lines.append(f"| {r['label']} | {r['seed']} | " + " | ".join(acc) + " |")
    infos = machine_info if isinstance(machine_info, list) else [machine_info or machine()]
    texts = list(dict.fromkeys(machine_text(m) for m in infos))
    where = "Machine: " if len(texts) == 1 else "Machines: "
    lines += ["", f"Synthetic data {DATA}; test = held-out fonts. {where}{'; '.join(texts)}."]
    return "\n".join(lines)


def machine_text(m: dict[str, Any]) -> str:
    """A machine record as the tables' footers name it."""
    gpu = f", {m['device']}" if m.get("device", "cpu") != "cpu" else ""
    return f"{m.get('cpu_model', '?')}, {m.get('torch_threads', '?')} thread(s){gpu}, torch {m.get('torch', '?')}"


def export_main(args: argparse.Namespace) -> None:
    from zoo.hub import export_model

    row, task = run("str-diff-tiny", args.steps, seed=args.seed, n_test=args.n_test, lr=args.lr, val_every=args.val_every,
                    batch_size=args.batch_size, init_from=args.init_from, **run_args(args))
    if row is None:  # stopped on its budget; the next call continues
        return
    folder = Path(args.export_dir)
    # only the shipped folder's run is "the shipped model's" (merged as a diff arm); another folder's has its own name
    shipped = folder.resolve() == SHIPPED.resolve()
    name = "shipped_tiny" if shipped else f"export_{folder.name}"
    row["label"] = "str-diff-tiny (shipped)" if shipped else f"str-diff-tiny (exported to {folder})"
    before = shipped_accuracy(folder)
    if before is not None and row["test_accuracy"] < before and not args.overwrite:
        # a weaker model never silently replaces the shipped one
        folder, name = RESULTS / "export_candidate", "export_candidate"
        row["label"] = "str-diff-tiny (candidate, not shipped)"
        print(f"test accuracy {row['test_accuracy']:.1f}% is below the shipped model's {before:.1f}%: exporting to "
              f"{folder} instead (pass --overwrite to replace the shipped model)", flush=True)
    export_model(task.model, folder, arch="str-diff-tiny", overwrite=True,
                 extra={"trained_by": "scripts/bench_str.py --export", "data": DATA, "test": row, "machine": machine()})
    write(name, {"machine": machine(), "data": DATA, "runs": [row]}, table([row], f"{row['label']} (held-out-font synthetic test)"))
    print(f"exported to {folder}", flush=True)


def shipped_accuracy(folder: Path) -> Optional[float]:
    """Held-out-font word accuracy recorded in an exported folder's config (None when there is none)."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("extra", {}).get("test", {}).get("test_accuracy")


def bench_main(args: argparse.Namespace) -> None:
    from zoo.hub import export_model

    rows, teacher = [], args.teacher
    if args.attn != "both":
        # one arm per process (run the two arms side by side on two cores), merged by --merge
        kw = run_args(args)
        name = free_name(arm_name(args.attn, args.steps, args.seed, args.init_from, args.batch_size, kw["model_args"]), args.overwrite)
        row, _ = run(f"str-{args.attn}-tiny", args.steps, seed=args.seed, n_test=args.n_test, lr=args.lr, batch_size=args.batch_size,
                     val_every=args.val_every if args.init_from else 0, init_from=args.init_from, **kw)
        if row is None:  # stopped by --budget-min, checkpointed in --resume-dir; the same command continues it
            return
        row["label"] = (f"{args.attn} cross-attention{overrides_text(kw['model_args'])}"
                        + (f" (from {Path(args.init_from).name})" if args.init_from else ""))
        write(name, {"machine": machine(), "data": DATA, "runs": [row]}, table([row], f"{args.attn} arm"))
        return
    if args.csd:
        csd_main(args, teacher or str(Path(args.export_dir)))
        return
    kw = run_args(args)
    # named by budget, batch and overrides (never one of --merge's tables); an existing one stops the run now
    name = free_name(merged_name(args.batch_size, kw["model_args"], steps=args.steps), args.overwrite)
    if not args.skip_csd:  # before the arms train: a CSD result that exists stops the run now, not after them
        csd_name(args, teacher or str(RESULTS / "bench_teacher"), args.seed + 1)
    for attn in ("diff", "vanilla"):
        row, task = run(f"str-{attn}-tiny", args.steps, seed=args.seed, n_test=args.n_test, lr=args.lr, batch_size=args.batch_size,
                        **kw)
        row["label"] = f"{attn} cross-attention{overrides_text(kw['model_args'])}"
        rows.append(row)
        print(row, flush=True)
        if attn == "diff" and teacher is None:
            # CSD below distils this run into a fresh student of the same size and budget
            teacher = str(export_model(task.model, RESULTS / "bench_teacher", arch="str-diff-tiny", overwrite=True))
    write(name, {"machine": machine(), "data": DATA, "runs": rows}, table(rows, "Diff vs vanilla cross-attention decoder (equal params and budget)"))
    if args.skip_csd:
        return
    csd_main(args, teacher, student_seed=args.seed + 1)


def csd_name(args: argparse.Namespace, teacher: str, seed: int) -> str:
    """Result name of a CSD run; stops when that result exists and --overwrite is not given."""
    return free_name(f"csd_{args.steps}_b{args.batch_size}_s{seed}_teacher-{Path(teacher).name}{recipe_suffix()}", getattr(args, "overwrite", False))


def free_name(name: str, overwrite: bool) -> str:
    """``name`` of a result to write; stops when RESULTS already holds it and ``overwrite`` is not set."""
    if (RESULTS / f"{name}.json").is_file() and not overwrite:
        raise SystemExit(f"{RESULTS / name}.json exists (pass --overwrite to replace it)")
    return name


def csd_main(args: argparse.Namespace, teacher: str, student_seed: Optional[int] = None) -> None:
    """Train a CSD student (same size and budget, other training words: data seed 1) from ``teacher``;
    both are tested on the same crops (the student run's held-out-font test split, data seed 1). The
    teacher is evaluated first, so a teacher that cannot be read stops the run before training."""
    from zoo.data.str import STRDataModule
    from zoo.hub import load_pretrained
    from zoo.tasks.str import TextMetrics

    data_seed = 1
    seed = args.seed if student_seed is None else student_seed
    name = csd_name(args, teacher, seed)
    dm = STRDataModule(**DATA, synthetic={"train": 0, "val": 0, "test": args.n_test}, synth_seed=data_seed, eval_batch_size=128)
    dm.setup("test")
    model, metrics = load_pretrained(teacher), TextMetrics()
    t0 = time.time()
    for batch in dm.test_dataloader():
        with torch.no_grad():
            metrics.update([r.text for r in model.decode_probs(model(batch["images"]))], batch["texts"], batch["set"], batch["index"])
    res = metrics.compute()["combined"]
    csd_rows = [{"label": f"teacher {Path(teacher).name}", "params": model.num_params(), "steps": "-", "seed": "-",
                 "test_accuracy": res["accuracy"], "test_one_minus_ned": res["one_minus_ned"], "test_count": res["count"],
                 "test_by_font": accuracy_by_font(metrics.samples, data_seed),
                 "train_s": 0.0, "test_s": round(time.time() - t0, 1)}]
    print(csd_rows[0], flush=True)
    row, _ = run("str-diff-tiny", args.steps, seed=seed, n_test=args.n_test, lr=args.lr, teacher=teacher, data_seed=data_seed,
                 batch_size=args.batch_size, val_every=args.val_every, **run_args(args))
    row["label"] = f"CSD student (teacher {Path(teacher).name})"
    csd_rows.append(row)
    write(name, {"machine": machine(), "data": DATA, "test_data_seed": data_seed, "runs": csd_rows},
          table(csd_rows, "CSD student vs teacher (same test crops)"))


def merge_main(args: argparse.Namespace) -> None:
    """Combine the per-arm results of ``--attn diff`` and ``--attn vanilla`` runs into diff_vs_vanilla.*.

    With ``args.model_args`` (a variant of the diff arm, e.g. another cross-attention type) the table gets a
    third arm, the diff runs trained with exactly those overrides, and is written apart
    (diff_vs_vanilla[_b<N>]_<overrides>.*), so the registered twins' table is left as it was."""
    variant = getattr(args, "model_args", None) or None
    arms = [("diff", None), *([("diff", variant)] if variant else []), ("vanilla", None)]
    rows, machines = [], []
    for attn, overrides in arms:
        key = arm_key(attn, overrides)
        found = []
        for path in sorted(RESULTS.glob(f"arm_{attn}_{args.steps}_s*.json")):
            payload = json.loads(path.read_text())
            mine = [r for r in payload["runs"] if comparable(r, payload, args, overrides)]
            found += [{**r, "arm": key} for r in mine]
            machines += [payload["machine"]] if mine else []
        shipped = RESULTS / "shipped_tiny.json"
        if (attn, overrides) == ("diff", None) and shipped.is_file():
            # the shipped model's training (--export) is a diff run when it used the same steps, batch, lr and data
            payload = json.loads(shipped.read_text())
            run_ = payload["runs"][0]
            same = run_["steps"] == args.steps and comparable(run_, payload, args, None)
            if same and run_["seed"] not in {r["seed"] for r in found}:
                found.append({**run_, "label": "diff cross-attention (the shipped model's run)", "arm": key})
                machines.append(payload["machine"])
        if not found:
            extra = f" --model-args '{json.dumps(overrides)}'" if overrides else ""
            raise SystemExit(f"no {key} arm at {args.steps} steps in {RESULTS}; run --attn {attn} --steps {args.steps}{extra} first")
        rows += sorted(found, key=lambda r: r["seed"])
    summary = arm_summary(rows)
    by_text: dict[str, dict[str, Any]] = {}
    for m in machines:  # the first record of each description
        by_text.setdefault(machine_text(m), m)
    distinct = list(by_text.values())
    text = table(rows, "Diff vs vanilla cross-attention decoder (equal params and budget)", distinct)
    text += "\n\n" + "\n".join(
        f"- {key}: word accuracy {s['mean']:.2f} % over seeds {s['seeds']}" + (f" (sd {s['sd']:.2f})" if s["sd"] is not None else "")
        + (f"; minus vanilla {s['minus_vanilla']['mean']:+.2f}" + (f" ± {s['minus_vanilla']['se']:.2f} (se)" if s["minus_vanilla"]["se"] is not None else "")
           if "minus_vanilla" in s else "")
        for key, s in summary.items()
    )
    devices = sorted({r.get("device", "cpu") for r in rows})
    text += f"\n- batch {args.batch_size}, lr {args.lr:g}; trained on: {', '.join(devices)}"
    write(merged_name(args.batch_size, variant), {"machine": machines[0], "machines": distinct, "data": DATA, "runs": rows,
                                                  "summary": summary}, text)


def comparable(run_: dict[str, Any], payload: dict[str, Any], args: argparse.Namespace, overrides: Optional[dict[str, Any]]) -> bool:
    """Whether a recorded run belongs in a merged table: same batch, lr, data and test-set size, trained from
    scratch (fine-tuning stages are not arms), with exactly ``overrides`` (the registered twin: none)."""
    n_test = getattr(args, "n_test", N_TEST)
    return ((run_["batch_size"], run_["lr"], payload["data"], run_["test_count"]) == (args.batch_size, args.lr, DATA, n_test)
            and not run_.get("init_from") and (run_.get("model_args") or None) == overrides
            and run_.get("recipe", "v1") == TRAIN["recipe"])


def recipe_record() -> dict[str, str]:
    """The training recipe as a run records it: nothing for v1 (every older record), else ``{"recipe": name}``."""
    return {} if TRAIN["recipe"] == "v1" else {"recipe": TRAIN["recipe"]}


def recipe_suffix() -> str:
    return "" if TRAIN["recipe"] == "v1" else f"_recipe-{TRAIN['recipe']}"


def arm_key(attn: str, model_args: Optional[dict[str, Any]] = None) -> str:
    """An arm's name in merged tables: ``diff`` / ``vanilla``, or the diff arm with its overrides (``diff attn_type=diff_v2 ...``)."""
    return attn + overrides_text(model_args)


def overrides_text(model_args: Optional[dict[str, Any]]) -> str:
    """Architecture overrides as they read in labels: `` k=v`` for each, sorted; empty for none."""
    return "".join(f" {k}={v}" for k, v in sorted((model_args or {}).items()))


def overrides_suffix(model_args: Optional[dict[str, Any]]) -> str:
    """Architecture overrides as they read in file names: ``_kv`` for each, sorted; empty for none."""
    return "".join(f"_{k}{v}" for k, v in sorted((model_args or {}).items()))


def merged_name(batch_size: int, model_args: Optional[dict[str, Any]] = None, steps: Optional[int] = None) -> str:
    """The merged table of one batch size: diff_vs_vanilla (batch 32, the CPU runs) or diff_vs_vanilla_b<N>;
    with a diff variant's overrides, suffixed by them as arm files are; with ``steps`` (a one-process run of
    both arms) named by its budget too, so it never stands in for the merged tables."""
    return ("diff_vs_vanilla" + (f"_{steps}steps" if steps is not None else "") + (f"_b{batch_size}" if batch_size != 32 else "")
            + overrides_suffix(model_args) + recipe_suffix())


def run_args(args: argparse.Namespace) -> dict[str, Any]:
    """run()'s keywords from the command line: where it trains (--accelerator / --num-workers), the
    architecture overrides (--model-args), the crop cache (--synth-cache) and a resumable run's folder and
    budget (--resume-dir / --budget-min, which main() allows only with --export or a single arm); CPU, no
    loader processes, no overrides, no cache and not resumable when absent."""
    budget = getattr(args, "budget_min", None)
    return {"accelerator": getattr(args, "accelerator", "cpu"), "num_workers": getattr(args, "num_workers", 0),
            "model_args": getattr(args, "model_args", None) or None, "synth_cache": getattr(args, "synth_cache", None),
            "resume_dir": getattr(args, "resume_dir", None), "budget_s": None if budget is None else 60 * budget}


def prepare_cache(args: argparse.Namespace) -> None:
    """Render the crops a fresh run of these --steps / --batch-size (and its validation and test words)
    reads into --synth-cache, on every core, so that runs started next share them instead of each
    rendering its own (how scripts/gpu_checks.sh runs several arms side by side)."""
    from zoo.data.str import STRDataModule

    data_seed = 1 if args.csd else 0  # the CSD student trains on other words (csd_main)
    dm = STRDataModule(**DATA, synthetic={"train": args.steps * args.batch_size, "val": 256, "test": args.n_test},
                       synth_seed=data_seed, synth_cache=args.synth_cache)
    t0 = time.time()
    dm.prepare_data()
    print(f"prepared the synthetic crops of {args.steps} x {args.batch_size} in {time.time() - t0:.0f} s", flush=True)


def arm_name(attn: str, steps: int, seed: int, init_from: Optional[str] = None, batch_size: int = 32,
             model_args: Optional[dict[str, Any]] = None) -> str:
    from zoo.data.str_synth import TRAIN_FONTS

    shear = DATA.get("synth_train_shear")
    extra = [f for f in DATA.get("synth_train_fonts", []) if f not in TRAIN_FONTS]
    return (f"arm_{attn}_{steps}_s{seed}" + (f"_b{batch_size}" if batch_size != 32 else "") + (f"_shear{shear:g}" if shear else "")
            + overrides_suffix(model_args) + recipe_suffix()
            + (f"_fonts+{'+'.join(extra)}" if extra else "")
            + (f"_from-{Path(init_from).name}" if init_from else ""))


def arm_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and sample standard deviation of word accuracy per arm (sd is None for a single seed); each other
    arm also gets ``minus_vanilla``: its mean minus vanilla's and the standard error of that difference."""
    import math
    import statistics

    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(r["arm"] for r in rows):  # arms in table order
        acc = [r["test_accuracy"] for r in rows if r["arm"] == key]
        seeds = [r["seed"] for r in rows if r["arm"] == key]
        out[key] = {"mean": statistics.fmean(acc), "sd": statistics.stdev(acc) if len(acc) > 1 else None, "seeds": seeds}
    base = out.get("vanilla")
    for key, s in out.items():
        if key != "vanilla" and base is not None:
            # difference of the means and its standard error (unpaired: the arms share seeds, not weights)
            known = s["sd"] is not None and base["sd"] is not None
            se = math.sqrt(s["sd"] ** 2 / len(s["seeds"]) + base["sd"] ** 2 / len(base["seeds"])) if known else None
            s["minus_vanilla"] = {"mean": s["mean"] - base["mean"], "se": se}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", action="store_true", help="train the shipped str-diff-tiny and export it")
    p.add_argument("--export-dir", default=str(SHIPPED))
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: 4000 for --export, 600 for the bench)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--n-test", type=int, default=N_TEST)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--teacher", default=None, help="CSD teacher (default: the diff model trained by this bench)")
    p.add_argument("--skip-csd", action="store_true")
    p.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu (default, one thread) or gpu")
    p.add_argument("--num-workers", type=int, default=0, help="loader processes rendering the synthetic crops")
    p.add_argument("--model-args", type=json.loads, default={}, metavar="JSON",
                   help='architecture overrides for the trained model(s), e.g. \'{"dec_heads": 1}\' (a one-head diff '
                        "cross-attention); recorded in the results and suffixed to arm names. With --merge: add the diff runs of exactly these "
                        "overrides as a third arm (its own diff_vs_vanilla_<overrides> table)")
    p.add_argument("--attn", choices=("both", "diff", "vanilla"), default="both", help="run one arm only (no CSD)")
    p.add_argument("--merge", action="store_true", help="merge the arm_* results of --steps (all seeds) into diff_vs_vanilla.*")
    p.add_argument("--csd", action="store_true", help="only the CSD student vs teacher (teacher: --teacher or the shipped model)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing arm result of the same steps and seed; with --export, replace the shipped "
                        "model even when the new one tests lower")
    p.add_argument("--resume-dir", type=Path, default=None,
                   help="--export or a single arm (--attn diff|vanilla): keep a resumable checkpoint here; the same "
                        "command continues the run (on this or another machine)")
    p.add_argument("--budget-min", type=float, default=None,
                   help="with --resume-dir: stop after this many minutes of training, checkpointed")
    p.add_argument("--init-from", default=None,
                   help="--export / --attn: start from these weights (exported folder or shipped name) and train "
                        "--steps more with a fresh schedule (a fine-tuning stage); arm results get a _from-<name> suffix")
    p.add_argument("--add-train-fonts", nargs="+", default=[], metavar="STEM",
                   help="train (and validate) on these matplotlib fonts besides str_synth.TRAIN_FONTS, e.g. cmmi10 "
                        "(Computer Modern math italic); the held-out test fonts are refused. Recorded in the data "
                        "settings; arm results get a _fonts+<stems> suffix")
    p.add_argument("--shear", type=float, default=0.0,
                   help="slant half the synthetic training words right by up to this shift per unit height "
                        "(italic-like; 0.3 is about 17 degrees; validation and test unchanged). Recorded in the "
                        "results' data settings; arm results get a _shear<S> suffix")
    p.add_argument("--recipe", choices=("v1", "parseq"), default="v1",
                   help="RecognitionTask's training recipe: v1 (default here: every recorded row used it) or parseq "
                        "(the task's default: PARSeq's permutation with EOS last, embeddings and position queries not "
                        "weight-decayed). Recorded in the results; arm and merged files get a _recipe-<name> suffix, and "
                        "--merge combines only runs of the same recipe")
    p.add_argument("--synth-cache", default=None, metavar="DIR",
                   help="render the synthetic crops once into DIR and read them from there: the same pixels "
                        "without the renderer's ~1.7 ms a crop per step, so several runs can share the cores")
    p.add_argument("--prepare-cache", action="store_true",
                   help="only render the crops of --steps x --batch-size (with --csd: the student's words) "
                        "into --synth-cache, on every core, and exit")
    args = p.parse_args()
    if args.prepare_cache and not args.synth_cache:
        p.error("--prepare-cache needs --synth-cache DIR")
    if not isinstance(args.model_args, dict):
        p.error(f"--model-args must be a JSON object of architecture fields, got {args.model_args!r}")
    if args.model_args and args.merge and args.attn != "both":
        p.error("--merge --model-args adds a diff variant beside the registered twins; --attn does not apply")
    if args.init_from and (args.merge or args.csd or not (args.export or args.attn != "both")):
        p.error("--init-from goes with --export or a single arm (--attn diff|vanilla)")
    if not 0.0 <= args.shear <= 1.0:
        p.error(f"--shear must lie in [0, 1], got {args.shear}")
    TRAIN["recipe"] = args.recipe
    if args.shear:
        DATA["synth_train_shear"] = args.shear
    if args.add_train_fonts:
        from zoo.data.charsets import Charset
        from zoo.data.str import check_train_fonts
        from zoo.data.str_synth import TRAIN_FONTS

        fonts = [*TRAIN_FONTS, *[f for f in args.add_train_fonts if f not in TRAIN_FONTS]]
        try:
            check_train_fonts(fonts, Charset(DATA["charset"], DATA["max_length"]).chars)
        except (ValueError, FileNotFoundError) as exc:
            p.error(f"--add-train-fonts: {exc}")
        DATA["synth_train_fonts"] = fonts
    if (args.resume_dir is not None or args.budget_min is not None) and not (args.export or args.attn != "both") \
            or (args.resume_dir is not None and (args.merge or args.csd or args.prepare_cache)):
        p.error("--resume-dir / --budget-min go with --export or a single arm (--attn diff|vanilla)")
    if args.budget_min is not None and args.resume_dir is None:
        p.error("--budget-min needs --resume-dir (where the stopped run is kept)")
    if args.steps is None:
        args.steps = 4000 if args.export else 600
    if args.prepare_cache:
        prepare_cache(args)
    elif args.merge:
        merge_main(args)
    else:
        export_main(args) if args.export else bench_main(args)


if __name__ == "__main__":
    main()
