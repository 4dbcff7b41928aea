"""Synthetic retrieval data: labels re-derived by scanning each sequence, determinism, splits, errors."""

import json

import numpy as np
import pytest
import torch

from zoo.data.retrieval import RetrievalDataModule, RetrievalDataset, RetrievalSpec, make_mqar, make_needles

# Layout written out from the module docstring, independent of the code's constants.
PAD, NEEDLE, QUERY, FIRST_KEY = 0, 1, 2, 3


def ranges(n_keys, n_values, n_filler):
    keys = range(FIRST_KEY, FIRST_KEY + n_keys)
    values = range(keys.stop, keys.stop + n_values)
    filler = range(values.stop, values.stop + n_filler)
    return keys, values, filler


def check_mqar(ids, labels, n_pairs, n_queries, n_keys, n_values):
    keys, values, _ = ranges(n_keys, n_values, 0)
    ids, labels = ids.tolist(), labels.tolist()
    T = len(ids)
    context = ids[: 2 * n_pairs]
    assert all(k in keys for k in context[0::2]) and all(v in values for v in context[1::2])
    assert len(set(context[0::2])) == n_pairs, "keys must be distinct"
    assert ids[2 * n_pairs : T - 2 * n_queries] == [PAD] * (T - 2 * n_pairs - 2 * n_queries)
    labelled = [t for t in range(T) if labels[t] != -100]
    assert labelled == list(range(T - 2 * n_queries, T, 2))
    assert len({ids[t] for t in labelled}) == n_queries
    for t in labelled:
        first = ids.index(ids[t])  # scan for the first time this key appeared
        assert first < 2 * n_pairs and first % 2 == 0
        assert labels[t] == ids[first + 1], "label must be the value that followed the key in the context"
        assert ids[t + 1] == labels[t]


def check_needle(ids, labels, n_needles, n_queries, n_keys, n_values, n_filler):
    keys, values, filler = ranges(n_keys, n_values, n_filler)
    ids, labels = ids.tolist(), labels.tolist()
    T = len(ids)
    hay = T - 3 * n_queries
    needles, t = {}, 0
    while t < hay:  # scan the haystack
        if ids[t] == NEEDLE:
            assert ids[t + 1] in keys and ids[t + 2] in values and ids[t + 1] not in needles
            needles[ids[t + 1]] = ids[t + 2]
            t += 3
        else:
            assert ids[t] in filler
            t += 1
    assert t == hay and len(needles) == n_needles
    labelled = [t for t in range(T) if labels[t] != -100]
    assert labelled == [hay + 3 * i + 1 for i in range(n_queries)]
    assert len({ids[t] for t in labelled}) == n_queries
    for t in labelled:
        assert ids[t - 1] == QUERY
        assert labels[t] == needles[ids[t]] == ids[t + 1]


def test_mqar_labels_match_context():
    cases = [dict(seq_len=64, n_pairs=8), dict(seq_len=40, n_pairs=6, n_queries=3), dict(seq_len=24, n_pairs=6)]
    for kw in cases:
        ids, labels = make_mqar(200, n_keys=16, n_values=5, seed=3, **kw)
        assert ids.shape == labels.shape == (200, kw["seq_len"]) and ids.dtype == np.int64
        for x, y in zip(ids, labels):
            check_mqar(x, y, kw["n_pairs"], kw.get("n_queries") or kw["n_pairs"], 16, 5)


def test_needle_labels_match_haystack():
    cases = [dict(seq_len=64, n_needles=4), dict(seq_len=100, n_needles=5, n_queries=2), dict(seq_len=18, n_needles=3)]
    for kw in cases:
        ids, labels = make_needles(200, n_keys=10, n_values=7, n_filler=9, seed=1, **kw)
        assert ids.shape == labels.shape == (200, kw["seq_len"])
        for x, y in zip(ids, labels):
            check_needle(x, y, kw["n_needles"], kw.get("n_queries") or kw["n_needles"], 10, 7, 9)


