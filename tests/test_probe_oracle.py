"""The world probe (rule clip_zeroshot) and the oracle selection (rule select_prompts_oracle)
on a constructed scene where the right token is known: a red object on a blue background,
whose dataset name CLIP reads as the blue surroundings and whose synonym as the red object."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pole_core.cam.network import IMAGENET_MEAN
from pole_core.clip.zeroshot import cam_like_mask, probe_markdown, world_probe
from pole_core.io.cam_store import CamWriter
from pole_core.prompts.select import gt_masks, select_prompts, select_prompts_from_masks

RED, BLUE = (230, 20, 20), (20, 20, 230)
SIZE = 32
NAME, SYNONYM, OTHER = "redthing", "crimson", "wagon"


class ColourEncoder:
    """A CLIP-like encoder: an image's embedding is its mean colour minus the fill colour
    (the CAM losses' masked pixels are the ImageNet mean), so a removed object adds
    nothing; a text's embedding is a fixed colour direction."""

    logit_scale = 100.0
    device = torch.device("cpu")
    input_size = 16

    def __init__(self, text: dict[str, tuple[float, float, float]]):
        self.text = text

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3)
        return F.normalize(x.mean(dim=(2, 3)) - mean, dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(torch.tensor([self.text[t] for t in texts]), dim=-1)


# the name points at the blue surroundings, the synonym at the red object, "wagon" at neither
TEXT = {
    f"a photo of a {NAME}.": (0.0, 0.0, 1.0),
    f"a photo of a {SYNONYM}.": (1.0, 0.0, 0.0),
    f"a photo of a {OTHER}.": (0.0, 1.0, 0.0),
    "A photo of redthing.": (0.0, 0.0, 1.0),
    "A photo of crimson.": (1.0, 0.0, 0.0),
    "A photo of wagon.": (0.0, 1.0, 0.0),
}


class RedOnBlue:
    """Images of one class: a red square (label 1) at a different place on a blue background."""

    class_names = [NAME]

    def __init__(self, n: int = 5):
        self.items = {}
        for i in range(n):
            img = np.empty((SIZE, SIZE + 8, 3), np.uint8)
            img[:] = BLUE
            mask = np.zeros(img.shape[:2], np.uint8)
            top, left = 4 + 2 * i, 6 + 3 * i
            mask[top : top + 12, left : left + 12] = 1
            mask[top, left : left + 12] = 255  # an ignored edge row: not the object
            img[mask == 1] = RED
            self.items[f"im{i}"] = (img, mask)

    def image(self, image_id: str) -> np.ndarray:
        return self.items[image_id][0]

    def mask(self, image_id: str) -> np.ndarray:
        return self.items[image_id][1]

    def labels(self, image_id: str) -> np.ndarray:
        return np.ones(1, np.float32)


def test_cam_like_mask_is_soft_and_spills_past_the_object() -> None:
    gt = np.zeros((50, 50), np.float32)
    gt[20:30, 20:30] = 1
    m = cam_like_mask(gt)  # sigma 2 px, then a 4-px disk
    assert m.dtype == np.float32 and m.min() >= 0.0 and m.max() <= 1.0
    assert m[25, 25] > 0.95 and m[25, 33] > 0.5  # the inside stays, the edge spills outwards
    assert 0.0 < m[25, 36] < 0.5 and m[0, 0] < 1e-3  # and fades
    assert not set(np.unique(m)) <= {0.0, 1.0}
    assert np.array_equal(cam_like_mask(gt, blur=0, dilate=0), gt)


def test_probe_margin_of_the_object_colour_token_beats_the_name() -> None:
    ds = RedOnBlue()
    ids = list(ds.items)
    probe = world_probe(
        ColourEncoder(TEXT),
        [ds.image(i) for i in ids],
        [ds.mask(i) for i in ids],
        np.ones((len(ids), 1)),
        [NAME],
        {NAME: [SYNONYM, OTHER]},
        max_images=4,
        batch_size=3,
    )
    row = probe["per_class"][NAME]
    assert row["n_images"] == 4
    assert list(row["margin"]) == [NAME, SYNONYM, OTHER]
    for kind in ("gt", "cam_like"):
        m = {t: v[kind] for t, v in row["margin"].items()}
        assert m[SYNONYM] > 0 > m[NAME], (kind, m)
        assert m[SYNONYM] > m[OTHER]
        assert row["best_synonym"][kind] == SYNONYM
        assert row["name_minus_best_synonym"][kind] == pytest.approx(m[NAME] - m[SYNONYM])
        assert probe["mean_name_minus_best_synonym"][kind] < 0
    # the CAM-like mask keeps some background in fg: a smaller margin than the ground truth
    assert row["margin"][SYNONYM]["cam_like"] < row["margin"][SYNONYM]["gt"]
    assert (probe["blur"], probe["dilate"], probe["mask_fill"]) == (0.04, 0.08, "mean")
    md = probe_markdown(probe)
    assert "| redthing | 4 |" in md and f"| {NAME} | **{NAME}** |" in md and SYNONYM in md
    assert "Not run: no masks." in probe_markdown({"skipped": "no masks"})


def test_probe_class_without_images_or_synonyms_gives_none() -> None:
    ds = RedOnBlue(2)
    probe = world_probe(
        ColourEncoder(TEXT),
        lambda i: ds.image(f"im{i}"),
        lambda i: ds.mask(f"im{i}"),
        np.array([[1, 0], [1, 0]]),
        [NAME, OTHER],
        {},
    )
    assert probe["per_class"][NAME]["name_minus_best_synonym"] == {"gt": None, "cam_like": None}
    assert probe["per_class"][OTHER]["n_images"] == 0
    assert probe["per_class"][OTHER]["margin"][OTHER] == {"gt": None, "cam_like": None}
    assert probe["mean_name_minus_best_synonym"] == {"gt": None, "cam_like": None}


def test_oracle_selection_on_gt_masks_picks_the_object_token(tmp_path) -> None:
    """Fed the ground truth, the selection sees the red object and picks crimson; fed a CAM
    that covers the whole image (a poor baseline), it sees mostly blue and keeps the name."""
    ds = RedOnBlue()
    ids = list(ds.items)
    cands = {NAME: [NAME, SYNONYM, OTHER]}
    masks, keys = gt_masks(ds)("im0")
    assert keys.tolist() == [0] and masks.shape == (1, SIZE, SIZE + 8)
    assert masks.dtype == np.float32 and masks.sum() == 11 * 12  # the ignored row is not object
    oracle, hist = select_prompts_from_masks(
        ds, ids, gt_masks(ds), ColourEncoder(TEXT), cands, batch_size=2, progress=False
    )
    assert oracle == {i: {NAME: SYNONYM} for i in ids}
    assert hist == {NAME: {NAME: 0, SYNONYM: 5, OTHER: 0}}

    h5 = tmp_path / "cams.h5"
    with CamWriter(h5) as w:
        for i in ids:
            w.add(i, np.ones((1, SIZE, SIZE + 8), np.float32), np.array([0]))
    from_cams, _ = select_prompts(ds, ids, h5, ColourEncoder(TEXT), cands, progress=False)
    assert from_cams == {i: {NAME: NAME} for i in ids}
