"""ALBEF-style vision-language model with Function-word De-Attention (FDA) in the fusion layers.

* Image encoder: a timm ViT (``vit_name`` scaled by ``image_size``, ``patch_size``, ``vit_dim``,
  ``vit_depth``, ``vit_heads``), all tokens out (CLS first).
* Text encoder: :class:`zoo.models.encoder.TextEncoder` (BERT-style); from scratch, or from a Hugging
  Face BERT folder such as all-MiniLM-L6-v2 (:meth:`VisionLanguageModel.init_text_from_hf`).
* Fusion: ``fusion_layers`` post-norm blocks (ALBEF / BERT layout): text self-attention, text-to-image
  cross-attention, MLP, each ``LN(x + f(x))``; attention types from :func:`zoo.nn.build_attention`
  (``fusion_attn_type`` = ``vanilla`` or ``diff``).
* FDA (``fda=True``): the cross-attention of the fusion layers in ``fda_layers`` is wrapped in
  :class:`zoo.nn.fda.FDACrossAttention`. Its function-word queries are, as in the reference code,
  the text-embedding output (word + position + type embeddings, LayerNorm) of the caption with every
  content word replaced by [PAD] (every piece of a word WordPiece splits); [CLS] and [SEP] are kept (paper
  leaves them open).
* Heads: ITC (``vision_proj`` / ``text_proj`` of pooled tokens, cosine similarity over a learnable
  temperature clamped to [0.001, 0.5] as ALBEF) and ITM (a linear head on the pooled fused text).
  Pooling (``pool``): ALBEF takes the CLS tokens of pretrained encoders; trained from scratch, our
  tiny models with CLS pooling stayed at chance for 600 steps (image and text CLS features barely
  depend on the input at init), so the default is the mean over patch tokens / real text tokens.

Scores: :meth:`itc_similarity` ``[Ni, Nt]`` (cosine), :meth:`itm_score` per pair (matched-minus-
unmatched logit), :meth:`similarity` ``(images, texts) -> [Ni, Nt]`` (the API score: ITC / temperature
+ ITM on every pair by default, as the retrieval re-ranking).
The model carries its tokenizer (``tokenizer.json`` asset) and a ``fw_table`` buffer (which token ids
are function words) in its weights.
"""

from __future__ import annotations

import dataclasses
import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.hub import DEFAULT_RUNTIME_FIELDS, PretrainedMixin, check_positive_int, check_positive_ints, config_from, register_model
from zoo.models.encoder import EncoderConfig, TextEncoder
from zoo.nn import GeluMlp, build_attention
from zoo.nn.fda import DIRECTIONS, FDACrossAttention
from zoo.nn.modes import eval_mode

FUSION_ATTN_TYPES = ("vanilla", "diff")


