"""Image loading, LMDB (PARSeq layout) reader and builder, image folders, augmentation, bad input."""

from __future__ import annotations

import re
import warnings

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.charsets import Charset
from zoo.data.str import STRDataModule, load_image, to_tensor
from zoo.data.str_real import LMDBDataset, RandAugment, build_lmdb, open_source, read_labels

CS = Charset("36", 8)


def _word_image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(20, 60, 3), dtype=np.uint8))


def _folder(tmp_path, labels: list[tuple[str, str]], name="imgs", csv=False):
    d = tmp_path / name
    d.mkdir()
    for i, (p, _) in enumerate(labels):
        _word_image(i).save(d / p)
    if csv:
        (d / "labels.csv").write_text("path,text\n" + "".join(f"{p},{t}\n" for p, t in labels))
    else:
        (d / "labels.txt").write_text("".join(f"{p}\t{t}\n" for p, t in labels))
    return d


def test_synthetic_val_and_test_beside_real_training_data_are_said(tmp_path):
    """data.train_dirs alone: validation and test fall back to synthetic words (documented), so the checkpoint kept by
    val/accuracy is chosen on rendered words; it ran without a word. Said once per split, and not with their own dirs."""
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    dm = STRDataModule(charset="36", train_dirs=[str(d)], synthetic={"val": 4, "test": 4}, max_length=6,
                       num_workers=0, batch_size=2)
    with pytest.warns(UserWarning, match=r"the val split is synthetic words \(data.val_dirs is unset"):
        dm.val_dataloader()
    with pytest.warns(UserWarning, match=r"the test split is synthetic words"):
        dm.test_dataloader()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.val_dataloader()  # built once: said once
        own = STRDataModule(charset="36", train_dirs=[str(d)], val_dirs=[str(d)], test_dirs=[str(d)], max_length=6,
                            num_workers=0, batch_size=2)
        own.val_dataloader(), own.test_dataloader()
        STRDataModule(charset="36", synthetic={"train": 4, "val": 4, "test": 4}, max_length=6, num_workers=0,
                      batch_size=2).val_dataloader()  # all synthetic: the default, nothing to say


