"""Synthetic captioned scenes: shapes, colors, sizes, counts and spatial relations.

Scene ``i`` of seed ``s`` is drawn from ``numpy.random.default_rng([s, i])``, so any index can be
rendered alone and the set is deterministic by seed. A scene has ``count`` copies (1-3) of object A
and one object B, with A ``to the left of`` / ``to the right of`` / ``above`` / ``below`` B; its
caption is rich in function words ("there are two small red circles to the left of the large blue
square"). :func:`hard_negative` changes one attribute or the relation (color, shape, size, count, relation
flipped: one word, except a count, whose plural and verb change with it), giving a caption that no longer
matches the image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond")
COLORS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20),
          "purple": (140, 40, 170)}
SIZES = {"small": 0.09, "large": 0.16}  # radius as a share of the image side
COUNTS = {1: "a", 2: "two", 3: "three"}
_COLOR_NAMES, _SIZE_NAMES = tuple(COLORS), tuple(SIZES)
RELATIONS = ("left", "right", "above", "below")
_REL_TEXT = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_FLIP = {"left": "right", "right": "left", "above": "below", "below": "above"}
# Near-synonyms of caption words, for the word-swap text attack (in the vocabulary, never in a caption).
SYNONYMS = {
    "small": ["little", "tiny"], "large": ["big", "huge"], "circle": ["ring", "disc"], "circles": ["rings", "discs"],
    "square": ["box", "block"], "squares": ["boxes", "blocks"], "triangle": ["wedge"], "triangles": ["wedges"],
    "diamond": ["rhombus"], "diamonds": ["rhombuses"], "above": ["over"], "below": ["under", "beneath"],
    "picture": ["image", "photo"], "red": ["crimson"], "green": ["lime"], "blue": ["navy"], "yellow": ["golden"],
    "purple": ["violet"], "two": ["2"], "three": ["3"], "a": ["one"], "the": ["that"],
}
TEMPLATES = (
    "{a} {rel} {b}",
    "there {be} {a} {rel} {b}",
    "in this picture {a} {be} {rel} {b}",
)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str


@dataclass(frozen=True)
class Scene:
    """One scene: ``count`` copies of ``a`` placed ``relation`` (left/right/above/below) ``b``."""

    a: SceneObject
    b: SceneObject
    count: int
    relation: str
    template: int
    layout_seed: int

    def caption(self) -> str:
        """The caption ("a small red circle to the left of the large blue square")."""
        noun = self.a.shape + ("s" if self.count > 1 else "")
        a = f"{COUNTS[self.count]} {self.a.size} {self.a.color} {noun}"
        b = f"the {self.b.size} {self.b.color} {self.b.shape}"
        be = "are" if self.count > 1 else "is"
        return TEMPLATES[self.template].format(a=a, b=b, rel=_REL_TEXT[self.relation], be=be)


def vocabulary() -> list[str]:
    """Every word a caption of this generator can contain."""
    words: set[str] = set()
    for t in TEMPLATES:
        words.update(w for w in t.replace("{", " {").split() if not w.startswith("{"))
    words.update(["is", "are", "the"] + list(COUNTS.values()) + list(COLORS) + list(SIZES))
    words.update(SHAPES)
    words.update(s + "s" for s in SHAPES)
    for r in _REL_TEXT.values():
        words.update(r.split())
    return sorted(words)


def sample_scene(seed: int, index: int) -> Scene:
    """Scene ``index`` of the set with ``seed``."""
    rng = np.random.default_rng([seed, index])
    # pool[rng.integers(len(pool))] draws what rng.choice(pool) does (the same integer from the same stream), without
    # choice's conversion of the pool to an array on every draw (most of the time of a scene)
    pick = lambda pool: pool[int(rng.integers(len(pool)))]  # noqa: E731
    objs = []
    for _ in range(2):
        objs.append(SceneObject(pick(SHAPES), pick(_COLOR_NAMES), pick(_SIZE_NAMES)))
    a, b = objs
    if a == b:  # the two objects must be told apart by the caption
        b = replace(b, color=[c for c in COLORS if c != a.color][int(rng.integers(len(COLORS) - 1))])
    return Scene(a, b, int(rng.integers(1, 4)), pick(RELATIONS), int(rng.integers(len(TEMPLATES))),
                 int(rng.integers(2**31)))


def hard_negative(scene: Scene, seed: int) -> Scene:
    """A scene whose caption differs from ``scene``'s in one attribute (one word; a count also changes the plural
    and the verb) or in the relation."""
    rng = np.random.default_rng([seed, scene.layout_seed])
    kind = str(rng.choice(["color_a", "color_b", "shape_a", "shape_b", "size_a", "count", "relation"]))
    other = lambda pool, cur: [p for p in pool if p != cur][int(rng.integers(len(pool) - 1))]  # noqa: E731
    if kind == "color_a":
        return replace(scene, a=replace(scene.a, color=other(list(COLORS), scene.a.color)))
    if kind == "color_b":
        return replace(scene, b=replace(scene.b, color=other(list(COLORS), scene.b.color)))
    if kind == "shape_a":
        return replace(scene, a=replace(scene.a, shape=other(SHAPES, scene.a.shape)))
    if kind == "shape_b":
        return replace(scene, b=replace(scene.b, shape=other(SHAPES, scene.b.shape)))
    if kind == "size_a":
        return replace(scene, a=replace(scene.a, size=other(list(SIZES), scene.a.size)))
    if kind == "count":
        return replace(scene, count=other([1, 2, 3], scene.count))
    return replace(scene, relation=_FLIP[scene.relation])


def _draw(d: ImageDraw.ImageDraw, obj: SceneObject, cx: float, cy: float, r: float) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        d.ellipse(box, fill=fill)
    elif obj.shape == "square":
        d.rectangle(box, fill=fill)
    elif obj.shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def render(scene: Scene, size: int = 64) -> np.ndarray:
    """The scene as a ``[size, size, 3]`` uint8 image (light background, A's copies in a line)."""
    rng = np.random.default_rng(scene.layout_seed)
    bg = tuple(int(v) for v in rng.integers(225, 256, size=3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    ra, rb = SIZES[scene.a.size] * size, SIZES[scene.b.size] * size
    horizontal = scene.relation in ("left", "right")
    # B sits in one half, A's copies in the other half, stacked across the relation's axis.
    b_first = scene.relation in ("right", "below")  # A right of / below B: B takes the first half
    j = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    b_main = j(0.2, 0.3) * size if b_first else j(0.7, 0.8) * size
    a_main = j(0.7, 0.8) * size if b_first else j(0.2, 0.3) * size
    b_cross = j(0.3, 0.7) * size
    n = scene.count
    ra = min(ra, 0.8 * size / (2.3 * n))  # copies of a large object shrink to fit, staying larger than small
    span = min(size * 0.8, 2.3 * ra * n)
    start = 0.5 * size - span / 2 + ra
    step = (span - 2 * ra) / max(n - 1, 1)
    bx, by = (b_main, b_cross) if horizontal else (b_cross, b_main)
    _draw(d, scene.b, bx, by, rb)
    for k in range(n):
        c = start + k * step if n > 1 else j(0.35, 0.65) * size
        ax, ay = (a_main, c) if horizontal else (c, a_main)
        _draw(d, scene.a, ax, ay, ra)
    return np.asarray(img, dtype=np.uint8)


def make_scenes(seed: int, start: int, n: int, unique: bool = False, exclude: Optional[set[str]] = None) -> list[Scene]:
    """``n`` scenes from index ``start`` on; ``unique`` skips repeated captions (and those in ``exclude``)."""
    out: list[Scene] = []
    seen = set(exclude or ())
    i = start
    while len(out) < n:
        s = sample_scene(seed, i)
        i += 1
        if unique:
            c = s.caption()
            if c in seen:
                continue
            seen.add(c)
        out.append(s)
        if i - start > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} scenes with distinct captions; ask for fewer")
    return out


__all__ = ["COLORS", "RELATIONS", "SHAPES", "SIZES", "SYNONYMS", "Scene", "SceneObject", "hard_negative", "make_scenes",
           "render", "sample_scene", "vocabulary"]
