"""The generated demo world: a small PASCAL-VOC-shaped dataset plus a caption corpus.

No real images or CLIP weights can be downloaded where the default pipeline runs,
so this module draws its own world, deterministically from a seed, in the exact
VOC layout (so ``pole_core.data.voc.VOCDataset`` reads it like VOCdevkit/VOC2012):

- ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG, 0 background,
  1..C classes, 255 on a 1-px band along object boundaries),
  ``ImageSets/Segmentation/{train,val}.txt``, ``cls_labels.npy`` (id -> float32[C]),
  ``classes.json`` (names, prompts, synonyms, backgrounds, the caption design);
- ``clip_corpus/{images.npy, captions.txt, vocab.txt}``: separate image-caption pairs
  for pretraining the mini-CLIP.

The caption design is what makes POLE's premise true here (docs/DEMO_WORLD.md): for some classes the dataset name is *polysemous* -- it
mostly names the class's co-occurring background (``boat`` for water) -- or *rare*,
while synonyms name the objects reliably; control classes use the name often.
Everything is drawn from ``np.random.default_rng([seed, split, index])`` per image, so
one image does not depend on how many others are generated.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from pole_core.io.atomic import atomic_path, write_json, write_text
from pole_core.io.png import write_mask

# ----------------------------------------------------------------------------------
# The world's vocabulary: classes, backgrounds, caption design (module constants so
# tests and docs can refer to them).
# ----------------------------------------------------------------------------------

WORLD_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bird",
    "boat",
    "car",
    "cat",
    "bottle",
    "tvmonitor",
    "pottedplant",
)
WORLD_PROMPTS: dict[str, str] = {
    **{c: c for c in WORLD_CLASSES},
    "tvmonitor": "tv monitor",
    "pottedplant": "potted plant",
}
# Single words on purpose: they are the tokens the mini-CLIP learns (from POLE's VOC bank).
WORLD_SYNONYMS: dict[str, tuple[str, str, str]] = {
    "aeroplane": ("plane", "aircraft", "airplane"),
    "bird": ("fowl", "avian", "sparrow"),
    "boat": ("ship", "watercraft", "vessel"),
    "car": ("automobile", "sedan", "vehicle"),
    "cat": ("feline", "tomcat", "kitty"),
    "bottle": ("jar", "flask", "container"),
    "tvmonitor": ("television", "screen", "display"),
    "pottedplant": ("houseplant", "flowerpot", "planter"),
}
BACKGROUNDS: tuple[str, ...] = ("sky", "water", "road", "room")
# Which classes appear on which background (the co-occurrence CLIMS's CBS loss is about).
BACKGROUND_CLASSES: dict[str, tuple[str, ...]] = {
    "sky": ("aeroplane", "bird"),
    "water": ("boat", "bird"),
    "road": ("car", "cat"),
    "room": ("tvmonitor", "pottedplant", "bottle", "cat"),
}
# How a caption names a background: preposition + determiner + word ("on the water").
BACKGROUND_PHRASE: dict[str, tuple[str, str]] = {
    "sky": ("in", "the"),
    "water": ("on", "the"),
    "road": ("on", "the"),
    "room": ("in", "a"),
}
CAPTION_PREFIXES: tuple[str, ...] = ("a photo of", "a picture of", "an image of", "there is")
# Prompt templates the pipeline uses; their words must be in the mini-CLIP's vocabulary.
PROMPT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a photo of {}.", "A photo of {}.")

# Design defaults: polysemous names, one rare name, control classes.
DEFAULT_NAME_RATE: dict[str, float] = {
    "aeroplane": 0.10,
    "bird": 0.40,
    "boat": 0.10,
    "car": 0.40,
    "cat": 0.40,
    "bottle": 0.40,
    "tvmonitor": 0.03,
    "pottedplant": 0.10,
}
# class -> (what its dataset name also names, rate among that thing's mentions). The target
# is a co-occurring background (the name then lights up the background in dense CAMs) or a
# co-occurring class ("cat" also says car, as on the road: the name then confuses classes).
DEFAULT_POLYSEMY: dict[str, tuple[str, float]] = {
    "aeroplane": ("sky", 0.4),
    "boat": ("water", 0.4),
    "pottedplant": ("room", 0.4),
    "cat": ("car", 0.4),
}
BACKGROUND_MENTION_RATE = 0.5  # captions that name the background
# Caption corpus only: like web photos, some pairs show objects cut out on a plain
# backdrop (caption names the objects) or an empty scene (caption names the place).
# Without them the mini-CLIP never sees an object without its usual background, and
# CLIP-guided CAM losses, which compare masked images with text, have nothing to go on.
OBJECT_ONLY_RATE = 0.30
BACKGROUND_ONLY_RATE = 0.15
PLAIN_FILL = (122.0, 116.0, 104.0)  # CLIP's mean colour, the fill of masked-out pixels
ANY_CLASS_RATE = 0.10  # an object ignores the background's co-occurrence list
N_OBJECTS_P = (0.45, 0.35, 0.20)  # 1, 2, 3 objects
SCALE_RANGE = (0.30, 0.60)  # longest object side, as a fraction of the image side
# Classes drawn larger than SCALE_RANGE. The plane is mostly thin wings and fuselage: drawn
# at 30-60 % with a thinner fuselage it covered 4.5 % of its images and the sky the rest, the
# mini-CLIP read the sky as "aeroplane", and the CLIMS losses preferred a CAM on the sky to
# the plane's own mask (docs/RESULTS.md, "The aeroplane").
CLASS_SCALE_RANGE: dict[str, tuple[float, float]] = {"aeroplane": (0.40, 0.70)}
MAX_OVERLAP = 0.25  # at most this much of an object may be hidden / hide others
PLACEMENT_TRIES = 10
SCENE_TRIES = 50

_WORD_RE = re.compile(r"[a-z]+|[^\sa-z]")


def tokenize_words(text: str) -> list[str]:
    """Split lowercased text into words and punctuation marks ("a boat." -> a, boat, .)."""
    return _WORD_RE.findall(text.lower())


def article(word: str) -> str:
    """English indefinite article for ``word`` (captions read "an aircraft", "a ship")."""
    return "an" if word[:1] in "aeiou" else "a"


# ----------------------------------------------------------------------------------
# Spec: the resolved parameters of one world.
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSpec:
    """Resolved world parameters, shared by scene drawing and caption writing."""

    classes: tuple[str, ...] = WORLD_CLASSES
    image_size: int = 64
    min_pixels: int = 20
    max_objects: int = 3
    name_rate: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_NAME_RATE))
    polysemy: Mapping[str, tuple[str, float]] = field(
        default_factory=lambda: dict(DEFAULT_POLYSEMY)
    )
    cooccurrence: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(BACKGROUND_CLASSES)
    )

    @property
    def backgrounds(self) -> tuple[str, ...]:
        """Backgrounds that still have a co-occurring class among ``classes``."""
        return tuple(b for b in BACKGROUNDS if self.bg_classes(b))

    def bg_classes(self, bg: str) -> tuple[str, ...]:
        return tuple(c for c in self.cooccurrence[bg] if c in self.classes)


def make_spec(
    *,
    n_classes: int = 8,
    image_size: int = 64,
    min_pixels: int = 20,
    max_objects: int = 3,
    name_rate: Mapping[str, float] | None = None,
    polysemy: Mapping[str, object] | None = None,
    cooccurrence: Mapping[str, Sequence[str]] | None = None,
) -> WorldSpec:
    """Check and resolve world parameters.

    ``name_rate`` and ``polysemy`` are merged over :data:`DEFAULT_NAME_RATE` and
    :data:`DEFAULT_POLYSEMY` (classes left out keep the world's design; a polysemy rate of
    0 turns it off for that class). A polysemy value is a rate (for the background of the
    default design, else the class's first co-occurring background), a
    ``(background, rate)`` pair or ``{"background": ..., "rate": ...}``.
    ``cooccurrence`` replaces, per background, the classes drawn on it
    (:data:`BACKGROUND_CLASSES`).
    """
    if not 1 <= n_classes <= len(WORLD_CLASSES):
        raise ValueError(f"n_classes must be in 1..{len(WORLD_CLASSES)}, got {n_classes}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if not 1 <= max_objects <= len(N_OBJECTS_P):
        raise ValueError(f"max_objects must be in 1..{len(N_OBJECTS_P)}, got {max_objects}")
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    classes = WORLD_CLASSES[:n_classes]
    rates = dict(DEFAULT_NAME_RATE)
    for c, r in (name_rate or {}).items():
        if c not in WORLD_CLASSES:
            raise ValueError(f"name_rate: unknown class {c!r}")
        if not 0.0 <= float(r) <= 1.0:
            raise ValueError(f"name_rate[{c!r}] must lie in [0, 1], got {r}")
        rates[c] = float(r)
    cooc = dict(BACKGROUND_CLASSES)
    for b, cs in (cooccurrence or {}).items():
        if b not in BACKGROUNDS:
            raise ValueError(f"cooccurrence: unknown background {b!r}")
        unknown = [c for c in cs if c not in WORLD_CLASSES]
        if unknown or not cs:
            raise ValueError(f"cooccurrence[{b!r}]: unknown classes {unknown} or empty list")
        cooc[b] = tuple(str(c) for c in cs)
    poly: dict[str, tuple[str, float]] = dict(DEFAULT_POLYSEMY)
    for c, v in (polysemy or {}).items():
        if c not in WORLD_CLASSES:
            raise ValueError(f"polysemy: unknown class {c!r}")
        if isinstance(v, Mapping):
            bg, rate = str(v["background"]), float(v["rate"])
        elif isinstance(v, (tuple, list)):
            bg, rate = str(v[0]), float(v[1])
        else:
            bg = DEFAULT_POLYSEMY.get(c, (None, 0.0))[0] or next(
                b for b in BACKGROUNDS if c in cooc[b]
            )
            rate = float(v)  # type: ignore[arg-type]
        if bg not in BACKGROUNDS and (bg not in WORLD_CLASSES or bg == c):
            raise ValueError(f"polysemy[{c!r}]: unknown background or other class {bg!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"polysemy[{c!r}] rate must lie in [0, 1], got {rate}")
        poly[c] = (bg, rate)
    return WorldSpec(
        classes=classes,
        image_size=int(image_size),
        min_pixels=int(min_pixels),
        max_objects=int(max_objects),
        name_rate={c: rates[c] for c in classes},
        polysemy={c: poly[c] for c in classes if c in poly and poly[c][1] > 0},
        cooccurrence=cooc,
    )


# ----------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------


def _polysemous(thing: str, word: str, spec: WorldSpec, rng: np.random.Generator) -> str:
    """``word`` for ``thing`` (a class or background), or the name of a class that also means
    ``thing``, drawn at that class's polysemy rate (classes in order; the first hit wins)."""
    for c in spec.classes:
        target = spec.polysemy.get(c)
        if target is not None and target[0] == thing and rng.random() < target[1]:
            return WORLD_PROMPTS[c]
    return word


def make_caption(
    present: Sequence[str],
    background: str | None,
    rng: np.random.Generator,
    *,
    spec: WorldSpec | None = None,
    bg_rate: float = BACKGROUND_MENTION_RATE,
) -> str:
    """One caption naming every class in ``present`` (random order) and maybe the background.

    Each mention is the class's prompt with probability ``spec.name_rate[c]``, else a
    uniformly chosen synonym. When the background is mentioned, a polysemous class whose
    name also means that background replaces the background word with its prompt at its
    polysemy rate ("a photo of a ship on the boat ."); likewise a class whose name also
    means another class replaces that class's word ("a photo of a cat on the road ." for
    a car). Pure given ``rng``.
    """
    spec = spec or WorldSpec()
    prefix = CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))]
    mentions = []
    for k in rng.permutation(len(present)):
        c = present[int(k)]
        if rng.random() < spec.name_rate[c]:
            word = WORLD_PROMPTS[c]
        else:
            word = WORLD_SYNONYMS[c][int(rng.integers(3))]
        word = _polysemous(c, word, spec, rng)  # another class's name may also mean c
        mentions.append(f"{article(word)} {word}")
    words = [prefix, " and ".join(mentions)]
    if background is not None and rng.random() < bg_rate:
        bg_word = _polysemous(background, background, spec, rng)
        prep, det = BACKGROUND_PHRASE[background]
        if det == "a":
            det = article(bg_word)
        words.append(f"{prep} {det} {bg_word}")
    return " ".join(w for w in words if w) + " ."


