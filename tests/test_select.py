"""POLE prompt selection on a constructed world where the right token is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pole_core.io.cam_store import CamWriter
from pole_core.prompts.select import select_prompts, selection_stats

RED, GREEN = (255, 0, 0), (0, 255, 0)


class ColourBundle:
    """Fake CLIP: an image's embedding is its mean RGB; prompts map to fixed colour vectors."""

    logit_scale = 100.0
    device = torch.device("cpu")

    def __init__(self, text: dict[str, tuple[float, float, float]]):
        self.text = text
        self.image_calls: list[int] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.image_calls.append(x.shape[0])
        return F.normalize(x.mean(dim=(2, 3)), dim=-1)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return torch.tensor([self.text[p] for p in prompts], dtype=torch.float32)


class TwoObjectDataset:
    """Images with a red object (class 0) and/or a green object (class 1) of known masks."""

    class_names = ["redthing", "greenthing"]

    def __init__(self):
        self.items = {}
        for i, (classes, size) in enumerate(
            [((0, 1), (8, 8)), ((0,), (8, 8)), ((1,), (6, 10)), ((0, 1), (6, 10))]
        ):
            h, w = size
            img = np.zeros((h, w, 3), np.uint8)
            cams = np.zeros((len(classes), h, w), np.float32)
            for row, k in enumerate(classes):
                region = (
                    (slice(0, h // 2), slice(None))
                    if k == 0
                    else (slice(h // 2, None), slice(None))
                )
                img[region] = RED if k == 0 else GREEN
                cams[row][region] = 1.0
            self.items[f"im{i}"] = (img, np.array(classes), cams)

    def image(self, image_id: str) -> np.ndarray:
        return self.items[image_id][0]


# Unmasked image = red + green -> "orange" would win; masked by its CAM the red object is
# pure red -> "crimson" (not the dataset name); the green object keeps its name.
TEXT = {
    "A photo of redthing.": (0.6, 0.0, 0.8),
    "A photo of crimson.": (1.0, 0.0, 0.0),
    "A photo of orange.": (0.7, 0.7, 0.0),
    "A photo of greenthing.": (0.0, 1.0, 0.0),
    "A photo of verdant.": (0.3, 0.6, 0.7),
}
CANDIDATES = {
    "redthing": ["redthing", "crimson", "orange"],
    "greenthing": ["greenthing", "verdant"],
}


@pytest.fixture()
def world(tmp_path):
    ds = TwoObjectDataset()
    with CamWriter(tmp_path / "cams.h5") as w:
        for image_id, (_, keys, cams) in ds.items.items():
            w.add(image_id, cams, keys)
    return ds, tmp_path / "cams.h5"


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_selects_known_best_token_and_counts(world, batch_size: int) -> None:
    ds, h5 = world
    bundle = ColourBundle(TEXT)
    ids = list(ds.items)
    selected, hist = select_prompts(
        ds, ids, h5, bundle, CANDIDATES, batch_size=batch_size, progress=False
    )
    assert selected == {
        "im0": {"redthing": "crimson", "greenthing": "greenthing"},
        "im1": {"redthing": "crimson"},
        "im2": {"greenthing": "greenthing"},
        "im3": {"redthing": "crimson", "greenthing": "greenthing"},
    }
    assert hist == {
        "redthing": {"redthing": 0, "crimson": 3, "orange": 0},
        "greenthing": {"greenthing": 3, "verdant": 0},
    }
    assert sum(bundle.image_calls) == 6 and max(bundle.image_calls) <= batch_size
    stats = selection_stats(selected, hist)
    assert stats["n_pairs"] == 6 and stats["distinct_tokens"] == 2
    assert stats["per_class"]["redthing"]["top"] == "crimson"
    assert stats["per_class"]["redthing"]["name_share"] == 0.0
    assert stats["name_share"] == 0.5


def test_template_is_used(world) -> None:
    ds, h5 = world
    text = {k.replace("A photo of ", "a ").rstrip("."): v for k, v in TEXT.items()}
    selected, _ = select_prompts(
        ds, ["im1"], h5, ColourBundle(text), CANDIDATES, template="a {}", progress=False
    )
    assert selected == {"im1": {"redthing": "crimson"}}


def test_missing_candidates_is_an_error(world) -> None:
    ds, h5 = world
    with pytest.raises(ValueError, match="greenthing"):
        select_prompts(
            ds, ["im0"], h5, ColourBundle(TEXT), {"redthing": ["redthing"]}, progress=False
        )
