"""Recognizer: masks against naive definitions, the per-query masked attention against a hand-written
masked softmax and against one query per sequence, mask semantics end to end, registry forward/backward, parameter parity, charset transfer;
PARSeq's permutations, masks, encoding, training loss, decoding and confidence written out from baudm/parseq."""

from __future__ import annotations

import math
import string

import pytest
import torch

import zoo
from zoo.models.str import STRConfig, SceneTextRecognizer, transfer_charset, visibility

TINY = dict(enc_dim=32, enc_depth=1, enc_heads=2, dec_dim=32, dec_heads=2, max_length=6, dropout=0.0)


def tiny(**kw) -> SceneTextRecognizer:
    torch.manual_seed(0)
    return SceneTextRecognizer.from_config({**TINY, **kw}).eval()


def test_visibility_masks_match_definitions():
    T = 5
    ar, nar, cl = visibility("ar", T), visibility("nar", T), visibility("cloze", T)
    for i in range(T):
        for j in range(T):
            assert ar[i, j] == (j <= i)
            assert nar[i, j] == (j == 0)
            assert cl[i, j] == (j != i + 1)
    perm = torch.tensor([2, 0, 4, 1, 3])
    pm = visibility(perm, T)
    order = perm.tolist()
    for i in range(T):
        before = order[: order.index(i)]  # positions decoded before i
        for j in range(T):
            assert pm[i, j] == (j == 0 or (j - 1) in before)
    # the left-to-right permutation is the AR mask
    assert torch.equal(visibility(torch.arange(T), T), ar)


def test_per_query_self_attention_equals_masked_softmax():
    """The decoder's self-attention under a per-query [B, T, T] mask against an explicit [T, T]-masked softmax
    computed from the vanilla layer's own projection weights."""
    m = tiny(self_attn_type="vanilla")
    attn = m.layers[0].self_attn
    B, T, D = 2, 7, 32
    torch.manual_seed(1)
    q, c = torch.randn(B, T, D), torch.randn(B, T, D)
    mask = visibility(torch.randperm(T), T)
    got = attn(q, c, key_mask=mask.expand(B, T, T))
    H, hd = attn.n_heads, attn.head_dim
    Q = attn.q_proj(q).view(B, T, H, hd).transpose(1, 2)
    K = attn.k_proj(c).view(B, T, H, hd).transpose(1, 2)
    V = attn.v_proj(c).view(B, T, H, hd).transpose(1, 2)
    s = (Q @ K.transpose(-1, -2)) / math.sqrt(hd)
    s = s.masked_fill(~mask, float("-inf"))
    ref = attn.o_proj((s.softmax(-1) @ V).transpose(1, 2).reshape(B, T, H * hd))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _types_but_dint():
    from zoo.nn import list_attention_types

    return [k for k in list_attention_types() if k != "dint"]


@pytest.mark.parametrize("kind", _types_but_dint())
def test_decoder_layer_equals_one_query_per_sequence(kind):
    """Reference: every query attends alone (queries folded into the batch, one [T] key mask each, the layer's
    earlier form); the layer under the [B, T, T] mask (a permutation, with padded content) must give the same."""
    heads = {"dec_heads": 6, "dec_dim": 48, "dec_self_heads": 6} if kind == "gda" else {}
    m = tiny(self_attn_type=kind, **heads)
    layer = m.layers[0]
    B, T, D = 3, m.num_slots, m.config.dec_dim
    torch.manual_seed(2)
    q, c, mem = torch.randn(B, T, D), torch.randn(B, T, D), torch.randn(B, 11, m.config.enc_dim)
    km = visibility(torch.randperm(T), T).expand(B, T, T).clone()
    km[1, :, 3:] = False  # content after the end of the text
    got = layer(q, c, km, mem)
    qf = layer.norm_q(q).reshape(B * T, 1, D)
    cf = layer.norm_c(c).unsqueeze(1).expand(B, T, T, D).reshape(B * T, T, D)
    ref = q + layer.self_attn(qf, cf, key_mask=km.reshape(B * T, T)).view(B, T, D)
    ref = ref + layer.cross_attn(layer.norm_x(ref), mem)
    ref = ref + layer.mlp(layer.norm_m(ref))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", _types_but_dint())
def test_image_tokens_projected_once_decode_as_projected_per_step(kind):
    """decode() projects the image tokens once for every step and refinement pass (memory_kv): its probabilities
    equal autoregressive decoding + refinement that project them at every call, and a training-style call under a
    permutation mask gives the same logits and parameter gradients either way."""
    heads = {"dec_heads": 6, "dec_dim": 48, "dec_self_heads": 6} if kind == "gda" else {}
    m = tiny(attn_type=kind, refine_iters=2, **heads)
    torch.manual_seed(3)
    with torch.no_grad():
        mem = m.encode(torch.rand(3, 3, *m.config.img_size))
        got = m.decode(mem)
        ref = m._decode_ar(mem)  # no memory_kv: every step projects the image tokens itself
        for _ in range(2):
            ref = m.refine(mem, ref)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    T = m.num_slots
    tokens = torch.randint(1, m.num_classes, (3, T))
    tokens[:, 0] = m.bos_id
    mask = visibility(torch.randperm(T), T)

    def grads(use_kv: bool):
        m.zero_grad()
        memory = m.encode(torch.rand(3, 3, *m.config.img_size, generator=torch.Generator().manual_seed(4)))
        kv = m.memory_kv(memory) if use_kv else None
        out = sum(m.decode_step(memory, tokens, mask, memory_kv=kv) for _ in range(2))  # two masks' calls
        out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    (a, ga), (b, gb) = grads(True), grads(False)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_a_training_step_on_each_backend_is_the_naive_one(device, backend):
    """The recognizer's training path (per-query permutation masks, image tokens projected once) on the SDPA
    backend and forced to the fused kernel (the decoder's per-query masks then run on SDPA, its cross-attention on
    the kernel on a GPU), in bf16 autocast on CUDA, against the same model in float32 on the naive backend: logits
    and every parameter gradient within twice bf16's rounding (float32 on the CPU: 1e-4)."""
    def run(attn_backend, autocast):
        torch.manual_seed(0)
        m = SceneTextRecognizer.from_config({**TINY, "dec_depth": 2, "attn_backend": attn_backend}).to(device).train()
        g = torch.Generator().manual_seed(1)
        images = torch.rand(4, 3, *m.config.img_size, generator=g).to(device)
        T = m.num_slots
        tokens = torch.randint(1, m.num_classes, (4, T), generator=g).to(device)
        tokens[:, 0] = m.bos_id
        valid = torch.ones(4, T, dtype=torch.bool, device=device)
        valid[1, 3:] = False
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            memory = m.encode(images)
            kv = m.memory_kv(memory)
            logits = [m.decode_step(memory, tokens, visibility(torch.randperm(T, generator=g), T, device), valid,
                                    memory_kv=kv) for _ in range(2)]
        logits = torch.cat(logits).float()
        logits.square().mean().backward()
        return logits, torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None])

    ref_logits, ref_grads = run("naive", autocast=False)
    logits, grads = run(backend, autocast=device == "cuda")
    tol = 2 * 4 * 2.0 ** -8 if device == "cuda" else 1e-4
    for name, got, ref in (("logits", logits, ref_logits), ("grads", grads, ref_grads)):
        err = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
        assert err < tol, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("self_attn", ["vanilla", "diff"])
