"""The rendered-crop cache of the synthetic STR data: what it serves must be exactly what rendering
gives (the renderer itself is the reference), it is reused and never read when stale or damaged."""

import json
import pickle

import numpy as np
import pytest
import torch

import zoo.data.str as zstr
from zoo.data.charsets import Charset
from zoo.data.str import STRDataModule, SyntheticSTRDataset, to_tensor

KW = dict(seed=3, min_len=1, max_len=6, strength=0.4)


def _ds(tmp_path, n=10, start=0, **kw):
    return SyntheticSTRDataset(n, Charset("36", 6), "train", start=start, cache_dir=tmp_path, **{**KW, **kw})


def test_cached_samples_equal_rendered_ones(tmp_path):
    ds = _ds(tmp_path, n=10, start=5)
    path = ds.build_cache(workers=2)  # two processes, several chunks
    assert ds.cached_count() == 15 and path.is_dir()
    plain = SyntheticSTRDataset(10, Charset("36", 6), "train", start=5, **KW)
    for i in range(10):
        (img_c, text_c), (img_r, text_r) = ds[i], plain[i]
        assert text_c == text_r
        assert torch.equal(to_tensor(img_c), to_tensor(img_r))


def test_a_built_cache_is_reused_without_rendering(tmp_path, monkeypatch):
    _ds(tmp_path, n=8).build_cache(workers=1)

    def no_render(*a, **k):
        raise AssertionError("rendered although the cache holds the sample")

    monkeypatch.setattr(zstr, "make_sample", no_render)
    again = _ds(tmp_path, n=4, start=4)  # a window inside the cached samples
    assert again.build_cache() == again.cache_path()
    assert [again[i][1] for i in range(4)]  # read, not rendered
    with pytest.raises(AssertionError, match="rendered although"):
        _ds(tmp_path, n=9).build_cache(workers=1)  # one sample more: the cache is rebuilt larger


def test_other_settings_use_another_cache(tmp_path):
    a, b = _ds(tmp_path), _ds(tmp_path, strength=0.5)
    assert a.cache_path() != b.cache_path()
    a.build_cache(workers=1)
    assert b.cached_count() == 0
    with pytest.raises(FileNotFoundError, match="holds 0 samples.*build it first"):
        b[0]


def test_a_larger_window_extends_the_cache(tmp_path):
    small = _ds(tmp_path, n=3)
    small.build_cache(workers=1)
    big = _ds(tmp_path, n=6)
    with pytest.raises(FileNotFoundError, match="holds 3 samples, this dataset reads samples 0 to 5"):
        big[0]
    big.build_cache(workers=1)
    assert big.cached_count() == 6
    assert [big[i][1] for i in range(6)] == [SyntheticSTRDataset(6, Charset("36", 6), "train", **KW)[i][1]
                                               for i in range(6)]


def test_incomplete_or_damaged_caches_are_refused(tmp_path):
    ds = _ds(tmp_path, n=4)
    path = ds.build_cache(workers=1)
    (path / "texts.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(ValueError, match="damaged"):
        _ds(tmp_path, n=4)[0]
    meta = json.loads((path / "meta.json").read_text())
    meta["key"]["strength"] = 0.9  # a folder whose recorded settings are not this dataset's
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="built for other settings"):
        _ds(tmp_path, n=4)[0]
    (path / "meta.json").unlink()  # no meta.json: an unfinished cache, never read
    assert _ds(tmp_path, n=4).cached_count() == 0


def test_bad_worker_count_is_refused():
    with pytest.raises(ValueError, match="synth_cache_workers must be an integer >= 0"):
        STRDataModule(synth_cache="x", synth_cache_workers=-1)


def test_the_memory_map_is_not_pickled(tmp_path):
    ds = _ds(tmp_path, n=64)
    ds.build_cache(workers=1)
    ds[0]
    assert isinstance(ds._cached[0], np.memmap)
    assert len(pickle.dumps(ds)) < 64 * 32 * 128 * 3  # the crops stay on disk


def test_datamodule_batches_are_the_same_with_the_cache(tmp_path):
    def batches(**kw):
        dm = STRDataModule(charset="36", max_length=6, synthetic={"train": 12, "val": 0, "test": 5},
                           synth_seed=1, synth_max_len=6, synth_strength=0.4, synth_train_start=2,
                           batch_size=4, eval_batch_size=5, **kw)
        dm.prepare_data()
        torch.manual_seed(0)
        return list(dm.train_dataloader()) + list(dm.test_dataloader())

    cached, plain = batches(synth_cache=str(tmp_path), synth_cache_workers=1), batches()
    assert sorted(p.name.split("_")[1] for p in tmp_path.iterdir()) == ["test", "train"]
    assert len(cached) == len(plain) == 4
    for c, p in zip(cached, plain):
        assert c["texts"] == p["texts"]
        assert torch.equal(c["images"], p["images"]) and torch.equal(c["targets"], p["targets"])


@pytest.fixture()
def bench(tmp_path, monkeypatch, load_script):
    mod = load_script("bench_str")
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    return mod


def test_bench_run_trains_the_same_from_the_prepared_cache(bench, tmp_path, monkeypatch):
    """--prepare-cache then a run with --synth-cache: the same weights and test readings as rendering
    each crop (CPU, seeded), and the run renders nothing itself."""
    import argparse

    args = argparse.Namespace(steps=3, batch_size=4, n_test=6, csd=False, synth_cache=str(tmp_path / "cache"))
    bench.prepare_cache(args)
    kw = dict(arch="str-diff-tiny", steps=3, batch_size=4, n_test=6, lr=1e-3)
    plain_row, plain = bench.run(**kw)

    def no_render(*a, **k):
        raise AssertionError("a crop was rendered although the cache was prepared")

    monkeypatch.setattr(zstr, "make_sample", no_render)
    cached_row, cached = bench.run(**kw, synth_cache=args.synth_cache)
    for (name, a), b in zip(plain.model.state_dict().items(), cached.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert cached.readings["test"] == plain.readings["test"]  # every test crop read the same
    assert cached_row["test_accuracy"] == plain_row["test_accuracy"]


def test_a_cache_another_process_renamed_into_place_meanwhile_is_kept(tmp_path, monkeypatch):
    ds = _ds(tmp_path, n=3)
    real_replace = zstr.os.replace

    def racing(src, dst):  # the other process finishes first, then our rename finds its folder
        monkeypatch.setattr(zstr.os, "replace", real_replace)
        with monkeypatch.context() as m:
            m.setattr(zstr.os, "getpid", lambda: -7)  # another process: its own temporary folder
            _ds(tmp_path, n=3).build_cache(workers=1)
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(zstr.os, "replace", racing)
    assert ds.build_cache(workers=1) == ds.cache_path()
    assert ds.cached_count() == 3 and not list(tmp_path.glob(".*"))  # our temporary folder is gone
    assert [ds[i][1] for i in range(3)] == [SyntheticSTRDataset(3, Charset("36", 6), "train", **KW)[i][1]
                                              for i in range(3)]
