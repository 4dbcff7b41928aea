"""DEX / DiffLoRA / OpAmp adapters: start at the pretrained function, formulas vs float64 math,
frozen base, merge, checkpoints that refuse the wrong base."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.models.lm import DiffTransformerLM, LMConfig
from zoo.nn import KVCache, build_attention
from zoo.nn import adapters as A

DIM, H = 32, 4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see tests/conftest.py


def lm(seed=0, attn_type="vanilla", **over):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=50, dim=DIM, n_layers=2, n_heads=H, n_kv_heads=2, attn_type=attn_type, max_seq_len=32)
    cfg.update(over)
    return DiffTransformerLM(LMConfig(**cfg)).eval()


def perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, p in model.named_parameters():
            if ".adapter." in f".{k}":
                p.add_(torch.randn(p.shape, generator=g) * 0.3)


KW = {"dex": {"heads": [0, 2], "anneal_steps": 10}, "difflora": {"rank": 2}, "opamp": {"rank": 2, "cmrr": 3.0}}


@pytest.mark.parametrize("method", A.METHODS)
def test_adapted_equals_pretrained_at_start_and_only_adapters_train(method):
    model = lm()
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask)
    A.apply_adapter(model, method, **KW[method])
    with torch.no_grad():
        got = model(ids, attention_mask=mask)
    if method == "opamp":  # c1*A1V - c2*A2V with A1 = A2: equal up to rounding
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=1e-5)
    else:
        assert torch.equal(got, ref)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in k for k in trainable)
    model.train()
    model(ids).float().logsumexp(-1).mean().backward()
    for k, p in model.named_parameters():
        assert (p.grad is not None) == (k in trainable), k
    # the base state dict is untouched: it still loads into the plain architecture
    plain = lm(seed=5)
    plain.load_state_dict(A.base_state_dict(model))


@pytest.mark.parametrize("method, kwargs, layers, per_layer", [
    # hand counts for DIM 32, H 4 query heads and 2 KV heads of head_dim 8 (q: 32 -> 32, k: 32 -> 16)
    ("dex", {}, None, 4 * 8 * 8 + 1),  # W_n [d, d] per head, one lambda
    ("dex", {"heads": [0, 2]}, [1], 2 * 8 * 8 + 1),
    ("difflora", {"rank": 3}, None, 3 * (32 + 32) + 3 * (32 + 16) + 3 * (32 + 32) + 3 * (32 + 16) + 1),
    ("difflora", {"rank": 3, "neg_rank": 1}, [0], 3 * (32 + 32) + 3 * (32 + 16) + 1 * (32 + 32) + 1 * (32 + 16) + 1),
    ("opamp", {"rank": 2}, None, 2 * 2 * (32 + 32) + 2 * 2 * (32 + 16)),  # two LoRAs each on q and k, fixed gains
])
def test_trainable_parameters_are_the_adapters_by_hand_count(method, kwargs, layers, per_layer):
    """What an adapt_*.yaml run trains, counted from the methods' formulas (LoRA rank r on an in -> out map holds
    r * (in + out)); the base's parameters are all kept and frozen."""
    model = lm()
    total = sum(p.numel() for p in model.parameters())
    A.apply_adapter(model, method, layers=layers, **kwargs)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == per_layer * (2 if layers is None else len(layers))
    assert sum(p.numel() for p in model.parameters()) == total + trainable


@pytest.mark.parametrize("method", A.METHODS)
def test_adapter_follows_the_base_models_device(method, monkeypatch):
    """Adapting a model that already sits on a device (here PyTorch's meta device, standing in for CUDA)
    puts every adapter parameter and buffer (DEX's head index too) on that device."""
    monkeypatch.setattr(A, "base_fingerprint", lambda model: {})  # checksums read values, which meta has none of
    with torch.device("meta"):
        model = lm()
    A.apply_adapter(model, method, **KW[method])
    placed = {k: t.device.type for k, t in [*model.named_parameters(), *model.named_buffers()]}
    assert placed and set(placed.values()) == {"meta"}, {k: d for k, d in placed.items() if d != "meta"}


