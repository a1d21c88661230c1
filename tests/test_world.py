"""The demo world: determinism, VOC conventions, and the caption design POLE relies on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pole_core.demo.world import (
    DEFAULT_NAME_RATE,
    DEFAULT_POLYSEMY,
    PROMPT_TEMPLATES,
    WORLD_CLASSES,
    WORLD_PROMPTS,
    WORLD_SYNONYMS,
    build_vocab,
    generate_world,
    make_caption,
    make_scene,
    make_spec,
    tokenize_words,
)
from pole_core.io.png import read_mask

TINY = {"n_train": 12, "n_val": 4, "n_clip": 20, "progress": False}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    generate_world(root, seed=0, **TINY)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_is_byte_identical_and_other_seed_differs(world, tmp_path):
    again = tmp_path / "again"
    summary = generate_world(again, seed=0, **TINY)
    a, b = _files(world), _files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []
    assert summary == generate_world(tmp_path / "third", seed=0, **TINY)  # no paths or timings

    other = tmp_path / "other"
    generate_world(other, seed=1, **TINY)
    c = _files(other)
    assert c["JPEGImages/train_000000.jpg"] != a["JPEGImages/train_000000.jpg"]
    assert c["clip_corpus/images.npy"] != a["clip_corpus/images.npy"]


def test_layout_and_split_files(world):
    train = (world / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (world / "ImageSets/Segmentation/val.txt").read_text().split()
    assert train == [f"train_{i:06d}" for i in range(12)]
    assert val == [f"val_{i:06d}" for i in range(4)]
    for img_id in train + val:
        assert (world / "JPEGImages" / f"{img_id}.jpg").is_file()
        assert (world / "SegmentationClass" / f"{img_id}.png").is_file()
    assert not list(world.rglob(".*.tmp.*"))  # atomic writes leave no temporaries


def test_masks_follow_voc_conventions(world):
    ids = (world / "ImageSets/Segmentation/train.txt").read_text().split()
    allowed = set(range(len(WORLD_CLASSES) + 1)) | {255}
    for img_id in ids:
        path = world / "SegmentationClass" / f"{img_id}.png"
        with Image.open(path) as im:
            assert im.mode == "P"
            assert im.size == (64, 64)
        mask = read_mask(path)
        assert set(np.unique(mask).tolist()) <= allowed
        assert (mask == 255).any(), "objects are outlined by an ignore band"
        # Two different labels never touch directly: the 255 band separates them.
        for a, b in ((mask[:, :-1], mask[:, 1:]), (mask[:-1, :], mask[1:, :])):
            touching = (a != b) & (a != 255) & (b != 255)
            assert not touching.any(), img_id


def test_labels_match_masks_with_min_pixels(world):
    cls = np.load(world / "cls_labels.npy", allow_pickle=True).item()
    ids = (world / "ImageSets/Segmentation/train.txt").read_text().split()
    ids += (world / "ImageSets/Segmentation/val.txt").read_text().split()
    assert sorted(cls) == sorted(ids)
    for img_id in ids:
        lab = cls[img_id]
        assert lab.dtype == np.float32 and lab.shape == (len(WORLD_CLASSES),)
        counts = np.bincount(
            read_mask(world / "SegmentationClass" / f"{img_id}.png").ravel(), minlength=256
        )
        counts = counts[1 : len(WORLD_CLASSES) + 1]
        np.testing.assert_array_equal(lab, (counts >= 20).astype(np.float32))
        assert not ((counts > 0) & (counts < 20)).any(), "small fragments are ignored, not labelled"
        assert lab.sum() >= 1


def test_classes_json(world):
    doc = json.loads((world / "classes.json").read_text())
    assert [c["name"] for c in doc["classes"]] == list(WORLD_CLASSES)
    prompts = {c["name"]: c["prompt"] for c in doc["classes"]}
    assert prompts["tvmonitor"] == "tv monitor" and prompts["pottedplant"] == "potted plant"
    for c in doc["classes"]:
        assert c["synonyms"] == list(WORLD_SYNONYMS[c["name"]])
        assert len(c["synonyms"]) == 3 and all(" " not in s for s in c["synonyms"])
    assert doc["bg_words"] == ["sky", "water", "road", "room"]
    assert [b["name"] for b in doc["backgrounds"]] == doc["bg_words"]
    design = doc["design"]
    assert design["name_rate"] == DEFAULT_NAME_RATE
    assert design["polysemy"]["boat"] == {"background": "water", "rate": 0.4}
    assert design["roles"]["tvmonitor"] == "rare" and design["roles"]["bird"] == "control"


def test_clip_corpus(world):
    images = np.load(world / "clip_corpus/images.npy")
    assert images.shape == (20, 64, 64, 3) and images.dtype == np.uint8
    captions = (world / "clip_corpus/captions.txt").read_text().splitlines()
    vocab = (world / "clip_corpus/vocab.txt").read_text().splitlines()
    assert len(captions) == 20
    assert vocab == sorted(set(vocab))
    for cap in captions:
        assert cap == cap.lower() and cap.endswith(" .")
        assert set(cap.split()) <= set(vocab), cap
    for t in PROMPT_TEMPLATES:
        assert set(tokenize_words(t.format("x"))) - {"x"} <= set(vocab)
    for c in WORLD_CLASSES:
        assert set(WORLD_PROMPTS[c].split()) | set(WORLD_SYNONYMS[c]) <= set(vocab)
    assert {"sky", "water", "road", "room", "tv", "monitor", "potted", "plant", "."} <= set(vocab)


def test_corpus_images_are_not_train_images(world):
    images = np.load(world / "clip_corpus/images.npy")
    train0 = np.asarray(Image.open(world / "JPEGImages/train_000000.jpg"))
    assert min(np.abs(im.astype(int) - train0).mean() for im in images) > 5


def test_every_possible_caption_word_is_in_vocab():
    vocab = set(build_vocab())
    rng = np.random.default_rng(0)
    spec = make_spec(polysemy={"cat": ("room", 0.5), "tvmonitor": 0.5})
    for _ in range(400):
        present = list(rng.choice(WORLD_CLASSES, size=int(rng.integers(1, 4)), replace=False))
        bg = ["sky", "water", "road", "room"][int(rng.integers(4))]
        assert set(make_caption(present, bg, rng, spec=spec, bg_rate=1.0).split()) <= vocab


@pytest.mark.parametrize("cls", WORLD_CLASSES)
def test_name_rate_per_class(cls):
    rng = np.random.default_rng(1)
    n = 3000
    prompt = WORLD_PROMPTS[cls]
    hits = 0
    for _ in range(n):
        cap = make_caption([cls], None, rng)
        takers = [WORLD_PROMPTS[o] for o, (t, _) in DEFAULT_POLYSEMY.items() if t == cls]
        assert any(w in cap for w in (prompt, *WORLD_SYNONYMS[cls], *takers))
        hits += f" {prompt} " in cap
    p = DEFAULT_NAME_RATE[cls]
    for target, rate in DEFAULT_POLYSEMY.values():  # another class's name may take over
        if target == cls:
            p = p * (1 - rate)
    assert abs(hits / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.005


def test_polysemous_names_replace_their_background():
    rng = np.random.default_rng(2)
    n = 3000
    for cls, (bg, rate) in DEFAULT_POLYSEMY.items():
        if bg in WORLD_CLASSES:
            continue
        caps = [make_caption(["bird"], bg, rng, bg_rate=1.0) for _ in range(n)]
        frac = np.mean([c.endswith(f" {WORLD_PROMPTS[cls]} .") for c in caps])
        assert abs(frac - rate) < 0.04, (cls, frac)
    # Backgrounds without a polysemous class always use their own word.
    caps = [make_caption(["bird"], "road", rng, bg_rate=1.0) for _ in range(200)]
    assert all(c.endswith(" on the road .") for c in caps)


def test_polysemous_name_also_names_another_class():
    rng = np.random.default_rng(4)
    n = 3000
    cls, (target, rate) = "cat", DEFAULT_POLYSEMY["cat"]
    assert target == "car"
    caps = [make_caption(["car"], None, rng) for _ in range(n)]
    frac = np.mean([f" {WORLD_PROMPTS[cls]} " in c for c in caps])
    assert abs(frac - rate) < 0.04
    with pytest.raises(ValueError, match="other class"):
        make_spec(polysemy={"cat": ("cat", 0.2)})


def test_background_mentioned_about_half_the_time():
    rng = np.random.default_rng(3)
    caps = [make_caption(["car"], "road", rng) for _ in range(2000)]
    assert abs(np.mean([c.endswith(" on the road .") for c in caps]) - 0.5) < 0.05


def test_make_spec_merges_and_validates():
    spec = make_spec(name_rate={"boat": 0.5}, polysemy={"boat": 0.0, "cat": 0.3, "bird": 0.2})
    assert spec.name_rate["boat"] == 0.5 and spec.name_rate["bird"] == 0.4
    assert "boat" not in spec.polysemy and spec.polysemy["aeroplane"] == ("sky", 0.4)
    assert spec.polysemy["cat"] == ("car", 0.3)  # a bare rate keeps the default target
    assert spec.polysemy["bird"] == ("sky", 0.2)  # no default: the first co-occurring background
    small = make_spec(n_classes=3)
    assert small.classes == WORLD_CLASSES[:3]
    assert "room" not in small.backgrounds
    with pytest.raises(ValueError, match="unknown class"):
        make_spec(name_rate={"dog": 0.1})
    with pytest.raises(ValueError, match="n_classes"):
        make_spec(n_classes=9)
    with pytest.raises(ValueError, match="rate"):
        make_spec(polysemy={"boat": ("water", 1.5)})


def test_cooccurrence_sets_the_classes_drawn_on_a_background():
    spec = make_spec(cooccurrence={"road": ["car", "aeroplane"]})
    assert spec.bg_classes("road") == ("car", "aeroplane")
    assert spec.bg_classes("sky") == ("aeroplane", "bird")  # unset backgrounds keep the design
    on_road = {"aeroplane": 0, "cat": 0}
    for i in range(300):
        scene = make_scene(np.random.default_rng(i), spec)
        if scene.background == "road":
            for c in on_road:
                on_road[c] += c in scene.present
    # cat leaves the road's list: it appears there only as an any-class object (10 %)
    assert on_road["aeroplane"] > 3 * on_road["cat"] > 0
    with pytest.raises(ValueError, match="unknown background"):
        make_spec(cooccurrence={"moon": ["car"]})
    with pytest.raises(ValueError, match="unknown classes"):
        make_spec(cooccurrence={"road": ["dog"]})


def test_scene_subset_of_classes_and_small_images():
    spec = make_spec(n_classes=3, image_size=24, min_pixels=5)
    for i in range(30):
        scene = make_scene(np.random.default_rng(i), spec)
        assert scene.image.shape == (24, 24, 3) and scene.mask.shape == (24, 24)
        assert scene.mask[scene.mask != 255].max() <= 3
        assert scene.labels.shape == (3,) and scene.labels.sum() >= 1
        assert scene.present == [c for c, v in zip(spec.classes, scene.labels, strict=True) if v]


def test_impossible_min_pixels_is_a_clear_error():
    spec = make_spec(image_size=16, min_pixels=10_000)
    with pytest.raises(ValueError, match="min_pixels"):
        make_scene(np.random.default_rng(0), spec)


def test_corpus_has_object_only_and_empty_scenes():
    from pole_core.demo.world import BACKGROUNDS, PLAIN_FILL, make_corpus_pair

    rng = np.random.default_rng(5)
    spec = make_spec(image_size=64)
    n_plain = n_empty = 0
    for _ in range(300):
        img, cap = make_corpus_pair(rng, spec)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        words = set(cap.split())
        corner = img[:4, :4].reshape(-1, 3).mean(0)
        if not words & set(BACKGROUNDS) and np.abs(corner - np.asarray(PLAIN_FILL)).max() < 35:
            n_plain += 1  # objects on a plain backdrop, caption names no place
        if cap.startswith(
            ("a photo of the", "a picture of the", "an image of the", "there is the")
        ):
            n_empty += 1
            assert len(words & set(WORLD_SYNONYMS["boat"] + WORLD_SYNONYMS["cat"])) == 0
    assert 0.2 < n_plain / 300 < 0.4
    assert 0.08 < n_empty / 300 < 0.22


def test_the_plane_is_not_a_sliver_of_its_images():
    """A plane drawn too thin (4.5 % of its images) leaves CLIP reading the sky as "aeroplane"."""
    spec = make_spec()
    rng = np.random.default_rng(0)
    share = {c: [] for c in spec.classes}
    for _ in range(400):
        scene = make_scene(rng, spec)
        for k, c in enumerate(spec.classes):
            if scene.labels[k]:
                share[c].append(float((scene.mask == k + 1).mean()))
    mean = {c: float(np.mean(v)) for c, v in share.items()}
    assert mean["aeroplane"] >= 0.06, mean
    assert min(mean.values()) >= 0.04, mean
