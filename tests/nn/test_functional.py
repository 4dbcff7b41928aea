"""Tests of the functional attention ops ``zoo.nn.functional.attention`` / ``diff_attention``.

Every number is checked against an independent reference written here: explicit softmax with
``torch.einsum`` in float64, a causal mask built by hand with Python loops, and GQA done by explicit
per-head group indexing (never the op's own ``repeat_interleave``).
"""

from __future__ import annotations

import math

import pytest
import torch

import zoo.nn.functional as zf
from zoo.nn.functional import attention, diff_attention, resolve_backend

BACKENDS_UNDER_TEST = ("naive", "sdpa")

# (Tq, Tk): T = 1, 63, 200, self-attention shapes and cross-attention shapes (Tq != Tk).
# (200, 63) with causal=True leaves the first 137 queries with no visible key (bottom-right
# alignment puts them at negative absolute positions): they must come out as zeros.
SHAPES = [(1, 1), (63, 63), (200, 200), (1, 200), (63, 200), (200, 63)]
HEAD_DIMS = [16, 60]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


# --------------------------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------------------------


def hand_causal_mask(tq: int, tk: int) -> torch.Tensor:
    """Bottom-right causal mask by explicit loops: query i sits at absolute position tk - tq + i."""
    rows = []
    for i in range(tq):
        qpos = tk - tq + i
        rows.append([kpos <= qpos for kpos in range(tk)])
    return torch.tensor(rows, dtype=torch.bool).reshape(tq, tk)


def ref_visible(batch: int, tq: int, tk: int, causal: bool, key_mask) -> torch.Tensor:
    vis = torch.ones(batch, 1, tq, tk, dtype=torch.bool)
    if causal:
        vis = vis & hand_causal_mask(tq, tk)[None, None]
    if key_mask is not None:  # [B, Tk], or per query [B, Tq, Tk]
        vis = vis & (key_mask[:, None] if key_mask.dim() == 3 else key_mask[:, None, None, :])
    return vis