def test_dex_on_a_diff_model_and_encoder_starts_exact():
    from zoo.models.encoder import EncoderConfig, TextEncoder

    model = lm(attn_type="diff")
    ids = torch.randint(0, 50, (1, 9))
    ref = model(ids)
    A.apply_adapter(model, "dex", layers=[1])
    assert torch.equal(model(ids), ref)
    torch.manual_seed(0)
    enc = TextEncoder(EncoderConfig(vocab_size=60, dim=DIM, n_layers=2, n_heads=H, mlp_hidden=48, max_seq_len=16)).eval()
    ref = enc(ids % 60)
    A.apply_adapter(enc, "difflora", rank=2)
    assert torch.equal(enc(ids % 60), ref)


def test_difflora_refuses_non_softmax_base():
    with pytest.raises(ValueError, match="vanilla.*'diff'"):
        A.apply_adapter(lm(attn_type="diff"), "difflora")


# ------------------------------------------------------------------------- formulas (float64 math)


def lin(x, w, b=None):
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


def sm(q, k):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


def split(t, n):
    B, T, _ = t.shape
    return t.view(B, T, n, -1).transpose(1, 2)


def merge_heads(o):
    B, h, T, d = o.shape
    return o.transpose(1, 2).reshape(B, T, h * d)


def plain_attn():
    torch.manual_seed(3)
    return build_attention("vanilla", DIM, H, n_kv_heads=2, causal=False, rope=False, bias=True).eval()


def kv_rep(t):  # 2 KV heads serve 4 query heads
    return t.repeat_interleave(2, dim=1)


def test_dex_formula():
    base = plain_attn()
    layer = A.DexAttention(base, heads=[1, 3], lambda_max=0.7, anneal_steps=4)
    perturb(layer)
    layer.set_step(2)  # anneal 0.5
    x = torch.randn(2, 6, DIM)
    q, k, v = split(lin(x, base.q_proj.weight, base.q_proj.bias), H), split(lin(x, base.k_proj.weight, base.k_proj.bias), 2), \
        split(lin(x, base.v_proj.weight, base.v_proj.bias), 2)
    a = sm(q, kv_rep(k))
    o = a @ kv_rep(v)
    lam = 0.5 * layer.adapter.lam.double()
    for j, h in enumerate([1, 3]):  # O = A V - lambda_t A (V W_n)
        o[:, h] = a[:, h] @ kv_rep(v)[:, h] - lam * a[:, h] @ (kv_rep(v)[:, h] @ layer.adapter.w_n[j].double())
    ref = lin(merge_heads(o), base.o_proj.weight, base.o_proj.bias)
    torch.testing.assert_close(layer(x).double(), ref, atol=1e-5, rtol=1e-5)


def test_difflora_formula_and_merge():
    base = plain_attn()
    layer = A.DiffLoRAAttention(base, rank=3, alpha=6.0, neg_rank=2, lambda_init=0.0)
    perturb(layer)
    ad = layer.adapter
    x = torch.randn(2, 6, DIM)
    s = 6.0 / 3
    wq = base.q_proj.weight.double() + s * ad.q_lora.b.double() @ ad.q_lora.a.double()
    wk = base.k_proj.weight.double() + s * ad.k_lora.b.double() @ ad.k_lora.a.double()
    q1, k1 = split(lin(x, wq, base.q_proj.bias), H), split(lin(x, wk, base.k_proj.bias), 2)
    q2 = split(lin(lin(x, ad.q_neg.a), ad.q_neg.b), H)
    k2 = split(lin(lin(x, ad.k_neg.a), ad.k_neg.b), 2)
    v = kv_rep(split(lin(x, base.v_proj.weight, base.v_proj.bias), 2))
    o = (sm(q1, kv_rep(k1)) - ad.lam.double() * sm(q2, kv_rep(k2))) @ v
    ref = lin(merge_heads(o), base.o_proj.weight, base.o_proj.bias)
    got = layer(x)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=1e-5)
    w0 = base.q_proj.weight.detach().clone()
    model = torch.nn.Sequential(layer)
    A.merge_adapters(model)
    assert not torch.equal(base.q_proj.weight, w0)
    torch.testing.assert_close(layer(x), got, atol=1e-5, rtol=1e-5)
    A.unmerge_adapters(model)
    torch.testing.assert_close(base.q_proj.weight, w0, atol=1e-6, rtol=0)


