"""HDF5 store of per-image CAMs.

Layout (the results contract): ``/<image_id>/cam`` float16 [k, H, W] at full
resolution, ``/<image_id>/keys`` int [k] (class indices 0..C-1 of the image's
labelled classes), optionally ``/<image_id>/cam_s4`` float16 [k, h, w] on the
stride-4 grid used by the affinity stage. Root attributes: ``classes``,
``scales``, ``source`` (checkpoint hash). Files are written under a temporary
name and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .atomic import atomic_path


class CamWriter:
    """Write CAMs to an HDF5 file that appears at ``path`` only when closed without error."""

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any] | None = None):
        self._ctx = atomic_path(path, suffix=".h5")
        self._tmp = self._ctx.__enter__()
        self._file = h5py.File(self._tmp, "w")
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = value

    def add(
        self, image_id: str, cam: np.ndarray, keys: np.ndarray, cam_s4: np.ndarray | None = None
    ) -> None:
        """Store one image's CAM [k,H,W] (values in [0,1]) and its class keys [k]."""
        grp = self._file.create_group(image_id)
        cam = np.asarray(cam, dtype=np.float16)
        chunks = (1, *cam.shape[1:]) if cam.shape[0] else None
        grp.create_dataset("cam", data=cam, chunks=chunks, compression="gzip", compression_opts=1)
        grp.create_dataset("keys", data=np.asarray(keys, dtype=np.int64))
        if cam_s4 is not None:
            grp.create_dataset("cam_s4", data=np.asarray(cam_s4, dtype=np.float16))

    def close(self) -> None:
        self._file.close()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        self._file.close()
        self._ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> CamWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def open_cams(path: str | os.PathLike) -> h5py.File:
    """Open a CAM store for reading, with one clear line when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CAM file not found")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: unreadable HDF5 CAM file ({err})") from None


def read_cam(f: h5py.File, image_id: str, stride4: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (cam float32 [k,H,W], keys int64 [k]) for one image."""
    if image_id not in f:
        raise KeyError(f"{f.filename}: no CAM for image {image_id!r}")
    grp = f[image_id]
    cam = grp["cam_s4" if stride4 else "cam"][()].astype(np.float32)
    return cam, grp["keys"][()].astype(np.int64)


def iter_cams(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Iterate (image_id, cam, keys) over a store in sorted id order."""
    with open_cams(path) as f:
        for image_id in sorted(f.keys()):
            cam, keys = read_cam(f, image_id)
            yield image_id, cam, keys


def merge_cam_files(parts: list[str | os.PathLike], out: str | os.PathLike) -> None:
    """Gather sharded CAM files into one, keeping the first part's root attributes."""
    with open_cams(parts[0]) as first:
        attrs = dict(first.attrs)
    with CamWriter(out, attrs) as writer:
        for part in parts:
            with open_cams(part) as f:
                for image_id in f:
                    f.copy(f[image_id], writer._file, name=image_id)