def test_mask_semantics_end_to_end(self_attn):
    m = tiny(self_attn_type=self_attn, dec_depth=2)
    imgs = torch.randn(2, 3, 32, 128)
    mem = m.encode(imgs)
    T = m.num_slots
    tokens = torch.randint(1, m.num_classes, (2, T))
    tokens[:, 0] = m.bos_id
    for mode in ("ar", "cloze"):
        base = m.decode_step(mem, tokens, visibility(mode, T))
        for i in range(T - 1):
            changed = tokens.clone()
            changed[:, i + 1] = (changed[:, i + 1] % (m.num_classes - 1)) + 1  # character i (target of query i)
            out = m.decode_step(mem, changed, visibility(mode, T))
            # query i never sees its own character; under AR it sees none after it either
            torch.testing.assert_close(out[:, i], base[:, i])
            if mode == "ar":
                torch.testing.assert_close(out[:, :i + 1], base[:, :i + 1])
                assert not torch.allclose(out[:, i + 1 :], base[:, i + 1 :])
            else:
                others = [k for k in range(T) if k != i]
                assert not torch.allclose(out[:, others], base[:, others])


def test_ar_decoding_is_greedy_on_its_own_prefix():
    m = tiny(refine_iters=0)
    imgs = torch.randn(3, 3, 32, 128)
    with torch.no_grad():
        probs = m(imgs)
        ids = probs.argmax(-1)
        mem = m.encode(imgs)
        T = m.num_slots
        tokens = torch.cat([torch.full((3, 1), m.bos_id), ids[:, :-1]], 1)
        ref = m.decode_step(mem, tokens, visibility("ar", T)).softmax(-1)
    for b in range(3):
        row = ids[b].tolist()
        n = row.index(0) + 1 if 0 in row else T  # slots up to the first EOS are decoded; after it, padding
        torch.testing.assert_close(probs[b, :n], ref[b, :n], rtol=1e-5, atol=1e-6)


def test_confidence_is_product_up_to_eos():
    m = tiny()
    probs = torch.full((1, 7, m.num_classes), 0.0)
    probs[0, 0, 3], probs[0, 0, 1] = 0.9, 0.1  # char '2'
    probs[0, 1, 12], probs[0, 1, 2] = 0.8, 0.2  # 'b'
    probs[0, 2, 0], probs[0, 2, 5] = 0.5, 0.4  # EOS
    probs[0, 3:, 7] = 0.3  # after EOS: ignored
    r = m.decode_probs(probs)[0]
    assert r.text == "2b" and r.confidence == pytest.approx(0.9 * 0.8 * 0.5)
    # no EOS in any slot: the reading holds max_length characters (the last slot is for EOS only)
    none = torch.zeros(1, m.num_slots, m.num_classes)
    none[0, :, 7] = 0.5
    assert len(m.decode_probs(none)[0].text) == m.charset.max_length == m.num_slots - 1


@pytest.mark.parametrize("name", [n for n in zoo.list_models("str-*") if n.endswith("tiny")])
def test_registered_tiny_forward_backward(name):
    m = zoo.create_model(name, max_length=5)
    m.train()
    imgs = torch.randn(2, 3, 32, 128)
    targets = torch.tensor([[1, 2, 0, -100, -100, -100], [3, 4, 5, 6, 7, 0]])
    mem = m.encode(imgs)
    tokens, valid = m.content_tokens(targets)
    logits = m.decode_step(mem, tokens, visibility("cloze", 6), valid)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in m.named_parameters() if "lambda" not in n and p.requires_grad)


