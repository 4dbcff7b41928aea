"""Tests of the attention layers built by ``zoo.nn.build_attention`` (vanilla, diff, diff_v2).

References are re-implemented here from the layers' own weights in float64 (explicit per-head
loops, hand-built masks, rotate-half RoPE written out channel by channel), or from PyTorch's own
``F.scaled_dot_product_attention`` / ``F.rms_norm`` / ``F.linear``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zoo.nn import KVCache, build_attention, lambda_init_fn, list_attention_types

TYPES = list_attention_types()  # vanilla, diff, diff_v2 and the variants (dint, gda, shared_diff)
BACKENDS = ["naive", "sdpa"]
DIM, HEADS, KV_HEADS = 32, 4, 2  # head_dim 8; diff sub-heads d = 4; GQA n_rep = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


# --------------------------------------------------------------------------------------------
# Independent float64 references
# --------------------------------------------------------------------------------------------


def lin(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    y = x.double() @ layer.weight.double().T
    return y if layer.bias is None else y + layer.bias.double()


def rope_ref(x: torch.Tensor, start: int = 0, theta: float = 10000.0) -> torch.Tensor:
    """Rotate-half RoPE (channel i pairs with i + D/2), written out per channel; x [B, H, T, D]."""
    D, T = x.shape[-1], x.shape[-2]
    half = D // 2
    out = torch.empty_like(x)
    for i in range(half):
        freq = theta ** (-2.0 * i / D)
        ang = torch.tensor([(start + t) * freq for t in range(T)], dtype=torch.float64)
        c, s = ang.cos(), ang.sin()
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * c - b * s
        out[..., i + half] = b * c + a * s
    return out


def visible(batch: int, tq: int, tk: int, causal: bool, key_mask) -> torch.Tensor:
    """[B, Tq, Tk] bool; causal is bottom-right: query i sits at absolute position tk - tq + i."""
    vis = torch.ones(batch, tq, tk, dtype=torch.bool)
    if causal:
        for i in range(tq):
            for j in range(tk):
                if j > tk - tq + i:
                    vis[:, i, j] = False
    if key_mask is not None:  # [B, Tk], or per query [B, Tq, Tk]
        vis &= key_mask if key_mask.dim() == 3 else key_mask[:, None, :]
    return vis


def softmax_ref(s: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """Softmax over visible keys; a row with none visible gives zeros."""
    s = s.masked_fill(~vis, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.where(vis, torch.exp(s - m), torch.zeros_like(s))
    den = e.sum(-1, keepdim=True)
    return e / torch.where(den > 0, den, torch.ones_like(den))


def paper_lambda_init(layer_idx: int) -> float:
    l = layer_idx + 1  # the paper's 1-based layer index
    return 0.8 - 0.6 * math.exp(-0.3 * (l - 1))


def naive_vanilla(layer, x, context=None, key_mask=None, rope=False):
    src = x if context is None else context
    B, tq, _ = x.shape
    tk = src.shape[1]
    H, hkv, hd = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q = lin(x, layer.q_proj).view(B, tq, H, hd).transpose(1, 2)
    k = lin(src, layer.k_proj).view(B, tk, hkv, hd).transpose(1, 2)
    v = lin(src, layer.v_proj).view(B, tk, hkv, hd).transpose(1, 2)
    if rope and context is None:
        q, k = rope_ref(q), rope_ref(k)
    vis = visible(B, tq, tk, layer.causal, key_mask)
    heads = []
    for h in range(H):
        g = h // (H // hkv)
        a = softmax_ref(q[:, h] @ k[:, g].mT / math.sqrt(hd), vis)
        heads.append(a @ v[:, g])
    return lin(torch.cat(heads, -1), layer.o_proj)


def naive_lambda(layer, lam_init=None):
    """exp(lq1.lk1) - exp(lq2.lk2) + lambda_init (the paper's depth schedule unless given), in float64."""
    lam_init = paper_lambda_init(layer.layer_idx) if lam_init is None else lam_init
    return (
        torch.exp((layer.lambda_q1.double() * layer.lambda_k1.double()).sum())
        - torch.exp((layer.lambda_q2.double() * layer.lambda_k2.double()).sum())
        + lam_init
    )


def naive_diff(layer, x, context=None, key_mask=None, rope=False, lam_init=None):
    """Diff Transformer layer from its weights: per head (A1 - lam A2) V, subln, (1 - lambda_init)."""
    src = x if context is None else context
    B, tq, _ = x.shape
    tk = src.shape[1]
    H, hkv, hd = layer.n_heads, layer.n_kv_heads, layer.head_dim
    d = hd // 2
    # projections store sub-heads interleaved per head: [H, 2, d], sub-head 0 is map 1
    q = lin(x, layer.q_proj).view(B, tq, H, 2, d)
    k = lin(src, layer.k_proj).view(B, tk, hkv, 2, d)
    v = lin(src, layer.v_proj).view(B, tk, hkv, hd).transpose(1, 2)
    q1, q2 = q[:, :, :, 0].transpose(1, 2), q[:, :, :, 1].transpose(1, 2)
    k1, k2 = k[:, :, :, 0].transpose(1, 2), k[:, :, :, 1].transpose(1, 2)
    if rope and context is None:
        q1, q2, k1, k2 = rope_ref(q1), rope_ref(q2), rope_ref(k1), rope_ref(k2)
    lam_init = paper_lambda_init(layer.layer_idx) if lam_init is None else lam_init
    lam = naive_lambda(layer, lam_init)
    vis = visible(B, tq, tk, layer.causal, key_mask)
    w = layer.subln.weight.double()
    heads = []
    for h in range(H):
        g = h // (H // hkv)
        a1 = softmax_ref(q1[:, h] @ k1[:, g].mT / math.sqrt(d), vis)
        a2 = softmax_ref(q2[:, h] @ k2[:, g].mT / math.sqrt(d), vis)
        o = a1 @ v[:, g] - lam * (a2 @ v[:, g])  # [B, Tq, 2d]
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * w
        heads.append(o * (1.0 - lam_init))
    return lin(torch.cat(heads, -1), layer.o_proj)


def naive_diff_v2(layer, x, context=None, key_mask=None, rope=False):
    """V2 from its weights: 2H query heads over ordinary K/V, pairs (0::2, 1::2), sigmoid lambda."""
    src = x if context is None else context
    B, tq, _ = x.shape
    tk = src.shape[1]
    H, hkv, hd = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q = lin(x, layer.q_proj).view(B, tq, 2 * H, hd).transpose(1, 2)
    k = lin(src, layer.k_proj).view(B, tk, hkv, hd).transpose(1, 2)
    v = lin(src, layer.v_proj).view(B, tk, hkv, hd).transpose(1, 2)
    if rope and context is None:
        q, k = rope_ref(q), rope_ref(k)
    lam = torch.sigmoid(lin(x, layer.lambda_proj))  # [B, Tq, H]
    vis = visible(B, tq, tk, layer.causal, key_mask)
    n_rep2 = (2 * H) // hkv  # GQA over the 2H query heads, as the V2 reference does it
    heads = []
    for h in range(H):
        j1, j2 = 2 * h, 2 * h + 1
        g = j1 // n_rep2
        assert j2 // n_rep2 == g  # the pair shares one KV group
        a1 = softmax_ref(q[:, j1] @ k[:, g].mT / math.sqrt(hd), vis)
        a2 = softmax_ref(q[:, j2] @ k[:, g].mT / math.sqrt(hd), vis)
        heads.append(a1 @ v[:, g] - lam[:, :, h : h + 1] * (a2 @ v[:, g]))
    return lin(torch.cat(heads, -1), layer.o_proj)


def naive_diff_family(layer, x, context=None, key_mask=None, rope=False, query_mask=None):
    """``shared_diff``, ``gda`` and ``dint`` from their weights, in float64: per output head ``h`` the signal map of
    query ``h`` and the noise map of its noise query, both over their own key heads, values of KV group ``g(h)``;
    DINT adds ``lam * G`` with ``G`` the mean of the signal map's rows over the (unpadded, for causal: earlier)
    queries; then subln and ``(1 - lambda_init)``."""
    src = x if context is None else context
    B, tq, _ = x.shape
    tk = src.shape[1]
    kind, H, hkv, hd = layer.attn_type, layer.n_heads, layer.n_kv_heads, layer.head_dim
    d = hd // 2
    v = lin(src, layer.v_proj).view(B, tk, hkv, hd).transpose(1, 2)
    heads_of = lambda t, n: t.view(t.shape[0], t.shape[1], n, d).transpose(1, 2)  # noqa: E731
    if kind == "shared_diff":
        def lowrank(t, seq):
            return lin(lin(t, seq[0]), seq[1])

        qb, kb = lin(x, layer.q_proj), lin(src, layer.k_proj)
        q1, q2 = heads_of(qb + lowrank(x, layer.q_lora1), H), heads_of(qb + lowrank(x, layer.q_lora2), H)
        k1, k2 = heads_of(kb + lowrank(src, layer.k_lora1), hkv), heads_of(kb + lowrank(src, layer.k_lora2), hkv)
        q2_of, k2_of = (lambda h: h), (lambda h: h // (H // hkv))
    elif kind == "gda":
        r, hn, hnkv = layer.signal_ratio, H // layer.signal_ratio, max(1, hkv // layer.signal_ratio)
        q, k = heads_of(lin(x, layer.q_proj), H + hn), heads_of(lin(src, layer.k_proj), hkv + hnkv)
        q1, q2, k1, k2 = q[:, :H], q[:, H:], k[:, :hkv], k[:, hkv:]
        q2_of, k2_of = (lambda h: h // r), (lambda h: (h // r) // (hn // hnkv))
    else:  # dint: diff's interleaved [H, 2, d] projections
        q = lin(x, layer.q_proj).view(B, tq, H, 2, d)
        k = lin(src, layer.k_proj).view(B, tk, hkv, 2, d)
        q1, q2 = q[:, :, :, 0].transpose(1, 2), q[:, :, :, 1].transpose(1, 2)
        k1, k2 = k[:, :, :, 0].transpose(1, 2), k[:, :, :, 1].transpose(1, 2)
        q2_of, k2_of = (lambda h: h), (lambda h: h // (H // hkv))
    if rope and context is None:
        q1, q2, k1, k2 = rope_ref(q1), rope_ref(q2), rope_ref(k1), rope_ref(k2)
    lam = naive_lambda(layer, layer.lambda_init)
    vis = visible(B, tq, tk, layer.causal, key_mask)
    if query_mask is None:
        query_mask = key_mask[:, -tq:] if (key_mask is not None and context is None) else torch.ones(B, tq, dtype=torch.bool)
    # mean over queries: row i averages the rows j of the weight matrix W[i, j] (j <= i when causal)
    w = query_mask[:, None, :].double().expand(B, tq, tq)
    if layer.causal:
        w = w * torch.ones(tq, tq, dtype=torch.float64).tril()
    w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
    weight = layer.subln.weight.double()
    heads = []
    for h in range(H):
        g = h // (H // hkv)
        a1 = softmax_ref(q1[:, h] @ k1[:, g].mT / math.sqrt(d), vis)
        a2 = softmax_ref(q2[:, q2_of(h)] @ k2[:, k2_of(h)].mT / math.sqrt(d), vis)
        a = a1 - lam * a2 + (lam * (w @ a1) if kind == "dint" else 0.0)
        o = a @ v[:, g]
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * weight
        heads.append(o * (1.0 - layer.lambda_init))
    return lin(torch.cat(heads, -1), layer.o_proj)


NAIVE = {"vanilla": naive_vanilla, "diff": naive_diff, "diff_v2": naive_diff_v2,
         "shared_diff": naive_diff_family, "gda": naive_diff_family, "dint": naive_diff_family}


def make_layer(attn_type: str, seed: int = 0, **kw):
    """Build a layer and randomize every parameter that starts at a constant (so none is a no-op)."""
    torch.manual_seed(seed)
    kw.setdefault("n_kv_heads", KV_HEADS)
    if attn_type == "gda":
        kw.setdefault("signal_ratio", 2)  # HEADS = 4: 2 noise heads
    layer = build_attention(attn_type, kw.pop("dim", DIM), kw.pop("n_heads", HEADS), **kw)
    with torch.no_grad():
        if getattr(layer, "subln", None) is not None:
            layer.subln.weight.uniform_(0.5, 1.5)
        if attn_type == "diff_v2":
            layer.lambda_proj.weight.normal_(0.0, 0.3)
            layer.lambda_proj.bias.normal_(0.0, 0.5)
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear) and m.bias is not None and m is not getattr(layer, "lambda_proj", None):
                m.bias.normal_(0.0, 0.1)
    return layer.eval()


def close(actual, expected, atol=1e-5, rtol=1e-5, what=""):
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


# --------------------------------------------------------------------------------------------
# Forward against the naive references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_type", TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [False, True])
def test_self_attention_matches_naive_reference(attn_type, backend, bias):
    """Causal self-attention with RoPE, GQA and a key padding mask (incl. a left-padded row)."""
    layer = make_layer(attn_type, seed=1, causal=True, rope=True, layer_idx=3, backend=backend, bias=bias)
    torch.manual_seed(2)
    x = torch.randn(2, 11, DIM)
    key_mask = torch.ones(2, 11, dtype=torch.bool)
    key_mask[1, :3] = False  # left padding: row 1's first queries see no key at all
    key_mask[0, 7] = False
    with torch.no_grad():
        out = layer(x, key_mask=key_mask)
        out_nomask = layer(x)
    close(out, NAIVE[attn_type](layer, x, key_mask=key_mask, rope=True), what="masked")
    close(out_nomask, NAIVE[attn_type](layer, x, rope=True), what="unmasked")


@pytest.mark.parametrize("attn_type", TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_attention_matches_naive_reference(attn_type, backend):
    """Tq != Tk, kv_dim != dim, key mask with a fully padded context row, rope ignored for cross."""
    layer = make_layer(attn_type, seed=3, kv_dim=24, rope=True, layer_idx=1, backend=backend)
    torch.manual_seed(4)
    x, ctx = torch.randn(3, 5, DIM), torch.randn(3, 9, 24)
    key_mask = torch.ones(3, 9, dtype=torch.bool)
    key_mask[1, 6:] = False
    key_mask[2] = False
    with torch.no_grad():
        out = layer(x, ctx, key_mask=key_mask)
    assert out.shape == (3, 5, DIM)
    close(out, NAIVE[attn_type](layer, x, context=ctx, key_mask=key_mask), what="cross")
    # the fully padded context row attends to nothing: the layer outputs o_proj(0) = 0 (no bias)
    assert out[2].abs().max() == 0


@pytest.mark.parametrize("attn_type", TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["self", "cross"])
def test_one_kv_head_matches_the_reference_in_value_and_gradient(attn_type, backend, mode):
    """MQA (n_kv_heads = 1) with rows that see no key at all (left padding under the causal mask; a fully padded
    context): the output and the gradients of the input (and context) against the float64 reference's, all
    finite. Such rows output o_proj(0) and pass no gradient to their queries."""
    cross = mode == "cross"
    layer = make_layer(attn_type, seed=21, n_kv_heads=1, causal=not cross, rope=True, kv_dim=24 if cross else None,
                       layer_idx=2, backend=backend).train()
    torch.manual_seed(22)
    x = torch.randn(2, 7, DIM, dtype=torch.float64)
    ctx = torch.randn(2, 9, 24, dtype=torch.float64) if cross else None
    key_mask = torch.ones(2, 9 if cross else 7, dtype=torch.bool)
    if cross:
        key_mask[0, 4:] = False
        key_mask[1] = False
    else:
        key_mask[1, :3] = False
    ins = [x] if ctx is None else [x, ctx]
    got_in = [t.float().requires_grad_() for t in ins]
    got = layer(*got_in, key_mask=key_mask)
    ref_in = [t.clone().requires_grad_() for t in ins]
    ref = NAIVE[attn_type](layer, *ref_in, key_mask=key_mask, rope=True)
    close(got, ref, what="output")
    torch.manual_seed(23)
    g = torch.randn(ref.shape, dtype=torch.float64)
    got_grads = torch.autograd.grad(got, got_in, g.float())
    ref_grads = torch.autograd.grad(ref, ref_in, g)
    for a, b in zip(got_grads, ref_grads):
        assert torch.isfinite(a).all()
        close(a, b, atol=2e-5, rtol=2e-5, what="input gradient")
    if cross:
        assert got[1].abs().max() == 0  # o_proj(0), no bias
        assert got_grads[0][1].abs().max() == 0
    else:
        assert got_grads[0][1, :3].abs().max() == 0  # padded queries: no visible key, and out of dint's mean


@pytest.mark.parametrize("attn_type", TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_and_strided_inputs_on_cpu(attn_type, backend, dtype):
    """A layer cast to fp16 / bf16 (Lightning's "16-true" / "bf16-true") returns that dtype, within a few units of
    its rounding of the float64 reference of the same (rounded) weights, for a strided input (a transposed view, as
    from a [T, B, C] pipeline) too."""
    layer = make_layer(attn_type, seed=24, causal=True, rope=True, layer_idx=1, backend=backend).to(dtype)
    torch.manual_seed(25)
    x = torch.randn(2, 9, DIM).to(dtype)
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, :2] = False
    with torch.no_grad():
        out = layer(x, key_mask=key_mask)
        strided = layer(x.transpose(0, 1).contiguous().transpose(0, 1), key_mask=key_mask)
    ref = NAIVE[attn_type](layer, x.double(), key_mask=key_mask, rope=True)
    for what, got in (("contiguous", out), ("strided", strided)):
        assert got.dtype == dtype and torch.isfinite(got).all(), what
        err = ((got.double() - ref).norm() / ref.norm()).item()
        assert err < 8 * torch.finfo(dtype).eps, (what, err)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["self", "cross"])
def test_diff_with_cancelled_second_map_is_standard_attention(backend, mode):
    """lambda = 0 and lambda_init = 0: the layer is attention over (q1, k1, v), then subln, o_proj."""
    cross = mode == "cross"
    layer = make_layer("diff", seed=5, causal=not cross, kv_dim=24 if cross else None, backend=backend)
    with torch.no_grad():
        layer.lambda_q1.zero_()
        layer.lambda_q2.zero_()  # exp(0) - exp(0) = 0
    layer.lambda_init = 0.0  # lambda = 0 and the (1 - lambda_init) scale = 1
    assert layer.lambda_full().item() == 0.0

    torch.manual_seed(6)
    x = torch.randn(2, 10, DIM)
    src = torch.randn(2, 7, 24) if cross else x
    key_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3]) if cross else None
    B, tq, tk = 2, x.shape[1], src.shape[1]
    H, hkv, hd = HEADS, KV_HEADS, layer.head_dim
    d = hd // 2
    # reference from PyTorch ops, in float64; sub-head 0 of the interleaved [H, 2, d] layout
    q1 = F.linear(x.double(), layer.q_proj.weight.double()).view(B, tq, H, 2, d)[:, :, :, 0].transpose(1, 2)
    k1 = F.linear(src.double(), layer.k_proj.weight.double()).view(B, tk, hkv, 2, d)[:, :, :, 0].transpose(1, 2)
    v = F.linear(src.double(), layer.v_proj.weight.double()).view(B, tk, hkv, hd).transpose(1, 2)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    a = F.scaled_dot_product_attention(q1, k1, v, attn_mask=mask, is_causal=not cross, enable_gqa=True)
    a = F.rms_norm(a, (hd,), weight=layer.subln.weight.double(), eps=1e-5)
    expected = F.linear(a.transpose(1, 2).reshape(B, tq, H * hd), layer.o_proj.weight.double())
    with torch.no_grad():
        out = layer(x, None if not cross else src, key_mask=key_mask)
    close(out, expected, what="cancelled second map")


@pytest.mark.parametrize("layer_idx", [0, 1, 2, 5, 11, 23])
def test_lambda_init_follows_paper_formula(layer_idx):
    layer = build_attention("diff", DIM, HEADS, layer_idx=layer_idx)
    expected = paper_lambda_init(layer_idx)
    assert layer.lambda_init == pytest.approx(expected, abs=1e-12)
    assert lambda_init_fn(layer_idx) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("value", [0.0, 0.5, 0.8])
def test_fixed_lambda_init_replaces_the_schedule(value):
    """The paper's constant-lambda_init ablation: the layer equals the naive layer with that constant."""
    layer = make_layer("diff", seed=3, layer_idx=5, lambda_init=value)
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 7, DIM)
    close(layer(x, ctx), naive_diff(layer, x, ctx, lam_init=value), what=f"lambda_init={value}")
    assert layer.lambda_full().item() == pytest.approx(float(naive_lambda(layer, value)), abs=1e-6)


