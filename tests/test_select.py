"""POLE prompt selection on a constructed world where the right token is known."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pole_core.clip.bundle import clip_resize_crop
from pole_core.io.cam_store import CamWriter
from pole_core.prompts.from_file import prompt_token, read_prompt_file, selections_from_file
from pole_core.prompts.select import select_prompts, selection_stats

RED, GREEN = (255, 0, 0), (0, 255, 0)


class ColourBundle:
    """Fake CLIP: an image's embedding is its mean RGB; prompts map to fixed colour vectors."""

    logit_scale = 100.0
    device = torch.device("cpu")
    input_size = 8

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


# --------------------------------------------------------------------------- CLIP's preprocess


def _stripes(h: int, w: int) -> np.ndarray:
    """Green outer quarters, a red middle half: what survives CLIP's centre crop is red."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 4] = GREEN
    img[:, w // 4 : 3 * w // 4] = RED
    img[:, 3 * w // 4 :] = GREEN
    return img


def test_clip_preprocess_keeps_aspect_ratio_squash_does_not() -> None:
    x = torch.from_numpy(_stripes(16, 32)).permute(2, 0, 1)[None].float() / 255.0  # 2:1
    crop = clip_resize_crop(x, 8)  # short side 16 -> 8 (8x16), then the centre 8x8
    assert crop.shape == (1, 3, 8, 8)
    assert torch.allclose(crop[0, :, :, 1:-1], torch.tensor([1.0, 0, 0]).view(3, 1, 1), atol=0.02)
    squash = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)
    assert squash[0, 1].mean() > 0.4  # squashed whole: the green sides stay in
    assert not torch.allclose(crop, squash, atol=0.1)


class StripeDataset:
    class_names = ["redthing"]
    items = {"wide": _stripes(8, 16)}

    def image(self, image_id: str) -> np.ndarray:
        return self.items[image_id]


def test_selection_preprocess_clip_vs_squash(tmp_path) -> None:
    """A whole-image CAM: CLIP's centre crop sees red (crimson), the squashed image red+green."""
    ds = StripeDataset()
    h5 = tmp_path / "cams.h5"
    with CamWriter(h5) as w:
        w.add("wide", np.ones((1, 8, 16), np.float32), np.array([0]))
    cands = {"redthing": ["redthing", "crimson", "orange"]}
    picks = {
        mode: select_prompts(
            ds, ["wide"], h5, ColourBundle(TEXT), cands, preprocess=mode, progress=False
        )[0]
        for mode in ("clip", "squash")
    }
    assert picks == {
        "clip": {"wide": {"redthing": "crimson"}},
        "squash": {"wide": {"redthing": "orange"}},
    }
    with pytest.raises(ValueError, match="preprocess"):
        select_prompts(
            ds, ["wide"], h5, ColourBundle(TEXT), cands, preprocess="crop", progress=False
        )


# --------------------------------------------------------------------------- selections from a file

BIKES = ["bicycle", "motorbike", "person"]
BIKE_CANDIDATES = {
    "bicycle": ["bicycle", "bike", "cycle", "pedal bike"],
    "motorbike": ["motorbike", "motorcycle", "bike", "scooter"],
    "person": ["player", "person", "individual", "human", "people"],
}


class LabelDataset:
    """Image-level labels only, VOC ids."""

    class_names = BIKES

    def __init__(self, labels: dict[str, list[str]]):
        self._labels = labels

    def labels(self, image_id: str) -> np.ndarray:
        return np.array([float(c in self._labels[image_id]) for c in BIKES], np.float32)


LABELS = {
    "2007_000001": ["bicycle", "person"],
    "2007_000002": ["motorbike", "person"],
    "2007_000003": ["bicycle", "motorbike"],
    "2007_000004": ["bicycle", "motorbike"],
    "2007_000005": ["person"],
}
IDS = list(LABELS)


def _write_pole_pickle(path, doc: dict) -> None:
    """The released format: a protocol-2 pickle, ids without the underscore."""
    path.write_bytes(pickle.dumps({k.replace("_", ""): v for k, v in doc.items()}, protocol=2))


def _select(path, ids=IDS, template="A photo of {}."):
    return selections_from_file(
        path, LabelDataset(LABELS), ids, IDS, BIKE_CANDIDATES, template=template, split="train_aug"
    )


