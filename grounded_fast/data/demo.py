"""The built-in demo corpus: generated scenes, English captions and paraphrases, German translations.

Every item is one generated scene: 1-3 shapes (SHAPES: 20 kinds, from circle and square to heart,
arrow, moon and house) in distinct colours (10), three sizes and four fills (plain, or striped,
dotted or checkered in a darker shade of the colour) on a white background. With two or more
objects a spatial relation (left of, right of, above, below, next to, far from) holds between two
of them, and the positions are sampled so that it is visibly true. A :class:`SceneGraph` is the
single source of truth: the image (:func:`render_scene`) and every caption (:func:`caption_pair`)
are functions of it.

Captions come from a small grammar: the English ``target`` (the canonical template and words),
``num_paraphrases`` English ``paraphrases`` (other templates, synonyms, word order, inverse
relations, relative clauses) and a parallel German grammar with gender and case agreement
(nominative, accusative, dative after ``ein``). ``translations[0]`` is the German of the target,
``translations[1 + k]`` the German of ``paraphrases[k]``. Each caption, the target included, also
draws its own non-visual words (a :class:`Style`): a hedging adverb ("probably", "apparently"),
a framing clause ("I think", "I would say"), an evaluative adjective ("nice", "strange") and a
closing tag ("in my opinion", "in this picture", "so there are exactly two shapes"), each present
or not; they are the same in a caption and its German, and true of every scene (counting tags
count). So a paraphrase differs from the target in wording, not in what it says the image holds.
Captions are lowercase-initial (but the pronoun "I") without final punctuation; German nouns
keep their capital.

The three grounding tasks share one target per item, ``item.target``; their sources
(:meth:`DemoItem.source`):

====  ======================  ==============================================================
task  source                  field
====  ======================  ==============================================================
C     the image (captioning)  ``item.image``: uint8 array (H, W, 3); features come later from a
                              vision encoder
P     an English paraphrase   ``item.paraphrases[k]``
T     the German translation  ``item.translations[0]``
====  ======================  ==============================================================

Deterministic: scene ``i`` of a corpus draws only from
``numpy.random.default_rng(SeedSequence(seed, spawn_key=(0, i)))``, so equal seeds give identical
graphs, captions and image bytes, and a corpus of ``n`` scenes is the prefix of a longer one with
the same seed (the train/val/test split, a seeded permutation, depends on ``num_scenes``).

On disk (:meth:`DemoCorpus.save` / :meth:`DemoCorpus.load`): ``corpus.json`` (the settings),
``scenes.jsonl`` (one item a line, UTF-8) and optionally ``images/<scene_id>.png``; loading
re-renders images from the scene graphs.

:func:`build_vocab` makes a word-level :class:`Vocab` (lowercase, punctuation split, special
tokens ``<pad> <bos> <eos> <unk>``) for the seq2seq decoder targets.
"""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, TypeVar, Union

import numpy as np

from .._atomic import write_atomic

__all__ = [
    "SHAPES", "COLOURS", "SIZES", "PATTERNS", "RELATIONS", "TASKS", "SPLITS", "SPECIAL_TOKENS", "MAX_PARAPHRASES",
    "SceneObject", "Relation", "SceneGraph", "Style", "DemoItem", "DemoCorpus", "Vocab",
    "random_scene", "random_style", "render_scene", "encode_png", "english_noun_phrase", "german_noun_phrase",
    "caption_tags", "num_templates", "caption_pair", "generate_captions", "tokenize", "detokenize", "build_vocab",
]

# ----------------------------------------------------------------------------- lexicon
SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond", "heart", "ring", "hexagon",
          "pentagon", "octagon", "rectangle", "oval", "arrow", "moon", "kite", "semicircle",
          "trapezoid", "teardrop", "house")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "grey", "turquoise")
SIZES = ("small", "medium", "large")
PATTERNS = ("plain", "striped", "dotted", "checkered")
RELATIONS = ("left_of", "right_of", "above", "below", "next_to", "far_from")
INVERSE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above",
           "next_to": "next_to", "far_from": "far_from"}

# No blend of one colour (or pattern shade) with the white background equals another colour or
# shade (the tests rely on it). A patterned shape is filled with its colour and, on the pattern,
# with the colour's darker SHADE.
RGB = {"red": (215, 40, 40), "green": (40, 160, 70), "blue": (40, 80, 215),
       "yellow": (230, 195, 30), "purple": (130, 60, 170), "orange": (240, 130, 30),
       "pink": (240, 120, 180), "brown": (140, 90, 40), "grey": (150, 150, 150),
       "turquoise": (40, 190, 190)}
SHADE = {name: tuple(int(round(0.55 * c)) for c in rgb) for name, rgb in RGB.items()}
RADIUS = {"small": 0.09, "medium": 0.12, "large": 0.15}  # bounding-circle radius, fraction of the side

# English surface forms, the canonical one first ("" = no word).
EN_SIZE = {"small": ("small", "little"), "medium": ("medium",), "large": ("large", "big")}
EN_PATTERN = {"plain": ("",), "striped": ("striped", "stripy"), "dotted": ("dotted", "spotted"),
              "checkered": ("checkered", "chequered")}
