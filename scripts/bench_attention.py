"""Benchmark the fused Triton differential-attention kernel against its baselines (CUDA only).

Measured in one run on one device:

* training shapes -- forward and forward+backward time, achieved TFLOP/s and peak extra memory, for
  T = 512 .. 32k at a fixed number of tokens per batch, qk head dim d = 64 and 128 (v head dim 2d,
  the Diff Transformer layout), causal and not. Columns: ``triton`` (zoo.kernels.diff_attn),
  ``naive`` (materialized maps in PyTorch), ``sdpa x2`` (the official fast path: two
  scaled_dot_product_attention calls), ``timm`` (timm.layers.DiffAttention, when timm has it: the
  whole module, so it includes its qkv/out projections and sub-norm), ``vanilla sdpa`` (one SDPA
  call of the same width: 2H heads of size d, the baseline Transformer).
* decode -- one query token against a KV cache, batch 1..64, cache 1k..32k: the split-K kernel, two
  SDPA calls and the naive PyTorch math.
* LM step -- one forward+backward of a zoo DiffTransformerLM (dim 2048, 4 layers) under autocast with
  attn_backend triton / sdpa / naive, and the equal-parameter vanilla Transformer: the kernel's share
  at the model level.
* ``matmul`` -- a plain bf16 GEMM, the reachable peak the TFLOP/s columns should be read against.

FLOPs follow the FlashAttention convention: forward = 2 maps x (2 T^2 d + 2 T^2 dv) per head,
halved when causal; backward = 2.5 x forward. Times are from ``triton.testing.do_bench`` (median).

Writes ``results.json`` (with the device name), ``results.md`` and ``results.png`` to ``--out``
(default scripts/results/attention/). ``--quick`` runs a small subset; ``--check`` only verifies
correctness at a few sizes and writes nothing. ``--dims``, ``--seqlens`` and ``--causal`` measure
a subset of the training shapes (e.g. the rows a run cut short left out); ``--merge NEW.json``
adds the rows of such a run to the report in ``--out`` (same device only) and re-renders it.
A ``--quick`` or subset run (``--parts``, ``--dims``, ``--seqlens``, ``--lm-seqlens``, ``--causal``, or
another ``--dtype`` / ``--tokens``) without ``--out`` writes to a temp folder (it names it), never over the
recorded full report.

    python scripts/bench_attention.py [--quick] [--check] [--out DIR] [--dtype bf16|fp16]
                                      [--parts training,decode,lm] [--dims 64] [--seqlens 512,8192]
                                      [--causal true|false|both] [--render] [--merge NEW.json]

Results are written after every row, so a run cut short keeps what it measured ("complete": false).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from benchmachine import machine  # scripts/ is on sys.path when run as a script

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "attention"
SCRATCH_OUT = Path(tempfile.gettempdir()) / "zoo_bench_quick"  # default --out of a --quick or subset run
MODEL_WIDTH = 2048  # H differential heads of qk dim d and v dim 2d: H * 2d = MODEL_WIDTH


# ----------------------------------------------------------------------------------------------
# implementations under test (all take q1, q2, k1, k2 [B, H, T, d], v [B, H, T, 2d], lam)


def triton_diff(q1, q2, k1, k2, v, lam, causal):
    from zoo.kernels.diff_attn import diff_attention

    return diff_attention(q1, q2, k1, k2, v, lam, causal=causal)


def naive_diff(q1, q2, k1, k2, v, lam, causal):
    from zoo.kernels.diff_attn import diff_attention_reference

    # upcast=False: the plain PyTorch math in the inputs' dtype (materialized T x T maps)
    return diff_attention_reference(q1, q2, k1, k2, v, lam, causal=causal, upcast=False)


def sdpa_x2_diff(q1, q2, k1, k2, v, lam, causal):
    gqa = {"enable_gqa": True} if k1.shape[1] != q1.shape[1] else {}
    o1 = F.scaled_dot_product_attention(q1, k1, v, is_causal=causal, **gqa)
    o2 = F.scaled_dot_product_attention(q2, k2, v, is_causal=causal, **gqa)
    return o1 - lam.to(o1.dtype) * o2


def timm_diff_module(n_heads: int, dtype):
    """timm's DiffAttention module (or None when this timm has none)."""
    try:
        from timm.layers import DiffAttention
    except ImportError:
        return None
    return DiffAttention(MODEL_WIDTH, num_heads=n_heads).to(device="cuda", dtype=dtype)


# ----------------------------------------------------------------------------------------------
# measurement helpers