@dataclass
class VLMConfig:
    """Architecture of :class:`VisionLanguageModel` (see the module docstring)."""

    # image encoder (timm)
    vit_name: str = "vit_tiny_patch16_224"
    image_size: int = 64
    patch_size: int = 16
    vit_dim: int = 96
    vit_depth: int = 3
    vit_heads: int = 4
    # text encoder (zoo TextEncoder)
    vocab_size: int = 128
    text_dim: int = 96
    text_layers: int = 2
    text_heads: int = 4
    text_mlp: int = 192
    max_text_len: int = 32
    text_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # fusion
    fusion_layers: int = 2
    fusion_heads: int = 4
    fusion_mlp: int = 192
    fusion_attn_type: str = "vanilla"
    embed_dim: int = 64
    temp_init: float = 0.07
    pool: str = "mean"  # ITC / ITM features: "mean" over tokens, or "cls" (ALBEF, with pretrained encoders)
    # FDA
    fda: bool = True
    fda_layers: Optional[list[int]] = None  # fusion-layer indices; None = all
    fda_heads: Optional[list[int]] = None  # None = the first half of the heads
    fda_direction: str = "both"
    fda_g_init: float = 1.0
    function_words: str = "en"
    dropout: float = 0.0
    attn_backend: Optional[str] = None
    # text_init only records where the text weights came from (not an architecture field)
    text_init: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (transformers' ``config.to_dict()``), as ``config.json`` holds them."""
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        check_positive_ints(self, ("image_size", "patch_size", "vit_dim", "vit_depth", "vit_heads", "vocab_size",
                                   "text_dim", "text_layers", "text_heads", "text_mlp", "max_text_len", "fusion_layers",
                                   "fusion_heads", "fusion_mlp", "embed_dim"))
        if self.max_text_len < 3:  # the tokenizer's rule: a caption's words sit between [CLS] and [SEP]
            raise ValueError(f"max_text_len must be >= 3 ([CLS] word [SEP]), got {self.max_text_len}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.fusion_attn_type not in FUSION_ATTN_TYPES:
            raise ValueError(f"fusion_attn_type must be one of {FUSION_ATTN_TYPES} (FDA needs explicit maps), "
                             f"got {self.fusion_attn_type!r}")
        if self.text_dim % self.fusion_heads or (self.fusion_attn_type == "diff" and (self.text_dim // self.fusion_heads) % 2):
            raise ValueError(f"text_dim ({self.text_dim}) must split into {self.fusion_heads} fusion heads "
                             "(of even width for diff attention)")
        if self.fda_direction not in DIRECTIONS:
            raise ValueError(f"fda_direction must be one of {DIRECTIONS}, got {self.fda_direction!r}")
        # an index list that selects nothing (empty, or 0.5 that no layer equals) left FDA switched on doing nothing,
        # silently; True read as layer 1. Refused as an empty fda_heads is (FDACrossAttention)
        for name, n in (("fda_layers", self.fusion_layers), ("fda_heads", self.fusion_heads)):
            sel = getattr(self, name)
            if sel is None:
                continue
            if not isinstance(sel, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) for i in sel):
                raise ValueError(f"{name} must be a list of integer indices (or None: the default), got {sel!r}")
            bad = [i for i in sel if not 0 <= i < n]
            if bad:
                what = "fusion layers" if name == "fda_layers" else "fusion heads of each FDA layer"
                raise ValueError(f"{name} {list(sel)} must index the {n} {what} (0..{n - 1}); out of range: {bad}")
            if self.fda and not sel:
                raise ValueError(f"{name} is empty with fda=True: FDA would act on no "
                                 f"{'layer' if name == 'fda_layers' else 'head'}; list the indices, leave {name} unset "
                                 "for the default, or set fda: false")
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        if not 0.001 <= self.temp_init <= 0.5:
            raise ValueError(f"temp_init must lie in [0.001, 0.5], got {self.temp_init}")

    def text_config(self) -> EncoderConfig:
        return EncoderConfig(
            vocab_size=self.vocab_size, dim=self.text_dim, n_layers=self.text_layers, n_heads=self.text_heads,
            mlp_hidden=self.text_mlp, max_seq_len=max(self.max_text_len, 2), attn_type="vanilla",
            norm_eps=self.text_norm_eps, pooler=False, pad_token_id=self.pad_token_id, dropout=self.dropout,
            attn_backend=self.attn_backend,
        )

    @property
    def fda_layer_set(self) -> set[int]:
        if not self.fda:
            return set()
        return set(range(self.fusion_layers)) if self.fda_layers is None else set(self.fda_layers)


class FusionLayer(nn.Module):
    """``x = LN(x + self_attn(x)); x = LN(x + cross(x, image)); x = LN(x + mlp(x))`` (BERT post-norm)."""

    def __init__(self, cfg: VLMConfig, layer_idx: int) -> None:
        super().__init__()
        kw = dict(layer_idx=layer_idx, bias=True, backend=cfg.attn_backend)
        d, h = cfg.text_dim, cfg.fusion_heads
        self.self_attn = build_attention(cfg.fusion_attn_type, d, h, **kw)
        cross = build_attention(cfg.fusion_attn_type, d, h, kv_dim=cfg.vit_dim, **kw)
        self.fda = layer_idx in cfg.fda_layer_set
        self.cross = FDACrossAttention(cross, cfg.fda_heads, cfg.fda_direction, cfg.fda_g_init) if self.fda else cross
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d, eps=1e-12) for _ in range(3))
        self.mlp = GeluMlp(d, cfg.fusion_mlp, dropout=cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor, image: Tensor, fw: Optional[Tensor] = None) -> Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x, key_mask=mask)))
        if self.fda:
            c = self.cross(x, image, fw=fw, query_mask=mask)
        else:
            c = self.cross(x, image)
        x = self.norm2(x + self.drop(c))
        return self.norm3(x + self.mlp(x))


