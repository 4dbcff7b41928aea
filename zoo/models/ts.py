"""Time-series forecasters with differential attention: iTransformer and PatchTST.

* :class:`ITransformer` (Liu et al., "iTransformer", ICLR 2024): each variate's whole lookback window
  is one token (``Linear(lookback, dim)``), attention runs across variates, a linear head maps each
  token to the horizon. Optional calendar features enter as extra tokens, as in the reference code.
* :class:`PatchTST` (Nie et al., ICLR 2023): every channel is forecast on its own (channel
  independence); its lookback is cut into patches (``patch_len``, ``stride``; the series is padded at
  the end by repeating its last value ``stride`` times, as the reference ``padding_patch="end"``),
  patches are the tokens, a flatten head maps them to the horizon.

Both share one post-norm encoder block (attention -> add -> LayerNorm -> GELU MLP -> add -> LayerNorm,
the block of the reference iTransformer code) whose attention type is a string (``diff``,
``vanilla``, ``diff_v2``...) resolved by :func:`zoo.nn.build_attention`, and optional RevIN-style
instance normalization (per window and channel: subtract the mean, divide by the std, undo both on
the forecast; non-affine, as iTransformer's ``use_norm``).

A trained model carries its data facts as assets (``ts_meta.json``: column names, scaler mean/std,
date column, frequency, time features), so ``zoo.load_pretrained(path).forecast(df)`` turns a raw
frame into future rows with timestamps on the original scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from zoo.hub import DEFAULT_RUNTIME_FIELDS, PretrainedMixin, check_positive_ints, config_from, register_model
from zoo.nn import GeluMlp, build_attention, list_attention_types
from zoo.nn.attention import check_attn_args, check_lambda_init_for, lambda_init_kwargs
from zoo.nn.modes import eval_mode

META_FILE = "ts_meta.json"
# attention keywords the forecasters set from their own config fields (attn_args may not repeat them)
ATTN_CONFIG_FIELDS = {"lambda_init": "lambda_init", "dropout": "attn_dropout", "backend": "attn_backend",
                      "layer_idx": "(the layer's position)", "bias": "(always True here)"}
_META_KEYS = (
    "source", "columns", "out_columns", "out_index", "target", "target_index", "features", "date_col",
    "date_format", "freq", "time_features", "mean", "std",
)


@dataclass
class TSEncoderConfig:
    """Fields shared by the forecasters (see :class:`ITransformerConfig`, :class:`PatchTSTConfig`).

    ``n_heads`` counts attention heads of width ``dim // n_heads``; a ``diff`` head holds two q/k
    sub-heads of half that width, so a ``vanilla`` twin with equal parameters uses ``2 * n_heads``.
    """

    lookback: int = 96
    horizon: int = 96
    dim: int = 128
    n_layers: int = 2
    n_heads: int = 4
    mlp_hidden: int = 128
    attn_type: str = "diff"
    revin: bool = True
    dropout: float = 0.1
    attn_dropout: float = 0.1  # the reference FullAttention drops attention probabilities with p = dropout
    act_dropout: float = 0.0  # dropout on the FFN's hidden activations (the reference FFN uses p = dropout)
    lambda_init: Optional[float] = None  # differential types: a fixed lambda_init; None = the depth schedule
    attn_backend: Optional[str] = None
    attn_args: Optional[dict[str, Any]] = None  # extra kwargs of the attention type, e.g. gda's {signal_ratio: 2}

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (transformers' ``config.to_dict()``), as ``config.json`` holds them."""
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        if self.attn_type not in list_attention_types():
            raise ValueError(f"unknown attention type {self.attn_type!r}; known types: {list_attention_types()}")
        if self.attn_args is not None:
            self.attn_args = check_attn_args(self.attn_args, ATTN_CONFIG_FIELDS)
        check_positive_ints(self, ("lookback", "horizon", "dim", "n_layers", "n_heads", "mlp_hidden"))
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.attn_type == "diff" and (self.dim // self.n_heads) % 2:
            raise ValueError(f"diff attention needs an even head width; dim / n_heads = {self.dim // self.n_heads}")
        self.lambda_init = check_lambda_init_for(self.lambda_init, attn_type=self.attn_type)


@dataclass
class ITransformerConfig(TSEncoderConfig):
    """Architecture of :class:`ITransformer`; ``n_time_features`` calendar tokens join the variates."""

    n_time_features: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_time_features < 0:
            raise ValueError(f"n_time_features must be >= 0, got {self.n_time_features}")


@dataclass
class PatchTSTConfig(TSEncoderConfig):
    """Architecture of :class:`PatchTST`; ``head_dropout`` acts before the flatten head."""

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 2
    mlp_hidden: int = 128
    patch_len: int = 16
    stride: int = 8
    head_dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_ints(self, ("patch_len", "stride"))
        if self.patch_len > self.lookback + self.stride:
            raise ValueError(
                f"patch_len ({self.patch_len}) is longer than the padded lookback ({self.lookback} + stride "
                f"{self.stride}): no patch fits; set model_args.patch_len (and stride) to at most "
                f"{self.lookback + self.stride}, or a longer lookback (data.lookback)"
            )

    @property
    def n_patches(self) -> int:
        return (self.lookback + self.stride - self.patch_len) // self.stride + 1


class EncoderBlock(nn.Module):
    """Post-norm block of the reference iTransformer encoder, with a pluggable attention type."""

    def __init__(self, cfg: TSEncoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = build_attention(
            cfg.attn_type, cfg.dim, cfg.n_heads, layer_idx=layer_idx, dropout=cfg.attn_dropout, bias=True,
            backend=cfg.attn_backend, **lambda_init_kwargs(cfg.attn_type, cfg.lambda_init), **(cfg.attn_args or {}),
        )
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.mlp = GeluMlp(cfg.dim, cfg.mlp_hidden, dropout=cfg.dropout, act_dropout=cfg.act_dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x)))
        return self.norm2(x + self.mlp(x))