def ref_softmax(s: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """exp(s - max) / sum over visible keys; a row with no visible key gives all zeros."""
    s = s.masked_fill(~vis, float("-inf"))
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.where(vis, torch.exp(s - m), torch.zeros_like(s))
    den = e.sum(-1, keepdim=True)
    return e / torch.where(den > 0, den, torch.ones_like(den))


def ref_attention(q, k, v, *, causal=False, key_mask=None, scale=None) -> torch.Tensor:
    """float64 softmax attention; query head h reads KV group h // (H // Hkv) by explicit indexing."""
    B, H, tq, D = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    group = torch.tensor([h // (H // hkv) for h in range(H)])
    k, v = k.double()[:, group], v.double()[:, group]
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k) * scale
    p = ref_softmax(s, ref_visible(B, tq, tk, causal, key_mask))
    return torch.einsum("bhqk,bhkd->bhqd", p, v)


def ref_diff_attention(q1, q2, k1, k2, v, lam, *, causal=False, key_mask=None, scale=None):
    o1 = ref_attention(q1, k1, v, causal=causal, key_mask=key_mask, scale=scale)
    o2 = ref_attention(q2, k2, v, causal=causal, key_mask=key_mask, scale=scale)
    return o1 - lam.double() * o2


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_key_mask(batch: int, tk: int, seed: int) -> torch.Tensor:
    """Row 0 all real, row 1 random holes (~30% pad, first key kept), row 2 fully masked."""
    torch.manual_seed(seed)
    m = torch.ones(batch, tk, dtype=torch.bool)
    m[1] = torch.rand(tk) > 0.3
    m[1, 0] = True
    m[2] = False
    return m


def make_lam(kind: str, batch: int, heads: int, tq: int, dtype) -> torch.Tensor:
    if kind == "scalar":
        return torch.tensor(0.7, dtype=dtype)
    if kind == "head":
        return (torch.randn(heads, 1, 1) * 0.5 + 0.5).to(dtype)
    if kind == "token":
        return torch.rand(batch, heads, tq, 1).to(dtype)
    raise AssertionError(kind)


def leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def run_with_grads(fn, inputs, grad_out):
    """Run fn on fresh leaf copies of inputs; return (output, [grad of each input])."""
    xs = [leaf(x) for x in inputs]
    out = fn(*xs)
    (out.double() * grad_out.double()).sum().backward()
    return out.detach(), [x.grad for x in xs]


def assert_close(actual, expected, atol, rtol, what=""):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def rel_err(actual, expected) -> float:
    """||a - e|| / ||e|| (the flash-linear-attention style check for low-precision dtypes)."""
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm().clamp_min(1e-12)).item()


# --------------------------------------------------------------------------------------------
# 1. backends vs the independent float64 reference, fp32
# --------------------------------------------------------------------------------------------

B, H, HKV = 3, 4, 2  # GQA (n_rep = 2) throughout the backend tests


@pytest.mark.parametrize("tq,tk", SHAPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_backends_match_reference_fp32(tq, tk, d, causal, masked):
    torch.manual_seed(1000 * tq + tk + d)
    q = torch.randn(B, H, tq, d)
    k = torch.randn(B, HKV, tk, d)
    v = torch.randn(B, HKV, tk, d + 4)  # v width != qk width catches mixed-up dims
    key_mask = make_key_mask(B, tk, seed=tk) if masked else None
    g = torch.randn(B, H, tq, d + 4)

    ref, ref_grads = run_with_grads(
        lambda q, k, v: ref_attention(q, k, v, causal=causal, key_mask=key_mask), [q.double(), k.double(), v.double()], g
    )
    results = {}
    for backend in BACKENDS_UNDER_TEST:
        out, grads = run_with_grads(
            lambda q, k, v: attention(q, k, v, causal=causal, key_mask=key_mask, backend=backend), [q, k, v], g
        )
        assert out.dtype == torch.float32 and out.shape == (B, H, tq, d + 4)
        assert_close(out, ref, 1e-5, 1e-5, f"{backend} output")
        for name, a, e in zip("qkv", grads, ref_grads):
            assert torch.isfinite(a).all(), f"{backend} d{name} has non-finite values"
            assert_close(a, e, 1e-5, 1e-5, f"{backend} d{name}")
        results[backend] = (out, grads)
    # naive vs sdpa directly
    assert_close(results["naive"][0], results["sdpa"][0], 1e-5, 1e-5, "naive vs sdpa output")
    for name, a, e in zip("qkv", results["naive"][1], results["sdpa"][1]):
        assert_close(a, e, 1e-5, 1e-5, f"naive vs sdpa d{name}")
    if masked:
        for backend, (out, _) in results.items():
            assert torch.equal(out[2], torch.zeros_like(out[2])), f"{backend}: fully masked row must be zeros"


@pytest.mark.parametrize("tq,tk", SHAPES)
@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_diff_attention_backends_match_reference_fp32(tq, tk, d, causal, masked):
    torch.manual_seed(7 + 1000 * tq + tk + d)
    q1, q2 = torch.randn(B, H, tq, d), torch.randn(B, H, tq, d)
    k1, k2 = torch.randn(B, HKV, tk, d), torch.randn(B, HKV, tk, d)
    v = torch.randn(B, HKV, tk, 2 * d)  # the paper's layout: values of width 2d
    lam = make_lam("token", B, H, tq, torch.float32)
    key_mask = make_key_mask(B, tk, seed=tk + 1) if masked else None
    g = torch.randn(B, H, tq, 2 * d)
    names = ["q1", "q2", "k1", "k2", "v", "lam"]
    inputs = [q1, q2, k1, k2, v, lam]

    ref, ref_grads = run_with_grads(
        lambda *a: ref_diff_attention(*a, causal=causal, key_mask=key_mask), [x.double() for x in inputs], g
    )
    results = {}
    for backend in BACKENDS_UNDER_TEST:
        out, grads = run_with_grads(
            lambda *a: diff_attention(*a, causal=causal, key_mask=key_mask, backend=backend), inputs, g
        )
        assert out.dtype == torch.float32 and out.shape == (B, H, tq, 2 * d)
        assert_close(out, ref, 1e-5, 1e-5, f"{backend} output")
        for name, a, e in zip(names, grads, ref_grads):
            assert a is not None and a.shape == e.shape, f"{backend} d{name} missing or misshaped"
            assert torch.isfinite(a).all(), f"{backend} d{name} has non-finite values"
            # dlam sums over the value channels of a whole row: allow a slightly larger atol
            assert_close(a, e, 2e-5 if name == "lam" else 1e-5, 1e-5, f"{backend} d{name}")
        results[backend] = (out, grads)
    assert_close(results["naive"][0], results["sdpa"][0], 1e-5, 1e-5, "naive vs sdpa output")
    for name, a, e in zip(names, results["naive"][1], results["sdpa"][1]):
        assert_close(a, e, 2e-5 if name == "lam" else 1e-5, 1e-5, f"naive vs sdpa d{name}")
    if masked:
        for backend, (out, _) in results.items():
            assert torch.equal(out[2], torch.zeros_like(out[2])), f"{backend}: fully masked row must be zeros"


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("lam_kind", ["scalar", "head", "token"])
@pytest.mark.parametrize("tq,tk,causal", [(63, 63, True), (17, 40, True), (40, 17, False)])
def test_diff_attention_lambda_forms(backend, lam_kind, tq, tk, causal):
    """lam as a scalar tensor, per head [H,1,1] and per token [B,H,Tq,1]; output and dlam."""
    torch.manual_seed(3)
    d = 16
    q1, q2 = torch.randn(2, H, tq, d), torch.randn(2, H, tq, d)
    k1, k2 = torch.randn(2, HKV, tk, d), torch.randn(2, HKV, tk, d)
    v = torch.randn(2, HKV, tk, 2 * d)
    lam = make_lam(lam_kind, 2, H, tq, torch.float32)
    g = torch.randn(2, H, tq, 2 * d)
    inputs = [q1, q2, k1, k2, v, lam]
    ref, ref_grads = run_with_grads(lambda *a: ref_diff_attention(*a, causal=causal), [x.double() for x in inputs], g)
    out, grads = run_with_grads(lambda *a: diff_attention(*a, causal=causal, backend=backend), inputs, g)
    assert_close(out, ref, 1e-5, 1e-5, "output")
    assert grads[-1].shape == lam.shape
    assert_close(grads[-1], ref_grads[-1], 5e-5, 1e-5, "dlam")
    for a, e in zip(grads[:-1], ref_grads[:-1]):
        assert_close(a, e, 1e-5, 1e-5, "dq/dk/dv")
    # the lambda actually matters: the second map is not a no-op
    assert (ref - ref_attention(q1, k1, v, causal=causal)).abs().max() > 1e-2


def test_naive_backend_matches_explicit_formula_in_float64():
    """The naive backend (the project's reference) against a from-scratch float64 softmax."""
    torch.manual_seed(11)
    tq = tk = 63
    q = torch.randn(2, 3, tq, 60)
    k = torch.randn(2, 3, tk, 60)
    v = torch.randn(2, 3, tk, 60)
    # textbook formula, element by element in float64, no shared helper
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) / math.sqrt(60)
    causal = torch.tensor([[j <= i for j in range(tk)] for i in range(tq)])
    s = torch.where(causal, s, torch.full_like(s, -math.inf))
    p = torch.exp(s - s.max(-1, keepdim=True).values)
    p = p / p.sum(-1, keepdim=True)
    expected = torch.einsum("bhqk,bhkd->bhqd", p, v.double())
    out = attention(q, k, v, causal=True, backend="naive")
    assert_close(out, expected, 1e-5, 1e-5, "naive")


def test_scale_argument_is_used():
    torch.manual_seed(12)
    q, k, v = torch.randn(1, 2, 9, 16), torch.randn(1, 2, 11, 16), torch.randn(1, 2, 11, 16)
    for backend in BACKENDS_UNDER_TEST:
        out = attention(q, k, v, scale=0.3, backend=backend)
        assert_close(out, ref_attention(q, k, v, scale=0.3), 1e-5, 1e-5, backend)


# --------------------------------------------------------------------------------------------
# bf16
# --------------------------------------------------------------------------------------------

# Tolerance for bf16 (relative Frobenius error against float64 math on the same bf16 inputs):
# bf16 keeps 8 significant bits, unit roundoff 2^-8 ~= 3.9e-3, so rounding the output once costs
# up to ~2e-3 relative (RMS), and SDPA also rounds scores, probabilities and the P@V accumulation;
# the differential output subtracts two maps of similar size, which can amplify relative error ~2x.
# Measured on CPU: ~2e-3 (naive, fp32 math inside) to ~3e-3 (sdpa) for outputs, <= 4.5e-3 for
# gradients. 1e-2 / 1.5e-2 (about 3x the measured error) leaves margin for other kernels, while a
# wrong mask, pairing, lambda or scale gives errors of order 0.1-1.
BF16_OUT_TOL = 1e-2
BF16_GRAD_TOL = 1.5e-2


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("tq,tk,causal,masked", [(63, 63, True, False), (63, 200, True, True), (200, 63, False, True), (1, 63, False, False)])
def test_diff_attention_bf16(backend, tq, tk, causal, masked):
    torch.manual_seed(21 + tq + tk)
    d = 60
    inputs = [
        torch.randn(B, H, tq, d).bfloat16(),
        torch.randn(B, H, tq, d).bfloat16(),
        torch.randn(B, HKV, tk, d).bfloat16(),
        torch.randn(B, HKV, tk, d).bfloat16(),
        torch.randn(B, HKV, tk, 2 * d).bfloat16(),
        make_lam("token", B, H, tq, torch.float32).bfloat16(),
    ]
    key_mask = make_key_mask(B, tk, seed=5) if masked else None
    g = torch.randn(B, H, tq, 2 * d)
    ref, ref_grads = run_with_grads(
        lambda *a: ref_diff_attention(*a, causal=causal, key_mask=key_mask), [x.double() for x in inputs], g
    )
    out, grads = run_with_grads(lambda *a: diff_attention(*a, causal=causal, key_mask=key_mask, backend=backend), inputs, g)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < BF16_OUT_TOL
    for name, a, e in zip(["q1", "q2", "k1", "k2", "v", "lam"], grads, ref_grads):
        assert a.dtype == torch.bfloat16, name
        assert torch.isfinite(a.float()).all(), name
        assert rel_err(a, e) < BF16_GRAD_TOL, f"d{name}: rel err {rel_err(a, e):.3g}"
    if masked:
        assert torch.equal(out[2].float(), torch.zeros_like(out[2]).float())


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_attention_bf16(backend):
    torch.manual_seed(22)
    q = torch.randn(B, H, 63, 60).bfloat16()
    k = torch.randn(B, HKV, 200, 60).bfloat16()
    v = torch.randn(B, HKV, 200, 60).bfloat16()
    key_mask = make_key_mask(B, 200, seed=9)
    g = torch.randn(B, H, 63, 60)
    ref, ref_grads = run_with_grads(lambda *a: ref_attention(*a, causal=True, key_mask=key_mask), [x.double() for x in (q, k, v)], g)
    out, grads = run_with_grads(lambda *a: attention(*a, causal=True, key_mask=key_mask, backend=backend), [q, k, v], g)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, ref) < BF16_OUT_TOL
    for a, e in zip(grads, ref_grads):
        assert rel_err(a, e) < BF16_GRAD_TOL


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def test_hand_causal_mask_literal():
    """The test's own mask helper against a literal (so the reference itself is pinned)."""
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(hand_causal_mask(3, 7), expected)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("tq,tk", [(3, 7), (1, 5), (5, 5), (20, 64), (7, 3)])
def test_causal_is_bottom_right_aligned(backend, tq, tk):
    """With v = identity over keys the output *is* the attention map: its support is the mask."""
    torch.manual_seed(31)
    q = torch.randn(1, 2, tq, 8)
    k = torch.randn(1, 2, tk, 8)
    v = torch.eye(tk).expand(1, 2, tk, tk).contiguous()
    probs = attention(q, k, v, causal=True, backend=backend)
    vis = hand_causal_mask(tq, tk)
    hidden = probs[..., ~vis]  # [1, 2, number of invisible (query, key) pairs]
    assert torch.equal(hidden, torch.zeros_like(hidden))
    assert (probs[..., vis] > 0).all()
    has_key = vis.any(-1)
    assert_close(probs.sum(-1)[..., has_key], torch.ones(1, 2, int(has_key.sum())), 1e-6, 1e-6, "row sums")
    # queries with no visible key (only when tq > tk) are zeros
    assert torch.equal(probs[..., ~has_key, :], torch.zeros_like(probs[..., ~has_key, :]))

    # same for diff_attention: map 1 minus lam * map 2 with v = identity
    lam = torch.tensor(0.5)
    q2, k2 = torch.randn(1, 2, tq, 8), torch.randn(1, 2, tk, 8)
    dmap = diff_attention(q, q2, k, k2, v, lam, causal=True, backend=backend)
    if (~vis).any():
        assert dmap[..., ~vis].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_key_mask_blocks_padded_keys(backend):
    torch.manual_seed(32)
    tk = 10
    key_mask = torch.tensor([[True] * 6 + [False] * 4, [False] * 3 + [True] * 7])
    q = torch.randn(2, 2, 4, 8)
    k = torch.randn(2, 2, tk, 8)
    v = torch.eye(tk).expand(2, 2, tk, tk).contiguous()
    probs = attention(q, k, v, key_mask=key_mask, backend=backend)
    km = key_mask[:, None, None, :].expand_as(probs)
    assert probs[~km].abs().max() == 0
    assert (probs[km] > 0).all()
    # padded keys with huge values must not leak either
    k_bad = k.clone()
    k_bad[0, :, 6:] = 1e4
    k_bad[1, :, :3] = 1e4
    assert_close(attention(q, k_bad, v, key_mask=key_mask, backend=backend), probs, 1e-6, 1e-6, "leak")


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_fully_masked_row_zero_output_and_zero_grad(backend):
    torch.manual_seed(33)
    q1, q2 = leaf(torch.randn(2, 2, 5, 8)), leaf(torch.randn(2, 2, 5, 8))
    k1, k2 = leaf(torch.randn(2, 2, 6, 8)), leaf(torch.randn(2, 2, 6, 8))
    v = leaf(torch.randn(2, 2, 6, 16))
    key_mask = torch.tensor([[True] * 6, [False] * 6])
    out = diff_attention(q1, q2, k1, k2, v, torch.tensor(0.3), key_mask=key_mask, backend=backend)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    for t in (q1, q2, k1, k2, v):
        assert torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[1], torch.zeros_like(t.grad[1])), "masked batch row must get zero grad"
        assert t.grad[0].abs().sum() > 0