EN_RELATION = {"left_of": ("to the left of", "left of", "on the left side of"),
               "right_of": ("to the right of", "right of", "on the right side of"),
               "above": ("above", "over"), "below": ("below", "under", "beneath"),
               "next_to": ("next to", "beside"), "far_from": ("far from", "far away from", "a long way from")}

# German: noun and gender; adjective stems (all declinable); prepositions (all with the dative).
DE_NOUN = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
           "star": ("Stern", "m"), "cross": ("Kreuz", "n"), "diamond": ("Raute", "f"),
           "heart": ("Herz", "n"), "ring": ("Ring", "m"), "hexagon": ("Sechseck", "n"),
           "pentagon": ("Fünfeck", "n"), "octagon": ("Achteck", "n"), "rectangle": ("Rechteck", "n"),
           "oval": ("Oval", "n"), "arrow": ("Pfeil", "m"), "moon": ("Mond", "m"),
           "kite": ("Drachenviereck", "n"), "semicircle": ("Halbkreis", "m"), "trapezoid": ("Trapez", "n"),
           "teardrop": ("Tropfen", "m"), "house": ("Haus", "n")}
DE_ADJECTIVE = {"small": "klein", "medium": "mittelgroß", "large": "groß", "red": "rot", "green": "grün",
                "blue": "blau", "yellow": "gelb", "purple": "violett", "orange": "orangefarben",
                "pink": "pinkfarben", "brown": "braun", "grey": "grau", "turquoise": "türkisfarben",
                "striped": "gestreift", "dotted": "gepunktet", "checkered": "kariert"}
DE_RELATION = {"left_of": "links von", "right_of": "rechts von", "above": "über",
               "below": "unter", "next_to": "neben", "far_from": "weit entfernt von"}
_CASES = ("nom", "acc", "dat")
_DE_ARTICLE = {"m": ("ein", "einen", "einem"), "n": ("ein", "ein", "einem"),
               "f": ("eine", "eine", "einer")}
_DE_ENDING = {"m": ("er", "en", "en"), "n": ("es", "es", "en"), "f": ("e", "e", "en")}  # mixed
_DE_RELATIVE = {"m": "der", "n": "das", "f": "die"}
_DE_DATIVE = {"Herz": "Herzen"}  # irregular dative singular

# Non-visual words (:class:`Style`), (English, German). Hedging adverbs stand after the finite
# verb of a clause; frames open a clause caption; evaluative adjectives precede the subject's
# other adjectives (German: declined like them); tags close any caption.
ADVERBS = (("probably", "wahrscheinlich"), ("apparently", "anscheinend"), ("perhaps", "vielleicht"),
           ("maybe", "eventuell"), ("clearly", "eindeutig"), ("obviously", "offensichtlich"),
           ("possibly", "möglicherweise"), ("certainly", "sicher"), ("definitely", "definitiv"),
           ("actually", "tatsächlich"), ("evidently", "offenbar"), ("seemingly", "scheinbar"),
           ("presumably", "vermutlich"), ("supposedly", "angeblich"), ("undoubtedly", "zweifellos"),
           ("surely", "sicherlich"), ("really", "wirklich"), ("most likely", "höchstwahrscheinlich"))
FRAMES = (("I think", "ich denke"), ("I believe", "ich glaube"), ("I guess", "ich vermute"),
          ("I suppose", "ich nehme an"), ("I would say", "ich würde sagen"))
EVALUATIONS = (("nice", "schön"), ("pretty", "hübsch"), ("lovely", "reizend"), ("simple", "einfach"),
               ("strange", "seltsam"), ("beautiful", "wunderschön"), ("cute", "niedlich"),
               ("neat", "ordentlich"), ("perfect", "perfekt"), ("elegant", "elegant"),
               ("funny", "lustig"), ("weird", "komisch"), ("boring", "langweilig"),
               ("charming", "charmant"), ("ordinary", "gewöhnlich"), ("typical", "typisch"),
               ("unusual", "ungewöhnlich"), ("interesting", "interessant"))
TAGS = ((", in my opinion", ", meiner Meinung nach"), (", if I am not mistaken", ", wenn ich mich nicht irre"),
        (", as far as I can tell", ", soweit ich das erkennen kann"), (", of course", ", natürlich"),
        (", in this picture", ", auf diesem Bild"), (", in this drawing", ", in dieser Zeichnung"),
        (", in this illustration", ", in dieser Illustration"), (", in this sketch", ", auf dieser Skizze"),
        (", and nothing else", ", und sonst nichts"), (", and that is all", ", und das ist alles"))
# Tags that count the objects ({n}: the number word); true of every scene of that many objects.
COUNT_TAGS = {1: ((", exactly one shape", ", genau eine Form"),),
              2: ((", so there are exactly {n} shapes", ", also gibt es genau {n} Formen"),
                  (", {n} shapes altogether", ", insgesamt {n} Formen"))}
_NUMBER = {2: ("two", "zwei"), 3: ("three", "drei")}
STYLE_PROBABILITY = {"adverb": 0.5, "frame": 0.25, "evaluation": 0.5, "tag": 0.5}

