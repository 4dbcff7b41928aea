"""Synthetic scene-text crops: words rendered with the fonts matplotlib ships, then distorted.

Every sample is a pure function of ``(seed, split, index)``: its random generator is seeded with
``numpy.random.SeedSequence([seed, split_id, index])``, so train / val / test draw from disjoint
streams and a sample never depends on the order it is asked for. The test split renders with fonts
held out of training (:data:`TEST_FONTS`); train and val use :data:`TRAIN_FONTS`.

Words are random strings over the charset, pseudo-words built from syllables ("dictionary-like"),
or numbers. Distortions (all scaled by ``strength`` in ``[0, 1]``): varied backgrounds (flat,
gradient, smoothed noise texture), colour with a minimum contrast, rotation, perspective, Gaussian
blur, pixel noise, and brightness/contrast jitter. ``shear`` (off by default) slants half the words
to the right, as italic type does, so upright fonts also appear oblique in training. The paper leaves the synthetic data open; these
choices are the simplest ones that cover the issue's list.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SPLITS = {"train": 0, "val": 1, "test": 2}
# Fonts by file stem; symbol-only fonts (cmex10, cmsy10, cmmi10, STIXSize*, STIXNonUni*, LastResort)
# and the glyph-subset Display faces are excluded.
TRAIN_FONTS = (
    "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSansMono", "DejaVuSansMono-Bold",
    "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "STIXGeneral", "STIXGeneralBol",
    "STIXGeneralItalic", "cmr10", "cmb10", "cmss10", "cmtt10",
)
TEST_FONTS = ("DejaVuSans-BoldOblique", "DejaVuSansMono-Oblique", "DejaVuSerif-BoldItalic", "STIXGeneralBolIta", "cmti10")
_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr", "")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oo", "y")
_CODAS = ("", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "rt")


def font_dir() -> Path:
    """The folder of TrueType fonts shipped with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=None)
def font_path(stem: str) -> str:
    path = font_dir() / f"{stem}.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"font {path} not found; matplotlib's font folder lacks {stem}.ttf")
    return str(path)


# the Computer Modern fonts draw TeX's typographic quotes at these code points: read as the characters
_GLYPH_ALIASES = {"'": ("quoteright",), "`": ("quoteleft",)}


@functools.lru_cache(maxsize=None)
def _reference_font():  # DejaVuSans names its glyphs as the Adobe Glyph List does
    from matplotlib.ft2font import FT2Font

    return FT2Font(font_path("DejaVuSans"))


def _draws(f, index: int, c: str) -> bool:
    """Whether glyph ``index`` of font ``f`` is the character ``c`` by its glyph name (the name DejaVuSans gives
    ``c``, its ``uniXXXX`` form, or an old-style figure). A glyph or character without a name to compare passes."""
    cp = ord(c)
    uni = (f"uni{cp:04X}", f"u{cp:04X}", f"u{cp:05X}")
    try:
        name = f.get_glyph_name(index)
        ref = _reference_font()
        j = ref.get_char_index(cp)
        expected = ref.get_glyph_name(j) if j else ""
    except (RuntimeError, ValueError):
        return True
    if not name or not expected or expected in uni or re.fullmatch(r"uni[0-9a-f]{8}", name):
        return True  # nothing to compare with (matplotlib names an unnamed glyph by its index: uni%08x)
    return name in (expected, expected + "oldstyle", *uni, *_GLYPH_ALIASES.get(c, ()))


@functools.lru_cache(maxsize=None)
def font_covers(stem: str, chars: str) -> bool:
    """Whether the font draws every character of ``chars``: a glyph in its FreeType char map that is that
    character (TeX's fonts keep other glyphs at many code points: cmr10 has a Theta at '£', cmsy10 symbols at
    the letters), see :func:`_draws`."""
    from matplotlib.ft2font import FT2Font

    f = FT2Font(font_path(stem))
    return all((i := f.get_char_index(ord(c))) != 0 and _draws(f, i, c) for c in chars)


@functools.lru_cache(maxsize=512)
def _font(stem: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_path(stem), size)


# The Computer Modern fonts matplotlib ships keep TeX's OT1 encoding: these ASCII code points hold
# other glyphs there (e.g. '<' is an inverted '!'), so a charset using them skips the cm fonts.
CM_WRONG_GLYPHS = '"<>\\_{|}^~'


class UncoveredCharset(ValueError):
    """No font of a set renders every character of the charset (synthetic crops cannot be drawn)."""