def test_all_registered_sizes_and_equal_params():
    names = zoo.list_models("str-*")
    assert {"str-diff-tiny", "str-vanilla-tiny", "str-diff-small", "str-vanilla-small", "str-diff-base", "str-vanilla-base"} <= set(names)
    for size in ("tiny", "small"):
        d, v = zoo.create_model(f"str-diff-{size}"), zoo.create_model(f"str-vanilla-{size}")
        c = d.config
        half = c.dec_dim // c.dec_heads // 2
        # diff adds per decoder layer: 4 lambda vectors of d = head_dim / 2 and the subln weight (2d)
        extra = c.dec_depth * (4 * half + 2 * half)
        assert d.num_params() - v.num_params() == extra
        assert d.layers[0].cross_attn.attn_type == "diff" and v.layers[0].cross_attn.attn_type == "vanilla"
        assert v.config.dec_heads == 2 * c.dec_heads
        # the twins differ in the cross-attention only: one self-attention layout (PARSeq's head count)
        assert d.layers[0].self_attn.n_heads == v.layers[0].self_attn.n_heads == 2 * c.dec_heads
        assert {k: t.shape for k, t in d.layers[0].self_attn.state_dict().items()} == {
            k: t.shape for k, t in v.layers[0].self_attn.state_dict().items()}
    for size in ("tiny", "small", "base"):
        # diffv2: V2 cross-attention with vanilla's K/V heads and a narrower MLP that pays for its extra queries
        d2, v = zoo.create_model(f"str-diffv2-{size}"), zoo.create_model(f"str-vanilla-{size}")
        D = d2.config.dec_dim
        assert d2.layers[0].cross_attn.attn_type == "diff_v2" and d2.config.dec_heads == v.config.dec_heads
        # balance up to the two-decimal rounding of the ratio: at most D / 100 + 1 hidden units of 2D + 1 weights
        assert abs(d2.num_params() - v.num_params()) <= (2 * D + 1) * (D // 100 + 1)
        assert d2.num_params() - v.num_params() < D * D // 10  # without the narrower MLP V2 costs D*D more
        s2, sv = d2.state_dict(), v.state_dict()
        differ = {k for k in s2.keys() | sv.keys() if k not in s2 or k not in sv or s2[k].shape != sv[k].shape}
        assert all(".cross_attn." in k or ".mlp." in k for k in differ), differ
    # the tiny twin is the benchmark's equal-parameter arm (--model-args dec_mlp_ratio 3.48: MLP 334)
    assert zoo.create_model("str-diffv2-tiny").layers[0].mlp.fc1.out_features == int(96 * 3.48) == 334
    with pytest.raises(ValueError, match="unknown attn_type"):
        STRConfig(attn_type="nope")
    with pytest.raises(ValueError, match="divisible"):
        STRConfig(img_size=[30, 128])
    # a misspelt decode mode must not fall through to one-pass decoding
    with pytest.raises(ValueError, match="decode must be one of"):
        STRConfig(decode="AR")
    with pytest.raises(ValueError, match="refine_iters must be a non-negative integer"):
        STRConfig(refine_iters=-1)


def test_config_charset_reads_names_and_files_as_the_datamodule_does(tmp_path, monkeypatch):
    """create_model(..., charset=...) took the string as the characters: "95" (a typo of 94) built a 2-character
    recognizer and "chars.txt" one of the file name's letters, silently."""
    chars = tmp_path / "chars.txt"
    chars.write_text("\n".join("абв1") + "\n", encoding="utf-8")
    assert STRConfig(charset=str(chars)).charset == "абв1"
    assert STRConfig(charset="94").charset == string.digits + string.ascii_letters + string.punctuation
    assert STRConfig(charset="xyz").charset == "xyz"  # the characters themselves
    with pytest.raises(ValueError, match="unknown named charset '95'"):
        zoo.create_model("str-diff-tiny", charset="95")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="charset file missing.txt not found"):
        STRConfig(charset="missing.txt")


def test_transfer_charset_keeps_known_rows():
    src = tiny(charset="abc")
    dst = tiny(charset="bcxd")
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    rep = transfer_charset(src, dst)
    assert rep["reinitialized_chars"] == ["x", "d"] and rep["dropped_chars"] == ["a"] and rep["kept_char_rows"] == 2
    s, d = src.state_dict(), dst.state_dict()
    # the tensors copied whole, counted by comparing them (the embedding and classifier have new rows: not among them)
    whole = [k for k in d if k in s and s[k].shape == d[k].shape and torch.equal(s[k], d[k])]
    assert rep["kept_tensors"] == len(whole) == len(d) - 3
    # class ids: EOS=0, then the charset in order
    for key in ("head.weight", "head.bias", "text_embed.weight"):
        torch.testing.assert_close(d[key][0], s[key][0])  # EOS
        torch.testing.assert_close(d[key][1], s[key][2])  # 'b'
        torch.testing.assert_close(d[key][2], s[key][3])  # 'c'
        torch.testing.assert_close(d[key][3], fresh[key][3])  # 'x' new
        torch.testing.assert_close(d[key][4], fresh[key][4])  # 'd' new
    torch.testing.assert_close(d["text_embed.weight"][dst.bos_id], s["text_embed.weight"][src.bos_id])
    torch.testing.assert_close(d["pos_queries"], s["pos_queries"])
    with pytest.raises(ValueError, match="architectures differ"):
        transfer_charset(src, tiny(charset="ab", dec_dim=64, dec_heads=2))


def test_transfer_charset_refuses_a_model_without_some_of_the_sources_weights():
    """A diff source moved into a vanilla recognizer of the same sizes: every tensor of the vanilla model has a
    counterpart of its shape, but the diff layers' lambdas and sub-layer norms have none; they were dropped without
    a word and the model trained on as another architecture."""
    src = tiny(charset="abc", attn_type="diff")
    with pytest.raises(ValueError, match=r"architectures differ.*lambda_q1: \(\d+,\) vs missing"):
        transfer_charset(src, tiny(charset="abcd", attn_type="vanilla"))


def test_sincos_position_init_formula():
    from zoo.models.str import sincos_2d

    h, w, dim = 3, 5, 8
    pe = sincos_2d(h, w, dim)
    q = dim // 4
    for r in range(h):
        for c in range(w):
            row = pe[r * w + c]
            for k in range(q):
                om = 10000 ** (-k / q)
                assert row[k].item() == pytest.approx(math.sin(r * om), abs=1e-6)
                assert row[q + k].item() == pytest.approx(math.cos(r * om), abs=1e-6)
                assert row[2 * q + k].item() == pytest.approx(math.sin(c * om), abs=1e-6)
                assert row[3 * q + k].item() == pytest.approx(math.cos(c * om), abs=1e-6)
    m = tiny()
    torch.testing.assert_close(m.encoder.pos_embed[0], sincos_2d(8, 16, 32))