def do_bench(fn: Callable[[], object], quick: bool) -> float:
    """Median milliseconds of fn (CUDA graph-free, L2 flushed between runs by do_bench)."""
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=30 if quick else 100,
                                         return_mode="median"))


def measure(fn: Callable[[], object], quick: bool) -> dict:
    """Time and peak extra memory of fn; {'error': ...} on OOM or failure."""
    try:
        fn()  # compile / autotune outside the timed region
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        ms = do_bench(fn, quick)
        return {"ms": ms, "peak_mib": peak / 2**20}
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"error": "OOM"}
    except Exception as exc:  # noqa: BLE001 -- a failing baseline must not end the run
        torch.cuda.empty_cache()
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def diff_flops(B, H, Tq, Tk, d, dv, causal) -> float:
    f = B * H * 2 * (2 * Tq * Tk * d + 2 * Tq * Tk * dv)
    return f / 2 if causal and Tq == Tk else f


def vanilla_flops(B, H2, T, d, causal) -> float:
    f = B * H2 * (2 * T * T * d + 2 * T * T * d)
    return f / 2 if causal else f


def with_tflops(res: dict, flops: float) -> dict:
    if "ms" in res:
        res["tflops"] = flops / (res["ms"] * 1e-3) / 1e12
    return res


def fwd_bwd(make_out: Callable[[], torch.Tensor], params: list, grad: torch.Tensor) -> Callable[[], None]:
    def run():
        for p in params:
            p.grad = None
        make_out().backward(grad)

    return run


def naive_fits(B, H, Tq, Tk, elem_bytes, backward) -> bool:
    """Skip the naive baseline when its T x T maps (two maps, scores + probs, grads) cannot fit."""
    need = B * H * Tq * Tk * elem_bytes * 2 * (4 if backward else 2)
    free, _ = torch.cuda.mem_get_info()
    return need < 0.8 * free


# ----------------------------------------------------------------------------------------------
# benchmarks


def bench_matmul(dtype, quick: bool) -> dict:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    res = measure(lambda: a @ b, quick)
    return with_tflops(res, 2 * n**3)


