"""Fused Triton differential attention (zoo.kernels.diff_attn) against the naive fp32 reference.

Without a GPU the kernels run in the Triton interpreter (``TRITON_INTERPRET=1``) on CPU tensors at
tiny shapes; that choice is made when triton is first imported, so it is set here before anything
imports triton. If another test module imported triton first (lightning does), the interpreter
tests re-run in a fresh process instead (``test_interpreter_suite_in_fresh_process``).
With a GPU the same small-shape suite runs compiled on CUDA, and the ``gpu`` section adds real sizes
in bf16 / fp16.
"""

import os
import subprocess
import sys

_TRITON_ALREADY_IMPORTED = "triton" in sys.modules

import torch  # noqa: E402  (importing torch does not import triton)

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and not _TRITON_ALREADY_IMPORTED:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from zoo.kernels.diff_attn import (  # noqa: E402
    diff_attention,
    diff_attention_decode,
    diff_attention_reference,
    supports,
)
from zoo.kernels.diff_attn import ops  # noqa: E402

_INTERPRETED, _PROBLEM = ops.interpreter_state()
if _INTERPRETED and not _PROBLEM:
    DEVICE = "cpu"
elif HAS_CUDA and not _INTERPRETED:
    DEVICE = "cuda"
else:
    DEVICE = None  # triton was imported compiled on a machine without a GPU: see the fresh-process test

needs_kernel = pytest.mark.skipif(
    DEVICE is None,
    reason="triton was imported before TRITON_INTERPRET=1 could be set; covered by "
    "test_interpreter_suite_in_fresh_process",
)

# fp32 tolerance (relative Frobenius error). The interpreter's tl.dot is an exact fp32 matmul, so
# kernel and reference differ only in summation order and in exp2-with-running-max versus exp:
# a few fp32 ulps (eps = 1.2e-7) amplified by sums over <= 63 keys and <= 64 channels, observed
# <= 7e-7. 1e-5 keeps a >10x margin; any masking, indexing or GQA-pairing bug is an O(1) error.
# (On a GPU, fp32 tl.dot follows torch.backends.cuda.matmul.allow_tf32, which is off by default.)
FP32_RTOL = 1e-5

# Half-precision tolerance: the kernel rounds P (and dS) to the input dtype before the tensor-core
# dots and its output/grads to the input dtype, like FlashAttention. Its error against the fp32
# reference must stay within 2x the error of the same math done plainly in that dtype
# (reference(upcast=False)), the criterion of the FlashAttention test suite; the floor (relative
# error of 4 unit roundoffs: bf16 4 * 2^-8 = 1.6e-2, fp16 4 * 2^-11 = 2e-3) covers quantities the
# plain half-precision math happens to get almost exactly right.
LOWP_FACTOR = 2.0
LOWP_FLOOR = {torch.bfloat16: 4 * 2.0 ** -8, torch.float16: 4 * 2.0 ** -11}


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in fp64 (absolute error when the reference is exactly zero)."""
    x, ref = x.double(), ref.double()
    den = ref.norm().item()
    num = (x - ref).norm().item()
    return num / den if den > 0 else num


def make_inputs(B, H, Hkv, Tq, Tk, D, DV, lam_kind, *, dtype=torch.float32, device=None, seed=0):
    device = device or DEVICE
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    q1, q2 = rnd(B, H, Tq, D), rnd(B, H, Tq, D)
    k1, k2 = rnd(B, Hkv, Tk, D), rnd(B, Hkv, Tk, D)
    v = rnd(B, Hkv, Tk, DV)
    if lam_kind == "scalar":
        lam = torch.tensor(0.65, device=device)
    elif lam_kind == "head":
        lam = (torch.rand(H, 1, 1, generator=g) * 0.8 + 0.1).to(device)
    else:  # per token, as DiffAttentionV2: sigmoid(Linear(x)) -> [B, H, Tq, 1]
        lam = torch.rand(B, H, Tq, 1, generator=g).to(device)
    return [q1, q2, k1, k2, v, lam]


def make_key_mask(kind, B, Tk, device=None):
    if kind is None:
        return None
    km = torch.ones(B, Tk, dtype=torch.bool)
    if kind == "left_pad":  # batch 1 left-padded: under a causal mask its first queries see no key
        km[1, :5] = False
        km[0, Tk // 2 + 1:] = False  # batch 0 right-padded
    elif kind == "holes_and_empty":  # batch 1 fully padded: every row of it has no visible key
        km[0, ::3] = False
        km[1, :] = False
    return km.to(device or DEVICE)


def check_fwd_bwd(inputs, *, causal, key_mask, rtol, lowp_factor=None):
    """Output and the gradients of all six inputs vs the reference (fp32 upcast of the same inputs)."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = diff_attention(*inputs, causal=causal, key_mask=key_mask)
    assert out.dtype == inputs[0].dtype and out.shape == (*inputs[0].shape[:3], inputs[4].shape[-1])
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, inputs, dout)

    f_in = [t.detach().float().requires_grad_() for t in inputs]
    ref_f = diff_attention_reference(*f_in, causal=causal, key_mask=key_mask)
    ref_grads = torch.autograd.grad(ref_f, f_in, dout.float())

    names = ["out", "dq1", "dq2", "dk1", "dk2", "dv", "dlam"]
    errs = {n: rel_err(a, b) for n, a, b in zip(names, (out, *grads), (ref_f, *ref_grads))}
    for name, g, t in zip(names[1:], grads, inputs):
        assert g.shape == t.shape and g.dtype == t.dtype, name
        assert torch.isfinite(g).all(), name
    if lowp_factor is None:
        bad = {n: e for n, e in errs.items() if e > rtol}
    else:
        # half precision: at most lowp_factor x the error of the same math in plain half precision
        lp_in = [t.detach().clone().requires_grad_() for t in inputs]
        lp = diff_attention_reference(*lp_in, causal=causal, key_mask=key_mask, upcast=False)
        lp_grads = torch.autograd.grad(lp, lp_in, dout)
        lp_errs = {n: rel_err(a, b) for n, a, b in zip(names, (lp, *lp_grads), (ref_f, *ref_grads))}
        bad = {n: (e, lp_errs[n]) for n, e in errs.items() if e > max(lowp_factor * lp_errs[n], rtol)}
    assert not bad, f"relative errors above tolerance: {bad} (all: {errs})"
    return out