def test_export_without_dec_self_heads_keeps_its_layout(tmp_path):
    # exports made before dec_self_heads existed used dec_heads for the self-attention
    import json

    from zoo.hub import export_model

    m = tiny(dec_heads=2, dec_self_heads=None)
    export_model(m, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "config.json").read_text())
    del meta["config"]["dec_self_heads"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(meta))
    loaded = zoo.load_pretrained(tmp_path / "old")
    assert loaded.layers[0].self_attn.n_heads == 2
    x = torch.rand(2, 3, 32, 128)
    torch.testing.assert_close(loaded(x), m.eval()(x))
    with pytest.raises(ValueError, match="dec_self_heads: checkpoint=None config=4"):
        zoo.create_model("str-diff-tiny", pretrained=tmp_path / "old", **{k: v for k, v in TINY.items() if k != "dropout"},
                         dec_self_heads=4)
    with pytest.raises(ValueError, match="dec_self_heads must be a positive divisor"):
        STRConfig(dec_dim=96, dec_self_heads=5)


def test_lambda_init_reaches_the_decoders_differential_attentions(tmp_path):
    from zoo.hub import export_model
    from zoo.nn import lambda_init_fn

    m = tiny(lambda_init=0.8, self_attn_type="diff")
    assert m.layers[0].cross_attn.lambda_init == 0.8 and m.layers[0].self_attn.lambda_init == 0.8
    assert tiny().layers[0].cross_attn.lambda_init == pytest.approx(lambda_init_fn(0))  # default: depth schedule
    # a vanilla self-attention beside a diff cross-attention takes no lambda_init
    assert not hasattr(tiny(lambda_init=0.5).layers[0].self_attn, "lambda_init")
    export_model(m, tmp_path / "m")
    loaded = zoo.load_pretrained(tmp_path / "m")
    assert loaded.layers[0].cross_attn.lambda_init == 0.8
    x = torch.rand(2, 3, 32, 128)
    torch.testing.assert_close(loaded(x), m(x))
    with pytest.raises(ValueError, match="lambda_init applies to differential attention"):
        STRConfig(attn_type="vanilla", lambda_init=0.5)
    with pytest.raises(ValueError, match=r"lambda_init must be a number in \[0, 1\)"):
        STRConfig(lambda_init=1.5)


def test_diff_subln_switch_reaches_the_decoders_differential_attentions(tmp_path):
    from zoo.hub import export_model

    m = tiny(diff_subln=False, self_attn_type="diff")
    assert m.layers[0].cross_attn.subln is None and m.layers[0].self_attn.subln is None
    assert tiny().layers[0].cross_attn.subln is not None  # default: Diff Transformer's head norm
    # one RMSNorm weight of the head width less per differential attention, nothing else changes
    on, off = tiny(self_attn_type="diff"), m
    assert on.num_params() - off.num_params() == sum(
        a.subln.weight.numel() for a in (on.layers[0].cross_attn, on.layers[0].self_attn))
    export_model(m, tmp_path / "m")
    loaded = zoo.load_pretrained(tmp_path / "m")
    assert loaded.layers[0].cross_attn.subln is None
    x = torch.rand(2, 3, 32, 128)
    torch.testing.assert_close(loaded(x), m(x))
    with pytest.raises(ValueError, match="diff_subln applies to differential attention"):
        STRConfig(attn_type="vanilla", diff_subln=False)
    with pytest.raises(ValueError, match="diff_subln must be true or false"):
        STRConfig(diff_subln="off")


def test_confidence_of_a_reading_cut_at_max_length_holds_its_characters_only():
    """Without an EOS in any slot the reading is the first max_length characters; its confidence is
    the product of those characters' probabilities (as PARSeq: EOS only when there is one), not also
    the probability of the last slot's character, which the reading drops."""
    m = tiny()
    probs = torch.zeros(1, m.num_slots, m.num_classes)
    probs[0, :, 7] = 0.9
    probs[0, -1, 7] = 0.1  # the dropped character's slot
    probs[0, -1, 8] = 0.2
    r = m.decode_probs(probs)[0]
    assert r.text == m.charset.decode([7] * m.charset.max_length)
    assert r.confidence == pytest.approx(0.9 ** m.charset.max_length)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_read_works_on_a_model_cast_to_another_dtype(dtype):
    """reader.double() / .bfloat16() reads: the crops go in the model's dtype (they stayed float32: 'Input type
    (float) and bias type (double) should be the same'). Reference: the float32 model on the same crops."""
    import numpy as np

    rng = np.random.default_rng(0)
    crops = [rng.random((32, 128)), rng.random((20, 50, 3))]
    want = tiny(decode="nar").read(crops)
    got = tiny(decode="nar").to(dtype).read(crops)
    assert len(got) == 2 and all(0.0 <= r.confidence <= 1.0 for r in got)
    if dtype == torch.float64:  # bfloat16 may break a near-tie of the untrained model's classes differently
        assert [r.text for r in got] == [r.text for r in want]
        assert all(abs(g.confidence - w.confidence) < 1e-6 for g, w in zip(got, want))


def test_ar_decoding_that_ends_early_keeps_the_models_dtype():
    """Once every sequence has read EOS the remaining slots are filled with one-hot padding: in the model's
    dtype (they were float32, so a float64 model's probabilities came back float32)."""
    m = tiny(decode="ar", refine_iters=0).double()
    with torch.no_grad():
        m.head.bias.fill_(-50.0)
        m.head.bias[m.charset.EOS] = 50.0  # EOS at once: the loop stops after the first slot
    probs = m.decode(m.encode(torch.rand(2, 3, 32, 128, dtype=torch.float64)))
    assert probs.dtype == torch.float64 and probs.shape == (2, m.num_slots, m.num_classes)
    assert torch.all(probs[:, 1:].argmax(-1) == 0) and torch.all(probs[:, 0].argmax(-1) == m.charset.EOS)


