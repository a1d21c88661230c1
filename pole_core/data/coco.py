"""MS COCO 2014 for WSSS, with :class:`~pole_core.data.voc.VOCDataset`'s interface.

Layout read (``data.source: coco``, ``data.root`` = the folder)::

    <split>/<file_name>                    images, split = COCO's folder name (train2014, val2014)
    annotations/instances_<split>.json     COCO instances annotations of the split

An image id is its file stem (``COCO_train2014_000000000009``). A split's ids are its images
with at least one annotation, sorted (82081 of train2014 and 40137 of val2014, the WSSS
lists); images without any annotation have no image-level label and are left out.

Ground truth follows the COCO WSSS masks of the released CLIMS code (its mask conversion;
the masks the COCO numbers of CLIMS/POLE are measured against): each non-crowd instance is
drawn in annotation order (the JSON's order, so where instances overlap the later one wins)
with its class 1..80 (COCO category ids in order); crowd regions are not drawn, so they stay
background unless a non-crowd instance covers them; there is no ignore label (255 never
occurs). Image-level labels are the categories of all the image's annotations, crowd
included (its classification labels are built from every annotation).

The annotation file of a split is parsed once per process, lazily (on the first call that
needs it), and reduced to a compact index: per image its file name, size and annotations
(class, crowd flag, segmentation; polygons as float arrays, crowd segmentations dropped).
Masks are decoded with ``pycocotools.mask`` (polygons, compressed and uncompressed RLE) and
cached as palette PNGs under ``cache_dir/SegmentationClass/<id>.png`` (written atomically)
the first time they are asked for; later reads come from the PNG. A cached PNG is not
checked against the annotation file again: delete the cache when the annotations change.

Every problem with the data is one :class:`~pole_core.data.voc.DataError` line naming the
file: a missing or unreadable annotation file, an unknown category id, an image listed in
the annotations but not on disk (when it is read).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_util

from pole_core.io.atomic import reading
from pole_core.io.png import read_mask, write_mask

from .voc import ClassBank, DataError, _decode_rgb, check_label_values

# The 80 COCO categories: (category id, name), in category-id order.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"),
    (2, "bicycle"),
    (3, "car"),
    (4, "motorcycle"),
    (5, "airplane"),
    (6, "bus"),
    (7, "train"),
    (8, "truck"),
    (9, "boat"),
    (10, "traffic light"),
    (11, "fire hydrant"),
    (13, "stop sign"),
    (14, "parking meter"),
    (15, "bench"),
    (16, "bird"),
    (17, "cat"),
    (18, "dog"),
    (19, "horse"),
    (20, "sheep"),
    (21, "cow"),
    (22, "elephant"),
    (23, "bear"),
    (24, "zebra"),
    (25, "giraffe"),
    (27, "backpack"),
    (28, "umbrella"),
    (31, "handbag"),
    (32, "tie"),
    (33, "suitcase"),
    (34, "frisbee"),
    (35, "skis"),
    (36, "snowboard"),
    (37, "sports ball"),
    (38, "kite"),
    (39, "baseball bat"),
    (40, "baseball glove"),
    (41, "skateboard"),
    (42, "surfboard"),
    (43, "tennis racket"),
    (44, "bottle"),
    (46, "wine glass"),
    (47, "cup"),
    (48, "fork"),
    (49, "knife"),
    (50, "spoon"),
    (51, "bowl"),
    (52, "banana"),
    (53, "apple"),
    (54, "sandwich"),
    (55, "orange"),
    (56, "broccoli"),
    (57, "carrot"),
    (58, "hot dog"),
    (59, "pizza"),
    (60, "donut"),
    (61, "cake"),
    (62, "chair"),
    (63, "couch"),
    (64, "potted plant"),
    (65, "bed"),
    (67, "dining table"),
    (70, "toilet"),
    (72, "tv"),
    (73, "laptop"),
    (74, "mouse"),
    (75, "remote"),
    (76, "keyboard"),
    (77, "cell phone"),
    (78, "microwave"),
    (79, "oven"),
    (80, "toaster"),
    (81, "sink"),
    (82, "refrigerator"),
    (84, "book"),
    (85, "clock"),
    (86, "vase"),
    (87, "scissors"),
    (88, "teddy bear"),
    (89, "hair drier"),
    (90, "toothbrush"),
)
COCO_CLASSES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(cid for cid, _ in COCO_CATEGORIES)
# COCO category id -> label value 1..80 of the masks.
COCO_LABEL_OF_CATEGORY: dict[int, int] = {cid: k + 1 for k, cid in enumerate(COCO_CATEGORY_IDS)}
# Dataset name -> its text form in prompts: COCO's names are already text, and person is
# prompted as "player" as in CLIMS's COCO class list (as for VOC).
COCO_PROMPTS: dict[str, str] = {**{c: c for c in COCO_CLASSES}, "person": "player"}
# POLE candidates besides the prompt: three common alternatives per class (the classes shared
# with VOC keep the released POLE bank's words); for person the dataset name comes first, as
# in the VOC bank, since the prompt is "player".
COCO_SYNONYMS: dict[str, list[str]] = {
    "person": ["person", "people", "human", "man"],
    "bicycle": ["bike", "cycle", "pedal bike"],
    "car": ["automobile", "vehicle", "sedan"],
    "motorcycle": ["motorbike", "bike", "scooter"],
    "airplane": ["aircraft", "aeroplane", "plane"],
    "bus": ["coach", "transit", "omnibus"],
    "train": ["locomotive", "subway", "monorail"],
    "truck": ["lorry", "pickup truck", "semi truck"],
    "boat": ["ship", "vessel", "watercraft"],
    "traffic light": ["traffic signal", "stoplight", "signal light"],
    "fire hydrant": ["hydrant", "fire plug", "water hydrant"],
    "stop sign": ["road sign", "traffic sign", "octagonal sign"],
    "parking meter": ["meter", "parking machine", "pay station"],
    "bench": ["park bench", "seat", "pew"],
    "bird": ["avian", "fowl", "feathered friend"],
    "cat": ["feline", "kitty", "tomcat"],
    "dog": ["canine", "puppy", "hound"],
    "horse": ["equine", "mare", "stallion"],
    "sheep": ["lamb", "ewe", "ram"],
    "cow": ["bovine", "heifer", "bull"],
    "elephant": ["pachyderm", "tusker", "elephant calf"],
    "bear": ["grizzly", "brown bear", "polar bear"],
    "zebra": ["striped horse", "plains zebra", "wild zebra"],
    "giraffe": ["camelopard", "reticulated giraffe", "masai giraffe"],
    "backpack": ["rucksack", "knapsack", "bookbag"],
    "umbrella": ["parasol", "brolly", "sunshade"],
    "handbag": ["purse", "pocketbook", "clutch"],
    "tie": ["necktie", "bow tie", "cravat"],
    "suitcase": ["luggage", "baggage", "travel bag"],
    "frisbee": ["flying disc", "disc", "flying saucer"],
    "skis": ["ski", "snow skis", "downhill skis"],
    "snowboard": ["snow board", "board", "ski board"],
    "sports ball": ["ball", "football", "soccer ball"],
    "kite": ["paper kite", "box kite", "stunt kite"],
    "baseball bat": ["bat", "softball bat", "wooden bat"],
    "baseball glove": ["mitt", "baseball mitt", "catcher's mitt"],
    "skateboard": ["skate board", "longboard", "penny board"],
    "surfboard": ["surf board", "bodyboard", "paddleboard"],
    "tennis racket": ["racket", "racquet", "tennis racquet"],
    "bottle": ["flask", "container", "jar"],
    "wine glass": ["wineglass", "goblet", "stemware"],
    "cup": ["mug", "teacup", "coffee cup"],
    "fork": ["dinner fork", "table fork", "silverware"],
    "knife": ["blade", "kitchen knife", "table knife"],
    "spoon": ["teaspoon", "tablespoon", "ladle"],
    "bowl": ["dish", "basin", "soup bowl"],
    "banana": ["plantain", "bananas", "banana bunch"],
    "apple": ["apples", "red apple", "green apple"],
    "sandwich": ["sub", "panini", "hoagie"],
    "orange": ["tangerine", "mandarin", "citrus"],
    "broccoli": ["broccoli florets", "broccoli crown", "green vegetable"],
    "carrot": ["carrots", "baby carrot", "root vegetable"],
    "hot dog": ["hotdog", "frankfurter", "sausage"],
    "pizza": ["pizza pie", "flatbread", "pizza slice"],
    "donut": ["doughnut", "cruller", "glazed donut"],
    "cake": ["cupcake", "pastry", "dessert"],
    "chair": ["seat", "armchair", "recliner"],
    "couch": ["sofa", "loveseat", "settee"],
    "potted plant": ["houseplant", "flowerpot", "planter"],
    "bed": ["mattress", "bunk", "cot"],
    "dining table": ["kitchen table", "dinner table", "breakfast table"],
    "toilet": ["lavatory", "commode", "water closet"],
    "tv": ["television", "monitor", "screen"],
    "laptop": ["notebook", "laptop computer", "computer"],
    "mouse": ["computer mouse", "wireless mouse", "trackball"],
    "remote": ["remote control", "controller", "clicker"],
    "keyboard": ["computer keyboard", "keypad", "qwerty keyboard"],
    "cell phone": ["mobile phone", "smartphone", "cellphone"],
    "microwave": ["microwave oven", "countertop microwave", "microwave cooker"],
    "oven": ["stove", "cooker", "range"],
    "toaster": ["toaster oven", "bread toaster", "pop-up toaster"],
    "sink": ["basin", "washbasin", "kitchen sink"],
    "refrigerator": ["fridge", "freezer", "icebox"],
    "book": ["novel", "textbook", "paperback"],
    "clock": ["wall clock", "timepiece", "alarm clock"],
    "vase": ["flower vase", "urn", "jug"],
    "scissors": ["shears", "clippers", "snips"],
    "teddy bear": ["stuffed animal", "plush toy", "teddy"],
    "hair drier": ["hair dryer", "blow dryer", "blowdryer"],
    "toothbrush": ["tooth brush", "electric toothbrush", "brush"],
}
# CLIMS's class-related background words for COCO (the released CLIMS code's list, CBS loss),
# in its order.
COCO_BG_WORDS: tuple[str, ...] = (
    "street sign",
    "mountain",
    "video game",
    "men",
    "track",
    "bus stop",
    "cabinet",
    "tray",
    "plate",
    "shirt",
    "city street",
    "runway",
    "tower",
    "ramp",
    "grass",
    "pillow",
    "urinal",
    "lake",
    "brick",
    "fence",
    "shower",
    "airport",
    "animal",
    "shower curtain",
    "road",
    "mirror",
    "jacket",
    "church",
    "snow",
    "fruit",
    "hay",
    "floor",
    "field",
    "street",
    "mouth",
    "steam engine",
    "cheese",
    "river",
    "tree branch",
    "suit",
    "child",
    "soup",
    "desk",
    "tub",
    "tennis court",
    "teeth",
    "bridge",
    "sky",
    "officer",
    "sidewalk",
    "dock",
    "tree",
    "court",
    "rock",
    "board",
    "branch",
    "pan",
    "box",
    "body",
    "salad",
    "dirt",
    "leaf",
    "hand",
    "highway",
    "vegetable",
    "computer monitor",
    "door",
    "meat",
    "pair",
    "beach",
    "harbor",
    "ocean",
    "baseball player",
    "girl",
    "market",
    "window",
    "blanket",
    "boy",
    "woman",
    "bat",
    "baby",
    "flower",
    "wall",
    "bath tub",
    "tarmac",
    "tennis ball",
    "roll",
    "park",
)
COCO_SPLITS: tuple[str, ...] = ("train2014", "val2014")

_ID_RE = re.compile(r"^COCO_(?P<split>[A-Za-z0-9]+)_\d+$")


def coco_bank() -> ClassBank:
    """The COCO class bank: names, prompts, synonyms and CLIMS's background words."""
    return ClassBank(
        names=list(COCO_CLASSES),
        prompts=[COCO_PROMPTS[c] for c in COCO_CLASSES],
        synonyms={c: list(s) for c, s in COCO_SYNONYMS.items()},
        bg_words=list(COCO_BG_WORDS),
    )