# ----------------------------------------------------------------------------------------------
# small shapes: interpreter on CPU, compiled on CUDA

CASES = {
    # id: (B, H, Hkv, Tq, Tk, D, DV, causal, key_mask kind, lambda kind)
    "causal-T17-D16": (2, 2, 2, 17, 17, 16, 32, True, None, "scalar"),
    "noncausal-gqa-T63-D32-token_lam": (1, 4, 2, 63, 63, 32, 64, False, None, "token"),
    "causal-gqa-T63-D32-head_lam": (1, 4, 2, 63, 63, 32, 64, True, None, "head"),
    "kvcache-Tq17-Tk63-mqa-padded": (2, 2, 1, 17, 63, 16, 32, True, "left_pad", "token"),
    "cross-Tq63-Tk17-empty_batch": (2, 2, 1, 63, 17, 16, 32, False, "holes_and_empty", "scalar"),
    "causal-Tq63-Tk17": (1, 2, 1, 63, 17, 16, 32, True, None, "token"),
    "causal-padded-T17-D32": (2, 2, 2, 17, 17, 32, 64, True, "left_pad", "scalar"),
    "T1": (1, 2, 2, 1, 1, 16, 32, True, None, "scalar"),
    "odd_dims-D24-DV40": (1, 2, 1, 17, 17, 24, 40, False, None, "token"),
}


@needs_kernel
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_and_all_gradients_match_reference(case):
    B, H, Hkv, Tq, Tk, D, DV, causal, km_kind, lam_kind = CASES[case]
    inputs = make_inputs(B, H, Hkv, Tq, Tk, D, DV, lam_kind)
    out = check_fwd_bwd(inputs, causal=causal, key_mask=make_key_mask(km_kind, B, Tk), rtol=FP32_RTOL)
    if km_kind == "holes_and_empty":
        assert out[1].abs().max().item() == 0.0  # a fully padded sequence returns zeros
    if km_kind == "left_pad" and causal and Tq == Tk:
        assert out[1, :, :5].abs().max().item() == 0.0  # queries with no visible key return zeros


@needs_kernel
@pytest.mark.parametrize("case", ["causal-gqa-T63-D32-head_lam", "kvcache-Tq17-Tk63-mqa-padded"])
def test_fp16_forward_and_gradients(case):
    """The half-precision casts (P and dS rounded for the dots, fp16 outputs and grads).

    bf16 is covered by the GPU section only: the Triton 3.8 interpreter multiplies the raw bf16 bit
    patterns in tl.dot (numpy has no bfloat16), so bf16 kernels cannot be checked on CPU.
    """
    B, H, Hkv, Tq, Tk, D, DV, causal, km_kind, lam_kind = CASES[case]
    inputs = make_inputs(B, H, Hkv, Tq, Tk, D, DV, lam_kind, dtype=torch.float16)
    check_fwd_bwd(inputs, causal=causal, key_mask=make_key_mask(km_kind, B, Tk),
                  rtol=LOWP_FLOOR[torch.float16], lowp_factor=LOWP_FACTOR)


@needs_kernel
@pytest.mark.skipif(not _INTERPRETED, reason="compiled bf16 is covered by the gpu section")
@pytest.mark.parametrize("tq", [17, 1], ids=["fused", "decode"])
def test_bf16_is_refused_under_the_interpreter_not_silently_wrong(tq):
    """The Triton 3.8 interpreter's tl.dot multiplies the raw bf16 bit patterns (numpy has no bfloat16),
    so bf16 calls returned garbage (relative error ~1e9 in the output and every gradient, fused and
    decode paths alike) while supports() accepted them. Refused by name instead."""
    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 1, tq, 17, 16, 32, "token", dtype=torch.bfloat16)
    ok, why = supports(q1, k1, v, lam, causal=True, key_mask=None, dropout_p=0.0)
    assert not ok and "bf16" in why and "interpreter" in why, why
    with pytest.raises(ValueError, match="bf16"), torch.no_grad():
        diff_attention(q1, q2, k1, k2, v, lam, causal=True)


@needs_kernel
def test_strided_views_as_the_attention_modules_pass_them():
    """q/k sub-heads interleaved per head ([B, H, T, 2, d] views, as DiffAttention) and a [B, T, H, D]
    value transposed to [B, H, T, D]: read through strides, gradients land on the base tensors."""
    B, H, Hkv, T, d, DV = 2, 4, 2, 17, 16, 32
    g = torch.Generator().manual_seed(21)
    q = torch.randn(B, H, T, 2, d, generator=g).to(DEVICE).requires_grad_()
    k = torch.randn(B, Hkv, T, 2, d, generator=g).to(DEVICE).requires_grad_()
    v = torch.randn(B, T, Hkv, DV, generator=g).to(DEVICE).requires_grad_()
    lam = torch.tensor(0.4, device=DEVICE, requires_grad=True)
    dout = torch.randn(B, H, T, DV, generator=g).to(DEVICE)

    def run(fn):
        out = fn(q[..., 0, :], q[..., 1, :], k[..., 0, :], k[..., 1, :], v.transpose(1, 2), lam, causal=True)
        return (out, *torch.autograd.grad(out, (q, k, v, lam), dout))

    got, want = run(diff_attention), run(diff_attention_reference)
    for name, a, b in zip(["out", "dq", "dk", "dv", "dlam"], got, want):
        assert rel_err(a, b) < FP32_RTOL, name


