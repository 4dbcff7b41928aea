"""BERT-style text encoder (post-norm), the target of :func:`zoo.convert.from_hf_bert`.

``embeddings (word + position + token type) -> LayerNorm -> n_layers x [x = LN(x + attn(x));
x = LN(x + mlp(x))]``; the attention type is a string, so a converted encoder uses ``vanilla``
(with biases, as BERT) and a scratch one may pick any registered type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from zoo.data.tokenizers import TokenizerAssets, check_token_ids
from zoo.hub import DEFAULT_RUNTIME_FIELDS, PretrainedMixin, check_positive_ints, config_from, register_model
from zoo.nn import GeluMlp, build_attention, list_attention_types


@dataclass
class EncoderConfig:
    """Architecture of :class:`TextEncoder` (field names follow zoo, see the converter for BERT's)."""

    vocab_size: int = 30522
    dim: int = 384
    n_layers: int = 6
    n_heads: int = 12
    mlp_hidden: int = 1536
    max_seq_len: int = 512
    type_vocab_size: int = 2
    attn_type: str = "vanilla"
    norm_eps: float = 1e-12
    bias: bool = True
    pooler: bool = True
    pad_token_id: int = 0
    pos_offset: int = 0  # first position id (RoBERTa: pad_token_id + 1); the table holds max_seq_len + pos_offset rows
    dropout: float = 0.0
    attn_dropout: float = 0.0
    attn_backend: Optional[str] = None

    def __post_init__(self) -> None:
        if self.attn_type not in list_attention_types():
            raise ValueError(f"unknown attention type {self.attn_type!r}; known types: {list_attention_types()}")
        check_positive_ints(self, ("vocab_size", "dim", "n_layers", "n_heads", "mlp_hidden", "max_seq_len", "type_vocab_size"))
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.pos_offset < 0:
            raise ValueError(f"pos_offset must be >= 0, got {self.pos_offset}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class EncoderLayer(nn.Module):
    """Post-norm block: ``LN(x + attn(x))`` then ``LN(x + mlp(x))``."""

    def __init__(self, cfg: EncoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn = build_attention(
            cfg.attn_type, cfg.dim, cfg.n_heads, layer_idx=layer_idx, causal=False, rope=False,
            dropout=cfg.attn_dropout, bias=cfg.bias, backend=cfg.attn_backend,
        )
        self.attn_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = GeluMlp(cfg.dim, cfg.mlp_hidden, bias=cfg.bias, dropout=cfg.dropout)
        self.mlp_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None) -> Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, key_mask=key_mask)))
        return self.mlp_norm(x + self.mlp(x))


class TextEncoder(PretrainedMixin, TokenizerAssets, nn.Module):
    """Bidirectional text encoder: ``forward(input_ids, attention_mask, token_type_ids) -> [B, T, dim]``.

    ``pool(hidden)`` gives BERT's pooler output (tanh of a linear map of the first token) when the
    config has ``pooler=True``; ``mean_pool(hidden, attention_mask)`` the sentence-transformers one.
    """

    family = "encoder"
    config_class = EncoderConfig
    # max_seq_len sizes the learned position table (a weight), so it is architecture, not a runtime setting
    runtime_fields = DEFAULT_RUNTIME_FIELDS - {"max_seq_len"}

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = None  # a converted checkpoint's (see zoo.convert.from_hf_bert)
        self.word_embed = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_token_id)
        self.pos_embed = nn.Embedding(config.max_seq_len + config.pos_offset, config.dim)
        self.type_embed = nn.Embedding(config.type_vocab_size, config.dim)
        self.embed_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.n_layers))
        self.pooler = nn.Linear(config.dim, config.dim) if config.pooler else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if getattr(m, "_zoo_keep_init", False):
            return
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:  # as BERT's init: padding_idx keeps that row out of training, at zero
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    @classmethod
    def from_config(cls, config: Union[EncoderConfig, dict]) -> "TextEncoder":
        return cls(config_from(EncoderConfig, config, cls.__name__))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        token_type_ids: Optional[Tensor] = None,
    ) -> Tensor:
        """Last hidden states ``[B, T, dim]``; ``attention_mask`` (1 = real token) masks padded keys."""
        x = self.embed(input_ids, token_type_ids)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        for layer in self.layers:
            x = layer(x, key_mask=key_mask)
        return x

    def embed(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        """Embedding-layer output ``[B, T, dim]`` (word + position + token type, LayerNorm, dropout)."""
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} tokens exceeds max_seq_len {self.config.max_seq_len}; truncate the input")
        check_token_ids(input_ids, self.config.vocab_size)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if self.config.pos_offset:
            # RoBERTa numbers the non-pad tokens from pad_token_id + 1 and gives pads pad_token_id, so a
            # left-padded row's first real token sits at the first position (as in transformers)
            real = (input_ids != self.config.pad_token_id).long()
            pos = torch.cumsum(real, dim=1) * real + (self.config.pos_offset - 1)
        else:
            pos = torch.arange(T, device=input_ids.device)[None]
        x = self.word_embed(input_ids) + self.type_embed(token_type_ids) + self.pos_embed(pos)
        return self.drop(self.embed_norm(x))

    def pool(self, hidden: Tensor) -> Tensor:
        """BERT pooler output ``tanh(W h[:, 0] + b)``."""
        if self.pooler is None:
            raise ValueError("this encoder was built with pooler=False; use mean_pool instead")
        return torch.tanh(self.pooler(hidden[:, 0]))

    @staticmethod
    def mean_pool(hidden: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Mean over real tokens (sentence-transformers pooling)."""
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


register_model(
    "encoder-minilm-l6",
    TextEncoder,
    description="BERT-style encoder, 6x384, 12 heads (all-MiniLM-L6-v2 layout; weights via zoo.convert.from_hf_bert)",
    vocab_size=30522, dim=384, n_layers=6, n_heads=12, mlp_hidden=1536, max_seq_len=512,
)
register_model(
    "encoder-tiny",
    TextEncoder,
    description="BERT-style encoder, 2x64, 4 heads, any attention type (for tests and ablations)",
    vocab_size=1000, dim=64, n_layers=2, n_heads=4, mlp_hidden=128, max_seq_len=128,
)

__all__ = ["EncoderConfig", "TextEncoder"]