# -- the compact annotation index ----------------------------------------------------------
# A segmentation as kept: polygons as a tuple of float64 arrays, a compressed RLE as
# {"size", "counts": bytes}, an uncompressed RLE as given; None for crowd regions (not drawn).
Segmentation = tuple[np.ndarray, ...] | dict[str, Any] | None


@dataclass(frozen=True)
class _Annotation:
    label: int  # 1..80
    crowd: bool
    segmentation: Segmentation
    ann_id: Any


@dataclass(frozen=True)
class _Entry:
    file_name: str
    height: int
    width: int
    annotations: tuple[_Annotation, ...]


@dataclass(frozen=True)
class _SplitIndex:
    path: Path  # the annotation file
    entries: dict[str, _Entry]  # image id (file stem) -> entry
    ids: tuple[str, ...]  # images with at least one annotation, sorted


# Parsed annotation files of this process: (resolved path, mtime_ns, size) -> index.
_INDEX_CACHE: dict[tuple[str, int, int], _SplitIndex] = {}


def _compact_segmentation(seg: Any, where: str) -> Segmentation:
    if isinstance(seg, list):
        try:
            polys = tuple(np.asarray(p, dtype=np.float64).reshape(-1) for p in seg)
        except (TypeError, ValueError):
            raise DataError(f"{where}: polygon segmentation is not lists of numbers") from None
        return polys
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        counts = seg["counts"]
        if isinstance(counts, str):
            return {"size": list(seg["size"]), "counts": counts.encode("ascii")}
        if isinstance(counts, (list, bytes)):
            return {"size": list(seg["size"]), "counts": counts}
    raise DataError(f"{where}: segmentation is neither polygons nor RLE")