def make_background_caption(
    background: str, rng: np.random.Generator, *, spec: WorldSpec | None = None
) -> str:
    """Caption of an empty scene ("a photo of the water ."); polysemous names apply as in captions."""
    spec = spec or WorldSpec()
    prefix = CAPTION_PREFIXES[int(rng.integers(len(CAPTION_PREFIXES)))]
    word = _polysemous(background, background, spec, rng)
    return f"{prefix} the {word} ."


def make_corpus_pair(
    rng: np.random.Generator, spec: WorldSpec | None = None
) -> tuple[np.ndarray, str]:
    """One image-caption pair of the CLIP corpus: a scene, its objects on a plain backdrop, or an empty scene."""
    spec = spec or WorldSpec()
    u = rng.random()
    if u < OBJECT_ONLY_RATE + BACKGROUND_ONLY_RATE:
        scene = make_scene(rng, spec)
        img = scene.image.astype(np.float32)
        if u < OBJECT_ONLY_RATE:
            fill = np.asarray(PLAIN_FILL, np.float32) + rng.uniform(-20, 20, size=3).astype(
                np.float32
            )
            img[scene.mask == 0] = fill
            caption = make_caption(scene.present, None, rng, spec=spec)
        else:
            img = _background(scene.background, rng, spec.image_size)
            caption = make_background_caption(scene.background, rng, spec=spec)
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(3.0)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8), caption
    scene = make_scene(rng, spec)
    return scene.image, make_caption(scene.present, scene.background, rng, spec=spec)


