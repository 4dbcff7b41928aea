"""Decoder-only language model (Diff Transformer / Llama-style), readable in one sitting.

Pre-norm blocks of ``RMSNorm -> attention -> RMSNorm -> SwiGLU`` with RoPE; the attention type is a
string (``diff``, ``vanilla``, ``diff_v2``, ...) resolved by :func:`zoo.nn.build_attention`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.data.tokenizers import TokenizerAssets, check_token_ids, lone_surrogate, tokenizer_adds_bos
from zoo.hub import PretrainedMixin, check_positive_int, check_positive_ints, config_from
from zoo.nn import KVCache, RMSNorm, SwiGLU, build_attention, list_attention_types, swiglu_hidden
from zoo.nn.attention import check_attn_args
from zoo.nn.modes import eval_mode


# attention keywords the LM sets from its own config fields (attn_args may not repeat them)
ATTN_CONFIG_FIELDS = {"n_kv_heads": "n_kv_heads", "layer_idx": "(the layer's position)", "causal": "(always True here)",
                      "rope": "(always True here)", "rope_theta": "rope_theta", "max_seq_len": "max_seq_len",
                      "dropout": "attn_dropout", "bias": "attn_bias", "backend": "attn_backend"}


@dataclass
class LMConfig:
    """Architecture of :class:`DiffTransformerLM`.

    ``n_heads`` counts attention heads of output width ``dim // n_heads``; for ``diff`` each head
    holds two q/k sub-heads of half that width (the paper's h heads of 2d). Baselines with the
    same parameter count use ``attn_type="vanilla"`` and, to match the paper's baseline head
    size, ``2 * n_heads``.
    """

    vocab_size: int = 259
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None
    mlp_hidden: Optional[int] = None
    max_seq_len: int = 512
    attn_type: str = "diff"
    attn_args: Optional[dict[str, Any]] = None  # extra kwargs of the attention type, e.g. {signal_ratio: 4}
    rope_theta: float = 10000.0
    attn_bias: Union[bool, str] = False  # projection biases: False, True or "qkv" (Qwen2)
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    dropout: float = 0.0
    attn_dropout: float = 0.0
    attn_backend: Optional[str] = None
    # a converted sliding-window model's window (Mistral, Qwen2): zoo attends fully, which equals the window only up
    # to that many tokens, so max_seq_len may not exceed it (None: no window)
    attn_window: Optional[int] = None

    def __post_init__(self) -> None:
        if self.attn_type not in list_attention_types():
            raise ValueError(
                f"unknown attention type {self.attn_type!r}; known types: {list_attention_types()}"
            )
        if self.attn_args is not None:
            self.attn_args = check_attn_args(self.attn_args, ATTN_CONFIG_FIELDS)
        check_positive_ints(self, ["vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"]
                            + [n for n in ("n_kv_heads", "mlp_hidden", "attn_window") if getattr(self, n) is not None])
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.attn_window is not None and self.max_seq_len > self.attn_window:
            raise ValueError(
                f"max_seq_len ({self.max_seq_len}) exceeds attn_window ({self.attn_window}): the source model attends "
                f"within a sliding window of {self.attn_window} tokens and zoo attends fully, which equals it only up "
                f"to the window; keep max_seq_len <= {self.attn_window}"
            )
        kv = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv}, None: n_heads)")
        if self.mlp_hidden is None:
            self.mlp_hidden = swiglu_hidden(self.dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: LMConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = build_attention(
            cfg.attn_type,
            cfg.dim,
            cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads,
            layer_idx=layer_idx,
            causal=True,
            rope=True,
            rope_theta=cfg.rope_theta,
            max_seq_len=cfg.max_seq_len,
            dropout=cfg.attn_dropout,
            bias=cfg.attn_bias,
            backend=cfg.attn_backend,
            **(cfg.attn_args or {}),
        )
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden, dropout=cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, key_mask: Optional[Tensor] = None, cache: Optional[KVCache] = None) -> Tensor:
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), key_mask=key_mask, cache=cache))
        return x + self.mlp(self.mlp_norm(x))


class DiffTransformerLM(PretrainedMixin, TokenizerAssets, nn.Module):
    """Decoder-only LM. ``forward(input_ids) -> logits``; ``generate`` decodes with a KV cache.

    A loaded model carries its tokenizer (``model.tokenizer``) so ``generate`` accepts text.
    """

    family = "lm"
    config_class = LMConfig
    data_fields = frozenset({"vocab_size"})  # the tokenizer's; create_model(pretrained=...) reads it

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = None  # attached by load_pretrained / the training task
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.apply(self._init_weights)
        # GPT-2 style: shrink residual output projections by depth.
        for name, p in self.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if getattr(m, "_zoo_keep_init", False):
            return  # a layer that sets its own init (e.g. diff_v2's lambda projection)
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    @classmethod
    def from_config(cls, config: Union[LMConfig, dict]) -> "DiffTransformerLM":
        return cls(config_from(LMConfig, config, cls.__name__))

    def new_caches(self, max_len: Optional[int] = None) -> list[KVCache]:
        """One empty KV cache per layer."""
        return [KVCache(max_len or self.config.max_seq_len) for _ in self.layers]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Optional[Tensor] = None,
        caches: Optional[Sequence[KVCache]] = None,
        logits_to_keep: int = 0,
    ) -> Tensor:
        """Logits ``[B, T, vocab]`` for ``input_ids`` ``[B, T]``.

        ``attention_mask`` (``[B, T_total]``, 1 = real token, Hugging Face convention) masks padded
        keys; with ``caches`` it covers cached plus new tokens. ``logits_to_keep`` > 0 returns the logits of
        the last that many positions only (Hugging Face's argument; generation needs the last one, and a
        prompt's logits over a large vocabulary would take [B, T, vocab] memory); a 1-D tensor keeps those positions.
        The logits tensor itself is returned (transformers returns an output object holding it as ``.logits``).
        """
        B, T = input_ids.shape
        start = caches[0].pos if caches else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {start + T} tokens exceeds the model's max_seq_len {self.config.max_seq_len}; "
                "use shorter blocks (data.block_size) or a model with a larger max_seq_len"
            )
        check_token_ids(input_ids, self.config.vocab_size)
        key_mask = attention_mask.bool() if attention_mask is not None else None
        x = self.drop(self.embed(input_ids))
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask=key_mask, cache=caches[i] if caches else None)
        if torch.is_tensor(logits_to_keep) and logits_to_keep.dim() == 1:  # positions to keep, as Hugging Face
            x = x[:, logits_to_keep.to(x.device)]
        elif logits_to_keep:
            x = x[:, -int(logits_to_keep):]
        return self.lm_head(self.norm(x))

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n

    @torch.no_grad()
    def generate(
        self,
        prompt: Union[str, Sequence[str], Sequence[int], Tensor, None] = None,
        max_new_tokens: int = 100,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        eos_id: Optional[Union[int, Sequence[int]]] = None,
        seed: Optional[int] = None,
        attention_mask: Optional[Tensor] = None,
        batch_size: int = 16,
        top_p: Optional[float] = None,
        **unknown: Any,
    ) -> Union[str, list[str], Tensor]:
        """Sample a continuation with the KV cache.

        ``prompt``: text (needs ``self.tokenizer``), a list of texts, a list of ids, or a ``[B, T]`` id tensor or
        numpy array (fed as given; rows of different lengths are left-padded, with ``attention_mask`` ``[B, T]``
        holding 1 for real tokens and 0 for padding, as Hugging Face's decoder-only ``generate`` takes them; right
        padding is an error). ``temperature=0`` is greedy; ``top_k`` ``None`` or ``0`` samples from the whole
        vocabulary (Hugging Face's convention), a negative ``top_k`` is an error; ``top_p`` (in [0, 1]) samples from
        the most likely tokens whose probability reaches it (nucleus sampling, after top-k, as Hugging Face). Returns text for a
        text prompt, else the ``[B, T + new]`` ids. Stops early when every sequence produced
        ``eos_id``, or any of a list of ids (default: the tokenizer's ``stop_ids``, for every kind of prompt: its
        eos, plus the other eos ids a converted model's config lists, as Llama 3's); a sequence that ended
        earlier than the others is filled with the (first) ``eos_id`` from there on. ``seed`` fixes the sampling;
        ``None`` draws it from torch's global RNG (so ``torch.manual_seed`` reproduces a sample).

        A text prompt is encoded the way the training stream holds text (see
        :func:`zoo.data.text.encode_corpus`): its tokens without a BOS, since zoo corpora never hold
        one; an empty prompt becomes the document separator (eos), i.e. "a new document starts". A
        converted Hugging Face tokenizer whose ``tokenizer.json`` prepends BOS (Llama's
        ``<s> $A`` template), or any tokenizer with ``add_bos = True``, keeps its BOS: the model was
        pretrained that way.

        A list of text prompts (any lengths) gives a list of completions, one per prompt, each the one its own
        call would give (prompt ``i`` samples with ``seed + i``; with ``seed=None`` each prompt draws its seed from
        torch's global RNG in list order, as one call each would). They are decoded ``batch_size`` at a time,
        left-padded, prompts of similar lengths together (Hugging Face's text-generation pipeline batches the same
        way); ``batch_size=1`` decodes them one by one.

        Where transformers' ``generate`` differs (a converted model's greedy tokens equal its own): zoo samples by
        default (``temperature`` 1.0, whole vocabulary), where transformers decodes greedily unless ``do_sample=True``
        (and then keeps the 50 likeliest tokens unless ``top_k`` or the model's ``generation_config`` says otherwise);
        ``temperature=0`` is greedy here (transformers refuses it for sampling); ``max_new_tokens=0`` gives the
        prompt back (transformers refuses it); a text prompt gives the completion only (the text-generation
        pipeline's ``return_full_text=False``); a finished row is filled with the first ``eos_id``, as transformers
        fills it when no ``pad_token_id`` is set. transformers' own keywords (``do_sample``, ``max_length``,
        ``eos_token_id``, ``pad_token_id``, ``input_ids``, ``num_return_sequences``, ...) are a ``TypeError`` that
        names zoo's way to do the same.
        """
        if unknown:
            raise TypeError(_unknown_generate_keywords(unknown))
        if prompt is None:  # a default only so that transformers' input_ids= gets its hint above
            raise TypeError("generate() needs a prompt: a text, a list of texts, a list of ids or a [batch, T] id "
                            "tensor")
        check_generation(max_new_tokens, temperature)
        check_top_k(top_k)  # here, not only in the sampling step: max_new_tokens=0 never reaches it
        check_top_p(top_p)
        check_positive_int("batch_size", batch_size, any_integral=True)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
            if attention_mask is not None:
                raise ValueError("attention_mask goes with a left-padded [batch, T] id tensor; a list of text prompts "
                                 "is padded by generate itself")
            return self._generate_texts(list(prompt), max_new_tokens, temperature, top_k, top_p, eos_id, seed,
                                        batch_size)
        if isinstance(prompt, (list, tuple)) and any(isinstance(p, str) for p in prompt):
            raise ValueError("a list prompt holds text prompts (a list of str) or token ids (ints), not both: "
                             f"got {[type(p).__name__ for p in prompt][:6]}")
        if isinstance(prompt, Mapping):  # a tokenizer's output (transformers' BatchEncoding), not its ids
            raise ValueError(f"the prompt is a mapping with keys {list(prompt)[:4]} (a tokenizer's output?); pass its ids "
                             "and mask: generate(enc['input_ids'], attention_mask=enc['attention_mask'], ...)")
        as_text = isinstance(prompt, str)
        if as_text:
            self._need_tokenizer()
            ids = torch.tensor([prompt_ids(self.tokenizer, prompt)], dtype=torch.long)
        elif torch.is_tensor(prompt) or hasattr(prompt, "__array__"):  # numpy ids (return_tensors="np") as a tensor
            ids = torch.as_tensor(prompt)
            ids = ids[None] if ids.dim() == 1 else ids
            if not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool):
                ids = ids.long()  # numpy's unsigned ids (a uint16 token file's slice), as a list of them reads
        else:
            rows = [r for r in prompt if isinstance(r, (list, tuple))]
            if rows and len({len(r) for r in rows}) > 1:
                raise ValueError(f"prompt rows of different lengths ({sorted({len(r) for r in rows})} tokens): give a list "
                                 "of texts, or a left-padded [batch, T] tensor with attention_mask")
            if rows:
                raise ValueError(f"a list of {len(rows)} id lists is not a prompt: one prompt is a flat list of ids; "
                                 f"a batch is a [batch, T] tensor (torch.tensor(rows), here [{len(rows)}, "
                                 f"{len(rows[0])}])")
            ids = torch.tensor([list(prompt)], dtype=torch.long)
        if ids.dim() != 2:
            raise ValueError(
                f"prompt ids must be one sequence [T] or a [batch, T] tensor, got shape {tuple(ids.shape)}; "
                "prompts of different lengths: a list of texts, or a left-padded [batch, T] tensor with attention_mask"
            )
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"prompt tensors hold integer token ids, got dtype {ids.dtype}")
        if attention_mask is not None:
            attention_mask = torch.as_tensor(attention_mask)
            attention_mask = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
            if as_text:
                raise ValueError("attention_mask goes with a left-padded [batch, T] id tensor, not a text prompt")
            attention_mask = check_left_padding(attention_mask, ids)
        stops = self._stop_ids(eos_id)
        if ids.shape[1] == 0:
            raise ValueError("empty prompt: give at least one token (an empty text prompt starts a new document)")
        self._check_room(ids.shape[1], max_new_tokens)
        gen = self._generator(seed, temperature)
        result = self._decode(ids, attention_mask, [gen], max_new_tokens, temperature, top_k, top_p, stops)
        if as_text:
            return completion_text(self.tokenizer, ids[0].tolist(), result[0, ids.shape[1] :].tolist())
        return result

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise ValueError(
                "text prompts need a tokenizer and this model has none (trained on token ids, e.g. synthetic "
                "recall, or built without one): pass a [batch, T] tensor of token ids, or load the export of a "
                "model trained on text"
            )

    def _stop_ids(self, eos_id: Optional[Union[int, Sequence[int]]]) -> list[int]:
        if eos_id is None and self.tokenizer is not None:  # for token-id prompts too
            eos_id = getattr(self.tokenizer, "stop_ids", None) or self.tokenizer.eos_id
        return check_stop_ids(eos_id)

    def prompt_room(self, max_new_tokens: int) -> int:
        """The longest prompt that ``generate`` completes with ``max_new_tokens`` tokens within ``max_seq_len``: the
        model reads the prompt and every new token but the last, which is never fed back, so prompt +
        ``max_new_tokens`` may be ``max_seq_len + 1`` (transformers' ``generate`` as well: it warns only once a token
        fed back would pass ``max_position_embeddings``)."""
        return self.config.max_seq_len - max(int(max_new_tokens) - 1, 0)

    def _check_room(self, prompt_len: int, max_new_tokens: int, which: str = "prompt") -> None:
        room = self.prompt_room(max_new_tokens)
        if prompt_len > room:
            raise ValueError(
                f"{which} ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds max_seq_len "
                f"{self.config.max_seq_len} (+ 1: the last new token is never fed back): at most {max(room, 0)} prompt "
                "tokens fit; shorten the prompt or lower max_new_tokens"
            )

    def _generator(self, seed: Optional[int], temperature: float) -> Optional[torch.Generator]:
        """The sampling generator: ``seed``'s; without one a seed drawn from torch's global RNG, so
        torch.manual_seed / seed_everything reproduce a sample; greedy decoding draws nothing (the global stream,
        e.g. a training run's, stays where it was)."""
        if temperature <= 0 and seed is None:
            return None
        gen = torch.Generator(device=next(self.parameters()).device)
        # int(): numpy integers too (torch.manual_seed takes them, Generator.manual_seed does not); modulo 2**64 as
        # torch reads a seed, so seed + i of a list of prompts stays a seed
        gen.manual_seed(int(seed) % 2**64 if seed is not None else int(torch.randint(2**62, ()).item()))
        return gen

    def _generate_texts(self, prompts: list[str], max_new_tokens: int, temperature: float, top_k: Optional[int],
                        top_p: Optional[float], eos_id: Any, seed: Optional[int], batch_size: int) -> list[str]:
        """One completion per text prompt, decoded ``batch_size`` at a time with left padding (see generate, which
        checked the settings)."""
        self._need_tokenizer()
        stops = self._stop_ids(eos_id)
        encoded = [prompt_ids(self.tokenizer, p) for p in prompts]
        for i, ids in enumerate(encoded):
            self._check_room(len(ids), max_new_tokens, which=f"prompt {i}")
        # every generator before any decoding, in list order: what one call per prompt would draw
        gens = [self._generator(None if seed is None else seed + i, temperature) for i in range(len(prompts))]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths pad least
        pad = 0  # any id of the vocabulary: padded positions are masked out (an eos_id may be -1, "never")
        out: list[str] = [""] * len(prompts)
        for s in range(0, len(order), int(batch_size)):
            chunk = order[s : s + int(batch_size)]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for row, i in enumerate(chunk):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i], dtype=torch.long)
                mask[row, width - len(encoded[i]) :] = 1
            result = self._decode(ids, mask, [gens[i] for i in chunk], max_new_tokens, temperature, top_k, top_p,
                                  stops)
            for row, i in enumerate(chunk):
                new = result[row, width:].tolist()
                ends = [j for j, t in enumerate(new) if t in stops]
                out[i] = completion_text(self.tokenizer, encoded[i], new[: ends[0] + 1] if ends else new)
        return out

    def _decode(self, ids: Tensor, attention_mask: Optional[Tensor], gens: list[Optional[torch.Generator]],
                max_new_tokens: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                stops: list[int]) -> Tensor:
        """The KV-cache decoding loop over a ``[B, T]`` batch. ``gens``: one generator for the whole batch, or
        one per row (each row then samples as it would alone)."""
        device = next(self.parameters()).device
        ids = ids.to(device)
        B = ids.shape[0]
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: the unmasked (faster) attention path
        mask = attention_mask.to(device) if attention_mask is not None else None
        with eval_mode(self):  # an error part-way (e.g. interrupted) leaves the model in the mode it had
            caches = self.new_caches(ids.shape[1] + max(max_new_tokens - 1, 0))  # the last token is never fed
            # rows past the tokenizer's last id (converted Qwen2 / Llama pad their embedding) are no token
            n_tok = self.tokenizer.vocab_size if self.tokenizer is not None else self.config.vocab_size
            logits = self(ids, attention_mask=mask, caches=caches, logits_to_keep=1)[:, -1, :n_tok]
            out = [ids]
            done = torch.zeros(B, dtype=torch.bool, device=device)
            stop_tensor = torch.tensor(stops, dtype=torch.long, device=device)
            for step in range(max_new_tokens):
                if len(gens) == 1 or temperature <= 0:
                    nxt = sample_next(logits, temperature, top_k, gens[0], top_p)
                else:
                    nxt = torch.cat([sample_next(logits[r : r + 1], temperature, top_k, gens[r], top_p)
                                     for r in range(B)])
                if stops:
                    nxt = nxt.masked_fill(done[:, None], stops[0])  # a finished row keeps its end (eos), as padding
                out.append(nxt)
                if stops:
                    done |= torch.isin(nxt.squeeze(1), stop_tensor)
                    if bool(done.all()):
                        break
                if step + 1 < max_new_tokens:  # the last token is never fed back: no forward for it
                    if mask is not None:
                        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
                    # a finished row is fed any token (its outputs are the fill from here on): the fill, the first stop
                    # id, may be none of the vocabulary (-1: "never")
                    fed = nxt.masked_fill(done[:, None], 0) if stops else nxt
                    logits = self(fed, attention_mask=mask, caches=caches, logits_to_keep=1)[:, -1, :n_tok]
        return torch.cat(out, dim=1)


# transformers' generate keywords that zoo's generate lacks, and zoo's way to do what they do
_HF_GENERATE_HINTS = {
    "input_ids": "the ids are the first argument, prompt: "
                 "generate(enc['input_ids'], attention_mask=enc['attention_mask'])",
    "do_sample": "zoo samples whenever temperature > 0 (the default, 1.0; transformers decodes greedily unless "
                 "do_sample=True): do_sample=False is temperature=0",
    "max_length": "pass max_new_tokens (max_length counts the prompt's tokens too)",
    "eos_token_id": "pass eos_id (a token id or a list of them; [] never stops)",
    "pad_token_id": "a row that ends early is filled with the first eos_id (transformers' fill without pad_token_id); "
                    "replace the tokens after a row's first stop id yourself",
    "num_return_sequences": "repeat the prompt rows (ids.repeat_interleave(n, dim=0), its attention_mask too): a [B, T] "
                            "batch samples its rows independently",
    "generation_config": "pass its settings as keywords (max_new_tokens, temperature, top_k, top_p, eos_id)",
}
_GENERATE_KEYWORDS = ("max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "seed", "attention_mask",
                      "batch_size")


def _unknown_generate_keywords(unknown: dict[str, Any]) -> str:
    """The message for keywords ``generate`` does not take: zoo's way for transformers' own, the list for the rest (no
    repetition penalty, beam search or streaming here)."""
    names = sorted(unknown)
    hints = [f"{k}: {_HF_GENERATE_HINTS[k]}" for k in names if k in _HF_GENERATE_HINTS]
    return (f"generate() got unexpected keyword argument(s) {names}; it takes the prompt and "
            f"{list(_GENERATE_KEYWORDS)}"
            + "".join(f"; {h}" for h in hints))


def completion_text(tokenizer: Any, prompt: list[int], new: list[int]) -> str:
    """The text ``new`` adds after ``prompt``, as Hugging Face's text-generation pipeline cuts it: the decoded
    prompt taken off the decoded whole. Decoding ``new`` alone reads differently where a decoder treats the
    start of a text specially (Llama / Mistral's Metaspace decoder drops the first token's leading space:
    "Hello" + "▁world" would read "world", not " world")."""
    head, full = tokenizer.decode(prompt), tokenizer.decode(prompt + new)
    return full[len(head) :] if full.startswith(head) else tokenizer.decode(new)


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids a text prompt is fed as: as a document starts in the training stream (no BOS; "" -> the eos
    separator), or after BOS for tokenizers that declare it (see :func:`tokenizer_adds_bos`), whose training
    documents start with BOS too (:func:`zoo.data.text.encode_corpus`).
    """
    lone = lone_surrogate(text)
    if lone:
        raise ValueError(f"the prompt holds {lone}, which is no UTF-8 text; fix the prompt")
    if tokenizer_adds_bos(tokenizer):
        return tokenizer.encode(text, add_bos=True)
    ids = tokenizer.encode(text)
    return ids if ids else [tokenizer.eos_id]


def check_left_padding(attention_mask: Any, ids: Tensor) -> Tensor:
    """``attention_mask`` of a ``[B, T]`` prompt batch as a long 0/1 tensor, checked: ids' shape, 0/1 values, and
    left padding (a row's zeros all before its first real token, as decoder-only generation needs: the next token
    follows the last position)."""
    mask = torch.as_tensor(attention_mask)
    if tuple(mask.shape) != tuple(ids.shape):
        raise ValueError(f"attention_mask must have the prompt's shape {tuple(ids.shape)}, got {tuple(mask.shape)}")
    if mask.is_floating_point() or mask.is_complex():
        raise ValueError(f"attention_mask holds 1 for real tokens and 0 for padding as integers or bools, got dtype "
                         f"{mask.dtype} (Hugging Face tokenizers give int64; .long() converts it)")
    if not bool(((mask == 0) | (mask == 1)).all()):
        bad = torch.unique(mask[(mask != 0) & (mask != 1)]).tolist()
        raise ValueError(f"attention_mask holds 1 for real tokens and 0 for padding (integers or bools), got values "
                         f"{bad[:8]}")
    mask = mask.long()
    if mask.shape[1] and not bool(mask[:, -1].all()):
        rows = (mask[:, -1] == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"attention_mask rows {rows[:8]} end in padding (right padding, or a row of padding only); decoder-only "
            "generation continues from the last position: pad on the left (Hugging Face: "
            "tokenizer.padding_side = 'left')"
        )
    if mask.shape[1] > 1 and bool((mask[:, 1:] < mask[:, :-1]).any()):
        rows = (mask[:, 1:] < mask[:, :-1]).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"attention_mask rows {rows[:8]} have padding between real tokens; pad on the left only")
    return mask


def check_generation(max_new_tokens: int, temperature: float) -> None:
    """``max_new_tokens`` must be an integer >= 0 and ``temperature`` a number >= 0 (0: greedy)."""
    # numbers.Integral / Real: numpy scalars too (np.int64, np.float32)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy decoding), got {temperature!r}")


def check_stop_ids(eos_id: Optional[Union[int, Sequence[int]]]) -> list[int]:
    """``eos_id`` (None, an id or a list of ids) as the list of ids that end a generated sequence."""
    if torch.is_tensor(eos_id):  # a 0-d or 1-d tensor of ids
        eos_id = eos_id.tolist()
    try:
        ids = [] if eos_id is None else [eos_id] if isinstance(eos_id, numbers.Integral) else list(eos_id)
    except TypeError:  # a float or another single non-id: no list either
        raise ValueError(f"eos_id must be a token id or a list of them, got {eos_id!r}") from None
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Integral)]  # -1: never stops
    if bad:
        raise ValueError(f"eos_id must be a token id or a list of them, got {eos_id!r}")
    return [int(i) for i in ids]


def check_top_k(top_k: Optional[int]) -> None:
    """``top_k`` must be None, 0 (both: no top-k filtering) or a positive integer (numpy's too)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0):
        raise ValueError(
            f"top_k must be a positive integer, or 0 / null for no top-k filtering; got {top_k!r}"
        )


def check_top_p(top_p: Optional[float]) -> None:
    """``top_p`` must be None (no nucleus filtering) or a number in [0, 1] (Hugging Face's range; 1 keeps every token,
    0 only the most likely one)."""
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 <= top_p <= 1):
        raise ValueError(f"top_p must be a number in [0, 1] (nucleus sampling), or null for none; got {top_p!r}")


def filter_logits(logits: Tensor, temperature: float, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> Tensor:
    """Logits ``[B, V]`` in at least float32 divided by ``temperature`` (> 0), with the tokens that top-k and then top-p
    (nucleus) filtering drop set to -inf: Hugging Face's sampling order (temperature, top-k, top-p). Top-p keeps
    the most likely tokens until their probability reaches ``top_p``, the most likely one always."""
    check_top_k(top_k)
    check_top_p(top_p)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, idx = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(ordered, dim=-1)
        before = probs.cumsum(dim=-1) - probs  # the mass of the likelier tokens
        drop = before >= top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def sample_next(logits: Tensor, temperature: float, top_k: Optional[int], gen: Optional[torch.Generator],
                top_p: Optional[float] = None) -> Tensor:
    """Pick the next token ``[B, 1]`` from last-position logits ``[B, V]``: argmax at ``temperature`` 0, else a
    draw from :func:`filter_logits`' distribution.

    ``top_k`` ``None`` or ``0`` keeps the whole vocabulary (as Hugging Face's ``generate``); a
    ``top_k`` at least the vocabulary size does too; ``top_p`` ``None`` or 1 as well. Called once per decoding step
    (per row when rows sample apart): the settings are checked by ``generate`` and by :func:`filter_logits`, not
    again here.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=gen)