@needs_kernel
def test_offsets_past_2_31_elements_address_the_right_rows():
    """Row offsets are int64: ``tl.arange`` is int32 and so is a stride below 2^31, and the product
    ``row * stride`` wrapped past 2^31 elements (from 524k tokens at a [B, T, H, D] token stride of 4096),
    reading and writing other rows without an error. Here every input is a view with a token stride of
    1.5 * 2^30 elements, so row 2 sits at 3 * 2^30: the wrapped offset (-2^30) still lands inside the
    storage (the views start at 2^30), so the old code read another row's values instead of crashing.
    The storage is 8 GiB of address space, of which the few rows written are touched."""
    T, D, DV, stride, start = 3, 16, 32, 3 * 2 ** 29, 2 ** 30
    try:
        big = torch.empty(start + (T - 1) * stride + 5 * 64, dtype=torch.float16, device=DEVICE)
    except RuntimeError as exc:  # no room for 8 GiB of (mostly untouched) address space
        pytest.skip(f"cannot reserve the 8 GiB storage: {exc}")
    g = torch.Generator().manual_seed(31)

    def view(i, width):  # [1, 1, T, width] at a token stride of `stride` elements
        x = big.as_strided((1, 1, T, width), (T * stride, T * stride, stride, 1), start + 64 * i)
        x.copy_(torch.randn(1, 1, T, width, generator=g))
        return x.requires_grad_()

    inputs = [view(0, D), view(1, D), view(2, D), view(3, D), view(4, DV)]
    lam = torch.tensor(0.6, device=DEVICE)
    with torch.no_grad():
        fwd = diff_attention(*inputs, lam)  # forward without statistics
        dec = diff_attention_decode(*(t[:, :, -1:] for t in inputs[:2]), *inputs[2:], lam)  # split-K
    out = diff_attention(*inputs, lam)  # autograd forward
    dout = torch.randn(out.shape, generator=g).to(out)
    grads = torch.autograd.grad(out, inputs, dout)
    f_in = [t.detach().float().requires_grad_() for t in inputs]
    ref = diff_attention_reference(*f_in, lam)
    ref_grads = torch.autograd.grad(ref, f_in, dout.float())
    # fp16 rounding of the inputs' products over 3 keys: ~1e-3; a row read from the wrong place: O(1)
    errs = {n: rel_err(a, b) for n, a, b in zip(
        ["fwd", "decode", "out", "dq1", "dq2", "dk1", "dk2", "dv"],
        (fwd, dec, out, *grads), (ref, ref[:, :, -1:], ref, *ref_grads))}
    assert max(errs.values()) < 1e-2, errs


@needs_kernel
def test_only_tensors_past_int32_row_offsets_take_the_int64_kernels():
    """The int64 row / key arithmetic (I64) is compiled in only where an offset within one (batch, head) slice
    passes 2^31 - 1: every other call runs the int32 arithmetic the GPU timings were measured on. [B, T, H, D]
    views (token stride H * D = 4096) reach 2^31 - 1 exactly at T = 524288 (the last element of the last row);
    batch and head strides do not count (those offsets are int64 in the kernels)."""
    def qkv_view(T, B=1):  # [B, H, T, D] over a [B, T, H, D] buffer, as the attention modules pass them
        return torch.empty(B, T, 32, 128, device="meta").transpose(1, 2)

    assert not ops._needs_i64(qkv_view(2048, B=64), qkv_view(524288), None)
    assert ops._needs_i64(qkv_view(524289))
    assert ops._needs_i64(None, torch.empty(1, 2 ** 31 + 1, device="meta", dtype=torch.bool))  # a key mask
    assert not ops._needs_i64(torch.empty(70000, 32768, device="meta", dtype=torch.bool))  # its batch stride


@needs_kernel
@pytest.mark.parametrize("tq", [5, 1], ids=["fused", "decode"])
def test_batches_past_the_cuda_grid_limit_launch_in_slices(monkeypatch, tq):
    """The batch is a launch grid's axis z (y in the decode reduction), which CUDA caps at 65535 programs: a
    larger batch (PatchTST folds channels into it: 128 windows x 862 traffic sensors) failed to launch with
    'invalid argument', under auto too. Launches now take slices of at most MAX_GRID_BATCH rows; the cap is
    lowered to 2 here for a batch of 5 (per-row lambda and key mask cut with it), and no launch sees more."""
    batches = []
    real = ops._on_device
    monkeypatch.setattr(ops, "_on_device", lambda t: batches.append(t.shape[0]) or real(t))  # once per launch
    monkeypatch.setattr(ops, "MAX_GRID_BATCH", 2, raising=False)
    inputs = make_inputs(5, 2, 1, tq, 7, 16, 32, "token", seed=17)
    km = make_key_mask("left_pad", 5, 7)
    km[4, 1:3] = False
    check_fwd_bwd(inputs, causal=True, key_mask=km, rtol=FP32_RTOL)  # autograd forward and backward
    with torch.no_grad():  # the forward without statistics, or the split-K decode step
        out = diff_attention(*inputs, causal=True, key_mask=km)
    assert rel_err(out, diff_attention_reference(*inputs, causal=True, key_mask=km)) < FP32_RTOL
    assert batches and max(batches) <= 2, batches