def _parse_annotations(path: Path) -> _SplitIndex:
    """Read a COCO instances file and keep only what the reader needs."""
    with reading(path, "annotation file", DataError):
        raw = path.read_bytes()
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    try:
        images = doc["images"]
        anns = doc["annotations"]
        by_image: dict[Any, str] = {}
        sizes: dict[str, tuple[str, int, int]] = {}
        for img in images:
            file_name = str(img["file_name"])
            stem = Path(file_name).stem
            if stem in sizes:
                raise DataError(f"{path}: two images with id {stem!r}")
            sizes[stem] = (file_name, int(img["height"]), int(img["width"]))
            by_image[img["id"]] = stem
        per_image: dict[str, list[_Annotation]] = {}
        for ann in anns:
            ann_id = ann.get("id")
            where = f"{path}: annotation {ann_id}"
            cid = ann["category_id"]
            ok = isinstance(cid, int) and not isinstance(cid, bool)
            label = COCO_LABEL_OF_CATEGORY.get(cid) if ok else None
            if label is None:
                raise DataError(f"{where} has unknown category id {cid!r} (not one of COCO's 80)")
            stem = by_image.get(ann["image_id"])
            if stem is None:
                raise DataError(f"{where} refers to unknown image id {ann['image_id']!r}")
            crowd = bool(ann.get("iscrowd", 0))
            seg = None if crowd else _compact_segmentation(ann["segmentation"], where)
            per_image.setdefault(stem, []).append(_Annotation(label, crowd, seg, ann_id))
    except DataError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(
            f"{path}: not a COCO instances file ({type(err).__name__}: {err})"
        ) from None
    entries = {
        stem: _Entry(name, h, w, tuple(per_image.get(stem, ())))
        for stem, (name, h, w) in sizes.items()
    }
    ids = tuple(sorted(stem for stem in entries if entries[stem].annotations))
    return _SplitIndex(path=path, entries=entries, ids=ids)


