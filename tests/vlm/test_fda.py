"""FDA cross-attention against hand-written naive math (vanilla and diff cores, every direction)."""

import math

import pytest
import torch

from zoo.nn import build_attention
from zoo.nn.fda import FDACrossAttention

B, TQ, TK, DIM, KV, H = 2, 5, 7, 32, 24, 4


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def make(attn_type, **kw):
    core = build_attention(attn_type, DIM, H, kv_dim=KV, bias=True, layer_idx=1, backend="naive")
    with torch.no_grad():  # non-trivial lambda / subln so their use is checked
        for p in core.parameters():
            if p.dim() == 1:
                p.normal_(0.0, 0.3)
    return FDACrossAttention(core, **kw).eval()


def inputs(query_pad=False):
    x, fw, ctx = torch.randn(B, TQ, DIM), torch.randn(B, TQ, DIM), torch.randn(B, TK, KV)
    qmask = torch.ones(B, TQ, dtype=torch.bool)
    if query_pad:
        qmask[1, -2:] = False
    return x, fw, ctx, qmask


def naive_maps(q, qf, k, qmask, g, heads, direction):
    """One softmax map pair written out with explicit formulas (float64)."""
    d = q.shape[-1]
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d)
    sf = torch.einsum("bhqd,bhkd->bhqk", qf, k) / math.sqrt(d)
    a_k, af_k = s.softmax(-1), sf.softmax(-1)
    m = qmask[:, None, :, None]
    a_q = s.masked_fill(~m, -math.inf).softmax(-2).nan_to_num(0.0)
    af_q = sf.masked_fill(~m, -math.inf).softmax(-2).nan_to_num(0.0)
    out = a_k.clone()
    for h in range(q.shape[1]):
        if direction == "reference":
            gh = g if h in heads else 0.0
            out[:, h] = torch.minimum((a_q[:, h] - gh * af_q[:, h]).clamp(min=0), (a_k[:, h] - gh * af_k[:, h]).clamp(min=0))
            continue
        if h not in heads:
            continue
        sub_k = (a_k[:, h] - g * af_k[:, h]).clamp(min=0)
        if direction == "keys":
            out[:, h] = sub_k
        else:
            share = torch.where(a_q[:, h] > 0, (a_q[:, h] - g * af_q[:, h]).clamp(min=0) / a_q[:, h], torch.ones_like(a_q[:, h]))
            out[:, h] = torch.minimum(sub_k, a_k[:, h] * share)
    return out


def naive_forward(mod, x, fw, ctx, qmask, g, heads, direction):
    core = mod.attn
    W = lambda lin, t: t.double() @ lin.weight.double().T + lin.bias.double()  # noqa: E731
    hd = core.head_dim
    q = W(core.q_proj, x).view(B, TQ, H, hd).transpose(1, 2)
    qf = W(core.q_proj, fw).view(B, TQ, H, hd).transpose(1, 2)
    k = W(core.k_proj, ctx).view(B, TK, H, hd).transpose(1, 2)
    v = W(core.v_proj, ctx).view(B, TK, H, hd).transpose(1, 2)
    if core.attn_type == "vanilla":
        o = naive_maps(q, qf, k, qmask, g, heads, direction) @ v
    else:
        d = hd // 2
        # interleaved [H, 2, d] sub-heads, as the core's projections store them
        q1, q2 = q.view(B, H, TQ, 2, d).unbind(3)
        qf1, qf2 = qf.view(B, H, TQ, 2, d).unbind(3)
        k1, k2 = k.view(B, H, TK, 2, d).unbind(3)
        lq1, lk1, lq2, lk2 = (t.detach().double() for t in (core.lambda_q1, core.lambda_k1, core.lambda_q2, core.lambda_k2))
        lam = math.exp(float(lq1 @ lk1)) - math.exp(float(lq2 @ lk2)) + core.lambda_init
        o = naive_maps(q1, qf1, k1, qmask, g, heads, direction) @ v - lam * (naive_maps(q2, qf2, k2, qmask, g, heads, direction) @ v)
        o = o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + 1e-5) * core.subln.weight.double()
        o = o * (1 - core.lambda_init)
    return W(core.o_proj, o.transpose(1, 2).reshape(B, TQ, H * hd))


