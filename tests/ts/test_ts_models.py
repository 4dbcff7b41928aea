"""iTransformer / PatchTST forecasters: shapes, structure (variates vs channels), RevIN, parameter parity."""

import pytest
import torch

import zoo
from zoo.hub import get_spec
from zoo.models.ts import ITransformer, ITransformerConfig, PatchTST, PatchTSTConfig

L, H, N = 32, 7, 4


def build(kind, attn="diff", **kw):
    torch.manual_seed(0)
    if kind == "itr":
        cfg = ITransformerConfig(lookback=L, horizon=H, dim=32, n_layers=2, n_heads=2, mlp_hidden=48, attn_type=attn, **kw)
        return ITransformer(cfg).eval()
    cfg = PatchTSTConfig(lookback=L, horizon=H, dim=32, n_layers=2, n_heads=2, mlp_hidden=48, patch_len=8, stride=4,
                         attn_type=attn, **kw)
    return PatchTST(cfg).eval()


def randomize_norms(model):
    """LayerNorms start at identity; perturb them so no structure hides behind constants."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)


@pytest.mark.parametrize("kind", ["itr", "patch"])
@pytest.mark.parametrize("attn", ["diff", "vanilla", "diff_v2"])
def test_output_shape_and_backward(kind, attn):
    model = build(kind, attn).train()
    x = torch.randn(3, L, N, requires_grad=True)
    y = model(x)
    assert y.shape == (3, H, N)
    y.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_patch_count_matches_end_padding():
    # Reference PatchTST: pad `stride` copies of the last value, then unfold -> (L - P) / S + 2 patches.
    m = build("patch")
    assert m.config.n_patches == (L - 8) // 4 + 2 == 8
    assert m.head.in_features == 8 * 32


def test_itransformer_attends_across_variates_permutation_equivariant():
    model = build("itr", revin=True)
    randomize_norms(model)
    x = torch.randn(2, L, 6)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    y, y_perm = model(x), model(x[..., perm])
    torch.testing.assert_close(y_perm, y[..., perm], atol=1e-5, rtol=1e-5)
    # ... and the variates do interact: changing one variate changes the others' forecasts.
    x2 = x.clone()
    x2[..., 0] = torch.randn(2, L)
    assert not torch.allclose(model(x2)[..., 1:], y[..., 1:], atol=1e-4)


@pytest.mark.parametrize("attn", ["diff", "vanilla"])
def test_patchtst_channel_independence(attn):
    model = build("patch", attn)
    randomize_norms(model)
    x = torch.randn(2, L, N)
    x2 = x.clone()
    x2[..., 2] = torch.randn(2, L) * 3
    y, y2 = model(x), model(x2)
    keep = [0, 1, 3]
    torch.testing.assert_close(y2[..., keep], y[..., keep], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(y2[..., 2], y[..., 2], atol=1e-3)


@pytest.mark.parametrize("kind", ["itr", "patch"])
def test_revin_shifts_forecast_by_input_offset(kind):
    model = build(kind, revin=True)
    x = torch.randn(2, L, N)
    offset = torch.tensor([5.0, -3.0, 100.0, 0.5])
    torch.testing.assert_close(model(x + offset), model(x) + offset, atol=1e-3, rtol=1e-5)
    plain = build(kind, revin=False)
    assert not torch.allclose(plain(x + offset), plain(x) + offset, atol=1e-2)


def test_itransformer_time_feature_tokens():
    model = build("itr", n_time_features=3)
    x, marks = torch.randn(2, L, N), torch.rand(2, L, 3) - 0.5
    y = model(x, marks)
    assert y.shape == (2, H, N)
    assert not torch.allclose(y, model(x, marks.flip(1)), atol=1e-5)  # the calendar tokens are read
    with pytest.raises(ValueError, match="reads 3 time features"):
        model(x)


def test_itransformer_without_calendar_tokens_refuses_x_mark():
    # The reference iTransformer embeds every x_mark column it is given as a token (DataEmbedding_inverted); a model
    # built without calendar tokens dropped x_mark unread, so the caller's calendar silently changed nothing.
    model = build("itr")
    x, marks = torch.randn(2, L, N), torch.rand(2, L, 3) - 0.5
    with pytest.raises(ValueError, match=r"reads no time features.*n_time_features=3"):
        model(x, marks)
    assert model(x, None).shape == (2, H, N)


def test_wrong_lookback_and_bad_config():
    with pytest.raises(ValueError, match="lookback=32"):
        build("itr")(torch.randn(1, L + 1, N))
    with pytest.raises(ValueError, match="unknown attention type 'difff'"):
        ITransformerConfig(attn_type="difff")
    with pytest.raises(ValueError, match="even head width"):
        ITransformerConfig(dim=30, n_heads=10)
    with pytest.raises(ValueError, match="unknown ITransformer config field"):
        ITransformer.from_config({"dimm": 3})


@pytest.mark.parametrize("kind", ["itr", "patch"])
def test_lambda_init_reaches_every_encoder_layer(kind, tmp_path):
    import math

    from zoo.hub import export_model

    default = build(kind)
    # Diff Transformer's depth schedule, 0.8 - 0.6 exp(-0.3 (l - 1)) for 1-based l
    assert [b.attn.lambda_init for b in default.encoder.layers] == pytest.approx(
        [0.8 - 0.6 * math.exp(-0.3 * i) for i in range(2)]
    )
    m = build(kind, lambda_init=0.5)
    assert [b.attn.lambda_init for b in m.encoder.layers] == [0.5, 0.5]
    export_model(m, tmp_path / "m")
    loaded = zoo.load_pretrained(tmp_path / "m")
    assert loaded.config.lambda_init == 0.5 and [b.attn.lambda_init for b in loaded.encoder.layers] == [0.5, 0.5]
    x = torch.randn(2, L, N)
    marks = torch.zeros(2, L, m.config.n_time_features) if getattr(m.config, "n_time_features", 0) else None
    torch.testing.assert_close(loaded(x, marks), m(x, marks))
    with pytest.raises(ValueError, match="lambda_init applies to differential attention"):
        build(kind, "vanilla", lambda_init=0.5)
    with pytest.raises(ValueError, match=r"lambda_init must be a number in \[0, 1\)"):
        build(kind, lambda_init=-0.1)


@pytest.mark.parametrize("family", ["itransformer", "patchtst"])
@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_diff_vanilla_parameter_parity(family, size):
    d, v = zoo.create_model(f"ts-{family}-diff-{size}"), zoo.create_model(f"ts-{family}-vanilla-{size}")
    c = d.config
    assert v.config.n_heads == 2 * c.n_heads and v.config.attn_type == "vanilla"
    head = c.dim // c.n_heads
    extra = c.n_layers * (4 * (head // 2) + head)  # lambda vectors + subln weight per layer
    assert d.num_params() - v.num_params() == extra


def test_itransformer_closed_form_parameter_count():
    m = zoo.create_model("ts-itransformer-vanilla-base")
    c = m.config  # lookback 96, horizon 96, dim 256, 2 layers, mlp 256; biases everywhere
    layer = 4 * (c.dim * c.dim + c.dim) + (c.dim * c.mlp_hidden + c.mlp_hidden) + (c.mlp_hidden * c.dim + c.dim) + 4 * c.dim
    expected = (c.lookback * c.dim + c.dim) + c.n_layers * layer + 2 * c.dim + (c.dim * c.horizon + c.horizon)
    assert m.num_params() == expected


@pytest.mark.parametrize("name", zoo.list_models("ts-*"))
def test_every_registered_forecaster_runs(name):
    model = zoo.create_model(name)
    c = model.config
    marks = torch.zeros(2, c.lookback, c.n_time_features) if getattr(c, "n_time_features", 0) else None
    y = model(torch.randn(2, c.lookback, 3), marks)
    assert y.shape == (2, c.horizon, 3)
    assert get_spec(name).family == "ts"


def test_halving_schedule_says_it_takes_no_warmup():
    from zoo.tasks.ts import ForecastTask

    with pytest.warns(UserWarning, match="'halving' .* has no warm-up or floor: warmup_steps / min_lr_ratio are not used"):
        ForecastTask(arch="ts-itransformer-diff-tiny", scheduler="halving", warmup_steps=100)


@pytest.mark.parametrize("bad", [0, -1])
def test_plot_columns_below_one_is_refused(bad):
    # "at most this many forecast columns are drawn": -1 drew all but the last column (list[:-1]) and 0 failed in
    # matplotlib after the forecast, taking forecast.csv with it
    from zoo.tasks.ts import ForecastTask

    with pytest.raises(ValueError, match=rf"plot_columns must be an integer >= 1 \(or None: every column\), got {bad}"):
        ForecastTask(arch="ts-itransformer-diff-tiny", plot_columns=bad)


@pytest.mark.parametrize("kind", ["itr", "patch"])
def test_attn_args_reach_every_encoder_layer_and_survive_export(kind, tmp_path):
    """attn_args (as the LM's) carry an attention type's own keywords: GDA with 2 signal heads per noise head has
    that many noise heads in every layer (q projection of 2 + 1 sub-heads of width 8), exports and loads back;
    keywords the config sets itself are refused naming the field."""
    from zoo.hub import export_model

    m = build(kind, "gda", attn_args={"signal_ratio": 2})
    assert [(b.attn.signal_ratio, b.attn.n_noise_heads, b.attn.q_proj.out_features) for b in m.encoder.layers] == \
        [(2, 1, (2 + 1) * 8)] * 2
    export_model(m, tmp_path / "m")
    loaded = zoo.load_pretrained(tmp_path / "m")
    assert loaded.config.attn_args == {"signal_ratio": 2}
    x = torch.randn(2, L, N)
    marks = torch.zeros(2, L, m.config.n_time_features) if getattr(m.config, "n_time_features", 0) else None
    torch.testing.assert_close(loaded(x, marks), m(x, marks))
    with pytest.raises(ValueError, match=r"n_heads \(2\) must be a multiple of signal_ratio \(3\)"):
        build(kind, "gda")  # gda's default 3:1 needs attn_args on these 2-head shapes
    with pytest.raises(ValueError, match=r"attn_args \['dropout', 'lambda_init'\] are set by the config itself: use "
                                         r"attn_dropout \(not attn_args.dropout\), lambda_init"):
        build(kind, attn_args={"lambda_init": 0.5, "dropout": 0.2})
    with pytest.raises(ValueError, match="attn_args must be a mapping"):
        build(kind, attn_args=["signal_ratio", 2])


def test_empty_attn_args_and_none_are_the_same_architecture(tmp_path):
    """attn_args {} and None build the same layers (check_attn_args reads None as {}): an export made without
    attn_args loads into a config that writes `attn_args: {}`, and one made with {} into the registered
    architecture, instead of being refused as another architecture; a real difference is still refused."""
    from zoo.hub import export_model

    kw = dict(lookback=L, horizon=H, dim=32, n_heads=2)
    for saved, asked in ((None, {}), ({}, None)):
        m = zoo.create_model("ts-itransformer-diff-small", **kw, **({} if saved is None else {"attn_args": saved}))
        folder = export_model(m, tmp_path / f"m_{saved}")
        again = zoo.create_model("ts-itransformer-diff-small", pretrained=folder, **kw,
                                 **({} if asked is None else {"attn_args": asked}))
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), m.state_dict().values()))
    gda = export_model(zoo.create_model("ts-itransformer-diff-small", **kw, attn_type="gda",
                                        attn_args={"signal_ratio": 2}), tmp_path / "gda")
    with pytest.raises(ValueError, match=r"attn_args: checkpoint=\{'signal_ratio': 2\} config=\{'signal_ratio': 1\}"):
        zoo.create_model("ts-itransformer-diff-small", pretrained=gda, **kw, attn_type="gda", attn_args={"signal_ratio": 1})


def test_another_attn_type_than_the_checkpoints_is_refused_by_name_not_by_its_attn_args(tmp_path):
    """Fine-tuning a gda export (attn_args {signal_ratio: 2}) with attn_type diff: the task carries the checkpoint's
    architecture, attn_args included, so the diff layers were built with signal_ratio and failed with
    "AttentionBase.__init__() got an unexpected keyword argument 'signal_ratio'" (a keyword the user never passed);
    the compatibility error names the differing field instead."""
    from zoo.hub import export_model
    from zoo.tasks.ts import ForecastTask

    gda = zoo.create_model("ts-itransformer-diff-tiny", attn_type="gda", attn_args={"signal_ratio": 2})
    folder = export_model(gda, tmp_path / "gda", arch="ts-itransformer-diff-tiny")
    with pytest.raises(ValueError, match=r"does not match the configured architecture \(attn_type: checkpoint='gda' "
                                         r"config='diff'\).*drop the overrides \['attn_type'\]"):
        ForecastTask(arch="ts-itransformer-diff-tiny", attn_type="diff", pretrained=str(folder))
    assert ForecastTask(arch="ts-itransformer-diff-tiny", pretrained=str(folder)).model.config.attn_args == {"signal_ratio": 2}


@pytest.mark.parametrize("arch", ["ts-patchtst-diff-tiny", "ts-itransformer-diff-tiny"])
def test_weight_decay_spares_the_position_embedding(arch):
    """timm (``no_weight_decay``: ``pos_embed``) and the reference PatchTST (no decay) leave position embeddings
    undecayed; PatchTST's learned ``pos`` was decayed with every matrix. Reference: AdamW's decoupled decay with a
    zero gradient multiplies a decayed tensor by exactly ``1 - lr * wd`` and leaves an exempt one as it is."""
    from zoo.tasks.ts import ForecastTask

    lr, wd = 0.1, 0.5
    task = ForecastTask(arch=arch, lr=lr, weight_decay=wd, scheduler="constant")
    opt = task.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    for p in task.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in task.named_parameters():
        # the only matrices iTransformer / PatchTST hold besides position embeddings are nn.Linear weights
        expect = before[n] * (1 - lr * wd) if (n.endswith(".weight") and p.dim() >= 2) else before[n]
        torch.testing.assert_close(p.detach(), expect, rtol=1e-6, atol=0, msg=n)
    if arch.startswith("ts-patchtst"):
        assert "model.pos" in dict(task.named_parameters())
