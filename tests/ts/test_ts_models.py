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


def test_a_lookback_shorter_than_a_patch_names_the_fix():
    """data.lookback 3 under PatchTST's patch_len 16, stride 8: no patch fits (it said so without a way out). The
    bound it names is the reference's: the end padding adds `stride` values, so patch_len <= lookback + stride."""
    with pytest.raises(ValueError, match=r"patch_len \(16\) is longer than the padded lookback \(3 \+ stride 8\): no "
                                         r"patch fits; set model_args.patch_len \(and stride\) to at most 11, or a "
                                         r"longer lookback \(data.lookback\)"):
        PatchTSTConfig(lookback=3, horizon=4)
    ok = PatchTST(PatchTSTConfig(lookback=3, horizon=4, dim=16, n_heads=2, mlp_hidden=16, patch_len=11, stride=8))
    assert ok.config.n_patches == 1 and ok(torch.randn(2, 3, 5)).shape == (2, 4, 5)


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


# -- faithfulness to the reference code -------------------------------------------------------------------------
# Plain-torch re-implementations of the reference forwards, written from thuml/iTransformer (model/iTransformer.py,
# layers/Transformer_EncDec.py, layers/SelfAttention_Family.py, layers/Embed.py) and thuml/Time-Series-Library
# (models/PatchTST.py), with the references' module and parameter names; eval mode (every dropout is the identity).
# The zoo's weights are mapped onto them by name, so a difference in any step of the forward shows as a mismatch.


class _RefFullAttention(torch.nn.Module):
    """AttentionLayer(FullAttention(mask_flag=False)): per-head softmax(q k^T / sqrt(E)) v."""

    def __init__(self, d_model, n_heads):
        super().__init__()
        self.query_projection = torch.nn.Linear(d_model, d_model)
        self.key_projection = torch.nn.Linear(d_model, d_model)
        self.value_projection = torch.nn.Linear(d_model, d_model)
        self.out_projection = torch.nn.Linear(d_model, d_model)
        self.n_heads = n_heads

    def forward(self, x):
        B, T, _ = x.shape
        q = self.query_projection(x).view(B, T, self.n_heads, -1)
        k = self.key_projection(x).view(B, T, self.n_heads, -1)
        v = self.value_projection(x).view(B, T, self.n_heads, -1)
        scores = torch.einsum("blhe,bshe->bhls", q, k)
        a = torch.softmax(scores / q.shape[-1] ** 0.5, dim=-1)
        return self.out_projection(torch.einsum("bhls,bshd->blhd", a, v).reshape(B, T, -1))


class _RefEncoderLayer(torch.nn.Module):
    """EncoderLayer: post-norm; the FFN is two kernel-1 Conv1d with the activation (gelu, run.py's default)."""

    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.attention = _RefFullAttention(d_model, n_heads)
        self.conv1 = torch.nn.Conv1d(d_model, d_ff, kernel_size=1)
        self.conv2 = torch.nn.Conv1d(d_ff, d_model, kernel_size=1)
        self.norm1 = torch.nn.LayerNorm(d_model)
        self.norm2 = torch.nn.LayerNorm(d_model)

    def forward(self, x):
        y = x = self.norm1(x + self.attention(x))
        y = torch.nn.functional.gelu(self.conv1(y.transpose(-1, 1)))
        y = self.conv2(y).transpose(-1, 1)
        return self.norm2(x + y)


class _RefEncoder(torch.nn.Module):
    def __init__(self, d_model, n_heads, d_ff, e_layers, norm_layer):
        super().__init__()
        self.attn_layers = torch.nn.ModuleList(_RefEncoderLayer(d_model, n_heads, d_ff) for _ in range(e_layers))
        self.norm = norm_layer

    def forward(self, x):
        for layer in self.attn_layers:
            x = layer(x)
        return self.norm(x)