def usable_fonts(stems: Sequence[str], chars: str) -> tuple[str, ...]:
    """The fonts of ``stems`` that render every character of ``chars``; an error if none does."""
    cm_bad = any(c in CM_WRONG_GLYPHS for c in chars)
    ok = tuple(s for s in stems if font_covers(s, chars) and not (cm_bad and s.startswith("cm")))
    if not ok:
        raise UncoveredCharset(f"none of the fonts {list(stems)} covers the charset; use an ASCII charset for synthetic data")
    return ok


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one sample; disjoint streams per split by construction."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS[split], int(index)]))


def random_word(rng: np.random.Generator, chars: str, min_len: int, max_len: int) -> str:
    """A random string, a pseudo-word, or a number, with ``min_len <= len <= max_len`` characters of ``chars``."""
    n = int(rng.integers(min_len, max_len + 1))
    kind = rng.random()
    letters = [c for c in chars if c.isalpha() and c.isascii()]
    digits = [c for c in chars if c.isdigit()]
    if kind < 0.45 and letters:
        word = ""
        while len(word) < n:
            word += _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] + _CODAS[rng.integers(len(_CODAS))]
        word = word[:n]
        cased = any(c.isupper() for c in chars)
        if cased:
            style = rng.random()
            word = word.upper() if style < 0.25 else (word.capitalize() if style < 0.6 else word)
        if all(c in chars for c in word):
            return word
    if kind < 0.55 and digits:
        return "".join(digits[i] for i in rng.integers(len(digits), size=n))
    return "".join(chars[i] for i in rng.integers(len(chars), size=n))