def test_difflora_merge_in_bf16_rounds_once_and_unmerge_gives_the_base_back():
    """bf16 weights: merging rounded the LoRA product, then its scaled value, then the sum (about a quarter of q_proj's
    entries one bf16 step off the fp32 merge cast to bf16), and unmerging subtracted the delta again, moving about a
    third of the base's q/k entries (the export after an unmerge no longer held the base). The reference is the merge
    in float32 rounded to bf16 once; unmerge must give the original bf16 weights back bit for bit."""
    torch.manual_seed(0)
    base = build_attention("vanilla", dim=256, n_heads=4, n_kv_heads=2)
    layer = A.DiffLoRAAttention(base, rank=8, alpha=16.0)
    with torch.no_grad():
        for lo in (layer.adapter.q_lora, layer.adapter.k_lora):
            lo.b.normal_(0.0, 0.05)
    layer = layer.to(torch.bfloat16)
    model = torch.nn.Sequential(layer)
    before = {n: getattr(layer.base, n).weight.detach().clone() for n in ("q_proj", "k_proj")}
    A.merge_adapters(model)
    for name, lo in (("q_proj", layer.adapter.q_lora), ("k_proj", layer.adapter.k_lora)):
        want = (before[name].float() + lo.scale * (lo.b.detach().float() @ lo.a.detach().float())).to(torch.bfloat16)
        got = getattr(layer.base, name).weight
        assert not torch.equal(got, before[name])
        assert torch.equal(got, want), f"{name}: {(got != want).sum()} of {got.numel()} entries off the fp32 merge"
    A.unmerge_adapters(model)
    for name, w in before.items():
        assert torch.equal(getattr(layer.base, name).weight, w), name


def test_difflora_merge_in_float64_keeps_float64():
    """A float64 model ('64-true'): the merge is the float64 sum (it went through float32, rounding every q/k weight
    of the base to float32, ~1e-8 off), and unmerge gives the float64 base back. Reference: the formula in float64."""
    torch.manual_seed(0)
    layer = A.DiffLoRAAttention(build_attention("vanilla", dim=64, n_heads=4, n_kv_heads=2), rank=4, alpha=8.0)
    with torch.no_grad():
        for lo in (layer.adapter.q_lora, layer.adapter.k_lora):
            lo.b.normal_(0.0, 0.05)
    layer = layer.double()
    model = torch.nn.Sequential(layer)
    before = {n: getattr(layer.base, n).weight.detach().clone() for n in ("q_proj", "k_proj")}
    A.merge_adapters(model)
    for name, lo in (("q_proj", layer.adapter.q_lora), ("k_proj", layer.adapter.k_lora)):
        want = before[name] + lo.scale * (lo.b.detach() @ lo.a.detach())
        got = getattr(layer.base, name).weight
        assert got.dtype == torch.float64 and (got - want).abs().max() < 1e-14, name
    A.unmerge_adapters(model)
    for name, w in before.items():
        assert (getattr(layer.base, name).weight - w).abs().max() < 1e-14, name


def test_difflora_merges_half_precision_weights_made_under_inference_mode():
    """A bf16 model built (or loaded and cast) under torch.inference_mode holds inference tensors, which track no
    version: merge read one to know later whether the weights changed, and raised "Inference tensors do not track
    version counter". It merges (the fp32 sum rounded once) and unmerges (subtracting: nothing tells a change)."""
    torch.manual_seed(0)
    with torch.inference_mode():
        layer = A.DiffLoRAAttention(build_attention("vanilla", dim=64, n_heads=4, n_kv_heads=2), rank=4, alpha=8.0)
        layer.adapter.q_lora.b.normal_(0.0, 0.05)
        layer = layer.to(torch.bfloat16)
        model = torch.nn.Sequential(layer)
        w0 = layer.base.q_proj.weight.clone()
        lo = layer.adapter.q_lora
        want = (w0.float() + lo.scale * (lo.b.float() @ lo.a.float())).to(torch.bfloat16)
        A.merge_adapters(model)
        assert torch.equal(layer.base.q_proj.weight, want)
        A.unmerge_adapters(model)
        assert (layer.base.q_proj.weight.float() - w0.float()).abs().max() <= 2 ** -7 * w0.float().abs().max()


