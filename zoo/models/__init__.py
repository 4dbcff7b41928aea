"""Domain architectures (plain nn.Modules) and their registered names."""

from zoo.hub import register_model
from zoo.models.lm import DiffTransformerLM, LMConfig

# Language models. Diff sizes follow the paper (h heads of width 2d); each vanilla twin has the
# same parameter count with 2h heads of width d, the paper's baseline layout.
_LM_SIZES = {
    # name: (dim, n_layers, diff heads, vocab, max_seq_len)
    "tiny": (128, 4, 4, 259, 512),
    "small": (384, 6, 6, 259, 1024),
    "base": (768, 12, 6, 32000, 2048),
    "830m": (1536, 24, 8, 100288, 2048),
    "1.4b": (2048, 24, 8, 100288, 2048),
}
for _size, (_dim, _layers, _heads, _vocab, _len) in _LM_SIZES.items():
    for _attn, _h in (("diff", _heads), ("vanilla", 2 * _heads)):
        register_model(
            f"lm-{_attn}-{_size}",
            DiffTransformerLM,
            description=f"decoder-only LM, {_attn} attention, {_layers}x{_dim}",
            vocab_size=_vocab,
            dim=_dim,
            n_layers=_layers,
            n_heads=_h,
            max_seq_len=_len,
            attn_type=_attn,
        )

__all__ = ["DiffTransformerLM", "LMConfig"]
import zoo.models.ts  # noqa: F401,E402
import zoo.models.encoder  # noqa: F401,E402
import zoo.models.str  # noqa: F401,E402
import zoo.models.vlm  # noqa: F401,E402