# (English, German) templates; index 0 is the target. Slots: S subject, O object, X an extra
# object, R / I the relation / its inverse, A the adverb (" probably" or ""). English slot keys:
# np, bare, desc (its size, colour and pattern: "small and red"); German: nom, acc, dat, bare,
# pron (relative pronoun), desc. Templates without an A slot are noun phrases (no frame either).
_SINGLE_TEMPLATES = (
    ("{S[np]}", "{S[nom]}"),
    ("there is{A} {S[np]}", "es gibt{A} {S[acc]}"),
    ("the picture{A} shows {S[np]}", "das Bild zeigt{A} {S[acc]}"),
    ("you can{A} see {S[np]}", "man sieht{A} {S[acc]}"),
    ("{S[np]} is{A} visible", "{S[nom]} ist{A} zu sehen"),
    ("{S[np]} on a white background", "{S[nom]} auf weißem Hintergrund"),
    ("an image of {S[np]}", "ein Bild von {S[dat]}"),
    ("{S[bare]} that is {S[desc]}", "{S[bare]}, {S[pron]} {S[desc]} ist"),
)
_RELATION_TEMPLATES = (
    ("{S[np]} is{A} {R} {O[np]}", "{S[nom]} ist{A} {R} {O[dat]}"),
    ("there is{A} {S[np]} {R} {O[np]}", "es gibt{A} {S[acc]} {R} {O[dat]}"),
    ("{R} {O[np]} is{A} {S[np]}", "{R} {O[dat]} ist{A} {S[nom]}"),
    ("{O[np]} is{A} {I} {S[np]}", "{O[nom]} ist{A} {I} {S[dat]}"),
    ("the picture{A} shows {S[np]} that is {R} {O[np]}",
     "das Bild zeigt{A} {S[acc]}, {S[pron]} {R} {O[dat]} ist"),
    ("{S[np]} is{A} located {R} {O[np]}", "{S[nom]} befindet sich{A} {R} {O[dat]}"),
    ("there is{A} {O[np]} {I} {S[np]}", "es gibt{A} {O[acc]} {I} {S[dat]}"),
    ("you can{A} see {S[np]} {R} {O[np]}", "man sieht{A} {S[acc]} {R} {O[dat]}"),
)
_EXTRA_TEMPLATES = (  # appended once per object outside the relation
    (", and there is also {X[np]}", ", und es gibt auch {X[acc]}"),
    (", and {X[np]} can also be seen", ", und {X[nom]} ist auch zu sehen"),
)
MAX_PARAPHRASES = min(len(_SINGLE_TEMPLATES), len(_RELATION_TEMPLATES)) - 1

# ----------------------------------------------------------------------------- scene graph
MAX_OBJECTS = 3
_MARGIN = 0.02  # least distance of a bounding circle from the image border (fraction of the side)
_GAP = 0.04  # least distance between two bounding circles
_FAR = 0.6  # least centre distance of two objects "far from" each other
_CANDIDATES, _MAX_ROUNDS = 512, 200


@dataclass(frozen=True)
class SceneObject:
    """One shape: ``shape`` in SHAPES, ``colour`` in COLOURS, ``size`` in SIZES, ``pattern`` in
    PATTERNS; centre ``(x, y)`` as fractions of the image side, y growing downwards."""
    shape: str
    colour: str
    size: str
    x: float
    y: float
    pattern: str = "plain"

    def __post_init__(self) -> None:
        for value, allowed in ((self.shape, SHAPES), (self.colour, COLOURS), (self.size, SIZES),
                               (self.pattern, PATTERNS)):
            if value not in allowed:
                raise ValueError(f"{value!r} is not one of {allowed}")


@dataclass(frozen=True)
class Relation:
    """``objects[subject]`` is ``name`` (in RELATIONS) ``objects[object]``."""
    name: str
    subject: int = 0
    object: int = 1

    def __post_init__(self) -> None:
        if self.name not in RELATIONS:
            raise ValueError(f"{self.name!r} is not one of {RELATIONS}")