@pytest.mark.parametrize("attn_type", ["vanilla", "diff"])
@pytest.mark.parametrize("direction", ["both", "keys"])
def test_g_zero_is_plain_cross_attention(attn_type, direction):
    mod = make(attn_type, direction=direction)
    with torch.no_grad():
        mod.g.zero_()
    x, fw, ctx, qmask = inputs(query_pad=True)
    got = mod(x, ctx, fw=fw, query_mask=qmask)
    # reference 1: the core layer itself (no FDA); reference 2: naive float64 math with g = 0
    torch.testing.assert_close(got, mod.attn(x, ctx), rtol=1e-5, atol=1e-5)
    ref = naive_forward(mod, x, fw, ctx, qmask, 0.0, {0, 1}, direction).float()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn_type", ["vanilla", "diff"])
@pytest.mark.parametrize("direction", ["both", "keys", "reference"])
@pytest.mark.parametrize("heads", [None, [1, 3]])
def test_matches_naive_math(attn_type, direction, heads):
    mod = make(attn_type, direction=direction, heads=heads)
    with torch.no_grad():
        mod.g.fill_(0.8)
    x, fw, ctx, qmask = inputs(query_pad=True)
    got = mod(x, ctx, fw=fw, query_mask=qmask)
    want = naive_forward(mod, x, fw, ctx, qmask, 0.8, set(heads or [0, 1]), direction).float()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # FDA at g = 0.8 really changes the output (the test would notice a no-op)
    assert (got - mod.attn(x, ctx)).abs().max() > 1e-3


@pytest.mark.parametrize("attn_type", ["vanilla", "diff"])
@pytest.mark.parametrize("direction", ["both", "keys", "reference"])
def test_a_per_query_key_mask_hides_keys_from_its_query_only(attn_type, direction):
    """key_mask [B, Tq, Tk] (as the core ops take it): at g = 0 the "both" / "keys" forms equal the core layer under
    that mask; at any g, image tokens hidden from a query do not move its row, and every query keeps its own row."""
    mod = make(attn_type, direction=direction)
    x, fw, ctx, _ = inputs()
    km = torch.rand(B, TQ, TK) > 0.4
    km[..., 0] = True
    if direction != "reference":
        with torch.no_grad():
            mod.g.zero_()
        torch.testing.assert_close(mod(x, ctx, fw=fw, key_mask=km), mod.attn(x, ctx, key_mask=km), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        mod.g.fill_(0.8)
    b, i = 1, 2
    km[b, i, 1:] = False
    km[b, i - 1, 1:] = True  # the hidden tokens stay visible to another query
    base = mod(x, ctx, fw=fw, key_mask=km)
    moved = ctx.clone()
    moved[b, 1:] += 5.0
    out = mod(x, moved, fw=fw, key_mask=km)
    torch.testing.assert_close(out[b, i], base[b, i], rtol=0, atol=1e-6)
    assert (out[b, i - 1] - base[b, i - 1]).abs().max() > 1e-3


def test_reference_direction_is_not_plain_at_g_zero():
    """The reference code's min over both directions touches every head even at g = 0 (documented)."""
    mod = make("vanilla", direction="reference")
    with torch.no_grad():
        mod.g.zero_()
    x, fw, ctx, qmask = inputs()
    assert (mod(x, ctx, fw=fw, query_mask=qmask) - mod.attn(x, ctx)).abs().max() > 1e-4


def test_other_heads_untouched_and_maps_nonnegative():
    mod = make("vanilla", direction="both", heads=[0])
    with torch.no_grad():
        mod.g.fill_(1.0)
    x, fw, ctx, qmask = inputs()
    _, maps = mod(x, ctx, fw=fw, query_mask=qmask, return_maps=True)
    core = mod.attn
    q = core.q_proj(x).view(B, TQ, H, -1).transpose(1, 2)
    k = core.k_proj(ctx).view(B, TK, H, -1).transpose(1, 2)
    plain = (q @ k.transpose(-1, -2) / math.sqrt(core.head_dim)).softmax(-1)
    torch.testing.assert_close(maps[0][:, 1:], plain[:, 1:], rtol=1e-5, atol=1e-6)
    assert (maps[0] >= 0).all()
    assert (maps[0][:, 0] <= plain[:, 0] + 1e-6).all()  # de-attention only removes mass
    assert (maps[0][:, 0] < plain[:, 0] - 1e-4).any()


def test_padded_queries_do_not_change_real_rows():
    mod = make("vanilla", direction="both")
    x, fw, ctx, qmask = inputs()
    qmask[:, -1] = False
    a = mod(x, ctx, fw=fw, query_mask=qmask)
    x2, fw2 = x.clone(), fw.clone()
    x2[:, -1] += 5.0
    fw2[:, -1] -= 5.0
    b = mod(x2, ctx, fw=fw2, query_mask=qmask)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], rtol=1e-5, atol=1e-6)


