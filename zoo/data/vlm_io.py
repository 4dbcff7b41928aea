"""The Lightning-free parts of the VLM data that inference needs too (:meth:`VisionLanguageModel.similarity`,
export loading): the tokenizer, function-word lists and the image tensors. :mod:`zoo.data.vlm` re-exports them."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from zoo.data.files import read_utf8

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILE = "tokenizer.json"
FUNCTION_WORDS_DIR = Path(__file__).resolve().parent
PathLike = Union[str, Path]


# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------
def _normalizer():
    from tokenizers import normalizers

    return normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True, strip_accents=None)


def split_words(text: str) -> list[str]:
    """Lower-cased words and punctuation of ``text``, as the word-level tokenizer splits them."""
    from tokenizers import pre_tokenizers

    return [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(_normalizer().normalize_str(text))]


def count_words(texts: Iterable[str]) -> Counter:
    """How often each word of :func:`split_words` occurs in ``texts``, as the sum of ``split_words`` over them.

    The texts' space-separated pieces are counted first, and each distinct piece is normalized and split once: an
    ASCII space is kept by BERT's normalizer (which works character by character: control characters dropped,
    accents stripped, lower-cased, CJK characters spaced) and always splits words, so a text's words are its
    pieces' words. Normalizing and splitting every caption (tens of microseconds each in the tokenizers library)
    took ~25 s for COCO's 550k training captions."""
    from tokenizers import pre_tokenizers

    pieces = Counter(p for t in texts for p in t.split(" "))
    norm, split = _normalizer(), pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for piece, n in pieces.items():
        for w, _ in split.pre_tokenize_str(norm.normalize_str(piece)):
            counts[w] += n
    return counts