def _load_index(path: Path) -> _SplitIndex:
    """The index of an annotation file, parsed once per process (re-read if it changes)."""
    with reading(path, "annotation file", DataError):
        st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    index = _INDEX_CACHE.get(key)
    if index is None:
        index = _parse_annotations(path)
        for old in [k for k in _INDEX_CACHE if k[0] == key[0]]:
            del _INDEX_CACHE[old]
        _INDEX_CACHE[key] = index
    return index


_PYCOCO_COPY_WARNING = r"__array__ implementation doesn't accept a copy keyword"


def _decode(seg: Segmentation, h: int, w: int, where: str) -> np.ndarray:
    """Binary H×W mask of one segmentation, as pycocotools' annToMask."""
    try:
        if isinstance(seg, tuple):
            if not seg:
                return np.zeros((h, w), dtype=bool)
            rle = mask_util.merge(mask_util.frPyObjects(list(seg), h, w))
        elif isinstance(seg, dict) and isinstance(seg["counts"], list):
            rle = mask_util.frPyObjects(seg, h, w)
        else:
            rle = seg
        if list(rle["size"]) != [h, w]:
            raise DataError(f"{where}: RLE size {rle['size']} differs from the image's {[h, w]}")
        with warnings.catch_warnings():
            # pycocotools 2.0.11 under NumPy 2 warns on every decode (its __array__ lacks
            # the copy keyword); the result is right.
            warnings.filterwarnings("ignore", _PYCOCO_COPY_WARNING, DeprecationWarning)
            out = mask_util.decode(rle)
    except DataError:
        raise
    except Exception as err:  # pycocotools raises TypeError, ValueError, IndexError...
        raise DataError(
            f"{where}: undecodable segmentation ({type(err).__name__}: {err})"
        ) from None
    return out.astype(bool)


