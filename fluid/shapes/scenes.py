"""The scenes and captions of the built-in ``shapes`` world.

Coloured shapes (circle, square, triangle, cross) on a plain dark background, with one
caption template per GenEval task family (single object, two objects, counting, colours,
position, colour attribution). Everything is deterministic from ``(split, index)``: the
item's random stream is seeded from a stable hash of both, so ``spec(i)`` is the same in
every process and run, and the splits draw from different streams.

Geometry lives in normalised ``[0, 1]`` image coordinates (x to the right, y downwards),
so one scene renders at any resolution. Each object has a centre ``(cx, cy)``, which is the
centre of its bounding box, and a ``size`` s: the bounding box of a kind is
``2 * HALF_EXTENT[kind] * s`` wide and high. :mod:`fluid.shapes.render` draws a scene,
:mod:`fluid.shapes.dataset` numbers them into splits.

Captions are built from a small enumerable set of ``Prompt`` records; ``all_captions()``
lists them all (460), ``parse_caption`` maps a caption back to its record.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import itertools
import random

# ----------------------------------------------------------------------------- vocabulary


class Family(str, enum.Enum):
    """GenEval's six task families, one caption template each."""

    SINGLE_OBJECT = "single_object"  # "a {kind}"
    TWO_OBJECT = "two_object"  # "a {k1} and a {k2}"
    COUNTING = "counting"  # "{two|three|four} {kind}s"
    COLORS = "colors"  # "a {color} {kind}"
    POSITION = "position"  # "a {k1} {left of|right of|above|below} a {k2}"
    COLOR_ATTR = "color_attr"  # "a {c1} {k1} and a {c2} {k2}"


class Relation(str, enum.Enum):
    """Where the first object of a position caption sits relative to the second."""

    LEFT_OF = "left of"
    RIGHT_OF = "right of"
    ABOVE = "above"
    BELOW = "below"


FAMILIES = tuple(Family)
RELATIONS = tuple(Relation)
SPLITS = ("train", "val", "test")
KINDS = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
# Saturated colours whose hues sit >= 27 degrees apart (0, 27, 57, 128, 224, 280), so they stay
# apart by hue after blurring into the nearly neutral background.
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 120, 20),
    "yellow": (240, 230, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 230),
    "purple": (160, 60, 210),
}
BACKGROUND = (28, 28, 32)
# (colour, kind) pairs never drawn in the train split when holdout=True: each kind and four
# different colours appear once, so every kind and every colour is still seen in training.
HELD_OUT = (("red", "triangle"), ("green", "cross"), ("blue", "circle"), ("yellow", "square"))

# Bounding-box half extent of each kind in units of the object's size s. Squares are drawn a
# little smaller than their size so that the four kinds have similar areas.
HALF_EXTENT = {"circle": 1.0, "square": 0.86, "triangle": 1.0, "cross": 1.0}
CROSS_ARM = 0.38  # half thickness of a cross arm, in units of s

# Object sizes and layout per family (normalised units).
SINGLE_SIZE = (0.22, 0.30)  # one big object: 16-token generation stays coherent
SINGLE_JITTER = 0.08  # ... with its centre within +-0.08 of the image centre
PAIR_SIZE = (0.15, 0.20)
COUNT_SIZE = (0.10, 0.14)
MARGIN = 0.04  # every bounding box stays this far inside the image
GAP = 0.06  # bounding boxes of two objects are at least this far apart on some axis
POSITION_PERP = 0.08  # position family: |offset| across the relation's axis is at most this
_TRIES = 50  # rejection-sampling tries per object and ...
_ATTEMPTS = 20  # ... whole-layout attempts before the grid fallback


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(kind: str, color: str | None = None) -> str:
    words = f"{color} {kind}" if color else kind
    return f"{_article(words)} {words}"


# ----------------------------------------------------------------------------- prompts and scenes


@dataclasses.dataclass(frozen=True)
class Prompt:
    """What a caption asks for. ``colors[i]`` is None where the caption names no colour;
    ``count`` is the number of objects of ``kinds[0]`` for counting and 1 otherwise."""

    family: Family
    kinds: tuple[str, ...]
    colors: tuple[str | None, ...]
    count: int = 1
    relation: Relation | None = None

    @property
    def caption(self) -> str:
        f = self.family
        if f in (Family.SINGLE_OBJECT, Family.COLORS):
            return _noun(self.kinds[0], self.colors[0])
        if f in (Family.TWO_OBJECT, Family.COLOR_ATTR):
            return f"{_noun(self.kinds[0], self.colors[0])} and {_noun(self.kinds[1], self.colors[1])}"
        if f is Family.COUNTING:
            return f"{NUMBER_WORDS[self.count]} {PLURALS[self.kinds[0]]}"
        return f"{_noun(self.kinds[0])} {self.relation.value} {_noun(self.kinds[1])}"


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    kind: str  # one of KINDS
    color: str  # one of COLORS
    cx: float  # bounding-box centre, normalised [0, 1], x to the right
    cy: float  # ... y downwards
    size: float  # s: the bounding box is 2 * HALF_EXTENT[kind] * s on each side

    @property
    def half(self) -> float:
        return HALF_EXTENT[self.kind] * self.size


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    family: Family
    caption: str
    objects: list[ShapeObject]


