"""Tokenizers for the language domains: raw UTF-8 bytes, a byte-level BPE trained on the corpus, or a
converted pretrained model's own Hugging Face tokenizer (:class:`HFTokenizer`).

All share one small interface, so datamodules and tasks never branch on the kind:
``pad_id``, ``bos_id``, ``eos_id``, ``vocab_size``, ``kind``, ``encode``, ``encode_batch``, ``decode``,
``token_byte_lengths`` and ``save``. A saved tokenizer is a folder with ``tokenizer_config.json``
(``{"type": "byte" | "bpe" | "hf"}``) plus, for BPE and HF, the Hugging Face ``tokenizer.json``;
an exported model folder carries the same files, so ``load_tokenizer(model_folder)`` works on it.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch

CONFIG_NAME = "tokenizer_config.json"
BPE_NAME = "tokenizer.json"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 in a BPE vocabulary

__all__ = [
    "ByteTokenizer",
    "BPETokenizer",
    "HFTokenizer",
    "TokenizerLike",
    "load_tokenizer",
    "build_tokenizer",
    "tokenizer_adds_bos",
    "CONFIG_NAME",
]


def _as_int_list(ids) -> list[int]:
    """Accept a list, a numpy array or a torch tensor of ids."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


def _check_range(ids: list[int], vocab_size: int) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(
            f"token ids {bad[:5]} are outside this tokenizer's vocabulary [0, {vocab_size}); "
            "the model's vocabulary is larger than the tokenizer's - decode with the tokenizer the "
            "model was trained with"
        )


def _with_specials(ids: list[int], tok: "TokenizerLike", add_bos: bool, add_eos: bool) -> list[int]:
    if add_bos:
        ids = [tok.bos_id] + ids
    if add_eos:
        ids = ids + [tok.eos_id]
    return ids