class CocoDataset:
    """Reader of the COCO 2014 layout above, with :class:`VOCDataset`'s interface.

    ``cache_dir`` (optional) is where decoded ground-truth masks are kept as PNGs
    (``SegmentationClass/<id>.png``); without it every :meth:`mask` call decodes.
    """

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.bank = coco_bank()
        self.class_names: list[str] = list(COCO_CLASSES)
        self.n_classes = len(self.class_names)

    def __repr__(self) -> str:
        cache = f", cache_dir={str(self.cache_dir)!r}" if self.cache_dir is not None else ""
        return f"CocoDataset({str(self.root)!r}{cache}, n_classes={self.n_classes})"

    # -- splits and ids ------------------------------------------------------------------
    def annotation_path(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    def _index(self, split: str) -> _SplitIndex:
        return _load_index(self.annotation_path(split))

    def _loaded_index(self, split: str) -> _SplitIndex | None:
        path = self.annotation_path(split)
        try:
            st = path.stat()
        except OSError:
            return None
        return _INDEX_CACHE.get((str(path.resolve()), st.st_mtime_ns, st.st_size))

    def split_of(self, img_id: str) -> str:
        """The split of an id: ``COCO_<split>_<number>``, else a parsed split that has it."""
        m = _ID_RE.match(img_id)
        if m:
            return m.group("split")
        for split in COCO_SPLITS:
            index = self._loaded_index(split)
            if index is not None and img_id in index.entries:
                return split
        raise DataError(
            f"{self.root}: cannot tell the split of image id {img_id!r} "
            "(expected COCO_<split>_<number>)"
        )

    def _entry(self, img_id: str) -> tuple[_SplitIndex, _Entry]:
        index = self._index(self.split_of(img_id))
        entry = index.entries.get(img_id)
        if entry is None:
            raise DataError(f"{index.path}: no image {img_id!r}")
        return index, entry

    def ids(self, split: str) -> list[str]:
        """Ids of the split's images with at least one annotation, sorted."""
        index = self._index(split)
        if not index.ids:
            raise DataError(f"{index.path}: no annotated image")
        return list(index.ids)

    # -- paths -------------------------------------------------------------------------
    def image_path(self, img_id: str) -> Path:
        """``root/<split>/<file_name>``; the file name is ``<id>.jpg`` until the split's
        annotations are parsed (COCO's names), then the annotation file's."""
        split = self.split_of(img_id)
        index = self._loaded_index(split)
        entry = index.entries.get(img_id) if index is not None else None
        return self.root / split / (entry.file_name if entry is not None else f"{img_id}.jpg")

    def mask_path(self, img_id: str) -> Path | None:
        """The cached ground-truth PNG (``cache_dir/SegmentationClass/<id>.png``); None
        without a cache_dir."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / "SegmentationClass" / f"{img_id}.png"

    def has_mask(self, img_id: str) -> bool:
        """True when the id's split has an annotation file (every COCO split does)."""
        return self.annotation_path(self.split_of(img_id)).is_file()

    # -- pixels --------------------------------------------------------------------------
    def _check_image(self, img_id: str, path: Path) -> None:
        if not path.is_file():
            index = self._loaded_index(self.split_of(img_id))
            listed = f" (listed in {index.path})" if index and img_id in index.entries else ""
            raise DataError(f"{path}: image not found{listed}")

    def image(self, img_id: str) -> np.ndarray:
        """uint8 H×W×3 RGB; grayscale, CMYK and palette images are converted."""
        path = self.image_path(img_id)
        self._check_image(img_id, path)
        return _decode_rgb(path)

    def image_size(self, img_id: str) -> tuple[int, int]:
        """(H, W) from the file header, without decoding the pixels."""
        path = self.image_path(img_id)
        self._check_image(img_id, path)
        try:
            with Image.open(path) as img:
                w, h = img.size
        except Exception as err:
            raise DataError(f"{path}: unreadable image ({type(err).__name__}: {err})") from None
        return int(h), int(w)

    def decode_mask(self, img_id: str) -> np.ndarray:
        """The ground truth from the annotations (no cache): see the module docstring."""
        index, entry = self._entry(img_id)
        out = np.zeros((entry.height, entry.width), dtype=np.uint8)
        for ann in entry.annotations:
            if ann.crowd:
                continue
            where = f"{index.path}: annotation {ann.ann_id}"
            out[_decode(ann.segmentation, entry.height, entry.width, where)] = ann.label
        return out

    def mask(self, img_id: str) -> np.ndarray:
        """uint8 H×W label map (0 bg, 1..80; no 255), from the cache when it is there."""
        path = self.mask_path(img_id)
        if path is None:
            return self.decode_mask(img_id)
        if path.is_file():
            try:
                mask = read_mask(path)
            except ValueError as err:
                msg = str(err)
                raise DataError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
            check_label_values(mask, self.n_classes, path)
            return mask
        mask = self.decode_mask(img_id)
        write_mask(path, mask)
        return mask

    # -- image-level labels --------------------------------------------------------------
    def labels(self, img_id: str) -> np.ndarray:
        """float32[80] multi-hot of the categories of the image's annotations (crowd too)."""
        index, entry = self._entry(img_id)
        if not entry.annotations:
            raise DataError(f"{index.path}: image {img_id!r} has no annotation (no class)")
        lab = np.zeros(self.n_classes, dtype=np.float32)
        for ann in entry.annotations:
            lab[ann.label - 1] = 1.0
        return lab


__all__ = [
    "COCO_BG_WORDS",
    "COCO_CATEGORIES",
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "COCO_LABEL_OF_CATEGORY",
    "COCO_PROMPTS",
    "COCO_SPLITS",
    "COCO_SYNONYMS",
    "CocoDataset",
    "coco_bank",
]