def test_opamp_formula():
    base = plain_attn()
    layer = A.OpAmpAttention(base, rank=2, alpha=2.0, cmrr=5.0, common_gain=0.8)
    perturb(layer)
    ad = layer.adapter
    x = torch.randn(2, 6, DIM)

    def proj(lin_layer, lora, n):
        return split(lin(x, lin_layer.weight, lin_layer.bias) + lin(lin(x, lora.a), lora.b), n)

    a1 = sm(proj(base.q_proj, ad.q1, H), kv_rep(proj(base.k_proj, ad.k1, 2)))
    a2 = sm(proj(base.q_proj, ad.q2, H), kv_rep(proj(base.k_proj, ad.k2, 2)))
    gc, gd = 0.8, 5.0 * 0.8
    v = kv_rep(split(lin(x, base.v_proj.weight, base.v_proj.bias), 2))
    o = (gd * (a1 - a2) + gc * (a1 + a2) / 2) @ v
    ref = lin(merge_heads(o), base.o_proj.weight, base.o_proj.bias)
    torch.testing.assert_close(layer(x).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["difflora", "opamp", "dex"])
def test_kv_cache_decoding_matches_full_forward(method):
    model = A.apply_adapter(lm(), method, **KW[method])
    perturb(model)
    A.step_adapters(model, 5)
    ids = torch.randint(0, 50, (1, 8))
    full = model(ids)
    caches = model.new_caches(16)
    steps = torch.cat([model(ids[:, :5], caches=caches)] + [model(ids[:, t : t + 1], caches=caches) for t in range(5, 8)], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)



@pytest.mark.parametrize("method", ["difflora", "opamp", "dex"])
def test_adapted_cached_call_with_a_bad_key_mask_leaves_the_cache_unchanged(method):
    # the adapters' own forwards go through the base layer's cache check, as the base layer's forward does
    layer = A.apply_adapter(lm(), method, **KW[method]).layers[0].attn
    cache = KVCache(16)
    x = torch.randn(1, 4, DIM)
    layer(x[:, :3], cache=cache)
    with pytest.raises(ValueError, match=r"key_mask covers the cached keys too: expected \[1, 3 cached \+ 1 new\]"):
        layer(x[:, 3:], key_mask=torch.ones(1, 1, dtype=torch.bool), cache=cache)
    assert cache.pos == 3
    with pytest.raises(ValueError, match="KV caching is for self-attention"):
        layer(x[:, 3:], context=x, cache=cache)
    assert cache.pos == 3


# ----------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("method", A.METHODS)
def test_adapter_checkpoint_round_trip(method, tmp_path):
    model = A.apply_adapter(lm(), method, **KW[method])
    perturb(model)
    A.step_adapters(model, 3)
    ids = torch.randint(0, 50, (2, 7))
    want = model(ids)
    A.save_adapter(model, tmp_path)
    fresh = A.load_adapter(lm(), tmp_path)  # same seed -> same base weights
    assert fresh.adapter_config["method"] == method
    torch.testing.assert_close(fresh(ids), want, atol=0, rtol=0)
    # a bare state dict loads onto an adapted model
    other = A.apply_adapter(lm(), method, **KW[method])
    A.load_adapter(other, A.adapter_state_dict(model))
    torch.testing.assert_close(other(ids), want, atol=0, rtol=0)


@pytest.mark.parametrize("method", A.METHODS)
def test_export_model_of_an_adapted_model_is_base_plus_adapter(method, tmp_path):
    """zoo.export_model on an adapted model (e.g. one from load_pretrained) writes the plain base and the
    adapter files, and load_pretrained gives back the same function; a merged model is refused."""
    import zoo

    model = A.apply_adapter(lm(), method, **KW[method])
    perturb(model)
    A.step_adapters(model, 3)
    ids = torch.randint(0, 50, (2, 7))
    want = model(ids)
    out = zoo.export_model(model, tmp_path / "exp")
    assert (out / A.ADAPTER_FILE).is_file() and (out / A.ADAPTER_CONFIG_FILE).is_file()
    assert model.adapter_config is not None  # the exported model is left as it was
    torch.testing.assert_close(zoo.load_pretrained(out)(ids), want, atol=0, rtol=0)
    torch.testing.assert_close(zoo.load_pretrained(out, adapter=False)(ids), lm()(ids), atol=0, rtol=0)
    if method == "difflora":
        A.merge_adapters(model)
        with pytest.raises(ValueError, match="merged into the base weights; call .*unmerge_adapters"):
            zoo.export_model(model, tmp_path / "merged")