@pytest.mark.parametrize("bad", [1.0, -0.1, 2, "0.5", True])
def test_fixed_lambda_init_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="lambda_init"):
        build_attention("diff", DIM, HEADS, lambda_init=bad)


def test_lambda_init_literal_values():
    # 0.8 - 0.6 exp(-0.3 (l - 1)) at l = 1, 2, 24 (0-based layer_idx 0, 1, 23)
    assert lambda_init_fn(0) == pytest.approx(0.2, abs=1e-9)
    assert lambda_init_fn(1) == pytest.approx(0.3555090676, abs=1e-9)
    assert lambda_init_fn(23) == pytest.approx(0.7993953287, abs=1e-9)


def test_diff_lambda_is_reparametrized_and_differentiable():
    layer = make_layer("diff", seed=7, layer_idx=4)
    lam = layer.lambda_full()
    expected = (
        math.exp(float((layer.lambda_q1.double() * layer.lambda_k1.double()).sum().detach()))
        - math.exp(float((layer.lambda_q2.double() * layer.lambda_k2.double()).sum().detach()))
        + paper_lambda_init(4)
    )
    assert lam.dtype == torch.float32 and lam.dim() == 0
    assert lam.item() == pytest.approx(expected, abs=1e-6)
    for p in (layer.lambda_q1, layer.lambda_k1, layer.lambda_q2, layer.lambda_k2):
        assert p.dtype == torch.float32 and p.shape == (layer.head_dim // 2,)
    # lambda gets gradient through a forward pass
    layer.train()
    layer(torch.randn(1, 4, DIM)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (layer.lambda_q1, layer.lambda_k2))


# --------------------------------------------------------------------------------------------
# KV cache decoding
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn_type", TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunks", [[1] * 12, [5] + [1] * 7, [5, 3, 1, 2, 1], [12]], ids=["1by1", "5then1", "5-3-1-2-1", "all"])
def test_kv_cache_decoding_matches_full_causal_forward(attn_type, backend, chunks):
    layer = make_layer(attn_type, seed=8, causal=True, rope=True, backend=backend, max_seq_len=16, layer_idx=2)
    torch.manual_seed(9)
    x = torch.randn(2, 12, DIM)
    cache = KVCache(max_len=12)
    outs, t = [], 0
    with torch.no_grad():
        full = layer(x)
        for c in chunks:
            outs.append(layer(x[:, t : t + c], cache=cache))
            t += c
    inc = torch.cat(outs, 1)
    assert cache.pos == 12
    close(inc, full, what="incremental vs full")
    close(inc, NAIVE[attn_type](layer, x, rope=True), what="incremental vs naive")


