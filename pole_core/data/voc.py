"""One reader for PASCAL VOC 2012 (VOCdevkit/VOC2012) and the generated demo world.

Both share the layout ``JPEGImages/<id>.jpg``, ``SegmentationClass[Aug]/<id>.png``,
``ImageSets/Segmentation/<split>.txt`` and optionally ``cls_labels.npy``; the world
adds ``classes.json``. An optional second folder (``aug_root``, e.g. the output of
:func:`pole_core.data.sbd.build_train_aug`) supplies ``<split>.txt``,
``SegmentationClassAug/`` and ``cls_labels.npy`` that the VOC root lacks. Every problem with the data surfaces as one :class:`DataError`
line naming the file, so a broken dataset fails at the stage that reads it, legibly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from pole_core.io.atomic import reading
from pole_core.io.png import read_mask


class DataError(ValueError):
    """A dataset file is missing, unreadable or inconsistent (message names the file)."""


VOC_CLASSES: tuple[str, ...] = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
# Dataset name -> its text form in prompts.
VOC_PROMPTS: dict[str, str] = {
    **{c: c for c in VOC_CLASSES},
    "diningtable": "dining table",
    "person": "player",  # CLIMS and POLE prompt person as "player"
    "pottedplant": "potted plant",
    "tvmonitor": "tv monitor",
}
# The bank of the released POLE code (its per-image selections use exactly these), in its
# order; the candidates of a class are its prompt text above, then these. For person the
# dataset name is a synonym of the prompt "player"; "bike" is a candidate of two classes.
VOC_SYNONYMS: dict[str, list[str]] = {
    "aeroplane": ["aircraft", "airplane", "plane"],
    "bicycle": ["bike", "cycle", "pedal bike"],
    "bird": ["avian", "fowl", "feathered friend"],
    "boat": ["ship", "vessel", "watercraft"],
    "bottle": ["flask", "container", "jar"],
    "bus": ["coach", "transit", "omnibus"],
    "car": ["automobile", "vehicle", "sedan"],
    "cat": ["feline", "kitty", "tomcat"],
    "chair": ["seat", "armchair", "recliner"],
    "cow": ["bovine", "heifer", "bull"],
    "diningtable": ["kitchen table", "dinner table", "breakfast table"],
    "dog": ["canine", "puppy", "hound"],
    "horse": ["equine", "mare", "stallion"],
    "motorbike": ["motorcycle", "bike", "scooter"],
    "person": ["person", "individual", "human", "people"],
    "pottedplant": ["houseplant", "flowerpot", "planter"],
    "sheep": ["lamb", "ewe", "ram"],
    "sofa": ["couch", "loveseat", "settee"],
    "train": ["locomotive", "subway", "monorail"],
    "tvmonitor": ["television", "display screen", "flat screen"],
}
# CLIMS's class-related background words for VOC (the released CLIMS code's list, CBS loss).
VOC_BG_WORDS: tuple[str, ...] = (
    "tree",
    "river",
    "sea",
    "lake",
    "water",
    "railway",
    "railroad",
    "track",
    "stone",
    "rocks",
)
IGNORE = 255


def mask_labels(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """float32[C] multi-hot of the classes 1..C a label map holds (0 and 255 are none)."""
    present = np.bincount(mask.ravel(), minlength=256)
    return (present[1 : n_classes + 1] > 0).astype(np.float32)


def check_label_values(mask: np.ndarray, n_classes: int, path: str | os.PathLike) -> None:
    """Stop with one line naming ``path`` when a label map holds a value not in 0..C or 255."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    bad = present[(present > n_classes) & (present != IGNORE)]
    if bad.size:
        raise DataError(f"{path}: label value {int(bad[0])} outside 0..{n_classes} and {IGNORE}")


@dataclass
class ClassBank:
    """Class names, their prompt text (``prompts[k]`` for ``names[k]``) and synonym candidates.

    ``synonyms[name]`` excludes the dataset name; POLE's candidates are the prompt + these.
    """

    names: list[str]
    prompts: list[str]
    synonyms: dict[str, list[str]]
    bg_words: list[str] = field(default_factory=list)


