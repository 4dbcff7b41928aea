"""Shared DIFF, DINT and GDA against float64 references written here from the layers' weights.

The references build every map explicitly (per head, hand-made masks, rotate-half RoPE written out),
so they share no code with ``zoo.nn.variants`` beyond reading its parameters.
"""

from __future__ import annotations

import math

import pytest
import torch

from zoo.nn import KVCache, build_attention, lambda_init_fn
from zoo.nn.variants import dint_attention

DIM, HEADS = 48, 6  # head_dim 8, sub-heads d = 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def lin(x, layer):
    y = x.double() @ layer.weight.double().T
    return y if layer.bias is None else y + layer.bias.double()


def rope_ref(x, theta=10000.0):
    D, T = x.shape[-1], x.shape[-2]
    half = D // 2
    out = torch.empty_like(x)
    for i in range(half):
        ang = torch.arange(T, dtype=torch.float64) * theta ** (-2.0 * i / D)
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * ang.cos() - b * ang.sin()
        out[..., i + half] = b * ang.cos() + a * ang.sin()
    return out


def heads(t, n, width):
    B, T, _ = t.shape
    return t.view(B, T, n, width).transpose(1, 2)


def softmax_map(q, k, causal):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, dim=-1)


def lam_ref(attn):
    p = {n: getattr(attn, n).double() for n in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")}
    return torch.exp((p["lambda_q1"] * p["lambda_k1"]).sum()) - torch.exp((p["lambda_q2"] * p["lambda_k2"]).sum()) + attn.lambda_init


def finish(attn, out):
    """subln (RMSNorm over 2d, eps 1e-5) * (1 - lambda_init), concat heads, o_proj."""
    out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.subln.weight.double()
    out = out * (1 - attn.lambda_init)
    B, H, T, D = out.shape
    return lin(out.transpose(1, 2).reshape(B, T, H * D), attn.o_proj)


def randomize(attn, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return attn


# ------------------------------------------------------------------------------------- shared_diff


def test_shared_diff_matches_reference():
    attn = randomize(build_attention("shared_diff", DIM, HEADS, n_kv_heads=3, rank=2, causal=True, rope=True)).eval()
    x = torch.randn(2, 7, DIM)
    d, H, Hkv = 4, HEADS, 3
    xd = x.double()
    q1 = rope_ref(heads(lin(x, attn.q_proj) + lin(lin(xd, attn.q_lora1[0]), attn.q_lora1[1]), H, d))
    q2 = rope_ref(heads(lin(x, attn.q_proj) + lin(lin(xd, attn.q_lora2[0]), attn.q_lora2[1]), H, d))
    k1 = rope_ref(heads(lin(x, attn.k_proj) + lin(lin(xd, attn.k_lora1[0]), attn.k_lora1[1]), Hkv, d))
    k2 = rope_ref(heads(lin(x, attn.k_proj) + lin(lin(xd, attn.k_lora2[0]), attn.k_lora2[1]), Hkv, d))
    v = heads(lin(x, attn.v_proj), Hkv, 2 * d)
    lam = lam_ref(attn)
    outs = []
    for h in range(H):
        g = h // (H // Hkv)  # head h's KV group: its map 1 and map 2 use that group's k1 / k2
        a = softmax_map(q1[:, h], k1[:, g], True) - lam * softmax_map(q2[:, h], k2[:, g], True)
        outs.append(a @ v[:, g])
    ref = finish(attn, torch.stack(outs, 1))
    for backend in ("naive", "sdpa"):
        attn.backend = backend
        torch.testing.assert_close(attn(x).double(), ref, atol=2e-5, rtol=1e-4)


def test_shared_diff_with_zero_updates_equals_diff():
    sd = randomize(build_attention("shared_diff", DIM, HEADS, rank=3, causal=True, rope=True))
    diff = build_attention("diff", DIM, HEADS, causal=True, rope=True)
    d = 4
    with torch.no_grad():
        for m in (sd.q_lora1, sd.q_lora2, sd.k_lora1, sd.k_lora2):
            m[1].weight.zero_()
        # diff stores [H, 2, d] interleaved: both sub-heads get the shared base rows.
        for name in ("q_proj", "k_proj"):
            base = getattr(sd, name).weight.view(HEADS, d, DIM)
            getattr(diff, name).weight.copy_(torch.stack([base, base], 1).reshape(-1, DIM))
        for name in ("v_proj", "o_proj", "subln"):
            getattr(diff, name).load_state_dict(getattr(sd, name).state_dict())
        for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            getattr(diff, name).copy_(getattr(sd, name))
    x = torch.randn(2, 6, DIM)
    torch.testing.assert_close(sd(x), diff(x), atol=1e-6, rtol=1e-5)


def test_shared_diff_parameter_count():
    r, d = 5, 4
    attn = build_attention("shared_diff", DIM, HEADS, n_kv_heads=2, rank=r)
    H, Hkv = HEADS, 2
    expected = (
        DIM * H * d + DIM * Hkv * d  # shared bases
        + 2 * (DIM * r + r * H * d) + 2 * (DIM * r + r * Hkv * d)  # four low-rank updates
        + DIM * Hkv * 2 * d + H * 2 * d * DIM  # v, o
        + 4 * d + 2 * d  # lambdas, subln
    )
    assert sum(p.numel() for p in attn.parameters()) == expected
    diff = build_attention("diff", DIM, HEADS, n_kv_heads=2)
    assert expected < sum(p.numel() for p in diff.parameters())


# ------------------------------------------------------------------------------------------- dint


def dint_map_ref(a1, a2, lam, causal):
    """A1 - lam A2 + lam G, G rows = (running, if causal) mean over queries of A1's rows."""
    T = a1.shape[-2]
    if causal:
        g = torch.cumsum(a1, dim=-2) / torch.arange(1, T + 1, dtype=a1.dtype)[:, None]
    else:
        g = a1.mean(dim=-2, keepdim=True).expand_as(a1)
    return a1 - lam * a2 + lam * g


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_dint_rows_sum_to_one_and_match_reference(causal, backend):
    torch.manual_seed(0)
    B, H, T, d = 2, 3, 9, 4
    q1, q2, k1, k2 = (torch.randn(B, H, T, d) * 2 for _ in range(4))
    lam = torch.tensor(0.7)
    eye = torch.eye(T).expand(B, H, T, T).contiguous()  # V = I turns the output into the map itself
    got, _ = dint_attention(q1, q2, k1, k2, eye, lam, causal=causal, backend=backend)
    ref = dint_map_ref(softmax_map(q1.double(), k1.double(), causal), softmax_map(q2.double(), k2.double(), causal),
                       0.7, causal)
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.double().sum(-1), torch.ones(B, H, T, dtype=torch.float64), atol=1e-6, rtol=0)
    if causal:  # the integral term must not leak future keys
        assert got.triu(1).abs().max() == 0
    # without the integral term the rows sum to 1 - lambda: the term is what restores them
    a = softmax_map(q1.double(), k1.double(), causal) - 0.7 * softmax_map(q2.double(), k2.double(), causal)
    assert torch.allclose(a.sum(-1), torch.full((B, H, T), 0.3, dtype=torch.float64))


def test_dint_padded_queries_do_not_enter_the_mean():
    torch.manual_seed(1)
    B, H, T, d = 1, 2, 6, 4
    q1, q2, k1, k2 = (torch.randn(B, H, T, d) for _ in range(4))
    mask = torch.tensor([[True, True, True, True, False, False]])
    eye = torch.eye(T).expand(B, H, T, T).contiguous()
    got, _ = dint_attention(q1, q2, k1, k2, eye, torch.tensor(0.5), key_mask=mask, query_mask=mask, backend="naive")
    n = 4
    a1 = softmax_map(q1[..., :n, :].double(), k1[..., :n, :].double(), False)
    a2 = softmax_map(q2[..., :n, :].double(), k2[..., :n, :].double(), False)
    ref = dint_map_ref(a1, a2, 0.5, False)
    torch.testing.assert_close(got[..., :n, :n].double(), ref, atol=1e-6, rtol=1e-5)
    assert got[..., n:].abs().max() == 0  # padded keys get no weight


@pytest.mark.parametrize("backend", ["naive", "sdpa"])
def test_dint_cross_attention_padded_queries_do_not_change_real_outputs(backend):
    """Cross-attention (text queries padded to one length, image keys): G is the mean over the *real* queries,
    as in the unpadded call; padded queries entered the mean (no way to name them in the layer's forward)."""
    kv_dim = 20
    attn = randomize(build_attention("dint", DIM, HEADS, n_kv_heads=3, kv_dim=kv_dim, backend=backend), seed=3).eval()
    torch.manual_seed(3)
    n_real, T, Tk = [4, 2], 6, 5
    x, ctx = torch.randn(2, T, DIM), torch.randn(2, Tk, kv_dim)
    qmask = torch.arange(T)[None, :] < torch.tensor(n_real)[:, None]
    got = attn(x, ctx, query_mask=qmask).double()
    d, H, Hkv = 4, HEADS, 3
    lam = lam_ref(attn)
    for b, n in enumerate(n_real):  # float64 reference of the unpadded call, one sequence at a time
        xb, cb = x[b : b + 1, :n], ctx[b : b + 1]
        q = heads(lin(xb, attn.q_proj), H, 2 * d).view(1, H, n, 2, d)
        k = heads(lin(cb, attn.k_proj), Hkv, 2 * d).view(1, Hkv, Tk, 2, d)
        v = heads(lin(cb, attn.v_proj), Hkv, 2 * d)
        outs = []
        for h in range(H):
            g = h // (H // Hkv)
            a1 = softmax_map(q[:, h, :, 0], k[:, g, :, 0], False)
            a2 = softmax_map(q[:, h, :, 1], k[:, g, :, 1], False)
            outs.append(dint_map_ref(a1, a2, lam, False) @ v[:, g])
        ref = finish(attn, torch.stack(outs, 1))
        torch.testing.assert_close(got[b : b + 1, :n], ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("attn_type", ["vanilla", "diff", "diff_v2", "gda", "shared_diff"])
def test_query_mask_is_accepted_by_every_type_and_leaves_real_rows_alone(attn_type):
    """A model passes one query mask to whatever attention type its config names; row-wise types ignore it."""
    attn = build_attention(attn_type, DIM, HEADS, kv_dim=20).eval()
    x, ctx = torch.randn(2, 5, DIM), torch.randn(2, 4, 20)
    qmask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(attn(x, ctx, query_mask=qmask)[1, :2], attn(x[1:, :2], ctx[1:])[0])


def test_query_mask_of_the_wrong_shape_is_refused():
    attn = build_attention("dint", DIM, HEADS)
    with pytest.raises(ValueError, match="query_mask"):
        attn(torch.randn(2, 5, DIM), query_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="query_mask"):
        attn(torch.randn(2, 5, DIM), query_mask=torch.ones(2, 5))


@pytest.mark.parametrize("shape", [(8,), (2, 1, 1, 1), (1, 4, 5)])
def test_dint_lambda_that_does_not_broadcast_to_the_output_is_refused(shape):
    """[8] (= the value width) scaled value channels and [2, 1, 1, 1] at batch 1 doubled the batch, silently."""
    B, H, T, d = 1, 2, 5, 4
    q1, q2, k1, k2 = (torch.randn(B, H, T, d) for _ in range(4))
    v = torch.randn(B, H, T, 2 * d)
    with pytest.raises(ValueError, match=r"lam of shape .* does not broadcast to \[batch, H, Tq, 1\]"):
        dint_attention(q1, q2, k1, k2, v, torch.full(shape, 0.5))
    for ok in [(), (H, 1, 1), (B, H, T, 1)]:  # the accepted forms still run
        assert dint_attention(q1, q2, k1, k2, v, torch.full(ok, 0.5))[0].shape == (B, H, T, 2 * d)


def test_dint_maps_of_different_shapes_are_refused():
    """A q2 of one query broadcast against q1's five (o1 - lam o2 widened it silently), as diff_attention refuses."""
    B, H, T, d = 2, 2, 5, 4
    q1, k1, k2 = (torch.randn(B, H, T, d) for _ in range(3))
    with pytest.raises(ValueError, match="two maps disagree"):
        dint_attention(q1, torch.randn(B, H, 1, d), k1, k2, torch.randn(B, H, T, 2 * d), 0.5)


def test_dint_layer_matches_reference_and_cache():
    attn = randomize(build_attention("dint", DIM, HEADS, n_kv_heads=2, layer_idx=2, causal=True, rope=True)).eval()
    x = torch.randn(2, 7, DIM)
    d, H, Hkv = 4, HEADS, 2
    q = heads(lin(x, attn.q_proj), H, 2 * d).view(2, H, 7, 2, d)
    k = heads(lin(x, attn.k_proj), Hkv, 2 * d).view(2, Hkv, 7, 2, d)
    v = heads(lin(x, attn.v_proj), Hkv, 2 * d)
    lam = lam_ref(attn)
    assert attn.lambda_init == pytest.approx(lambda_init_fn(2))
    outs = []
    for h in range(H):
        g = h // (H // Hkv)
        a1 = softmax_map(rope_ref(q[:, h, :, 0]), rope_ref(k[:, g, :, 0]), True)
        a2 = softmax_map(rope_ref(q[:, h, :, 1]), rope_ref(k[:, g, :, 1]), True)
        outs.append(dint_map_ref(a1, a2, lam, True) @ v[:, g])
    ref = finish(attn, torch.stack(outs, 1))
    torch.testing.assert_close(attn(x).double(), ref, atol=2e-5, rtol=1e-4)
    cache = KVCache(16)
    steps = torch.cat([attn(x[:, :4], cache=cache)] + [attn(x[:, t : t + 1], cache=cache) for t in range(4, 7)], 1)
    torch.testing.assert_close(steps.double(), ref, atol=2e-5, rtol=1e-4)
    cache = KVCache(16)  # an empty chunk (a chunked prefill's last) leaves the running mean as it was
    steps = [attn(x[:, a:b], cache=cache) for a, b in ((0, 3), (3, 3), (3, 4), (4, 4), (4, 7))]
    assert [s.shape[1] for s in steps] == [3, 0, 1, 0, 3]
    torch.testing.assert_close(torch.cat(steps, 1).double(), ref, atol=2e-5, rtol=1e-4)


# -------------------------------------------------------------------------------------------- gda


@pytest.mark.parametrize("ratio,kv", [(3, None), (2, 2), (1, 3)])
def test_gda_matches_reference(ratio, kv):
    attn = randomize(build_attention("gda", DIM, HEADS, n_kv_heads=kv, signal_ratio=ratio, causal=True, rope=True))
    x = torch.randn(2, 5, DIM)
    d, H = 4, HEADS
    Hkv = kv or H
    Hn, Hnkv = H // ratio, max(1, Hkv // ratio)
    qa = heads(lin(x, attn.q_proj), H + Hn, d)
    ka = heads(lin(x, attn.k_proj), Hkv + Hnkv, d)
    v = heads(lin(x, attn.v_proj), Hkv, 2 * d)
    q1, q2 = rope_ref(qa[:, :H]), rope_ref(qa[:, H:])
    k1, k2 = rope_ref(ka[:, :Hkv]), rope_ref(ka[:, Hkv:])
    lam = lam_ref(attn)
    outs = []
    for h in range(H):
        g, n = h // (H // Hkv), h // ratio  # signal KV group; shared noise head
        gn = n // (Hn // Hnkv)
        a = softmax_map(q1[:, h], k1[:, g], True) - lam * softmax_map(q2[:, n], k2[:, gn], True)
        outs.append(a @ v[:, g])
    ref = finish(attn, torch.stack(outs, 1))
    for backend in ("naive", "sdpa"):
        attn.backend = backend
        torch.testing.assert_close(attn(x).double(), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("ratio,kv", [(3, None), (3, 6), (2, 2), (4, 4)])
def test_gda_parameter_count(ratio, kv):
    H = 8 if ratio == 4 else 6
    dim = 8 * H
    hd = dim // H
    d = hd // 2
    attn = build_attention("gda", dim, H, n_kv_heads=kv, signal_ratio=ratio)
    Hkv = kv or H
    Hn, Hnkv = H // ratio, max(1, Hkv // ratio)
    expected = dim * (H + Hn) * d + dim * (Hkv + Hnkv) * d + dim * Hkv * hd + H * hd * dim + 4 * d + hd
    assert sum(p.numel() for p in attn.parameters()) == expected
    assert attn.n_noise_heads == Hn


def test_gda_rejects_bad_ratio():
    with pytest.raises(ValueError, match="signal_ratio"):
        build_attention("gda", DIM, HEADS, signal_ratio=4)


@pytest.mark.parametrize("attn_type", ["shared_diff", "dint", "gda"])
def test_variants_train_in_the_lm(attn_type):
    from zoo.models.lm import DiffTransformerLM, LMConfig

    torch.manual_seed(0)
    model = DiffTransformerLM(LMConfig(vocab_size=40, dim=48, n_layers=2, n_heads=6, max_seq_len=32, attn_type=attn_type))
    ids = torch.randint(0, 40, (2, 12))
    logits = model(ids)
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    out = model.generate(ids[:1, :3], max_new_tokens=4, temperature=0)
    assert out.shape == (1, 7)


def test_dint_keeps_float64_precision():
    """float64 inputs (as the naive reference backend keeps them) must not be combined in float32."""
    torch.manual_seed(2)
    B, H, T, d = 1, 2, 6, 4
    q1, q2, k1, k2 = (torch.randn(B, H, T, d, dtype=torch.float64) for _ in range(4))
    v = torch.randn(B, H, T, 2 * d, dtype=torch.float64)
    ref = dint_map_ref(softmax_map(q1, k1, True), softmax_map(q2, k2, True), 0.7, True) @ v
    got, _ = dint_attention(q1, q2, k1, k2, v, torch.tensor(0.7, dtype=torch.float64), causal=True, backend="naive")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("attn_type, bad", [("shared_diff", {"rank": 0}), ("shared_diff", {"rank": 2.5}),
                                            ("gda", {"signal_ratio": 2.5}), ("gda", {"signal_ratio": 0})])
def test_fractional_or_zero_head_settings_are_named(attn_type, bad):
    """rank 0 fell back to the default rank and a fractional signal_ratio was truncated, silently."""
    (key, value), = bad.items()
    with pytest.raises(ValueError, match=rf"{key} must be a positive integer.*got {value}"):
        build_attention(attn_type, 32, 4, **bad)
    assert build_attention("shared_diff", 32, 4, rank=3).rank == 3 and build_attention("gda", 32, 4, signal_ratio=2).signal_ratio == 2