def test_adapter_refuses_wrong_base(tmp_path):
    model = A.apply_adapter(lm(), "difflora", rank=2)
    A.save_adapter(model, tmp_path)
    with pytest.raises(ValueError, match=r"different base.*tensor .*checksum"):
        A.load_adapter(lm(seed=7), tmp_path)  # same architecture, other weights
    with pytest.raises(ValueError, match=r"different base.*n_layers: adapter base=2 model=3"):
        A.load_adapter(lm(n_layers=3), tmp_path)
    state = A.adapter_state_dict(model)
    state.pop("layers.1.attn.adapter.k_neg.a")
    state["layers.0.attn.adapter.q_lora.a"] = torch.zeros(5, DIM)
    with pytest.raises(ValueError) as exc:
        A.load_adapter(A.apply_adapter(lm(), "difflora", rank=2), state)
    assert "layers.1.attn.adapter.k_neg.a" in str(exc.value) and "(5, 32) vs model (2, 32)" in str(exc.value)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown adapter method 'lora'"):
        A.apply_adapter(lm(), "lora")
    with pytest.raises(ValueError, match=r"layers \[5\] out of range"):
        A.apply_adapter(lm(), "dex", layers=[5])
    # a layer listed twice was wrapped twice (the outer wrap's base being the first adapter), config [0, 0]
    with pytest.raises(ValueError, match=r"adapter layers \[0\] listed more than once in \[0, 1, 0\]"):
        A.apply_adapter(lm(), "difflora", rank=2, layers=[0, 1, 0])
    with pytest.raises(ValueError, match="integer indices"):
        A.apply_adapter(lm(), "dex", layers=[0.5])
    with pytest.raises(ValueError, match="heads"):
        A.apply_adapter(lm(), "dex", heads=[9])


def test_save_adapter_does_not_silently_replace_an_earlier_adapter(tmp_path):
    """A second save_adapter into a folder that holds an adapter is refused (nothing silently overwritten, as
    export_model); overwrite=True replaces it. Saving beside an export's base weights stays allowed."""
    import zoo

    first = A.apply_adapter(lm(), "difflora", rank=2)
    perturb(first, seed=1)
    out = zoo.export_model(first, tmp_path / "exp")  # base + adapter in one folder
    before = {n: (out / n).read_bytes() for n in (A.ADAPTER_FILE, A.ADAPTER_CONFIG_FILE)}
    second = A.apply_adapter(lm(), "difflora", rank=2)
    perturb(second, seed=2)
    with pytest.raises(FileExistsError, match="adapter"):
        A.save_adapter(second, out)
    assert {n: (out / n).read_bytes() for n in before} == before
    A.save_adapter(second, out, overwrite=True)
    ids = torch.randint(0, 50, (2, 7))
    torch.testing.assert_close(zoo.load_pretrained(out)(ids), second(ids), atol=0, rtol=0)