def make_query_mask(batch: int, tq: int, tk: int, seed: int) -> torch.Tensor:
    """Per-query visibility [B, Tq, Tk]: random rows (key 0 kept), one query that sees nothing, one that sees all."""
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(batch, tq, tk, generator=g) > 0.5
    m[:, :, 0] = True
    m[0, tq // 2] = False
    m[-1, -1] = True
    return m


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("tq,tk,causal", [(7, 7, False), (7, 7, True), (5, 9, False), (9, 5, True)])
def test_per_query_key_mask_matches_reference(backend, tq, tk, causal):
    """key_mask [B, Tq, Tk] (PARSeq-style per-query visibility): forward and gradients of both ops against the
    float64 reference under the same per-query visibility; a query that sees nothing gives zeros."""
    torch.manual_seed(34)
    d = 8
    km = make_query_mask(B, tq, tk, seed=tq * tk)
    q1, q2 = torch.randn(B, H, tq, d), torch.randn(B, H, tq, d)
    k1, k2 = torch.randn(B, HKV, tk, d), torch.randn(B, HKV, tk, d)
    v = torch.randn(B, HKV, tk, 2 * d)
    lam = torch.tensor(0.6)
    g = torch.randn(B, H, tq, 2 * d)
    out, grads = run_with_grads(
        lambda a, b, c, e, f: diff_attention(a, b, c, e, f, lam, causal=causal, key_mask=km, backend=backend),
        [q1, q2, k1, k2, v], g)
    ref, ref_grads = run_with_grads(
        lambda a, b, c, e, f: ref_diff_attention(a, b, c, e, f, lam, causal=causal, key_mask=km),
        [q1, q2, k1, k2, v], g)
    assert_close(out, ref, 1e-5, 1e-5, "diff forward")
    for got, want, name in zip(grads, ref_grads, ("q1", "q2", "k1", "k2", "v")):
        assert_close(got, want, 1e-5, 1e-5, f"diff grad {name}")
    assert torch.equal(out[0, :, tq // 2], torch.zeros_like(out[0, :, tq // 2]))
    single = attention(q1, k1, v, causal=causal, key_mask=km, backend=backend)
    assert_close(single, ref_attention(q1, k1, v, causal=causal, key_mask=km), 1e-5, 1e-5, "single map")
    # a key hidden from one query only moves the others: perturb it, and that query's row stays put
    b, i = 1, tq - 1
    hidden = (~km[b, i]).nonzero().flatten()
    if len(hidden):
        j = int(hidden[0])
        v2 = v.clone()
        v2[b, :, j] += 100.0
        moved = diff_attention(q1, q2, k1, k2, v2, lam, causal=causal, key_mask=km, backend=backend)
        assert torch.equal(moved[b, :, i], out[b, :, i])


def test_per_query_key_mask_refusals():
    """Wrong shapes are named; the fused kernel declines per-query masks (so auto and a forced `triton` run them on
    SDPA); DINT, whose mean over queries would mix visibilities, refuses them."""
    from zoo.nn.variants import dint_attention

    q = torch.randn(2, 2, 3, 8)
    k = torch.randn(2, 2, 5, 8)
    with pytest.raises(ValueError, match=r"\[batch, Tq, Tk\] = \(2, 3, 5\)"):
        attention(q, k, k, key_mask=torch.ones(2, 5, 3, dtype=torch.bool), backend="naive")
    km = make_query_mask(2, 3, 5, seed=0)
    want = ref_diff_attention(q, q, k, k, k, torch.tensor(0.5), key_mask=km)
    got = diff_attention(q, q, k, k, k, 0.5, key_mask=km, backend="triton")  # forced: per-query masks run on SDPA
    assert_close(got, want, 1e-5, 1e-5, "forced triton")
    from zoo.kernels.diff_attn import ops

    ok, why = ops.supports(q, k, k, torch.tensor(0.5), causal=False, key_mask=km, dropout_p=0.0)
    assert not ok and "per-query" in why
    with pytest.raises(ValueError, match="dint_attention takes key_mask \\[batch, Tk\\] only"):
        dint_attention(q, q, k, k, k, 0.5, key_mask=km, backend="naive")


# --------------------------------------------------------------------------------------------
# 2. GQA
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("hkv", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_gqa_equals_explicitly_repeated_kv(backend, hkv, causal):
    torch.manual_seed(41 + hkv)
    h, n_rep, tq, tk, d = 6, 6 // hkv, 9, 13, 16
    q1, q2 = torch.randn(2, h, tq, d), torch.randn(2, h, tq, d)
    k1, k2 = torch.randn(2, hkv, tk, d), torch.randn(2, hkv, tk, d)
    v = torch.randn(2, hkv, tk, 2 * d)
    lam = torch.rand(h, 1, 1)
    km = make_key_mask(3, tk, seed=1)[1:2].expand(2, tk).clone()

    def rep(x):
        return x.repeat_interleave(n_rep, dim=1)

    kw = dict(causal=causal, key_mask=km, backend=backend)
    assert_close(attention(q1, k1, v, **kw), attention(q1, rep(k1), rep(v), **kw), 1e-6, 1e-6, "attention")
    assert_close(
        diff_attention(q1, q2, k1, k2, v, lam, **kw),
        diff_attention(q1, q2, rep(k1), rep(k2), rep(v), lam, **kw),
        1e-6,
        1e-6,
        "diff_attention",
    )


def _softmax_rows(s: torch.Tensor, vis: torch.Tensor | None = None) -> torch.Tensor:
    if vis is not None:
        s = s.masked_fill(~vis, float("-inf"))
    s = s - s.max(-1, keepdim=True).values
    e = s.exp()
    return e / e.sum(-1, keepdim=True)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("h,hkv", [(4, 2), (6, 2), (4, 1), (4, 4)])
def test_diff_gqa_pairing_by_hand(backend, h, hkv):
    """Differential head h uses KV group g = h // (H // Hkv): map 1 with k1[g], map 2 with k2[g]."""
    torch.manual_seed(51 + h + hkv)
    tq, tk, d = 7, 10, 16
    q1, q2 = torch.randn(2, h, tq, d), torch.randn(2, h, tq, d)
    k1, k2 = torch.randn(2, hkv, tk, d), torch.randn(2, hkv, tk, d)
    v = torch.randn(2, hkv, tk, 2 * d)
    lam = torch.rand(h, 1, 1)
    vis = hand_causal_mask(tq, tk)
    n_rep = h // hkv
    expected = torch.empty(2, h, tq, 2 * d, dtype=torch.float64)
    for head in range(h):
        grp = head // n_rep
        a1 = _softmax_rows(q1[:, head].double() @ k1[:, grp].double().transpose(-1, -2) / math.sqrt(d), vis)
        a2 = _softmax_rows(q2[:, head].double() @ k2[:, grp].double().transpose(-1, -2) / math.sqrt(d), vis)
        expected[:, head] = a1 @ v[:, grp].double() - lam[head].double() * (a2 @ v[:, grp].double())
    out = diff_attention(q1, q2, k1, k2, v, lam, causal=True, backend=backend)
    assert_close(out, expected, 1e-5, 1e-5, "pairing")


def flat_list_repeat_reference(q1, q2, k1, k2, v, lam):
    """The public naive reference's GQA: interleave sub-heads into one flat list and repeat that.

    Query sub-heads [q1_h0, q2_h0, q1_h1, ...] (2H), key sub-heads [k1_g0, k2_g0, k1_g1, ...]
    (2Hkv) repeated with repeat_interleave to 2H, and sub-head j paired with key sub-head j.
    """
    bsz, h, tq, d = q1.shape
    hkv = k1.shape[1]
    n_rep = h // hkv
    q = torch.stack([q1, q2], dim=2).reshape(bsz, 2 * h, tq, d).double()
    k = torch.stack([k1, k2], dim=2).reshape(bsz, 2 * hkv, -1, d).double()
    k = k.repeat_interleave(n_rep, dim=1)
    vv = v.double().repeat_interleave(n_rep, dim=1)
    a = _softmax_rows(q @ k.transpose(-1, -2) / math.sqrt(d))
    a = a.view(bsz, h, 2, tq, -1)
    return a[:, :, 0] @ vv - lam.double() * (a[:, :, 1] @ vv)


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_flat_list_repeat_pairing_differs_when_kv_shared(backend):
    """Documents why we do not copy the public reference's flat-list GQA: with n_rep > 1, head 0's
    map 2 would use k1 of group 0 (not k2), i.e. a different function. With n_rep == 1 both agree,
    which shows the flat-list construction above is right and sharing is the only difference."""
    torch.manual_seed(61)
    tq, tk, d = 8, 8, 16
    lam = torch.tensor(0.6)

    def inputs(h, hkv):
        return (
            torch.randn(2, h, tq, d), torch.randn(2, h, tq, d),
            torch.randn(2, hkv, tk, d), torch.randn(2, hkv, tk, d),
            torch.randn(2, hkv, tk, 2 * d),
        )

    # n_rep == 1: identical
    a = inputs(4, 4)
    assert_close(diff_attention(*a, lam, backend=backend), flat_list_repeat_reference(*a, lam), 1e-5, 1e-5, "n_rep=1")

    # n_rep == 2: different
    a = inputs(4, 2)
    ours = diff_attention(*a, lam, backend=backend).double()
    flat = flat_list_repeat_reference(*a, lam)
    assert (ours - flat).abs().max() > 0.1
    # and the difference is exactly the pairing: the flat list gives head 0 the maps (k1_g0, k1_g0)
    q1, q2, k1, k2, v = a
    head0 = (
        _softmax_rows(q1[:, 0].double() @ k1[:, 0].double().mT / math.sqrt(d)) @ v[:, 0].double()
        - lam.double() * _softmax_rows(q2[:, 0].double() @ k1[:, 0].double().mT / math.sqrt(d)) @ v[:, 0].double()
    )
    assert_close(flat[:, 0], head0, 1e-10, 1e-10, "flat-list head 0")


# --------------------------------------------------------------------------------------------
# 3. backend switch
# --------------------------------------------------------------------------------------------


def test_resolve_backend_argument_env_and_default(monkeypatch):
    monkeypatch.delenv("ZOO_ATTN_BACKEND", raising=False)
    assert resolve_backend() == "auto"
    assert resolve_backend("naive") == "naive"
    monkeypatch.setenv("ZOO_ATTN_BACKEND", "naive")
    assert resolve_backend() == "naive"
    assert resolve_backend("sdpa") == "sdpa"  # the argument wins over the environment
    monkeypatch.setenv("ZOO_ATTN_BACKEND", "sdpa")
    assert resolve_backend() == "sdpa"


def _spy(monkeypatch, name):
    calls = []
    real = getattr(zf, name)

    def wrapper(*a, **k):
        calls.append(name)
        return real(*a, **k)

    monkeypatch.setattr(zf, name, wrapper)
    return calls


@pytest.mark.parametrize("env,arg,expected", [
    ("naive", None, "_naive_single"),
    ("sdpa", None, "_sdpa_single"),
    ("sdpa", "naive", "_naive_single"),
    ("naive", "sdpa", "_sdpa_single"),
    (None, None, "_sdpa_single"),  # auto on CPU takes the PyTorch path
])
def test_backend_routing(monkeypatch, env, arg, expected):
    if env is None:
        monkeypatch.delenv("ZOO_ATTN_BACKEND", raising=False)
    else:
        monkeypatch.setenv("ZOO_ATTN_BACKEND", env)
    naive_calls = _spy(monkeypatch, "_naive_single")
    sdpa_calls = _spy(monkeypatch, "_sdpa_single")
    torch.manual_seed(71)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    out = attention(q, k, v, causal=True, backend=arg)
    assert_close(out, ref_attention(q, k, v, causal=True), 1e-5, 1e-5, "attention")
    out = diff_attention(q, q.flip(2), k, k.flip(2), v, torch.tensor(0.5), causal=True, backend=arg)
    assert_close(out, ref_diff_attention(q, q.flip(2), k, k.flip(2), v, torch.tensor(0.5), causal=True), 1e-5, 1e-5, "diff")
    used = naive_calls + sdpa_calls
    assert used and set(used) == {expected}, used


@pytest.mark.parametrize("op", ["attention", "diff_attention"])
def test_unknown_backend_raises_with_choices(monkeypatch, op):
    monkeypatch.delenv("ZOO_ATTN_BACKEND", raising=False)
    q = torch.randn(1, 1, 3, 4)
    call = (lambda **kw: attention(q, q, q, **kw)) if op == "attention" else (
        lambda **kw: diff_attention(q, q, q, q, q, torch.tensor(0.5), **kw)
    )
    with pytest.raises(ValueError) as exc:
        call(backend="flash9")
    for name in ("naive", "sdpa", "triton", "auto"):
        assert name in str(exc.value)
    assert "flash9" in str(exc.value)
    monkeypatch.setenv("ZOO_ATTN_BACKEND", "bogus")
    with pytest.raises(ValueError) as exc:
        call()
    assert "bogus" in str(exc.value) and "naive" in str(exc.value) and "sdpa" in str(exc.value)


def test_bad_shapes_raise():
    q = torch.randn(1, 4, 3, 8)
    k = torch.randn(1, 3, 5, 8)  # 4 query heads, 3 KV heads: not a multiple
    with pytest.raises(ValueError, match="multiple"):
        attention(q, k, k, backend="naive")
    with pytest.raises(ValueError, match="key_mask"):
        attention(q, q, q, key_mask=torch.ones(1, 3), backend="naive")  # not bool


def test_auto_sends_small_decode_steps_to_sdpa(monkeypatch):
    """auto on CUDA: the fused kernel except for gradient-free single-token steps over fewer than
    AUTO_DECODE_MIN_KEYS keys (the H100 crossover); forced backends are never overridden."""
    import zoo.nn.functional as zf

    if zf._triton_impl() is not None:  # as a process with the kernels compiled (tests/kernels may set the interpreter)
        monkeypatch.setattr(zf._triton_impl(), "interpret_requested", lambda: False)
    supported = lambda impl: (True, "")  # noqa: E731
    n = zf.AUTO_DECODE_MIN_KEYS
    assert zf.small_decode(1, 1, n - 1, needs_grad=False)
    assert not zf.small_decode(1, 1, n, needs_grad=False)
    assert not zf.small_decode(n // 1024, 1, 1024, needs_grad=False)  # batch counts: 32 x 1024 keys
    assert not zf.small_decode(1, 2, 16, needs_grad=False)  # a prefill, not a decode step
    assert not zf.small_decode(1, 1, 16, needs_grad=True)  # training through one token keeps the kernel
    if zf._triton_impl() is not None:
        assert zf._pick("auto", True, supported, small_decode_step=False) == "triton"
    assert zf._pick("auto", True, supported, small_decode_step=True) == "sdpa"
    assert zf._pick("triton", True, supported, small_decode_step=True) == "triton"
    assert zf._pick("auto", False, supported, small_decode_step=False) == "sdpa"


def test_auto_keeps_cuda_tensors_out_of_the_triton_interpreter(monkeypatch):
    """TRITON_INTERPRET=1 (set for the kernel tests, before triton is imported) makes every kernel launch run in the
    CPU interpreter, CUDA tensors included (copied to the host and back, orders of magnitude slower than SDPA):
    auto sent a process's CUDA tensors there. auto uses SDPA then; a forced `triton` still runs the kernel."""
    impl = zf._triton_impl()
    if impl is None:
        pytest.skip("zoo.kernels.diff_attn (triton) is not importable")
    supported = lambda impl: (True, "")  # noqa: E731  (a call the kernel supports)
    monkeypatch.setattr(impl, "interpret_requested", lambda: True)
    assert zf._pick("auto", True, supported) == "sdpa"
    assert zf._pick("triton", True, supported) == "triton"
    monkeypatch.setattr(impl, "interpret_requested", lambda: False)
    assert zf._pick("auto", True, supported) == "triton"


@pytest.mark.parametrize("attn_type", ["vanilla", "dint", "diff"])
def test_a_model_forced_to_triton_runs_every_layer(attn_type, monkeypatch):
    """ZOO_ATTN_BACKEND=triton forces the fused kernel where it applies (differential maps); single-map
    attention takes SDPA, so a vanilla twin runs under the same environment as its diff config."""
    import zoo

    torch.manual_seed(0)
    m = zoo.create_model("lm-diff-tiny", attn_type=attn_type, dim=32, n_layers=1, n_heads=2, max_seq_len=16).eval()
    ids = torch.randint(0, 200, (2, 9))
    monkeypatch.setenv("ZOO_ATTN_BACKEND", "naive")
    with torch.no_grad():
        ref = m(ids)
    monkeypatch.setenv("ZOO_ATTN_BACKEND", "triton")  # CPU tensors: the PyTorch path; the call must not fail
    with torch.no_grad():
        out = m(ids)
    assert_close(out.float(), ref.float(), 1e-4, 1e-4, f"{attn_type} under triton vs naive")
    q = torch.randn(1, 2, 5, 8)
    assert_close(attention(q, q, q, backend="triton"), attention(q, q, q, backend="naive"), 1e-5, 1e-5, "single map")


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_float64_inputs_keep_float64_precision_and_pass_gradcheck(backend):
    """float64 in, float64 math: the fp32 reference must not round float64 inputs down to float32."""
    torch.manual_seed(21)
    tq, tk = 3, 5
    q1, q2 = torch.randn(2, 2, tq, 4, dtype=torch.float64), torch.randn(2, 2, tq, 4, dtype=torch.float64)
    k1, k2 = torch.randn(2, 1, tk, 4, dtype=torch.float64), torch.randn(2, 1, tk, 4, dtype=torch.float64)
    v = torch.randn(2, 1, tk, 6, dtype=torch.float64)
    lam = torch.tensor(0.3, dtype=torch.float64)
    km = torch.tensor([[True] * tk, [True, True, False, True, False]])
    out = attention(q1, k1, v, causal=True, key_mask=km, backend=backend)
    assert out.dtype == torch.float64
    assert_close(out, ref_attention(q1, k1, v, causal=True, key_mask=km), 1e-12, 1e-12, "attention")
    out = diff_attention(q1, q2, k1, k2, v, lam, causal=True, key_mask=km, backend=backend)
    assert_close(out, ref_diff_attention(q1, q2, k1, k2, v, lam, causal=True, key_mask=km), 1e-12, 1e-12, "diff")
    fn = lambda *xs: diff_attention(*xs, causal=True, key_mask=km, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, [leaf(x) for x in (q1, q2, k1, k2, v, lam)])


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_diff_attention_maps_of_different_shapes_raise(backend):
    """q2 with one query against q1 with five must not broadcast into a wrong [.., 5, ..] output."""
    q1, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    lam = torch.tensor(0.5)
    with pytest.raises(ValueError, match="q1.*q2"):
        diff_attention(q1, q1[:, :, :1], k, k, v, lam, backend=backend)
    with pytest.raises(ValueError, match="k1.*k2"):
        diff_attention(q1, q1, k, k[:, :1], v, lam, backend=backend)


@pytest.mark.parametrize("causal,masked", [(True, False), (False, False), (False, True)])
def test_cpu_sdpa_pads_query_key_to_value_width(monkeypatch, causal, masked):
    """Diff attention's values are twice as wide as its queries/keys; on CPU the sdpa backend pads q and k
    with zero channels to the value width so PyTorch runs its fused kernel (it falls back to the slower math
    path when head dims differ), except under dropout (the math path and its random draws either way)."""
    import torch.nn.functional as F

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append((q.shape[-1], k.shape[-1], v.shape[-1], kwargs.get("dropout_p", 0.0)))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(3)
    q1, q2, k1, k2 = (torch.randn(3, 2, 6, 8) for _ in range(4))
    v = torch.randn(3, 2, 6, 16)
    key_mask = make_key_mask(3, 6, seed=4) if masked else None
    diff_attention(q1, q2, k1, k2, v, torch.tensor(0.3), causal=causal, key_mask=key_mask, backend="sdpa")
    assert seen == [(16, 16, 16, 0.0)] * 2
    seen.clear()
    diff_attention(q1, q2, k1, k2, v, torch.tensor(0.3), causal=causal, key_mask=key_mask, backend="sdpa", dropout_p=0.5)
    assert seen == [(8, 8, 16, 0.5)] * 2


@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_bf16_subtraction_is_done_in_fp32(backend):
    """With equal maps the result is (1 - lam) * A v: a cancellation. Combined in bf16, lambda's rounding
    (0.882 -> 0.8828) and the product's rounding become several percent of the result; combined in fp32
    (as the fused kernel does) only the final bf16 rounding remains (relative 2^-8)."""
    torch.manual_seed(0)
    B, H, T, d = 2, 2, 16, 8
    q, k = torch.randn(B, H, T, d), torch.randn(B, H, T, d)
    v = torch.rand(B, H, T, 2 * d) + 0.5  # positive values: A v stays away from zero
    lam = torch.tensor(0.882)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    # A v as this backend feeds it to the subtraction: SDPA's bf16 output, the naive backend's fp32 one
    single = attention(*(t.float() if backend == "naive" else t for t in (qb, kb, vb)), causal=True, backend=backend).double()
    got = diff_attention(qb, qb, kb, kb, vb, lam, causal=True, backend=backend)
    assert got.dtype == torch.bfloat16
    rel = ((got.double() - (1 - 0.882) * single).abs() / ((1 - 0.882) * single).abs()).max().item()
    assert rel <= 2 ** -8 + 1e-6, rel


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
@pytest.mark.parametrize("shape", [(2, 1, 1, 1), (4,), (1, 4, 5)])
def test_lambda_that_does_not_broadcast_to_the_output_is_refused(backend, shape):
    """lam must broadcast *to* [B, H, Tq, 1] (as the fused kernel requires): a [2, 1, 1, 1] lambda at B = 1
    widened the output to batch 2, a per-head [H] lambda (H == v_dim here) scaled value channels instead of
    heads, silently, where the triton backend refuses both."""
    torch.manual_seed(5)
    q1, q2 = torch.randn(1, 4, 5, 2), torch.randn(1, 4, 5, 2)
    k1, k2, v = torch.randn(1, 4, 6, 2), torch.randn(1, 4, 6, 2), torch.randn(1, 4, 6, 4)
    with pytest.raises(ValueError, match=r"lam of shape .* does not broadcast to \[batch, H, Tq, 1\]"):
        diff_attention(q1, q2, k1, k2, v, torch.rand(shape), backend=backend)
    ok = torch.rand(4, 1, 1)  # per head, the documented form, still works
    assert_close(diff_attention(q1, q2, k1, k2, v, ok, backend=backend),
                 ref_diff_attention(q1, q2, k1, k2, v, ok), 1e-5, 1e-5, "per-head lambda")


@pytest.mark.parametrize("backend", BACKENDS_UNDER_TEST)
def test_a_python_float_lambda_keeps_float64_precision(backend):
    """lam=0.3 as a Python number with float64 inputs: it was made a float32 tensor (0.30000001192...), an error
    of 1e-8 in a float64 result."""
    torch.manual_seed(6)
    q1, q2, k1, k2 = (torch.randn(2, 2, 3, 4, dtype=torch.float64) for _ in range(4))
    v = torch.randn(2, 2, 3, 8, dtype=torch.float64)
    got = diff_attention(q1, q2, k1, k2, v, 0.3, backend=backend)
    assert_close(got, ref_diff_attention(q1, q2, k1, k2, v, torch.tensor(0.3, dtype=torch.float64)), 1e-13, 1e-13, "lam=0.3")