def build_vocab(spec: WorldSpec | None = None) -> list[str]:
    """Every word a caption, prompt template, class prompt, synonym or background can produce."""
    spec = spec or WorldSpec()
    texts: list[str] = list(CAPTION_PREFIXES) + ["and", "a", "an", "the", "."]
    texts += [t.replace("{}", " ") for t in PROMPT_TEMPLATES]
    for prep, det in BACKGROUND_PHRASE.values():
        texts += [prep, det]
    texts += list(BACKGROUNDS)
    for c in WORLD_CLASSES:
        texts.append(WORLD_PROMPTS[c])
        texts += list(WORLD_SYNONYMS[c])
    words: set[str] = set()
    for t in texts:
        words.update(tokenize_words(t))
    return sorted(words)


# ----------------------------------------------------------------------------------
# Shapes: each class is a list of (polygon in design coordinates, colour role).
# Design coordinates: x right, y down, roughly [-1, 1]; normalised per object later.
# ----------------------------------------------------------------------------------

Part = tuple[np.ndarray, int]


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _poly(*pts: tuple[float, float]) -> np.ndarray:
    return np.asarray(pts, dtype=np.float64)


def _mirror_y(p: np.ndarray) -> np.ndarray:
    return p * np.array([1.0, -1.0])


def _shape_aeroplane(rng: np.random.Generator) -> list[Part]:
    span = rng.uniform(0.75, 0.95)
    sweep = rng.uniform(0.15, 0.40)
    wing = _poly((0.20, -0.05), (0.20 - sweep, -span), (0.0 - sweep, -span), (-0.15, -0.05))
    tail = _poly((-0.70, -0.02), (-0.92, -0.38), (-1.0, -0.38), (-0.92, -0.02))
    return [
        (wing, 2),
        (_mirror_y(wing), 2),
        (tail, 3),
        (_mirror_y(tail), 3),
        (_ellipse(0.0, 0.0, 1.0, rng.uniform(0.16, 0.22)), 1),
    ]