def _enumerate_prompts() -> list[Prompt]:
    F = Family
    out = [Prompt(F.SINGLE_OBJECT, (k,), (None,)) for k in KINDS]
    pairs = list(itertools.permutations(KINDS, 2))
    out += [Prompt(F.TWO_OBJECT, p, (None, None)) for p in pairs]
    out += [Prompt(F.COUNTING, (k,), (None,), count=n) for n in NUMBER_WORDS for k in KINDS]
    out += [Prompt(F.COLORS, (k,), (c,)) for c in COLORS for k in KINDS]
    out += [Prompt(F.POSITION, p, (None, None), relation=r) for p in pairs for r in RELATIONS]
    out += [Prompt(F.COLOR_ATTR, p, cs) for p in pairs for cs in itertools.permutations(COLORS, 2)]
    return out


@functools.lru_cache(maxsize=None)
def _prompt_table() -> dict[str, Prompt]:
    table = {p.caption: p for p in _enumerate_prompts()}
    assert len(table) == len(_enumerate_prompts()), "two prompts share a caption"
    return table


def all_captions() -> list[str]:
    """Every caption the templates can produce, sorted (for precomputing text embeddings)."""
    return sorted(_prompt_table())


def prompts_for_family(family: Family | str) -> list[str]:
    """The captions of one family, sorted."""
    family = Family(family)
    return sorted(c for c, p in _prompt_table().items() if p.family is family)


def parse_caption(caption: str) -> Prompt:
    """The ``Prompt`` a shapes caption asks for; ValueError for any other text."""
    try:
        return _prompt_table()[caption.strip()]
    except KeyError:
        raise ValueError(f"{caption!r} is not a shapes caption (see all_captions())") from None


def caption_uses_held_out(caption: str) -> bool:
    """True if the caption names a HELD_OUT (colour, kind) combination."""
    p = parse_caption(caption)
    return any((c, k) in HELD_OUT for c, k in zip(p.colors, p.kinds))


def relation_of(a, b, margin: float = 0.0) -> Relation | None:
    """Where ``a`` is relative to ``b`` (anything with ``cx`` and ``cy``, e.g. ShapeObject)
    along the dominant axis of their centre offset, or None if that offset is not larger
    than ``margin``."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if max(abs(dx), abs(dy)) <= margin:
        return None
    if abs(dx) > abs(dy):
        return Relation.LEFT_OF if dx < 0 else Relation.RIGHT_OF
    return Relation.ABOVE if dy < 0 else Relation.BELOW


_FLIP_WORDS = {Relation.LEFT_OF.value: Relation.RIGHT_OF.value, Relation.RIGHT_OF.value: Relation.LEFT_OF.value}


def flip_caption(caption: str) -> str:
    """The caption of the horizontally mirrored image: swaps "left of" and "right of"."""
    for word, other in _FLIP_WORDS.items():
        if f" {word} " in caption:
            return caption.replace(f" {word} ", f" {other} ")
    return caption


def flip_spec(spec: SceneSpec) -> SceneSpec:
    """The horizontally mirrored scene (every kind is mirror-symmetric)."""
    objects = [dataclasses.replace(o, cx=1.0 - o.cx) for o in spec.objects]
    return SceneSpec(spec.family, flip_caption(spec.caption), objects)


# ----------------------------------------------------------------------------- sampling


def item_seed(split: str, index: int) -> int:
    """A stable 64-bit seed for one item (never Python's salted ``hash``)."""
    key = f"fluid-shapes/v1/{split}/{index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")