def check_pixels(images: Tensor, who: str, size: Optional[int] = None) -> None:
    """A ``ValueError`` naming ``who`` unless ``images`` are floats in [0, 1] (the pixels the model normalizes itself)
    and, with ``size``, shaped ``[B, 3, size, size]``: uint8 pixels, 0..255 floats and mean / std-normalized images gave
    scores with no word (the ViT read them as they were). A rounding past 0 or 1 (1e-6: a resize's arithmetic)
    passes; NaN does not (every comparison is False)."""
    if size is not None and (images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (size, size)):
        shape = tuple(images.shape)
        if images.dim() == 3 and images.shape[-1] in (1, 3, 4) and images.shape[0] != 3:
            hint = "one H x W x C image array: pass PIL.Image.fromarray(array), which is converted and resized"
        elif images.dim() == 3:
            hint = "one image: add the batch dimension (images[None]), or pass it as a PIL image"
        elif images.dim() == 4 and images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
            hint = "channels last: permute(0, 3, 1, 2), or pass PIL images"
        else:
            hint = ("grayscale, RGBA or other sizes: pass PIL images or image paths, which are converted to RGB and "
                    f"resized to {size} as training images are")
        raise ValueError(f"{who}: images must be [B, 3, {size}, {size}] floats in [0, 1], got shape {shape} ({hint})")
    if not images.is_floating_point():
        raise ValueError(f"{who}: images must be floats in [0, 1], got {images.dtype} (divide uint8 pixels by 255)")
    if torch.compiler.is_compiling():  # reading the values would split a compiled graph (the forward's)
        return
    # one device-to-host copy (a forward in a user's loop on CUDA waited twice)
    lo, hi = torch.stack(torch.aminmax(images.detach())).float().tolist() if images.numel() else (0.0, 1.0)
    if not (lo >= -1e-6 and hi <= 1 + 1e-6):
        raise ValueError(f"{who} takes pixels in [0, 1], got values in [{lo:.9g}, {hi:.9g}]: divide 0..255 pixels by "
                         "255, pass images before a mean / std normalization (the model normalizes them), clamp(0, 1) "
                         "a bicubic resize's overshoot")


def wide_cosines(image_feats: Tensor, text_feats: Tensor) -> Tensor:
    """``[Ni, Nt]`` products of normalized features in at least float32 (float64 for a float64 model): a bfloat16
    product rounds cosines to steps of 2^-8, and the ties it makes count against a retrieval query."""
    wide = torch.promote_types(image_feats.dtype, torch.float32)
    return image_feats.to(wide) @ text_feats.to(wide).T