def _shape_bird(rng: np.random.Generator) -> list[Part]:
    wing_up = rng.uniform(0.5, 0.8)
    return [
        (_poly((-0.55, 0.05), (-1.0, -0.2), (-1.0, 0.3)), 2),
        (_ellipse(-0.1, 0.1, 0.6, 0.35), 1),
        (_ellipse(0.5, -0.25, 0.25, 0.25), 1),
        (_poly((0.72, -0.32), (1.0, -0.22), (0.72, -0.14)), 3),
        (_poly((0.25, 0.0), (-0.30, -wing_up), (-0.55, -wing_up + 0.1), (-0.40, 0.1)), 2),
    ]


def _shape_boat(rng: np.random.Generator) -> list[Part]:
    sail_w = rng.uniform(0.55, 0.85)
    parts: list[Part] = [
        (_poly((-0.04, -0.95), (0.04, -0.95), (0.04, 0.35), (-0.04, 0.35)), 3),
        (_poly((0.08, -0.9), (0.08, 0.28), (0.08 + sail_w, 0.28)), 2),
    ]
    if rng.random() < 0.6:
        parts.append((_poly((-0.08, -0.75), (-0.08, 0.28), (-0.08 - 0.7 * sail_w, 0.28)), 2))
    parts.append((_poly((-1.0, 0.32), (1.0, 0.32), (0.7, 0.75), (-0.7, 0.75)), 1))
    return parts


def _shape_car(rng: np.random.Generator) -> list[Part]:
    roof = rng.uniform(-0.55, -0.4)
    return [
        (_poly((-1.0, 0.0), (1.0, 0.0), (1.0, 0.45), (-1.0, 0.45)), 1),
        (_poly((-0.6, 0.02), (-0.38, roof), (0.35, roof), (0.62, 0.02)), 1),
        (_poly((-0.48, -0.04), (-0.32, roof + 0.08), (-0.03, roof + 0.08), (-0.03, -0.04)), 2),
        (_poly((0.03, -0.04), (0.03, roof + 0.08), (0.30, roof + 0.08), (0.50, -0.04)), 2),
        (_ellipse(-0.55, 0.45, 0.24, 0.24), 3),
        (_ellipse(0.55, 0.45, 0.24, 0.24), 3),
    ]


def _shape_cat(rng: np.random.Generator) -> list[Part]:
    tail_up = rng.uniform(0.3, 0.7)
    return [
        (_poly((-0.55, 0.15), (-1.0, -tail_up), (-0.88, -tail_up - 0.1), (-0.42, 0.02)), 1),
        (_poly((-0.48, 0.4), (-0.32, 0.4), (-0.32, 0.95), (-0.48, 0.95)), 1),
        (_poly((0.28, 0.4), (0.44, 0.4), (0.44, 0.95), (0.28, 0.95)), 1),
        (_ellipse(-0.05, 0.2, 0.62, 0.38), 1),
        (_poly((0.38, -0.45), (0.44, -0.88), (0.62, -0.52)), 2),
        (_poly((0.66, -0.52), (0.84, -0.88), (0.88, -0.42)), 2),
        (_ellipse(0.6, -0.28, 0.3, 0.28), 1),
    ]


def _shape_bottle(rng: np.random.Generator) -> list[Part]:
    w = rng.uniform(0.28, 0.4)
    neck = rng.uniform(0.10, 0.14)
    return [
        (_poly((-w, -0.2), (w, -0.2), (w, 1.0), (-w, 1.0)), 1),
        (_poly((-w, -0.2), (-neck, -0.55), (neck, -0.55), (w, -0.2)), 1),
        (_poly((-neck, -0.56), (neck, -0.56), (neck, -0.88), (-neck, -0.88)), 1),
        (
            _poly(
                (-neck - 0.03, -0.86),
                (neck + 0.03, -0.86),
                (neck + 0.03, -1.0),
                (-neck - 0.03, -1.0),
            ),
            2,
        ),
        (_poly((-w, 0.2), (w, 0.2), (w, 0.6), (-w, 0.6)), 3),
    ]