def bench_training(seqlens, dims, causals, tokens, dtype, quick: bool,
                   on_row: Callable[[list], None] = lambda rows: None) -> list[dict]:
    rows = []
    for d in dims:
        H = MODEL_WIDTH // (2 * d)
        timm_mod = timm_diff_module(H, dtype)
        for causal in causals:
            for T in seqlens:
                B = max(1, tokens // T)
                g = torch.Generator(device="cuda").manual_seed(0)

                def rnd(*shape):
                    return torch.randn(*shape, device="cuda", dtype=dtype, generator=g).requires_grad_()

                q1, q2, k1, k2 = (rnd(B, H, T, d) for _ in range(4))
                v = rnd(B, H, T, 2 * d)
                lam = torch.tensor(0.8, device="cuda", requires_grad=True)
                grad = torch.randn(B, H, T, 2 * d, device="cuda", dtype=dtype, generator=g)
                params = [q1, q2, k1, k2, v, lam]
                flops = diff_flops(B, H, T, T, d, 2 * d, causal)
                row = {"d": d, "dv": 2 * d, "H": H, "B": B, "T": T, "causal": causal, "flops_fwd": flops}

                impls = {"triton": triton_diff, "naive": naive_diff, "sdpa_x2": sdpa_x2_diff}
                for name, impl in impls.items():
                    if name == "naive" and not naive_fits(B, H, T, T, q1.element_size(), True):
                        row[name] = {"fwd": {"error": "skipped (T x T maps would not fit)"},
                                     "fwd_bwd": {"error": "skipped (T x T maps would not fit)"}}
                        continue

                    def out(impl=impl):
                        return impl(q1, q2, k1, k2, v, lam, causal)

                    with torch.no_grad():
                        fwd = measure(out, quick)
                    both = measure(fwd_bwd(out, params, grad), quick)
                    row[name] = {"fwd": with_tflops(fwd, flops), "fwd_bwd": with_tflops(both, 3.5 * flops)}

                # one SDPA call of the same width: 2H heads of size d
                vq, vk, vv = rnd(B, 2 * H, T, d), rnd(B, 2 * H, T, d), rnd(B, 2 * H, T, d)
                vgrad = torch.randn(B, 2 * H, T, d, device="cuda", dtype=dtype, generator=g)
                vflops = vanilla_flops(B, 2 * H, T, d, causal)

                def vout():
                    return F.scaled_dot_product_attention(vq, vk, vv, is_causal=causal)

                with torch.no_grad():
                    fwd = measure(vout, quick)
                both = measure(fwd_bwd(vout, [vq, vk, vv], vgrad), quick)
                row["vanilla_sdpa"] = {"fwd": with_tflops(fwd, vflops), "fwd_bwd": with_tflops(both, 3.5 * vflops)}

                if timm_mod is not None:
                    x = rnd(B, T, MODEL_WIDTH)
                    xgrad = torch.randn(B, T, MODEL_WIDTH, device="cuda", dtype=dtype, generator=g)

                    def tout():
                        return timm_mod(x, is_causal=causal)

                    with torch.no_grad():
                        fwd = measure(tout, quick)
                    both = measure(fwd_bwd(tout, [x, *timm_mod.parameters()], xgrad), quick)
                    # attention FLOPs only (projections excluded), so its TFLOP/s understate it
                    row["timm"] = {"fwd": with_tflops(fwd, flops), "fwd_bwd": with_tflops(both, 3.5 * flops)}
                rows.append(row)
                on_row(rows)
                print(format_training_row(row), flush=True)
                del q1, q2, k1, k2, v, vq, vk, vv
                torch.cuda.empty_cache()
    return rows


def bench_decode(batches, caches, dims, dtype, quick: bool,
                 on_row: Callable[[list], None] = lambda rows: None) -> list[dict]:
    from zoo.kernels.diff_attn import diff_attention_decode

    rows = []
    for d in dims:
        H = MODEL_WIDTH // (2 * d)
        hkv = max(1, H // 2)  # maintainers' advice: half the baseline's KV heads
        for B in batches:
            for Tk in caches:
                g = torch.Generator(device="cuda").manual_seed(0)

                def rnd(*shape):
                    return torch.randn(*shape, device="cuda", dtype=dtype, generator=g)

                try:
                    q1, q2 = rnd(B, H, 1, d), rnd(B, H, 1, d)
                    k1, k2, v = rnd(B, hkv, Tk, d), rnd(B, hkv, Tk, d), rnd(B, hkv, Tk, 2 * d)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rows.append({"d": d, "H": H, "Hkv": hkv, "B": B, "Tk": Tk, "error": "OOM allocating the cache"})
                    continue
                lam = torch.tensor(0.8, device="cuda")
                row = {"d": d, "dv": 2 * d, "H": H, "Hkv": hkv, "B": B, "Tk": Tk,
                       "cache_mib": (k1.numel() + k2.numel() + v.numel()) * k1.element_size() / 2**20}
                with torch.no_grad():
                    row["triton"] = measure(lambda: diff_attention_decode(q1, q2, k1, k2, v, lam), quick)
                    row["sdpa_x2"] = measure(lambda: sdpa_x2_diff(q1, q2, k1, k2, v, lam, False), quick)
                    row["naive"] = measure(lambda: naive_diff(q1, q2, k1, k2, v, lam, False), quick)
                if "ms" in row["triton"]:
                    # bytes that must be read at least once: K1, K2, V
                    nbytes = (k1.numel() + k2.numel() + v.numel()) * k1.element_size()
                    row["triton"]["gbps"] = nbytes / (row["triton"]["ms"] * 1e-3) / 1e9
                rows.append(row)
                on_row(rows)
                print(format_decode_row(row), flush=True)
                del q1, q2, k1, k2, v
                torch.cuda.empty_cache()
    return rows


LM_SHAPES = {"dim": 2048, "n_layers": 4, "n_heads": 8, "vocab_size": 32000}  # diff heads: qk 128, v 256


def bench_lm_step(seqlens, tokens, dtype, quick: bool, on_row: Callable[[list], None] = lambda rows: None) -> list[dict]:
    """One training step (forward + backward, no optimizer) of a zoo DiffTransformerLM under autocast.

    The same model per backend (``attn_backend`` = triton / sdpa / naive), plus the vanilla
    Transformer of equal parameters (2 * n_heads softmax heads, SDPA): the end-to-end share of the
    attention kernel at the model level.
    """
    from zoo.models.lm import DiffTransformerLM, LMConfig

    rows = []
    arms = [("diff", "triton"), ("diff", "sdpa"), ("diff", "naive"), ("vanilla", "sdpa")]
    for T in seqlens:
        B = max(1, tokens // T)
        row = {"T": T, "B": B, **LM_SHAPES}
        for attn_type, backend in arms:
            heads = LM_SHAPES["n_heads"] * (2 if attn_type == "vanilla" else 1)
            cfg = LMConfig(**{**LM_SHAPES, "n_heads": heads}, max_seq_len=T, attn_type=attn_type,
                           attn_backend=backend)
            torch.manual_seed(0)
            model = DiffTransformerLM(cfg).cuda()
            ids = torch.randint(0, cfg.vocab_size, (B, T + 1), device="cuda")

            def step(model=model, ids=ids):
                for p in model.parameters():
                    p.grad = None
                with torch.autocast("cuda", dtype=dtype):
                    logits = model(ids[:, :-1])
                F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()

            name = f"{attn_type}_{backend}"
            if backend == "naive" and not naive_fits(B, heads, T, T, 2, True):
                row[name] = {"error": "skipped (T x T maps would not fit)"}
            else:
                res = measure(step, quick)
                if "ms" in res:
                    res["tokens_per_s"] = B * T / (res["ms"] * 1e-3)
                row[name] = res
            row[name]["params"] = sum(p.numel() for p in model.parameters())
            del model, ids
            torch.cuda.empty_cache()
        rows.append(row)
        on_row(rows)
        print(" | ".join([f"LM step T={T} B={B}"] + [f"{k}: {_ms(v)}" for k, v in row.items()
                                                     if isinstance(v, dict)]), flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# correctness check (--check)


def run_check(dtype) -> bool:
    from zoo.kernels.diff_attn import diff_attention, diff_attention_decode, diff_attention_reference

    def rel(a, b):
        return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()

    ok = True
    # (B, H, Hkv, Tq, Tk, d, causal)
    for B, H, hkv, tq, tk, d, causal in [(2, 8, 4, 1000, 1000, 64, True), (1, 8, 8, 777, 777, 128, False),
                                         (2, 4, 2, 129, 2000, 128, True), (1, 16, 16, 2048, 2048, 32, True),
                                         (1, 8, 4, 511, 511, 96, True)]:
        g = torch.Generator(device="cuda").manual_seed(0)
        mk = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, generator=g).requires_grad_()  # noqa: E731
        ins = [mk(B, H, tq, d), mk(B, H, tq, d), mk(B, hkv, tk, d), mk(B, hkv, tk, d), mk(B, hkv, tk, 2 * d),
               torch.rand(B, H, tq, 1, device="cuda", generator=g).requires_grad_()]
        dout = torch.randn(B, H, tq, 2 * d, device="cuda", dtype=dtype, generator=g)
        out = diff_attention(*ins, causal=causal)
        grads = torch.autograd.grad(out, ins, dout)
        f_in = [t.detach().float().requires_grad_() for t in ins]
        ref = diff_attention_reference(*f_in, causal=causal)
        ref_grads = torch.autograd.grad(ref, f_in, dout.float())
        l_in = [t.detach().clone().requires_grad_() for t in ins]
        low = diff_attention_reference(*l_in, causal=causal, upcast=False)
        low_grads = torch.autograd.grad(low, l_in, dout)
        floor = 4 * (2.0**-8 if dtype == torch.bfloat16 else 2.0**-11)
        names = ["out", "dq1", "dq2", "dk1", "dk2", "dv", "dlam"]
        for n, a, lo, r in zip(names, (out, *grads), (low, *low_grads), (ref, *ref_grads)):
            e, e_low = rel(a, r), rel(lo, r)
            good = e <= max(2 * e_low, floor)
            ok &= good
            print(f"{'ok ' if good else 'BAD'} B={B} H={H} Hkv={hkv} Tq={tq} Tk={tk} d={d} causal={causal} "
                  f"{n:5s} rel_err={e:.2e} (plain {dtype}: {e_low:.2e})")
        q1, q2, k1, k2, v, lam = (t.detach() for t in ins)
        with torch.no_grad():
            full = diff_attention(q1, q2, k1, k2, v, lam, causal=False)  # every row sees the whole cache
            dec = diff_attention_decode(q1[:, :, -1:], q2[:, :, -1:], k1, k2, v, lam[:, :, -1:])
        e = rel(dec, full[:, :, -1:])
        ok &= e <= floor
        print(f"{'ok ' if e <= floor else 'BAD'} decode vs full forward's last row rel_err={e:.2e}")
    return ok


# ----------------------------------------------------------------------------------------------
# reporting


def _fmt(res: Optional[dict], key: str = "ms") -> str:
    if res is None:
        return "-"
    if "error" in res:
        err = res["error"]
        return "OOM" if err.startswith("OOM") else "skipped" if err.startswith("skipped") else "failed"
    return f"{res[key]:.3f}" if key == "ms" else f"{res[key]:.0f}" if key == "peak_mib" else f"{res[key]:.1f}"


def _ms(res: Optional[dict]) -> str:
    text = _fmt(res)
    return f"{text} ms" if res is not None and "ms" in res else text


TRAIN_COLS = ["triton", "naive", "sdpa_x2", "timm", "vanilla_sdpa"]


def format_training_row(row: dict) -> str:
    parts = [f"d={row['d']} T={row['T']} B={row['B']} causal={row['causal']}"]
    for c in TRAIN_COLS:
        if c in row:
            parts.append(f"{c}: fwd {_ms(row[c]['fwd'])}, fwd+bwd {_ms(row[c]['fwd_bwd'])}")
    return " | ".join(parts)


def format_decode_row(row: dict) -> str:
    if "error" in row:
        return f"d={row['d']} B={row['B']} Tk={row['Tk']}: {row['error']}"
    return (f"d={row['d']} B={row['B']} Tk={row['Tk']} | triton {_ms(row['triton'])} | "
            f"sdpa_x2 {_ms(row['sdpa_x2'])} | naive {_ms(row['naive'])}")


def markdown(result: dict) -> str:
    lines = ["# Differential attention benchmark", "",
             f"Device: **{result['device']}**, dtype {result['dtype']}, torch {result['torch']}, "
             f"triton {result['triton']}, {result['tokens_per_batch']} tokens per batch, model width "
             f"{MODEL_WIDTH} (H = width / 2d, v head dim 2d).", "",
             f"Reachable peak ({result.get('dtype', 'bf16')} matmul 8192^3): {_fmt(result['matmul'], 'tflops')} TFLOP/s.", ""]
    if result.get("machine"):
        lines += [f"Machine: {result['machine']}.", ""]
    if result.get("host"):
        h = result["host"]
        lines += [f"Host: {h['cpu_model']}, {h['cpu_count']} CPU cores, {h['platform']}, lightning {h['lightning']}.", ""]
    for part, how in result.get("runs", {}).items():
        lines.append(f"- `{part}`: {how}")
    if result.get("runs"):
        lines.append("")
    if not result.get("complete", True):
        lines += ["**Partial run**: the run stopped before every shape was measured; the rows below are "
                  "all it measured.", ""]
        missing = missing_shapes(result)
        lines += [f"- not measured, {m}" for m in missing] + [""] * bool(missing)
    cols = [c for c in TRAIN_COLS if any(c in r for r in result.get("training", []))]
    for phase in ("fwd", "fwd_bwd") if result.get("training") else ():
        lines += [f"## Training shapes, {phase.replace('_', '+')}: ms (TFLOP/s) [peak extra MiB]", "",
                  "| d | causal | T | B | " + " | ".join(cols) + " |",
                  "|---|---|---|---|" + "---|" * len(cols)]
        for r in result.get("training", []):
            cells = []
            for c in cols:
                res = r.get(c, {}).get(phase)
                cells.append("-" if res is None else
                             f"{_fmt(res)} ({_fmt(res, 'tflops')}) [{_fmt(res, 'peak_mib')}]" if "ms" in res
                             else _fmt(res))
            lines.append(f"| {r['d']} | {r['causal']} | {r['T']} | {r['B']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "timm" in cols:
        lines += ["`timm` is the whole timm.layers.DiffAttention module (qkv/out projections and sub-norm "
                  "included); its TFLOP/s count attention FLOPs only.", ""]
    if result.get("lm_step"):
        arms = ["diff_triton", "diff_sdpa", "diff_naive", "vanilla_sdpa"]
        lines += ["## LM training step (forward + backward under autocast, no optimizer): ms [k tokens/s]", "",
                  f"zoo DiffTransformerLM {LM_SHAPES} per backend; `vanilla_sdpa` is the equal-parameter "
                  "softmax Transformer (2x heads).", "",
                  "| T | B | " + " | ".join(arms) + " |", "|---|---|" + "---|" * len(arms)]
        for r in result["lm_step"]:
            cells = [f"{_fmt(r[a])} [{r[a]['tokens_per_s'] / 1e3:.0f}]" if "ms" in r.get(a, {}) else
                     _fmt(r.get(a)) for a in arms]
            lines.append(f"| {r['T']} | {r['B']} | " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("decode"):
        lines += ["## Decode (one query token): ms", "",
                  "| d | B | cache | triton | triton GB/s | sdpa_x2 | naive |", "|---|---|---|---|---|---|---|"]
    for r in result.get("decode", []):
        if "error" in r:
            lines.append(f"| {r['d']} | {r['B']} | {r['Tk']} | {r['error']} | | | |")
            continue
        gbps = r["triton"].get("gbps")
        lines.append(f"| {r['d']} | {r['B']} | {r['Tk']} | {_fmt(r['triton'])} | "
                     f"{'-' if gbps is None else f'{gbps:.0f}'} | {_fmt(r['sdpa_x2'])} | {_fmt(r['naive'])} |")
    failures = _failures(result)
    if failures:
        lines += ["", "Failed cells (`failed` above):", ""] + [f"- {where}: {err}" for where, err in failures]
    return "\n".join(lines) + "\n"


def _failures(result: dict) -> list[tuple[str, str]]:
    """``(cell, error)`` of every measurement that failed for another reason than OOM or a planned skip."""
    out = []

    def add(where: str, res) -> None:
        if isinstance(res, dict) and "error" in res and _fmt(res) == "failed":
            out.append((where, res["error"]))

    add("matmul peak", result.get("matmul"))  # the header's reachable peak
    for r in result.get("training", []):
        for c in TRAIN_COLS:
            for phase in ("fwd", "fwd_bwd"):
                add(f"training d={r['d']} causal={r['causal']} T={r['T']} {c} {phase}", r.get(c, {}).get(phase))
    for r in result.get("lm_step", []):
        for arm, res in r.items():
            add(f"LM step T={r['T']} {arm}", res)
    for r in result.get("decode", []):
        for arm in ("triton", "sdpa_x2", "naive"):
            add(f"decode d={r['d']} B={r['B']} cache={r['Tk']} {arm}", r.get(arm))
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = {"training": [], "decode": [], **result}
    combos = sorted({(r["d"], r["causal"]) for r in result["training"]})
    ncols = max(1, len(combos))
    fig, axes = plt.subplots(2, ncols + 1, figsize=(4.5 * (ncols + 1), 8), squeeze=False)
    for j, (d, causal) in enumerate(combos):
        rows = [r for r in result["training"] if r["d"] == d and r["causal"] == causal]
        for i, phase in enumerate(("fwd", "fwd_bwd")):
            ax = axes[i][j]
            for c in TRAIN_COLS:
                pts = [(r["T"], r[c][phase]["tflops"]) for r in rows if c in r and "tflops" in r[c][phase]]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=c)
            if "tflops" in result["matmul"]:
                ax.axhline(result["matmul"]["tflops"], color="gray", ls="--", lw=0.8, label=f"{result.get('dtype', 'bf16')} matmul")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{phase.replace('_', '+')}, d={d}, {'causal' if causal else 'full'}")
            ax.set_xlabel("sequence length T")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    for i, d in enumerate(sorted({r["d"] for r in result["decode"]})[:2]):
        ax = axes[i][ncols]
        rows = [r for r in result["decode"] if r["d"] == d and "error" not in r]
        for B in sorted({r["B"] for r in rows}):
            for c, ls in (("triton", "-"), ("sdpa_x2", ":")):
                pts = [(r["Tk"], r[c]["ms"]) for r in rows if r["B"] == B and "ms" in r[c]]
                if pts:
                    ax.plot(*zip(*pts), ls=ls, marker="o", label=f"{c} B={B}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"decode latency, d={d}")
        ax.set_xlabel("KV cache length")
        ax.set_ylabel("ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"Differential attention on {result['device']} ({result['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


# the full run's shapes; d=128 causal (the Diff Transformer LM's layout) first, so a run cut short keeps the
# rows that matter most
FULL_GRID = {"seqlens": [512, 1024, 2048, 4096, 8192, 16384, 32768], "dims": [128, 64], "causals": [True, False],
             "batches": [1, 4, 16, 64], "caches": [1024, 4096, 16384, 32768], "lm_seqlens": [2048, 8192]}


def _row_parts(result: dict) -> list[str]:
    """The row lists a run was asked for: its ``parts`` (``--parts`` names ``lm`` for the ``lm_step`` rows);
    for an older result without that key, the lists it has rows in."""
    if result.get("parts"):
        return ["lm_step" if p == "lm" else p for p in result["parts"]]
    return [p for p in ROW_KEYS if result.get(p)]


def missing_shapes(result: dict) -> list[str]:
    """The full run's shapes that ``result`` has no row for, per part it was asked to measure (``parts``;
    for an older result without that key, the parts it has rows of)."""
    g, out = FULL_GRID, []
    want = {"training": [(d, c, T) for d in g["dims"] for c in g["causals"] for T in g["seqlens"]],
            "lm_step": [(T,) for T in g["lm_seqlens"]],
            "decode": [(d, B, Tk) for d in g["dims"] for B in g["batches"] for Tk in g["caches"]]}
    parts = _row_parts(result)
    for part, keys in ROW_KEYS.items():
        if part not in parts:
            continue
        have = {tuple(r[k] for k in keys) for r in result.get(part, [])}
        miss = [s for s in want[part] if s not in have]
        if miss:
            out.append(f"{part}: " + ", ".join("/".join(f"{k}={v}" for k, v in zip(keys, s)) for s in miss))
    return out


ROW_KEYS = {"training": ("d", "causal", "T"), "lm_step": ("T",), "decode": ("d", "B", "Tk")}


def merge_results(base: dict, new: dict, note: str = "") -> tuple[dict, list[str]]:
    """``base`` with the rows of ``new`` added: a row whose shape (ROW_KEYS) is already in ``base`` is
    replaced. Timings from another device or dtype do not belong in one table: that is an error."""
    unset = {"quick": False}  # a result written before the key existed was a full run
    for key in ("device", "dtype", "tokens_per_batch", "quick"):
        if base.get(key, unset.get(key)) != new.get(key, unset.get(key)):
            raise ValueError(f"cannot merge: {key} differs ({base.get(key)!r} in the report, "
                             f"{new.get(key)!r} in the new run)")
    merged, changes = dict(base), []
    for part, keys in ROW_KEYS.items():
        if not new.get(part):
            continue
        rows = {tuple(r[k] for k in keys): r for r in base.get(part, [])}
        for r in new[part]:
            shape = tuple(r[k] for k in keys)
            changes.append(f"{part} {dict(zip(keys, shape))}: {'replaced' if shape in rows else 'added'}")
            rows[shape] = r
        # the full run's order: d=128 before 64, causal before not, then the sizes ascending
        order = {"d": lambda v: -v, "causal": lambda v: not v}
        merged[part] = [rows[k] for k in sorted(rows, key=lambda k: tuple(order.get(n, lambda v: v)(v)
                                                                        for n, v in zip(keys, k)))]
        runs = dict(merged.get("runs", {}))
        # the run's own software and reachable peak travel with its rows (the header keeps the base run's)
        what = note or f"rows merged from a run on {new['device']}"
        peak = (new.get("matmul") or {}).get("tflops")
        facts = [", ".join(f"{k} {new[k]}" for k in ("torch", "triton") if new.get(k) is not None),
                 f"matmul peak {peak:.0f} TFLOP/s" if peak else ""]
        if any(facts):
            what += f" ({'; '.join(f for f in facts if f)})"
        runs[part] = "; ".join(x for x in (runs.get(part, ""), what) if x)
        merged["runs"] = runs
    if not changes:
        raise ValueError("cannot merge: the new run has no training, lm_step or decode rows")
    merged["parts"] = [p for p in ROW_KEYS if any(p in _row_parts(r) for r in (base, new))]
    return merged, changes


def _int_list(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help=f"output folder (default: {DEFAULT_OUT}; for a --quick or subset "
                                             f"run, {SCRATCH_OUT / 'attention'})")
    ap.add_argument("--quick", action="store_true", help="short run: few lengths, d=128, fewer repeats")
    ap.add_argument("--check", action="store_true", help="only verify correctness on the GPU; writes nothing")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--tokens", type=int, default=32768, help="tokens per batch (B = tokens // T)")
    ap.add_argument("--render", action="store_true",
                    help="only re-write results.md and results.png from the results.json in --out (no GPU)")
    ap.add_argument("--parts", default="training,decode,lm",
                    help="comma-separated sections to run: training, decode, lm (default: %(default)s)")
    ap.add_argument("--dims", type=_int_list, help="training/decode qk head dims to measure (default: 128,64)")
    ap.add_argument("--seqlens", type=_int_list,
                    help="training sequence lengths to measure (default: 512,1024,...,32768)")
    ap.add_argument("--lm-seqlens", type=_int_list, help="LM-step sequence lengths (default: 2048,8192)")
    ap.add_argument("--causal", choices=["both", "true", "false"], default="both",
                    help="training shapes: causal, non-causal or both (default: %(default)s)")
    ap.add_argument("--merge", type=Path, metavar="NEW_JSON",
                    help="add the rows of NEW_JSON (a run of this script on the same device) to the "
                         "results.json in --out and re-render; no GPU")
    ap.add_argument("--note", default="", help="with --merge: how the new rows were measured (kept in the report)")
    args = ap.parse_args(argv)

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"training", "decode", "lm"})
    if unknown or not parts:
        ap.error(f"--parts: unknown section(s) {unknown or parts}; choose from training, decode, lm")
    subset = (args.quick or set(parts) != {"training", "decode", "lm"} or args.causal != "both"
              or any(x is not None for x in (args.dims, args.seqlens, args.lm_seqlens))
              or any(getattr(args, k) != ap.get_default(k) for k in ("dtype", "tokens")))
    if args.out is None:  # a smoke, subset or other-settings run must not replace the recorded full report
        args.out = SCRATCH_OUT / "attention" if subset and not (args.merge or args.render) else DEFAULT_OUT
    if args.merge:
        src = args.out / "results.json"
        for f in (src, args.merge):
            if not f.is_file():
                ap.error(f"--merge: {f} does not exist")
        try:
            merged, changes = merge_results(json.loads(src.read_text()), json.loads(args.merge.read_text()),
                                            args.note)
        except ValueError as e:
            ap.error(f"--merge: {e}")
        merged["complete"] = not missing_shapes(merged)
        src.write_text(json.dumps(merged, indent=2))
        (args.out / "results.md").write_text(markdown(merged))
        plot(merged, args.out / "results.png")
        print("\n".join(changes))
        print(f"merged {len(changes)} rows from {args.merge} into {src}; re-wrote results.md, results.png")
        return 0
    if args.render:
        src = args.out / "results.json"
        if not src.is_file():
            ap.error(f"--render: {src} does not exist")
        result = json.loads(src.read_text())
        (args.out / "results.md").write_text(markdown(result))
        plot(result, args.out / "results.png")
        print(f"wrote {args.out / 'results.md'}, results.png from {src}")
        return 0
    if not torch.cuda.is_available():
        print("bench_attention: no CUDA device found; this benchmark needs a GPU. Nothing was written.",
              file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16

    if args.check:
        ok = run_check(dtype)
        print("check passed" if ok else "check FAILED")
        return 0 if ok else 1

    if args.quick:
        seqlens, dims, causals = [512, 2048, 8192], [128], [True]
        batches, caches = [1, 16], [1024, 8192]
        lm_seqlens = [2048]
    else:
        lm_seqlens = FULL_GRID["lm_seqlens"]
        seqlens, dims, causals = FULL_GRID["seqlens"], FULL_GRID["dims"], FULL_GRID["causals"]
        batches, caches = FULL_GRID["batches"], FULL_GRID["caches"]
    seqlens, dims, lm_seqlens = args.seqlens or seqlens, args.dims or dims, args.lm_seqlens or lm_seqlens
    causals = {"both": causals, "true": [True], "false": [False]}[args.causal]

    import triton

    t0 = time.time()
    result = {
        "device": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "host": machine(),
        "dtype": args.dtype, "tokens_per_batch": args.tokens, "model_width": MODEL_WIDTH, "quick": args.quick,
        "flops_convention": "fwd = 2 maps * (2*T*T*d + 2*T*T*dv) per head, /2 if causal; fwd+bwd = 3.5 * fwd",
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def save(key: str, rows: list) -> None:
        """Write what has been measured so far: a run cut short still leaves its rows."""
        result[key] = rows
        result["complete"] = False
        (args.out / "results.json").write_text(json.dumps(result, indent=2))

    result["matmul"] = bench_matmul(dtype, args.quick)
    print(f"{args.dtype} matmul peak: {_fmt(result['matmul'], 'tflops')} TFLOP/s", flush=True)
    result["parts"] = parts
    if "lm" in parts:
        result["lm_step"] = bench_lm_step(lm_seqlens, args.tokens // 2, dtype, args.quick,
                                          on_row=lambda rows: save("lm_step", rows))
    if "decode" in parts:
        result["decode"] = bench_decode(batches, caches, dims, dtype, args.quick,
                                        on_row=lambda rows: save("decode", rows))
    if "training" in parts:
        result["training"] = bench_training(seqlens, dims, causals, args.tokens, dtype, args.quick,
                                            on_row=lambda rows: save("training", rows))
    result["seconds"] = time.time() - t0
    result["complete"] = True

    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(result))
    plot(result, args.out / "results.png")
    print(f"wrote {args.out / 'results.json'}, results.md, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