def test_gradient_reaches_gate_and_queries():
    mod = make("diff").train()
    x, fw, ctx, qmask = inputs()
    fw.requires_grad_(True)
    mod(x, ctx, fw=fw, query_mask=qmask).square().sum().backward()
    assert mod.g.grad is not None and mod.g.grad.abs() > 0
    assert fw.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="vanilla' or 'diff"):
        FDACrossAttention(build_attention("diff_v2", DIM, H, kv_dim=KV))
    with pytest.raises(ValueError, match="subset"):
        make("vanilla", heads=[4])
    for heads in ([], [True], [1.0], [-1]):  # True indexed the mask as a bool mask (IndexError); 1.0 passed as head 1
        with pytest.raises(ValueError, match=r"must be a non-empty subset of the integers 0..3"):
            make("vanilla", heads=heads)
    import numpy as np

    assert make("vanilla", heads=[np.int64(3)]).head_mask.tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="direction"):
        make("vanilla", direction="rows")
    mod = make("vanilla")
    x, fw, ctx, _ = inputs()
    with pytest.raises(ValueError, match="shape"):
        mod(x, ctx, fw=fw[:, :-1])


@pytest.mark.parametrize("attn_type", ["vanilla", "diff"])
def test_a_float64_layer_matches_the_float64_math_to_float64_precision(attn_type):
    """mod.double() computes its maps in float64 (they were cast to float32: 1e-7 off the float64 math)."""
    mod = make(attn_type, direction="both").double()
    with torch.no_grad():
        mod.g.fill_(0.8)
    x, fw, ctx, qmask = (t.double() if t.is_floating_point() else t for t in inputs(query_pad=True))
    got = mod(x, ctx, fw=fw, query_mask=qmask)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, naive_forward(mod, x, fw, ctx, qmask, 0.8, {0, 1}, "both"), rtol=1e-10, atol=1e-10)


def test_a_query_outweighed_on_a_key_keeps_its_share():
    """In the softmax over queries, a query that another query outweighs by ~80 on one key gets a_q ~ 1e-35 there
    (a normal float32). The share it keeps was divided by max(a_q, 1e-30): ~1e-5 instead of ~0.63, which wiped
    out its attention on that key, even at g = 0 (plain attention: 0.5 became 6e-6). Reference: the formula
    min(relu(a_k - g a_fk), a_k relu(a_q - g a_fq) / a_q) written out in float64."""
    from zoo.nn.fda import fda_combine

    s = torch.tensor([[0.0, 0.0], [80.0, 0.0]])[None, None]
    s_f = torch.tensor([[-1.0, 0.0], [80.0, 0.0]])[None, None]
    head = torch.tensor([True])
    torch.testing.assert_close(fda_combine(s, s_f, torch.tensor(0.0), head, "both"), s.softmax(-1))
    sd, sfd = s.double(), s_f.double()
    a_k, af_k, a_q, af_q = sd.softmax(-1), sfd.softmax(-1), sd.softmax(-2), sfd.softmax(-2)
    want = torch.minimum((a_k - af_k).clamp(min=0), a_k * (a_q - af_q).clamp(min=0) / a_q)
    assert abs(float(want[0, 0, 0, 0]) - (0.5 - 1 / (1 + math.e))) < 1e-9  # by hand: min(0.231, 0.5 * 0.632)
    torch.testing.assert_close(fda_combine(s, s_f, torch.tensor(1.0), head, "both"), want.float())