def test_load_image_conversions(tmp_path):
    gray = Image.fromarray(np.arange(200, dtype=np.uint8).reshape(10, 20))
    assert np.array_equal(np.asarray(load_image(gray)), np.asarray(gray.convert("RGB")))
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red-ish, bottom transparent -> white
    out = np.asarray(load_image(rgba))
    assert (out[:2, :, 0] == 200).all() and (out[:2, :, 1] == 0).all() and (out[2:] == 255).all()
    f = np.full((5, 6), 0.5, dtype=np.float32)
    assert (np.asarray(load_image(f)) == 128).all()
    p = tmp_path / "x.png"
    gray.save(p)
    assert np.array_equal(np.asarray(load_image(str(p))), np.asarray(gray.convert("RGB")))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="corrupt or not an image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    # an empty file / empty bytes are named as such (Pillow: "cannot identify image file"), and Pillow's repr of
    # the buffer (<_io.BytesIO object at 0x...>) is not the user's to read
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.png: the file is empty \(0 bytes\)"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ValueError, match=r"image bytes: they are empty \(0 bytes\)"):
        load_image(b"")
    with pytest.raises(ValueError, match=r"cannot decode image bytes \(cannot identify image file the bytes\); the "
                                         r"data is corrupt") as err:
        load_image(b"not an image")
    assert "BytesIO" not in str(err.value)
    with pytest.raises(ValueError, match="HxW"):
        load_image(np.zeros((3, 4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(np.full((3, 4), 7.0))


def test_to_tensor_matches_pil_resize():
    img = _word_image(1)
    t = to_tensor(img)
    ref = np.asarray(img.resize((128, 32), Image.BICUBIC), dtype=np.float32) / 127.5 - 1
    assert t.shape == (3, 32, 128)
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), ref, atol=1e-6)


def test_lmdb_roundtrip_and_counted_skips(tmp_path):
    labels = [("a.png", "Hello"), ("b.png", "wo rld!"), ("c.png", ""), ("d.png", "toolongword1"), ("e.png", "ok")]
    d = _folder(tmp_path, labels)
    out = tmp_path / "lmdb"
    assert build_lmdb(d, out) == 5
    # the layout, read back with the lmdb library directly
    env = lmdb.open(str(out), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"num-samples") == b"5"
        assert txn.get(b"image-000000001") == (d / "a.png").read_bytes()
        assert txn.get(b"label-000000002").decode() == "wo rld!"
        assert txn.get(b"label-000000000") is None  # 1-based
    env.close()
    ds = LMDBDataset(out, CS)
    assert [ds.label(k) for k in range(len(ds))] == ["hello", "world", "ok"]
    st = ds.stats
    assert (st.seen, st.kept, st.empty, st.too_long, st.labels_with_dropped) == (5, 3, 1, 1, 1)
    img, text = ds[0]
    assert text == "hello" and np.array_equal(np.asarray(img), np.asarray(_word_image(0)))
    with pytest.raises(FileExistsError):
        build_lmdb(d, out)


def test_lmdb_index_is_arrays_not_python_objects_and_keeps_every_sample(tmp_path):
    """MJSynth + SynthText hold 15M samples: a list of (key, label) tuples took ~150 bytes a sample in the main process
    and was copied again by every DataLoader worker that read it (reference counts write to the objects' pages). The
    kept samples are arrays now; keys, labels, order and counts are those of a plain per-key read of the database."""
    from collections import Counter

    from zoo.data.charsets import NormStats

    words = ["abc", "ab-c", "", "waytoolongword", "Hello", "d e", "x!", "abc"]
    env = lmdb.open(str(tmp_path / "lm"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(1, 401):
            txn.put(b"image-%09d" % i, b"x")
            txn.put(b"label-%09d" % i, (words[i % 8] if i % 5 else f"w{i}").encode())
        txn.put(b"num-samples", b"400")
    env.close()
    # the naive reader: every key in order, normalized one by one
    stats, want = NormStats(), []
    env = lmdb.open(str(tmp_path / "lm"), readonly=True, lock=False)
    with env.begin() as txn:
        for i in range(1, 401):
            t = CS.normalize(txn.get(b"label-%09d" % i).decode(), stats)
            if t is not None:
                want.append((i, t))
    env.close()
    ds = LMDBDataset(tmp_path / "lm", CS)
    assert list(zip(ds.keys.tolist(), [ds.label(k) for k in range(len(ds))])) == want and len(ds) == len(want)
    assert ds.stats == stats and stats.dropped_chars == Counter({"-": 40, "!": 40})
    assert ds.label(-1) == want[-1][1]
    with pytest.raises(IndexError):
        ds.label(len(ds))
    # no per-sample Python objects: nothing a worker's reads would copy
    held = {k: v for k, v in vars(ds).items() if isinstance(v, (list, tuple, dict, set)) and len(v) > 10}
    assert not held and isinstance(ds.keys, np.ndarray)


def test_image_folder_index_holds_no_python_object_per_sample(tmp_path):
    """FolderDataset kept a list of (path, label) tuples, which every DataLoader worker reading it copied (~150 B a
    crop per worker). The same samples in the same order, from numpy-held strings."""
    from zoo.data.charsets import NormStats
    from zoo.data.str_real import FolderDataset

    d = _folder(tmp_path, [("a.png", "x"), ("b b.png", "y"), ("c\u00e9.png", "z")])
    words = ["abc", "ab-c", "", "waytoolongword", "Hello", "d e", "x!", "caf\u00e9", "\u00e9t\u00e9"]
    names = ["a.png", "b b.png", "c\u00e9.png"]
    (d / "labels.txt").write_text("".join(f"{names[i % 3]}\t{words[i % 9] if i % 5 else f'w{i}'}\n" for i in range(400)),
                                  encoding="utf-8")
    # the naive reader: each line split at its tab, the label normalized
    stats, want = NormStats(), []
    for line in (d / "labels.txt").read_text(encoding="utf-8").splitlines():
        path, raw = line.split("\t")
        t = CS.normalize(raw, stats)
        if t is not None:
            want.append((path, t))
    ds = FolderDataset(d, CS)
    assert ds.items == want and len(ds) == len(want) > 300 and ds.stats == stats
    assert [ds[k][1] for k in (0, 5, -1)] == [want[0][1], want[5][1], want[-1][1]]
    assert np.asarray(ds[-1][0]).shape == (20, 60, 3)
    with pytest.raises(IndexError):
        ds[len(ds)]
    # no per-sample Python objects: nothing a worker's reads would copy
    held = {k: v for k, v in vars(ds).items() if isinstance(v, (list, tuple, dict, set)) and len(v) > 10}
    assert not held


def test_one_lmdb_read_by_several_datasets_and_workers(tmp_path):
    """train == val, a root and one of its LMDBs, fit then test: python-lmdb opens a path once per process,
    so the datasets share the handle, and a DataLoader worker forked after the main process read opens its own."""
    from torch.utils.data import DataLoader

    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    build_lmdb(d, tmp_path / "lm")
    a, b = LMDBDataset(tmp_path / "lm", CS), LMDBDataset(tmp_path / "lm", CS)
    assert a[0][1] == "abc" and b[1][1] == "de"
    assert LMDBDataset(tmp_path / "lm", CS)[1][1] == "de"
    texts = [t for _, t in DataLoader(b, batch_size=None, num_workers=1, collate_fn=lambda x: x,
                                      multiprocessing_context="fork")]
    assert texts == ["abc", "de"] and a[1][1] == "de"  # the parent's handle still reads after the worker closed its copy
    # the LMDB rebuilt at the same path (new labels): a new dataset reads the new one, not a stale handle
    import shutil

    shutil.rmtree(tmp_path / "lm")
    d2 = _folder(tmp_path, [("x.png", "xyz"), ("y.png", "uvw"), ("z.png", "rst")], name="imgs2")
    build_lmdb(d2, tmp_path / "lm")
    ds = LMDBDataset(tmp_path / "lm", CS)
    assert [ds.label(k) for k in range(len(ds))] == ["xyz", "uvw", "rst"]


def test_linked_lmdbs_and_image_folders_are_found(tmp_path):
    """Benchmark sets linked into one root are read as sets; linked folders of images are predicted; a link
    back up the tree is not followed twice; files that are not images are counted in a warning."""
    from zoo.data.str import ImageFolderDataset

    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    build_lmdb(d, tmp_path / "store" / "IIIT5k")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "IIIT5k").symlink_to(tmp_path / "store" / "IIIT5k", target_is_directory=True)
    sets = open_source(tmp_path / "root", CS)
    assert [n for n, _ in sets] == ["IIIT5k"] and len(sets[0][1]) == 2

    pf = tmp_path / "pf"
    pf.mkdir()
    _word_image(0).save(pf / "top.png")
    _word_image(1).save(pf / "odd.ppm")
    (pf / "sub").symlink_to(d, target_is_directory=True)  # a.png, b.png and labels.txt
    (d / "up").symlink_to(pf, target_is_directory=True)  # pf/sub/up leads back to pf
    (pf / "dead.png").symlink_to(tmp_path / "nowhere.png")  # a link to nothing is no image to read
    with pytest.warns(UserWarning, match=r"1 file\(s\) in .* are not read as images \(\.txt\)"):
        ds = ImageFolderDataset(pf)
    assert [str(p.relative_to(pf)) for p in ds.paths] == ["odd.ppm", "sub/a.png", "sub/b.png", "top.png"]


def test_hidden_files_of_a_predict_folder_are_skipped_and_counted(tmp_path):
    """Jupyter's .ipynb_checkpoints copies and macOS '._name' resource files are not predicted (a '._x.png'
    is no image: it aborted the whole run); a warning counts and names them."""
    from zoo.data.str import ImageFolderDataset

    pf = tmp_path / "pf"
    (pf / ".ipynb_checkpoints").mkdir(parents=True)
    _word_image(0).save(pf / "a.png")
    _word_image(1).save(pf / ".ipynb_checkpoints" / "a-checkpoint.png")
    (pf / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    with pytest.warns(UserWarning, match=r"2 hidden file\(s\) under .* not read as images \(\._a\.png, "
                                         r"\.ipynb_checkpoints/a-checkpoint\.png\)"):
        ds = ImageFolderDataset(pf)
    assert [str(p.relative_to(pf)) for p in ds.paths] == ["a.png"]
    assert ds[0][0].shape == (3, 32, 128)


def test_icdar_gt_txt(tmp_path):
    d = tmp_path / "icdar"
    d.mkdir()
    for i in (1, 2):
        _word_image(i).save(d / f"word_{i}.png")
    (d / "gt.txt").write_text('word_1.png, "Tired"\nword_2.png, "a, b"\n')
    assert read_labels(d) == [("word_1.png", "Tired"), ("word_2.png", "a, b")]
    assert [t for _, t in open_source(d, CS)[0][1].items] == ["tired", "ab"]
    (d / "gt.txt").write_text("word_1.png Tired\nword_2.png\tHello\n")  # whitespace-separated gt.txt files too
    assert read_labels(d) == [("word_1.png", "Tired"), ("word_2.png", "Hello")]
    # ICDAR 2013 / 2015 escape a quote inside a label with a backslash (IC15 test: word_136.png, "(412\")")
    (d / "gt.txt").write_text('word_1.png, "(412\\")"\nword_2.png, "\\"A\\\\B\\""\n')
    assert read_labels(d) == [("word_1.png", '(412")'), ("word_2.png", '"A\\B"')]
    # the escape belongs to quoted labels: an unquoted one keeps its backslashes (one at the end read as a newline)
    (d / "gt.txt").write_text('word_1.png, a\\b\nword_2.png, C:\\\n')
    assert read_labels(d) == [("word_1.png", "a\\b"), ("word_2.png", "C:\\")]


def test_icdar_gt_txt_with_spaces_in_image_names(tmp_path):
    """An image name holding a space (`word 1.png, "Hello"`) was split at the space: path 'word', label
    '1.png, "Hello"'. The ICDAR forms read as written: a name ending in an image extension or followed by a quoted
    label, a quoted name, spaces or a tab around the comma; a whitespace-separated line keeps its comma in the label."""
    d = tmp_path / "icdar"
    d.mkdir()
    for name in ("word 1.png", "word 2.jpg", "w3", "word_4.png", "w,5.png", "word_6.png"):
        _word_image(0).save(d / name, format="PNG")
    (d / "gt.txt").write_text('word 1.png, "Hello"\nword 2.jpg, World\nw3 , "a, b"\nword_4.png,\t"(412\\")"\n'
                              '"w,5.png", "x"\nword_6.png a,b\n')
    assert read_labels(d) == [("word 1.png", "Hello"), ("word 2.jpg", "World"), ("w3", "a, b"),
                              ("word_4.png", '(412")'), ("w,5.png", "x"), ("word_6.png", "a,b")]
    assert [t for _, t in open_source(d, CS)[0][1].items] == ["hello", "world", "ab", "412", "x", "ab"]


def test_files_that_are_not_utf8_are_named(tmp_path):
    d = _folder(tmp_path, [("a.png", "abc")])
    (d / "labels.txt").write_bytes("a.png\tcaf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels file: .*labels.txt is not valid UTF-8 \(bad byte at offset 9\)"):
        open_source(d, CS)
    with pytest.raises(ValueError, match=r"labels.txt is not valid UTF-8"):
        build_lmdb(d, tmp_path / "lm")
    (d / "labels.txt").unlink()
    (d / "labels.csv").write_bytes("path,text\na.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"labels.csv is not valid UTF-8"):
        open_source(d, CS)
    (tmp_path / "cs.txt").write_bytes("a\nb\n\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"charset file: .*cs.txt is not valid UTF-8"):
        Charset(str(tmp_path / "cs.txt"), 6)
    (d / "labels.csv").write_bytes("\ufeffpath,text\na.png,caf\u00e9\n".encode("utf-8"))  # Excel's BOM: read
    assert [t for _, t in open_source(d, CS)[0][1].items] == ["cafe"]


def test_several_lmdbs_under_a_root(tmp_path):
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    build_lmdb(d, tmp_path / "root" / "setA")
    build_lmdb(d, tmp_path / "root" / "sub" / "setB")
    sets = open_source(tmp_path / "root", CS)
    assert [n for n, _ in sets] == ["setA", "sub/setB"] and all(len(s) == 2 for _, s in sets)
    dm = STRDataModule(charset="36", max_length=8, test_dirs=[str(tmp_path / "root")], synthetic={"test": 0}, eval_batch_size=8)
    batch = next(iter(dm.test_dataloader()))
    assert batch["set"] == ["setA", "setA", "sub/setB", "sub/setB"] and batch["texts"] == ["abc", "de", "abc", "de"]
    assert batch["targets"][1].tolist() == [CS.index["d"], CS.index["e"], 0] + [-100] * 6


def test_a_root_of_image_folders_names_its_sets_folders(tmp_path):
    """test_dirs: [root] over root/A/labels.txt and root/B/gt.txt (image folders, not LMDBs): the error told the user
    to add a labels.txt to the root. It names the sub-folders' labels files and how to give them."""
    (tmp_path / "root").mkdir()
    _folder(tmp_path / "root", [("a.png", "abc")], name="A")
    b = tmp_path / "root" / "B"
    b.mkdir()
    _word_image(1).save(b / "w.png")
    (b / "gt.txt").write_text('w.png, "de"\n')
    with pytest.raises(FileNotFoundError, match=r"no labels file of its own.*A/labels\.txt, B/gt\.txt.*source of its own"):
        open_source(tmp_path / "root", CS)
    assert [len(ds) for d in ("A", "B") for _, ds in open_source(tmp_path / "root" / d, CS)] == [1, 1]


def _raw_lmdb(path, items: dict) -> None:
    """An LMDB holding exactly ``items`` (str keys -> str values), bypassing the zoo writer."""
    env = lmdb.open(str(path), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k.encode(), v.encode())
    env.close()


def test_wrong_layout_and_corrupt_lmdb(tmp_path):
    bad = tmp_path / "zero_based"
    _raw_lmdb(bad, {"num-samples": "1", "image-000000000": "x", "label-000000000": "a"})
    with pytest.raises(ValueError, match="1-based"):
        LMDBDataset(bad, CS)
    nokey = tmp_path / "nokey"
    _raw_lmdb(nokey, {"img1": "x"})
    with pytest.raises(ValueError, match="num-samples"):
        LMDBDataset(nokey, CS)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "data.mdb").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="corrupt"):
        LMDBDataset(corrupt, CS)
    # a label whose image bytes are not an image: error at read time naming the key
    broken = tmp_path / "broken"
    _raw_lmdb(broken, {"num-samples": "1", "image-000000001": "junk", "label-000000001": "ab"})
    with pytest.raises(ValueError, match="image-000000001"):
        LMDBDataset(broken, CS)[0]


@pytest.mark.parametrize("keys, n, unread", [
    (range(0, 4), 3, ["label-000000000"]),  # 0-based keys, num-samples = the last key: the first sample went unread
    (range(1, 6), 3, ["label-000000004", "label-000000005"]),  # num-samples too small: the tail went unread
    (range(0, 9), 2, ["label-000000000", "label-000000003", "label-000000004", "..."]),  # 7 unread: three shown
])
def test_lmdb_samples_outside_num_samples_are_named_not_dropped_silently(tmp_path, keys, n, unread):
    items = {"num-samples": str(n)}
    for k in keys:
        items[f"image-{k:09d}"], items[f"label-{k:09d}"] = "x", f"w{k}"
    _raw_lmdb(tmp_path / "lm", items)
    count = len(keys) - n
    with pytest.warns(UserWarning, match=re.escape(f"holds {count} label key(s) that") + ".*never reads: "
                                         + re.escape(", ".join(unread) + "; ")):
        ds = LMDBDataset(tmp_path / "lm", CS)
    assert [ds.label(i) for i in range(len(ds))] == [f"w{k}" for k in range(1, n + 1)]
    # 0-based keys with num-samples = their count: the error says so
    _raw_lmdb(tmp_path / "zero", {"num-samples": "2", "image-000000000": "x", "label-000000000": "a",
                                  "image-000000001": "x", "label-000000001": "b"})
    with pytest.raises(ValueError, match=r"no key label-000000002 \(it holds label-000000000: its keys are 0-based\)"):
        LMDBDataset(tmp_path / "zero", CS)


def test_image_folder_csv_and_missing_files(tmp_path, monkeypatch):
    d = _folder(tmp_path, [("a.png", "Ab1"), ("b.png", "c-d")], csv=True)
    assert read_labels(d) == [("a.png", "Ab1"), ("b.png", "c-d")]
    (name, ds), = open_source(d, CS)
    assert name == "imgs" and [t for _, t in ds.items] == ["ab1", "cd"] and ds.stats.dropped_chars == {"-": 1}
    monkeypatch.chdir(d)  # a source given as "." (or through "..") is named by the folder it resolves to
    assert [n for n, _ in open_source(".", CS)] == ["imgs"]
    (d / "sub").mkdir()
    assert [n for n, _ in open_source("sub/..", CS)] == ["imgs"]
    build_lmdb(d, tmp_path / "lm")
    monkeypatch.chdir(tmp_path / "lm")
    assert [n for n, _ in open_source(".", CS)] == ["lm"]
    (d / "labels.csv").write_text("path,text\nmissing.png,x\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        open_source(d, CS)
    empty = tmp_path / "nolabels"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        read_labels(empty)
    # a mistyped folder or labels path is named as such, not as a folder without labels
    with pytest.raises(FileNotFoundError, match=r"image folder .*typo does not exist"):
        build_lmdb(tmp_path / "typo", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"image folder .*labels.csv is a file"):
        read_labels(d / "labels.csv")
    with pytest.raises(FileNotFoundError, match=r"labels file .*lables.txt does not exist"):
        read_labels(d, d / "lables.txt")
    assert not (tmp_path / "out").exists()


def test_randaugment_keeps_size_and_is_seeded():
    img = _word_image(3).resize((128, 32))
    a = RandAugment(seed=0)(img)
    b = RandAugment(seed=0)(img)
    assert a.size == img.size and a.mode == "RGB" and np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError):
        RandAugment(m=11)


class _SameImage(torch.utils.data.Dataset):
    def __init__(self, img, aug):
        self.img, self.aug = img, aug

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.from_numpy(np.asarray(self.aug(self.img)).copy())


def test_randaugment_workers_draw_their_own_augmentations():
    # Forked workers hold copies of the parent's generator; without reseeding, worker 0 and worker 1
    # (and each epoch's fresh workers) would replay the same augmentation sequence.
    img = _word_image(3).resize((128, 32))
    loader = torch.utils.data.DataLoader(_SameImage(img, RandAugment(n=3, m=8, seed=0)), batch_size=4, num_workers=2)
    epochs = [[b.numpy() for b in loader] for _ in range(2)]
    for batches in epochs:  # batch 0 came from worker 0, batch 1 from worker 1
        assert not np.array_equal(batches[0], batches[1])
    assert not np.array_equal(epochs[0][0], epochs[1][0])


def test_randaugment_without_workers_follows_the_global_seed(tmp_path):
    """num_workers=0 (the default): the datamodule's RandAugment (no seed of its own) draws from torch's seed,
    so seed_everything gives the same augmented training batch in two runs (it drew from OS entropy before)."""
    import lightning as L

    d = _folder(tmp_path, [(f"{i}.png", f"w{i}") for i in range(8)])

    def first_batch(seed):
        L.seed_everything(seed, verbose=False)
        dm = STRDataModule(charset="36", max_length=8, train_dirs=[str(d)], batch_size=8, num_workers=0)
        return next(iter(dm.train_dataloader()))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a["texts"] == b["texts"] and torch.equal(a["images"], b["images"])
    assert not torch.equal(a["images"], c["images"])


def test_build_lmdb_checks_every_image_before_writing(tmp_path):
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    (d / "b.png").write_bytes(b"not an image")
    out = tmp_path / "lmdb"
    with pytest.raises(ValueError, match="b.png"):
        build_lmdb(d, out)
    assert not out.exists()  # nothing half-written: a corrected rerun can use the same folder
    # a folder with several bad crops (a zero-byte file, a JPEG cut short): all named in one run, not one per rerun
    _word_image(2).save(d / "c.jpg")
    (d / "c.jpg").write_bytes((d / "c.jpg").read_bytes()[:300])
    (d / "e.png").write_bytes(b"")
    _word_image(3).save(d / "f.png")
    (d / "labels.txt").write_text("a.png\tabc\nb.png\tde\nc.jpg\tfg\ne.png\thi\nf.png\tjk\n")
    with pytest.raises(ValueError, match=r"cannot add 3 of the 5 images .*b\.png: .*; .*c\.jpg: .*; .*e\.png: the file is "
                                         r"empty \(0 bytes\); fix or remove them"):
        build_lmdb(d, out)
    assert not out.exists()
    from zoo.data.str_real import main

    with pytest.raises(SystemExit, match=r"^error: cannot add 3 of the 5 images"):  # the builder command: no traceback
        main(["build", str(d), str(out)])
    (d / "labels.txt").write_text("a.png\tabc\nb.png\tde\n")
    (d / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"labels of .* do not exist, e.g. \['b.png'\]"):
        build_lmdb(d, out)
    assert not out.exists()


def test_csv_labels_with_an_unquoted_comma_or_blank_lines(tmp_path):
    d = _folder(tmp_path, [("a.png", "x"), ("b.png", "y")], csv=True)
    # a label holding an unquoted comma splits into a third column: an error, not a label cut at the comma
    (d / "labels.csv").write_text("path,text\na.png,x,y\nb.png,y\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 2: .*3 columns.*quote"):
        read_labels(d)
    (d / "labels.csv").write_text("a.png,x\nb.png,x,y\n")  # no header: the columns every row has (two)
    with pytest.raises(ValueError, match=r"line 2: .*3 columns"):
        read_labels(d)
    # a header may declare further columns; blank lines (a trailing one from an editor) are skipped, as in labels.txt
    (d / "labels.csv").write_text('path,text,source\r\na.png,"x,y",web\r\n\r\nb.png,y,web\r\n\r\n')
    assert read_labels(d) == [("a.png", "x,y"), ("b.png", "y")]
    (d / "labels.csv").unlink()
    (d / "gt.txt").write_text('a.png, "x,y"\nb.png, x,y\n')  # ICDAR gt.txt quotes its labels
    with pytest.raises(ValueError, match=r"gt.txt, line 2: 3 columns.*quote"):
        read_labels(d)


@pytest.mark.parametrize("name,header,named", [
    ("labels.csv", "path,label,text", "2 text columns \\('label', 'text'\\)"),
    ("metadata.csv", "file_name,Text,label", "2 text columns \\('Text', 'label'\\)"),
    ("labels.csv", "image,path,text", "2 path columns \\('image', 'path'\\)"),
])
def test_a_csv_header_naming_two_text_or_path_columns_is_refused(tmp_path, name, header, named):
    """A header with both `label` and `text` (or two path columns) read the first one silently, which may be a class
    id or a source tag: ambiguous, so refused naming both columns."""
    d = _folder(tmp_path, [("a.png", "x")])
    (d / "labels.txt").unlink()
    (d / name).write_text(header + "\na.png,a.png,x\n")
    with pytest.raises(ValueError, match=rf"{name}: the header names {named}; keep one"):
        read_labels(d)


def test_excels_sep_line_in_a_labels_csv(tmp_path):
    """Excel's first line `sep=,` was read as a labels row and the header below it as another ("images do not
    exist: ['sep=', 'path']"; columns in another order than path,text were not found by name). It is skipped;
    another separator it declares is named."""
    d = _folder(tmp_path, [("a.png", "x"), ("b.png", "y")], csv=True)
    (d / "labels.csv").write_text("\ufeffsep=,\r\ntext,path\r\nx,a.png\r\ny,b.png\r\n")
    assert read_labels(d) == [("a.png", "x"), ("b.png", "y")]
    (d / "labels.csv").write_text("sep=;\npath;text\na.png;x\n")
    with pytest.raises(ValueError, match=r"labels.csv starts with Excel's 'sep=;' line.*comma-separated"):
        read_labels(d)


@pytest.mark.parametrize("text,named", [("path;text\na.png;x\n", "semicolons"), ("a.png;x\nb.png;y\n", "semicolons"),
                                        ("path\ttext\na.png\tx\n", "tabs")])
def test_a_labels_csv_with_another_separator_is_named(tmp_path, text, named):
    # a labels.csv saved with `;` (Excel in locales with decimal commas) without the sep= line was refused as
    # "line 1: expected 2 columns (path, text), got ['path;text']", which does not say why
    d = _folder(tmp_path, [("a.png", "x"), ("b.png", "y")], csv=True)
    (d / "labels.csv").write_text(text)
    with pytest.raises(ValueError, match=rf"labels.csv separates its columns with {named}.*comma-separated.*read_csv"):
        read_labels(d)


def test_labels_txt_lines_end_only_at_line_breaks(tmp_path):
    # str.splitlines also breaks at U+2028, U+0085 (cp1252's "..." read as Latin-1), form feed...: inside a label
    # they are characters (whitespace, removed by normalization), not the end of the line
    d = _folder(tmp_path, [("a.png", "x"), ("b.png", "y")])
    (d / "labels.txt").write_bytes("a.png\tab\u2028cd\r\nb.png\tef\x85\x0cgh\n".encode("utf-8"))
    assert read_labels(d) == [("a.png", "ab\u2028cd"), ("b.png", "ef\x85\x0cgh")]
    assert [t for _, t in open_source(d, CS)[0][1].items] == ["abcd", "efgh"]


def test_headerless_csv_labels_with_a_further_column_in_every_row(tmp_path):
    # a headerless labels.csv whose every row has a further column (a labelling tool's confidence, a source) was
    # read as (path, text) and must stay readable; only a row with more columns than the others (an unquoted
    # comma in its label) is an error
    d = _folder(tmp_path, [("a.png", "x"), ("b.png", "y")], csv=True)
    (d / "labels.csv").write_text("a.png,x,0.98\nb.png,y,0.71\n")
    assert read_labels(d) == [("a.png", "x"), ("b.png", "y")]
    (d / "labels.csv").write_text("a.png,x\nb.png,y,z\n")
    with pytest.raises(ValueError, match=r"labels.csv, line 2: 3 columns where 2 are expected.*quote"):
        read_labels(d)


def test_an_lmdb_built_into_its_image_folder_is_read_with_a_warning(tmp_path):
    # the folder holds labels.txt and the LMDB built from it: which source is read must be said, not silent
    from zoo.data.str_real import build_lmdb, open_source

    d = _folder(tmp_path, [("a.png", "ab"), ("b.png", "cd")])
    build_lmdb(d, d / "lmdb")
    with pytest.warns(UserWarning, match=r"holds both labels.txt .* and LMDBs \(lmdb\); reading the LMDBs only"):
        sets = open_source(d, CS)
    assert [name for name, _ in sets] == ["lmdb"]


def test_an_image_folder_under_a_root_of_lmdbs_is_named_not_dropped_silently(tmp_path):
    """A folder of the user's crops put beside benchmark LMDBs under one root: the root reads its LMDBs only, and
    the crops (2 labelled images here) must be named in a warning, not vanish from the test table unsaid."""
    d = _folder(tmp_path, [("a.png", "ab"), ("b.png", "cd")])
    build_lmdb(d, tmp_path / "root" / "IIIT5k")
    _folder(tmp_path / "root", [("c.png", "ef"), ("d.png", "gh")], name="mine")
    with pytest.warns(UserWarning, match=r"holds both mine/labels.txt .* and LMDBs \(IIIT5k\); reading the LMDBs only"):
        sets = open_source(tmp_path / "root", CS)
    assert [(name, len(ds)) for name, ds in sets] == [("IIIT5k", 2)]


def test_loader_workers_persist_across_epochs():
    """With workers, the train / val loaders keep them between epochs (as the other domains' loaders do): under spawn
    (macOS, Windows) a new worker re-imports torch, matplotlib and zoo, seconds at every epoch and validation run."""
    dm = STRDataModule(charset="36", max_length=4, synthetic={"train": 4, "val": 4, "test": 0}, synth_max_len=4,
                       batch_size=4, eval_batch_size=4, num_workers=1)
    for dl in (dm.train_dataloader(), dm.val_dataloader()):
        first = iter(dl)
        assert len(list(first)) == 1
        second = iter(dl)  # the next epoch: the same iterator and worker process, reset
        assert second is first and len(list(second)) == 1
        dl._iterator._shutdown_workers()


def test_randaugment_differs_between_ddp_ranks(monkeypatch):
    """Every DDP rank has the same torch seed (seed_everything), so without the rank in the seed rank 0 and
    rank 1 (and their workers) would apply one augmentation sequence to their samples."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    img = _word_image(3).resize((128, 32))

    def augmented(rank, workers, seed):
        torch.manual_seed(0)
        aug = RandAugment(n=3, m=8, seed=seed)  # built before the strategy sets the rank, as in a datamodule
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        loader = torch.utils.data.DataLoader(_SameImage(img, aug), batch_size=4, num_workers=workers,
                                             multiprocessing_context="fork" if workers else None)
        return next(iter(loader)).numpy()

    for workers, seed in ((0, None), (0, 0), (1, 0)):  # an explicit seed without workers too
        r0, r0_again, r1 = augmented(0, workers, seed), augmented(0, workers, seed), augmented(1, workers, seed)
        assert np.array_equal(r0, r0_again)
        assert not np.array_equal(r0, r1), (workers, seed)
    # rank 0 (and a single process) keeps the augmentations an explicit seed always gave
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    rng = np.random.default_rng(0)
    assert list(RandAugment(n=3, seed=0)._generator().choice(RandAugment.OPS, size=3)) == list(rng.choice(RandAugment.OPS, size=3))


def test_one_source_given_as_a_plain_path(tmp_path):
    """STRDataModule(test_dirs="my_lmdb") from Python (the CLI's type check refuses a string) read each character
    of the path as a source of its own: "data source m not found"; a single str / Path is that one source."""
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    build_lmdb(d, tmp_path / "my_lmdb")
    for given in (str(tmp_path / "my_lmdb"), tmp_path / "my_lmdb"):
        dm = STRDataModule(charset="36", max_length=8, train_dirs=given, val_dirs=given, test_dirs=given,
                           synthetic={"train": 0, "val": 0, "test": 0}, eval_batch_size=8)
        batch = next(iter(dm.test_dataloader()))
        assert batch["set"] == ["my_lmdb", "my_lmdb"] and batch["texts"] == ["abc", "de"]
        assert len(dm.train_dataloader().dataset) == 2 and len(dm.val_dataloader().dataset) == 2


def test_a_truncated_lmdb_is_named_not_a_crash(tmp_path):
    """A data.mdb cut short (an interrupted copy or download) opened and then killed the interpreter with SIGBUS
    ("Bus error") at the first read past its end; it is refused at open, naming the file. Run in a subprocess, so
    the crash fails this test instead of the whole session."""
    import subprocess
    import sys

    d = _folder(tmp_path, [(f"{i}.png", "abc") for i in range(30)])
    build_lmdb(d, tmp_path / "full")
    data = (tmp_path / "full" / "data.mdb").read_bytes()
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "data.mdb").write_bytes(data[: len(data) // 3])
    code = ("from zoo.data.charsets import Charset\nfrom zoo.data.str_real import LMDBDataset\n"
            f"ds = LMDBDataset({str(cut)!r}, Charset('36', 8))\nprint([ds[i][1] for i in range(len(ds))])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, (run.returncode, run.stderr[-500:])  # an exception, not a signal (-7: SIGBUS)
    assert "ValueError" in run.stderr and "truncated" in run.stderr and str(cut) in run.stderr
    # the whole database still reads
    assert [t for _, t in LMDBDataset(tmp_path / "full", CS)] == ["abc"] * 30


def test_to_tensor_reads_grayscale_rgba_and_16_bit_crops():
    """to_tensor is the documented preprocessing for encode() and the ONNX model's input; a grayscale (or palette,
    16-bit) crop crashed in a bare "permute(sparse_coo): number of dimensions..." and an RGBA one came out with 4
    channels. Each reads as its RGB image does (RGBA on white, 16-bit scaled to 8 bits), as read() reads it."""
    g = np.arange(32 * 128, dtype=np.uint32).reshape(32, 128) % 251
    ref = torch.from_numpy(np.repeat(g[..., None], 3, -1).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    gray = Image.fromarray(g.astype(np.uint8))  # already 32x128: no resize, the reference is exact
    torch.testing.assert_close(to_tensor(gray), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(to_tensor(gray.convert("P")), ref, atol=1e-6, rtol=0)  # 251 greys fit the palette
    torch.testing.assert_close(to_tensor(Image.fromarray((g * 257).astype(np.uint16))), ref, atol=1e-6, rtol=0)
    rgba = np.zeros((32, 128, 4), dtype=np.uint8)
    rgba[..., 0], rgba[:16, :, 3] = 200, 255  # top half opaque (200, 0, 0), bottom transparent: white
    want = torch.full((3, 32, 128), 1.0)
    want[0, :16], want[1:, :16] = 200 / 127.5 - 1, -1.0
    torch.testing.assert_close(to_tensor(Image.fromarray(rgba)), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("empty", [np.zeros((0, 10), np.uint8), np.zeros((32, 0, 3), np.uint8), Image.new("RGB", (0, 0)),
                                   Image.new("L", (7, 0))])
def test_an_empty_crop_is_refused_not_read(empty):
    """A crop with no pixels (a detector's degenerate box, img[y0:y1, x0:x1] with x0 == x1) was resized to a blank
    32x128 crop and read as text ("v" at confidence 0.63 with the shipped model): it has nothing to read."""
    with pytest.raises(ValueError, match="no pixels"):
        load_image(empty)
    with pytest.raises(ValueError, match="no pixels"):
        to_tensor(empty)


def test_a_predict_dir_that_is_an_image_file_is_named_as_such(tmp_path):
    """data.predict_dir given one image: the error said "predict folder x.png not found" of a file that exists."""
    from zoo.data.str import ImageFolderDataset

    d = _folder(tmp_path, [("a.png", "abc")])
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        ImageFolderDataset(d / "a.png")
    with pytest.raises(FileNotFoundError, match="not found"):
        ImageFolderDataset(d / "missing")


def test_a_predict_folder_with_a_file_name_that_is_not_utf8_is_refused_before_reading(tmp_path):
    """A crop named in Latin-1 (b"caf\\xe9.png", from an old zip) is held by Python as a surrogate escape: predict read
    every image, then crashed writing predictions.csv (UnicodeEncodeError, no CSV). Refused up front, named."""
    import os

    from zoo.data.str import ImageFolderDataset

    pf = tmp_path / "pf"
    pf.mkdir()
    _word_image(0).save(pf / "ok.png")
    try:
        with open(os.fsencode(pf) + b"/caf\xe9.png", "wb") as f:
            f.write((pf / "ok.png").read_bytes())
    except OSError as exc:  # a file system that holds UTF-8 names only (macOS APFS)
        pytest.skip(f"this file system refuses a non-UTF-8 file name: {exc}")
    dm = STRDataModule(charset="36", max_length=6, predict_dir=str(pf), synthetic={"train": 0, "val": 0, "test": 0})
    with pytest.raises(ValueError, match=r"1 image file name\(s\) under .* not valid UTF-8 .*'caf\\udce9\.png'"):
        dm.predict_dataloader()
    from zoo.tasks.str import read_folder

    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_folder("str-diff-tiny", pf, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()
    assert [str(p.relative_to(pf)) for p in ImageFolderDataset(pf).paths] == ["caf\udce9.png", "ok.png"]  # readable


def test_synthetic_fonts_draw_the_charsets_characters_not_other_glyphs_at_their_code_points():
    """TeX's fonts hold other glyphs at many code points (cmr10 draws '£' as a Theta and '°' as an 'fl' ligature;
    cmsy10 draws 'a' as a turnstile; LastResort one box for every letter): a font that has *a* glyph there
    rendered crops labelled with characters they do not show. Reference: the Adobe Glyph List names, written out."""
    from matplotlib.ft2font import FT2Font

    from zoo.data.str import SyntheticSTRDataset, check_train_fonts
    from zoo.data.str_synth import TEST_FONTS, TRAIN_FONTS, font_path

    agl = {"£": {"sterling"}, "°": {"degree"}, ".": {"period"}, "-": {"hyphen"}}
    digits = "zero one two three four five six seven eight nine".split()
    agl.update({str(i): {n, n + "oldstyle"} for i, n in enumerate(digits)})  # old-style figures are digits too
    cs = Charset("0123456789.-£°", 8)
    for split in ("train", "test"):
        fonts = SyntheticSTRDataset(2, cs, split).fonts
        assert fonts
        for stem in fonts:
            f = FT2Font(font_path(stem))
            for c in cs.chars:
                assert f.get_glyph_name(f.get_char_index(ord(c))) in agl[c], (stem, c)
    # the named sets keep every default font (their characters are drawn right by all of them)
    assert SyntheticSTRDataset(2, Charset("36"), "train").fonts == TRAIN_FONTS
    assert SyntheticSTRDataset(2, Charset("62"), "test").fonts == TEST_FONTS
    for stem in ("cmsy10", "cmex10", "LastResortHE-Regular"):
        with pytest.raises(ValueError, match="cannot render"):
            check_train_fonts([stem], Charset("36").chars)
    assert check_train_fonts(["cmmi10"], Charset("36").chars) == ("cmmi10",)  # its letters and old-style digits
