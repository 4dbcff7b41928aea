"""Plausible user input that used to be misread: 16-bit and float images, EXIF orientation, BOM-led
labels files, long and misspelt charsets, non-ASCII labels under an ASCII charset, clashing set names,
corrupt sample counts."""

from __future__ import annotations

import os
import unicodedata

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.charsets import Charset, NormStats
from zoo.data.str import STRDataModule, load_image
from zoo.data.str_real import LMDBDataset, build_lmdb, read_labels

from test_str_data import _folder, _raw_lmdb


def _gradient16() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 65536, size=(20, 60), dtype=np.uint16)


def test_16_bit_and_float_images_keep_their_contrast(tmp_path):
    a16 = _gradient16()
    want = np.round(a16 / 257.0).astype(np.uint8)  # 65535 -> 255, the same scale as 8-bit
    path = tmp_path / "deep.png"
    Image.fromarray(a16).save(path)  # a 16-bit grayscale PNG
    got = np.asarray(load_image(path))
    assert got.shape == (20, 60, 3) and np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)
    f = Image.fromarray((a16 / 65535.0).astype(np.float32))  # mode F, values in [0, 1]
    assert np.abs(np.asarray(load_image(f))[..., 0].astype(int) - want).max() <= 1
    with pytest.raises(ValueError, match="cannot map"):
        load_image(Image.fromarray(np.full((4, 4), -3.0, dtype=np.float32)))
    nan = np.full((4, 4, 3), 0.5, dtype=np.float32)
    nan[1, 2, 0] = np.nan  # passed the [0, 1] range check (NaN compares False) and became an arbitrary byte
    with pytest.raises(ValueError, match="1 NaN value"):
        load_image(nan)


def test_a_bfloat16_tensor_reads_as_its_float32_values():
    """An image tensor from a bf16 pipeline (torch.autocast, a bf16 model's preprocessing) stopped with numpy's "Got
    unsupported ScalarType BFloat16": numpy has no bfloat16. Values exact in bf16, so the reference is plain math."""
    vals = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
    arr = np.tile(vals, (4, 2))  # 4 x 10, HxW
    want = np.round(arr * 255).astype(np.uint8)
    got = np.asarray(load_image(torch.from_numpy(arr).to(torch.bfloat16)))
    assert got.shape == (4, 10, 3) and np.array_equal(got[..., 0], want) and np.array_equal(got[..., 1], want)
    rgb = torch.from_numpy(np.stack([arr] * 3, -1)).to(torch.bfloat16)
    assert np.array_equal(np.asarray(load_image(rgb))[..., 2], want)


def test_exif_orientation_is_applied(tmp_path):
    shown = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(20, 60, 3), dtype=np.uint8))
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "sideways.png"
    stored.save(path, exif=exif)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(shown))
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), np.asarray(shown))
    # an image the user opened with PIL reads as the same picture (as Hugging Face's load_image reads it)
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(load_image(im)), np.asarray(shown))


def test_an_opened_image_with_unreadable_exif_reads_as_its_pixels(tmp_path):
    """An opened PNG whose eXIf chunk is not TIFF data (no orientation can be read from it) reads as its pixels, as it
    did before EXIF orientation was applied to PIL images (getexif() raised SyntaxError out of load_image).
    Reference: the decoded pixels, from a plain RGB convert."""
    import io
    import struct
    import zlib

    pixels = np.random.default_rng(2).integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    png, junk = buf.getvalue(), b"\x01\x02 not a TIFF header"
    chunk = struct.pack(">I", len(junk)) + b"eXIf" + junk + struct.pack(">I", zlib.crc32(b"eXIf" + junk))
    at = png.index(b"IDAT") - 4
    path = tmp_path / "bad_exif.png"
    path.write_bytes(png[:at] + chunk + png[at:])
    with Image.open(path) as im:
        want = np.asarray(im.convert("RGB"))
        assert np.array_equal(want, pixels)
        assert np.array_equal(np.asarray(load_image(im)), want)


def _png_with_exif_chunk(pixels: np.ndarray, payload: bytes) -> bytes:
    """A PNG of ``pixels`` with an eXIf chunk holding ``payload`` (a correct CRC: only the EXIF inside is bad)."""
    import io
    import struct
    import zlib

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    png = buf.getvalue()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


