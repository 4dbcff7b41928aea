"""Text generation throughput: a list of prompts decoded one by one against left-padded batches.

``DiffTransformerLM.generate(list_of_texts, batch_size=B)`` sorts the prompts by length, left-pads ``B`` at a
time and decodes each batch with one forward per step. This script times it at several ``B`` on the same
prompts (greedy, no early stop, so every setting decodes the same number of tokens), checks that every batch size
gives the completions of ``B = 1`` (the per-prompt decoding), and writes ``<out>/bench_generate.json`` and
``.md`` with the machine it ran on.

    python scripts/bench_generate.py                         # lm-diff-small and lm-vanilla-small, CPU or GPU
    python scripts/bench_generate.py --quick                 # smoke run (default --out: a temp folder)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from bench_lm import QUICK_OUT, ROOT, SHAKESPEARE, machine  # scripts/ is on sys.path when run as a script
import zoo
from zoo.data.tokenizers import ByteTokenizer


def prompts_from(text: str, n: int, lo: int, hi: int, seed: int) -> list[str]:
    """``n`` prompts of ``lo``..``hi`` characters cut from ``text`` at random places (fixed by ``seed``)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        start = rng.randrange(0, max(1, len(text) - length))
        out.append(text[start : start + length])
    return out


def time_generate(model, prompts: list[str], new: int, batch_size: int, repeats: int) -> tuple[float, list[str]]:
    """Best wall time of ``repeats`` calls (after one warm-up call) and the completions."""
    texts = model.generate(prompts, max_new_tokens=new, temperature=0, eos_id=[], batch_size=batch_size)
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(prompts, max_new_tokens=new, temperature=0, eos_id=[], batch_size=batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, texts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lm-diff-small", "lm-vanilla-small"])
    ap.add_argument("--prompts", type=int, default=32, help="number of prompts")
    ap.add_argument("--prompt-chars", type=int, nargs=2, default=[16, 96], metavar=("MIN", "MAX"))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny model, few prompts and tokens")
    ap.add_argument("--out", help="output folder (default: scripts/results/lm; with --quick, a temp folder)")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.prompts, args.new_tokens, args.batch_sizes, args.repeats = ["lm-diff-tiny"], 6, 4, [1, 3], 1
    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else ROOT / "scripts" / "results" / "lm")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # the prompts' text only sets their lengths and bytes; without ../shared a fixed line stands in (recorded)
    source = str(SHAKESPEARE) if SHAKESPEARE.is_file() else "a fixed line (tinyshakespeare.txt not found)"
    text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.is_file() else "To be, or not to be: that is the question. " * 50
    prompts = prompts_from(text, args.prompts, *args.prompt_chars, seed=0)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = zoo.create_model(name, vocab_size=ByteTokenizer.vocab_size).to(device).eval()
        model.tokenizer = ByteTokenizer()
        base = None
        for bs in args.batch_sizes:
            secs, texts = time_generate(model, prompts, args.new_tokens, bs, args.repeats)
            base = texts if base is None else base
            row = {"model": name, "params": model.num_params(), "batch_size": bs, "seconds": secs,
                   "new_tokens_per_s": len(prompts) * args.new_tokens / secs,
                   "same_completions_as_first_batch_size": texts == base}
            rows.append(row)
            print(f"{name} batch_size {bs}: {secs:.2f} s, {row['new_tokens_per_s']:.0f} new tokens/s, "
                  f"same completions: {row['same_completions_as_first_batch_size']}", flush=True)
    result = {"machine": machine(), "device": device, "prompts": len(prompts), "prompt_source": source, "prompt_chars": args.prompt_chars,
              "new_tokens": args.new_tokens, "decoding": "greedy, no early stop", "runs": rows}
    (out / "bench_generate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"Generation: {len(prompts)} prompts of {args.prompt_chars[0]}-{args.prompt_chars[1]} characters, "
             f"{args.new_tokens} new tokens each, greedy, random-initialized weights; on "
             + (result["machine"]["device"] if device == "cuda" else
                f"the CPU ({result['machine']['cpu_model']}, {result['machine']['torch_threads']} torch threads)")
             + f"; torch {result['machine']['torch']}.", "",
             "| model | params | batch_size | seconds | new tokens/s | completions equal batch_size "
             f"{args.batch_sizes[0]}'s |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['batch_size']} | {r['seconds']:.2f} | "
              f"{r['new_tokens_per_s']:.0f} | {'yes' if r['same_completions_as_first_batch_size'] else 'NO'} |"
              for r in rows]
    (out / "bench_generate.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'bench_generate.json'} and .md")


if __name__ == "__main__":
    main()