def test_heads_past_the_cuda_grid_limit_are_declined_by_name(monkeypatch):
    """The heads are axis y of the launch grids (KV heads in dK/dV and the decode split), which CUDA caps at 65535
    programs like the batch's axis z, but only the batch was cut into launches: more heads failed to launch with
    'invalid argument'. supports() declines them by name (``auto`` then runs the call on SDPA) and a forced
    ``triton`` raises that reason; the cap is lowered to 2 here."""
    from zoo.nn.functional import diff_attention as functional_diff_attention

    monkeypatch.setattr(ops, "MAX_GRID_HEADS", 2, raising=False)
    q, k, v = _t(1, 4, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 32)
    ok, why = supports(q, k, v, _t(), causal=True, key_mask=None, dropout_p=0.0)
    assert not ok and "4 query heads exceed the 2 programs" in why, why
    with pytest.raises(ValueError, match="4 query heads exceed"):
        diff_attention(q, q, k, k, v, 0.5, causal=True)
    if DEVICE is not None:
        with pytest.raises(ValueError, match="4 query heads exceed"):
            functional_diff_attention(q, q, k, k, v, torch.tensor(0.5), causal=True, backend="triton")
        small = [t[:, :2] for t in (q, q, k, k, v)]
        assert supports(small[0], small[2], small[4], _t(), causal=True, key_mask=None, dropout_p=0.0) == (True, "")


@needs_kernel
@pytest.mark.parametrize("attn_type", ["diff", "diff_v2", "dint", "gda", "shared_diff", "vanilla"])
def test_every_attention_type_on_the_triton_backend_matches_the_naive_backend(attn_type):
    """Each registered layer forced to ``triton`` (attn_backend / $ZOO_ATTN_BACKEND): one KV head, causal self-attention
    with RoPE and a left-padded row (forward and input gradients), a KV-cache decode in chunks and single steps, and
    cross-attention with a fully padded context, against the same weights on the ``naive`` backend (the fp32
    reference that tests/nn/test_attention.py checks against float64 math). dint and vanilla run their single maps on
    SDPA there."""
    import copy

    from zoo.nn import KVCache, build_attention, list_attention_types

    assert attn_type in list_attention_types()
    extra = {"signal_ratio": 2} if attn_type == "gda" else {}
    torch.manual_seed(30)
    fused = build_attention(attn_type, 32, 4, n_kv_heads=1, causal=True, rope=True, backend="triton", **extra).eval()
    naive = copy.deepcopy(fused)
    naive.backend = "naive"
    x = torch.randn(2, 8, 32, device=DEVICE)
    km = torch.ones(2, 8, dtype=torch.bool, device=DEVICE)
    km[1, :3] = False
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [m(t, key_mask=km) for m, t in zip((fused, naive), xs)]
    grads = [torch.autograd.grad(o.square().sum(), t)[0] for o, t in zip(outs, xs)]
    assert rel_err(outs[0], outs[1]) < FP32_RTOL and rel_err(grads[0], grads[1]) < FP32_RTOL
    with torch.no_grad():
        cache, parts, t = KVCache(8), [], 0
        for c in (4, 1, 1, 2):
            parts.append(fused(x[:, t:t + c], key_mask=km[:, :t + c], cache=cache))
            t += c
        assert rel_err(torch.cat(parts, 1), outs[1]) < FP32_RTOL
        cross = build_attention(attn_type, 32, 4, n_kv_heads=1, kv_dim=24, backend="triton", **extra).eval()
        cross_naive = copy.deepcopy(cross)
        cross_naive.backend = "naive"
        ctx = torch.randn(2, 5, 24, device=DEVICE)
        cm = torch.ones(2, 5, dtype=torch.bool, device=DEVICE)
        cm[1] = False
        got, want = cross(x, ctx, key_mask=cm), cross_naive(x, ctx, key_mask=cm)
    assert rel_err(got, want) < FP32_RTOL and got[1].abs().max() == 0


@needs_kernel
def test_gqa_pairing_map2_uses_its_groups_k2():
    """Query head h uses KV group h // (H // Hkv), map 1 with k1[g] and map 2 with k2[g]."""
    B, H, Hkv, T, D, DV = 1, 4, 2, 17, 16, 32
    q1, q2, k1, k2, v, lam = make_inputs(B, H, Hkv, T, T, D, DV, "scalar", seed=3)
    out = diff_attention(q1, q2, k1, k2, v, lam)
    scale = D ** -0.5
    for h in range(H):
        g = h // (H // Hkv)
        a1 = torch.softmax(q1[0, h] @ k1[0, g].T * scale, -1)
        a2 = torch.softmax(q2[0, h] @ k2[0, g].T * scale, -1)
        expected = (a1 - lam * a2) @ v[0, g]
        assert rel_err(out[0, h], expected) < FP32_RTOL, h


@needs_kernel
def test_no_grad_forward_equals_autograd_forward():
    inputs = make_inputs(2, 4, 2, 17, 40, 16, 32, "token")
    km = make_key_mask("left_pad", 2, 40)
    with torch.no_grad():
        plain = diff_attention(*inputs, causal=True, key_mask=km)
    graded = diff_attention(*[t.clone().requires_grad_() for t in inputs], causal=True, key_mask=km)
    assert torch.equal(plain, graded.detach())


@needs_kernel
@pytest.mark.parametrize("num_splits", [None, 1, 3, 4])
def test_decode_equals_last_row_of_full_forward(num_splits):
    B, H, Hkv, T, D, DV = 2, 4, 2, 63, 16, 32
    q1, q2, k1, k2, v, lam = make_inputs(B, H, Hkv, T, T, D, DV, "token", seed=5)
    km = make_key_mask("holes_and_empty", B, T)
    with torch.no_grad():
        full = diff_attention(q1, q2, k1, k2, v, lam, causal=False, key_mask=km)
        dec = diff_attention_decode(q1[:, :, -1:], q2[:, :, -1:], k1, k2, v, lam[:, :, -1:], key_mask=km,
                                    num_splits=num_splits)
    ref = diff_attention_reference(q1[:, :, -1:], q2[:, :, -1:], k1, k2, v, lam[:, :, -1:], key_mask=km)
    assert dec.shape == (B, H, 1, DV)
    assert rel_err(dec, full[:, :, -1:]) < FP32_RTOL
    assert rel_err(dec, ref) < FP32_RTOL
    assert dec[1].abs().max().item() == 0.0  # fully padded cache