@pytest.mark.parametrize("d", [80.0, 95.0, 100.0])
def test_the_kept_share_has_finite_gradients_where_a_q_is_subnormal(d):
    """Score gaps of ~88-103 between queries on one key make a_q a float32 subnormal: dividing by it gave
    (u / a_q) / a_q = inf in the backward, and 0 * inf = NaN where the minimum took the key-direction map.
    Reference: min(relu(a_k - g a_fk), a_k relu(a_q - g a_fq) / a_q) written out in float64 (where these a_q
    are normal numbers), outputs and gradients."""
    from zoo.nn.fda import fda_combine

    def naive(s, s_f, g):
        a_k, af_k, a_q, af_q = s.softmax(-1), s_f.softmax(-1), s.softmax(-2), s_f.softmax(-2)
        return torch.minimum((a_k - g * af_k).clamp(min=0), a_k * (a_q - g * af_q).clamp(min=0) / a_q)

    s = torch.tensor([[0.0, 0.0, 0.0], [d, d - 1, 0.0]])[None, None]
    s_f = torch.tensor([[0.0, 1.0, 0.0], [d + 50, d - 1, 0.0]])[None, None]
    w = torch.randn(1, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    grads = {}
    for dtype, fn in ((torch.float32, lambda a, b, g: fda_combine(a, b, g, torch.tensor([True]), "both")),
                      (torch.float64, naive)):
        a, b = s.to(dtype).clone().requires_grad_(), s_f.to(dtype).clone().requires_grad_()
        g = torch.tensor(1.0, dtype=dtype, requires_grad=True)
        out = fn(a, b, g)
        (out * w.to(dtype)).sum().backward()
        grads[dtype] = (out.detach(), a.grad, b.grad, g.grad)
    assert grads[torch.float64][0][0, 0, 0, 0] > 0.1  # the entry a floor on a_q wiped out
    for got, want in zip(grads[torch.float32], grads[torch.float64]):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attn_type", ["dint", "gda", "shared_diff"])
def test_fda_refuses_the_variants_it_would_change(attn_type):
    """dint / gda / shared_diff subclass the diff layer, and FDA took them as plain diff: at g = 0 its output was not
    the layer's own (DINT's integral term dropped: 0.11 apart), against the docstring's promise."""
    attn = build_attention(attn_type, 48, 6, kv_dim=16)
    x, ctx = torch.randn(2, 5, 48), torch.randn(2, 3, 16)
    if attn_type == "dint":  # the reason, measured: recomputed as plain diff, g = 0 is not the layer
        fda = FDACrossAttention(build_attention("diff", 48, 6, kv_dim=16), heads=range(6), g_init=0.0)
        fda.attn = attn  # the DINT layer behind the check, as the old code took it
        assert not torch.allclose(fda(x, ctx, fw=torch.randn(2, 5, 48)), attn(x, ctx), atol=1e-4)
    with pytest.raises(ValueError, match="FDA works on 'vanilla' or 'diff' cross-attention"):
        FDACrossAttention(attn)


def test_the_models_fusion_with_fda_matches_a_written_out_forward():
    """The whole ITM path of a model with FDA on fusion layer 1 only, heads 1 and 2, g = 0.7: every layer written out
    here (post-norm self-attention, cross-attention, MLP; the FDA layer's maps from the naive formula above), its
    function-word queries the embedding output of the caption with content words as [PAD] ([CLS] / [SEP] kept, the
    documented choice), the same for every FDA layer; padded queries out of the softmax over queries. Reference
    against the model's itm_logits: the same function-word caption, layer selection and head selection."""
    import torch.nn.functional as F

    from vlm_helpers import scene_batch, tiny_model

    m = tiny_model(seed=2, fda_layers=[1], fda_heads=[1, 2]).double()
    with torch.no_grad():
        m.fusion[1].cross.g.fill_(0.7)
    images, caps = scene_batch(3)
    caps[1] = "a red circle"  # a shorter caption: padded queries
    ids, mask = m.tokenize(caps)
    assert not mask[1].all()
    with torch.no_grad():
        img, txt = m.encode_image(images.double()), m.encode_text(ids, mask)
        got = m.itm_logits(txt, mask, img, ids)
        tok = m.tokenizer
        # the function words of these three captions (zoo/data/function_words_en.txt), by hand
        fw_words = {i for w in ("in", "this", "are", "to", "the", "of", "a", "there", "above") for i in tok.word_ids(w)}
        fw_ids = torch.tensor([[i if (i in fw_words or i in (tok.cls_id, tok.sep_id)) else tok.pad_id for i in row]
                               for row in ids.tolist()])
        t = m.text
        fw = t.embed_norm(t.word_embed(fw_ids) + t.type_embed.weight[0] + t.pos_embed(torch.arange(ids.shape[1])))
        x = txt
        n, T = ids.shape
        for li, layer in enumerate(m.fusion):
            x = layer.norm1(x + layer.self_attn(x, key_mask=mask))
            core = layer.cross.attn if layer.fda else layer.cross
            Hh, hd = core.n_heads, core.head_dim
            proj = lambda lin, u: u @ lin.weight.T + lin.bias  # noqa: E731
            q = proj(core.q_proj, x).view(n, T, Hh, hd).transpose(1, 2)
            k = proj(core.k_proj, img).view(n, -1, Hh, hd).transpose(1, 2)
            v = proj(core.v_proj, img).view(n, -1, Hh, hd).transpose(1, 2)
            if li == 1:
                qf = proj(core.q_proj, fw).view(n, T, Hh, hd).transpose(1, 2)
                a = naive_maps(q, qf, k, mask, 0.7, {1, 2}, "both")
            else:
                a = (q @ k.transpose(-1, -2) / math.sqrt(hd)).softmax(-1)
            c = proj(core.o_proj, (a @ v).transpose(1, 2).reshape(n, T, Hh * hd))
            x = layer.norm2(x + c)
            x = layer.norm3(x + layer.mlp.fc2(F.gelu(layer.mlp.fc1(x))))
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        want = m.itm_head(pooled)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the FDA term acts (the test would notice a no-op): at g = 0 the logits move
    with torch.no_grad():
        m.fusion[1].cross.g.zero_()
        assert (m.itm_logits(txt, mask, img, ids) - got).abs().max() > 1e-4


# michaeltian108/FDA, finetune/configs/function_dict.json, "token_id_short" (bert-base-uncased ids; 93 entries, 91
# distinct): the list its retrieval scripts de-attend
REFERENCE_SHORT_IDS = [
    2572, 2003, 2024, 2001, 2020, 2022, 2042, 2108, 2031, 2038, 2018, 2079, 2515, 2106, 2097, 2052, 4618, 2323, 2089,
    2453, 2442, 2064, 2071, 11276, 8108, 2342, 2109, 2000, 1037, 2019, 1996, 1998, 2021, 2065, 2030, 2138, 2004, 2127,
    2096, 1997, 2012, 2011, 2005, 2007, 2055, 2114, 2090, 2046, 2083, 2076, 2077, 2044, 2682, 2917, 2000, 2013, 1999,
    2041, 2006, 2125, 2058, 2104, 2153, 2582, 2059, 2320, 2182, 2045, 2043, 2073, 2339, 2129, 2035, 2151, 2119, 2169,
    2261, 2062, 2087, 2060, 2070, 2107, 2053, 4496, 2025, 2069, 2219, 2168, 2061, 2084, 2205, 2200, 2064,
]


def test_the_reference_word_list_is_the_reference_codes_token_ids(minilm_dir):
    """`function_words: en-reference` marks exactly the token ids the FDA reference code lists, under the uncased
    WordPiece vocabulary it was written for (all-MiniLM-L6-v2 shares bert-base-uncased's)."""
    from zoo.data.vlm_io import VLMTokenizer, function_word_ids, read_function_words

    tok = VLMTokenizer.from_folder(minilm_dir)
    ids, unknown = function_word_ids(tok, read_function_words("en-reference"), strict=True)
    assert not unknown and set(ids) == set(REFERENCE_SHORT_IDS)