def _write_config(folder: Union[str, Path], kind: str) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps({"type": kind}) + "\n", encoding="utf-8")
    return folder


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255 are bytes, then pad (256), bos (257) and eos (258)."""

    kind = "byte"
    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (its UTF-8 bytes), optionally wrapped in bos/eos."""
        return _with_specials(list(text.encode("utf-8")), self, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """``encode`` applied to each text."""
        return [self.encode(t, add_bos, add_eos) for t in texts]

    def decode(self, ids) -> str:
        """Text of ``ids``; special ids are dropped, invalid UTF-8 becomes U+FFFD."""
        ids = _as_int_list(ids)
        _check_range(ids, self.vocab_size)
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (0 for special ids); used for bits-per-byte."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        lengths[:256] = 1
        return lengths

    def save(self, folder: Union[str, Path]) -> Path:
        """Write ``tokenizer_config.json`` into ``folder`` (created if needed)."""
        return _write_config(folder, self.kind)

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


def _read_backend(path: Path):
    """A ``tokenizers.Tokenizer`` from ``path``, with a clear error for a malformed file."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception on malformed JSON
        raise ValueError(f"{path} is not a valid tokenizers file ({err}); re-save the tokenizer") from err


class _BackendTokenizer:
    """encode / decode through a ``tokenizers.Tokenizer`` in ``self.backend`` (no template specials)."""

    backend: object
    vocab_size: int

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally wrapped in bos/eos."""
        return _with_specials(self.backend.encode(text, add_special_tokens=False).ids, self, add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        """Encode many texts at once with the parallel Rust batch API."""
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [_with_specials(e.ids, self, add_bos, add_eos) for e in encodings]

    def decode(self, ids) -> str:
        """Text of ``ids``; special ids are dropped, invalid UTF-8 becomes U+FFFD."""
        ids = _as_int_list(ids)
        _check_range(ids, self.vocab_size)
        return self.backend.decode(ids, skip_special_tokens=True)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (special ids 0), for bits per byte: counted once per tokenizer (a
        converted 150k-entry vocabulary decodes every id; a fit asks for it per split and for the byte table), a
        copy each call."""
        if getattr(self, "_byte_lengths", None) is None:
            self._byte_lengths = self._count_token_bytes()
        return self._byte_lengths.copy()


class BPETokenizer(_BackendTokenizer):
    """Byte-level BPE (a ``tokenizers.Tokenizer``) with "<pad>", "<bos>", "<eos>" at ids 0, 1, 2."""

    kind = "bpe"
    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __init__(self, tokenizer) -> None:
        """Wrap a trained ``tokenizers.Tokenizer``; its special tokens must sit at ids 0, 1, 2."""
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != [0, 1, 2]:
            raise ValueError(
                f"BPE tokenizer has special tokens {dict(zip(SPECIAL_TOKENS, ids))}; expected "
                "<pad>=0, <bos>=1, <eos>=2 - train it with BPETokenizer.train"
            )
        # Literal "<eos>" in a corpus is text, not a document boundary.
        tokenizer.encode_special_tokens = True
        self.backend = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> "BPETokenizer":
        """Train a byte-level BPE with ``vocab_size`` entries (specials and 256 bytes included)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        floor = 256 + len(SPECIAL_TOKENS)
        if vocab_size < floor:
            raise ValueError(
                f"bpe vocab_size={vocab_size} is too small: the 256 byte tokens and 3 special tokens "
                f"alone need {floor}; raise it (e.g. 4096) or use the 'byte' tokenizer"
            )
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, folder: Union[str, Path]) -> "BPETokenizer":
        """Read ``tokenizer.json`` from ``folder``."""
        path = Path(folder) / BPE_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder}: {CONFIG_NAME} says 'bpe' but {BPE_NAME} is missing; re-save the tokenizer "
                "with BPETokenizer.save(folder)"
            )
        return cls(_read_backend(path))

    def _count_token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (0 for special ids); used for bits-per-byte."""
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        # Byte-level tokens are spelled with one alphabet character per byte.
        for token, i in self.backend.get_vocab(with_added_tokens=False).items():
            lengths[i] = len(token)
        lengths[[self.pad_id, self.bos_id, self.eos_id]] = 0
        return lengths

    def save(self, folder: Union[str, Path]) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder`` (created if needed)."""
        folder = _write_config(folder, self.kind)
        self.backend.save(str(folder / BPE_NAME))
        return folder

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