@pytest.mark.parametrize("method", A.METHODS)
def test_an_adapter_trained_with_its_base_exports_and_loads_back(method, tmp_path):
    """apply_adapter(freeze_base=False) trains the base along (as `adapter: {..., freeze_base: false}` does from
    YAML): the export holds the trained base and the adapter, and load_pretrained must give back the trained
    function (not refuse the base the adapter was saved with); the original base is still refused."""
    import zoo

    model = A.apply_adapter(lm(), method, freeze_base=False, **KW[method])
    assert all(p.requires_grad for p in model.parameters())
    perturb(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # the base moved during training
        for k, p in model.named_parameters():
            if not A.is_adapter_key(k):
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    A.step_adapters(model, 3)
    ids = torch.randint(0, 50, (2, 7))
    want = model(ids)
    out = zoo.export_model(model, tmp_path / "exp")
    torch.testing.assert_close(zoo.load_pretrained(out)(ids), want, atol=0, rtol=0)
    trained_base = zoo.load_pretrained(out, adapter=False)
    torch.testing.assert_close(A.load_adapter(trained_base, out)(ids), want, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"different base.*checksum"):
        A.load_adapter(lm(), out)  # the base before training is not the one these weights fit


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_adapter_loads_onto_its_own_base_in_half_precision_but_not_onto_another(dtype, tmp_path):
    import json

    model = A.apply_adapter(lm(), "opamp", rank=2)  # trained on the fp32 base
    perturb(model)
    A.save_adapter(model, tmp_path)
    want = A.adapter_state_dict(model)
    own = A.load_adapter(lm().to(dtype), tmp_path)  # the same base, held in half precision
    got = A.adapter_state_dict(own)
    assert got.keys() == want.keys()
    for k, v in got.items():
        torch.testing.assert_close(v.float(), want[k].float(), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"different base.*checksum"):
        A.load_adapter(lm(seed=7).to(dtype), tmp_path)  # other weights
    drifted = lm()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the base fine-tuned a little further: 2% relative change per weight
        for p in drifted.parameters():
            p.mul_(1 + 0.02 * torch.randn(p.shape, generator=g))
    with pytest.raises(ValueError, match=r"different base.*checksum"):
        A.load_adapter(drifted.to(dtype), tmp_path)

    # an adapter_config.json from before dtypes were recorded: rounding bound instead of exact match
    cfg = json.loads((tmp_path / A.ADAPTER_CONFIG_FILE).read_text())
    for ref in cfg["base"]["checksums"].values():
        ref.pop("dtype"), ref.pop("rounded")
    A.check_base(lm().to(dtype), cfg["base"])
    with pytest.raises(ValueError, match=r"different base.*checksum"):
        A.check_base(lm(seed=7).to(dtype), cfg["base"])


@pytest.mark.parametrize("method", A.METHODS)
def test_an_adapter_trained_under_bf16_true_exports_and_loads_back(method, tmp_path):
    """`--trainer.precision bf16-true` (a documented precision) casts the adapted model to bfloat16: the export
    holds the bf16-rounded base and the adapter, and load_pretrained reads the base back as float32. The base
    is the adapter's own (the fingerprint's bf16 rounding, exactly): it must load, not be refused as another."""
    import zoo

    model = A.apply_adapter(lm(), method, **KW[method])  # apply_adapter fingerprints the fp32 base
    perturb(model)
    A.step_adapters(model, 3)
    model.to(torch.bfloat16)  # what Lightning's bf16-true does before training
    out = zoo.export_model(model, tmp_path / "exp")
    got = zoo.load_pretrained(out)
    assert got.adapter_config["method"] == method
    # reference: the fp32 base rounded through bfloat16, with the trained adapter weights, all in float32
    want = A.apply_adapter(lm().to(torch.bfloat16).float(), method, **KW[method])
    with torch.no_grad():
        for k, v in A.adapter_state_dict(model).items():
            want.state_dict()[k].copy_(v.float())
    ids = torch.randint(0, 50, (2, 7))
    torch.testing.assert_close(got(ids), want(ids), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"different base.*checksum"):
        A.load_adapter(lm(seed=7).to(torch.bfloat16).float(), out)  # other weights, rounded alike


@pytest.mark.parametrize("method, kwargs, message", [
    ("difflora", {"rank": 0}, "difflora rank must be an integer >= 1, got 0"),
    ("difflora", {"rank": -2}, "difflora rank must be an integer >= 1, got -2"),
    ("difflora", {"rank": 2.5}, "difflora rank must be an integer >= 1, got 2.5"),
    ("difflora", {"neg_rank": 0}, "difflora neg_rank must be an integer >= 1, got 0"),  # not silently `rank`
    ("opamp", {"rank": 0}, "opamp rank must be an integer >= 1, got 0"),
    ("dex", {"heads": [0, 2, 0]}, r"dex heads \[0, 2, 0\] name a head twice"),
    ("dex", {"anneal_steps": -5}, "dex anneal_steps must be an integer >= 0, got -5"),
])
def test_bad_adapter_settings_are_named(method, kwargs, message):
    with pytest.raises(ValueError, match=message):
        A.apply_adapter(lm(), method, **kwargs)


def test_dex_anneal_steps_written_in_scientific_notation_is_accepted():
    # `adapter: {method: dex, anneal_steps: 1e4}` in a CLI YAML (omegaconf+) arrives as the float 10000.0, and an
    # adapter_config.json written from it holds 10000.0: both were read as 10000 steps and must stay so
    model = A.apply_adapter(lm(), "dex", anneal_steps=1e4)
    assert all(m.anneal_steps == 10000 for m in A.adapted_layers(model))
    with pytest.raises(ValueError, match="dex anneal_steps must be an integer >= 0, got 2.5"):
        A.apply_adapter(lm(), "dex", anneal_steps=2.5)


def test_dex_lambda_ramps_linearly_over_anneal_steps_and_zero_steps_means_no_ramp():
    """lambda_t = min(1, step / anneal_steps) * lambda (a linear ramp from 0); anneal_steps=0 is a ramp of no
    steps: the full lambda from the first step (it was 0 at step 0, so the first update left the adapter alone)."""
    model = A.apply_adapter(lm(), "dex", anneal_steps=4, lambda_max=0.5)
    layer = A.adapted_layers(model)[0]
    for step, want in [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (9, 1.0)]:
        A.step_adapters(model, step)
        assert float(layer.lambda_t()) == pytest.approx(want * 0.5), step
    model = A.apply_adapter(lm(), "dex", anneal_steps=0, lambda_max=0.5)
    assert all(float(m.lambda_t()) == pytest.approx(0.5) for m in A.adapted_layers(model))  # before any step too
    for step in (0, 1, 5):
        A.step_adapters(model, step)
        assert all(float(m.lambda_t()) == pytest.approx(0.5) for m in A.adapted_layers(model)), step


@pytest.mark.parametrize("attn_type", ["diff", "dint", "gda"])
def test_adapted_layer_reads_tensors_loaded_with_assign(attn_type):
    """The base layer's own parameters (diff's lambda vectors) are read by its forward: a load that replaces
    the wrapper's Parameter objects (load_state_dict(assign=True)) must reach it. At anneal 0 the adapted
    model is the plain model holding the same weights."""
    extra = {"attn_args": {"signal_ratio": 2}} if attn_type == "gda" else {}
    plain = lm(seed=0, attn_type=attn_type, **extra)
    ids = torch.randint(0, 50, (1, 8))
    want = plain(ids)
    model = A.apply_adapter(lm(seed=1, attn_type=attn_type, **extra), "dex")
    model.load_state_dict({**plain.state_dict(), **A.adapter_state_dict(model)}, assign=True)
    torch.testing.assert_close(model(ids), want, atol=0, rtol=0)
    # the base layers handed back by remove_adapters hold the loaded tensors too
    torch.testing.assert_close(A.remove_adapters(model)(ids), want, atol=0, rtol=0)


def test_loading_difflora_weights_into_a_merged_model_keeps_base_and_outputs_right():
    """Weights loaded while the LoRA is folded into q_proj/k_proj: the folded delta must follow them, and
    unmerging must give back the pretrained projections (W0 + s B A written out in float64)."""
    src = A.apply_adapter(lm(), "difflora", rank=2)
    perturb(src, seed=2)
    model = A.apply_adapter(lm(), "difflora", rank=2)
    perturb(model, seed=1)
    attn = model.layers[0].attn
    w0 = attn.q_proj.weight.detach().double().clone()
    A.merge_adapters(model)
    A.load_adapter(model, A.adapter_state_dict(src))
    lo = src.layers[0].attn.adapter.q_lora
    want_w = w0 + lo.scale * lo.b.detach().double() @ lo.a.detach().double()
    torch.testing.assert_close(attn.q_proj.weight.double(), want_w, atol=1e-6, rtol=0)
    ids = torch.randint(0, 50, (2, 7))
    torch.testing.assert_close(model(ids), src(ids), atol=1e-5, rtol=1e-5)
    A.unmerge_adapters(model)
    torch.testing.assert_close(attn.q_proj.weight.double(), w0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", A.METHODS)
def test_adapted_cross_attention_takes_a_query_mask(method):
    """Attention layers take forward(..., query_mask=) (DINT leaves padded queries out of its mean over queries);
    the adapter wrappers replace forward and refused it (TypeError), and DEX over a dint layer could not name its
    padded queries at all. Padded text queries must not change the real rows: each sequence unpadded is the
    reference."""
    attn_type = "dint" if method == "dex" else "vanilla"
    torch.manual_seed(0)
    base = build_attention(attn_type, DIM, H, n_kv_heads=2, kv_dim=12).eval()
    layer = {"dex": A.DexAttention, "difflora": A.DiffLoRAAttention, "opamp": A.OpAmpAttention}[method](base, **KW[method])
    perturb(layer)
    if method == "dex":
        layer.set_step(5)  # lambda_t != 0
    x, ctx = torch.randn(2, 6, DIM), torch.randn(2, 4, 12)
    n_real = [6, 2]
    qmask = torch.arange(6)[None, :] < torch.tensor(n_real)[:, None]
    got = layer(x, ctx, query_mask=qmask)
    for b, n in enumerate(n_real):
        torch.testing.assert_close(got[b : b + 1, :n], layer(x[b : b + 1, :n], ctx[b : b + 1]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="query_mask must be a bool tensor"):
        layer(x, ctx, query_mask=qmask.float())