def test_read_restores_the_train_mode_when_an_image_fails():
    """An unreadable image part-way raises, and the model keeps the mode it had (it was left in eval mode, so
    training went on without dropout)."""
    import numpy as np

    model = tiny().train()
    with pytest.raises(FileNotFoundError):
        model.read([np.zeros((32, 128), dtype=np.uint8), "/nonexistent/crop.png"])
    assert model.training


@pytest.mark.parametrize("name", ["attn_type", "self_attn_type"])
def test_every_attention_type_keeps_the_autoregressive_mask_and_dint_is_refused(name):
    """Under the autoregressive mask a slot's logits must not depend on later slots' characters. DINT's mean over
    queries broke that (slot 0 moved by 1e-3 when the character at slot 3 changed: in training, the ground truth
    leaked backwards), so the recognizer refuses it; every other type keeps slot i blind to the tokens after it."""
    from zoo.nn import list_attention_types

    for kind in list_attention_types():
        if kind == "dint":
            with pytest.raises(ValueError, match=f"{name} 'dint' is not supported"):
                STRConfig(**{**TINY, name: kind})
            continue
        heads = {"dec_heads": 6, "dec_dim": 48, "dec_self_heads": 6} if kind == "gda" else {}
        torch.manual_seed(0)
        m = tiny(**{name: kind, **heads}).eval()
        mem = m.encode(torch.rand(1, 3, *m.config.img_size))
        tok = m._blank(1, "cpu")
        tok[0, 1:4] = torch.tensor([3, 4, 5])
        later = tok.clone()
        later[0, 3] = 9  # the character fed at slot 3 (seen by slots 3 and after)
        mask = visibility("ar", m.num_slots, "cpu")
        a, b = m.decode_step(mem, tok, mask), m.decode_step(mem, later, mask)
        assert torch.equal(a[:, :3], b[:, :3]), kind
        assert not torch.equal(a[:, 3], b[:, 3]), kind


def _ar_reference(m: SceneTextRecognizer, memory: torch.Tensor) -> torch.Tensor:
    """Slow autoregressive decoding: at step i the decoder runs every slot over every content token under the
    full [T, T] AR mask and slot i is kept; once every row has read EOS the rest are one-hot EOS padding."""
    B, T = memory.shape[0], m.num_slots
    tokens = torch.full((B, T), m.pad_id, dtype=torch.long)
    tokens[:, 0] = m.bos_id
    mask = visibility("ar", T)
    probs = []
    for i in range(T):
        p = m.decode_step(memory, tokens, mask)[:, i].softmax(-1)
        probs.append(p)
        if i + 1 < T:
            tokens[:, i + 1] = p.argmax(-1)
            if (tokens[:, 1 : i + 2] == m.charset.EOS).any(-1).all():
                probs += [torch.nn.functional.one_hot(torch.zeros(B, dtype=torch.long), m.num_classes).to(p.dtype)] * (T - i - 1)
                break
    return torch.stack(probs, 1)