@dataclass(frozen=True)
class SceneGraph:
    """The objects of a scene (distinct colours) and, with two or more objects, one relation."""
    objects: tuple[SceneObject, ...]
    relation: Optional[Relation] = None

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= len(COLOURS):
            raise ValueError(f"a scene has 1..{len(COLOURS)} objects, got {len(self.objects)}")
        if len({o.colour for o in self.objects}) != len(self.objects):
            raise ValueError("the objects of a scene must have distinct colours")
        if (self.relation is None) != (len(self.objects) == 1):
            raise ValueError("a scene has a relation exactly when it has two or more objects")
        if self.relation is not None:
            pair = (self.relation.subject, self.relation.object)
            if pair[0] == pair[1] or not all(0 <= i < len(self.objects) for i in pair):
                raise ValueError(f"bad relation indices {pair} for {len(self.objects)} objects")

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (floats round-trip exactly through ``json``)."""
        return {"objects": [asdict(o) for o in self.objects],
                "relation": None if self.relation is None else asdict(self.relation)}

    @classmethod
    def from_dict(cls, data: dict) -> SceneGraph:
        """The inverse of :meth:`to_dict`."""
        relation = None if data["relation"] is None else Relation(**data["relation"])
        return cls(tuple(SceneObject(**o) for o in data["objects"]), relation)


def _relation_holds(name: str, offset: np.ndarray, r_subject: float, r_object: float) -> np.ndarray:
    """Whether the relation is visibly true for object-minus-subject centre offsets ``offset``
    (C, 2): bool (C,). Left of / right of / above / below: the bounding circles are separated by
    at least _GAP along the axis, which dominates the other one 2:1; next to: side by side with a
    horizontal gap of at most _GAP + 0.08 and nearly the same height; far from: the centres at
    least _FAR apart."""
    dx, dy = offset[:, 0], offset[:, 1]
    reach = r_subject + r_object + _GAP
    if name == "far_from":
        return np.hypot(dx, dy) >= _FAR
    if name == "next_to":
        return (np.abs(dx) >= reach) & (np.abs(dx) <= reach + 0.08) & (np.abs(dy) <= 0.04)
    along, across = {"left_of": (dx, dy), "right_of": (-dx, dy),
                     "above": (dy, dx), "below": (-dy, dx)}[name]
    return (along >= reach) & (np.abs(across) <= 0.5 * along)


def _place(rng: np.random.Generator, radii: Sequence[float], relation: Optional[Relation]) -> np.ndarray:
    """Centres (n, 2) in [0, 1] for bounding radii ``radii`` (n,): inside the image, pairwise
    separated by _GAP, and satisfying ``relation``; rejection sampling in batches from ``rng``."""
    r = np.asarray(radii, dtype=np.float64)
    low = (r + _MARGIN)[:, None]
    for _ in range(_MAX_ROUNDS):
        cand = rng.uniform(low, 1.0 - low, size=(_CANDIDATES, len(r), 2))
        ok = np.ones(_CANDIDATES, dtype=bool)
        for i in range(len(r)):
            for j in range(i):
                ok &= np.linalg.norm(cand[:, i] - cand[:, j], axis=1) >= r[i] + r[j] + _GAP
        if relation is not None:
            s, o = relation.subject, relation.object
            ok &= _relation_holds(relation.name, cand[:, o] - cand[:, s], r[s], r[o])
        if ok.any():
            return cand[np.argmax(ok)]
    raise RuntimeError(f"could not place {len(r)} objects with relation {relation}")


def random_scene(rng: np.random.Generator) -> SceneGraph:
    """A random scene from ``rng``: 1..MAX_OBJECTS objects (distinct colours; shapes, sizes and
    patterns drawn uniformly) and, with two or more, a relation between objects 0 and 1."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    colours = [COLOURS[i] for i in rng.choice(len(COLOURS), size=n, replace=False)]
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n)]
    sizes = [SIZES[i] for i in rng.integers(len(SIZES), size=n)]
    patterns = [PATTERNS[i] for i in rng.integers(len(PATTERNS), size=n)]
    relation = Relation(RELATIONS[int(rng.integers(len(RELATIONS)))]) if n > 1 else None
    centres = _place(rng, [RADIUS[s] for s in sizes], relation)
    objects = tuple(SceneObject(shape, colour, size, float(x), float(y), pattern)
                    for shape, colour, size, pattern, (x, y) in zip(shapes, colours, sizes, patterns, centres))
    return SceneGraph(objects, relation)


# ----------------------------------------------------------------------------- rendering
def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    """Vertices (2 * points, 2) of a star with outer radius 1, one point up."""
    angles = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _regular(n: int) -> np.ndarray:
    """Vertices (n, 2) of a regular n-gon with circumradius 1, one vertex up."""
    return _star(n, 1.0)[::2]