def _ref_normalize(x_enc):
    """The Non-stationary Transformer normalization both references apply (use_norm)."""
    means = x_enc.mean(1, keepdim=True).detach()
    x_enc = x_enc - means
    stdev = torch.sqrt(torch.var(x_enc, dim=1, keepdim=True, unbiased=False) + 1e-5)
    return x_enc / stdev, means, stdev


class _RefITransformer(torch.nn.Module):
    def __init__(self, seq_len, pred_len, d_model, n_heads, d_ff, e_layers, use_norm):
        super().__init__()
        self.pred_len, self.use_norm = pred_len, use_norm
        self.enc_embedding = torch.nn.Module()  # DataEmbedding_inverted
        self.enc_embedding.value_embedding = torch.nn.Linear(seq_len, d_model)
        self.encoder = _RefEncoder(d_model, n_heads, d_ff, e_layers, torch.nn.LayerNorm(d_model))
        self.projector = torch.nn.Linear(d_model, pred_len, bias=True)

    def forward(self, x_enc, x_mark_enc):
        if self.use_norm:
            x_enc, means, stdev = _ref_normalize(x_enc)
        _, _, N = x_enc.shape
        x = x_enc.permute(0, 2, 1)
        if x_mark_enc is not None:  # covariates (timestamps) as extra tokens
            x = torch.cat([x, x_mark_enc.permute(0, 2, 1)], 1)
        enc_out = self.encoder(self.enc_embedding.value_embedding(x))
        dec_out = self.projector(enc_out).permute(0, 2, 1)[:, :, :N]
        if self.use_norm:
            dec_out = dec_out * stdev[:, 0, :].unsqueeze(1).repeat(1, self.pred_len, 1)
            dec_out = dec_out + means[:, 0, :].unsqueeze(1).repeat(1, self.pred_len, 1)
        return dec_out[:, -self.pred_len:, :]


class _RefPatchTST(torch.nn.Module):
    """Time-Series-Library's PatchTST forecast, with the zoo's documented choices substituted (marked below)."""

    def __init__(self, seq_len, pred_len, d_model, n_heads, d_ff, e_layers, patch_len, stride, n_patches):
        super().__init__()
        self.pred_len, self.patch_len, self.stride = pred_len, patch_len, stride
        self.patch_embedding = torch.nn.Module()
        self.patch_embedding.padding_patch_layer = torch.nn.ReplicationPad1d((0, stride))
        # zoo: a biased patch projection and a learned position table (the official yuqinie98/PatchTST backbone's
        # W_P and W_pos); Time-Series-Library: Linear(patch_len, d_model, bias=False) + a fixed sinusoid
        self.patch_embedding.value_embedding = torch.nn.Linear(patch_len, d_model, bias=True)
        self.patch_embedding.position_embedding = torch.nn.Parameter(torch.zeros(n_patches, d_model))
        # zoo: the shared TSEncoder ends in a LayerNorm; Time-Series-Library: Transpose + BatchNorm1d + Transpose
        self.encoder = _RefEncoder(d_model, n_heads, d_ff, e_layers, torch.nn.LayerNorm(d_model))
        self.head = torch.nn.Module()  # FlattenHead (its dropout follows the linear; identity in eval)
        self.head.linear = torch.nn.Linear(d_model * n_patches, pred_len)

    def forward(self, x_enc):
        x_enc, means, stdev = _ref_normalize(x_enc)
        x = x_enc.permute(0, 2, 1)
        n_vars = x.shape[1]
        x = self.patch_embedding.padding_patch_layer(x)
        x = x.unfold(dimension=-1, size=self.patch_len, step=self.stride)
        x = torch.reshape(x, (x.shape[0] * x.shape[1], x.shape[2], x.shape[3]))
        enc_out = self.encoder(self.patch_embedding.value_embedding(x) + self.patch_embedding.position_embedding)
        enc_out = torch.reshape(enc_out, (-1, n_vars, enc_out.shape[-2], enc_out.shape[-1])).permute(0, 1, 3, 2)
        dec_out = self.head.linear(enc_out.flatten(start_dim=-2)).permute(0, 2, 1)  # [bs, d_model * patch_num]
        dec_out = dec_out * stdev[:, 0, :].unsqueeze(1).repeat(1, self.pred_len, 1)
        dec_out = dec_out + means[:, 0, :].unsqueeze(1).repeat(1, self.pred_len, 1)
        return dec_out[:, -self.pred_len:, :]