@pytest.mark.parametrize("kw", [
    {},
    {"self_attn_type": "diff", "dec_depth": 2},
    {"attn_type": "diff_v2", "dec_heads": 4},
    {"attn_type": "vanilla", "max_length": 9},
])
@pytest.mark.parametrize("batch", [1, 5])
def test_ar_decoding_matches_the_all_slots_reference(kw, batch):
    """Autoregressive decoding runs only the slot it decodes over the prefix it may see: the same probabilities as
    running every slot over every content token at each step (the reference), for one image and several."""
    m = tiny(refine_iters=0, **kw)
    torch.manual_seed(2)
    with torch.no_grad():
        memory = m.encode(torch.randn(batch, 3, 32, 128))
        got, want = m._decode_ar(memory), _ar_reference(m, memory)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_shipped_reader_reads_as_the_all_slots_reference():
    """The shipped reader on held-out-font crops of 1-6 characters (rows end at different slots, and the loop stops
    once all have): the same readings and confidences as the all-slots reference decoding plus one cloze pass."""
    from zoo.data.str import to_tensor
    from zoo.data.str_synth import make_sample

    reader = zoo.load_pretrained("str-diff-tiny")
    crops = [make_sample(0, "test", i, reader.charset.chars, max_len=6, strength=0.4)[0] for i in range(12)]
    with torch.no_grad():
        memory = reader.encode(torch.stack([to_tensor(c) for c in crops]))
        probs = _ar_reference(reader, memory)
        for _ in range(reader.config.refine_iters):
            probs = reader.refine(memory, probs)
    want = reader.decode_probs(probs)
    got = reader.read(crops, batch_size=5)  # batches of 5, 5 and 2
    assert [r.text for r in got] == [r.text for r in want]
    assert len({len(r.text) for r in want}) > 1
    for g, w in zip(got, want):
        assert g.confidence == pytest.approx(w.confidence, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("method", ["dex", "difflora", "opamp"])
def test_an_adapted_recognizer_decodes_its_cross_attention_over_the_image_tokens(method):
    """apply_adapter wraps the decoder's attention layers in wrappers without project_context / context_kv:
    decode() raised AttributeError. Reference: a non-autoregressive pass written out by hand, the wrapped
    cross-attention called on the image tokens themselves, and a masked softmax for the (wrapped) self-attention
    replaced by calling it per query on its visible prefix."""
    from zoo.nn.adapters import apply_adapter

    m = tiny(attn_type="vanilla", decode="nar", refine_iters=0)
    apply_adapter(m, method)
    torch.manual_seed(5)
    for p in m.parameters():  # adapters start as the identity: make them count
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    images = torch.rand(2, 3, *m.config.img_size)
    with torch.no_grad():
        got = m(images)
        memory = m.encode(images)
        B, T = 2, m.num_slots
        pos = m.pos_queries[:, :T]
        emb = m.text_embed(m._blank(B, memory.device))
        content = torch.cat([emb[:, :1], emb[:, 1:] + pos[:, : T - 1]], dim=1)
        q = pos.expand(B, T, -1)
        for layer in m.layers:
            # nar: every query sees content 0 (BOS) only
            sa = torch.cat([layer.self_attn(layer.norm_q(q[:, i : i + 1]), layer.norm_c(content[:, :1]))
                            for i in range(T)], 1)
            q = q + sa
            q = q + layer.cross_attn(layer.norm_x(q), memory)
            q = q + layer.mlp(layer.norm_m(q))
        ref = m.head(m.norm(q)).softmax(-1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    m.config.decode = "ar"
    with torch.no_grad():
        assert m(images).shape == got.shape


# -- PARSeq (baudm/parseq: strhub/models/parseq/system.py, model.py, modules.py; strhub/data/utils.py) written out
def _parseq_perms(L: int, gen: torch.Generator, perm_num: int = 6) -> torch.Tensor:
    """``gen_tgt_perms`` (perm_forward and perm_mirrored on, PARSeq's defaults) for a batch whose longest label has
    ``L`` characters: ``[n, L + 2]`` over PARSeq's positions (0 = BOS, 1..L the characters, L + 1 = EOS). The pool
    draw uses a torch generator instead of numpy's."""
    import itertools

    if L == 1:
        return torch.arange(3)[None]
    perms = [torch.arange(L)]
    max_perms = math.factorial(L) // 2
    num_gen = min(perm_num // 2, max_perms)
    if L < 5:
        selector = [0, 3, 4, 6, 9, 10, 12, 16, 17, 18, 19, 21] if L == 4 else list(range(max_perms))
        pool = torch.as_tensor(list(itertools.permutations(range(L), L)))[selector][1:]
        perms = torch.stack(perms)
        if len(pool):
            perms = torch.cat([perms, pool[torch.randperm(len(pool), generator=gen)[: num_gen - len(perms)]]])
    else:
        perms = torch.stack(perms + [torch.randperm(L, generator=gen) for _ in range(num_gen - 1)])
    perms = torch.stack([perms, perms.flip(-1)]).transpose(0, 1).reshape(-1, L)
    perms = torch.cat([perms.new_zeros(len(perms), 1), perms + 1, perms.new_full((len(perms), 1), L + 1)], 1)
    perms[1, 1:] = L + 1 - torch.arange(L + 1)  # the reverse ordering, its EOS first (null context)
    return perms


def _parseq_attn_masks(perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``generate_attn_masks``: additive (0 / -inf) content and query masks of a PARSeq permutation."""
    sz = perm.shape[0]
    mask = torch.zeros(sz, sz)
    for i in range(sz):
        mask[perm[i], perm[i + 1 :]] = float("-inf")
    content_mask = mask[:-1, :-1].clone()
    mask[torch.eye(sz, dtype=torch.bool)] = float("-inf")
    return content_mask, mask[1:, :-1]


def _parseq_encode(m: SceneTextRecognizer, texts: list[str]) -> torch.Tensor:
    """``Tokenizer.encode``: ``[BOS] + ids + [EOS]`` padded with PAD (ids: EOS 0, the charset 1.., BOS, PAD)."""
    itos = ("[E]",) + tuple(m.charset.chars) + ("[B]", "[P]")
    stoi = {s: i for i, s in enumerate(itos)}
    rows = [[stoi["[B]"]] + [stoi[c] for c in t] + [stoi["[E]"]] for t in texts]
    n = max(map(len, rows))
    return torch.tensor([r + [stoi["[P]"]] * (n - len(r)) for r in rows])


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 7])
def test_permutation_masks_equal_parseqs_generate_attn_masks(L):
    """Every ordering PARSeq trains on (forward, the reverse with EOS first, random pairs and their mirrors), as
    PARSeq builds its query mask, is the recognizer's ``visibility`` of that ordering: PARSeq position ``p`` is
    the recognizer's slot ``p - 1``. In the zoo's ``max_length + 1`` slots the padding slots come last (the parseq
    recipe's ordering): the real queries see what PARSeq's do and never a padding slot's content."""
    perms = _parseq_perms(L, torch.Generator().manual_seed(L))
    assert len(perms) == {1: 1, 2: 2}.get(L, 6)
    if L < 5:  # drawn from the pool without replacement (longer labels: torch.randperm, repeats possible)
        assert len({tuple(p.tolist()) for p in perms}) == len(perms)
    T, Tz = L + 1, L + 4
    for k, perm in enumerate(perms):
        _, query_mask = _parseq_attn_masks(perm)
        order = perm[1:] - 1
        got = visibility(order, T)
        assert torch.equal(got, query_mask == 0), (k, perm.tolist())
        padded = visibility(torch.cat([order, torch.arange(T, Tz)]), Tz)
        assert torch.equal(padded[:T, :T], query_mask == 0) and not padded[:T, T + 1 :].any()
        # content T is the EOS slot's output (EOS or PAD in every row: hidden by the content padding); PARSeq has no
        # such key. Only the reverse ordering, its EOS first, lets the characters' queries reach it
        assert padded[:L, T].any() == (k == 1 and L > 1)
    assert torch.equal(visibility(perms[0][1:] - 1, T), visibility("ar", T))  # the canonical ordering
    if L > 1:  # the reverse ordering's EOS query reads BOS only, as every query of the nar mask does
        assert torch.equal(visibility(perms[1][1:] - 1, T)[L], visibility("nar", T)[L])


def test_targets_and_content_padding_equal_parseqs_encoding():
    """The data's targets and the recognizer's content tokens against PARSeq's ``Tokenizer.encode``: ``tgt_out``
    (PAD as -100) is the targets' first ``L + 1`` slots, ``tgt_in`` the content tokens where PARSeq's
    ``tgt_padding_mask`` (PAD or EOS) does not hide them, and every slot after is hidden. Class ids match
    PARSeq's layout (EOS 0, the charset, BOS, PAD), and the head predicts neither BOS nor PAD."""
    from zoo.data.str import Collate

    m = tiny()
    texts = ["", "ab", "7z3", "a"]
    targets = Collate(m.charset)([(torch.zeros(3, 32, 128), t, "s") for t in texts])["targets"]
    tgt = _parseq_encode(m, texts)
    pad = m.num_classes + 1
    assert (m.bos_id, m.pad_id, m.head.out_features) == (m.num_classes, pad, len(m.charset.chars) + 1)
    assert m.text_embed.num_embeddings == len(m.charset.chars) + 3
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    n = tgt_out.shape[1]
    assert torch.equal(targets[:, :n], tgt_out.masked_fill(tgt_out == pad, -100))
    assert (targets[:, n:] == -100).all()
    tokens, valid = m.content_tokens(targets)
    hidden = (tgt_in == pad) | (tgt_in == m.charset.EOS)
    assert torch.equal(valid[:, :n], ~hidden) and not valid[:, n:].any()
    assert torch.equal(tokens[:, :n][valid[:, :n]], tgt_in[~hidden])


def test_training_loss_over_orderings_is_the_mean_of_each_orderings_parseq_loss():
    """A parseq-recipe training step over the canonical masks and three random orderings against PARSeq's loss
    written out: each ordering's masks from ``generate_attn_masks`` over the batch's longest label only (``L + 1``
    slots, no padding slots), PARSeq's padding mask (PAD and EOS content hidden), cross-entropy with PAD ignored
    and the EOS targets dropped from the random orderings. ``nar`` (BOS only) and ``cloze`` (all but the query's
    own character) are the zoo's masks, written by hand here. The step's loss is the mean of the orderings'
    mean losses (PARSeq weights each ordering by its number of targets: README, "Training recipe")."""
    import torch.nn.functional as F

    from zoo.data.str import Collate
    from zoo.tasks.str import RecognitionTask

    info = {"kind": "str", "charset": string.digits + string.ascii_lowercase, "max_length": 6, "img_size": [32, 128]}
    masks = ["ar", "perm", "nar", "perm", "cloze", "perm"]
    task = RecognitionTask(arch="str-diff-tiny", model_args={k: v for k, v in TINY.items() if k != "max_length"},
                           data_info=info, masks=masks)
    task.model.eval()  # no dropout
    m = task.model
    texts = ["ab", "a7c9", "", "xyz"]
    torch.manual_seed(3)
    batch = Collate(m.charset)([(torch.rand(3, 32, 128), t, "s") for t in texts])
    torch.manual_seed(11)
    loss = task.training_step(batch, 0)

    torch.manual_seed(11)  # the step's draws: one torch.randperm of the longest label's characters per ordering
    tgt = _parseq_encode(m, texts)
    L = tgt.shape[1] - 2
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    pad, eos = m.pad_id, m.charset.EOS
    padding = (tgt_in == pad) | (tgt_in == eos)
    memory = m.encode(batch["images"])
    T = L + 1
    terms = []
    for mode in masks:
        target = tgt_out
        if mode in ("ar", "perm"):
            chars = torch.arange(L) if mode == "ar" else torch.randperm(L)
            perm = torch.cat([torch.zeros(1, dtype=torch.long), chars + 1, torch.tensor([L + 1])])
            see = _parseq_attn_masks(perm)[1] == 0
            if mode == "perm":
                target = torch.where(tgt_out == eos, pad, tgt_out)
        elif mode == "nar":
            see = torch.zeros(T, T, dtype=torch.bool)
            see[:, 0] = True
        else:
            see = torch.ones(T, T, dtype=torch.bool)
            see[torch.arange(T - 1), torch.arange(1, T)] = False
        logits = m.decode_step(memory, tgt_in, see, ~padding)
        terms.append(F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=pad))
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def _mha_written_out(attn, x, ctx, additive=None, key_padding=None):
    """``nn.MultiheadAttention``'s math (PARSeq's attentions) with a vanilla layer's projections."""
    B, tq, _ = x.shape
    tk, H, hd = ctx.shape[1], attn.n_heads, attn.head_dim
    q = attn.q_proj(x).view(B, tq, H, hd).transpose(1, 2)
    k = attn.k_proj(ctx).view(B, tk, H, hd).transpose(1, 2)
    v = attn.v_proj(ctx).view(B, tk, H, hd).transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if additive is not None:
        s = s + additive
    if key_padding is not None:
        s = s.masked_fill(key_padding[:, None, None, :], float("-inf"))
    return attn.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(B, tq, H * hd))


def _parseq_decode(m, tgt, memory, query_mask=None, padding=None, queries=None):
    """PARSeq's ``decode`` for a one-layer decoder (the last layer updates no content stream). PARSeq's
    ``TokenEmbedding`` is ``sqrt(d_model) * embedding``: the recognizer's ``text_embed.weight`` is PARSeq's
    embedding weight times ``sqrt(d_model)`` (the same function, another parametrization). The cross-attention is
    written out when it is vanilla; a differential one (the zoo's addition) is called as it is."""
    import torch.nn.functional as F

    (layer,) = m.layers
    d = m.config.dec_dim
    emb = math.sqrt(d) * (m.text_embed.weight / math.sqrt(d))[tgt]
    N, L = tgt.shape
    content = torch.cat([emb[:, :1], m.pos_queries[:, : L - 1] + emb[:, 1:]], 1)
    q = m.pos_queries[:, :L].expand(N, -1, -1) if queries is None else queries
    q = q + _mha_written_out(layer.self_attn, layer.norm_q(q), layer.norm_c(content), query_mask, padding)
    x = layer.norm_x(q)
    cross = layer.cross_attn
    q = q + (_mha_written_out(cross, x, memory) if cross.attn_type == "vanilla" else cross(x, memory))
    q = q + layer.mlp.fc2(F.gelu(layer.mlp.fc1(layer.norm_m(q))))
    return m.head(m.norm(q))


def _parseq_read(m, images, decode_ar, refine_iters):
    """PARSeq's ``forward`` at test time (AR with its early stop, which leaves fewer slots, or NAR; then cloze
    refinement) and ``Tokenizer.decode``: texts up to the first EOS, confidence the product of the max
    probabilities up to and including it. Returns the readings, the per-slot probabilities and the number of slots
    the AR loop decoded (all of them for NAR or after refinement)."""
    memory = m.encode(images)
    bs, num_steps = images.shape[0], m.num_slots
    eos, bos, pad = m.charset.EOS, m.bos_id, m.pad_id
    pos_queries = m.pos_queries[:, :num_steps].expand(bs, -1, -1)
    query_mask = torch.triu(torch.full((num_steps, num_steps), float("-inf")), 1)
    if decode_ar:
        tgt_in = torch.full((bs, num_steps), pad, dtype=torch.long)
        tgt_in[:, 0] = bos
        logits = []
        for i in range(num_steps):
            j = i + 1
            p_i = _parseq_decode(m, tgt_in[:, :j], memory, query_mask[i:j, :j], queries=pos_queries[:, i:j])
            logits.append(p_i)
            if j < num_steps:
                tgt_in[:, j] = p_i[:, 0].argmax(-1)
                if (tgt_in == eos).any(dim=-1).all():
                    break
        logits = torch.cat(logits, dim=1)
    else:
        logits = _parseq_decode(m, torch.full((bs, 1), bos, dtype=torch.long), memory, queries=pos_queries)
    steps = logits.shape[1]
    query_mask[torch.triu(torch.ones(num_steps, num_steps, dtype=torch.bool), 2)] = 0
    for _ in range(refine_iters):
        tgt_in = torch.cat([torch.full((bs, 1), bos, dtype=torch.long), logits[:, :-1].argmax(-1)], dim=1)
        padding = (tgt_in == eos).int().cumsum(-1) > 0
        logits = _parseq_decode(m, tgt_in, memory, query_mask[:, : tgt_in.shape[1]], padding, pos_queries)
    probs = logits.softmax(-1)
    readings = []
    for dist in probs:
        p, ids = dist.max(-1)
        ids = ids.tolist()
        end = ids.index(eos) if eos in ids else len(ids)
        readings.append(("".join(m.charset.chars[i - 1] for i in ids[:end]), float(p[: end + 1].prod())))
    return readings, probs, steps


@pytest.mark.parametrize("decode,refine", [("ar", 1), ("ar", 0), ("nar", 1), ("nar", 2)])
@pytest.mark.parametrize("which", ["shipped", "vanilla"])
def test_reading_equals_parseqs_decoding_written_out(which, decode, refine):
    """The recognizer's decoding (autoregressive with its early stop, or one pass; cloze refinement), its texts and
    confidences against PARSeq's forward and tokenizer written out over the same weights: the shipped reader on
    held-out-font crops (its rows end at different slots, so the early stop and PARSeq's shorter refinement context
    both happen), and a random vanilla decoder, whose cross-attention is written out too. Slots up to each row's
    EOS carry the same probabilities. A row without EOS: PARSeq reads every slot (max_length + 1 characters), the
    recognizer cuts it at max_length and drops that slot from the confidence (documented in ``decode_probs``)."""
    from zoo.data.str import to_tensor
    from zoo.data.str_synth import make_sample

    if which == "shipped":
        m = zoo.load_pretrained("str-diff-tiny").eval()
        # words of 1-6 characters, and of 1-4: those rows all end before the last slot, so the AR loop stops early
        batches = [torch.stack([to_tensor(make_sample(0, "test", i, m.charset.chars, max_len=n, strength=0.4)[0])
                                for i in range(k)]) for n, k in ((6, 10), (4, 8))]
    else:
        m = tiny(attn_type="vanilla", dec_heads=4, dec_self_heads=4)
        with torch.no_grad():
            m.head.bias[m.charset.EOS] += 2.0  # some rows end early
        batches = [torch.rand(6, 3, 32, 128, generator=torch.Generator().manual_seed(7))]
    for images in batches:
        with torch.no_grad():
            want, ref_probs, steps = _parseq_read(m, images, decode == "ar", refine)
            probs = m.decode(m.encode(images), mode=decode, refine_iters=refine)
        got = m.decode_probs(probs)
        ended = 0
        for b, ((text, conf), r) in enumerate(zip(want, got)):
            if (ref_probs[b].argmax(-1) == m.charset.EOS).any():
                ended += 1
                n = len(text) + 1
                assert r.text == text and r.confidence == pytest.approx(conf, rel=1e-5, abs=1e-7), b
                torch.testing.assert_close(probs[b, :n], ref_probs[b, :n], rtol=1e-5, atol=1e-6)
            else:
                cut = m.charset.max_length
                assert r.text == text[:cut]
                assert r.confidence == pytest.approx(float(ref_probs[b, :cut].max(-1).values.prod()), rel=1e-5, abs=1e-7)
        if which == "shipped":
            assert ended == len(want) and len({len(t) for t, _ in want}) > 1
            if decode == "ar" and images is batches[1]:
                assert steps < m.num_slots  # PARSeq's loop stopped early (and refines over that shorter context)