def _arc(cx: float, cy: float, r: float, start: float, stop: float, n: int = 48) -> np.ndarray:
    """Points (n, 2) on a circle of centre (cx, cy) and radius r from angle start to stop (radians)."""
    t = np.linspace(start, stop, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _centred(verts) -> np.ndarray:
    """The polygon (V, 2) moved so its area centroid is the origin and scaled so its farthest
    vertex lies on the unit circle."""
    v = np.asarray(verts, dtype=np.float64)
    x, y = v[:, 0], v[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    centroid = np.array([((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]) / (6 * area)
    v = v - centroid
    return v / np.linalg.norm(v, axis=1).max()


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    return np.stack([16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))], axis=1)


def _moon(cx: float = 0.6, r: float = 0.75) -> np.ndarray:
    """A crescent, horns to the right: the unit disc minus the disc of radius ``r`` at (cx, 0)."""
    x = (1 + cx * cx - r * r) / (2 * cx)  # where the two circles cross
    y = np.sqrt(1 - x * x)
    a, b = np.arctan2(y, x), np.arctan2(y, x - cx)
    return np.concatenate([_arc(0, 0, 1, a, 2 * np.pi - a), _arc(cx, 0, r, 2 * np.pi - b, b)])


# Polygons (V, 2) in units of the bounding radius, y down; each fits in the unit circle and has its
# area centroid at the origin.
_POLYGONS = {
    "square": np.array([(-0.7, -0.7), (0.7, -0.7), (0.7, 0.7), (-0.7, 0.7)]),
    "triangle": _star(3, 0.5)[::2],  # equilateral, apex up
    "star": _star(),
    "cross": np.array([(-0.3, -0.9), (0.3, -0.9), (0.3, -0.3), (0.9, -0.3), (0.9, 0.3), (0.3, 0.3),
                       (0.3, 0.9), (-0.3, 0.9), (-0.3, 0.3), (-0.9, 0.3), (-0.9, -0.3), (-0.3, -0.3)]),
    "diamond": np.array([(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]),
    "hexagon": _regular(6),
    "pentagon": _regular(5),
    "octagon": _regular(8),
    "rectangle": np.array([(-0.85, -0.5), (0.85, -0.5), (0.85, 0.5), (-0.85, 0.5)]),
    "heart": _centred(_heart()),
    "arrow": _centred([(-1.0, -0.35), (0.1, -0.35), (0.1, -0.85), (1.0, 0.0), (0.1, 0.85), (0.1, 0.35),
                       (-1.0, 0.35)]),  # pointing right
    "moon": _centred(_moon()),
    "kite": _centred([(0.0, -1.0), (0.8, -0.35), (0.0, 1.0), (-0.8, -0.35)]),
    "semicircle": _centred(_arc(0, 0, 1, np.pi, 2 * np.pi)),  # flat side down
    "trapezoid": _centred([(-0.5, -0.55), (0.5, -0.55), (0.95, 0.55), (-0.95, 0.55)]),
    "teardrop": _centred(np.concatenate([[(0.0, -1.6)], _arc(0, 0, 0.8, -np.pi / 6, 7 * np.pi / 6)])),
    "house": _centred([(0.0, -1.0), (0.8, -0.25), (0.8, 0.9), (-0.8, 0.9), (-0.8, -0.25)]),
}


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) (broadcastable arrays, units of the bounding radius) lie inside the
    shape: bool of the broadcast shape. Polygons by the even-odd crossing rule."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "ring":
        return (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3)
    if shape == "oval":
        return u * u + (v / 0.65) ** 2 <= 1.0
    inside = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    verts = _POLYGONS[shape]
    for (x1, y1), (x2, y2) in zip(verts, np.roll(verts, 1, axis=0)):
        if y1 != y2:  # a horizontal edge is never crossed
            crosses = (y1 > v) != (y2 > v)
            inside ^= crosses & (u < x1 + (v - y1) * (x2 - x1) / (y2 - y1))
    return inside


def _coverage(obj: SceneObject, image_size: int, supersample: int) -> tuple[np.ndarray, slice, slice]:
    """The fraction of each pixel of the object's bounding box covered by it: float (h, w), with
    the box's row and column slices. ``supersample`` x ``supersample`` samples per pixel."""
    cx, cy, r = obj.x * image_size, obj.y * image_size, RADIUS[obj.size] * image_size
    rows = slice(max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)), image_size))
    cols = slice(max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)), image_size))
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(cols.start, cols.stop)[:, None] + offsets).ravel()
    ys = (np.arange(rows.start, rows.stop)[:, None] + offsets).ravel()
    hit = _inside(obj.shape, ((xs - cx) / r)[None, :], ((ys - cy) / r)[:, None])
    h, w = rows.stop - rows.start, cols.stop - cols.start
    return hit.reshape(h, supersample, w, supersample).mean(axis=(1, 3)), rows, cols