def _background(rng: np.random.Generator, w: int, h: int, lum: float) -> np.ndarray:
    """An RGB float background around luminance ``lum``: flat, gradient or smoothed noise."""
    tint = rng.uniform(-0.15, 0.15, size=3)
    base = np.clip(lum + tint, 0, 1)
    kind = rng.integers(3)
    if kind == 0:
        img = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == 1:
        other = np.clip(base + rng.uniform(-0.2, 0.2, size=3), 0, 1)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
        ramp = t[None, :, None] if len(t) == w else t[:, None, None]
        img = np.broadcast_to(base + (other - base) * ramp, (h, w, 3)).copy()
    else:
        small = rng.uniform(-0.15, 0.15, size=(max(h // 8, 2), max(w // 8, 2), 1))
        tex = np.asarray(Image.fromarray(((small[..., 0] + 0.5) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC))
        img = np.clip(base + (tex[..., None] / 255.0 - 0.5), 0, 1)
    return img


def _perspective_coeffs(src: np.ndarray, dst: np.ndarray) -> list[float]:
    """PIL PERSPECTIVE coefficients mapping output corners ``dst`` to input corners ``src``."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    return np.linalg.solve(np.asarray(a, dtype=np.float64), src.reshape(8)).tolist()


def _pick_font(rng: np.random.Generator, fonts: Sequence[str]) -> str:
    return fonts[int(rng.integers(len(fonts)))]


def check_shear(shear: float, name: str = "shear") -> float:
    """``shear`` as a float, or an error naming ``name`` when it lies outside ``[0, 1]``."""
    if not 0.0 <= shear <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1] (horizontal shift per unit height), got {shear}")
    return float(shear)


def shear_image(img: Image.Image, k: float, fill: tuple[int, ...]) -> Image.Image:
    """Slant ``img`` to the right by ``k`` (horizontal shift per unit of height): a pixel at height
    ``y`` from the top moves right by ``k * (h - 1 - y)``, so the bottom row stays and the top row
    moves by ``k * (h - 1)``. The canvas widens to keep every pixel; new area is ``fill``."""
    if k < 0:
        raise ValueError(f"shear k must be >= 0 (a right slant), got {k}")
    w, h = img.size
    # PIL's AFFINE maps each output point (x, y) (pixel centres at +0.5) to the input point
    # (x + k*y - k*(h - 0.5), y): the bottom row's centre (y = h - 0.5) keeps its place.
    return img.transform((w + int(np.ceil(k * (h - 1))), h), Image.AFFINE, (1.0, k, -k * (h - 0.5), 0.0, 1.0, 0.0),
                         Image.BILINEAR, fillcolor=fill)


def render_word(
    text: str,
    rng: np.random.Generator,
    fonts: Sequence[str],
    size: tuple[int, int] = (32, 128),
    strength: float = 1.0,
    shear: float = 0.0,
) -> Image.Image:
    """Render ``text`` into an RGB crop of ``size`` (height, width) with distortions scaled by ``strength``.

    ``shear`` > 0 slants the word to the right by a factor drawn from ``[shear / 4, shear]`` in half the
    calls (0.3 is about 17 degrees); with ``shear`` = 0 no random number is drawn for it, so every
    other distortion is as without the option.
    """
    check_shear(shear)
    H, W = size
    s = float(np.clip(strength, 0.0, 1.0))
    stem = _pick_font(rng, fonts)
    font = _font(stem, int(rng.integers(28, 44)))
    left, top, right, bottom = font.getbbox(text)
    tw, th = max(right - left, 1), max(bottom - top, 1)
    # Padding covers the largest perspective shift (8% of the side), so no glyph is cut off.
    pad_x = int(rng.integers(2, 10)) + int(0.1 * s * tw)
    pad_y = int(rng.integers(2, 8)) + int(0.1 * s * th)
    cw, ch = tw + 2 * pad_x, th + 2 * pad_y
    bg_lum = float(rng.uniform(0, 1))
    # The text colour keeps a luminance gap from the background, shrinking with strength.
    gap = 0.6 - 0.25 * s
    fg_lum = bg_lum - gap - rng.uniform(0, 1 - gap) * (bg_lum - gap) / max(bg_lum, 1e-6) if bg_lum > 0.5 else \
        bg_lum + gap + rng.uniform(0, 1) * (1 - bg_lum - gap)
    fg = np.clip(fg_lum + rng.uniform(-0.1, 0.1, size=3), 0, 1)
    bg = _background(rng, cw, ch, bg_lum)
    canvas = Image.fromarray((bg * 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(canvas).text((pad_x - left, pad_y - top), text, font=font, fill=tuple(int(c * 255) for c in fg))
    if shear > 0 and rng.random() < 0.5:
        canvas = shear_image(canvas, float(rng.uniform(shear / 4, shear)), tuple(int(c * 255) for c in bg[0, 0]))
    angle = float(rng.normal(0, 3.0 * s))
    if abs(angle) > 0.2:
        fill = tuple(int(c * 255) for c in bg[0, 0])
        canvas = canvas.rotate(angle, resample=Image.BILINEAR, expand=True, fillcolor=fill)
    if s > 0:
        cw, ch = canvas.size
        d = 0.08 * s
        dst = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float64)
        src = dst + rng.uniform(-d, d, size=(4, 2)) * np.array([cw, ch])
        canvas = canvas.transform((cw, ch), Image.PERSPECTIVE, _perspective_coeffs(src, dst), Image.BILINEAR)
    img = canvas.resize((W, H), Image.BILINEAR)
    blur = float(rng.uniform(0, 1.0 * s))
    if blur > 0.3:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    contrast = 1 + rng.uniform(-0.3, 0.2) * s
    bright = rng.uniform(-0.1, 0.1) * s
    arr = (arr - 0.5) * contrast + 0.5 + bright
    arr = arr + rng.normal(0, 0.04 * s * rng.random(), size=arr.shape)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8), "RGB")


def make_sample(
    seed: int, split: str, index: int, chars: str, *, min_len: int = 1, max_len: int = 10,
    strength: float = 1.0, size: tuple[int, int] = (32, 128), fonts: Optional[Sequence[str]] = None,
    shear: float = 0.0,
) -> tuple[Image.Image, str]:
    """Sample ``index`` of ``split``: ``(image, text)``; test uses the held-out fonts unless ``fonts`` is given."""
    rng, fonts, text = _start(seed, split, index, chars, min_len, max_len, fonts)
    return render_word(text, rng, fonts, size, strength, shear), text


def sample_font(
    seed: int, split: str, index: int, chars: str, *, min_len: int = 1, max_len: int = 10,
    fonts: Optional[Sequence[str]] = None,
) -> str:
    """The font (file stem) that :func:`make_sample` renders sample ``index`` with, without rendering it."""
    rng, fonts, _ = _start(seed, split, index, chars, min_len, max_len, fonts)
    return _pick_font(rng, fonts)


def _start(
    seed: int, split: str, index: int, chars: str, min_len: int, max_len: int, fonts: Optional[Sequence[str]],
) -> tuple[np.random.Generator, tuple[str, ...], str]:
    """A sample's generator after drawing its word, its usable fonts and the word."""
    rng = sample_rng(seed, split, index)
    fonts = usable_fonts(fonts or (TEST_FONTS if split == "test" else TRAIN_FONTS), chars)
    return rng, fonts, random_word(rng, chars, min_len, max_len)


__all__ = [
    "SPLITS", "TEST_FONTS", "TRAIN_FONTS", "font_covers", "font_dir", "make_sample", "random_word",
    "check_shear", "render_word", "sample_font", "sample_rng", "shear_image", "usable_fonts",
]