class TSEncoder(nn.Module):
    """A stack of :class:`EncoderBlock` and a final LayerNorm; tokens ``[B, T, dim]`` in and out."""

    def __init__(self, cfg: TSEncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


def revin_stats(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-window, per-channel mean and std over time of ``x`` ``[B, L, N]`` (shapes ``[B, 1, N]``)."""
    mean = x.mean(dim=1, keepdim=True).detach()
    std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + eps).detach()
    return mean, std


class Forecaster(PretrainedMixin, nn.Module):
    """Shared parts: config handling, RevIN, assets, and the pandas-level :meth:`forecast`."""

    family = "ts"
    config_class: type = TSEncoderConfig
    runtime_fields = DEFAULT_RUNTIME_FIELDS | {"head_dropout", "act_dropout"}
    data_fields = frozenset({"lookback", "horizon"})  # the data's; create_model(pretrained=...) reads them

    def __init__(self, config: TSEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.meta: Optional[dict[str, Any]] = None  # data facts (scaler, columns, freq); see set_meta

    @classmethod
    def from_config(cls, config: Union[TSEncoderConfig, dict]) -> "Forecaster":
        return cls(config_from(cls.config_class, config, cls.__name__))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != self.config.lookback:
            raise ValueError(
                f"expected input [batch, lookback={self.config.lookback}, n_vars], got {tuple(x.shape)}; "
                "the data's lookback must match the model's"
            )

    def forward(self, x: Tensor, x_mark: Optional[Tensor] = None) -> Tensor:
        """Forecast ``[B, horizon, N]`` from ``x`` ``[B, lookback, N]`` (scaled values)."""
        self._check_input(x)
        if self.config.revin:
            mean, std = revin_stats(x)
            x = (x - mean) / std
        y = self._forward(x, x_mark)
        if self.config.revin:
            y = y * std + mean
        return y

    def _forward(self, x: Tensor, x_mark: Optional[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- data facts carried with the weights
    def set_meta(self, info: dict[str, Any]) -> None:
        """Attach the data facts (a datamodule's ``data_info``) used by :meth:`forecast`."""
        missing = [k for k in ("columns", "mean", "std", "freq", "date_col") if k not in info]
        if missing:
            raise ValueError(f"data facts lack {missing}; pass a time-series datamodule's data_info")
        self.meta = {k: info.get(k) for k in _META_KEYS}
        if self.meta["out_index"] is None:
            self.meta["out_index"] = list(range(len(info["columns"])))
            self.meta["out_columns"] = list(info["columns"])

    def save_assets(self, folder: Union[str, Path]) -> None:
        if self.meta is not None:
            (Path(folder) / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")

    def load_assets(self, folder: Union[str, Path]) -> None:
        meta = read_meta(folder)
        if meta is not None:
            self.meta = meta

    # -- pandas in, pandas out
    @torch.no_grad()
    def forecast(self, data: Any, interpolate: bool = False, date_format: Optional[str] = None) -> "Any":
        """Forecast the ``horizon`` rows after the end of ``data`` on the original scale.

        ``data``: a DataFrame (or CSV path) with the model's date column and input columns; its last
        ``lookback`` rows are the input (a model of one variable also takes a Series with dates as its index).
        The dates may also be the frame's index (a ``DatetimeIndex``, or an index named as the date column, as
        ``read_csv(index_col=..., parse_dates=True)`` gives); the forecast then has its dates in the index too.
        ``date_format``: the strptime layout of its dates (default: the training data's ``data.date_format``, else
        inferred). Returns a DataFrame with the future timestamps (continuing the input's frequency) and one
        column per forecast variable.
        """
        import numpy as np
        import pandas as pd

        from zoo.data.ts_frames import (
            _off_steps, future_dates, infer_freq, prepare_frame, read_ts_csv, same_spacing, scale_values, time_features,
        )

        meta = self.meta
        if meta is None:
            raise ValueError(
                "this model carries no data facts (scaler, columns, frequency); train it with ForecastTask or "
                "load an export with zoo.load_pretrained"
            )
        if isinstance(data, pd.Series):  # one variable, dates as its index; unnamed: the model's one variable
            unnamed = data.name is None and len(meta["columns"]) == 1
            data = data.to_frame(meta["columns"][0]) if unnamed else data.to_frame()
        elif isinstance(data, (str, os.PathLike)):
            data = read_ts_csv(data, api=True)
        elif not isinstance(data, pd.DataFrame):
            raise TypeError(
                f"forecast takes a pandas DataFrame (a {meta['date_col']!r} column or dates as the index, and the "
                f"columns {list(meta['columns'])}), a Series of one variable or a CSV path; got {type(data).__name__}"
            )
        date_col = meta["date_col"]
        dates_in_index = date_col not in data.columns and (
            isinstance(data.index, (pd.DatetimeIndex, pd.PeriodIndex)) or data.index.name == date_col)
        index_tz = period = None
        if dates_in_index:  # the pandas habit: timestamps as the index
            # the forecast's index takes the input's name and timezone back (the dates are read in UTC)
            index_name, index_tz = data.index.name, getattr(data.index, "tz", None)
            if isinstance(data.index, pd.PeriodIndex):  # periods: their start times, and periods again at the end
                period = data.index.freqstr
                data = data.set_axis(data.index.to_timestamp(how="start"))
            data = data.rename_axis(date_col).reset_index()
        elif date_col in data.columns:  # a timezone-aware date column gets its timezone back as well
            # (no dtype when the name is written twice: prepare_frame names that)
            index_tz = getattr(getattr(data[date_col], "dtype", None), "tz", None)
        dates, frame = prepare_frame(
            data, date_col=meta["date_col"], columns=meta["columns"], interpolate=interpolate, source="the input",
            date_format=date_format or meta.get("date_format"),
            date_advice=f"this model was trained with its timestamps in {meta['date_col']!r}: name the input's timestamp column so",
            api=True, reads_last=self.config.lookback,
        )
        L = self.config.lookback
        if len(frame) < L:
            raise ValueError(f"too few rows to forecast: the input has {len(frame)} rows but the lookback is {L}")
        mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
        x = scale_values(frame.to_numpy(dtype=np.float64)[-L:], mean, std, columns=list(frame.columns),
                         dates=dates[-L:], source="the input", first_row=len(frame) - L, api=True)
        param = next(self.parameters())
        xt = torch.as_tensor(x, dtype=param.dtype, device=param.device)[None]
        x_mark = None
        if meta.get("time_features"):
            marks = time_features(dates[-L:], meta["time_features"])
            x_mark = torch.as_tensor(marks, dtype=param.dtype, device=param.device)[None]
        with eval_mode(self):  # an error (or an interrupt) in the forward leaves the model in the mode it had
            y = self(xt, x_mark)[0].cpu().double().numpy()  # float64 on the CPU (MPS has none)
        idx = list(meta["out_index"])
        y = y[:, idx] * std[idx] + mean[idx]
        # the input's own clock for its steps and the future dates: a daily series in a daylight-saving timezone
        # steps 23 or 25 hours in UTC, and its forecast, stepped in UTC, landed at 01:00 local after the change
        local = dates if index_tz is None else dates.tz_localize("UTC").tz_convert(index_tz)
        if meta.get("freq") and _off_steps(local, meta["freq"]) == 0:
            # the input steps by the model's frequency: a short input (five business days, Monday to Friday) read
            # alone gave another one ('D'), stamping the forecast on the weekend
            freq = meta["freq"]
        else:
            try:
                freq = infer_freq(local, api=True)
            except ValueError:
                freq = meta["freq"]
        if meta.get("freq") and not same_spacing(freq, meta["freq"]):
            warnings.warn(
                f"the input is {freq}-spaced but the model was trained on {meta['freq']}-spaced data: its forecast "
                f"is of {meta['freq']} steps, stamped here at the input's {freq} spacing; resample the input to "
                f"{meta['freq']}", stacklevel=2,
            )
        out = pd.DataFrame(y, columns=list(meta["out_columns"]))
        out.insert(0, date_col, future_dates(local[-1], self.config.horizon, freq))
        if not dates_in_index:
            return out
        out = out.set_index(date_col)
        if period is not None:
            out.index = out.index.to_period(period)
        return out.rename_axis(index_name)


def read_meta(folder: Union[str, Path]) -> Optional[dict[str, Any]]:
    """An exported forecaster's data facts (``ts_meta.json``), or None when it has none."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the export is corrupt") from exc


class ITransformer(Forecaster):
    """iTransformer: variates as tokens, (differential) attention across them, linear horizon head."""

    config_class = ITransformerConfig
    data_fields = Forecaster.data_fields | {"n_time_features"}  # calendar tokens: data.time_features

    def __init__(self, config: ITransformerConfig) -> None:
        super().__init__(config)
        self.embed = nn.Linear(config.lookback, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = TSEncoder(config)
        self.head = nn.Linear(config.dim, config.horizon)

    def _forward(self, x: Tensor, x_mark: Optional[Tensor]) -> Tensor:
        n_vars = x.shape[2]
        tokens = x.transpose(1, 2)  # [B, N, L]
        n_tf = self.config.n_time_features
        if n_tf:
            if x_mark is None or x_mark.shape[-1] != n_tf or x_mark.shape[:2] != x.shape[:2]:
                got = None if x_mark is None else tuple(x_mark.shape)
                raise ValueError(
                    f"this model reads {n_tf} time features: pass x_mark [batch, lookback, {n_tf}], got {got} "
                    "(set data.time_features=true)"
                )
            tokens = torch.cat([tokens, x_mark.transpose(1, 2).to(tokens.dtype)], dim=1)
        elif x_mark is not None and x_mark.shape[-1]:
            # the reference iTransformer reads any x_mark it is given as tokens; dropping it unread hid the mismatch
            raise ValueError(
                f"this model reads no time features (n_time_features=0) but got x_mark {tuple(x_mark.shape)}; build it "
                f"with n_time_features={x_mark.shape[-1]} (data.time_features=true) or pass x_mark=None"
            )
        h = self.encoder(self.drop(self.embed(tokens)))
        return self.head(h)[:, :n_vars].transpose(1, 2)  # [B, H, N]; calendar tokens are not forecast


class PatchTST(Forecaster):
    """PatchTST: channel-independent patch tokens, (differential) attention across patches.

    The forward of Time-Series-Library's PatchTST (post-norm LayerNorm layers, flatten head) with two changes: the
    patch embedding of the official code (yuqinie98/PatchTST: a biased ``Linear(patch_len, dim)`` and a learned
    position table, not a bias-free projection and a fixed sinusoid) and a final LayerNorm where Time-Series-Library
    has a BatchNorm. The official backbone differs further: BatchNorm in every layer, residual attention scores, no
    final norm. The head flattens the tokens patch-major, the references ``dim``-major (the same linear map, its
    weight columns reordered).
    """

    config_class = PatchTSTConfig

    def __init__(self, config: PatchTSTConfig) -> None:
        super().__init__(config)
        n_patches = config.n_patches
        self.patch_embed = nn.Linear(config.patch_len, config.dim)
        self.pos = nn.Parameter(torch.empty(n_patches, config.dim).uniform_(-0.02, 0.02))
        self.drop = nn.Dropout(config.dropout)
        self.encoder = TSEncoder(config)
        self.head_drop = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(n_patches * config.dim, config.horizon)

    def no_weight_decay(self) -> set[str]:
        """The learned position embedding stays out of weight decay (timm's ``no_weight_decay`` convention for
        ``pos_embed``; the reference PatchTST trains with no decay at all)."""
        return {"pos"}

    def _forward(self, x: Tensor, x_mark: Optional[Tensor]) -> Tensor:
        # x_mark is ignored: PatchTST forecasts each channel from its own history only.
        B, L, N = x.shape
        c = self.config
        series = x.transpose(1, 2).reshape(B * N, L)
        series = torch.cat([series, series[:, -1:].expand(-1, c.stride)], dim=1)  # pad end: repeat last value
        patches = series.unfold(-1, c.patch_len, c.stride)  # [B*N, P, patch_len]
        h = self.encoder(self.drop(self.patch_embed(patches) + self.pos))
        y = self.head(self.head_drop(h.flatten(1)))  # [B*N, H]
        return y.view(B, N, c.horizon).transpose(1, 2)


# -- registry ---------------------------------------------------------------------------------
# Diff sizes use h heads of width 2d; each vanilla twin has 2h heads of width d (same projection
# parameters; the diff model adds its lambda vectors and subln weights).
_ITRANSFORMER_SIZES = {
    # name: (dim, n_layers, mlp_hidden, diff heads)  -- iTransformer's scripts: ETTh2 128/128, ETTh1 256/256
    "tiny": (32, 1, 64, 2),
    "small": (128, 2, 128, 4),
    "base": (256, 2, 256, 4),
    "large": (512, 2, 512, 4),
}
_PATCHTST_SIZES = {
    # name: (dim, n_layers, mlp_hidden, diff heads)
    "tiny": (32, 1, 64, 2),
    "small": (64, 2, 128, 2),
    "base": (128, 3, 256, 4),
}
_DESCRIPTIONS = {
    ITransformer: "iTransformer forecaster (variates as tokens)",
    PatchTST: "PatchTST forecaster (channel-independent patches)",
}
_FAMILIES = (("itransformer", ITransformer, _ITRANSFORMER_SIZES), ("patchtst", PatchTST, _PATCHTST_SIZES))
for _family, _cls, _sizes in _FAMILIES:
    for _size, (_dim, _layers, _hidden, _heads) in _sizes.items():
        for _attn, _h in (("diff", _heads), ("vanilla", 2 * _heads)):
            register_model(
                f"ts-{_family}-{_attn}-{_size}",
                _cls,
                description=f"{_DESCRIPTIONS[_cls]}, {_attn} attention, {_layers}x{_dim}",
                dim=_dim,
                n_layers=_layers,
                mlp_hidden=_hidden,
                n_heads=_h,
                attn_type=_attn,
            )

# Shipped weights (made by scripts/bench_ts.py --export): ETTh1, lookback 96, horizon 96, features M.
SHIPPED = {
    "ts-itransformer-diff-etth1": (ITransformer, _ITRANSFORMER_SIZES["small"], {"n_time_features": 4}),
    "ts-patchtst-diff-etth1": (PatchTST, _PATCHTST_SIZES["small"], {}),
}
for _name, (_cls, (_dim, _layers, _hidden, _heads), _extra) in SHIPPED.items():
    register_model(
        _name,
        _cls,
        description=f"{_DESCRIPTIONS[_cls]}, diff attention, {_layers}x{_dim}, trained on ETTh1 (L=96, H=96, M)",
        pretrained=_name,
        lookback=96,
        horizon=96,
        dim=_dim,
        n_layers=_layers,
        mlp_hidden=_hidden,
        n_heads=_heads,
        attn_type="diff",
        **_extra,
    )

__all__ = [
    "EncoderBlock", "Forecaster", "ITransformer", "ITransformerConfig", "PatchTST", "PatchTSTConfig",
    "TSEncoder", "TSEncoderConfig", "revin_stats",
]