class VLMTokenizer:
    """BERT-style tokenizer interface over a ``tokenizers.Tokenizer`` ([CLS] text [SEP], [PAD] = padding)."""

    def __init__(self, backend: Any, max_len: int = 32) -> None:
        ids = {t: backend.token_to_id(t) for t in SPECIALS[:4]}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; VLM tokenizers need {list(SPECIALS[:4])}")
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3 ([CLS] word [SEP]), got {max_len}")
        backend.no_truncation()  # we truncate ourselves, to count it
        backend.no_padding()
        self.backend, self.max_len = backend, max_len
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (ids[t] for t in SPECIALS[:4])
        self.n_truncated = 0
        self.n_encoded = 0

    @classmethod
    def word_level(cls, words: Sequence[str], max_len: int = 32) -> "VLMTokenizer":
        """Word-level vocabulary: the special tokens, then ``words`` (deduplicated, in order)."""
        from tokenizers import Tokenizer, models, pre_tokenizers, processors

        vocab: dict[str, int] = {}
        for w in list(SPECIALS) + list(words):
            vocab.setdefault(w, len(vocab))
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
        tok.normalizer = _normalizer()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return cls(tok, max_len)

    @classmethod
    def from_folder(cls, folder: PathLike, max_len: int = 32) -> "VLMTokenizer":
        """``tokenizer.json`` of a folder (an export or a Hugging Face model); else its BERT ``vocab.txt``."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        if (folder / TOKENIZER_FILE).is_file():
            return cls(Tokenizer.from_file(str(folder / TOKENIZER_FILE)), max_len)
        if (folder / "vocab.txt").is_file():
            import json

            from tokenizers.implementations import BertWordPieceTokenizer

            # the casing transformers' BertTokenizer reads from tokenizer_config.json (a cased model's
            # do_lower_case false); its defaults without one: lower-cased, accents stripped with the case
            conf = folder / "tokenizer_config.json"
            conf = json.loads(read_utf8(conf, "tokenizer config", bom=True)) if conf.is_file() else {}
            return cls(BertWordPieceTokenizer(
                str(folder / "vocab.txt"), lowercase=bool(conf.get("do_lower_case", True)),
                strip_accents=conf.get("strip_accents"), handle_chinese_chars=bool(conf.get("tokenize_chinese_chars", True)),
            )._tokenizer, max_len)
        raise FileNotFoundError(f"no {TOKENIZER_FILE} or vocab.txt in {folder}: it holds no tokenizer")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> Optional[int]:
        return self.backend.token_to_id(token)

    def word_ids(self, word: str) -> list[int]:
        """Token ids of one word without [CLS]/[SEP]."""
        return self.backend.encode(word, add_special_tokens=False).ids

    def continuation_ids(self) -> list[int]:
        """Ids of the pieces that continue a word (WordPiece's ``##...``; none for a word-level vocabulary)."""
        prefix = getattr(self.backend.model, "continuing_subword_prefix", None)
        if not prefix:
            return []
        return sorted(i for t, i in self.backend.get_vocab(with_added_tokens=False).items() if t.startswith(prefix))

    def encode(self, texts: Sequence[str], device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
        """``(ids [B, T], mask [B, T] bool)``; ``T`` = the longest caption, at most ``max_len``."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of captions, not one string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):  # the tokenizers library names neither the caption nor the problem
                raise TypeError(f"captions must be strings: caption {i} is {t!r:.40} ({type(t).__name__}); a missing "
                                "value (pandas reads an empty cell as nan): drop it or give '' for an empty caption")
        encs = self.backend.encode_batch(texts)
        rows, cut = [], 0
        for e in encs:
            ids = e.ids
            if len(ids) > self.max_len:
                ids = ids[: self.max_len - 1] + [self.sep_id]
                cut += 1
            rows.append(ids)
        self.n_encoded += len(rows)
        if cut:
            if not self.n_truncated:  # once per tokenizer; the count goes on (n_truncated, the run summary)
                warnings.warn(
                    f"{cut} of {len(rows)} captions are longer than {self.max_len} tokens and were truncated; "
                    "further truncations are counted (tokenizer.n_truncated, shown in the run summary) without "
                    "warning again; to keep captions whole, train with a larger model_args.max_text_len (an "
                    "export's is fixed: fine-tuning one keeps it) or shorten the captions",
                    stacklevel=2,
                )
            self.n_truncated += cut
        T = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), T), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask = ids != self.pad_id
        for i, r in enumerate(rows):  # a literal [PAD] inside a caption is still a real position
            mask[i, : len(r)] = True
        return (ids.to(device), mask.to(device)) if device is not None else (ids, mask)

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(int(i) for i in ids))

    def save(self, folder: PathLike) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(folder / TOKENIZER_FILE))
        return folder


# ---------------------------------------------------------------------------------------------
# Function words
# ---------------------------------------------------------------------------------------------
def read_function_words(name_or_path: str = "en") -> list[str]:
    """Words of ``zoo/data/function_words_<name>.txt`` or of a file path ('#' starts a comment)."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        path = FUNCTION_WORDS_DIR / f"function_words_{name_or_path}.txt"
    if not path.is_file():
        shipped = sorted(p.stem.removeprefix("function_words_") for p in FUNCTION_WORDS_DIR.glob("function_words_*.txt"))
        raise FileNotFoundError(
            f"function-word list {name_or_path!r} not found: give a file path or one of the shipped names {shipped}"
        )
    words = []
    for line in read_utf8(path, "function-word file", bom=True).splitlines():  # another encoding: named
        w = line.split("#", 1)[0].strip()
        if w:
            words.append(w)
    if not words:
        raise ValueError(f"function-word file {path} holds no words")
    return words


def function_vocab_words(name_or_path: str = "en") -> list[str]:
    """The function words as a word-level vocabulary holds them: normalized as the tokenizer reads captions
    (lower-cased, accents stripped: "Über" -> "uber"), so each is the token its word in a caption becomes."""
    out = []
    for w in read_function_words(name_or_path):
        pieces = split_words(w)
        out.append(pieces[0] if len(pieces) == 1 else w.lower())  # several pieces: not one token (warned later)
    return out


def function_word_ids(tok: VLMTokenizer, words: Sequence[str], strict: bool = False) -> tuple[list[int], list[str]]:
    """Token ids of ``words`` that are single known tokens of ``tok``; returns ``(ids, unknown)``.

    Unknown words (out of vocabulary, or split into several pieces) are warned about with their
    count, or raise ``ValueError`` when ``strict``. A word of the list stands for itself in any case: its form as
    written, lower-cased and capitalized are marked where each is one token (a cased tokenizer's "The": a caption's
    first word; a list's "THE").
    """
    ids, unknown = [], []
    for w in words:
        # the word as written, lower-cased and capitalized (the same id for an uncased tokenizer): a list's "THE" or
        # "Of" is the word a cased tokenizer reads as "the" / "The" and "of" / "Of"
        forms = dict.fromkeys((w, w.lower(), w.lower()[:1].upper() + w.lower()[1:], w[:1].upper() + w[1:]))
        found = [p[0] for p in map(tok.word_ids, forms) if len(p) == 1 and p[0] != tok.unk_id]
        if found:
            ids.extend(found)
        else:
            unknown.append(w)
    if unknown:
        msg = (
            f"{len(unknown)} of {len(words)} function words are not single tokens of the tokenizer in use "
            f"({unknown[:10]}{' ...' if len(unknown) > 10 else ''}); they are ignored by FDA"
        )
        if strict:
            raise ValueError(msg + ". Fix the function-word file or use the matching tokenizer (strict=True)")
        warnings.warn(msg, stacklevel=2)
    if not ids:
        raise ValueError("no function word maps onto the tokenizer; FDA would have nothing to subtract")
    return sorted(set(ids)), unknown


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def to_tensor(img: np.ndarray) -> Tensor:
    """uint8 ``[H, W, 3]`` -> float ``[3, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div_(255.0)


def image_tensor(src: Any, image_size: int) -> Tensor:
    """A PIL image, image path, encoded bytes or ``HxW[xC]`` array (any PIL mode: :func:`zoo.data.images.load_image`)
    as RGB ``[3, S, S]`` in [0, 1], bicubic-resized to ``image_size``: the pixels every VLM image goes through,
    in training (:class:`ImageCaptionDataset`) and in :meth:`VisionLanguageModel.similarity`."""
    from PIL import Image

    from zoo.data.images import load_image

    return to_tensor(np.asarray(load_image(src).resize((image_size, image_size), Image.BICUBIC)))


__all__ = [
    "VLMTokenizer", "count_words", "function_vocab_words", "function_word_ids", "image_tensor", "read_function_words",
    "split_words", "to_tensor",
]
