"""Language-modelling data: read a corpus, tokenize it, pack it into fixed-length blocks.

A corpus is a ``.txt`` file (one document), a folder (every ``*.txt`` below it, recursively, in
sorted path order; one document per file) or a ``.jsonl`` file (one document per line, in its
``"text"`` field). Documents are encoded and joined with one eos token *between* consecutive
documents (n documents -> n - 1 separators); empty documents are skipped.

The token stream is cut into non-overlapping blocks of ``block_size + 1`` tokens (a trailing
remainder shorter than a block is not used); each block gives ``input_ids = block[:-1]`` and
``labels = block[1:]``. Without ``val_path`` the last ``val_fraction`` of the training stream is the
validation split. A "bpe" tokenizer is trained on the documents of ``train_path`` (so, without
``val_path``, the held-out tail takes part in building the vocabulary, as in the usual char-level
set-ups; pass ``val_path`` for a strictly unseen validation set).
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .files import PathsAsText, read_utf8, say_hidden, walk_files
from .lm_common import check_at_least, make_loader
from .tokenizers import ByteTokenizer, TokenizerLike, build_tokenizer, lone_surrogate, tokenizer_adds_bos

__all__ = ["TextDataModule", "BlockDataset", "read_documents", "encode_corpus", "pack_blocks"]

_FIX = "point it at a .txt file, a folder of .txt files or a .jsonl file with a 'text' field"
_CHUNK_CHARS = 1 << 16  # documents are encoded in line-aligned chunks so the batch API can parallelize
_BATCH_CHARS = 1 << 22  # characters encoded per batch call (its per-token objects are freed after each)
# A piece ends after a newline that is a whole whitespace run (a non-space character before and after it): byte-level
# BPE pre-tokenizes whitespace runs ("\n   " before an indented line is one pre-token), and a run that ends a text is
# one pre-token where inside the text it is split before its last character ("\r\n", "\n\n", " \n" before a word:
# "\r", "\n"), so a cut inside or after a longer run would change the tokens.
_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def _read_jsonl(path: Path, key: str) -> list[str]:
    docs = []
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and friends.
    for lineno, line in enumerate(read_utf8(path, key, bom=True).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{key}: {path.name}, line {lineno}: not valid JSON ({err.msg}); fix or remove the line") from err
        if not isinstance(record, dict) or "text" not in record:
            raise ValueError(
                f"{key}: {path.name}, line {lineno}: expected a JSON object with a 'text' field; "
                "every line of a .jsonl corpus needs one"
            )
        if not isinstance(record["text"], str):
            raise ValueError(
                f"{key}: {path.name}, line {lineno}: 'text' is {type(record['text']).__name__}, expected a string"
            )
        text = record["text"]
        lone = lone_surrogate(text)
        if lone:
            raise ValueError(
                f"{key}: {path.name}, line {lineno}: 'text' holds {lone}, which is no UTF-8 text; fix or remove the "
                "line (Python: text.encode('utf-8', 'replace').decode('utf-8') writes '?' for it)"
            )
        if text:
            docs.append(text)
    return docs


def _suffixes(files: list[Path]) -> str:
    """``".md x2, no suffix x1"``: the suffixes of ``files``, most common first."""
    counts = Counter(f.suffix.lower() or "no suffix" for f in files)
    return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def read_documents(path: str, key: str = "data.train_path") -> list[str]:
    """Documents of a .txt file, a folder of .txt files or a .jsonl file; ``key`` names the setting in errors."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{key}: {path} does not exist; {_FIX}")
    if p.is_dir():
        hidden: list[Path] = []
        visible = walk_files(p, hidden)
        files = [f for f in visible if f.suffix.lower() == ".txt"]
        say_hidden([f for f in hidden if f.suffix.lower() == ".txt"], p, "text")
        others = [f for f in visible if f.suffix.lower() != ".txt"]
        if not files:
            held = f" (only {len(others)} other file(s): {_suffixes(others)})" if others else ""
            raise ValueError(f"{key}: folder {path} holds no .txt files (searched recursively){held}; {_FIX}")
        if others:
            warnings.warn(
                f"{key}: {len(others)} file(s) under {path} not read ({_suffixes(others)}): a corpus folder reads its "
                ".txt files only (a .jsonl corpus is read when the path names the file itself); rename text files to "
                ".txt to include them", stacklevel=2,
            )
        docs = [text for text in (read_utf8(f, key, bom=True) for f in files) if text]
        where = f"every .txt file under {path}"
    elif p.suffix.lower() == ".txt":
        docs = [text] if (text := read_utf8(p, key, bom=True)) else []
        where = str(path)
    elif p.suffix.lower() == ".jsonl":
        docs = _read_jsonl(p, key)
        where = f"{path} (no line with a non-empty 'text')"
    else:
        raise ValueError(f"{key}: {path} has suffix {p.suffix!r}, which is not a corpus format; {_FIX}")
    if not docs:
        raise ValueError(f"{key}: {where} is empty; add text or {_FIX}")
    return docs