class HFTokenizer(_BackendTokenizer):
    """A pretrained model's own Hugging Face ``tokenizer.json`` (Llama, Mistral, Qwen2, BERT...).

    Special ids come from the source folder (``tokenizer_config.json`` token strings, else
    ``config.json`` ids); a missing pad token falls back to eos (as ``transformers`` users usually set).
    Saved as ``tokenizer.json`` + zoo's ``tokenizer_config.json`` with ``{"type": "hf", ...ids}``, so a
    converted model's export carries it and ``load_tokenizer(export_folder)`` works.
    """

    kind = "hf"

    def __init__(self, tokenizer, bos_id: Optional[int], eos_id: Optional[int], pad_id: Optional[int],
                 stop_ids: Sequence[int] = ()) -> None:
        # Saved tokenizers may pad/truncate to a fixed length (MiniLM: 128); zoo packs and pads itself,
        # and truncating a corpus would silently lose text.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.backend = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if eos_id is None:
            raise ValueError("the Hugging Face tokenizer names no eos token; set eos_token in tokenizer_config.json")
        self.bos_id = bos_id if bos_id is not None else eos_id
        self.eos_id = eos_id
        self.pad_id = pad_id if pad_id is not None else eos_id
        # every id that ends a generation (Llama 3 instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>), eos first
        bad = [i for i in stop_ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"stop ids must be token ids below the vocabulary size {self.vocab_size}, got {bad}")
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys([eos_id, *stop_ids]))

    @classmethod
    def from_hf_folder(cls, folder: Union[str, Path]) -> "HFTokenizer":
        """Read a Hugging Face model folder's ``tokenizer.json`` and its special tokens."""
        folder = Path(folder)
        path = folder / BPE_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder}: no {BPE_NAME}; only fast (tokenizers-format) Hugging Face tokenizers are supported "
                "- re-save it with transformers' AutoTokenizer(...).save_pretrained(folder)"
            )
        backend = _read_backend(path)

        def read(name: str) -> dict:
            f = folder / name
            try:
                return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}
            except json.JSONDecodeError as err:
                raise ValueError(f"{f} is not valid JSON ({err})") from err

        tok_cfg, model_cfg, gen_cfg = read(CONFIG_NAME), read("config.json"), read("generation_config.json")

        def special(role: str) -> Optional[int]:
            token = tok_cfg.get(f"{role}_token")
            if isinstance(token, dict):  # AddedToken serialization
                token = token.get("content")
            if isinstance(token, str):
                tid = backend.token_to_id(token)
                if tid is None:
                    raise ValueError(f"{folder}: {role}_token {token!r} is not in {BPE_NAME}'s vocabulary")
                return tid
            tid = model_cfg.get(f"{role}_token_id")
            return tid[0] if isinstance(tid, list) else tid

        if special("eos") is None and special("sep") is not None:  # BERT-style: [SEP] ends a sequence
            return cls(backend, special("cls"), special("sep"), special("pad"))
        # generation stops at any of the model's eos ids, as transformers' generate (generation_config.json,
        # else config.json, may list several)
        listed = gen_cfg.get("eos_token_id", model_cfg.get("eos_token_id"))
        stops = [listed] if isinstance(listed, int) else list(listed or [])
        size = backend.get_vocab_size(with_added_tokens=True)
        outside = [i for i in stops if not (isinstance(i, int) and 0 <= i < size)]
        if outside:
            warnings.warn(f"{folder}: eos_token_id {outside} is not a token of its {BPE_NAME} ({size} tokens); "
                          "generation does not stop on it", stacklevel=2)
            stops = [i for i in stops if i not in outside]
        return cls(backend, special("bos"), special("eos"), special("pad"), stop_ids=stops)

    @classmethod
    def load(cls, folder: Union[str, Path], config: dict) -> "HFTokenizer":
        """Read a tokenizer saved by :meth:`save` (``config``: its ``tokenizer_config.json``)."""
        path = Path(folder) / BPE_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: {CONFIG_NAME} says 'hf' but {BPE_NAME} is missing")
        return cls(_read_backend(path), config.get("bos_id"), config.get("eos_id"), config.get("pad_id"),
                   stop_ids=config.get("stop_ids") or ())

    def _count_token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for (specials 0). Byte-level vocabularies (GPT-2, Qwen2, Llama 3: one
        alphabet character per byte) and byte-fallback tokens (``<0xE4>``: one byte) count their bytes exactly,
        also where a token holds only part of a character (decoded alone it would read as U+FFFD, 3 bytes);
        other ids count the bytes they add when decoded after a plain piece ("a"): decoded alone, a Llama /
        Mistral word-initial piece ("▁the") would lose its space to the decoder's strip of a text's first space
        (bits per byte ~20% high on English text). A document's first piece counts the space such tokenizers
        prepend to it (one byte per document)."""
        import re

        from tokenizers import pre_tokenizers

        spec = json.loads(self.backend.to_str())
        byte_level = '"ByteLevel"' in json.dumps(spec.get("decoder"))
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        added = set(self.backend.get_added_tokens_decoder())  # their content is plain text, not byte-encoded
        fallback = re.compile(r"<0x[0-9A-Fa-f]{2}>")
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        anchor = self.backend.encode("a", add_special_tokens=False).ids  # decoders strip a space only at a text's start
        skip = len(self.backend.decode(anchor, skip_special_tokens=True).encode("utf-8"))
        for i in range(self.vocab_size):
            token = self.backend.id_to_token(i)
            if token is not None and i not in added:
                if byte_level and token and all(c in alphabet for c in token):
                    lengths[i] = len(token)
                    continue
                if byte_fallback and fallback.fullmatch(token):
                    lengths[i] = 1
                    continue
            lengths[i] = max(0, len(self.backend.decode(anchor + [i], skip_special_tokens=True).encode("utf-8")) - skip)
        lengths[[self.pad_id, self.bos_id, self.eos_id]] = 0
        return lengths

    def save(self, folder: Union[str, Path]) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"type": self.kind, "bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        if self.stop_ids != (self.eos_id,):
            config["stop_ids"] = list(self.stop_ids)
        (folder / CONFIG_NAME).write_text(json.dumps(config) + "\n", encoding="utf-8")
        self.backend.save(str(folder / BPE_NAME))
        return folder

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})"


TokenizerLike = Union[ByteTokenizer, BPETokenizer, HFTokenizer]


_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> Optional[str]:
    """``"a lone surrogate \\ud83d at character i (half of a character cut in two)"`` for the first half of a surrogate
    pair standing alone in ``text`` (JSON may escape one: an emoji cut in two), which no UTF-8 text can hold and every
    tokenizer fails on deep inside; ``None`` when there is none (``json.loads`` pairs a whole ``\\ud83d\\ude00``)."""
    m = _SURROGATE.search(text)  # a regex: a corpus's every document is searched
    if m is None:
        return None
    return (f"a lone surrogate {m.group().encode('unicode_escape').decode()} at character {m.start()} (half of a "
            "character cut in two)")


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether prompts for a model with this tokenizer start with BOS.

    An explicit ``tokenizer.add_bos`` wins. A Hugging Face tokenizer (``kind == "hf"``) adds BOS when
    its ``tokenizer.json`` post-processor puts ``bos_id`` in front of a text (Llama / Mistral
    templates; GPT-2 and Qwen2 have none). Zoo's byte and BPE tokenizers never do.
    :func:`zoo.data.text.encode_corpus` starts each training document with BOS exactly when this holds, so
    prompts and training text agree.
    """
    explicit = getattr(tokenizer, "add_bos", None)
    if explicit is not None:
        return bool(explicit)
    backend = getattr(tokenizer, "backend", None)
    if getattr(tokenizer, "kind", None) != "hf" or backend is None:
        return False
    with_specials = backend.encode("a", add_special_tokens=True).ids
    plain = backend.encode("a", add_special_tokens=False).ids
    return len(with_specials) > len(plain) and with_specials[0] == tokenizer.bos_id