class VisionLanguageModel(PretrainedMixin, nn.Module):
    """ALBEF-style image-text model (ITC + ITM) with optional FDA; see the module docstring."""

    family = "vlm"
    config_class = VLMConfig
    runtime_fields = DEFAULT_RUNTIME_FIELDS | {"text_init"}
    data_fields = frozenset({"vocab_size", "pad_token_id"})  # the tokenizer's; create_model(pretrained=...) reads them

    def __init__(self, config: VLMConfig) -> None:
        super().__init__()
        import timm

        self.config = c = config
        self.vit = timm.create_model(
            c.vit_name, pretrained=False, num_classes=0, global_pool="", img_size=c.image_size,
            patch_size=c.patch_size, embed_dim=c.vit_dim, depth=c.vit_depth, num_heads=c.vit_heads,
            drop_rate=c.dropout,
        )
        if c.pool == "cls" and not getattr(self.vit, "has_class_token", True):
            raise ValueError(f"pool='cls' needs a ViT with a class token; {c.vit_name} has none: use pool='mean'")
        self.text = TextEncoder(c.text_config())
        self.fusion = nn.ModuleList(FusionLayer(c, i) for i in range(c.fusion_layers))
        self.vision_proj = nn.Linear(c.vit_dim, c.embed_dim)
        self.text_proj = nn.Linear(c.text_dim, c.embed_dim)
        self.itm_head = nn.Linear(c.text_dim, 2)
        self.temp = nn.Parameter(torch.tensor(float(c.temp_init)))
        # ViT input normalization ([0, 1] pixels in; attacks work in pixel space).
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("fw_table", torch.zeros(c.vocab_size, dtype=torch.bool))
        # ids that continue a word (WordPiece ##...): the tokenizer's, so not saved with the weights
        self.register_buffer("piece_table", torch.zeros(c.vocab_size, dtype=torch.bool), persistent=False)
        for m in (self.fusion, self.vision_proj, self.text_proj, self.itm_head):
            m.apply(TextEncoder._init_weights)
        self.tokenizer = None  # a zoo.data.vlm.VLMTokenizer, set by set_tokenizer / load_assets
        self.fw_unknown: list[str] = []

    @classmethod
    def from_config(cls, config: Union[VLMConfig, dict]) -> "VisionLanguageModel":
        return cls(config_from(VLMConfig, config, cls.__name__))

    def with_fda(
        self, layers: Optional[Sequence[int]] = None, heads: Optional[Sequence[int]] = None, direction: str = "both",
        g_init: float = 1.0,
    ) -> "VisionLanguageModel":
        """A copy of this plain (no-FDA) model with FDA in the fusion ``layers`` (None = all), as the paper
        adds FDA when fine-tuning a pretrained ALBEF: every weight and the tokenizer are kept, each FDA
        layer's cross-attention is wrapped and gets its gate ``g = g_init`` (at 0 the copy computes exactly
        what this model computes)."""
        if self.config.fda:
            raise ValueError("the model already has FDA (config.fda=True); with_fda starts from a plain model")
        def ints(sel: Optional[Sequence[int]]) -> Optional[list]:  # numpy indices as the ints config.json holds
            if sel is None:
                return None
            return [int(i) if isinstance(i, numbers.Integral) and not isinstance(i, bool) else i for i in sel]

        cfg = dataclasses.replace(self.config, fda=True, fda_layers=ints(layers), fda_heads=ints(heads),
                                  fda_direction=direction, fda_g_init=float(g_init))
        from zoo.hub import load_state_dict_checked

        new = type(self)(cfg).to(device=self.temp.device, dtype=self.temp.dtype)
        own = new.state_dict()
        state = {f"fusion.{i}.cross.g": own[f"fusion.{i}.cross.g"] for i in cfg.fda_layer_set}  # the new gates
        for k, v in self.state_dict().items():
            parts = k.split(".")
            if parts[0] == "fusion" and parts[2] == "cross" and int(parts[1]) in cfg.fda_layer_set:
                k = ".".join(parts[:3] + ["attn"] + parts[3:])
            state[k] = v
        load_state_dict_checked(new, state, "the plain model (with_fda)")
        if self.tokenizer is not None:
            new._attach(self.tokenizer)
            new.fw_unknown = list(self.fw_unknown)
        return new.train(self.training)  # this model's train / eval mode (dropout), not a fresh module's

    # -- tokenizer and function words
    def set_tokenizer(self, tokenizer: Any, strict: bool = False) -> None:
        """Attach the tokenizer and mark its function-word ids (``config.function_words``) in ``fw_table``."""
        from zoo.data.vlm_io import function_word_ids, read_function_words

        if tokenizer.vocab_size != self.config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                             f"{self.config.vocab_size}; build the model with the tokenizer's vocabulary")
        if tokenizer.pad_id != self.config.pad_token_id:
            raise ValueError(f"tokenizer [PAD] id {tokenizer.pad_id} != model pad_token_id {self.config.pad_token_id}")
        tokenizer.max_len = self.config.max_text_len
        self._attach(tokenizer)
        ids, self.fw_unknown = function_word_ids(tokenizer, read_function_words(self.config.function_words), strict)
        table = torch.zeros_like(self.fw_table)
        table[torch.tensor(ids, dtype=torch.long)] = True
        table[[tokenizer.cls_id, tokenizer.sep_id]] = True
        self.fw_table.copy_(table)

    def _attach(self, tokenizer: Any) -> None:
        """Keep ``tokenizer`` and mark its word-continuing pieces (``piece_table``)."""
        self.tokenizer = tokenizer
        table = torch.zeros_like(self.piece_table)
        cont = [i for i in tokenizer.continuation_ids() if i < len(table)]
        table[torch.tensor(cont, dtype=torch.long)] = True
        self.piece_table.copy_(table)

    def save_assets(self, folder: Union[str, Path]) -> None:
        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer; call set_tokenizer before exporting")
        self.tokenizer.save(folder)

    def load_assets(self, folder: Union[str, Path]) -> None:
        from zoo.data.vlm_io import VLMTokenizer

        tok = VLMTokenizer.from_folder(folder, self.config.max_text_len)
        if tok.vocab_size != self.config.vocab_size:
            raise ValueError(
                f"the tokenizer saved with the weights ({folder}) has {tok.vocab_size} tokens but the model was built with "
                f"vocab_size {self.config.vocab_size}: a word-level vocabulary comes from the training captions "
                "(data.train, data.function_words), so test with the data the model was trained on, or load its export "
                "(model.init_args.pretrained)"
            )
        tok.max_len = self.config.max_text_len
        self._attach(tok)
        self.mark_capitalized_function_words(self.fw_table, str(folder))

    def mark_capitalized_function_words(self, table: Tensor, source: str) -> None:
        """Mark in ``table`` (in place: this model's ``fw_table``, or a checkpoint's) the capitalized form of each marked
        word where the tokenizer reads it as one token, as :func:`~zoo.data.vlm_io.function_word_ids` marks them ("The"
        beside "the": a caption's first word). An export or checkpoint written before that rule (2026-11-28) holds a
        cased tokenizer's table without them, and FDA read "A" / "The" as content words; an uncased tokenizer reads
        the capitalized form as the same token, so its table is unchanged."""
        tok = self.tokenizer
        if tok is None:
            return
        added: dict[int, str] = {}
        for i in table.nonzero().flatten().tolist():
            word = tok.backend.id_to_token(i)
            cap = word[:1].upper() + word[1:] if word else word
            if cap == word:
                continue
            found = tok.word_ids(cap)
            if len(found) == 1 and found[0] != tok.unk_id and 0 <= found[0] < len(table) and not table[found[0]]:
                added[found[0]] = cap
        if added:
            with torch.no_grad():
                table[torch.tensor(sorted(added), dtype=torch.long)] = True
            shown = sorted(added.values())
            warnings.warn(
                f"the function-word table (FDA) of {source} lacks the capitalized forms of {len(added)} function words "
                f"its cased tokenizer reads as other tokens ({shown[:10]}{' ...' if len(shown) > 10 else ''}): it was "
                "written before they were marked (2026-11-28); they are marked now, as a model built today marks them "
                "(export the model again to store the completed table)",
                stacklevel=3,
            )

    def init_text_from_hf(self, folder: Union[str, Path]) -> None:
        """Copy a Hugging Face BERT encoder (e.g. all-MiniLM-L6-v2) into the text encoder.

        The model must have been built with that encoder's sizes (see :func:`text_config_from_hf`).
        """
        from zoo.convert import from_hf_bert
        from zoo.hub import load_state_dict_checked

        enc = from_hf_bert(folder)
        state = {k: v for k, v in enc.state_dict().items() if not k.startswith("pooler.")}
        n = self.text.pos_embed.num_embeddings  # positions beyond max_text_len are never used
        # RoBERTa numbers a right-padded caption's positions from pad_token_id + 1 (pos_offset); ours count from 0
        off = enc.config.pos_offset
        if state["pos_embed.weight"].shape[0] - off < n:
            raise ValueError(f"{folder} has {state['pos_embed.weight'].shape[0] - off} positions; max_text_len is {n}")
        state["pos_embed.weight"] = state["pos_embed.weight"][off : off + n]
        load_state_dict_checked(self.text, state, str(folder))

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        if self.tokenizer is None:
            raise ValueError("the model has no tokenizer; load an export or call set_tokenizer")
        return self.tokenizer.encode(texts, device=self.fw_table.device)

    # -- encoders
    def encode_image(self, images: Tensor) -> Tensor:
        """Image tokens ``[B, 1 + N, vit_dim]`` from pixels in [0, 1] ``[B, 3, S, S]``."""
        s = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(f"images must be [B, 3, {s}, {s}] in [0, 1], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floats in [0, 1], got {images.dtype} (divide uint8 pixels by 255)")
        images = images.to(self.pixel_mean)  # float64 pixels (numpy), or on another device than the model
        return self.vit.forward_features((images - self.pixel_mean) / self.pixel_std)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.text(ids, mask.long())

    def fw_states(self, ids: Tensor) -> Tensor:
        """Embedding-layer output of the function-word caption (content tokens -> [PAD]; a word split into pieces
        is one content word, even where its first piece is a function word's token: "in" of in ##fl ##atable)."""
        keep = self.fw_table[ids]
        keep[:, :-1] &= ~self.piece_table[ids[:, 1:]]
        fw_ids = torch.where(keep, ids, torch.full_like(ids, self.config.pad_token_id))
        return self.text.embed(fw_ids)

    def _pool_text(self, hidden: Tensor, mask: Tensor) -> Tensor:
        if self.config.pool == "cls":
            return hidden[:, 0]
        return TextEncoder.mean_pool(hidden, mask)

    def image_feat(self, img_tokens: Tensor) -> Tensor:
        """Normalized ITC image embedding (CLS, or the mean of the patch tokens)."""
        n = getattr(self.vit, "num_prefix_tokens", 1)  # class token and registers precede the patches (timm)
        pooled = img_tokens[:, 0] if self.config.pool == "cls" else img_tokens[:, n:].mean(1)
        return F.normalize(self.vision_proj(pooled), dim=-1)

    def text_feat(self, txt_hidden: Tensor, mask: Tensor) -> Tensor:
        """Normalized ITC text embedding (CLS, or the mean over real tokens)."""
        return F.normalize(self.text_proj(self._pool_text(txt_hidden, mask)), dim=-1)

    def fuse(self, txt_hidden: Tensor, mask: Tensor, img_tokens: Tensor, fw: Optional[Tensor] = None) -> Tensor:
        """Fused text states ``[B, T, text_dim]`` (FDA layers use ``fw`` when given)."""
        x = txt_hidden
        for layer in self.fusion:
            x = layer(x, mask, img_tokens, fw)
        return x

    def itm_logits(self, txt_hidden: Tensor, mask: Tensor, img_tokens: Tensor, ids: Tensor) -> Tensor:
        """ITM logits ``[B, 2]`` (index 1 = match) for aligned rows of text and image."""
        fw = self.fw_states(ids) if self.config.fda_layer_set else None
        return self.itm_head(self._pool_text(self.fuse(txt_hidden, mask, img_tokens, fw), mask))

    @property
    def temperature(self) -> Tensor:
        return self.temp.clamp(0.001, 0.5)

    def forward(self, images: Tensor, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Contrastive (ITC) outputs of a batch, as Hugging Face's CLIPModel names them: ``logits_per_image``
        ``[Ni, Nt]`` (cosine / temperature), ``logits_per_text`` (its transpose), and the normalized
        ``image_embeds`` ``[Ni, embed_dim]`` and ``text_embeds`` ``[Nt, embed_dim]``. ``images``: pixels in [0, 1]
        ``[Ni, 3, S, S]``; ``ids`` / ``mask``: :meth:`tokenize`'s output. ITM scores: :meth:`similarity`."""
        check_pixels(images, "the model", self.config.image_size)
        image_embeds = self.image_feat(self.encode_image(images))
        text_embeds = self.text_feat(self.encode_text(ids, mask), mask)
        logits = image_embeds @ text_embeds.T / self.temperature
        return {"logits_per_image": logits, "logits_per_text": logits.T,
                "image_embeds": image_embeds, "text_embeds": text_embeds}

    # -- scores
    def itc_similarity(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """Cosine similarity of every image with every text, ``[Ni, Nt]`` (ITC ranking)."""
        check_pixels(images, "itc_similarity", self.config.image_size)
        ids, mask = self.tokenize(texts)
        return self.image_feat(self.encode_image(images)) @ self.text_feat(self.encode_text(ids, mask), mask).T

    def itm_score(self, images: Tensor, texts: Sequence[str]) -> Tensor:
        """Matching score of aligned pairs ``(images[i], texts[i])``: logit(match) - logit(no match)."""
        if images.shape[0] != len(texts):
            raise ValueError(f"itm_score pairs images and texts row by row: {images.shape[0]} images, {len(texts)} texts")
        check_pixels(images, "itm_score", self.config.image_size)
        ids, mask = self.tokenize(texts)
        logits = self.itm_logits(self.encode_text(ids, mask), mask, self.encode_image(images), ids)
        return logits[:, 1] - logits[:, 0]

    def _pixels(self, images: Any) -> Tensor:
        """``images`` as pixels ``[B, 3, S, S]``: a tensor or numpy array as it is (checked by :meth:`encode_image`);
        a PIL image or image path, or a list of them (any size and mode), as RGB resized to ``image_size``."""
        import numpy as np
        from PIL import Image

        if isinstance(images, Tensor):
            return images
        if isinstance(images, np.ndarray):
            return torch.from_numpy(images)
        one = isinstance(images, (str, Path, Image.Image))
        items = [images] if one else list(images) if isinstance(images, (list, tuple)) else None
        if items == []:  # an empty batch: no rows, as an empty tensor gives
            s = self.config.image_size
            return torch.empty(0, 3, s, s)
        if not items or not all(isinstance(x, (str, Path, Image.Image)) for x in items):
            raise TypeError(
                f"images must be a [B, 3, {self.config.image_size}, {self.config.image_size}] tensor or array in "
                f"[0, 1], or a PIL image / image path or a list of them; got {type(images).__name__}"
                + (f" of {sorted({type(x).__name__ for x in items})}" if items else "")
            )
        from zoo.data.vlm_io import image_tensor

        return torch.stack([image_tensor(x, self.config.image_size) for x in items])

    @torch.no_grad()
    def similarity(self, images: Any, texts: Sequence[str], score: str = "itc+itm", batch_size: int = 256) -> Tensor:
        """Score matrix ``[Ni, Nt]`` of every image-text pair (higher = better match); ``texts`` is a list of
        captions or one caption.

        ``images``: pixels ``[Ni, 3, S, S]`` in [0, 1] (a tensor or numpy array), or PIL images / image paths of
        any size and mode (one or a list), converted to RGB and resized to ``image_size`` as training images are.

        ``score``: ``itc+itm`` (default; ITC cosine / temperature + ITM margin, the retrieval re-ranking
        score of :mod:`zoo.tasks.vlm`), ``itm`` (ITM margin alone, ALBEF) or ``itc`` (cosine).
        ``batch_size``: images, captions and ITM pairs encoded at a time (image files are read a batch at a time).
        """
        if score not in ("itc+itm", "itm", "itc"):
            raise ValueError(f"score must be 'itc+itm', 'itm' or 'itc', got {score!r}")
        check_positive_int("batch_size", batch_size, any_integral=True)  # a negative one skipped the scoring loop: unset scores
        if isinstance(texts, str):  # one caption, as one image: a [Ni, 1] column
            texts = [texts]
        with eval_mode(self):  # scores without dropout, as STR's read and TS's forecast (a model fresh from fit trains)
            return self._similarity(images, texts, score, batch_size)

    def _pixel_batches(self, images: Any, batch_size: int) -> Iterator[Tensor]:
        """:meth:`_pixels` of ``images``, ``batch_size`` images at a time (a list of files is read a batch at a time)."""
        import numpy as np

        if not isinstance(images, (list, tuple, Tensor, np.ndarray)):
            yield self._pixels(images)  # one image, or something _pixels names as no images
            return
        if not isinstance(images, (list, tuple)):
            images = self._pixels(images)  # a tensor or array: sliced, not copied
        if len(images) == 0:
            yield self._pixels(images)  # no rows, as an empty tensor gives
            return
        for s in range(0, len(images), batch_size):
            yield self._pixels(images[s : s + batch_size] if isinstance(images, Tensor) else list(images[s : s + batch_size]))

    def _similarity(self, images: Any, texts: Sequence[str], score: str, batch_size: int) -> Tensor:
        # images and texts encoded batch_size at a time, each image batch scored against every text: the memory is
        # that of a batch, not of the whole gallery (the image tokens of every image were kept for the ITM pairs)
        ids, mask = self.tokenize(texts)
        txt = torch.cat([self.encode_text(ids[s : s + batch_size], mask[s : s + batch_size])
                         for s in range(0, max(len(ids), 1), batch_size)])
        text_feats = self.text_feat(txt, mask)
        rows = []
        for pixels in self._pixel_batches(images, batch_size):
            check_pixels(pixels, "similarity", self.config.image_size)  # a tensor or array as given; files: [0, 1]
            img = self.encode_image(pixels.to(self.fw_table.device))
            # every score in at least float32, a float64 model's in float64 (the ITM buffer was float32 whatever the
            # model, and a bfloat16 model gave its ITC scores rounded to bfloat16 but its ITM scores in float32)
            itc = wide_cosines(self.image_feat(img), text_feats)
            if score == "itc":
                rows.append(itc)
                continue
            ni, nt = img.shape[0], txt.shape[0]
            ii, tt = torch.meshgrid(torch.arange(ni), torch.arange(nt), indexing="ij")
            ii, tt = ii.reshape(-1), tt.reshape(-1)
            out = torch.empty(ni * nt, device=img.device, dtype=itc.dtype)
            for s in range(0, ni * nt, batch_size):
                i, t = ii[s : s + batch_size], tt[s : s + batch_size]
                lg = self.itm_logits(txt[t], mask[t], img[i], ids[t]).to(itc.dtype)
                out[s : s + batch_size] = lg[:, 1] - lg[:, 0]
            out = out.view(ni, nt)
            rows.append(out + itc / self.temperature if score == "itc+itm" else out)
        return torch.cat(rows)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def text_config_from_hf(folder: Union[str, Path]) -> dict[str, Any]:
    """VLMConfig text fields (``vocab_size``, ``text_dim``...) of a Hugging Face BERT folder."""
    from zoo.convert.hf import bert_config_to_zoo, read_hf_config

    e = bert_config_to_zoo(read_hf_config(folder), folder, pooler=False)
    return dict(vocab_size=e.vocab_size, text_dim=e.dim, text_layers=e.n_layers, text_heads=e.n_heads,
                text_mlp=e.mlp_hidden, text_norm_eps=e.norm_eps, pad_token_id=e.pad_token_id)


register_model(
    "vlm-fda-tiny", VisionLanguageModel, pretrained="vlm-fda-tiny",
    description="ALBEF-style VLM, ViT 3x96 on 64x64 (patch 16), text 2x96, 2 fusion layers (vanilla), FDA on",
    fda=True,
)
register_model(
    "vlm-tiny", VisionLanguageModel,
    description="ALBEF-style VLM, ViT 3x96 on 64x64 (patch 16), text 2x96, 2 fusion layers (vanilla), no FDA",
    fda=False,
)
register_model(
    "vlm-diff-fda-tiny", VisionLanguageModel,
    description="ALBEF-style VLM, tiny, differential fusion attention with FDA",
    fda=True, fusion_attn_type="diff",
)
register_model(
    "vlm-fda-minilm", VisionLanguageModel,
    description="ALBEF-style VLM, ViT 6x192 on 224x224 (patch 16), all-MiniLM-L6-v2 text encoder (6x384), "
    "2 fusion layers with FDA; train with text_init=minilm",
    image_size=224, patch_size=16, vit_dim=192, vit_depth=6, vit_heads=3, vocab_size=30522, text_dim=384,
    text_layers=6, text_heads=12, text_mlp=1536, fusion_heads=12, fusion_mlp=1536, embed_dim=256, max_text_len=40,
)

__all__ = ["FusionLayer", "VLMConfig", "VisionLanguageModel", "check_pixels", "text_config_from_hf"]
