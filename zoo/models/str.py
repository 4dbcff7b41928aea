"""Scene-text recognizer: ViT encoder over 32x128 crops and a PARSeq-style decoder whose
cross-attention to the image tokens is differential (CSD, arXiv 2503.16184; PARSeq, arXiv 2207.06966).

Encoder: a timm ``VisionTransformer`` (patch 4x8 -> 8x16 = 128 image tokens, no class token).
Decoder: ``dec_depth`` pre-norm layers over ``max_length + 1`` position queries (the last slot is for
EOS). Each layer: the query stream attends to the *content* stream (BOS + character embeddings,
each carrying the position embedding of the query it answers) under a per-query visibility mask,
then cross-attends to the image tokens, then an MLP. The cross-attention type is ``attn_type``
(``diff`` by default, ``vanilla`` as the baseline), the self-attention type ``self_attn_type``.

Visibility masks (query ``i`` predicts character ``i``; content ``0`` is BOS, content ``j`` is
character ``j - 1``):

* ``ar``: left-to-right, query ``i`` sees contents ``0..i`` (autoregressive decoding);
* ``nar``: every query sees BOS only (one-pass decoding);
* ``cloze``: query ``i`` sees every content except its own character ``i + 1`` (refinement and the
  CSD teacher: each character predicted from all the others);
* a permutation (PARSeq's permutation language modelling).

Choices the papers leave open or that we simplify, the simplest one taken: the content stream is
not updated across layers (so no layer can leak a character into its own query); the per-query mask
is the attention ops' ``key_mask [B, Tq, T]`` (on the PyTorch backends; ``dint``, whose mean over
queries would mix visibilities, is refused); autoregressive decoding re-runs the decoder once per
step over the visible prefix (no cache).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from zoo.data.charsets import Charset, resolve_charset
from zoo.hub import DEFAULT_RUNTIME_FIELDS, PretrainedMixin, check_positive_ints, config_from, register_model
from zoo.nn import GeluMlp, build_attention, list_attention_types
from zoo.nn.attention import check_lambda_init_for, lambda_init_kwargs, require_differential
from zoo.nn.modes import eval_mode

DECODE_MODES = ("ar", "nar")
MemoryKV = list[Optional[tuple[Tensor, Tensor]]]  # per decoder layer: its cross-attention keys / values, or None


@dataclass
class STRConfig:
    """Architecture of :class:`SceneTextRecognizer`.

    ``charset`` is a named set (``36``, ``62``, ``94``), a charset file or the characters themselves (any Unicode);
    it is stored expanded, so an export carries its charset. Encoder and decoder sizes are separate
    knobs (CSD finds scaling the decoder pays more than scaling the encoder). A ``diff`` head splits
    its width into two q/k sub-heads, so ``vanilla`` twins at equal parameters use ``2 * dec_heads``.
    ``dec_heads`` sizes the cross-attention; the decoder's self-attention has ``dec_self_heads`` heads
    (``None``: ``dec_heads``), so the registered diff / vanilla twins share one self-attention and
    differ in the cross-attention only. ``lambda_init`` fixes Diff Transformer's lambda constant for the
    decoder's differential attentions (``None``: the depth schedule, 0.2 for a one-layer decoder).
    ``diff_subln=False`` drops their per-head RMSNorm and ``(1 - lambda_init)`` scale (an ablation).
    """

    charset: str = "36"
    max_length: int = 25
    img_size: list[int] = field(default_factory=lambda: [32, 128])
    patch_size: list[int] = field(default_factory=lambda: [4, 8])
    enc_dim: int = 192
    enc_depth: int = 12
    enc_heads: int = 3
    enc_mlp_ratio: float = 4.0
    dec_dim: int = 192
    dec_depth: int = 1
    dec_heads: int = 3
    dec_self_heads: Optional[int] = None
    dec_mlp_ratio: float = 4.0
    attn_type: str = "diff"
    self_attn_type: str = "vanilla"
    lambda_init: Optional[float] = None
    diff_subln: bool = True
    dropout: float = 0.1
    drop_path: float = 0.0
    attn_backend: Optional[str] = None
    decode: str = "ar"
    refine_iters: int = 1

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (transformers' ``config.to_dict()``), as ``config.json`` holds them."""
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        # as the datamodule reads it: a named set, a charset file, or the characters; an unknown set name ("95")
        # or a missing file ("chars.txt") is an error, not a charset of its own characters
        self.charset = resolve_charset(self.charset)
        for name in ("attn_type", "self_attn_type"):
            if getattr(self, name) not in list_attention_types():
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; known types: {list_attention_types()}")
            if getattr(self, name) == "dint":
                # DINT mixes queries (its mean over them): a slot's reading would depend on the later slots' content,
                # which the autoregressive / permutation masks hide from it (the ground truth, in training)
                raise ValueError(f"{name} 'dint' is not supported by the recognizer's decoder: its mean over queries "
                                 "lets each slot see the later slots' characters; use another type")
        check_positive_ints(self, ("max_length", "enc_dim", "enc_depth", "enc_heads", "dec_dim", "dec_depth", "dec_heads"))
        self.img_size, self.patch_size = list(self.img_size), list(self.patch_size)
        if any(i % p for i, p in zip(self.img_size, self.patch_size)) or len(self.img_size) != 2:
            raise ValueError(f"img_size {self.img_size} must be [H, W] divisible by patch_size {self.patch_size}")
        if self.enc_dim % self.enc_heads or self.dec_dim % self.dec_heads:
            raise ValueError("enc_dim / dec_dim must be divisible by enc_heads / dec_heads")
        if self.dec_self_heads is not None and (
            not isinstance(self.dec_self_heads, int) or self.dec_self_heads <= 0 or self.dec_dim % self.dec_self_heads
        ):
            raise ValueError(f"dec_self_heads must be a positive divisor of dec_dim ({self.dec_dim}), got {self.dec_self_heads!r}")
        for kind, heads in ((self.attn_type, self.dec_heads), (self.self_attn_type, self.self_heads)):
            if kind == "diff" and (self.dec_dim // heads) % 2:
                raise ValueError(f"diff attention needs an even head width; dec_dim / heads = {self.dec_dim // heads}")
        self.lambda_init = check_lambda_init_for(
            self.lambda_init, attn_type=self.attn_type, self_attn_type=self.self_attn_type
        )
        if not isinstance(self.diff_subln, bool):
            raise ValueError(f"diff_subln must be true or false, got {self.diff_subln!r}")
        if not self.diff_subln:
            require_differential("diff_subln", attn_type=self.attn_type, self_attn_type=self.self_attn_type)
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {self.decode!r}")
        if not isinstance(self.refine_iters, int) or self.refine_iters < 0:
            raise ValueError(f"refine_iters must be a non-negative integer, got {self.refine_iters!r}")

    @property
    def self_heads(self) -> int:
        """Heads of the decoder's self-attention."""
        return self.dec_heads if self.dec_self_heads is None else self.dec_self_heads


class Reading(NamedTuple):
    """One recognized crop: the text and its confidence (product of its characters' probabilities and, when a
    slot says EOS, that EOS's)."""

    text: str
    confidence: float


class DecoderLayer(nn.Module):
    """Pre-norm query-stream layer: masked attention to the content, cross-attention to the image, MLP."""

    def __init__(self, cfg: STRConfig, layer_idx: int) -> None:
        super().__init__()
        d = cfg.dec_dim
        common = dict(layer_idx=layer_idx, bias=True, backend=cfg.attn_backend)
        self.norm_q, self.norm_c = nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = build_attention(
            cfg.self_attn_type, d, cfg.self_heads, **common,
            **lambda_init_kwargs(cfg.self_attn_type, cfg.lambda_init, cfg.diff_subln),
        )
        self.norm_x = nn.LayerNorm(d)
        self.cross_attn = build_attention(
            cfg.attn_type, d, cfg.dec_heads, kv_dim=cfg.enc_dim, **common,
            **lambda_init_kwargs(cfg.attn_type, cfg.lambda_init, cfg.diff_subln),
        )
        self.norm_m = nn.LayerNorm(d)
        self.mlp = GeluMlp(d, int(d * cfg.dec_mlp_ratio), dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, q: Tensor, content: Tensor, key_mask: Tensor, memory: Tensor,
                memory_kv: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        """``q`` [B, Tq, D], ``content`` [B, T, D], ``key_mask`` bool [B, Tq, T], ``memory`` [B, N, E];
        ``memory_kv``: ``cross_attn.project_context(memory)`` when the caller has it (then ``memory`` is not read)."""
        # each query under its own visibility row: the attention ops take the per-query mask [B, Tq, T]
        q = q + self.drop(self.self_attn(self.norm_q(q), self.norm_c(content), key_mask=key_mask))
        x = self.norm_x(q)
        q = q + self.drop(self.cross_attn(x, memory) if memory_kv is None else self.cross_attn(x, context_kv=memory_kv))
        return q + self.mlp(self.norm_m(q))


def visibility(mode: Union[str, Tensor], T: int, device: Optional[torch.device] = None) -> Tensor:
    """Bool ``[T, T]`` mask (query, content) for ``ar`` / ``nar`` / ``cloze`` or a permutation of ``range(T)``."""
    q = torch.arange(T, device=device)[:, None]
    c = torch.arange(T, device=device)[None, :]
    if isinstance(mode, Tensor):
        rank = torch.empty(T, dtype=torch.long, device=device)
        rank[mode.to(device)] = torch.arange(T, device=device)
        # content j >= 1 is the character of query j - 1; visible once that query came earlier.
        prev = torch.cat([torch.full((1,), -1, device=device), rank[:-1]])
        return (c == 0) | (prev[None, :] < rank[:, None]) & (c > 0)
    if mode == "ar":
        return c <= q
    if mode == "nar":
        return (c == 0).expand(T, T)
    if mode == "cloze":
        return c != q + 1
    raise ValueError(f"unknown mask mode {mode!r}; use ar, nar, cloze or a permutation tensor")


def sincos_2d(h: int, w: int, dim: int) -> Tensor:
    """``[h * w, dim]`` 2D sine-cosine position codes (MAE): half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"2D sin-cos codes need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    parts = []
    for grid in (ys.reshape(-1), xs.reshape(-1)):
        ang = grid[:, None] * omega[None, :]
        parts += [ang.sin(), ang.cos()]
    return torch.cat(parts, dim=1).float()


class SceneTextRecognizer(PretrainedMixin, nn.Module):
    """PARSeq-style recognizer with a (differential) cross-attention decoder; see the module docstring."""

    family = "str"
    config_class = STRConfig
    runtime_fields = DEFAULT_RUNTIME_FIELDS | {"decode", "refine_iters"}
    data_fields = frozenset({"charset", "max_length", "img_size"})  # create_model(pretrained=...) takes these from the checkpoint

    def __init__(self, config: STRConfig) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.config = c = config
        self.charset = Charset(c.charset, c.max_length, literal=True)
        self.num_classes = self.charset.num_classes  # EOS + chars
        self.bos_id, self.pad_id = self.num_classes, self.num_classes + 1
        self.encoder = VisionTransformer(
            img_size=tuple(c.img_size), patch_size=tuple(c.patch_size), embed_dim=c.enc_dim, depth=c.enc_depth,
            num_heads=c.enc_heads, mlp_ratio=c.enc_mlp_ratio, num_classes=0, global_pool="", class_token=False,
            drop_path_rate=c.drop_path,
        )
        with torch.no_grad():
            # timm's learned position embedding starts at std 0.02, far below the patch features, so the
            # position queries have nothing to align to; a 2D sin-cos start (MAE) gives image tokens their
            # position from step 0 (it stays learnable). The papers leave this init open.
            gh, gw = c.img_size[0] // c.patch_size[0], c.img_size[1] // c.patch_size[1]
            self.encoder.pos_embed.copy_(sincos_2d(gh, gw, c.enc_dim)[None])
        self.text_embed = nn.Embedding(self.num_classes + 2, c.dec_dim)
        self.pos_queries = nn.Parameter(torch.empty(1, c.max_length + 1, c.dec_dim).normal_(std=0.02))
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.dec_depth))
        self.norm = nn.LayerNorm(c.dec_dim)
        self.head = nn.Linear(c.dec_dim, self.num_classes)
        nn.init.normal_(self.text_embed.weight, std=0.02)

    @classmethod
    def from_config(cls, config: Union[STRConfig, dict]) -> "SceneTextRecognizer":
        return cls(config_from(STRConfig, config, cls.__name__))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def no_weight_decay(self) -> set[str]:
        """Tensors kept out of weight decay (timm's convention; PARSeq's list): the character embedding and
        the position queries. The timm encoder lists its own ``pos_embed``."""
        return {"text_embed.weight", "pos_queries"}

    @property
    def num_slots(self) -> int:
        return self.config.max_length + 1

    # -- pieces
    def encode(self, images: Tensor) -> Tensor:
        """Image tokens ``[B, 128, enc_dim]`` of normalized images ``[B, 3, 32, 128]``."""
        H, W = self.config.img_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, H, W):
            raise ValueError(
                f"expected images [batch, 3, {H}, {W}], got {tuple(images.shape)}; preprocess with zoo.data.str.to_tensor"
            )
        return self.encoder.forward_features(images)

    def memory_kv(self, memory: Tensor) -> MemoryKV:
        """Every decoder layer's cross-attention keys and values of the image tokens ``memory``, for the
        ``memory_kv`` of :meth:`decode_step`: projected once for all the decoding steps over the same images.
        A cross-attention without ``project_context`` (an adapter's wrapper, :func:`zoo.nn.adapters.apply_adapter`)
        gets ``None``: that layer attends to ``memory`` itself, as before."""
        return [layer.cross_attn.project_context(memory) if hasattr(layer.cross_attn, "project_context") else None
                for layer in self.layers]

    def decode_step(
        self, memory: Tensor, tokens: Tensor, mask: Tensor, key_valid: Optional[Tensor] = None,
        queries: Optional[slice] = None, memory_kv: Optional[MemoryKV] = None,
    ) -> Tensor:
        """Logits ``[B, T, classes]`` for every query slot.

        ``tokens`` [B, T]: BOS then the known / predicted characters (content ids); ``mask`` [T, T] or
        [B, T, T] visibility; ``key_valid`` [B, T] marks real content (False after the end of the text).
        ``queries``: only these query slots (``[B, len(slots), classes]``); each slot is computed apart from
        the others, so its logits are those of the full call. ``memory_kv``: :meth:`memory_kv` of ``memory``
        (the same logits, without projecting the image tokens again).
        """
        B, T = tokens.shape
        emb = self.text_embed(tokens)
        pos = self.pos_queries[:, :T]
        content = torch.cat([emb[:, :1], emb[:, 1:] + pos[:, : T - 1]], dim=1)
        content = self.drop(content)
        key_mask = mask.expand(B, T, T) if mask.dim() == 2 else mask
        if key_valid is not None:
            key_mask = key_mask & key_valid[:, None, :]
        if queries is not None:
            pos, key_mask = pos[:, queries], key_mask[:, queries]
        q = self.drop(pos.expand(B, pos.shape[1], -1))
        kv = memory_kv if memory_kv is not None else [None] * len(self.layers)
        for layer, layer_kv in zip(self.layers, kv):
            q = layer(q, content, key_mask, memory, layer_kv)
        return self.head(self.norm(q))

    def content_tokens(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Content ids ``[BOS, chars..., EOS, PAD...]`` and validity (True up to the last character) from targets [B, T] (-100 = pad)."""
        B, T = targets.shape
        tgt = targets.clamp(min=0)
        tokens = torch.cat([torch.full((B, 1), self.bos_id, dtype=torch.long, device=targets.device), tgt[:, :-1]], 1)
        return self._mask_after_eos(tokens)

    def _mask_after_eos(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        # PARSeq: content from the first EOS on is padding (cumsum of EOS hits > 0).
        ended = (tokens == self.charset.EOS).long().cumsum(-1) > 0
        return tokens.masked_fill(ended, self.pad_id), ~ended

    def forward(self, images: Tensor) -> Tensor:
        """Per-slot class probabilities ``[B, max_length + 1, classes]`` with the configured decoding."""
        return self.decode(self.encode(images))

    def decode(self, memory: Tensor, mode: Optional[str] = None, refine_iters: Optional[int] = None) -> Tensor:
        """:meth:`forward` after the encoder: per-slot probabilities from image tokens ``memory``, decoded ``ar`` or
        ``nar`` then refined ``refine_iters`` times (default: the config's ``decode`` / ``refine_iters``)."""
        mode = self.config.decode if mode is None else mode
        if mode not in DECODE_MODES:
            raise ValueError(f"decode mode must be one of {DECODE_MODES}, got {mode!r}")
        kv = self.memory_kv(memory)  # the image tokens projected once for every step and refinement pass
        if mode == "ar":
            probs = self._decode_ar(memory, kv)
        else:
            probs = self.decode_step(memory, self._blank(memory.shape[0], memory.device), visibility("nar", self.num_slots, memory.device),
                                     memory_kv=kv).softmax(-1)
        for _ in range(self.config.refine_iters if refine_iters is None else refine_iters):
            probs = self.refine(memory, probs, kv)
        return probs

    def _blank(self, B: int, device: torch.device) -> Tensor:
        tokens = torch.full((B, self.num_slots), self.pad_id, dtype=torch.long, device=device)
        tokens[:, 0] = self.bos_id
        return tokens

    def _decode_ar(self, memory: Tensor, memory_kv: Optional[MemoryKV] = None) -> Tensor:
        B, T = memory.shape[0], self.num_slots
        tokens = self._blank(B, memory.device)
        mask = visibility("ar", T, memory.device)
        probs = []
        for i in range(T):
            # query i sees contents 0..i only: decode that one slot over that prefix (not all T slots over all
            # T contents, T times over)
            p = self.decode_step(memory, tokens[:, : i + 1], mask[: i + 1, : i + 1], queries=slice(i, i + 1),
                                 memory_kv=memory_kv)[:, 0].softmax(-1)
            probs.append(p)
            if i + 1 < T:
                tokens[:, i + 1] = p.argmax(-1)
                if not torch.onnx.is_in_onnx_export() and (tokens[:, 1 : i + 2] == self.charset.EOS).any(-1).all():
                    # every sequence has ended; the rest are padding slots
                    pad = torch.nn.functional.one_hot(torch.zeros(B, dtype=torch.long, device=memory.device), self.num_classes)
                    probs.extend([pad.to(p.dtype)] * (T - i - 1))  # the model's dtype, as the other slots
                    break
        return torch.stack(probs, 1)

    def refine(self, memory: Tensor, probs: Tensor, memory_kv: Optional[MemoryKV] = None) -> Tensor:
        """One cloze pass: every character re-predicted with all the others (the current guess) visible."""
        B, T, _ = probs.shape
        tokens = torch.cat([torch.full((B, 1), self.bos_id, dtype=torch.long, device=probs.device), probs.argmax(-1)[:, :-1]], 1)
        tokens, valid = self._mask_after_eos(tokens)
        return self.decode_step(memory, tokens, visibility("cloze", T, probs.device), valid, memory_kv=memory_kv).softmax(-1)

    def cloze_logits(self, images: Tensor, targets: Tensor, memory: Optional[Tensor] = None) -> Tensor:
        """Cloze logits ``[B, T, classes]`` given the (pseudo)labels ``targets`` (-100 = padding); used by CSD.
        ``memory``: the images' encoding when the caller has it already (saves an encoder pass)."""
        if memory is None:
            memory = self.encode(images)
        tokens, valid = self.content_tokens(targets)
        return self.decode_step(memory, tokens, visibility("cloze", targets.shape[1], images.device), valid)

    # -- text out
    def decode_probs(self, probs: Tensor) -> list[Reading]:
        """Texts (up to the first EOS) and confidences from per-slot probabilities."""
        out = []
        pmax, ids = probs.max(-1)
        for p, i in zip(pmax.tolist(), ids.tolist()):
            # the last slot is for EOS only: without one the reading is cut at max_length characters,
            # and its confidence holds those characters' probabilities (PARSeq: EOS's when there is one)
            n = i.index(self.charset.EOS) + 1 if self.charset.EOS in i else self.charset.max_length
            conf = 1.0
            for v in p[:n]:
                conf *= v
            out.append(Reading(self.charset.decode(i[: self.charset.max_length]), float(conf)))
        return out

    def _crop(self, image: Any) -> Tensor:
        """One input of :meth:`read` as a normalized tensor."""
        from zoo.data.images import load_image
        from zoo.data.str_io import to_tensor

        return to_tensor(load_image(image), tuple(self.config.img_size))

    @torch.no_grad()
    def read(self, images: Any, batch_size: int = 64) -> list[Reading]:
        """Recognize text in one image or a list: PIL images, numpy arrays (HxW, HxWx3/4, uint8 or
        float in [0, 1]) or file paths. Grayscale / RGBA are converted; an unreadable file raises (in a list: one
        error naming the index of every unreadable item, after all are checked)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        param = next(self.parameters())
        out: list[Reading] = []
        bad: list[tuple[int, Exception]] = []
        with eval_mode(self):  # an unreadable image part-way leaves the model in the mode it had
            for s in range(0, len(items), batch_size):
                crops = []
                for i, x in enumerate(items[s : s + batch_size], s):
                    try:
                        crops.append(self._crop(x))
                    except (OSError, ValueError, TypeError) as exc:
                        if single:
                            raise
                        bad.append((i, exc))
                if bad:  # the call raises: the rest is only checked, so one error names every unreadable item
                    continue
                # in the model's dtype too: a .half() / .double() model reads as a float32 one does
                out.extend(self.decode_probs(self(torch.stack(crops).to(device=param.device, dtype=param.dtype))))
        if len(bad) == 1:
            index, exc = bad[0]
            try:  # the error as it was, named by its index in the list
                named = type(exc)(f"images[{index}]: {exc}")
            except Exception:  # noqa: BLE001 -- an exception type that takes other arguments: raised as it is
                raise exc from None
            raise named from exc
        if bad:
            raise unreadable_images_error([(f"images[{i}]", str(exc)) for i, exc in bad], len(items), "images",
                                          "no readings are returned")
        return out[0] if single else out


def unreadable_images_error(bad: list[tuple[str, str]], total: int, where: str, outcome: str) -> ValueError:
    """One error naming every unreadable image of ``bad`` (``(name, reason)`` pairs, in order) out of ``total``
    read from ``where``, saying ``outcome`` (what was not given back): the reasons of the first ten, then the others'
    names (a user fixes them all in one go, as the LMDB builder names its bad images; not one per rerun)."""
    shown, names_cap = 10, 1000

    def entry(name: str, why: str) -> str:
        return why if name in why else f"{name}: {why}"  # a path's reason names the file already

    text = "; ".join(entry(n, w) for n, w in bad[:shown])
    rest = [n for n, _ in bad[shown:names_cap]]
    if rest:
        text += f"; also unreadable: {', '.join(rest)}"
    if len(bad) > names_cap:
        text += f" and {len(bad) - names_cap} more"
    return ValueError(f"cannot read {len(bad)} of the {total} {where} ({outcome}): {text}; fix or remove them, then "
                      "read again")


# -- registry ---------------------------------------------------------------------------------
_SIZES = {
    # name: (enc_dim, enc_depth, enc_heads, dec_dim, dec_depth, diff dec heads)
    "tiny": (96, 3, 2, 96, 1, 2),  # CPU-trainable; the shipped str-diff-tiny
    "small": (384, 12, 6, 384, 1, 6),  # PARSeq-S
    "base": (768, 12, 12, 768, 1, 6),
}


def v2_equal_param_mlp_ratio(dec_dim: int, heads: int) -> float:
    """``dec_mlp_ratio`` at which a ``diff_v2`` cross-attention of ``heads`` (K/V) heads costs what the
    ``vanilla`` one of as many heads does: V2's second set of queries (a ``dec_dim`` x ``dec_dim`` weight and
    its bias) and its lambda projection (``dec_dim`` -> ``heads``, with bias) are paid for by MLP hidden
    units of ``2 * dec_dim + 1`` parameters each, taken from the default MLP the vanilla twin keeps. Rounded up to two decimals (so the config reads plainly),
    which leaves the decoder within ``dec_dim / 100`` hidden units of exact balance."""
    extra = dec_dim * dec_dim + dec_dim + dec_dim * heads + heads
    hidden = int(dec_dim * STRConfig.dec_mlp_ratio) - round(extra / (2 * dec_dim + 1))  # from vanilla's (default) MLP
    return math.ceil(hidden / dec_dim * 100) / 100


for _size, (_ed, _edep, _eh, _dd, _ddep, _dh) in _SIZES.items():
    for _attn, _h in (("diff", _dh), ("vanilla", 2 * _dh), ("diffv2", 2 * _dh)):
        _shipped = f"str-{_attn}-{_size}" if (_attn, _size) == ("diff", "tiny") else None
        # diffv2: Diff Transformer V2 as the cross-attention, with vanilla's K/V heads (twice the query heads)
        # and a narrower decoder MLP that pays for the extra queries: equal parameters with the vanilla twin
        _v2 = {"dec_mlp_ratio": v2_equal_param_mlp_ratio(_dd, _h)} if _attn == "diffv2" else {}
        register_model(
            f"str-{_attn}-{_size}",
            SceneTextRecognizer,
            description=f"PARSeq-style recognizer, {_attn} cross-attention, ViT {_edep}x{_ed} / decoder {_ddep}x{_dd}",
            pretrained=_shipped,  # str-diff-tiny ships weights (scripts/bench_str.py --export): charset 36, max_length 6
            enc_dim=_ed, enc_depth=_edep, enc_heads=_eh, dec_dim=_dd, dec_depth=_ddep, dec_heads=_h,
            attn_type="diff_v2" if _attn == "diffv2" else _attn,
            dec_self_heads=2 * _dh,  # one self-attention (PARSeq's head width) for all twins: only the cross-attention differs
            **_v2,
        )

__all__ = ["DecoderLayer", "Reading", "STRConfig", "SceneTextRecognizer", "sincos_2d", "unreadable_images_error",
           "visibility"]


def transfer_charset(src: SceneTextRecognizer, dst: SceneTextRecognizer) -> dict[str, Any]:
    """Copy every weight of ``src`` into ``dst`` (a model with another charset); the rows of the
    character embedding and the classifier for characters ``src`` knows are copied by character,
    rows of new characters keep ``dst``'s fresh init. Returns a report of what was kept / reinitialized."""
    src_state, dst_state = src.state_dict(), dst.state_dict()
    row_keyed = {"text_embed.weight", "head.weight", "head.bias"}
    other = [k for k in dst_state if k not in row_keyed]
    problems = [
        f"{k}: {tuple(src_state[k].shape) if k in src_state else 'missing'} vs {tuple(dst_state[k].shape)}"
        for k in other
        if k not in src_state or src_state[k].shape != dst_state[k].shape
    ]
    # the source's tensors the destination has no place for (a diff source's lambdas in a vanilla model)
    problems += [f"{k}: {tuple(v.shape)} vs missing" for k, v in src_state.items() if k not in dst_state]
    if problems:
        raise ValueError(
            f"cannot transfer weights between these recognizers (architectures differ beyond the charset): {problems[:6]}; "
            "fine-tune from a checkpoint of the same size"
        )
    new_state = {k: src_state[k].clone() for k in other}
    s_chars, d_chars = src.charset.chars, dst.charset.chars
    s_index = {c: i + 1 for i, c in enumerate(s_chars)}
    # class rows: 0 = EOS, 1..n chars; embedding rows additionally hold BOS (n+1) and PAD (n+2)
    row_map = {0: 0}
    for j, c in enumerate(d_chars):
        if c in s_index:
            row_map[j + 1] = s_index[c]
    emb_map = dict(row_map)
    emb_map[dst.bos_id], emb_map[dst.pad_id] = src.bos_id, src.pad_id
    with torch.no_grad():
        for key, mapping in (("text_embed.weight", emb_map), ("head.weight", row_map), ("head.bias", row_map)):
            t = dst_state[key].clone()
            for d_row, s_row in mapping.items():
                t[d_row] = src_state[key][s_row]
            new_state[key] = t
    dst.load_state_dict(new_state)
    new_chars = [c for c in d_chars if c not in s_index]
    return {
        # copied whole; the character embedding and the classifier keep the rows of the characters both sets hold
        "kept_tensors": len(other),
        "kept_char_rows": len(d_chars) - len(new_chars),
        "reinitialized_chars": new_chars,
        "dropped_chars": [c for c in s_chars if c not in set(d_chars)],
    }


__all__.append("transfer_charset")


class _NARRefine(nn.Module):
    """Export wrapper: non-autoregressive decoding plus ``refine_iters`` cloze passes, probabilities out."""

    def __init__(self, model: SceneTextRecognizer, refine_iters: int) -> None:
        super().__init__()
        self.model, self.refine_iters = model, refine_iters

    def forward(self, images: Tensor) -> Tensor:
        m = self.model
        return m.decode(m.encode(images), mode="nar", refine_iters=self.refine_iters)


def export_onnx(
    model: SceneTextRecognizer, path: Union[str, Path], batch_size: int = 1, refine_iters: Optional[int] = None, opset: int = 18,
    overwrite: bool = False,
) -> Path:
    """Write the non-autoregressive + refinement recognizer to ONNX at fixed shapes.

    Input ``images`` float ``[batch_size, 3, 32, 128]`` in ``[-1, 1]`` (:func:`zoo.data.str.to_tensor`);
    output ``probs`` ``[batch_size, max_length + 1, classes]`` (class 0 = EOS, then the charset; the
    charset is written next to the file as ``<path>.charset.txt``). Decode with the charset up to
    the first EOS. The autoregressive loop is not exported (data-dependent control flow).
    An existing file at ``path`` or its charset file is refused unless ``overwrite=True``.
    """
    # batch_size 0 killed the interpreter (SIGFPE in the exporter); a negative refine_iters exported no refinement
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if refine_iters is not None and (isinstance(refine_iters, bool) or not isinstance(refine_iters, int) or refine_iters < 0):
        raise ValueError(f"refine_iters must be a non-negative integer (None: the model's), got {refine_iters!r}")
    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.float16):
        # torch's ONNX exporter fails inside on them ("Unsupported type for attn_mask: 7" for float64, "ScalarType
        # ComplexDouble is an unexpected tensor scalar type" for bfloat16)
        raise ValueError(f"export_onnx exports a float32 or float16 model; this one is {dtype} (e.g. trained under "
                         "'bf16-true' or '64-true'): export a float32 copy, copy.deepcopy(model).float()")
    path = Path(path)
    charset_file = Path(str(path) + ".charset.txt")
    taken = [str(p) for p in (path, charset_file) if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{' and '.join(taken)} already exist(s); pass overwrite=True to replace, or another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = model.config.img_size
    param = next(model.parameters())
    dummy = torch.zeros(batch_size, 3, H, W, device=param.device, dtype=param.dtype)  # a GPU / half model as it is
    with eval_mode(model), torch.no_grad():  # as read() does: the caller's model keeps its mode
        wrapper = _NARRefine(model, model.config.refine_iters if refine_iters is None else refine_iters).eval()
        torch.onnx.export(wrapper, (dummy,), str(path), input_names=["images"], output_names=["probs"], opset_version=opset, dynamo=False)
    charset_file.write_text("\n".join(model.charset.chars) + "\n", encoding="utf-8")
    return path


__all__.append("export_onnx")