_ENCODER_NAMES = {"attn.q_proj": "attention.query_projection", "attn.k_proj": "attention.key_projection",
                  "attn.v_proj": "attention.value_projection", "attn.o_proj": "attention.out_projection",
                  "mlp.fc1": "conv1", "mlp.fc2": "conv2", "norm1": "norm1", "norm2": "norm2"}


def _to_reference(zoo_state, top_names):
    """The zoo's state dict under the reference's names; a zoo tensor with no reference counterpart fails."""
    out = {}
    for name, t in zoo_state.items():
        parts = name.split(".")
        if parts[0] == "encoder" and parts[1] == "layers":
            sub = ".".join(parts[3:-1])
            ref = f"encoder.attn_layers.{parts[2]}.{_ENCODER_NAMES[sub]}.{parts[-1]}"
            if sub.startswith("mlp.") and parts[-1] == "weight":
                t = t.unsqueeze(-1)  # Linear [out, in] -> Conv1d kernel 1 [out, in, 1]
        elif name in top_names:  # a bare parameter (PatchTST's position table)
            ref = top_names[name]
        else:
            ref = top_names[".".join(parts[:-1])] + "." + parts[-1]
        out[ref] = t
    return out


def _faithfulness_model(kind, **kw):
    model = build(kind, "vanilla", **kw).double()
    randomize_norms(model)
    with torch.no_grad():
        for b in model.encoder.layers:  # the zoo initialises attention biases to zero
            for proj in (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj, b.attn.o_proj):
                proj.bias.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("revin", [True, False])
@pytest.mark.parametrize("n_tf", [0, 3])
def test_vanilla_itransformer_matches_the_reference_forward(revin, n_tf):
    model = _faithfulness_model("itr", revin=revin, n_time_features=n_tf)
    c = model.config
    ref = _RefITransformer(c.lookback, c.horizon, c.dim, c.n_heads, c.mlp_hidden, c.n_layers, use_norm=revin)
    names = {"embed": "enc_embedding.value_embedding", "encoder.norm": "encoder.norm", "head": "projector"}
    ref.double().load_state_dict(_to_reference(model.state_dict(), names), strict=True)
    ref.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, L, N, generator=g, dtype=torch.float64) * torch.tensor([1.0, 4.0, 0.3, 9.0]) + 2.0
    marks = torch.rand(3, L, n_tf, generator=g, dtype=torch.float64) - 0.5 if n_tf else None
    with torch.no_grad():
        torch.testing.assert_close(model(x, marks), ref(x, marks))


def test_vanilla_patchtst_matches_the_reference_forward():
    model = _faithfulness_model("patch")
    c = model.config
    ref = _RefPatchTST(c.lookback, c.horizon, c.dim, c.n_heads, c.mlp_hidden, c.n_layers, c.patch_len, c.stride,
                       c.n_patches)
    names = {"patch_embed": "patch_embedding.value_embedding", "pos": "patch_embedding.position_embedding",
             "encoder.norm": "encoder.norm", "head": "head.linear"}
    state = _to_reference(model.state_dict(), names)
    # the zoo flattens the head's input patch-major ([patch_num, d_model]), the reference d_model-major: the same
    # linear map with its input columns reordered
    w = state["head.linear.weight"]
    state["head.linear.weight"] = w.view(c.horizon, c.n_patches, c.dim).transpose(1, 2).reshape(c.horizon, -1)
    ref.double().load_state_dict(state, strict=True)
    ref.eval()
    x = torch.randn(3, L, N, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3.0 - 1.0
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