@pytest.mark.parametrize("payload", [b"\x01\x02 not a TIFF header", b"II*\x00"], ids=["not-tiff", "short-tiff"])
def test_a_file_or_bytes_with_unreadable_exif_reads_as_the_opened_image_does(tmp_path, payload):
    """A path or bytes of a PNG whose eXIf chunk cannot be parsed (SyntaxError "not a TIFF file", or struct.error from a
    header cut short) was refused as a corrupt image, while the same file opened with PIL first read as its pixels.
    All three read the pixels as they are. Reference: the pixels the PNG was written from."""
    pixels = np.random.default_rng(3).integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    data = _png_with_exif_chunk(pixels, payload)
    path = tmp_path / "bad_exif.png"
    path.write_bytes(data)
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), pixels)  # Pillow decodes the pixels fine
        from_pil = np.asarray(load_image(im))
    assert np.array_equal(from_pil, pixels)
    assert np.array_equal(np.asarray(load_image(path)), pixels)
    assert np.array_equal(np.asarray(load_image(str(path))), pixels)
    assert np.array_equal(np.asarray(load_image(data)), pixels)
    assert np.array_equal(np.asarray(load_image(bytearray(data))), pixels)
    # pixel data cut short, or not an image at all, is still refused (a readable or unreadable eXIf alike)
    cut = data[: data.index(b"IDAT") + 12]
    for bad in (cut, b"not an image"):
        (tmp_path / "bad.png").write_bytes(bad)
        with pytest.raises(ValueError, match="corrupt or not an image"):
            load_image(tmp_path / "bad.png")
        with pytest.raises(ValueError, match="corrupt or not an image"):
            load_image(bad)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_alike_to_a_path_bytes_and_an_opened_image(tmp_path, fmt, orientation):
    """Every EXIF orientation on a non-square image reads as Pillow's own ImageOps.exif_transpose shows it, whether
    the image is given as a path, as bytes or opened with PIL."""
    import io

    from PIL import ImageOps

    picture = Image.fromarray(np.random.default_rng(4).integers(0, 256, size=(20, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    picture.save(buf, fmt, exif=exif)
    data = buf.getvalue()
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    path.write_bytes(data)
    with Image.open(path) as im:
        want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert want.shape == ((60, 20, 3) if orientation >= 5 else (20, 60, 3))
    with Image.open(path) as im:
        from_pil = np.asarray(load_image(im))
    for got in (np.asarray(load_image(path)), np.asarray(load_image(data)), from_pil):
        assert np.array_equal(got, want)


def test_a_folder_with_two_labels_files_is_named_not_read_from_one(tmp_path):
    """labels.txt and labels.csv side by side (one written from the other, then edited?): reading one silently could
    train on stale labels. Both are named; --labels (or one file) picks."""
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    (d / "labels.csv").write_text("path,text\na.png,xyz\n")
    with pytest.raises(ValueError, match=r"labels\.txt.*labels\.csv"):
        read_labels(d)
    with pytest.raises(ValueError, match="labels"):
        STRDataModule(charset="36", train_dirs=[str(d)], num_workers=0).train_dataloader()
    assert read_labels(d, d / "labels.csv") == [("a.png", "xyz")]
    (d / "labels.csv").unlink()
    assert read_labels(d) == [("a.png", "abc"), ("b.png", "de")]


def test_hugging_face_imagefolder_metadata_csv_is_a_labels_file(tmp_path):
    """Hugging Face's imagefolder layout: metadata.csv with a file_name column (and the text); its header row was read
    as an image named 'file_name'."""
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    (d / "labels.txt").unlink()
    (d / "metadata.csv").write_text("file_name,text\na.png,abc\nb.png,\"d,e\"\n")
    assert read_labels(d) == [("a.png", "abc"), ("b.png", "d,e")]



@pytest.mark.parametrize("name", ["metadata.csv", "labels.csv"])
def test_a_labels_csv_header_names_its_columns_in_any_order(tmp_path, name):
    """Hugging Face's imagefolder finds file_name wherever it stands (other columns before it, the text first): the
    header was read as an image named 'text' / 'id' unless the path and text were its first two columns."""
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    (d / "labels.txt").unlink()
    (d / name).write_text('text,file_name\nabc,a.png\n"d,e",b.png\n')
    assert read_labels(d) == [("a.png", "abc"), ("b.png", "d,e")]
    (d / name).write_text("id,source,file_name,text\n7,x,a.png,abc\n8,y,b.png,de\n")
    assert read_labels(d) == [("a.png", "abc"), ("b.png", "de")]


@pytest.mark.parametrize("on_disk, in_labels", [("NFD", "NFC"), ("NFC", "NFD")])
def test_an_image_named_in_the_other_unicode_form_is_found(tmp_path, on_disk, in_labels):
    """Images unpacked from a macOS archive keep decomposed names (e + U+0301) while a labels file written elsewhere
    spells them composed (or the other way round): the same name to a reader, and to macOS, but 'do not exist' here."""
    from zoo.data.str_real import FolderDataset

    d = tmp_path / "imgs"
    d.mkdir()
    want = np.zeros((16, 40, 3), np.uint8)
    want[:, :20] = 255
    Image.fromarray(want).save(d / unicodedata.normalize(on_disk, "café.png"))
    (d / "labels.txt").write_text(unicodedata.normalize(in_labels, "café.png\tabc\n"), encoding="utf-8")
    ds = FolderDataset(d, Charset("36"))
    img, text = ds[0]
    assert text == "abc" and np.array_equal(np.asarray(img), want)
    assert build_lmdb(d, tmp_path / "lmdb") == 1
    img, text = LMDBDataset(tmp_path / "lmdb", Charset("36"))[0]
    assert text == "abc" and np.array_equal(np.asarray(img), want)


@pytest.mark.skipif(os.sep != "/", reason="a backslash is the separator there already")
def test_a_labels_file_written_on_windows_with_backslash_paths_finds_its_images(tmp_path):
    """A labels file made on Windows (BOM, CRLF, `sub dir\\a 1.png`): its paths named images that 'do not exist'
    here although the folder holds them under this system's separator; a name that truly holds a backslash stays."""
    from zoo.data.str_real import FolderDataset

    d = tmp_path / "imgs"
    (d / "sub dir" / "deeper").mkdir(parents=True)
    want = [np.full((16, 40, 3), v, np.uint8) for v in (0, 90, 180)]
    Image.fromarray(want[0]).save(d / "sub dir" / "a 1.png")
    Image.fromarray(want[1]).save(d / "sub dir" / "deeper" / "b.png")
    Image.fromarray(want[2]).save(d / "x\\y.png")  # a file whose name holds a backslash: read as written
    lines = "\ufeffsub dir\\a 1.png\tαβ\r\nsub dir\\deeper\\b.png\tγ\r\nx\\y.png\tδ\r\n"
    (d / "labels.txt").write_bytes(lines.encode())
    cs = Charset("αβγδ")
    ds = FolderDataset(d, cs)
    assert ds.items == [("sub dir/a 1.png", "αβ"), ("sub dir/deeper/b.png", "γ"), ("x\\y.png", "δ")]
    assert build_lmdb(d, tmp_path / "lmdb") == 3
    lm = LMDBDataset(tmp_path / "lmdb", cs)
    for k, (img, text) in enumerate([lm[0], lm[1], lm[2]]):
        assert text == ["αβ", "γ", "δ"][k] and np.array_equal(np.asarray(img), want[k])
    (d / "labels.txt").write_text("sub dir\\missing.png\tα\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"1 images named in the labels of .* do not exist"):
        FolderDataset(d, cs)


def test_read_names_the_list_item_that_failed(tmp_path):
    import zoo

    reader = zoo.load_pretrained("str-diff-tiny")
    ok = np.full((32, 100, 3), 255, np.uint8)
    with pytest.raises(ValueError, match=r"images\[2\]: the image has no pixels"):
        reader.read([ok, ok, np.zeros((32, 0, 3), np.uint8)], batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: .*missing\.png"):
        reader.read([ok, str(tmp_path / "missing.png")])
    with pytest.raises(FileNotFoundError, match=r"^image file .*missing\.png not found"):  # one image: as it was
        reader.read(str(tmp_path / "missing.png"))
    # inference only: no autograd graph is recorded while reading (read is a no_grad method)
    seen, decode = [], reader.decode_probs
    reader.decode_probs = lambda probs: (seen.append((torch.is_grad_enabled(), probs.requires_grad)), decode(probs))[1]
    reader.read([ok, ok])
    del reader.decode_probs
    assert seen == [(False, False)]


def test_labels_files_with_a_bom(tmp_path):
    d = _folder(tmp_path, [("a.png", "abc"), ("b.png", "de")])
    (d / "labels.txt").write_text("\ufeffa.png\tabc\nb.png\tde\n", encoding="utf-8")
    assert read_labels(d) == [("a.png", "abc"), ("b.png", "de")]
    (d / "labels.txt").unlink()
    (d / "labels.csv").write_text("\ufeffpath,text\na.png,abc\n", encoding="utf-8")
    assert read_labels(d) == [("a.png", "abc")]
    chars = tmp_path / "chars.txt"
    chars.write_text("\ufeffabc", encoding="utf-8")
    assert Charset(str(chars)).chars == "abc"


def test_long_unicode_charsets_and_misspelt_ones(tmp_path):
    from zoo.hub import create_model

    cjk = "".join(chr(0x4E00 + i) for i in range(300))  # longer than a file name may be
    assert Charset(cjk).chars == cjk
    path = tmp_path / "cjk.txt"
    path.write_text("\n".join(cjk), encoding="utf-8")
    dm = STRDataModule(charset=str(path), max_length=4, synthetic={"train": 0, "val": 0, "test": 0})
    model = create_model("str-diff-tiny", charset=dm.data_info["charset"], max_length=4)
    assert model.charset.chars == cjk
    with pytest.raises(ValueError, match="unknown named charset '95'"):
        STRDataModule(charset="95")
    with pytest.raises(FileNotFoundError, match="charset file .*ja.csv not found"):
        STRDataModule(charset=str(tmp_path / "ja.csv"))
    assert Charset("0123456789").chars == "0123456789"  # characters given directly still work
    # real CJK training data without val_dirs: the synthetic validation default cannot render it, and
    # the error says which split and how to fix it (not "use an ASCII charset")
    dm = STRDataModule(charset=str(path), max_length=4, synthetic={"train": 0, "test": 0})
    with pytest.raises(ValueError, match=r"the val split has no data.val_dirs.*data.synthetic.val=500.*give "
                                         r"data.val_dirs, or set data.synthetic.val: 0"):
        dm.val_dataloader()


@pytest.mark.parametrize("label", ["café中x", "中文", "ßtraße", "Ｗｏｒｄ"])
def test_non_ascii_characters_an_ascii_charset_cannot_hold_are_counted(label):
    cs = Charset("36", 25)
    stats = NormStats()
    kept = cs.normalize(label, stats)
    # reference: NFKD, accents (combining marks) removed silently, lower-cased; what is left outside the
    # charset is dropped and must be counted
    base = "".join(c for c in unicodedata.normalize("NFKD", label) if not unicodedata.combining(c)).lower()
    want_kept = "".join(c for c in base if c in cs.index)
    want_dropped = [c for c in base if c not in cs.index]
    assert (kept or "") == want_kept
    assert sum(stats.dropped_chars.values()) == len(want_dropped) and set(stats.dropped_chars) == set(want_dropped)
    assert stats.labels_with_dropped == (1 if want_dropped else 0)


def test_test_sets_with_one_folder_name_keep_their_own_rows(tmp_path):
    for parent, labels in (("A", [("a.png", "abc")]), ("B", [("b.png", "de"), ("c.png", "fg")])):
        (tmp_path / parent).mkdir()
        _folder(tmp_path / parent, labels, name="IIIT5k")
    dm = STRDataModule(charset="36", max_length=8, test_dirs=[str(tmp_path / "A" / "IIIT5k"), str(tmp_path / "B" / "IIIT5k")],
                       synthetic={"test": 0}, eval_batch_size=8)
    batch = next(iter(dm.test_dataloader()))
    assert batch["set"] == ["IIIT5k", "IIIT5k_2", "IIIT5k_2"]
    assert set(dm.norm_stats) == {"test:IIIT5k", "test:IIIT5k_2"}


def test_corrupt_sample_counts_and_empty_sources(tmp_path):
    neg = tmp_path / "neg"
    _raw_lmdb(neg, {"num-samples": "-3", "image-000000001": "x", "label-000000001": "a"})
    with pytest.raises(ValueError, match="'num-samples' is -3"):
        LMDBDataset(neg, Charset("36", 8))
    d = _folder(tmp_path, [("a.png", "中"), ("b.png", "!!")])
    build_lmdb(d, tmp_path / "lm")
    with pytest.raises(ValueError, match="has no usable sample: .*kept 0/2"):
        next(iter(STRDataModule(charset="36", test_dirs=[str(tmp_path / "lm")], synthetic={"test": 0}).test_dataloader()))


def test_build_lmdb_sizes_its_map_for_the_images(tmp_path):
    d = _folder(tmp_path, [(f"{i}.png", "ab") for i in range(12)])  # ~3.6 kB of noise per image
    total = sum(p.stat().st_size for p in d.glob("*.png"))
    assert total > 1 << 15
    assert build_lmdb(d, tmp_path / "lm", map_size=1 << 15) == 12  # a map smaller than the images: grown
    assert len(LMDBDataset(tmp_path / "lm", Charset("36", 8))) == 12


def test_build_lmdb_expands_a_tilde(tmp_path, monkeypatch):
    """build_lmdb("~/imgs", "~/out lmdb") from Python: the image folder was not found and the LMDB would have gone to
    a folder named "~" in the working directory."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    home.mkdir()
    _folder(home, [("a.png", "ab"), ("b.png", "cd")], name="imgs é")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert build_lmdb("~/imgs é", "~/out lmdb") == 2
    assert not (cwd / "~").exists()
    ds = LMDBDataset(home / "out lmdb", Charset("36", 8))
    assert [ds[i][1] for i in range(len(ds))] == ["ab", "cd"]


def _parseq_label(label: str, charset: str, max_len: int):
    """PARSeq's LmdbDataset filter, written out: whitespace removed, NFKD to ASCII, length checked, then
    the CharsetAdapter (lower-case for a lower-case-only charset, unsupported characters removed)."""
    label = "".join(label.split())
    label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    if len(label) > max_len:
        return None
    label = "".join(c for c in label.lower() if c in charset)
    return label or None


@pytest.mark.parametrize("label", ["ab-cd-e", "abcdef", "a.b.c", "é-é-é-é", "中中中中中中中ab", "A B C D E F G", "--"])
def test_length_cap_is_applied_before_out_of_charset_characters_go(label):
    cs = Charset("36", 6)
    assert cs.normalize(label) == _parseq_label(label, cs.chars, 6)


@pytest.mark.parametrize("mode", ["PA", "La", "RGBa"])
def test_images_with_other_alpha_modes_are_composited_on_white(mode):
    # a fully transparent image is white, as RGBA / LA ones are (PA kept its palette colour, La raised)
    rgba = Image.new("RGBA", (6, 4), (0, 0, 0, 0))
    im = rgba.convert(mode) if mode != "La" else Image.new("La", (6, 4), (0, 0))
    assert (np.asarray(load_image(im)) == 255).all()


@pytest.mark.parametrize("chars", ["~!@#abc", "~!@#$%^&*()_+-=/?abc"])
def test_a_charset_file_whose_first_character_is_a_tilde(tmp_path, chars):
    """A charset file whose first line is "~" (punctuation in keyboard order: "~", "!", "@", ..., "/", "?"): the
    datamodule read it, but the model re-read the characters it was given ("~!@abc") as a path: RuntimeError "Could
    not determine home directory" from Path.expanduser, or, with a "/" among them, "charset file ... not found"; so
    no model could be built on that data, nor its export loaded. Only "~/..." or "~user/..." is such a path."""
    import zoo
    from zoo.hub import create_model, export_model

    path = tmp_path / "keys.txt"  # the characters, one per line, in order
    path.write_text("\n".join(chars) + "\n", encoding="utf-8")
    dm = STRDataModule(charset=str(path), max_length=4, synthetic={"train": 0, "val": 0, "test": 0})
    assert dm.charset.chars == chars
    model = create_model("str-diff-tiny", charset=dm.data_info["charset"], max_length=4)
    assert model.charset.chars == chars and model.num_classes == len(chars) + 1
    export_model(model, tmp_path / "export", arch="str-diff-tiny")
    assert zoo.load_pretrained(str(tmp_path / "export")).charset.chars == chars
    # a missing charset file under a home folder is still named as one
    for missing in ("~/no_such_charset", "~someone/chars"):
        with pytest.raises(FileNotFoundError, match=f"charset file {missing} not found"):
            STRDataModule(charset=missing)




def test_an_image_over_pillows_pixel_limit_is_named_with_the_limit(tmp_path, monkeypatch):
    """Pillow refuses an image of more than twice MAX_IMAGE_PIXELS (a decompression bomb, or a large scan) with its own
    error, which named neither the file nor the LMDB build's image; now a ValueError as other unreadable images."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "big scan.png"
    Image.new("L", (30, 30), 255).save(path)  # 900 pixels > 2 x 100
    with pytest.raises(ValueError, match=r"big scan\.png.*900 pixels.*MAX_IMAGE_PIXELS"):
        load_image(path)
    with pytest.raises(ValueError, match=r"900 pixels.*MAX_IMAGE_PIXELS"):
        load_image(path.read_bytes())
    (tmp_path / "imgs").mkdir()
    path.rename(tmp_path / "imgs" / "big scan.png")
    (tmp_path / "imgs" / "labels.txt").write_text("big scan.png\tabc\n")
    with pytest.raises(ValueError, match=r"cannot add .*big scan\.png"):
        build_lmdb(tmp_path / "imgs", tmp_path / "out")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the fix the message gives
    assert load_image(tmp_path / "imgs" / "big scan.png").size == (30, 30)