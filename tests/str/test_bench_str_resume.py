"""scripts/bench_str.py --resume-dir: a long run split over several processes continues where it stopped."""

import json
import math
import tempfile

import numpy as np
import pytest

import zoo.data.str as str_data
from zoo.data.charsets import Charset
from zoo.data.str import SyntheticSTRDataset
from zoo.data.str_synth import make_sample


@pytest.fixture()
def bench(tmp_path, monkeypatch, load_script):
    mod = load_script("bench_str")
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    return mod


def test_synthetic_start_continues_the_stream():
    cs = Charset("36", 6)
    ds = SyntheticSTRDataset(3, cs, "train", seed=4, min_len=1, max_len=6, strength=0.4, start=5)
    img, text = ds[0]
    ref_img, ref_text = make_sample(4, "train", 5, cs.chars, min_len=1, max_len=6, strength=0.4, size=(32, 128), fonts=ds.fonts)
    assert text == ref_text and np.array_equal(np.asarray(img), np.asarray(ref_img))
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="start"):
        SyntheticSTRDataset(3, cs, start=-1)


def test_resumed_run_keeps_schedule_and_continues_on_unseen_words(bench, tmp_path, monkeypatch):
    starts = []
    real = str_data.STRDataModule

    def recording(*a, **kw):
        starts.append((kw.get("synth_train_start", 0), kw["synthetic"]["train"]))
        return real(*a, **kw)

    monkeypatch.setattr(str_data, "STRDataModule", recording)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where a run without out_dir keeps its test metrics
    kw = dict(arch="str-diff-tiny", steps=6, batch_size=4, n_test=8, lr=1e-3, resume_dir=tmp_path / "long")
    row, task = bench.run(**kw, stop_at=2)
    assert row is None and (tmp_path / "long" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "long" / "progress.json").read_text())["done"] == 2
    row, task = bench.run(**kw, stop_at=4)
    assert row is None
    # the cosine schedule over all 6 steps (no warm-up at this length), not restarted over the remaining ones
    floor = task.hparams["min_lr_ratio"]
    expected = 1e-3 * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * 4 / 6)))
    assert task.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)
    (tmp_path / "long" / "last.ckpt").rename(tmp_path / "moved.ckpt")
    with pytest.raises(SystemExit, match="last.ckpt is missing"):
        bench.run(**kw)
    (tmp_path / "moved.ckpt").rename(tmp_path / "long" / "last.ckpt")
    row, task = bench.run(**kw)
    assert row["steps"] == 6 and row["test_count"] == 8 and row["parts"] == 3
    assert not any(scratch.iterdir()), "a run without out_dir left its scratch folder behind"
    # the per-font breakdown covers the same test crops as the combined figure
    by_font = row["test_by_font"]
    assert sum(f["count"] for f in by_font.values()) == 8
    assert sum(f["one_minus_ned"] * f["count"] for f in by_font.values()) / 8 == pytest.approx(row["test_one_minus_ned"], abs=0.01)
    assert task.trainer.global_step == 6
    # every part trains on the words after the ones already seen
    assert starts == [(0, 24), (8, 16), (16, 8)]
    with pytest.raises(SystemExit, match="is complete"):
        bench.run(**kw)
    # another setting cannot continue this run
    with pytest.raises(SystemExit, match=r"other settings \(\['lr'\]\)"):
        bench.run(**{**kw, "lr": 2e-3})


def kill_at_step_3(bench, monkeypatch):
    """Checkpoints every 2 steps and a training step that raises at step 3 (a killed part); returns the
    function that puts the real training step back."""
    from zoo.tasks.str import RecognitionTask

    monkeypatch.setattr(bench, "SAVE_EVERY", 2)
    real_step = RecognitionTask.training_step

    def dies_at_step_3(self, batch, batch_idx):
        if self.trainer.global_step == 3:
            raise KeyboardInterrupt("killed")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(RecognitionTask, "training_step", dies_at_step_3)
    return lambda: monkeypatch.setattr(RecognitionTask, "training_step", real_step)


def test_a_killed_part_resumes_from_its_last_periodic_checkpoint(bench, tmp_path, monkeypatch):
    revive = kill_at_step_3(bench, monkeypatch)
    kw = dict(arch="str-diff-tiny", steps=5, batch_size=4, n_test=8, lr=1e-3, resume_dir=tmp_path / "long")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        bench.run(**kw)
    assert json.loads((tmp_path / "long" / "progress.json").read_text())["done"] == 2
    revive()
    row, task = bench.run(**kw)
    assert task.trainer.global_step == 5 and row["parts"] == 2