@pytest.mark.parametrize("attn_type", TYPES)
def test_kv_cache_decoding_with_key_mask_over_cached_keys(attn_type):
    """A left-padded batch decoded in chunks: key_mask covers the cached keys too."""
    layer = make_layer(attn_type, seed=10, causal=True, rope=True, max_seq_len=16)
    torch.manual_seed(11)
    x = torch.randn(2, 9, DIM)
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, :3] = False
    cache = KVCache(max_len=9)
    outs, t = [], 0
    with torch.no_grad():
        for c in [4, 1, 1, 3]:
            outs.append(layer(x[:, t : t + c], cache=cache, key_mask=key_mask[:, : t + c]))
            t += c
    close(torch.cat(outs, 1), NAIVE[attn_type](layer, x, key_mask=key_mask, rope=True), what="masked decoding")


@pytest.mark.parametrize("attn_type", TYPES)
def test_kv_cache_overflow_raises(attn_type):
    layer = make_layer(attn_type, causal=True)
    cache = KVCache(max_len=4)
    x = torch.randn(1, 5, DIM)
    with torch.no_grad():
        layer(x[:, :3], cache=cache)
        with pytest.raises(ValueError, match="overflow"):
            layer(x[:, 3:5], cache=cache)


def test_kv_cache_unit():
    cache = KVCache(max_len=5)
    a = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    b = -a
    k, v = cache.update(a, b)
    assert torch.equal(k, a) and torch.equal(v, b)
    k, v = cache.update(a[:, :, :1] + 100, b[:, :, :1] - 100)
    assert k.shape == (2, 3, 3, 4) and torch.equal(k[:, :, :2], a) and torch.equal(k[:, :, 2:], a[:, :, :1] + 100)
    assert torch.equal(v[:, :, 2:], b[:, :, :1] - 100)
    with pytest.raises(ValueError, match="max_len"):
        cache.update(a, b)  # 3 + 2 fits ...
        cache.update(a[:, :, :1], b[:, :, :1])  # ... 5 + 1 does not
    cache.reset()
    assert cache.pos == 0
    k, _ = cache.update(a, b)
    assert torch.equal(k, a)