def test_randomness_is_spread():
    ids, labels = make_needles(300, seq_len=64, n_needles=1, n_queries=1, seed=0)
    depths = (ids == NEEDLE).argmax(axis=1)
    assert depths.min() <= 5 and depths.max() >= 55  # needles at shallow and deep positions
    ids, labels = make_mqar(300, seq_len=32, n_pairs=4, n_keys=8, n_values=8)
    first_query = ids[:, 24]
    assert len(set((first_query == ids[:, 0]).tolist())) == 2  # query order is shuffled
    assert set(labels[labels != -100].tolist()) == set(range(11, 19))  # every value occurs


def test_determinism_independent_of_order_and_workers():
    spec = RetrievalSpec("needle", seq_len=48, n_needles=3)
    a = spec.batch(10, seed=7, split="val")
    b = spec.batch(10, seed=7, split="val")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    ds = RetrievalDataset(spec, 10, seed=7, split="val")
    for i in reversed(range(10)):
        assert ds[i]["input_ids"].tolist() == a[0][i].tolist()
    tail = spec.batch(4, seed=7, split="val", start=6)
    assert np.array_equal(tail[0], a[0][6:])
    other_seed = spec.batch(10, seed=8, split="val")
    assert not np.array_equal(other_seed[0], a[0])

    dm0 = RetrievalDataModule(val_size=40, batch_size=8, seed=5)
    dm2 = RetrievalDataModule(val_size=40, batch_size=8, seed=5, num_workers=2)
    for b0, b2 in zip(dm0.val_dataloader(), dm2.val_dataloader()):
        assert torch.equal(b0["input_ids"], b2["input_ids"]) and torch.equal(b0["labels"], b2["labels"])


def test_splits_differ():
    dm = RetrievalDataModule(task="mqar", train_size=64, val_size=64, test_size=64, batch_size=64)
    torch.manual_seed(0)
    batches = {name: next(iter(getattr(dm, f"{name}_dataloader")()))["input_ids"] for name in ("train", "val", "test")}
    train_rows = {tuple(r) for r in batches["train"].tolist()}
    val_rows = {tuple(r) for r in batches["val"].tolist()}
    test_rows = {tuple(r) for r in batches["test"].tolist()}
    assert not (train_rows & val_rows) and not (train_rows & test_rows) and not (val_rows & test_rows)