def test_validation_history_survives_a_kill_and_is_not_repeated(bench, tmp_path, monkeypatch):
    """A validation after the last checkpoint is on disk at once; the resumed part drops it and trains again."""
    real_dm = str_data.STRDataModule

    def small_val(*a, **kw):  # 8 validation crops instead of 256 keep the test fast
        kw["synthetic"] = {**kw["synthetic"], "val": 8}
        return real_dm(*a, **kw)

    monkeypatch.setattr(str_data, "STRDataModule", small_val)
    revive = kill_at_step_3(bench, monkeypatch)
    kw = dict(arch="str-diff-tiny", steps=5, batch_size=4, n_test=8, lr=1e-3, val_every=1, resume_dir=tmp_path / "long")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        bench.run(**kw)
    state = json.loads((tmp_path / "long" / "progress.json").read_text())
    # checkpoint at step 2; the validation at step 3 came after it and is recorded all the same
    assert state["done"] == 2 and [v["step"] for v in state["val"]] == [1, 2, 3]
    revive()
    row, _ = bench.run(**kw)
    assert [v["step"] for v in row["val_history"]] == [1, 2, 3, 4, 5]
    assert all("val/accuracy" in v for v in row["val_history"])


def test_accuracy_by_font_groups_readings_by_the_rendered_font(bench, monkeypatch):
    import zoo.data.str_synth as synth

    used = []
    real = synth._font
    monkeypatch.setattr(synth, "_font", lambda stem, size: used.append(stem) or real(stem, size))
    d = bench.DATA
    chars = Charset(d["charset"], d["max_length"]).chars
    for i in range(30):
        make_sample(3, "test", i, chars, min_len=d["synth_min_len"], max_len=d["synth_max_len"])
    readings = {("synthetic", i): (float(i % 3 == 0), 0.5 + 0.01 * i) for i in range(30)}
    got = bench.accuracy_by_font(readings, data_seed=3)
    assert set(got) == set(used)
    for font, r in got.items():
        idx = [i for i in range(30) if used[i] == font]
        assert r["count"] == len(idx)
        assert r["accuracy"] == pytest.approx(100 * sum(i % 3 == 0 for i in idx) / len(idx), abs=0.01)
        assert r["one_minus_ned"] == pytest.approx(100 * sum(0.5 + 0.01 * i for i in idx) / len(idx), abs=0.01)


def test_a_single_arm_run_resumes_from_the_command_line(bench, tmp_path, monkeypatch):
    """--attn diff --resume-dir D --budget-min 0 stops after its first step, checkpointed, and writes no arm
    result; the same command without the budget continues the run and then writes it."""
    import sys

    argv = ["bench_str.py", "--attn", "diff", "--steps", "3", "--batch-size", "4", "--n-test", "8",
            "--resume-dir", str(tmp_path / "arm")]
    monkeypatch.setattr(sys, "argv", [*argv, "--budget-min", "0"])
    bench.main()
    assert json.loads((tmp_path / "arm" / "progress.json").read_text())["done"] == 1
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("arm_*"))
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("ZOO_ATTN_BACKEND", "naive")
    bench.main()
    row = json.loads((tmp_path / "results" / "arm_diff_3_s0_b4.json").read_text())["runs"][0]
    assert row["steps"] == 3 and row["parts"] == 2 and row["test_count"] == 8
    assert row["attn_backend"] == "naive"  # an environment-chosen backend is recorded
    assert not (tmp_path / "arm" / "last.ckpt").exists()  # a finished run keeps no stale checkpoint
    for bad in (["--merge"], ["--csd"]):
        monkeypatch.setattr(sys, "argv", ["bench_str.py", *bad, "--resume-dir", str(tmp_path / "x")])
        with pytest.raises(SystemExit):
            bench.main()


def test_a_run_stopped_before_its_first_checkpoint_starts_afresh(bench, tmp_path):
    """Validation records progress before the first checkpoint exists; a part killed then (step 0 done, no
    last.ckpt) is started again from scratch by the same command instead of being refused."""
    kw = dict(arch="str-diff-tiny", steps=3, batch_size=4, n_test=8, lr=1e-3, resume_dir=tmp_path / "r")
    assert bench.run(**kw, stop_at=1)[0] is None
    state = json.loads((tmp_path / "r" / "progress.json").read_text())
    (tmp_path / "r" / "progress.json").write_text(json.dumps({**state, "done": 0, "val": [{"step": 0}]}))
    (tmp_path / "r" / "last.ckpt").unlink()
    row, _ = bench.run(**kw)
    assert row["steps"] == 3 and row["parts"] == 1 and row["val_history"] == []
