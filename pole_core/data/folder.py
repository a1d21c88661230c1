"""A user's own dataset: a folder of images, a CSV of image-level labels and a class file.

Layout (``data.source: folder``, ``data.root`` = the folder)::

    images/<id>.<jpg|jpeg|png|webp|bmp|tif|tiff>   any size; grayscale, CMYK, 16-bit converted
    labels.csv                                      <id>,<class>;<class>;...  (header optional)
    classes.yaml                                    the classes, their prompts and synonyms
    masks/<id>.png                                  optional ground truth (0 bg, 1..C, 255 ignore)
    splits/<split>.txt                              optional; else every split is all of labels.csv

``classes.yaml``::

    classes:
      - name: dog                # as written in labels.csv
        prompt: dog              # optional: the text CLIP reads (default: the name)
        synonyms: [hound, puppy] # optional: POLE's candidates besides the prompt
      - cat                      # a bare name is a class without synonyms
    bg_words: [grass, floor]     # optional: background words of CLIMS's CBS loss

Every problem is one :class:`~pole_core.data.voc.DataError` line naming the file and, for
the CSV, the row: an unknown class, an image that is not on disk, an image without a
class, a duplicate id. The CSV is checked whole when the dataset is opened, so a bad row
stops the run before anything is trained.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import yaml

from .voc import IGNORE, ClassBank, DataError, ImageFiles, read_split

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def load_folder_classes(path: str | os.PathLike) -> ClassBank:
    """The class bank of ``classes.yaml`` (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: class file not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not valid YAML ({first})") from None
    entries = doc.get("classes") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: needs a non-empty list 'classes'")
    names, prompts, synonyms = [], [], {}
    for i, entry in enumerate(entries, 1):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise DataError(f"{path}: class {i} needs a name")
        unknown = sorted(set(entry) - {"name", "prompt", "synonyms"})
        if unknown:
            raise DataError(f"{path}: class {entry['name']!r} has unknown key {unknown[0]!r}")
        syn = entry.get("synonyms", [])
        if not isinstance(syn, list) or not all(isinstance(s, str) for s in syn):
            raise DataError(f"{path}: synonyms of {entry['name']!r} must be a list of words")
        names.append(entry["name"])
        prompts.append(str(entry.get("prompt", entry["name"])))
        synonyms[entry["name"]] = list(syn)
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: class {dup!r} is listed twice")
    bg_words = doc.get("bg_words", [])
    if not isinstance(bg_words, list) or not all(isinstance(w, str) for w in bg_words):
        raise DataError(f"{path}: bg_words must be a list of words")
    return ClassBank(names=names, prompts=prompts, synonyms=synonyms, bg_words=list(bg_words))


class FolderDataset(ImageFiles):
    """Reader of the folder layout above, with :class:`VOCDataset`'s interface."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found")
        self.bank = load_folder_classes(self.root / "classes.yaml")
        self.class_names = list(self.bank.names)
        self.n_classes = len(self.class_names)
        self._paths = self._index_images()
        self._labels = self._read_labels(self.root / "labels.csv")
        self._ids: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, n_classes={self.n_classes})"

    def _index_images(self) -> dict[str, Path]:
        folder = self.root / "images"
        if not folder.is_dir():
            raise DataError(f"{folder}: image folder not found")
        paths: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                if p.stem in paths:
                    raise DataError(f"{p}: two images with id {p.stem!r} ({paths[p.stem].name})")
                paths[p.stem] = p
        return paths

    def _read_labels(self, path: Path) -> dict[str, np.ndarray]:
        if not path.is_file():
            raise DataError(f"{path}: label file not found")
        index = {name: k for k, name in enumerate(self.class_names)}
        labels: dict[str, np.ndarray] = {}
        first_line: dict[str, int] = {}
        try:
            rows = list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"{path}: unreadable label file ({err})") from None
        for line, row in enumerate(rows, 1):
            if not row or not "".join(row).strip():
                continue
            if line == 1 and row[0].strip().lower() in ("image", "id", "image_id"):
                continue  # header
            img_id = row[0].strip()
            names = [n.strip() for cell in row[1:] for n in cell.split(";") if n.strip()]
            where = f"{path}:{line}"
            if img_id in first_line:
                raise DataError(
                    f"{where}: duplicate image id {img_id!r} (first on line {first_line[img_id]})"
                )
            first_line[img_id] = line
            if img_id not in self._paths:
                raise DataError(f"{where}: image {img_id!r} not found in {self.root / 'images'}")
            if not names:
                raise DataError(f"{where}: image {img_id!r} has no class")
            lab = np.zeros(self.n_classes, np.float32)
            for name in names:
                if name not in index:
                    raise DataError(
                        f"{where}: unknown class {name!r} (classes.yaml: {', '.join(self.class_names)})"
                    )
                lab[index[name]] = 1.0
            labels[img_id] = lab
        if not labels:
            raise DataError(f"{path}: no labelled images")
        return labels

    # -- the dataset interface ---------------------------------------------------
    def ids(self, split: str) -> list[str]:
        """``splits/<split>.txt`` when it exists, else every labelled image (CSV order)."""
        if split not in self._ids:
            path = self.root / "splits" / f"{split}.txt"
            if path.is_file():
                ids = read_split(path)
                for img_id in ids:
                    if img_id not in self._labels:
                        raise DataError(f"{path}: id {img_id!r} is not in labels.csv")
            else:
                ids = list(self._labels)
            self._ids[split] = ids
        return list(self._ids[split])

    def image_path(self, img_id: str) -> Path:
        if img_id not in self._paths:
            raise DataError(f"{self.root / 'images'}: no image {img_id!r}")
        return self._paths[img_id]

    def mask_path(self, img_id: str) -> Path:
        return self.root / "masks" / f"{img_id}.png"

    def labels(self, img_id: str) -> np.ndarray:
        if img_id not in self._labels:
            raise DataError(f"{self.root / 'labels.csv'}: no label for image {img_id!r}")
        return self._labels[img_id].copy()


def has_ground_truth(root: str | os.PathLike) -> bool:
    """A folder dataset is scored only when it has a ``masks/`` folder."""
    return (Path(root) / "masks").is_dir()


__all__ = ["FolderDataset", "IGNORE", "load_folder_classes", "has_ground_truth"]