def _on_pattern(pattern: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v) (units of the bounding radius from the object's centre) lie on the
    pattern (drawn in the darker shade): horizontal stripes, a grid of dots or a checkerboard,
    each about a quarter of the radius across; bool of the broadcast shape."""
    if pattern == "plain":
        return np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    if pattern == "striped":
        return np.broadcast_to(np.floor(v * 3.5) % 2 == 1, np.broadcast_shapes(u.shape, v.shape))
    if pattern == "dotted":
        fu, fv = u * 2.5 % 1.0 - 0.5, v * 2.5 % 1.0 - 0.5
        return fu * fu + fv * fv <= 0.09
    return (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 1  # checkered


def render_scene(graph: SceneGraph, image_size: int = 224, antialias: bool = True) -> np.ndarray:
    """The scene drawn on white: uint8 (image_size, image_size, 3), RGB. Shapes are filled with
    their exact colour and, where their pattern is (decided per pixel centre, so the two never
    blend), its exact SHADE; with ``antialias`` edge pixels blend with the background (4x4 samples)."""
    image = np.full((image_size, image_size, 3), 255.0)
    for obj in graph.objects:
        cover, rows, cols = _coverage(obj, image_size, 4 if antialias else 1)
        cx, cy, r = obj.x * image_size, obj.y * image_size, RADIUS[obj.size] * image_size
        u = (np.arange(cols.start, cols.stop) + 0.5 - cx) / r
        v = (np.arange(rows.start, rows.stop) + 0.5 - cy) / r
        shade = _on_pattern(obj.pattern, u[None, :], v[:, None])[..., None]
        fill = np.where(shade, np.asarray(SHADE[obj.colour], np.float64), np.asarray(RGB[obj.colour], np.float64))
        patch = image[rows, cols]
        patch += cover[..., None] * (fill - patch)
    return np.rint(image).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """PNG file bytes of a uint8 RGB image (H, W, 3) (8-bit truecolour, no filtering)."""
    h, w, _ = image.shape
    pixels = np.ascontiguousarray(image, dtype=np.uint8).reshape(h, -1)
    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels], axis=1)  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- captions
def _a(phrase: str) -> str:
    """``phrase`` with the English indefinite article."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _and(words: Sequence[str]) -> str:
    """"a and b" / "a, b and c"."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def english_noun_phrase(obj: SceneObject, size_word: Optional[str] = None, pattern_word: Optional[str] = None,
                        evaluation: Optional[str] = None) -> str:
    """E.g. "a small red circle", "a nice large blue striped square": the words default to the
    canonical size and pattern words; ``evaluation`` an evaluative adjective or none."""
    size = size_word or EN_SIZE[obj.size][0]
    pattern = EN_PATTERN[obj.pattern][0] if pattern_word is None else pattern_word
    return _a(" ".join(w for w in (evaluation, size, obj.colour, pattern, obj.shape) if w))


def german_noun_phrase(obj: SceneObject, case: str, evaluation: Optional[str] = None) -> str:
    """The indefinite German noun phrase in ``case`` ("nom", "acc" or "dat"), adjectives (the
    evaluative stem ``evaluation``, size, colour, pattern) in the mixed declension: e.g. "ein
    kleiner roter Kreis", "einem schönen großen blauen gestreiften Quadrat"."""
    noun, gender = DE_NOUN[obj.shape]
    k = _CASES.index(case)
    stems = [evaluation, DE_ADJECTIVE[obj.size], DE_ADJECTIVE[obj.colour], DE_ADJECTIVE.get(obj.pattern)]
    adjectives = " ".join(stem + _DE_ENDING[gender][k] for stem in stems if stem)
    noun = _DE_DATIVE.get(noun, noun) if case == "dat" else noun
    return f"{_DE_ARTICLE[gender][k]} {adjectives} {noun}"


@dataclass(frozen=True)
class Style:
    """The non-visual words of one caption, each an index or None: ``adverb`` into ADVERBS and
    ``frame`` into FRAMES (clause templates only; noun-phrase templates leave them out),
    ``evaluation`` into EVALUATIONS (on the subject), ``tag`` into :func:`caption_tags` of the scene."""
    adverb: Optional[int] = None
    frame: Optional[int] = None
    evaluation: Optional[int] = None
    tag: Optional[int] = None


def caption_tags(graph: SceneGraph) -> list[tuple[str, str]]:
    """The (English, German) closing tags true of ``graph``: TAGS, then those counting its objects."""
    n = len(graph.objects)
    if n == 1:
        return [*TAGS, *COUNT_TAGS[1]]
    en_n, de_n = _NUMBER[n]
    return [*TAGS, *((en.format(n=en_n), de.format(n=de_n)) for en, de in COUNT_TAGS[2])]


def random_style(graph: SceneGraph, rng: np.random.Generator) -> Style:
    """A :class:`Style` from ``rng``: each kind of word present with its STYLE_PROBABILITY, the
    word drawn uniformly."""
    sizes = {"adverb": len(ADVERBS), "frame": len(FRAMES), "evaluation": len(EVALUATIONS),
             "tag": len(caption_tags(graph))}
    return Style(**{kind: int(rng.integers(n)) if rng.random() < STYLE_PROBABILITY[kind] else None
                    for kind, n in sizes.items()})


_T = TypeVar("_T")


def _pick(options: Sequence[_T], rng: Optional[np.random.Generator]) -> _T:
    """The first (canonical) of ``options`` without ``rng``, else a random one."""
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _english_slots(obj: SceneObject, rng: Optional[np.random.Generator],
                   evaluation: Optional[str] = None) -> dict[str, str]:
    """The English slot values of one object; size and pattern synonyms from ``rng``, else the
    canonical words."""
    size, pattern = _pick(EN_SIZE[obj.size], rng), _pick(EN_PATTERN[obj.pattern], rng)
    return {"np": english_noun_phrase(obj, size, pattern, evaluation),
            "bare": _a(" ".join(w for w in (evaluation, obj.shape) if w)),
            "desc": _and([w for w in (size, obj.colour, pattern) if w])}


def _german_slots(obj: SceneObject, evaluation: Optional[str] = None) -> dict[str, str]:
    """The German slot values of one object."""
    noun, gender = DE_NOUN[obj.shape]
    slots = {case: german_noun_phrase(obj, case, evaluation) for case in _CASES}
    article = _DE_ARTICLE[gender][0] + (f" {evaluation}{_DE_ENDING[gender][0]}" if evaluation else "")
    slots.update(bare=f"{article} {noun}", pron=_DE_RELATIVE[gender],
                 desc=_and([DE_ADJECTIVE[w] for w in (obj.size, obj.colour, obj.pattern) if w in DE_ADJECTIVE])
                 .replace(" and ", " und "))
    return slots


def num_templates(graph: SceneGraph) -> int:
    """How many caption templates apply to ``graph`` (template 0 is the target)."""
    return len(_SINGLE_TEMPLATES if graph.relation is None else _RELATION_TEMPLATES)


def caption_pair(graph: SceneGraph, template: int = 0, rng: Optional[np.random.Generator] = None,
                 style: Optional[Style] = None) -> tuple[str, str]:
    """The (English, German) caption of ``graph`` by ``template`` (0 = the target form, up to
    ``num_templates(graph) - 1``) with the non-visual words of ``style`` (default: none). Without
    ``rng`` the canonical English words and the first extra-object clause are used; with it,
    synonyms and the clause are drawn from ``rng``."""
    style = style or Style()
    rel = graph.relation
    en_t, de_t = (_SINGLE_TEMPLATES if rel is None else _RELATION_TEMPLATES)[template]
    en_a, de_a = ("", "") if style.adverb is None else (f" {w}" for w in ADVERBS[style.adverb])
    en_e, de_e = (None, None) if style.evaluation is None else EVALUATIONS[style.evaluation]
    subject = graph.objects[0 if rel is None else rel.subject]
    en_s, de_s = _english_slots(subject, rng, en_e), _german_slots(subject, de_e)
    if rel is None:
        en, de = en_t.format(S=en_s, A=en_a), de_t.format(S=de_s, A=de_a)
    else:
        obj = graph.objects[rel.object]
        en = en_t.format(S=en_s, O=_english_slots(obj, rng), A=en_a,
                         R=_pick(EN_RELATION[rel.name], rng), I=_pick(EN_RELATION[INVERSE[rel.name]], rng))
        de = de_t.format(S=de_s, O=_german_slots(obj), A=de_a,
                         R=DE_RELATION[rel.name], I=DE_RELATION[INVERSE[rel.name]])
        for i, extra in enumerate(graph.objects):
            if i not in (rel.subject, rel.object):
                en_x, de_x = _pick(_EXTRA_TEMPLATES, rng)
                en += en_x.format(X=_english_slots(extra, rng))
                de += de_x.format(X=_german_slots(extra))
    if style.frame is not None and "{A}" in en_t:
        en_f, de_f = FRAMES[style.frame]
        en, de = f"{en_f} {en}", f"{de_f}, {de}"
    if style.tag is not None:
        en_g, de_g = caption_tags(graph)[style.tag]
        en, de = en + en_g, de + de_g
    return en, de


def generate_captions(graph: SceneGraph, num_paraphrases: int,
                      rng: np.random.Generator) -> tuple[str, list[str], list[str]]:
    """``(target, paraphrases, translations)``: the target caption (template 0, canonical words,
    its own :func:`random_style`), ``num_paraphrases`` English paraphrases by distinct non-target
    templates drawn from ``rng`` (synonyms and style drawn for each), and the German of the target
    followed by the German of each paraphrase (length ``num_paraphrases + 1``)."""
    if not 0 <= num_paraphrases <= MAX_PARAPHRASES:
        raise ValueError(f"num_paraphrases must be in 0..{MAX_PARAPHRASES}, got {num_paraphrases}")
    target, target_de = caption_pair(graph, 0, None, random_style(graph, rng))
    chosen = rng.choice(np.arange(1, num_templates(graph)), size=num_paraphrases, replace=False)
    pairs = [caption_pair(graph, int(t), rng, random_style(graph, rng)) for t in chosen]
    return target, [en for en, _ in pairs], [target_de] + [de for _, de in pairs]


# ----------------------------------------------------------------------------- corpus
TASKS = ("C", "P", "T")
SPLITS = ("train", "val", "test")
_FORMAT = "grounded_fast.demo/1"


@dataclass
class DemoItem:
    """One scene with its captions. ``translations[0]`` is the German target, ``translations[1 +
    k]`` the German of ``paraphrases[k]``; ``image`` is rendered on first access and cached."""
    index: int
    scene_id: str
    graph: SceneGraph
    target: str
    paraphrases: list[str]
    translations: list[str]
    split: str
    image_size: int = 224
    _image: Optional[np.ndarray] = field(default=None, init=False, repr=False, compare=False)

    @property
    def image(self) -> np.ndarray:
        """The rendered scene: uint8 (image_size, image_size, 3), RGB (read-only, cached)."""
        if self._image is None:
            self._image = render_scene(self.graph, self.image_size)
            self._image.flags.writeable = False
        return self._image

    def source(self, task: str, k: int = 0) -> Union[np.ndarray, str]:
        """The source for ``task`` with ``self.target`` as target: "C" the image (uint8 (H, W, 3)),
        "P" the English paraphrase ``k`` (str), "T" the German translation of the target (str)."""
        if task == "C":
            return self.image
        if task == "P":
            return self.paraphrases[k]
        if task == "T":
            return self.translations[0]
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def to_json(self) -> dict:
        """A JSON-serialisable dict of everything but the image."""
        return {"index": self.index, "scene_id": self.scene_id, "split": self.split,
                "graph": self.graph.to_dict(), "target": self.target,
                "paraphrases": self.paraphrases, "translations": self.translations}

    @classmethod
    def from_json(cls, data: dict, image_size: int) -> DemoItem:
        """The inverse of :meth:`to_json`."""
        return cls(data["index"], data["scene_id"], SceneGraph.from_dict(data["graph"]), data["target"],
                   list(data["paraphrases"]), list(data["translations"]), data["split"], image_size)


def _assign_splits(num_scenes: int, fractions: Sequence[float], seed: int) -> list[str]:
    """The split name of each scene: a seeded permutation cut at the rounded cumulative fractions."""
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split_fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(num_scenes)
    rank = np.empty(num_scenes, dtype=np.int64)
    rank[order] = np.arange(num_scenes)
    cuts = np.rint(np.cumsum(fractions) * num_scenes)
    return [SPLITS[k] for k in np.searchsorted(cuts, rank, side="right")]


class DemoCorpus(Sequence):
    """``num_scenes`` generated scenes (:class:`DemoItem`), deterministic from ``seed``.

    ``corpus[i]`` is scene ``i``; ``corpus.splits`` maps "train" / "val" / "test" to scene indices
    (a seeded split by ``split_fractions``). Images render lazily (``item.image``)."""

    def __init__(self, num_scenes: int = 1000, seed: int = 0, image_size: int = 224,
                 num_paraphrases: int = 4, split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> None:
        if num_scenes < 1 or image_size < 8:
            raise ValueError(f"need num_scenes >= 1 and image_size >= 8, got {num_scenes}, {image_size}")
        split_of = _assign_splits(num_scenes, split_fractions, seed)
        items = []
        for i in range(num_scenes):
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, i)))
            graph = random_scene(rng)
            target, paraphrases, translations = generate_captions(graph, num_paraphrases, rng)
            items.append(DemoItem(i, f"demo{seed}_{i:06d}", graph, target, paraphrases, translations,
                                  split_of[i], image_size))
        self._set(items, seed, image_size, num_paraphrases, split_fractions)

    def _set(self, items: list[DemoItem], seed: int, image_size: int, num_paraphrases: int,
             split_fractions: Sequence[float]) -> None:
        """Store the items and the settings (shared by ``__init__`` and :meth:`load`)."""
        self.items, self.seed, self.image_size = items, seed, image_size
        self.num_paraphrases, self.split_fractions = num_paraphrases, tuple(split_fractions)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> DemoItem:
        return self.items[index]

    @property
    def splits(self) -> dict[str, list[int]]:
        """Split name -> ascending scene indices; the three lists are disjoint and cover the corpus."""
        return {name: [item.index for item in self.items if item.split == name] for name in SPLITS}

    def texts(self, language: str = "en") -> list[str]:
        """All captions of one language: "en" (each target, then its paraphrases) or "de" (all
        translations), e.g. to build a :class:`Vocab`."""
        if language == "en":
            return [text for item in self.items for text in [item.target, *item.paraphrases]]
        if language == "de":
            return [text for item in self.items for text in item.translations]
        raise ValueError(f"language must be 'en' or 'de', got {language!r}")

    def save(self, directory: Union[str, os.PathLike], images: bool = False) -> Path:
        """Write ``corpus.json``, ``scenes.jsonl`` (UTF-8) and, with ``images``,
        ``images/<scene_id>.png`` into ``directory`` (created), each file atomically; returns its path."""
        path = Path(directory)
        settings = {"format": _FORMAT, "seed": self.seed, "image_size": self.image_size,
                    "num_paraphrases": self.num_paraphrases, "split_fractions": list(self.split_fractions)}
        write_atomic(path / "corpus.json", (json.dumps(settings, indent=2) + "\n").encode("utf-8"))
        lines = (json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in self.items)
        write_atomic(path / "scenes.jsonl", "".join(lines).encode("utf-8"))
        if images:
            for item in self.items:
                write_atomic(path / "images" / f"{item.scene_id}.png", encode_png(item.image))
        return path

    @classmethod
    def load(cls, directory: Union[str, os.PathLike]) -> DemoCorpus:
        """A corpus written by :meth:`save` (images are re-rendered from the scene graphs)."""
        path = Path(directory)
        settings = json.loads((path / "corpus.json").read_text(encoding="utf-8"))
        if settings.get("format") != _FORMAT:
            raise ValueError(f"{path / 'corpus.json'} is not a demo corpus ({_FORMAT})")
        lines = (path / "scenes.jsonl").read_text(encoding="utf-8").splitlines()
        items = [DemoItem.from_json(json.loads(line), settings["image_size"]) for line in lines if line]
        corpus = cls.__new__(cls)
        corpus._set(items, settings["seed"], settings["image_size"], settings["num_paraphrases"],
                    settings["split_fractions"])
        return corpus