def load_tokenizer(folder: Union[str, Path]) -> TokenizerLike:
    """Load a tokenizer saved with ``save`` (or the one inside an exported model folder)."""
    folder = Path(folder).expanduser()
    config_path = folder / CONFIG_NAME
    if not config_path.is_file() and (folder / BPE_NAME).is_file():
        return HFTokenizer.from_hf_folder(folder)
    if not config_path.is_file():
        source = _converted_from(folder)
        if source is not None:  # a Hugging Face folder converted without its tokenizer.json
            raise FileNotFoundError(
                f"{folder} holds a model converted from {source}, which had no {BPE_NAME}: the export has no "
                f"tokenizer. Write {BPE_NAME} there (transformers.AutoTokenizer.from_pretrained(folder)"
                ".save_pretrained(folder)) and convert again, or point data.tokenizer at a folder holding the "
                f"model's {BPE_NAME}"
            )
        if (folder / "config.json").is_file():  # an export of a model trained on token ids (synthetic retrieval)
            raise FileNotFoundError(
                f"{folder} is an exported model without a tokenizer (trained on token ids, e.g. configs/lm/tiny.yaml's "
                "synthetic recall); use the export of a model trained on text (e.g. configs/lm/shakespeare_char.yaml), "
                "or tokenizer 'byte' / 'bpe'"
            )
        raise FileNotFoundError(
            f"{folder}: no {CONFIG_NAME} there; point at a folder written by tokenizer.save() or an "
            "exported model folder, or use tokenizer 'byte' / 'bpe'"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}); re-save the tokenizer") from err
    kind = config.get("type") if isinstance(config, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.load(folder)
    if kind == "hf":
        return HFTokenizer.load(folder, config)
    if kind is None and isinstance(config, dict):  # a Hugging Face folder's own config (a missing tokenizer.json: named)
        return HFTokenizer.from_hf_folder(folder)
    raise ValueError(f"{config_path}: unknown tokenizer type {kind!r}; expected 'byte', 'bpe' or 'hf'")


def _converted_from(folder: Path) -> Optional[str]:
    """The Hugging Face folder a zoo export was converted from (``python -m zoo convert``), else None."""
    try:
        meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    extra = meta.get("extra") if isinstance(meta, dict) else None
    source = extra.get("converted_from") if isinstance(extra, dict) else None
    return str(source) if source else None


def build_tokenizer(spec: str, texts: Optional[Iterable[str]] = None, vocab_size: int = 4096) -> TokenizerLike:
    """Tokenizer from a spec: "byte", "bpe" (trained on ``texts``), a folder to load from or a run's ``.ckpt``."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe":
        if texts is None:
            raise ValueError("tokenizer 'bpe' must be trained: pass texts=... (the training corpus)")
        return BPETokenizer.train(texts, vocab_size)
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_tokenizer(path)
    if path.is_file() and path.suffix == ".ckpt":
        # a run's Lightning checkpoint, read as its export (as model.init_args.pretrained reads it, which
        # configs/lm/finetune.yaml passes on to data.tokenizer)
        from zoo.hub import resolve_pretrained

        return load_tokenizer(resolve_pretrained(path))
    if path.is_file():
        raise ValueError(f"tokenizer {spec!r} is a file; pass the folder that contains {CONFIG_NAME}, or a run's .ckpt")
    if "/" in spec or os.sep in spec or spec.startswith(("~", ".")) or path.suffix == ".ckpt":
        # a path, not a misspelt kind: most often a fine-tune's or adapter run's `pretrained` folder (the configs
        # pass it on as data.tokenizer) removed after the run
        raise FileNotFoundError(
            f"tokenizer {spec!r}: there is no folder or checkpoint {path.absolute()}; give a folder containing "
            f"{CONFIG_NAME} (an exported model: once the `pretrained` folder a run started from is gone, its own "
            "export holds the same tokenizer), a run's .ckpt, or 'byte' / 'bpe'"
        )
    raise ValueError(
        f"unknown tokenizer {spec!r}: use 'byte', 'bpe', or an existing folder containing {CONFIG_NAME} "
        "(e.g. an exported model)"
    )


def check_token_ids(input_ids: "torch.Tensor", vocab_size: int) -> None:
    """Refuse ids outside ``[0, vocab_size)`` (a tokenizer that does not match the model) with a ValueError.

    Under ``torch.compile`` the same condition is an in-graph assert (a RuntimeError with the same message
    start): the Python check reads tensor values, which would split the compiled forward into three graphs."""
    if torch.compiler.is_compiling():
        torch._assert_async(((input_ids >= 0) & (input_ids < vocab_size)).all(),
                            f"token ids must lie in [0, {vocab_size}): the tokenizer does not match the model's vocabulary")
        return
    if not input_ids.numel():  # [] has no min
        return
    # both ends in one read: each comparison read alone was a device sync, two per forward on a GPU
    low, high = torch.stack(torch.aminmax(input_ids)).tolist()
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}); got [{low}, {high}]: the tokenizer does not match the "
            "model's vocabulary"
        )


class TokenizerAssets:
    """Mixin for models that carry ``self.tokenizer``: it is saved beside the weights (see
    ``zoo.hub.export_model``) and read back by ``load_pretrained``."""

    tokenizer: Any = None

    def save_assets(self, folder: Union[str, Path]) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save(folder)

    def load_assets(self, folder: Union[str, Path]) -> None:
        if (Path(folder) / CONFIG_NAME).exists():
            self.tokenizer = load_tokenizer(folder)