def _line_chunks(doc: str) -> Iterator[str]:
    """Split ``doc`` after newlines (that no whitespace follows) into pieces of about ``_CHUNK_CHARS``
    characters (lossless), one at a time."""
    start = 0
    while start < len(doc):
        cut = _CUT.search(doc, start + _CHUNK_CHARS)
        end = len(doc) if cut is None else cut.end()
        yield doc[start:end]
        start = end


def _pieces_encode_as_whole(tokenizer: TokenizerLike) -> bool:
    """Whether a piece starting a line is encoded as in its document (no prepended space / prefix token)."""
    if getattr(tokenizer, "kind", None) in ("byte", "bpe"):
        return True
    heads = ("b", " b", "1")
    alone = tokenizer.encode_batch(["a\n", *heads])
    whole = tokenizer.encode_batch([f"a\n{h}" for h in heads])
    return all(alone[0] + ids == w for ids, w in zip(alone[1:], whole))


def encode_corpus(tokenizer: TokenizerLike, docs: Sequence[str]) -> np.ndarray:
    """One int32 token stream: the documents' tokens joined by ``tokenizer.eos_id``; each document starts with
    ``tokenizer.bos_id`` when the tokenizer puts BOS in front of a text (Llama / Mistral tokenizers, see
    :func:`zoo.data.tokenizers.tokenizer_adds_bos`), as prompts are fed at generation (Hugging Face's language
    modelling recipe tokenizes each document with its special tokens).

    Long documents are encoded in line-aligned pieces (parallel, same text), unless the tokenizer treats the
    start of every text it encodes specially (converted Llama / Mistral tokenizers prepend "▁", a space, to
    each one): those get each document whole. Pieces are encoded about ``_BATCH_CHARS`` characters at a time
    and each batch's tokens become an int32 array at once: the tokenizer's per-token objects (Python ints, Rust
    encodings: tens of bytes a token) never exist for the whole corpus, only for one batch.
    """
    whole = not _pieces_encode_as_whole(tokenizer)
    raw_bytes = type(tokenizer) is ByteTokenizer  # its tokens are the UTF-8 bytes: read them without Python ints
    sep = np.array([tokenizer.eos_id], dtype=np.int32)
    start = np.array([tokenizer.bos_id] if tokenizer_adds_bos(tokenizer) else [], dtype=np.int32)
    streams: list[np.ndarray] = []
    batch: list[str] = []
    owner: list[int] = []  # document index of each piece of the batch
    last = -1  # document of the last piece encoded

    def flush() -> None:
        nonlocal last
        if raw_bytes:
            encoded = [np.frombuffer(piece.encode("utf-8"), dtype=np.uint8) for piece in batch]
        else:
            encoded = tokenizer.encode_batch(batch)
        parts = []
        for i, ids in zip(owner, encoded):
            if i != last:
                if last >= 0:
                    parts.append(sep)
                parts.append(start)
                last = i
            parts.append(np.asarray(ids, dtype=np.int32))
        streams.append(np.concatenate(parts))
        batch.clear()
        owner.clear()

    size = 0
    for i, doc in enumerate(docs):
        for piece in ((doc,) if whole else _line_chunks(doc)):
            batch.append(piece)
            owner.append(i)
            size += len(piece)
            if size >= _BATCH_CHARS:
                flush()
                size = 0
    if batch:
        flush()
    # each batch's array is freed once copied: np.concatenate held the batches and the whole stream together, twice
    # the corpus's tokens at the peak (a 300 MB text read as bytes: 2.4 GB of int32 where 1.2 GB is the stream)
    if len(streams) == 1:
        return streams[0]
    out = np.empty(sum(len(a) for a in streams), dtype=np.int32)
    at = 0
    streams.reverse()
    while streams:
        part = streams.pop()
        out[at : at + len(part)] = part
        at += len(part)
    return out