def test_file_round_trip_json_and_pole_pickle(tmp_path) -> None:
    selected = {
        "2007_000001": {"bicycle": "cycle", "person": "player"},
        "2007_000002": {"motorbike": "motorcycle", "person": "human"},
        "2007_000003": {"bicycle": "pedal bike", "motorbike": "scooter"},
        "2007_000004": {"bicycle": "bicycle", "motorbike": "motorbike"},
        "2007_000005": {"person": "individual"},
    }
    doc = {i: [f"a photo of {t}." for t in c.values()] for i, c in selected.items()}
    as_json = tmp_path / "sel.json"
    as_json.write_text(json.dumps(doc))
    as_pickle = tmp_path / "GPT_v2_4.json"  # the released file's name; its content is a pickle
    _write_pole_pickle(as_pickle, doc)
    assert read_prompt_file(as_pickle)["2007000001"] == ["a photo of cycle.", "a photo of player."]
    for path in (as_json, as_pickle):
        got, hist = _select(path)
        assert got == selected
        assert list(got["2007_000001"]) == ["bicycle", "person"]  # class order, as select_prompts
        assert hist == {
            "bicycle": {"bicycle": 1, "bike": 0, "cycle": 1, "pedal bike": 1},
            "motorbike": {"motorbike": 1, "motorcycle": 1, "bike": 0, "scooter": 1},
            "person": {"player": 1, "person": 0, "individual": 1, "human": 1, "people": 0},
        }
    # case, spacing and the trailing period do not matter; the tokens come back as in the bank
    loose = {i: [p.upper().replace(".", "  ") for p in v] for i, v in doc.items()}
    as_json.write_text(json.dumps(loose))
    assert _select(as_json)[0] == selected
    assert prompt_token("A Photo of  Pedal Bike .") == "pedal bike"
    assert prompt_token("a photo of plane.", template="a photo of a {}.") == "plane"
    # only the requested ids are written (data.max_images)
    assert list(_select(as_json, ids=IDS[:2])[0]) == IDS[:2]


def test_file_ambiguous_token_resolved_by_label(tmp_path) -> None:
    doc = {
        "2007_000001": ["a photo of bike.", "a photo of people."],  # bicycle by the label
        "2007_000002": ["a photo of bike.", "a photo of people."],  # motorbike by the label
        # both labelled: "bike" takes the class "motorcycle" leaves free
        "2007_000003": ["a photo of bike.", "a photo of motorcycle."],
        "2007_000004": ["a photo of cycle.", "a photo of bike."],
        "2007_000005": ["a photo of person."],
    }
    path = tmp_path / "sel.json"
    path.write_text(json.dumps(doc))
    got, hist = _select(path)
    assert got["2007_000001"] == {"bicycle": "bike", "person": "people"}
    assert got["2007_000002"] == {"motorbike": "bike", "person": "people"}
    assert got["2007_000003"] == {"bicycle": "bike", "motorbike": "motorcycle"}
    assert got["2007_000004"] == {"bicycle": "cycle", "motorbike": "bike"}
    assert got["2007_000005"] == {"person": "person"}
    assert hist["bicycle"]["bike"] == 2 and hist["motorbike"]["bike"] == 2


GOOD = {i: [f"a photo of {c}." for c in LABELS[i]] for i in IDS}


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        # a prompt naming no known candidate
        (
            {"2007_000005": ["a photo of zebra."]},
            ["'2007000005'", "'a photo of zebra.'", "no candidate"],
        ),
        # an image id not in the split list
        (
            {"2099_000001": ["a photo of person."]},
            ["'2099000001'", "'a photo of person.'", "train_aug"],
        ),
        # a class not in the image's label
        (
            {"2007_000005": ["a photo of person.", "a photo of scooter."]},
            ["'2007000005'", "'a photo of scooter.'", "not in the image's label"],
        ),
        # two prompts for one class, a labelled class without a prompt
        (
            {"2007_000005": ["a photo of person.", "a photo of human."]},
            ["'2007000005'", "'a photo of human.'", "both name person"],
        ),
        (
            {"2007_000001": ["a photo of bicycle."]},
            ["'2007000001'", "no prompt for labelled class person"],
        ),
    ],
)
def test_file_bad_entries_are_one_line_errors(tmp_path, change, needles) -> None:
    path = tmp_path / "GPT_v2_4.json"
    _write_pole_pickle(path, {**GOOD, **change})
    with pytest.raises(ValueError) as err:
        _select(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_file_missing_image_unreadable_and_unsafe(tmp_path) -> None:
    path = tmp_path / "sel.json"
    path.write_text(json.dumps({i: GOOD[i] for i in IDS[1:]}))
    with pytest.raises(ValueError, match=f"^{path}: no prompts for image '2007_000001'"):
        _select(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"^{path}: not a prompt file"):
        _select(path)
    path.write_text(json.dumps(["a photo of bike."]))
    with pytest.raises(ValueError, match=f"^{path}: not a prompt file"):
        _select(path)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    path.write_bytes(pickle.dumps({"2007000001": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=f"^{path}: not a prompt file.*not allowed"):
        _select(path)
    with pytest.raises(ValueError, match="prompt file not found"):
        _select(tmp_path / "nope.json")


def test_waiting_pairs_stay_below_one_batch_whatever_the_image_sizes() -> None:
    """VOC has hundreds of image sizes: pairs wait as CLIP-sized inputs in one batch."""
    from pole_core.prompts.select import _Selector

    bundle = ColourBundle({})
    text = {0: F.normalize(torch.eye(3)[:2], dim=-1)}
    selector = _Selector(bundle, text, {0: ["red", "green"]}, batch_size=4)
    rng = np.random.default_rng(0)
    for i in range(23):
        h, w = 20 + i, 40 - i  # every pair a new size
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        selector.add(f"im{i}", 0, image, np.ones((h, w), np.float32))
        assert len(selector.pending) < 4
        assert all(
            x.shape == (3, bundle.input_size, bundle.input_size) for *_, x in selector.pending
        )
    selector.flush()
    assert len(selector.choices) == 23