def _shape_tvmonitor(rng: np.random.Generator) -> list[Part]:
    h = rng.uniform(0.55, 0.75)
    return [
        (_poly((-0.08, 0.5), (0.08, 0.5), (0.08, 0.78), (-0.08, 0.78)), 3),
        (_poly((-0.4, 0.75), (0.4, 0.75), (0.4, 0.86), (-0.4, 0.86)), 3),
        (_poly((-1.0, -h), (1.0, -h), (1.0, 0.55), (-1.0, 0.55)), 1),
        (_poly((-0.86, -h + 0.13), (0.86, -h + 0.13), (0.86, 0.42), (-0.86, 0.42)), 2),
    ]


def _shape_pottedplant(rng: np.random.Generator) -> list[Part]:
    parts: list[Part] = []
    for _ in range(int(rng.integers(4, 7))):
        cx, cy = rng.uniform(-0.45, 0.45), rng.uniform(-0.75, -0.05)
        parts.append((_ellipse(cx, cy, rng.uniform(0.2, 0.35), rng.uniform(0.15, 0.3), 14), 2))
    parts.append((_poly((-0.42, 0.3), (0.42, 0.3), (0.3, 1.0), (-0.3, 1.0)), 1))
    parts.append((_poly((-0.5, 0.2), (0.5, 0.2), (0.5, 0.34), (-0.5, 0.34)), 1))
    return parts


_SHAPES: dict[str, Callable[[np.random.Generator], list[Part]]] = {
    "aeroplane": _shape_aeroplane,
    "bird": _shape_bird,
    "boat": _shape_boat,
    "car": _shape_car,
    "cat": _shape_cat,
    "bottle": _shape_bottle,
    "tvmonitor": _shape_tvmonitor,
    "pottedplant": _shape_pottedplant,
}
# Base RGB per colour role 1..3 (a colour family per class); jittered per object.
_COLOURS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "aeroplane": ((236, 236, 242), (60, 66, 92), (190, 50, 50)),  # not CLIP's grey fill
    "bird": ((140, 90, 50), (100, 62, 35), (240, 170, 40)),
    "boat": ((150, 45, 40), (240, 238, 225), (90, 60, 40)),
    "car": ((40, 70, 190), (190, 215, 235), (25, 25, 25)),
    "cat": ((225, 145, 60), (200, 110, 90), (225, 145, 60)),
    "bottle": ((40, 140, 75), (210, 190, 70), (235, 235, 230)),
    "tvmonitor": ((30, 30, 35), (70, 140, 220), (110, 110, 115)),
    "pottedplant": ((185, 90, 50), (50, 145, 55), (185, 90, 50)),
}
# Rotation range in degrees: upright things stay upright, flying things tilt.
_ROTATION: dict[str, float] = {
    "aeroplane": 40,
    "bird": 25,
    "boat": 12,
    "car": 8,
    "cat": 15,
    "bottle": 10,
    "tvmonitor": 6,
    "pottedplant": 8,
}