def pack_blocks(stream: np.ndarray, block_size: int) -> torch.Tensor:
    """Non-overlapping blocks of ``block_size + 1`` tokens, shape [n_blocks, block_size + 1]."""
    n = len(stream) // (block_size + 1)
    return torch.from_numpy(np.ascontiguousarray(stream[: n * (block_size + 1)]).reshape(n, block_size + 1))


class BlockDataset(Dataset):
    """Items {"input_ids": block[:-1], "labels": block[1:]} of packed token blocks."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.blocks[i].long()
        return {"input_ids": block[:-1], "labels": block[1:]}


class _PromptDataset(Dataset):
    def __init__(self, prompts: list[str]) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict[str, str]:
        return {"prompt": self.prompts[i]}


class TextDataModule(PathsAsText, L.LightningDataModule):
    """Next-token prediction on a text corpus, packed into blocks of ``block_size`` tokens.

    Batches are {"input_ids": LongTensor [B, T], "labels": LongTensor [B, T]} with labels the inputs
    shifted by one; predict batches are {"prompt": [str]} with one prompt each.
    """

    def __init__(
        self,
        train_path: str,
        val_path: Optional[str] = None,
        test_path: Optional[str] = None,
        val_fraction: float = 0.1,
        block_size: int = 256,
        batch_size: int = 32,
        tokenizer: str = "byte",
        bpe_vocab_size: int = 4096,
        num_workers: int = 0,
        prompts: Optional[list[str]] = None,
    ) -> None:
        """
        Args:
            train_path: Training corpus: a .txt file, a folder of .txt files (recursive) or a .jsonl
                file whose lines are objects with a "text" field.
            val_path: Validation corpus in the same formats; when unset, the last ``val_fraction`` of
                the training token stream is held out instead.
            test_path: Test corpus in the same formats; when unset, the validation split is used.
            val_fraction: Fraction of the training token stream held out for validation when
                ``val_path`` is unset (0 < val_fraction < 1).
            block_size: Tokens per training sequence (the model's context length).
            batch_size: Sequences per batch.
            tokenizer: "byte" (UTF-8 bytes), "bpe" (byte-level BPE trained on ``train_path``) or a
                folder containing tokenizer_config.json, e.g. an exported model (or a run's .ckpt, read as its export).
            bpe_vocab_size: Vocabulary size of the trained BPE (only for tokenizer="bpe").
            num_workers: DataLoader worker processes.
            prompts: Prompts for ``predict``, decoded ``batch_size`` at a time (left-padded); default ["\\n"]; one
                string (from Python) is one prompt.
        """
        super().__init__()
        check_at_least("data.block_size", block_size, 1)
        check_at_least("data.batch_size", batch_size, 1)
        check_at_least("data.num_workers", num_workers, 0)
        if val_path is None and not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"data.val_fraction must be in (0, 1) when data.val_path is unset, got {val_fraction}; "
                "e.g. 0.1, or give data.val_path"
            )
        if isinstance(prompts, str):  # one prompt, as generate() takes it (list("ROMEO:") is six prompts)
            prompts = [prompts]
        if prompts is not None and (not prompts or not all(isinstance(p, str) for p in prompts)):
            raise ValueError(f"data.prompts must be a non-empty list of strings or unset, got {prompts!r}")
        self.save_hyperparameters()
        self.train_path = train_path
        self.val_path = val_path
        self.test_path = test_path
        self.val_fraction = val_fraction
        self.block_size = block_size
        self.max_len = block_size
        self.batch_size = batch_size
        self.tokenizer_spec = tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.num_workers = num_workers
        self.prompts = list(prompts) if prompts is not None else ["\n"]
        self._tokenizer: Optional[TokenizerLike] = None
        self._train_docs: Optional[list[str]] = None
        self._streams: Optional[dict[str, np.ndarray]] = None
        self._bytes_per_token: dict[str, float] = {}  # per split, from the streams (computed once)
        self._datasets: dict[str, BlockDataset] = {}
        self._data_info: Optional[dict] = None

    # -- lazily built state -------------------------------------------------------------------
    def _documents(self) -> list[str]:
        if self._train_docs is None:
            self._train_docs = read_documents(self.train_path, "data.train_path")
        return self._train_docs

    @property
    def tokenizer(self) -> TokenizerLike:
        """The tokenizer; a "bpe" spec trains it on the training documents at first access."""
        if self._tokenizer is None:
            # trained on the documents' line-aligned pieces (the word counts of the whole documents: pieces end where
            # a pre-token ends): the trainer given one 10 MB document took 1 GB more memory, and was slower
            texts = ((piece for doc in self._documents() for piece in _line_chunks(doc))
                     if self.tokenizer_spec == "bpe" else None)
            self._tokenizer = build_tokenizer(self.tokenizer_spec, texts, self.bpe_vocab_size)
        return self._tokenizer

    @property
    def data_info(self) -> dict:
        """JSON-able facts a model needs: vocab_size, kind, tokenizer type and special ids."""
        if self._data_info is None:
            tok = self.tokenizer
            self._data_info = {
                "kind": "text",
                "vocab_size": int(tok.vocab_size),
                "tokenizer": tok.kind,
                "pad_id": int(tok.pad_id),
                "bos_id": int(tok.bos_id),
                "eos_id": int(tok.eos_id),
                "block_size": int(self.block_size),
            }
        return self._data_info

    def _check_length(self, split: str, stream: np.ndarray, key: str, advice: str) -> None:
        need = self.block_size + 1
        if len(stream) < need:
            raise ValueError(
                f"{key}: the {split} split has {len(stream)} tokens but one block needs block_size + 1 = "
                f"{need}; lower data.block_size (to at most {max(len(stream) - 1, 1)}){advice}"
            )

    def token_streams(self) -> dict[str, np.ndarray]:
        """The int32 token streams of the train, val and test splits (tokenized once, cached)."""
        if self._streams is not None:
            return self._streams
        tok = self.tokenizer
        train = encode_corpus(tok, self._documents())
        self._train_docs = None  # the text is no longer needed
        if self.val_path is None:
            n_val = int(round(len(train) * self.val_fraction))
            train, val = train[: len(train) - n_val], train[len(train) - n_val :]
            self._check_length("training", train, "data.train_path", ", lower data.val_fraction or use a longer corpus")
            self._check_length(
                "validation", val, "data.val_fraction", ", raise data.val_fraction or give data.val_path"
            )
        else:
            self._check_length("training", train, "data.train_path", " or use a longer corpus")
            val = encode_corpus(tok, read_documents(self.val_path, "data.val_path"))
            self._check_length("validation", val, "data.val_path", " or use a longer validation corpus")
        if self.test_path is None:
            test = val
        else:
            test = encode_corpus(tok, read_documents(self.test_path, "data.test_path"))
            self._check_length("test", test, "data.test_path", " or use a longer test corpus")
        self._streams = {"train": train, "val": val, "test": test}
        return self._streams

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 bytes of ``split``'s text per token of that split (loss/token -> bits/byte).

        Each split has its own ratio (a test corpus of digits packs fewer bytes per BPE token than
        the prose it was trained on), so bits per byte of a split must use that split's ratio.
        ``split`` is "train", "val" or "test".
        """
        streams = self.token_streams()
        if split not in streams:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(streams)}")
        stream = streams[split]
        # once per split: a converted 150k-entry vocabulary decodes every id to count its bytes
        if split not in self._bytes_per_token:
            lengths = self.tokenizer.token_byte_lengths()
            # a slice at a time: the lengths of a whole split's tokens are int64, twice its int32 stream
            total = sum(int(lengths[stream[k : k + _BATCH_CHARS]].sum()) for k in range(0, len(stream), _BATCH_CHARS))
            self._bytes_per_token[split] = total / len(stream)
        return self._bytes_per_token[split]

    @property
    def val_bytes_per_token(self) -> float:
        """UTF-8 bytes of the validation text per validation token (``bytes_per_token("val")``)."""
        return self.bytes_per_token("val")

    def _dataset(self, split: str) -> BlockDataset:
        if split not in self._datasets:
            self._datasets[split] = BlockDataset(pack_blocks(self.token_streams()[split], self.block_size))
        return self._datasets[split]

    # -- Lightning hooks ----------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        """Tokenize the corpora (not needed for predict, which only uses prompts)."""
        if stage != "predict":
            self.token_streams()

    def train_dataloader(self) -> DataLoader:
        return make_loader(self._dataset("train"), self.batch_size, True, self.num_workers, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self._dataset("val"), self.batch_size, False, self.num_workers, self.trainer, "val")

    def test_dataloader(self) -> DataLoader:
        return make_loader(self._dataset("test"), self.batch_size, False, self.num_workers, self.trainer, "test")

    def predict_dataloader(self) -> DataLoader:
        return make_loader(_PromptDataset(self.prompts), self.batch_size, False, 0, self.trainer, "predict",
                           advice="give at least one prompt (data.prompts) per process, or predict on fewer devices")