# ----------------------------------------------------------------------------- vocabulary
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens with each punctuation mark a token of its own."""
    return _TOKEN.findall(text.lower())


def detokenize(tokens: Iterable[str]) -> str:
    """Tokens joined by spaces, without a space before , . ; : ! ?"""
    return re.sub(r" ([,.;:!?])", r"\1", " ".join(tokens))


class Vocab:
    """A word-level vocabulary: ``itos`` starts with SPECIAL_TOKENS (ids 0..3)."""
    pad_id, bos_id, eos_id, unk_id = range(4)

    def __init__(self, itos: Sequence[str]) -> None:
        if tuple(itos[:4]) != SPECIAL_TOKENS or len(set(itos)) != len(itos):
            raise ValueError(f"itos must start with {SPECIAL_TOKENS} and hold no duplicates")
        self.itos = list(itos)
        self.stoi = {token: i for i, token in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, add_bos_eos: bool = True) -> list[int]:
        """Token ids of ``tokenize(text)`` (unknown words -> ``unk_id``), framed by bos / eos."""
        ids = [self.stoi.get(token, self.unk_id) for token in tokenize(text)]
        return [self.bos_id, *ids, self.eos_id] if add_bos_eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids`` (ints or 0-d tensors): stops at the first eos, drops pad and bos;
        ``decode(encode(t)) == detokenize(tokenize(t))`` when every word of t is known."""
        tokens = []
        for i in map(int, ids):
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                tokens.append(self.itos[i])
        return detokenize(tokens)


def build_vocab(texts: Iterable[str], min_freq: int = 1) -> Vocab:
    """A :class:`Vocab` of the tokens occurring at least ``min_freq`` times in ``texts``, after the
    special tokens, by descending frequency then alphabetically (deterministic)."""
    counts = Counter(token for text in texts for token in tokenize(text))
    kept = sorted((t for t, c in counts.items() if c >= min_freq and t not in SPECIAL_TOKENS),
                  key=lambda t: (-counts[t], t))
    return Vocab([*SPECIAL_TOKENS, *kept])