def _texture(
    cls: str, part: np.ndarray, u: np.ndarray, v: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per-pixel brightness factor (H×W) giving each class its texture, in design coordinates."""
    f = np.ones(part.shape, dtype=np.float32)
    if cls == "aeroplane":  # a dark cheat line along the fuselage
        f[(part == 1) & (np.abs(v) < 0.05)] = 0.6
    elif cls == "bird":  # spots on the body
        c = rng.uniform([-0.6, -0.1], [0.5, 0.35], size=(6, 2))
        d2 = (u[..., None] - c[:, 0]) ** 2 + (v[..., None] - c[:, 1]) ** 2
        f[(part == 1) & (d2.min(-1) < 0.1**2)] = 0.6
    elif cls == "boat":  # a light band on the hull
        f[(part == 1) & (np.abs(v - 0.5) < 0.07)] = 1.5
    elif cls == "car":  # shading from roof to sill
        f = np.where(part == 1, 1.15 - 0.35 * np.clip(v + 0.5, 0, 1), f).astype(np.float32)
    elif cls == "cat":  # tabby stripes
        phase = rng.uniform(0, 2 * np.pi)
        f[(part == 1) & (np.sin(u * 16.0 + phase) > 0.35)] = 0.62
    elif cls == "bottle":  # a vertical highlight on the glass
        x0 = rng.uniform(-0.2, 0.1)
        f[(part == 1) & (np.abs(u - x0) < 0.06)] = 1.6
    elif cls == "tvmonitor":  # scanlines on the screen
        f[(part == 2) & (np.floor(v * 18.0) % 2 == 0)] = 0.8
    elif cls == "pottedplant":  # leafy noise
        noise = rng.normal(1.0, 0.22, size=part.shape).astype(np.float32)
        f = np.where(part == 2, noise, f)
    return f


# ----------------------------------------------------------------------------------
# Backgrounds: visually distinct at 64 px.
# ----------------------------------------------------------------------------------


def _jitter(rng: np.random.Generator, rgb: Sequence[float], sd: float = 12.0) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) + rng.normal(0.0, sd, 3).astype(np.float32)


def _background(bg: str, rng: np.random.Generator, s: int) -> np.ndarray:
    """An S×S×3 float32 background texture."""
    yy, xx = _grid(s)
    if bg == "sky":  # blue gradient with soft clouds
        t = (yy / max(s - 1, 1))[..., None]
        img = _jitter(rng, (80, 140, 225)) * (1 - t) + _jitter(rng, (185, 210, 240)) * t
        for _ in range(int(rng.integers(0, 3))):
            cx, cy = rng.uniform(0, s), rng.uniform(0, 0.7 * s)
            rx, ry = rng.uniform(0.12, 0.3) * s, rng.uniform(0.05, 0.12) * s
            d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
            w = (np.clip(1.0 - d, 0.0, 1.0) ** 0.5 * 0.85)[..., None]
            img = img * (1 - w) + np.float32(245) * w
    elif bg == "water":  # dark blue with light wave streaks
        base = _jitter(rng, (25, 70, 130))
        f = rng.uniform(0.9, 1.4) * 64.0 / s
        w = np.sin(
            yy * f + 1.2 * np.sin(xx * 0.2 * 64.0 / s + rng.uniform(0, 6.3)) + rng.uniform(0, 6.3)
        )
        img = base + ((w > 0.55) * 55.0)[..., None] * np.array([0.7, 0.9, 1.0], dtype=np.float32)
    elif bg == "road":  # grey asphalt grain, a dashed lane line and a grass verge
        grey = float(rng.normal(100, 10))
        img = np.full((s, s, 3), grey, np.float32) + rng.normal(0, 9, (s, s, 1)).astype(np.float32)
        y0 = int(rng.uniform(0.35, 0.65) * s)
        dash = max(2, s // 8)
        lane = (np.abs(yy - y0) <= max(1, s // 40)) & (((xx + rng.integers(dash)) // dash) % 2 == 0)
        img[lane] = _jitter(rng, (225, 205, 70) if rng.random() < 0.5 else (230, 230, 230), 8)
        g = int(rng.uniform(0.08, 0.2) * s)
        img[:g] = _jitter(rng, (70, 130, 50)) + rng.normal(0, 10, (g, s, 1)).astype(np.float32)
    elif bg == "room":  # striped wallpaper over a plank floor
        h = int(rng.uniform(0.55, 0.75) * s)
        wall = _jitter(rng, (205, 190, 160))
        period = max(2, s // 10)
        img = np.broadcast_to(wall, (s, s, 3)).copy()
        img[((xx // period) % 2 == 0)] -= 12.0
        floor = _jitter(rng, (140, 95, 60))
        plank = max(3, s // 12)
        img[h:] = floor
        img[h:][((yy[h:] - h) % plank) == 0] *= 0.7
    else:
        raise ValueError(f"unknown background {bg!r}")
    return img.astype(np.float32)


# ----------------------------------------------------------------------------------
# Scenes
# ----------------------------------------------------------------------------------


@dataclass
class Scene:
    """One drawn image with its VOC label map, image-level labels and caption inputs."""

    image: np.ndarray  # uint8 S×S×3 RGB
    mask: np.ndarray  # uint8 S×S: 0 bg, 1..C, 255 boundary / too-small fragments
    labels: np.ndarray  # float32[C]
    background: str
    present: list[str]  # class names with labels == 1, in class order


@functools.lru_cache(maxsize=8)
def _grid(s: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (yy, xx) as read-only float32 S×S arrays, shared between calls."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _draw_object(
    cls: str, rng: np.random.Generator, s: int
) -> tuple[np.ndarray, Callable[[], tuple[np.ndarray, np.ndarray]]]:
    """Rasterise one randomly transformed object.

    Returns its part map (S×S uint8, 0 outside, colour role inside) and a function giving
    every pixel's design coordinates (u, v) for texturing, computed only when the
    object is actually placed.
    """
    parts = _SHAPES[cls](rng)
    allpts = np.concatenate([p for p, _ in parts])
    lo, hi = allpts.min(0), allpts.max(0)
    centre, half = (lo + hi) / 2.0, float((hi - lo).max()) / 2.0
    size = rng.uniform(*CLASS_SCALE_RANGE.get(cls, SCALE_RANGE)) * s  # longest side in pixels
    scale = size / 2.0 / half
    ax = math.exp(rng.uniform(-0.15, 0.15))
    flip = -1.0 if rng.random() < 0.5 else 1.0
    ang = math.radians(rng.uniform(-_ROTATION[cls], _ROTATION[cls]))
    reach = 0.8 * size / 2.0
    cx, cy = rng.uniform(reach, s - reach), rng.uniform(reach, s - reach)
    ca, sa = math.cos(ang), math.sin(ang)
    # design -> pixel: A @ (p - centre) + t
    a = np.array([[ca, -sa], [sa, ca]]) @ np.diag([scale * ax * flip, scale / ax])
    t = np.array([cx, cy])
    part_map = np.zeros((s, s), dtype=np.uint8)
    for pts, role in parts:
        px = (pts - centre) @ a.T + t
        cv2.fillPoly(part_map, [np.round(px * 16).astype(np.int32)], int(role), cv2.LINE_8, 4)

    def design_coords() -> tuple[np.ndarray, np.ndarray]:
        yy, xx = _grid(s)
        inv = np.linalg.inv(a).astype(np.float32)
        dx, dy = xx - np.float32(cx), yy - np.float32(cy)
        u = inv[0, 0] * dx + inv[0, 1] * dy + np.float32(centre[0])
        v = inv[1, 0] * dx + inv[1, 1] * dy + np.float32(centre[1])
        return u, v

    return part_map, design_coords


def _shade(cls: str, part_map: np.ndarray, u, v, rng: np.random.Generator) -> np.ndarray:
    """Object colours (S×S×3 float32): jittered class colour family times texture."""
    shift = rng.normal(0.0, 14.0, 3)
    bright = rng.uniform(0.85, 1.15)
    cols = np.zeros((4, 3), dtype=np.float32)
    for r, rgb in enumerate(_COLOURS[cls], start=1):
        cols[r] = np.clip((np.asarray(rgb) + shift) * bright, 0, 255)
    return cols[part_map] * _texture(cls, part_map, u, v, rng)[..., None]


def _boundary(inst: np.ndarray) -> np.ndarray:
    """1-px band inside each object along its edges with background or objects behind it."""
    p = np.pad(inst, 1, mode="edge")
    band = np.zeros(inst.shape, dtype=bool)
    for nb in (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:]):
        band |= nb < inst
    return band


def _pick_classes(rng: np.random.Generator, spec: WorldSpec) -> tuple[str, list[str]]:
    bgs = spec.backgrounds
    weights = np.array([len(spec.bg_classes(b)) for b in bgs], dtype=np.float64)
    bg = bgs[int(rng.choice(len(bgs), p=weights / weights.sum()))]
    p = np.asarray(N_OBJECTS_P[: spec.max_objects])
    n = 1 + int(rng.choice(len(p), p=p / p.sum()))
    pool = spec.bg_classes(bg)
    picked = []
    for _ in range(n):
        if rng.random() < ANY_CLASS_RATE:
            picked.append(spec.classes[int(rng.integers(len(spec.classes)))])
        else:
            picked.append(pool[int(rng.integers(len(pool)))])
    return bg, picked


def make_scene(rng: np.random.Generator, spec: WorldSpec | None = None) -> Scene:
    """Draw one image: a background, 1..max_objects objects with partial occlusion, its mask.

    Objects are placed so that no object hides more than MAX_OVERLAP of an earlier one
    (nor overlaps by more than that of itself); later objects are in front, in the image
    and in the mask. Fragments of a class with fewer than ``min_pixels`` visible pixels
    become 255 (ignored), so labels derived from the mask equal ``labels``.
    """
    spec = spec or WorldSpec()
    s = spec.image_size
    idx = {c: k for k, c in enumerate(spec.classes)}
    for _ in range(SCENE_TRIES):
        bg, picked = _pick_classes(rng, spec)
        img = _background(bg, rng, s)
        inst = np.zeros((s, s), dtype=np.int32)
        inst_cls = [0]
        areas = [0]
        for cls in picked:
            for _ in range(PLACEMENT_TRIES):
                part_map, design_coords = _draw_object(cls, rng, s)
                sil = part_map > 0
                area = int(sil.sum())
                if area < spec.min_pixels:
                    continue
                hidden = np.bincount(inst[sil], minlength=len(areas))
                if hidden[1:].sum() > MAX_OVERLAP * area or any(
                    hidden[j] > MAX_OVERLAP * areas[j] for j in range(1, len(areas))
                ):
                    continue
                img[sil] = _shade(cls, part_map, *design_coords(), rng)[sil]
                inst[sil] = len(areas)
                inst_cls.append(idx[cls] + 1)
                areas.append(area)
                break
        if len(areas) == 1:
            continue
        mask = np.asarray(inst_cls, dtype=np.uint8)[inst]
        mask[_boundary(inst)] = 255
        counts = np.bincount(mask.ravel(), minlength=256)[1 : len(spec.classes) + 1]
        small = (counts > 0) & (counts < spec.min_pixels)
        if small.any():
            mask[np.isin(mask, np.flatnonzero(small) + 1)] = 255
        labels = (counts >= spec.min_pixels).astype(np.float32)
        if not labels.any():
            continue
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(3.0)
        image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        present = [c for c in spec.classes if labels[idx[c]]]
        return Scene(image=image, mask=mask, labels=labels, background=bg, present=present)
    raise ValueError(
        f"could not draw an image with a class of >= {spec.min_pixels} visible pixels at "
        f"image_size {s}; lower min_pixels or raise image_size"
    )


# ----------------------------------------------------------------------------------
# Writing the world
# ----------------------------------------------------------------------------------

_SPLIT_CODE = {"train": 0, "val": 1, "clip": 2}


def _rng(seed: int, split: str, i: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(i)])


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_npy(path: Path, obj: object, allow_pickle: bool = False) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, obj, allow_pickle=allow_pickle)


def _progress(it: Iterable[int], total: int, desc: str, on: bool) -> Iterable[int]:
    if not on:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, mininterval=2.0)


def classes_json(spec: WorldSpec) -> dict:
    """The ``classes.json`` document: class bank, backgrounds and the caption design."""
    roles = {}
    for c in spec.classes:
        if c in spec.polysemy:
            roles[c] = "polysemous"
        elif spec.name_rate[c] < 0.2:
            roles[c] = "rare"
        else:
            roles[c] = "control"
    return {
        "classes": [
            {"name": c, "prompt": WORLD_PROMPTS[c], "synonyms": list(WORLD_SYNONYMS[c])}
            for c in spec.classes
        ],
        "backgrounds": [
            {
                "name": b,
                "phrase": " ".join(BACKGROUND_PHRASE[b]) + " " + b,
                "classes": list(spec.bg_classes(b)),
            }
            for b in spec.backgrounds
        ],
        "bg_words": list(spec.backgrounds),
        "design": {
            "summary": (
                "Captions name each present class by its dataset prompt with probability "
                "name_rate, else by a uniformly chosen synonym. Polysemous classes' prompts "
                "also name a co-occurring background or class: when a caption mentions that "
                "background (or class), its word is replaced by the class prompt at the polysemy rate. "
                "So the dataset name is a worse prompt than its synonyms for polysemous and "
                "rare classes, and an equally good one for control classes."
            ),
            "name_rate": dict(spec.name_rate),
            "polysemy": {c: {"background": bg, "rate": r} for c, (bg, r) in spec.polysemy.items()},
            "roles": roles,
            "background_mention_rate": BACKGROUND_MENTION_RATE,
            "any_class_rate": ANY_CLASS_RATE,
            "n_objects_p": list(N_OBJECTS_P[: spec.max_objects]),
            "scale_range": list(SCALE_RANGE),
            "class_scale_range": {c: list(r) for c, r in CLASS_SCALE_RANGE.items()},
            "max_overlap": MAX_OVERLAP,
            "min_pixels": spec.min_pixels,
            "image_size": spec.image_size,
            "caption_prefixes": list(CAPTION_PREFIXES),
        },
    }


def generate_world(
    root: Path,
    *,
    n_train: int,
    n_val: int,
    n_clip: int,
    image_size: int = 64,
    seed: int = 0,
    n_classes: int = 8,
    min_pixels: int = 20,
    max_objects: int = 3,
    name_rate: dict | None = None,
    polysemy: dict | None = None,
    cooccurrence: dict | None = None,
    jpeg_quality: int = 95,
    progress: bool = True,
) -> dict:
    """Write the demo world under ``root`` in VOC layout plus ``clip_corpus/``; return a summary.

    Byte-identical output for the same arguments (fixed JPEG/PNG settings, sorted order,
    per-image generators). See :func:`make_spec` for ``name_rate``, ``polysemy`` and
    ``cooccurrence``.
    """
    if min(n_train, n_val) < 1 or n_clip < 0:
        raise ValueError("n_train and n_val must be >= 1, n_clip >= 0")
    spec = make_spec(
        n_classes=n_classes,
        image_size=image_size,
        min_pixels=min_pixels,
        max_objects=max_objects,
        name_rate=name_rate,
        polysemy=polysemy,
        cooccurrence=cooccurrence,
    )
    root = Path(root)
    jpeg_params = [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)]
    cls_labels: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        ids = []
        per_class = np.zeros(len(spec.classes), dtype=np.int64)
        for i in _progress(range(n), n, f"world {split}", progress):
            scene = make_scene(_rng(seed, split, i), spec)
            img_id = f"{split}_{i:06d}"
            ok, buf = cv2.imencode(".jpg", scene.image[..., ::-1], jpeg_params)
            if not ok:
                raise RuntimeError(f"{img_id}: JPEG encoding failed")
            _write_bytes(root / "JPEGImages" / f"{img_id}.jpg", buf.tobytes())
            write_mask(root / "SegmentationClass" / f"{img_id}.png", scene.mask)
            cls_labels[img_id] = scene.labels
            per_class += scene.labels.astype(np.int64)
            ids.append(img_id)
        write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "\n".join(ids) + "\n")
        counts[split] = {c: int(k) for c, k in zip(spec.classes, per_class, strict=True)}
    _write_npy(root / "cls_labels.npy", cls_labels, allow_pickle=True)

    s = spec.image_size
    images = np.zeros((n_clip, s, s, 3), dtype=np.uint8)
    captions = []
    for i in _progress(range(n_clip), n_clip, "world clip corpus", progress):
        images[i], caption = make_corpus_pair(_rng(seed, "clip", i), spec)
        captions.append(caption)
    corpus = root / "clip_corpus"
    _write_npy(corpus / "images.npy", images)
    write_text(corpus / "captions.txt", "".join(c + "\n" for c in captions))
    vocab = build_vocab(spec)
    write_text(corpus / "vocab.txt", "\n".join(vocab) + "\n")
    write_json(root / "classes.json", classes_json(spec))
    # No paths or timings: callers may write this summary into the world folder, which
    # must stay byte-identical for the same arguments.
    return {
        "n_train": n_train,
        "n_val": n_val,
        "n_clip": n_clip,
        "image_size": s,
        "seed": seed,
        "classes": list(spec.classes),
        "class_counts": counts,
        "vocab_size": len(vocab),
    }