def _separated(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Bounding boxes (cx, cy, half) at least GAP apart along x or along y."""
    return max(abs(a[0] - b[0]) - a[2] - b[2], abs(a[1] - b[1]) - a[2] - b[2]) >= GAP


def _centre_range(rng: random.Random, half: float) -> float:
    return rng.uniform(MARGIN + half, 1.0 - MARGIN - half)


def _grid_layout(rng: random.Random, halves: list[float]) -> list[tuple[float, float]]:
    """Fallback: one object per cell of a 2x2 grid (fits any n <= 4 with half <= 0.2)."""
    cells = [(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)]
    rng.shuffle(cells)
    return cells[: len(halves)]


def _scatter(rng: random.Random, halves: list[float]) -> list[tuple[float, float]]:
    """Random non-overlapping centres for boxes of the given half extents."""
    for _ in range(_ATTEMPTS):
        placed: list[tuple[float, float, float]] = []
        for h in halves:
            for _ in range(_TRIES):
                cand = (_centre_range(rng, h), _centre_range(rng, h), h)
                if all(_separated(cand, p) for p in placed):
                    placed.append(cand)
                    break
            else:
                break
        if len(placed) == len(halves):
            return [(x, y) for x, y, _ in placed]
    return _grid_layout(rng, halves)


def _relation_layout(rng: random.Random, halves: list[float], rel: Relation) -> list[tuple[float, float]]:
    """Centres of (first, second) so that ``first rel second`` holds without doubt: the offset
    along the relation's axis is >= h1 + h2 + GAP (>= 0.36) and across it <= POSITION_PERP."""
    h1, h2 = halves
    sign = -1.0 if rel in (Relation.LEFT_OF, Relation.ABOVE) else 1.0  # first minus second, along
    along = None
    for _ in range(_TRIES):
        a1, a2 = _centre_range(rng, h1), _centre_range(rng, h2)
        if sign * (a1 - a2) >= h1 + h2 + GAP:
            along = (a1, a2)
            break
    if along is None:  # the guaranteed layout: first and second near opposite sides
        along = (0.27, 0.73) if sign < 0 else (0.73, 0.27)
    hmax = max(h1, h2)
    p1 = _centre_range(rng, hmax)
    lo, hi = max(MARGIN + h2, p1 - POSITION_PERP), min(1.0 - MARGIN - h2, p1 + POSITION_PERP)
    p2 = rng.uniform(lo, hi)
    if rel in (Relation.LEFT_OF, Relation.RIGHT_OF):
        return [(along[0], p1), (along[1], p2)]
    return [(p1, along[0]), (p2, along[1])]


def _sample_prompt(rng: random.Random, family: Family, allowed: dict[str, list[str]]) -> Prompt:
    """Draw a prompt of one family; ``allowed[kind]`` lists the colours this split may use for
    that kind (all of them, or all but the held-out ones)."""
    F = Family
    if family is F.SINGLE_OBJECT:
        return Prompt(family, (rng.choice(KINDS),), (None,))
    if family is F.COUNTING:
        return Prompt(family, (rng.choice(KINDS),), (None,), count=rng.choice(list(NUMBER_WORDS)))
    if family is F.COLORS:
        kind = rng.choice(KINDS)
        return Prompt(family, (kind,), (rng.choice(allowed[kind]),))
    kinds = tuple(rng.sample(KINDS, 2))
    if family is F.TWO_OBJECT:
        return Prompt(family, kinds, (None, None))
    if family is F.POSITION:
        return Prompt(family, kinds, (None, None), relation=rng.choice(RELATIONS))
    c1 = rng.choice(allowed[kinds[0]])
    c2 = rng.choice([c for c in allowed[kinds[1]] if c != c1])
    return Prompt(family, kinds, (c1, c2))


def sample_spec(rng: random.Random, family: Family, allowed: dict[str, list[str]] | None = None) -> SceneSpec:
    """One scene of ``family`` drawn from ``rng``; colours per kind restricted to ``allowed``."""
    allowed = allowed or {k: list(COLORS) for k in KINDS}
    prompt = _sample_prompt(rng, family, allowed)
    F = Family
    if family is F.COUNTING:
        kinds = list(prompt.kinds) * prompt.count
        colors = [rng.choice(allowed[kinds[0]])] * prompt.count
    else:
        kinds = list(prompt.kinds)
        colors = [c if c is not None else rng.choice(allowed[k]) for k, c in zip(kinds, prompt.colors)]
    if family in (F.SINGLE_OBJECT, F.COLORS):
        s = rng.uniform(*SINGLE_SIZE)
        jitter = min(SINGLE_JITTER, 0.5 - MARGIN - HALF_EXTENT[kinds[0]] * s)
        sizes = [s]
        centres = [(0.5 + rng.uniform(-jitter, jitter), 0.5 + rng.uniform(-jitter, jitter))]
    else:
        sizes = [rng.uniform(*(COUNT_SIZE if family is F.COUNTING else PAIR_SIZE)) for _ in kinds]
        halves = [HALF_EXTENT[k] * s for k, s in zip(kinds, sizes)]
        if family is F.POSITION:
            centres = _relation_layout(rng, halves, prompt.relation)
        else:
            centres = _scatter(rng, halves)
    objects = [ShapeObject(k, c, x, y, s) for k, c, (x, y), s in zip(kinds, colors, centres, sizes)]
    return SceneSpec(family, prompt.caption, objects)