def load_classes(root: str | os.PathLike) -> ClassBank:
    """Class bank of a dataset: ``root/classes.json`` (or a JSON path), else the VOC 20.

    Falling back to VOC keeps a plain VOCdevkit root usable without any extra file.
    """
    path = Path(root)
    if path.is_dir():
        path = path / "classes.json"
    if not path.exists():
        if path.name == "classes.json" and path.parent.is_dir():
            return ClassBank(
                names=list(VOC_CLASSES),
                prompts=[VOC_PROMPTS[c] for c in VOC_CLASSES],
                synonyms={c: list(s) for c, s in VOC_SYNONYMS.items()},
                bg_words=list(VOC_BG_WORDS),
            )
        raise DataError(f"{path}: class file not found")
    try:
        doc = json.loads(path.read_text())
        entries = doc["classes"]
        names = [str(e["name"]) for e in entries]
        prompts = [str(e.get("prompt", e["name"])) for e in entries]
        synonyms = {str(e["name"]): [str(s) for s in e.get("synonyms", [])] for e in entries}
        bg_words = [str(w) for w in doc.get("bg_words", [])]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a valid class file ({type(err).__name__}: {err})") from None
    if not names or len(set(names)) != len(names):
        raise DataError(f"{path}: class names must be non-empty and unique")
    return ClassBank(names=names, prompts=prompts, synonyms=synonyms, bg_words=bg_words)


