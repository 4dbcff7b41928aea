"""Synthetic key-information retrieval: multi-query associative recall (MQAR) and multi-needle haystacks.

Token layout (one vocabulary for both tasks, ``vocab_size = 3 + n_keys + n_values + n_filler``)::

    0                          PAD     gap filler in mqar (label -100)
    1                          NEEDLE  marks a needle in the haystack
    2                          QUERY   marks a query at the end of a haystack
    K0 = 3        .. K0+n_keys-1     keys
    V0 = K0+n_keys .. V0+n_values-1  values
    F0 = V0+n_values .. F0+n_filler-1 filler (haystack) tokens

Every sample is exactly ``seq_len`` tokens; ``labels`` is -100 everywhere except at each query's
key, whose label is that key's value (the token the model must output next, and also the next
input token). The model reads ``input_ids`` and is scored where ``labels != -100``.

mqar (Zoology's multi-query associative recall, n = n_pairs, m = n_queries)::

    k1 v1 k2 v2 ... kn vn | PAD ... PAD | q1 a1 q2 a2 ... qm am

  keys are distinct, values are drawn with replacement, the queries are m distinct context keys in
  random order, each followed by its value. The PAD gap (seq_len - 2n - 2m tokens) sits between the
  context and the queries, so a longer ``seq_len`` means a longer recall distance (``test_seq_lens``).

needle (n = n_needles, m = n_queries)::

    f f f NEEDLE k1 v1 f f ... f NEEDLE k2 v2 f ... f | QUERY q1 a1 ... QUERY qm am

  the haystack is seq_len - 3m tokens: n needles (3 tokens each) at uniformly random depths among
  uniformly random filler tokens; keys distinct, values with replacement; the queries ask m distinct
  needle keys in random order.

Sample ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split_code, i])``, so it is
the same whatever the worker, batch or order; train, val and test use different split codes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .files import PathsAsText
from .lm_common import IGNORE_INDEX, check_at_least, make_loader

__all__ = [
    "RetrievalSpec",
    "RetrievalDataset",
    "RetrievalDataModule",
    "make_copy_probe",
    "make_mqar",
    "make_needles",
    "PAD_ID",
    "NEEDLE_ID",
    "QUERY_ID",
    "TASKS",
    "SPLITS",
]

PAD_ID, NEEDLE_ID, QUERY_ID = 0, 1, 2
N_SPECIAL = 3
TASKS = ("mqar", "needle")
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class RetrievalSpec:
    """Shape of one retrieval task; checks itself on construction.

    Args:
        task: "mqar" or "needle".
        seq_len: Tokens per sample.
        n_pairs: Key-value pairs in the mqar context.
        n_needles: Needles in the needle haystack.
        n_queries: Queries per sample; None queries every pair/needle.
        n_keys: Size of the key alphabet.
        n_values: Size of the value alphabet.
        n_filler: Size of the filler (haystack) alphabet.
    """

    task: str = "mqar"
    seq_len: int = 64
    n_pairs: int = 8
    n_needles: int = 4
    n_queries: Optional[int] = None
    n_keys: int = 64
    n_values: int = 64
    n_filler: int = 64

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown retrieval task {self.task!r}; choose one of {TASKS}")
        for name in ("seq_len", "n_pairs", "n_needles", "n_keys", "n_values"):
            check_at_least(name, getattr(self, name), 1)
        check_at_least("n_filler", self.n_filler, 1 if self.task == "needle" else 0)
        if self.n_queries is not None:
            check_at_least("n_queries", self.n_queries, 1)
        items = "n_pairs" if self.task == "mqar" else "n_needles"
        if self.n_items > self.n_keys:
            raise ValueError(
                f"{items}={self.n_items} > n_keys={self.n_keys}: keys must be distinct within a sample; "
                f"raise n_keys or lower {items}"
            )
        if self.queries > self.n_items:
            raise ValueError(
                f"n_queries={self.queries} > {items}={self.n_items}: each query asks a distinct key; "
                f"lower n_queries (or leave it unset to query all)"
            )
        if self.min_seq_len > self.seq_len:
            per = "2 * n_pairs + 2 * n_queries" if self.task == "mqar" else "3 * n_needles + 3 * n_queries"
            raise ValueError(
                f"seq_len={self.seq_len} is too short for task {self.task!r}: {per} = {self.min_seq_len} "
                f"tokens are needed; raise seq_len or lower {items}/n_queries"
            )

    @property
    def n_items(self) -> int:
        """Pairs (mqar) or needles (needle) per sample."""
        return self.n_pairs if self.task == "mqar" else self.n_needles

    @property
    def queries(self) -> int:
        """Queries per sample (n_queries, defaulting to all items)."""
        return self.n_items if self.n_queries is None else self.n_queries

    @property
    def min_seq_len(self) -> int:
        """Shortest seq_len that fits the items and queries."""
        per = 2 if self.task == "mqar" else 3
        return per * (self.n_items + self.queries)

    @property
    def key_start(self) -> int:
        return N_SPECIAL

    @property
    def value_start(self) -> int:
        return N_SPECIAL + self.n_keys

    @property
    def filler_start(self) -> int:
        return N_SPECIAL + self.n_keys + self.n_values

    @property
    def vocab_size(self) -> int:
        return N_SPECIAL + self.n_keys + self.n_values + self.n_filler

    def with_seq_len(self, seq_len: int) -> "RetrievalSpec":
        """The same task at another length (validated again)."""
        return dataclasses.replace(self, seq_len=seq_len)

    def sample(self, seed: int = 0, split: str = "train", index: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels), each int64 [seq_len], of sample ``index`` of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {tuple(SPLITS)}")
        check_at_least("seed", seed, 0)
        check_at_least("index", index, 0)
        # one generator per sample (what keeps sample i the same whatever the batch, worker or order) is most of the
        # cost (mqar, 32 pairs: ~70 us to seed it, ~160 us of draws, ~20 us to lay the tokens out); a generator per
        # batch would draw other samples, so only the layout could be vectorized (a few % of data time)
        rng = np.random.default_rng([seed, SPLITS[split], index])
        if self.task == "mqar":
            return self._mqar(rng)
        return self._needle(rng)

    def batch(self, size: int, seed: int = 0, split: str = "train", start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``start .. start+size-1`` stacked: (input_ids, labels), each int64 [size, seq_len]."""
        rows = [self.sample(seed, split, start + i) for i in range(size)]
        return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])

    def _draw_items(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.n_items
        keys = rng.choice(self.n_keys, size=n, replace=False) + self.key_start
        values = rng.integers(0, self.n_values, size=n) + self.value_start
        asked = rng.choice(n, size=self.queries, replace=False)  # distinct items, random order
        return keys, values, asked

    def _mqar(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n, m, T = self.n_pairs, self.queries, self.seq_len
        keys, values, asked = self._draw_items(rng)
        ids = np.full(T, PAD_ID, dtype=np.int64)
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        ids[0 : 2 * n : 2] = keys
        ids[1 : 2 * n : 2] = values
        q0 = T - 2 * m
        ids[q0::2] = keys[asked]
        ids[q0 + 1 :: 2] = values[asked]
        labels[q0::2] = values[asked]
        return ids, labels

    def _needle(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        n, m, T = self.n_needles, self.queries, self.seq_len
        keys, values, asked = self._draw_items(rng)
        hay_len = T - 3 * m
        n_fill = hay_len - 3 * n
        filler = rng.integers(0, self.n_filler, size=n_fill) + self.filler_start
        depths = np.sort(rng.integers(0, n_fill + 1, size=n))  # filler tokens before each needle
        starts = depths + 3 * np.arange(n)
        ids = np.empty(T, dtype=np.int64)
        is_needle = np.zeros(hay_len, dtype=bool)
        for offset, column in enumerate((np.full(n, NEEDLE_ID), keys, values)):
            ids[starts + offset] = column
            is_needle[starts + offset] = True
        ids[:hay_len][~is_needle] = filler
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        q = hay_len + 3 * np.arange(m)
        ids[q] = QUERY_ID
        ids[q + 1] = keys[asked]
        ids[q + 2] = values[asked]
        labels[q + 1] = values[asked]
        return ids, labels


def make_mqar(
    n_samples: int,
    seq_len: int = 64,
    n_pairs: int = 8,
    n_queries: Optional[int] = None,
    n_keys: int = 64,
    n_values: int = 64,
    *,
    seed: int = 0,
    split: str = "train",
    start: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """MQAR samples ``start .. start+n_samples-1``: (input_ids, labels), each int64 [n_samples, seq_len]."""
    spec = RetrievalSpec("mqar", seq_len, n_pairs=n_pairs, n_queries=n_queries, n_keys=n_keys, n_values=n_values)
    return spec.batch(n_samples, seed, split, start)


def make_needles(
    n_samples: int,
    seq_len: int = 64,
    n_needles: int = 4,
    n_queries: Optional[int] = None,
    n_keys: int = 64,
    n_values: int = 64,
    n_filler: int = 64,
    *,
    seed: int = 0,
    split: str = "train",
    start: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Needle-in-a-haystack samples: (input_ids, labels), each int64 [n_samples, seq_len]."""
    spec = RetrievalSpec(
        "needle", seq_len, n_needles=n_needles, n_queries=n_queries, n_keys=n_keys, n_values=n_values, n_filler=n_filler
    )
    return spec.batch(n_samples, seed, split, start)


def make_copy_probe(
    stream: np.ndarray, n_samples: int, seg_len: int = 64, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """In-context copy (induction) retrieval probe over a natural-text token ``stream``.

    Each sample is a random segment of ``stream`` followed by the same segment again
    (``[n_samples, 2 * seg_len]``). Labels (already shifted: ``labels[t]`` is the target of the
    prediction at ``t``) mark only the second copy after its first token, which can be retrieved from
    the first copy but not predicted from the language alone; everything else is ``IGNORE_INDEX``.
    Accuracy on these labels measures retrieval from context in the model's own vocabulary, so it
    applies to any LM trained on text (unlike MQAR, which needs its own vocabulary).
    """
    stream = np.asarray(stream, dtype=np.int64)
    if seg_len < 2 or n_samples < 1:
        raise ValueError(f"need seg_len >= 2 and n_samples >= 1, got seg_len={seg_len}, n_samples={n_samples}")
    if len(stream) < seg_len:
        raise ValueError(f"the token stream has {len(stream)} tokens, fewer than seg_len={seg_len}")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - seg_len + 1, size=n_samples)
    segs = stream[starts[:, None] + np.arange(seg_len)]
    ids = np.concatenate([segs, segs], axis=1)
    labels = np.full_like(ids, IGNORE_INDEX)
    labels[:, seg_len:-1] = ids[:, seg_len + 1 :]
    return ids, labels


class RetrievalDataset(Dataset):
    """``size`` samples of a RetrievalSpec, generated on access (deterministic per index)."""

    def __init__(self, spec: RetrievalSpec, size: int, seed: int, split: str) -> None:
        self.spec, self.size, self.seed, self.split = spec, size, seed, split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.size:
            raise IndexError(f"sample {i} out of range for a dataset of {self.size}")
        ids, labels = self.spec.sample(self.seed, self.split, i)
        return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels)}


class RetrievalDataModule(PathsAsText, L.LightningDataModule):
    """Synthetic key-information retrieval (mqar or multi-needle); see the module docstring for the layout."""

    def __init__(
        self,
        task: str = "mqar",
        seq_len: int = 64,
        n_pairs: int = 8,
        n_needles: int = 4,
        n_queries: Optional[int] = None,
        n_keys: int = 64,
        n_values: int = 64,
        n_filler: int = 64,
        train_size: int = 20000,
        val_size: int = 512,
        test_size: int = 512,
        test_seq_lens: Optional[list[int]] = None,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            task: "mqar" (multi-query associative recall) or "needle" (multi-needle in a haystack).
            seq_len: Tokens per training/validation sample.
            n_pairs: Key-value pairs in the context (mqar).
            n_needles: Needles hidden in the haystack (needle).
            n_queries: Queries per sample; unset queries every pair/needle.
            n_keys: Size of the key alphabet (keys are distinct within a sample).
            n_values: Size of the value alphabet.
            n_filler: Size of the haystack filler alphabet.
            train_size: Training samples per epoch.
            val_size: Validation samples.
            test_size: Test samples (per length when test_seq_lens is set).
            test_seq_lens: Test lengths; when set, test_dataloader returns one loader per length
                (accuracy vs context length).
            batch_size: Samples per batch.
            seed: Base seed; train, val and test draw from disjoint seed streams.
            num_workers: DataLoader worker processes.
        """
        super().__init__()
        self.save_hyperparameters()
        self.spec = RetrievalSpec(task, seq_len, n_pairs, n_needles, n_queries, n_keys, n_values, n_filler)
        for name, value, minimum in (
            ("train_size", train_size, 1),
            ("val_size", val_size, 1),
            ("test_size", test_size, 1),
            ("batch_size", batch_size, 1),
            ("seed", seed, 0),
            ("num_workers", num_workers, 0),
        ):
            check_at_least(f"data.{name}", value, minimum)
        if test_seq_lens is not None and not test_seq_lens:
            raise ValueError("data.test_seq_lens is empty; list the test lengths or leave it unset")
        if test_seq_lens and len(set(test_seq_lens)) < len(test_seq_lens):
            raise ValueError(f"data.test_seq_lens {list(test_seq_lens)} repeats a length (its loaders would report "
                             "under one name, test/len<L>/...); list each length once")
        self.test_specs = [self.spec.with_seq_len(n) for n in test_seq_lens] if test_seq_lens else [self.spec]
        # the lengths the test metrics are named by (test/len<L>/acc); None without test_seq_lens: test/acc, as val/acc
        self.test_seq_lens: Optional[list[int]] = [s.seq_len for s in self.test_specs] if test_seq_lens else None
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.tokenizer = None
        self.max_len = max(s.seq_len for s in (self.spec, *self.test_specs))

    @property
    def data_info(self) -> dict:
        """JSON-able facts a model needs: vocab_size, kind, task and the special ids."""
        return {
            "kind": "retrieval",
            "task": self.spec.task,
            "vocab_size": self.spec.vocab_size,
            "seq_len": self.spec.seq_len,
            "max_len": self.max_len,
            "pad_id": PAD_ID,
        }

    def _loader(self, spec: RetrievalSpec, split: str, shuffle: bool) -> DataLoader:
        dataset = RetrievalDataset(spec, self.sizes[split], self.seed, split)
        return make_loader(dataset, self.batch_size, shuffle, self.num_workers, self.trainer, split)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.spec, "train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.spec, "val", False)

    def test_dataloader(self):
        """One loader, or a list of loaders (one per ``test_seq_lens`` entry, in that order)."""
        loaders = [self._loader(spec, "test", False) for spec in self.test_specs]
        return loaders if self.test_seq_lens else loaders[0]

    def predict_dataloader(self) -> DataLoader:
        raise ValueError(
            "the synthetic retrieval data has no prompts to complete: test the model (python -m zoo test) for its "
            "recall accuracy, or generate from Python with model.generate(token_ids)"
        )