@pytest.mark.parametrize("attn_type", list_attention_types())
def test_context_kv_projected_once_gives_the_cross_attention_output(attn_type):
    """``forward(x, context_kv=project_context(ctx))`` (a recognizer's decoding steps over one image): against the
    naive reference where there is one, else against ``forward(x, ctx)``; under a per-query mask too, gradients
    reach the key / value projections through the projected context, and misuse is named."""
    kw = {"signal_ratio": 2} if attn_type == "gda" else {}
    layer = make_layer(attn_type, seed=5, kv_dim=24, layer_idx=2, **kw)
    torch.manual_seed(6)
    x, ctx = torch.randn(3, 5, DIM), torch.randn(3, 9, 24)
    key_mask = torch.rand(3, 5, 9) > 0.3
    key_mask[..., 0] = True
    if attn_type == "dint":  # its mean over queries takes one key mask per sequence
        key_mask = key_mask[:, 0]
    kv = layer.project_context(ctx)
    with torch.no_grad():
        got = layer(x, context_kv=kv, key_mask=key_mask)
        want = layer(x, ctx, key_mask=key_mask)
        if attn_type in NAIVE:
            close(got, NAIVE[attn_type](layer, x, context=ctx, key_mask=key_mask), what="naive")
    close(got, want, what="context")
    for step in range(2):  # the same projection serves several calls (decoding steps)
        close(layer(x[:, step:step + 1], context_kv=kv).detach(), layer(x[:, step:step + 1], ctx).detach(), what="step")
    layer.zero_grad()
    layer(x, context_kv=layer.project_context(ctx)).sum().backward()
    g_kv = [p.grad.clone() for p in (layer.k_proj.weight, layer.v_proj.weight)]
    layer.zero_grad()
    layer(x, ctx).sum().backward()
    for got_g, p in zip(g_kv, (layer.k_proj.weight, layer.v_proj.weight)):
        close(got_g, p.grad, what="grad")
    with pytest.raises(ValueError, match="either context or context_kv"):
        layer(x, ctx, context_kv=kv)
    for bad in ({"context_kv": kv}, {"context": ctx}):  # another batch of images than of queries
        with pytest.raises(ValueError, match="x has batch 2 but the context"):
            layer(x[:2], **bad)
    with pytest.raises(ValueError, match="cache"):
        layer(x, context_kv=kv, cache=KVCache(8))