def _decode_rgb(path: Path) -> np.ndarray:
    """Decode an image file fully to uint8 RGB; any decoding problem is a DataError."""
    if not path.is_file():
        raise DataError(f"{path}: image not found")
    # A truncated file must fail loudly rather than come back half grey, even when some
    # other library switched PIL's global leniency on.
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    if lenient:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "RGB":
                if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    arr = np.asarray(img, dtype=np.float64)
                    top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
                    img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
                img = img.convert("RGB")
            arr = np.array(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
    finally:
        if lenient:
            ImageFile.LOAD_TRUNCATED_IMAGES = True
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise DataError(f"{path}: unreadable image (decoded to shape {arr.shape})")
    return arr


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def split_entry_id(token: str) -> str:
    """Id of a split-list entry's first column: ``2007_000032`` or the stem of
    ``/JPEGImages/2007_000032.jpg`` (the two-column train_aug list format)."""
    if "/" in token or "\\" in token or token.lower().endswith(_IMAGE_SUFFIXES):
        return Path(token.replace("\\", "/")).stem
    return token


def read_split(path: str | os.PathLike) -> list[str]:
    """Ids of a one- or two-column split list (first column; blank lines skipped)."""
    path = Path(path)
    with reading(path, "split file", DataError):
        text = path.read_text()
    ids = [split_entry_id(line.split()[0]) for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: split is empty")
    return ids


def _decode_id(key: object) -> str:
    """IRNet's cls_labels.npy keys ids as ints (2007_000032 -> 2007000032); undo that."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        digits = str(int(key))
        return f"{digits[:4]}_{digits[4:]}" if len(digits) > 4 else digits
    return str(key)


class ImageFiles:
    """Pixels of a dataset whose images and masks are files: the readers share these.

    A subclass gives ``image_path(id)``, ``mask_path(id)`` and ``n_classes``.
    """

    n_classes: int

    def image_path(self, img_id: str) -> Path:
        raise NotImplementedError

    def mask_path(self, img_id: str) -> Path:
        raise NotImplementedError

    def has_mask(self, img_id: str) -> bool:
        return self.mask_path(img_id).is_file()

    def image(self, img_id: str) -> np.ndarray:
        """uint8 H×W×3 RGB; grayscale, CMYK and palette images are converted."""
        return _decode_rgb(self.image_path(img_id))

    def image_size(self, img_id: str) -> tuple[int, int]:
        """(H, W) from the file header, without decoding the pixels."""
        path = self.image_path(img_id)
        try:
            with Image.open(path) as img:
                w, h = img.size
        except FileNotFoundError:
            raise DataError(f"{path}: image not found") from None
        except Exception as err:
            raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
        return int(h), int(w)

    def mask(self, img_id: str) -> np.ndarray:
        """uint8 H×W label map (0 bg, 1..C, 255 ignore), checked against the image and C."""
        path = self.mask_path(img_id)
        if not path.is_file():
            raise DataError(f"{path}: mask not found")
        try:
            mask = read_mask(path)
        except ValueError as err:
            msg = str(err)
            raise DataError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
        size = self.image_size(img_id)
        if mask.shape != size:
            raise DataError(
                f"{path}: mask size {mask.shape[0]}x{mask.shape[1]} differs from image "
                f"{size[0]}x{size[1]}"
            )
        check_label_values(mask, self.n_classes, path)
        return mask


class VOCDataset(ImageFiles):
    """Reader for a VOC-layout root (real VOC2012 or the generated world).

    ``class_names`` defaults to :func:`load_classes` (``classes.json`` or the VOC 20).
    ``aug_root`` (optional) is a folder with ``<split>.txt``, ``SegmentationClassAug/`` and
    ``cls_labels.npy`` (the train_aug files built from SBD), each used only where ``root``
    has none. Split lists and derived labels are cached; images and masks are read on demand.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        class_names: list[str] | None = None,
        aug_root: str | os.PathLike | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found")
        self.aug_root = Path(aug_root) if aug_root is not None else None
        if self.aug_root is not None and not self.aug_root.is_dir():
            raise DataError(f"{self.aug_root}: aug root not found")
        self.class_names: list[str] = list(
            class_names if class_names is not None else load_classes(self.root).names
        )
        self.n_classes = len(self.class_names)
        if self.n_classes == 0:
            raise DataError(f"{self.root}: no classes")
        self._ids: dict[str, list[str]] = {}
        self._labels: dict[str, np.ndarray] = {}
        self._cls_labels: dict[str, np.ndarray] | None = None
        self._cls_labels_path: Path | None = None
        # Scoring needs VOC's own ground truth (with its 255 boundaries): SegmentationClass
        # first, the Aug folders only for ids VOC does not annotate.
        dirs = [self.root / "SegmentationClass", self.root / "SegmentationClassAug"]
        if self.aug_root is not None:
            dirs.append(self.aug_root / "SegmentationClassAug")
        self._mask_dirs = [dirs[0]] + [d for d in dirs[1:] if d.is_dir()]
        self._bank: ClassBank | None = None

    @property
    def bank(self) -> ClassBank:
        """Class names, prompts, synonyms and background words (:func:`load_classes`)."""
        if self._bank is None:
            self._bank = load_classes(self.root)
        return self._bank

    def __repr__(self) -> str:
        aug = f", aug_root={str(self.aug_root)!r}" if self.aug_root is not None else ""
        return f"VOCDataset({str(self.root)!r}{aug}, n_classes={self.n_classes})"

    # -- ids -------------------------------------------------------------------
    def ids(self, split: str) -> list[str]:
        """Image ids of ``split``, each with a JPEG: ``ImageSets/Segmentation/<split>.txt``,
        else ``aug_root/<split>.txt``; one- or two-column lists (see :func:`read_split`)."""
        if split not in self._ids:
            path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            if not path.exists() and self.aug_root is not None:
                alt = self.aug_root / f"{split}.txt"
                if alt.exists():
                    path = alt
                else:
                    raise DataError(f"{path}: split file not found (nor {alt})")
            ids = read_split(path)
            for img_id in ids:
                if not self.image_path(img_id).is_file():
                    raise DataError(f"{path}: id {img_id!r} has no image {self.image_path(img_id)}")
            self._ids[split] = ids
        return list(self._ids[split])

    # -- paths -----------------------------------------------------------------
    def image_path(self, img_id: str) -> Path:
        return self.root / "JPEGImages" / f"{img_id}.jpg"

    def mask_path(self, img_id: str) -> Path:
        """SegmentationClass/<id>.png (VOC's ground truth) when present, else
        SegmentationClassAug/<id>.png of the root, then of ``aug_root``."""
        for d in self._mask_dirs:
            p = d / f"{img_id}.png"
            if p.is_file():
                return p
        return self._mask_dirs[0] / f"{img_id}.png"

    # -- image-level labels ----------------------------------------------------
    def _load_cls_labels(self) -> dict[str, np.ndarray]:
        if self._cls_labels is None:
            path = self.root / "cls_labels.npy"
            if not path.is_file() and self.aug_root is not None:
                path = self.aug_root / "cls_labels.npy"
            self._cls_labels_path = path
            table: dict[str, np.ndarray] = {}
            if path.is_file():
                try:
                    obj = np.load(path, allow_pickle=True)
                    table = dict(obj.item())
                except Exception as err:
                    raise DataError(
                        f"{path}: not a cls_labels dict ({type(err).__name__}: {err})"
                    ) from None
            self._cls_labels = {_decode_id(k): v for k, v in table.items()}
        return self._cls_labels

    def labels(self, img_id: str) -> np.ndarray:
        """float32[C] multi-hot: from cls_labels.npy when it has the id, else from the mask."""
        if img_id not in self._labels:
            table = self._load_cls_labels()
            if img_id in table:
                source = self._cls_labels_path
                lab = np.asarray(table[img_id], dtype=np.float32).reshape(-1)
                if lab.shape != (self.n_classes,):
                    raise DataError(
                        f"{source}: label of {img_id!r} has {lab.size} entries, "
                        f"expected {self.n_classes}"
                    )
            else:
                source = self.mask_path(img_id)
                lab = mask_labels(self.mask(img_id), self.n_classes)
            if not lab.any():
                raise DataError(f"{source}: image {img_id!r} has no class in its label")
            self._labels[img_id] = lab
        return self._labels[img_id].copy()