def test_datamodule_shapes_and_info():
    dm = RetrievalDataModule(task="needle", seq_len=32, n_needles=2, n_keys=20, n_values=30, n_filler=10,
                             train_size=50, val_size=20, test_size=12, test_seq_lens=[32, 64, 128], batch_size=8)
    info = dm.data_info
    assert json.loads(json.dumps(info)) == info
    assert info["kind"] == "retrieval" and info["task"] == "needle" and info["vocab_size"] == 3 + 20 + 30 + 10
    assert dm.tokenizer is None and dm.max_len == 128
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert sum(b["input_ids"].shape[0] for b in train) == 50
    for b in train:
        assert set(b) == {"input_ids", "labels"}
        assert b["input_ids"].dtype == torch.long and b["labels"].dtype == torch.long
        assert b["input_ids"].shape[1] == 32 and b["input_ids"].max() < info["vocab_size"]
    loaders = dm.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 3
    for loader, T in zip(loaders, [32, 64, 128]):
        batches = list(loader)
        assert sum(b["input_ids"].shape[0] for b in batches) == 12
        for b in batches:
            assert b["input_ids"].shape[1] == T
            for x, y in zip(b["input_ids"], b["labels"]):
                check_needle(x, y, 2, 2, 20, 30, 10)
    single = RetrievalDataModule(test_size=4, batch_size=4).test_dataloader()
    assert next(iter(single))["input_ids"].shape == (4, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="copy"), "unknown retrieval task 'copy'"),
        (dict(n_pairs=80, n_keys=64, seq_len=400), r"n_pairs=80 > n_keys=64"),
        (dict(n_pairs=20, seq_len=64), r"seq_len=64 is too short for task 'mqar': 2 \* n_pairs \+ 2 \* n_queries = 80"),
        (dict(n_pairs=4, n_queries=5), r"n_queries=5 > n_pairs=4"),
        (dict(task="needle", n_needles=8, seq_len=40), r"3 \* n_needles \+ 3 \* n_queries = 48"),
        (dict(task="needle", n_filler=0), r"n_filler must be an integer >= 1"),
        (dict(n_pairs=8, test_seq_lens=[64, 16]), r"seq_len=16 is too short"),
        (dict(test_seq_lens=[]), "test_seq_lens is empty"),
        (dict(batch_size=0), r"data\.batch_size must be an integer >= 1"),
        (dict(n_values=0), r"n_values must be an integer >= 1"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RetrievalDataModule(**kwargs)


def test_generator_argument_errors():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        RetrievalSpec().sample(split="dev")
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        RetrievalSpec().sample(seed=-1)


def test_copy_probe_repeats_a_text_segment_and_labels_only_the_retrievable_part():
    from zoo.data.retrieval import make_copy_probe

    stream = np.arange(1000) * 7 % 251  # no repeated 2-grams inside a segment
    ids, labels = make_copy_probe(stream, n_samples=5, seg_len=16, seed=3)
    assert ids.shape == labels.shape == (5, 32)
    for row, lab in zip(ids, labels):
        start = int(np.flatnonzero(stream == row[0])[0])
        np.testing.assert_array_equal(row[:16], stream[start : start + 16])  # a real segment of the stream
        np.testing.assert_array_equal(row[16:], row[:16])
        # the prediction at t (second copy) must name the token after the one it copies
        expected = np.full(32, -100)
        expected[16:31] = row[1:16]
        np.testing.assert_array_equal(lab, expected)
    again, _ = make_copy_probe(stream, n_samples=5, seg_len=16, seed=3)
    np.testing.assert_array_equal(ids, again)
    with pytest.raises(ValueError, match="fewer than seg_len"):
        make_copy_probe(stream[:10], n_samples=1, seg_len=16)


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cpu", False), (None, False)])
def test_loaders_pin_memory_when_the_trainer_runs_on_a_gpu(device, pinned, tmp_path):
    """Every datamodule's loaders pin their batches (asynchronous host-to-GPU copies) when the trainer runs on
    CUDA, and only then; no datamodule offered it before."""
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from zoo.data import TextDataModule
    from zoo.data.str import STRDataModule
    from zoo.data.ts import CSVTSDataModule
    from zoo.data.vlm import SyntheticVLMDataModule

    trainer = None if device is None else SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)),
                                                          world_size=1, global_rank=0)
    (tmp_path / "t.txt").write_text("hello world " * 200)
    n = 400
    pd.DataFrame({"date": pd.date_range("2020-01-01", periods=n, freq="h"), "a": np.arange(n) % 7 * 1.0,
                  "b": np.arange(n) % 5 * 1.0}).to_csv(tmp_path / "s.csv", index=False)
    modules = [
        RetrievalDataModule(seq_len=32, n_pairs=4, train_size=64, val_size=64, batch_size=8, seed=0),
        TextDataModule(train_path=str(tmp_path / "t.txt"), block_size=16, batch_size=4, tokenizer="byte"),
        STRDataModule(charset="36", max_length=4, synthetic={"train": 4, "val": 4, "test": 4}, synth_max_len=4, batch_size=4),
        CSVTSDataModule(str(tmp_path / "s.csv"), lookback=24, horizon=8, split="ratio", batch_size=8),
        SyntheticVLMDataModule(n_train=8, n_val=8, n_test=8, batch_size=4),
    ]
    for dm in modules:
        dm.trainer = trainer
        dm.setup("fit")
        for dl in (dm.train_dataloader(), dm.val_dataloader()):
            assert dl.pin_memory is pinned, type(dm).__name__