@pytest.mark.parametrize("attn_type", TYPES)
def test_cache_with_context_raises(attn_type):
    layer = make_layer(attn_type, kv_dim=24)
    with pytest.raises(ValueError, match="cache"):
        layer(torch.randn(1, 2, DIM), torch.randn(1, 3, 24), cache=KVCache(8))


# --------------------------------------------------------------------------------------------
# Construction, parameters, errors
# --------------------------------------------------------------------------------------------


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("dim,n_heads,n_kv_heads,bias", [(48, 4, 2, False), (64, 8, 8, True), (96, 6, 3, False)])
def test_vanilla_and_diff_parameter_parity(dim, n_heads, n_kv_heads, bias):
    van = build_attention("vanilla", dim, n_heads, n_kv_heads=n_kv_heads, bias=bias)
    dif = build_attention("diff", dim, n_heads, n_kv_heads=n_kv_heads, bias=bias)
    hd = dim // n_heads
    kv = n_kv_heads * hd
    expected_vanilla = dim * dim + 2 * dim * kv + dim * dim + (bias * (dim + 2 * kv + dim))
    assert n_params(van) == expected_vanilla
    # extra: four lambda vectors of size d = hd / 2 and the subln weight over 2d = hd channels
    assert n_params(dif) - n_params(van) == 4 * (hd // 2) + hd
    pv, pd = dict(van.named_parameters()), dict(dif.named_parameters())
    assert set(pd) - set(pv) == {"lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2", "subln.weight"}
    assert set(pv) <= set(pd)
    for name in pv:
        assert pv[name].shape == pd[name].shape, name


def test_diff_v2_parameter_overhead():
    dim, h, hkv = 48, 4, 2
    van = build_attention("vanilla", dim, h, n_kv_heads=hkv)
    v2 = build_attention("diff_v2", dim, h, n_kv_heads=hkv)
    hd = dim // h
    # H extra query heads of hd, plus lambda_proj (dim -> H, with bias)
    assert n_params(v2) - n_params(van) == dim * h * hd + dim * h + h


def test_unknown_attention_type_lists_known_types():
    with pytest.raises(ValueError) as exc:
        build_attention("difff", DIM, HEADS)
    msg = str(exc.value)
    assert "difff" in msg
    for name in TYPES:
        assert repr(name) in msg or name in msg


@pytest.mark.parametrize("attn_type", TYPES)
def test_dim_not_divisible_by_heads_raises(attn_type):
    with pytest.raises(ValueError, match="divisible"):
        build_attention(attn_type, 30, 4)
    with pytest.raises(ValueError, match="multiple"):
        build_attention(attn_type, 32, 4, n_kv_heads=3)


def test_diff_odd_head_dim_raises():
    with pytest.raises(ValueError, match="even"):
        build_attention("diff", 36, 4)  # head_dim 9


@pytest.mark.parametrize("attn_type", TYPES)
def test_cross_attention_shapes(attn_type):
    layer = make_layer(attn_type, kv_dim=20, n_kv_heads=1)
    x, ctx = torch.randn(2, 3, DIM), torch.randn(2, 17, 20)
    assert layer(x, ctx).shape == (2, 3, DIM)
    with pytest.raises(ValueError, match="kv_dim"):
        layer(x, torch.randn(2, 17, DIM))


@pytest.mark.parametrize("attn_type", TYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_inactive_in_eval(attn_type, backend):
    drop = make_layer(attn_type, seed=12, causal=True, dropout=0.5, backend=backend)
    plain = make_layer(attn_type, seed=99, causal=True, dropout=0.0, backend=backend)
    plain.load_state_dict(drop.state_dict())
    torch.manual_seed(13)
    x = torch.randn(2, 8, DIM)
    drop.eval()
    plain.eval()
    with torch.no_grad():
        a, b, ref = drop(x), drop(x), plain(x)
    assert torch.equal(a, b)
    close(a, ref, atol=1e-6, rtol=1e-6, what="eval dropout")
    # in training mode the same layer does drop (so the eval check is not vacuous)
    drop.train()
    with torch.no_grad():
        assert not torch.allclose(drop(x), ref, atol=1e-3)


def test_diff_without_subln_leaves_out_the_head_norm_and_scale():
    """subln=False: the heads' raw differential outputs; subln=True: each head's RMS-normalized output
    times (1 - lambda_init), written out here by hand. The output projection is the identity, so the
    module returns the heads side by side."""
    torch.manual_seed(0)
    dim, H = 32, 2
    x, ctx = torch.randn(2, 5, dim), torch.randn(2, 7, dim)
    mods = {}
    for subln in (True, False):
        torch.manual_seed(1)
        m = build_attention("diff", dim, H, lambda_init=0.3, subln=subln, bias=True)
        with torch.no_grad():
            m.o_proj.weight.copy_(torch.eye(dim))
            m.o_proj.bias.zero_()
        mods[subln] = m
    assert mods[True].subln is not None and mods[False].subln is None
    assert sum(p.numel() for p in mods[True].parameters()) - sum(p.numel() for p in mods[False].parameters()) == dim // H
    raw = mods[False](x, context=ctx).view(2, 5, H, dim // H)
    normed = raw * torch.rsqrt(raw.pow(2).mean(-1, keepdim=True) + 1e-5) * (1 - 0.3)
    torch.testing.assert_close(mods[True](x, context=ctx), normed.reshape(2, 5, dim), rtol=1e-5, atol=1e-6)
    # without the norm the output follows the values' scale; with it, only through the norm's eps
    for m in mods.values():
        with torch.no_grad():
            m.v_proj.weight.mul_(2)
            m.v_proj.bias.mul_(2)
    torch.testing.assert_close(mods[False](x, context=ctx), 2 * raw.reshape(2, 5, dim), rtol=1e-5, atol=1e-6)
    raw2 = 2 * raw
    normed2 = raw2 * torch.rsqrt(raw2.pow(2).mean(-1, keepdim=True) + 1e-5) * (1 - 0.3)
    torch.testing.assert_close(mods[True](x, context=ctx), normed2.reshape(2, 5, dim), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="subln must be True or False"):
        build_attention("diff", dim, H, subln="no")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_keeps_its_angles_after_module_cast(dtype):
    """model.to(bf16) (Lightning's precision="bf16-true") must not round RoPE's frequencies: late
    positions would rotate by the wrong angle (radians off), far beyond rounding the output."""
    from zoo.nn import RotaryEmbedding

    rope = RotaryEmbedding(16, max_seq_len=8).to(dtype)
    x = torch.randn(1, 1, 4, 16, dtype=torch.float64)
    start = 1500  # beyond the table: built after the cast
    got = rope(x.to(dtype), start).double()
    ref = rope_ref(x.to(dtype).double(), start)
    eps = torch.finfo(dtype).eps
    assert (got - ref).abs().max() < 8 * eps * x.abs().max()


def test_rope_holds_no_table_of_max_seq_len_and_compiles_once():
    """A converted Llama 3 has max_seq_len 131072: a cos/sin table of every position in every layer held
    131072 x D x 8 bytes a layer (134 MB at head dim 128) after the first forward; and a table filled lazily on
    the first call made torch.compile compile the model twice (a guard on the empty cache)."""
    from torch._dynamo.utils import counters

    from zoo.models.lm import DiffTransformerLM, LMConfig
    from zoo.nn import RotaryEmbedding

    def tensors(v):
        return [v] if torch.is_tensor(v) else [t for u in v for t in tensors(u)] if isinstance(v, (tuple, list)) else []

    torch.manual_seed(0)
    model = DiffTransformerLM(LMConfig(vocab_size=50, dim=32, n_layers=2, n_heads=2, max_seq_len=131072))
    ids = torch.randint(0, 50, (2, 8))
    model(ids)
    ropes = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    assert len(ropes) == 2
    held = [t for m in ropes for v in [*vars(m).values(), *m._buffers.values(), RotaryEmbedding.__dict__.get("_last")]
            for t in tensors(v)]
    assert max((t.numel() for t in held), default=0) <= 8 * 16, [tuple(t.shape) for t in held]
    # the angles rotate like the reference at a position far past the first call's
    rope = RotaryEmbedding(8, max_seq_len=16)
    x = torch.randn(1, 1, 3, 8, dtype=torch.float64)
    # fp32 angles (as Hugging Face's): off by about eps32 * position radians
    torch.testing.assert_close(rope(x, 100000), rope_ref(x, 100000), rtol=0, atol=4 * 1.2e-7 * 100003 * x.abs().max().item())

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    for _ in range(3):
        compiled(ids)
    assert counters["stats"]["unique_graphs"] == 1


def test_bad_kv_heads_and_a_refused_cached_call_leave_the_cache_unchanged():
    from zoo.nn import KVCache

    with pytest.raises(ValueError, match=r"n_kv_heads \(0\)"):  # 0 used to mean "n_heads" silently
        build_attention("diff", dim=32, n_heads=4, n_kv_heads=0)
    from zoo.models.lm import LMConfig

    with pytest.raises(ValueError, match=r"n_kv_heads must be a positive integer, got 0"):
        LMConfig(vocab_size=10, dim=32, n_layers=1, n_heads=4, n_kv_heads=0)
    torch.manual_seed(0)
    layer = build_attention("diff", dim=32, n_heads=2, causal=True, rope=True, max_seq_len=16).eval()
    x = torch.randn(1, 5, 32)
    cache = KVCache(16)
    layer(x[:, :3], cache=cache)
    with pytest.raises(ValueError, match=r"key_mask covers the cached keys too: expected \[1, 3 cached \+ 1 new\]"):
        layer(x[:, 3:4], key_mask=torch.ones(1, 1, dtype=torch.bool), cache=cache)  # the new key only
    assert cache.pos == 3  # untouched: the retry below continues the sequence
    out = layer(x[:, 3:4], key_mask=torch.ones(1, 4, dtype=torch.bool), cache=cache)
    full = layer(x[:, :4])  # reference: the whole sequence at once (causal)
    torch.testing.assert_close(out, full[:, 3:4], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn_type", ["vanilla", "diff", "diff_v2", "dint", "gda", "shared_diff"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_an_empty_batch_or_sequence_gives_an_empty_output(attn_type, backend):
    """B = 0 (and Tq = 0) is a batch like any other, as for torch's own layers: no 'cannot reshape ... -1 is
    ambiguous' from the head split or the head merge."""
    extra = {"signal_ratio": 2} if attn_type == "gda" else {}
    layer = build_attention(attn_type, DIM, HEADS, causal=True, rope=True, backend=backend, **extra).eval()
    assert tuple(layer(torch.randn(0, 5, DIM)).shape) == (0, 5, DIM)
    assert tuple(layer(torch.randn(2, 0, DIM)).shape) == (2, 0, DIM)
    cross = build_attention(attn_type, DIM, HEADS, kv_dim=16, backend=backend, **extra).eval()
    assert tuple(cross(torch.randn(0, 3, DIM), torch.randn(0, 7, 16)).shape) == (0, 3, DIM)


@pytest.mark.parametrize("attn_type", ["diff", "dint", "gda", "shared_diff"])
def test_a_float64_differential_layer_computes_in_float64(attn_type):
    """model.double() (gradcheck, numerical references) keeps float64 through the lambda and the head RMSNorm:
    both were cast to float32, so a float64 layer matched its float64 reference to 1e-7 only and failed gradcheck."""
    from zoo.nn import RMSNorm

    x = torch.randn(3, 8, dtype=torch.float64)
    ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(RMSNorm(8).double()(x), ref, rtol=1e-13, atol=1e-13)
    torch.manual_seed(0)
    extra = {"signal_ratio": 2} if attn_type == "gda" else {}
    layer = build_attention(attn_type, 16, 2, causal=True, backend="naive", **extra).double().eval()
    lq1, lk1, lq2, lk2 = (p.detach() for p in (layer.lambda_q1, layer.lambda_k1, layer.lambda_q2, layer.lambda_k2))
    lam = math.exp(float((lq1 * lk1).sum())) - math.exp(float((lq2 * lk2).sum())) + layer.lambda_init
    assert layer.lambda_full().dtype == torch.float64
    assert abs(float(layer.lambda_full()) - lam) < 1e-14
    xin = torch.randn(1, 4, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (xin,), atol=1e-6)


def test_a_float64_diff_v2_layer_computes_in_float64():
    """model.double() keeps float64 through V2's per-token lambda: sigmoid(Linear(x)) was cast to float32, so a
    float64 layer matched its float64 reference to 1e-8 only and failed gradcheck."""
    layer = make_layer("diff_v2", seed=3, causal=True, backend="naive").double()
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    close(layer(x), naive_diff_v2(layer, x), atol=1e-12, rtol=1e-12, what="float64 diff_v2")
    xin = torch.randn(1, 4, DIM, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (xin,), atol=1e-6)


def test_opamp_adapter_of_a_float64_layer_computes_in_float64():
    """OpAmp's ``g_d (A1 - A2) + g_c (A1 + A2) / 2`` = ``c1 A1 V - c2 A2 V`` (c1 = g_d + g_c/2, c2 = g_d - g_c/2)
    on a float64 layer, against a per-head float64 softmax written out here: its ratio c2 / c1 was made a float32
    tensor, which rounded the lambda of a float64 model (outputs 3e-8 off at cmrr 8)."""
    from zoo.nn.adapters import OpAmpAttention

    torch.manual_seed(0)
    B, T, H, hd = 2, 5, 2, 8
    op = OpAmpAttention(build_attention("vanilla", 16, H, causal=True), rank=2, alpha=4.0, cmrr=8.0).double()
    with torch.no_grad():
        for p in op.adapter.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(B, T, 16, dtype=torch.float64)
    a, ad = op.base, op.adapter

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, H, hd).transpose(1, 2)

    q, k, v = heads(lin(x, a.q_proj)), heads(lin(x, a.k_proj)), heads(lin(x, a.v_proj))
    lora = lambda m, t: (t @ m.a.double().T) @ m.b.double().T * m.scale  # noqa: E731
    q1, q2 = q + heads(lora(ad.q1, x)), q + heads(lora(ad.q2, x))
    k1, k2 = k + heads(lora(ad.k1, x)), k + heads(lora(ad.k2, x))
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def attend(qq: torch.Tensor, kk: torch.Tensor) -> torch.Tensor:
        s = (qq @ kk.transpose(-1, -2)) / math.sqrt(hd)
        return s.masked_fill(~causal, float("-inf")).softmax(-1) @ v

    gc, gd = 1.0, 8.0
    o = (gd + gc / 2) * attend(q1, k1) - (gd - gc / 2) * attend(q2, k2)
    want = lin(o.transpose(1, 2).reshape(B, T, H * hd), a.o_proj)
    got = op(x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_an_unknown_backend_is_refused_where_the_layer_is_built():
    # it built (and a model with it exported) and failed only at the first forward
    import zoo

    with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
        build_attention("diff", 16, 2, backend="bogus")
    with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
        zoo.create_model("lm-diff-tiny", attn_backend="bogus")
    assert build_attention("vanilla", 16, 2, backend="SDPA").backend == "SDPA"  # names are read case-blind, as before
