"""The synthetic generator: determinism, disjoint splits, held-out fonts, glyph coverage."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import ImageFont

from zoo.data.charsets import CHARSETS
from zoo.data.str_synth import (
    TEST_FONTS, TRAIN_FONTS, font_covers, font_path, make_sample, render_word, sample_font, sample_rng, usable_fonts,
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