@needs_kernel
def test_decode_short_cache_and_single_query_dispatch():
    q1, q2, k1, k2, v, lam = make_inputs(2, 2, 1, 1, 1, 16, 32, "scalar", seed=7)
    with torch.no_grad():
        dec = diff_attention_decode(q1, q2, k1, k2, v, lam)
    assert rel_err(dec, diff_attention_reference(q1, q2, k1, k2, v, lam)) < FP32_RTOL
    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 2, 1, 33, 16, 16, "scalar", seed=8)
    with torch.no_grad():  # Tq == 1 without grad goes through the decode kernels
        out = diff_attention(q1, q2, k1, k2, v, lam, causal=True)
    assert rel_err(out, diff_attention_reference(q1, q2, k1, k2, v, lam, causal=True)) < FP32_RTOL


@needs_kernel
def test_functional_triton_backend_matches_naive_backend():
    from zoo.nn.functional import diff_attention as functional_diff_attention

    q1, q2, k1, k2, v, lam = make_inputs(2, 4, 2, 17, 17, 16, 32, "scalar", seed=11)
    km = make_key_mask("left_pad", 2, 17)
    tri = functional_diff_attention(q1, q2, k1, k2, v, lam, causal=True, key_mask=km, backend="triton")
    naive = functional_diff_attention(q1, q2, k1, k2, v, lam, causal=True, key_mask=km, backend="naive")
    assert rel_err(tri, naive) < FP32_RTOL


# ----------------------------------------------------------------------------------------------
# supports(): refusals name their reason


def _t(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype, device=DEVICE or "cpu")


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(dropout_p=0.1), "dropout"),
        (dict(q=_t(1, 2, 8, 256), k=_t(1, 2, 8, 256), v=_t(1, 2, 8, 512)), "head dim 256"),
        (dict(v=_t(1, 2, 8, 512)), "v head dim 512"),
        (dict(q=_t(1, 2, 8, 16, dtype=torch.float64), k=_t(1, 2, 8, 16, dtype=torch.float64),
              v=_t(1, 2, 8, 32, dtype=torch.float64)), "dtype"),
        (dict(k=_t(1, 2, 8, 16, dtype=torch.float16)), "dtypes differ"),
        (dict(q=_t(1, 3, 8, 16)), "multiple of KV heads"),
        (dict(lam=_t(1, 5, 8, 1)), "broadcast"),
        (dict(lam=_t(2, 1, 1, 1)), "broadcast"),  # broadcasts *with* [B=1, H, Tq, 1] but widens it to B=2
        (dict(lam=_t(1, 2, 8, 32)), "broadcast"),  # per channel: not a [B, H, Tq, 1] lambda
        (dict(key_mask=_t(1, 8)), "key_mask"),
        (dict(q=_t(1, 2, 0, 16)), "empty"),
        (dict(q=_t(2, 8, 16)), "4-d"),
    ],
    ids=["dropout", "qk_dim", "v_dim", "float64", "mixed_dtype", "heads", "lambda_shape", "lambda_widens_batch",
         "lambda_per_channel", "mask_dtype",
         "empty", "rank"],
)
def test_supports_refuses_with_reason(kwargs, needle):
    args = dict(q=_t(1, 2, 8, 16), k=_t(1, 2, 8, 16), v=_t(1, 2, 8, 32), lam=_t(), key_mask=None,
                dropout_p=0.0)
    args.update(kwargs)
    ok, why = supports(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("lam"), causal=True, **args)
    assert not ok and needle in why, why


def test_supports_accepts_and_reports_cpu_policy(monkeypatch):
    q, k, v = _t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 32)
    if DEVICE is not None:
        assert supports(q, k, v, _t(1, 2, 8, 1), causal=True, key_mask=None, dropout_p=0.0) == (True, "")
    # A CPU tensor without the interpreter is refused with the fix in the reason.
    monkeypatch.setattr(ops, "interpreter_state", lambda: (False, ""))
    ok, why = supports(q.cpu(), k.cpu(), v.cpu(), _t().cpu(), causal=False, key_mask=None, dropout_p=0.0)
    assert not ok and "TRITON_INTERPRET=1" in why
    # diff_attention itself refuses what supports() refuses, naming the problem.
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        diff_attention(q.cpu(), q.cpu(), k.cpu(), k.cpu(), v.cpu(), 0.5)


def test_lambda_that_does_not_fit_is_refused_by_name():
    """A lambda that broadcasts with [B, H, Tq, 1] but not to it is refused before the launch (it was
    accepted by supports() and then failed inside the launcher with a bare broadcast RuntimeError)."""
    q, k, v = _t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 32)
    with pytest.raises(ValueError, match="does not broadcast to"):
        diff_attention(q, q, k, k, v, _t(2, 1, 1, 1))


def test_functional_triton_backend_sends_cpu_tensors_to_pytorch_without_interpreter(monkeypatch):
    """backend="triton" (ZOO_ATTN_BACKEND=triton, attn_backend: triton) on CPU tensors without the
    Triton interpreter takes the PyTorch path instead of raising (a model forced to triton runs on CPU)."""
    from zoo.nn.functional import diff_attention as functional_diff_attention

    g = torch.Generator().manual_seed(4)
    q1, q2 = torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    k1, k2 = torch.randn(2, 1, 7, 8, generator=g), torch.randn(2, 1, 7, 8, generator=g)
    v = torch.randn(2, 1, 7, 16, generator=g)
    km = torch.ones(2, 7, dtype=torch.bool)
    km[1, :3] = False
    monkeypatch.setattr(ops, "interpreter_state", lambda: (False, ""))  # as a plain CPU process
    got = functional_diff_attention(q1, q2, k1, k2, v, 0.3, causal=True, key_mask=km, backend="triton")
    want = diff_attention_reference(q1, q2, k1, k2, v, 0.3, causal=True, key_mask=km)
    assert rel_err(got, want) < 1e-5


