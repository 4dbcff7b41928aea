"""The synthetic generator: determinism, disjoint splits, held-out fonts, glyph coverage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from zoo.data.charsets import CHARSETS
from zoo.data.str_synth import (
    TEST_FONTS, TRAIN_FONTS, font_covers, font_path, make_sample, render_word, sample_font, sample_rng, shear_image,
    usable_fonts,
)


def test_deterministic_and_disjoint_splits():
    a1, t1 = make_sample(3, "train", 7, CHARSETS["36"])
    a2, t2 = make_sample(3, "train", 7, CHARSETS["36"])
    assert t1 == t2 and np.array_equal(np.asarray(a1), np.asarray(a2))
    assert a1.size == (128, 32) and a1.mode == "RGB"
    train = {make_sample(0, "train", i, CHARSETS["36"])[1] for i in range(50)}
    val = [make_sample(0, "val", i, CHARSETS["36"])[1] for i in range(50)]
    assert len(set(val) & train) < 5  # different streams; only short words may coincide
    # disjoint random streams: the first draws differ between splits for the same index
    draws = [sample_rng(0, s, 1).random(4).tolist() for s in ("train", "val", "test")]
    assert draws[0] != draws[1] != draws[2]
    with pytest.raises(ValueError, match="split"):
        sample_rng(0, "dev", 0)


def test_held_out_fonts_and_coverage():
    assert not set(TRAIN_FONTS) & set(TEST_FONTS)
    for stem in TRAIN_FONTS + TEST_FONTS:
        assert font_covers(stem, CHARSETS["36"]), stem
        assert not any(k in stem for k in ("cmex", "cmsy", "cmmi", "STIXSiz", "STIXNonUni", "LastResort", "Display"))
    # cm fonts keep TeX's OT1 encoding: '<' renders as an inverted '!' (same glyph as U+00A1 in DejaVu-free terms:
    # it differs from DejaVu's '<' drawn by PIL), so a charset holding '<' leaves them out
    assert all(not s.startswith("cm") for s in usable_fonts(TRAIN_FONTS, CHARSETS["94"]))
    assert "cmr10" in usable_fonts(TRAIN_FONTS, CHARSETS["36"])
    lt = ImageFont.truetype(font_path("cmr10"), 40).getmask("<")
    excl = ImageFont.truetype(font_path("cmr10"), 40).getmask("!")
    # the OT1 '<' glyph (inverted exclamation) has the same ink as '!' flipped, unlike a real '<'
    a, b = np.asarray(lt).reshape(lt.size[::-1]), np.asarray(excl).reshape(excl.size[::-1])
    assert a.shape == b.shape and abs(int(a.sum()) - int(b.sum())) < 0.1 * b.sum()


def test_words_within_charset_and_lengths():
    for i in range(60):
        _, t = make_sample(1, "train", i, CHARSETS["62"], min_len=2, max_len=6)
        assert 2 <= len(t) <= 6 and set(t) <= set(CHARSETS["62"])


def test_strength_scales_distortion():
    rng = np.random.default_rng
    clean = np.asarray(render_word("hello", rng(0), ("DejaVuSans",), strength=0.0), dtype=float)
    # strength 0: flat or smooth background and one text colour -> few distinct colours besides antialiasing
    noisy = np.asarray(render_word("hello", rng(0), ("DejaVuSans",), strength=1.0), dtype=float)
    assert clean.shape == noisy.shape == (32, 128, 3)
    assert not np.array_equal(clean, noisy)


def test_sample_font_names_the_font_make_sample_renders_with(monkeypatch):
    import zoo.data.str_synth as synth

    used = []
    real = synth._font
    monkeypatch.setattr(synth, "_font", lambda stem, size: used.append(stem) or real(stem, size))
    for split in ("train", "test"):
        for i in range(40):
            make_sample(5, split, i, CHARSETS["36"], min_len=1, max_len=6)
            assert sample_font(5, split, i, CHARSETS["36"], min_len=1, max_len=6) == used[-1]
    assert set(used[:40]) <= set(TRAIN_FONTS) and set(used[40:]) <= set(TEST_FONTS)
    assert len(set(used[40:])) == len(TEST_FONTS)  # every held-out font drawn within 40 samples


def test_shear_image_slants_a_vertical_bar_by_k_per_row():
    from PIL import Image

    h, w, x0, k = 20, 30, 5, 0.5
    a = np.zeros((h, w, 3), np.uint8)
    a[:, x0] = 255
    out = np.asarray(shear_image(Image.fromarray(a), k, (0, 0, 0)), dtype=float)[..., 0]
    assert out.shape == (h, w + int(np.ceil(k * (h - 1))))
    cols = np.arange(out.shape[1])
    for y in range(h):
        centre = (out[y] * cols).sum() / out[y].sum()
        assert abs(centre - (x0 + k * (h - 1 - y))) < 0.05, (y, centre)  # bottom row stays, top row moves k*(h-1)
    with pytest.raises(ValueError, match="right slant"):
        shear_image(Image.fromarray(a), -0.1, (0, 0, 0))


def test_train_shear_slants_training_words_only():
    from zoo.data.str import STRDataModule

    kw = dict(charset="36", max_length=6, synthetic={"train": 40, "val": 8, "test": 8}, synth_strength=0.4)
    plain, sheared = STRDataModule(**kw), STRDataModule(**kw, synth_train_shear=0.3)
    for split in ("val", "test"):  # the benchmark's numbers stay comparable
        for (a, ta), (b, tb) in zip(plain._sources(split)[0].base, sheared._sources(split)[0].base):
            assert ta == tb and np.array_equal(np.asarray(a), np.asarray(b))
    pairs = list(zip(plain._sources("train")[0].base, sheared._sources("train")[0].base))
    assert all(ta == tb for (_, ta), (_, tb) in pairs)  # same words
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in pairs)


def test_shear_slants_about_half_the_words(monkeypatch):
    import zoo.data.str_synth as synth

    ks = []
    real = synth.shear_image
    monkeypatch.setattr(synth, "shear_image", lambda img, k, fill: ks.append(k) or real(img, k, fill))
    for i in range(60):
        make_sample(0, "train", i, CHARSETS["36"], max_len=6, strength=0.4, shear=0.3)
    assert 15 <= len(ks) <= 45  # binomial(60, 0.5): outside this range with probability < 1e-4
    assert all(0.3 / 4 <= k <= 0.3 for k in ks)
    n = len(ks)
    for i in range(20):
        make_sample(0, "train", i, CHARSETS["36"], max_len=6, strength=0.4, shear=0.0)
    assert len(ks) == n  # shear 0 never slants


def test_bad_shear_is_refused():
    from zoo.data.str import STRDataModule

    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="synth_train_shear"):
            STRDataModule(charset="36", synth_train_shear=bad)
        with pytest.raises(ValueError, match="shear"):
            render_word("ab", np.random.default_rng(0), ("DejaVuSans",), shear=bad)


def test_train_fonts_option_trains_on_them_and_refuses_leaks():
    from zoo.data.str import STRDataModule
    import zoo.data.str_synth as synth

    kw = dict(charset="36", max_length=6, synthetic={"train": 30, "val": 10, "test": 10})
    dm = STRDataModule(**kw, synth_train_fonts=["cmmi10", "DejaVuSans"])
    for split, allowed in (("train", {"cmmi10", "DejaVuSans"}), ("val", {"cmmi10", "DejaVuSans"}), ("test", set(TEST_FONTS))):
        ds = dm._sources(split)[0].base
        used = {sample_font(0, split, i, CHARSETS["36"], max_len=6, fonts=ds.fonts) for i in range(len(ds))}
        assert used <= allowed and (split == "test" or used == allowed), (split, used)
    plain = STRDataModule(**kw)
    for (a, ta), (b, tb) in zip(plain._sources("test")[0].base, dm._sources("test")[0].base):
        assert ta == tb and np.array_equal(np.asarray(a), np.asarray(b))  # the held-out test is untouched
    with pytest.raises(ValueError, match="held-out test font"):
        STRDataModule(**kw, synth_train_fonts=["cmr10", "cmti10"])
    with pytest.raises(FileNotFoundError, match="NoSuchFont"):
        STRDataModule(**kw, synth_train_fonts=["NoSuchFont"])
    with pytest.raises(ValueError, match="cannot render"):  # OT1 Computer Modern draws '<' as an inverted '!'
        STRDataModule(charset="94", synth_train_fonts=["cmr10", "DejaVuSans"])
    assert synth.font_covers("cmmi10", CHARSETS["36"])