@needs_kernel
def test_functional_triton_backend_uses_the_kernel_under_the_interpreter(monkeypatch):
    """With TRITON_INTERPRET=1 a forced triton backend still runs the kernel on CPU tensors."""
    import zoo.kernels.diff_attn as impl
    from zoo.nn.functional import diff_attention as functional_diff_attention

    calls = []
    real = impl.diff_attention
    monkeypatch.setattr(impl, "diff_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q1, q2, k1, k2, v, lam = make_inputs(1, 2, 1, 5, 5, 16, 16, "scalar", seed=9)
    out = functional_diff_attention(q1, q2, k1, k2, v, lam, causal=True, backend="triton")
    assert calls and rel_err(out, diff_attention_reference(q1, q2, k1, k2, v, lam, causal=True)) < FP32_RTOL


@needs_kernel
@pytest.mark.parametrize("B, Tq, Tk", [(0, 5, 5), (2, 0, 5), (2, 5, 0)], ids=["batch0", "tq0", "tk0"])
def test_functional_triton_backend_serves_empty_calls(B, Tq, Tk):
    """A layer forced to triton (ZOO_ATTN_BACKEND=triton, attn_backend: triton) on an empty batch or sequence:
    B = 0 is a batch like any other (tests/nn/test_attention.py), as on auto / sdpa / naive; the kernel declines
    empty tensors, so the call raised 'backend triton cannot run this call: empty tensors'. With no key at all
    (Tk = 0) every query returns zeros, the documented rule for a query without a visible key."""
    from zoo.nn.functional import diff_attention as functional_diff_attention

    inputs = [t.requires_grad_() for t in make_inputs(B, 2, 1, Tq, Tk, 16, 32, "scalar", seed=12)]
    out = functional_diff_attention(*inputs, causal=True, backend="triton")
    assert out.shape == (B, 2, Tq, 32) and out.dtype == torch.float32
    assert out.abs().sum().item() == 0.0
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    for g, t in zip(grads, inputs):
        assert g is None or (g.shape == t.shape and g.abs().sum().item() == 0.0)


@needs_kernel
@pytest.mark.parametrize("launcher", ["_forward", "_backward", "_decode"])
def test_kernel_out_of_resources_falls_back_under_auto_and_is_named_when_forced(monkeypatch, launcher):
    """A kernel whose tiles do not fit the GPU's shared memory (fp32 at head dims 128 / 256 on a GPU with ~100 KB)
    raises triton's OutOfResources at launch, with no shape and no way out: it crashed a model under `auto`. Under
    `auto` the call (forward, backward or decode step) runs on SDPA with one warning; a forced `triton` names the
    shape and the backends that run it. The launch failure is simulated (no GPU here); the rest is the real path."""
    import zoo.nn.functional as zf
    from triton.runtime.errors import OutOfResources

    def no_room(*args, **kwargs):
        raise OutOfResources(232448, 101376, "shared memory")

    monkeypatch.setattr(ops, launcher, no_room)
    monkeypatch.setattr(ops, "_NO_ROOM", set(), raising=False)
    tq = 1 if launcher == "_decode" else 5
    grad = launcher != "_decode"
    inputs = make_inputs(2, 2, 1, tq, 7, 16, 32, "head", seed=13)
    km = make_key_mask("left_pad", 2, 7)
    inputs = [t.requires_grad_(grad) for t in inputs]
    dout = torch.randn(2, 2, tq, 32, generator=torch.Generator().manual_seed(2))

    def run(backend):
        out = zf.diff_attention(*inputs, causal=True, key_mask=km, backend=backend)
        return (out, *torch.autograd.grad(out, inputs, dout)) if grad else (out,)

    with pytest.raises(RuntimeError) as exc:
        run("triton")
    for needle in ("does not fit this GPU", "q(2, 2, %d, 16) k(2, 1, 7, 16) v(2, 1, 7, 32) float32" % tq,
                   "shared memory", "'auto'", "'sdpa'"):
        assert needle in str(exc.value)
    # auto: as on a CUDA tensor the kernel supports (CPU tensors never reach the kernel under auto)
    monkeypatch.setattr(zf, "_pick", lambda *args, **kwargs: "triton")
    with pytest.warns(RuntimeWarning) as record:
        got = run("auto")
        again = run("auto")  # the shape is remembered: straight to SDPA, no second warning
    assert len(record) == 1 and "does not fit this GPU" in str(record[0].message)
    ref_in = [t.detach().requires_grad_(grad) for t in inputs]
    ref = diff_attention_reference(*ref_in, causal=True, key_mask=km)
    want = (ref, *torch.autograd.grad(ref, ref_in, dout)) if grad else (ref,)
    for a, b, c in zip(got, again, want):
        assert rel_err(a, c) < FP32_RTOL and rel_err(b, c) < FP32_RTOL


@needs_kernel
@pytest.mark.parametrize("failing", ["_decode", "_backward"])
def test_out_of_resources_of_one_kind_of_call_leaves_the_other_kinds_on_the_kernel(monkeypatch, failing):
    """The memory of kernels that do not fit the GPU was keyed by shape class only: a decode step that ran out of
    resources (split-K kernels) sent training calls of the same head dims (forward and backward kernels) to SDPA
    for the rest of the process, and a backward that did not fit sent inference forwards and decode steps there.
    Each kind of call is remembered on its own; the others keep launching the kernel and stay exact."""
    import warnings

    import zoo.nn.functional as zf
    from triton.runtime.errors import OutOfResources

    launched = []

    def spy(name):
        real = getattr(ops, name)

        def launch(*args, **kwargs):
            launched.append(name)
            if name == failing:
                raise OutOfResources(232448, 101376, "shared memory")
            return real(*args, **kwargs)
        return launch

    for name in ("_forward", "_backward", "_decode"):
        monkeypatch.setattr(ops, name, spy(name))
    monkeypatch.setattr(ops, "_NO_ROOM", set(), raising=False)
    monkeypatch.setattr(zf, "_pick", lambda *args, **kwargs: "triton")  # auto, as on a CUDA tensor
    km = make_key_mask("left_pad", 2, 7)

    def call(tq, grad, seed):
        inputs = [t.requires_grad_(grad) for t in make_inputs(2, 2, 1, tq, 7, 16, 32, "head", seed=seed)]
        with torch.set_grad_enabled(grad):
            out = zf.diff_attention(*inputs, causal=True, key_mask=km, backend="auto")
            got = (out, *torch.autograd.grad(out.sum(), inputs)) if grad else (out,)
        ref_in = [t.detach().requires_grad_(grad) for t in inputs]
        ref = diff_attention_reference(*ref_in, causal=True, key_mask=km)
        want = (ref, *torch.autograd.grad(ref.sum(), ref_in)) if grad else (ref,)
        for a, b in zip(got, want):
            assert rel_err(a, b) < FP32_RTOL

    with pytest.warns(RuntimeWarning, match="does not fit this GPU"):
        call(1, False, 20) if failing == "_decode" else call(5, True, 20)
    assert len(ops._NO_ROOM) == 1
    launched.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call(5, True, 21)  # training
        call(5, False, 22)  # inference forward
        call(1, False, 23)  # decode step
    expected = {"_decode": ["_forward", "_backward", "_forward"], "_backward": ["_forward", "_decode"]}[failing]
    assert launched == expected, launched


@needs_kernel
@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"), reason="torch < 2.9")
@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_fp32_runs_under_the_new_tf32_api(precision):
    """torch >= 2.9: after torch.backends.cuda.matmul.fp32_precision is set, reading the legacy
    allow_tf32 flag raises; fp32 calls of the kernel failed with that RuntimeError. The kernel's fp32
    dot precision follows the new setting."""
    matmul = torch.backends.cuda.matmul
    old = matmul.fp32_precision
    matmul.fp32_precision = precision
    try:
        assert ops._dot_precision(torch.float32) == precision
        q1, q2, k1, k2, v, lam = make_inputs(1, 2, 1, 5, 5, 16, 16, "scalar", seed=10)
        out = diff_attention(q1, q2, k1, k2, v, lam, causal=True)
    finally:
        matmul.fp32_precision = old
    # tf32 rounds the dot inputs to 10 mantissa bits (where the backend honours it)
    tol = 1e-2 if precision == "tf32" else FP32_RTOL
    assert rel_err(out, diff_attention_reference(q1, q2, k1, k2, v, lam, causal=True)) < tol


def test_mismatched_maps_raise():
    q, k, v = _t(1, 2, 8, 16), _t(1, 2, 8, 16), _t(1, 2, 8, 32)
    with pytest.raises(ValueError, match="two maps disagree"):
        diff_attention(q, _t(1, 2, 9, 16), k, k, v, 0.5)


@pytest.mark.skipif(DEVICE is not None, reason="the interpreter suite ran in this process")
def test_interpreter_suite_in_fresh_process():
    """triton was imported (compiled) before this module could ask for the interpreter: re-run."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-m", "not gpu"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]


# ----------------------------------------------------------------------------------------------
# GPU: real sizes in half precision

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
compiled = pytest.mark.skipif(HAS_CUDA and DEVICE != "cuda", reason="TRITON_INTERPRET=1 is set: kernels are interpreted")

GPU_CASES = {
    # id: (B, H, Hkv, Tq, Tk, D, causal, key_mask kind, lambda kind)  -- DV = 2 * D
    "d32-causal-T1000": (2, 8, 4, 1000, 1000, 32, True, None, "scalar"),
    "d64-noncausal-T1023-token": (2, 8, 8, 1023, 1023, 64, False, None, "token"),
    "d96-causal-gqa-T777-padded": (2, 8, 2, 777, 777, 96, True, "left_pad", "scalar"),
    "d128-causal-T2048": (1, 8, 4, 2048, 2048, 128, True, None, "head"),
    "d128-kvcache-Tq129-Tk2000": (2, 4, 2, 129, 2000, 128, True, "left_pad", "token"),
}


@pytest.mark.gpu
@needs_cuda
@compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", list(GPU_CASES), ids=list(GPU_CASES))
def test_gpu_forward_backward_half(case, dtype):
    B, H, Hkv, Tq, Tk, D, causal, km_kind, lam_kind = GPU_CASES[case]
    inputs = make_inputs(B, H, Hkv, Tq, Tk, D, 2 * D, lam_kind, dtype=dtype, device="cuda")
    check_fwd_bwd(inputs, causal=causal, key_mask=make_key_mask(km_kind, B, Tk, "cuda"),
                  rtol=LOWP_FLOOR[dtype], lowp_factor=LOWP_FACTOR)


@pytest.mark.gpu
@needs_cuda
@compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D, Tk", [(64, 4097), (128, 16000)])
def test_gpu_decode_equals_last_row_of_full_forward(dtype, D, Tk):
    B, H, Hkv = 4, 16, 4
    # 64 queries at the end of the cache: causal and bottom-right aligned, the last one sees it all
    q1, q2, k1, k2, v, lam = make_inputs(B, H, Hkv, 64, Tk, D, 2 * D, "token", dtype=dtype, device="cuda")
    km = make_key_mask("left_pad", B, Tk, "cuda")
    with torch.no_grad():
        full = diff_attention(q1, q2, k1, k2, v, lam, causal=True, key_mask=km)  # last row sees all
        dec = diff_attention_decode(q1[:, :, -1:], q2[:, :, -1:], k1, k2, v, lam[:, :, -1:], key_mask=km)
    ref = diff_attention_reference(q1[:, :, -1:], q2[:, :, -1:], k1, k2, v, lam[:, :, -1:], key_mask=km)
    # Both kernels accumulate in fp32 but round P to the input dtype against different running
    # maxima (whole row vs per split); the output itself is rounded to the dtype: a few units of eps.
    tol = LOWP_FLOOR[dtype]
    assert rel_err(dec, full[:, :, -1:]) < tol
    assert rel_err(dec, ref) < tol


@pytest.mark.gpu
@needs_cuda
@compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gpu_lm_step_triton_backend(dtype):
    """The whole path a user trains through: a zoo LM (GQA, RoPE, per-head lambda, padded keys)
    under autocast with attn_backend="triton" against the same model in fp32 with the naive
    backend. Its logits and every parameter gradient must be as close as SDPA's in the same dtype."""
    from zoo.models.lm import DiffTransformerLM, LMConfig

    B, T = 2, 600
    ids = torch.randint(0, 300, (B, T + 1), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    mask = torch.ones(B, T, dtype=torch.long, device="cuda")
    mask[1, :37] = 0  # left padding

    def run(backend, autocast):
        torch.manual_seed(0)
        cfg = LMConfig(vocab_size=300, dim=256, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=T,
                       attn_backend=backend)
        model = DiffTransformerLM(cfg).cuda()
        with torch.autocast("cuda", dtype=dtype, enabled=autocast):
            logits = model(ids[:, :-1], attention_mask=mask)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(),
                                                 reduction="none")
        (loss * mask.flatten()).sum().div(mask.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return logits.float()[mask.bool()], grads

    ref_logits, ref_grads = run("naive", autocast=False)
    sdpa_logits, sdpa_grads = run("sdpa", autocast=True)
    tri_logits, tri_grads = run("triton", autocast=True)
    floor = LOWP_FLOOR[dtype]
    for name, got, plain, ref in (("logits", tri_logits, sdpa_logits, ref_logits),
                                  ("grads", tri_grads, sdpa_grads, ref_grads)):
        e, e_plain = rel_err(got, ref), rel_err(plain, ref)
        assert e <= max(LOWP_FACTOR * e_plain, floor), f"{name}: triton {e:.2e} vs sdpa {e_plain:.2e}"


TILE_CASES = [(table, width, i) for table in ("fwd", "dkdv", "dq") for width in ("small", "wide")
              for i in range(len(ops.candidates(table, width, interpret=False, autotune=True)))]


@pytest.mark.gpu
@needs_cuda
@compiled
@pytest.mark.parametrize("table, width, index", TILE_CASES, ids=[f"{t}-{w}-{i}" for t, w, i in TILE_CASES])
def test_gpu_every_candidate_tile(monkeypatch, table, width, index):
    """Each tile the autotuner may pick computes the right thing: the tuned runs (benchmark, training)
    only time the candidates, and the other GPU tests run one tile (ZOO_DIFF_ATTN_AUTOTUNE=0). This
    kernel runs with tile ``index`` alone, the other two kernels with their default single tile, on a
    causal GQA shape with left padding and per-token lambda whose length is not a multiple of any tile."""
    from triton.runtime.errors import OutOfResources

    tile = ops.candidates(table, width, interpret=False, autotune=True)[index]
    real = ops.candidates

    def only(t, w, interpret, autotune):
        return [tile] if (t, w) == (table, width) else real(t, w, interpret, autotune=False)

    monkeypatch.setattr(ops, "candidates", only)
    ops._tuned.cache_clear()
    try:
        D = 64 if width == "small" else 128  # v head dim 2D: 128 -> "small" tiles, 256 -> "wide"
        inputs = make_inputs(2, 4, 2, 300, 300, D, 2 * D, "token", dtype=torch.bfloat16, device="cuda")
        check_fwd_bwd(inputs, causal=True, key_mask=make_key_mask("left_pad", 2, 300, "cuda"),
                      rtol=LOWP_FLOOR[torch.bfloat16], lowp_factor=LOWP_FACTOR)
    except OutOfResources as e:  # the autotuner skips such a tile on this GPU; it never runs here
        pytest.skip(f"tile {tile} does not fit this GPU ({e}); the autotuner leaves it out")
    finally:
        ops._tuned.cache_clear()


def test_autotune_switch(monkeypatch):
    """ZOO_DIFF_ATTN_AUTOTUNE=0 compiles one tile per kernel; anything unknown is refused by name."""
    for table, width in [("fwd", "small"), ("fwd", "wide"), ("dkdv", "wide"), ("dq", "small")]:
        full = ops.candidates(table, width, interpret=False, autotune=True)
        assert len(full) > 1
        assert ops.candidates(table, width, interpret=False, autotune=False) == [full[-1]]
        assert len(ops.candidates(table, width, interpret=True, autotune=True)) == 1
    monkeypatch.delenv(ops.AUTOTUNE_ENV, raising=False)
    assert ops.autotune_enabled()
    for off in ("0", "off", "False"):
        monkeypatch.setenv(ops.AUTOTUNE_ENV, off)
        assert not ops.autotune_enabled()
    monkeypatch.setenv(ops.AUTOTUNE_ENV, "sometimes")
    with pytest.raises(ValueError, match="ZOO_DIFF_ATTN_AUTOTUNE='sometimes'"):
        ops.autotune_enabled()
