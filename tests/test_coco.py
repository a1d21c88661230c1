"""CocoDataset: COCO 2014 annotations read as VOCDataset reads VOC (the demo world as COCO)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from coco_fixture import WORLD_TO_COCO, make_coco_from_world
from PIL import Image
from pycocotools import mask as mask_util

from pole_core.data import coco
from pole_core.data.coco import (
    COCO_BG_WORDS,
    COCO_CATEGORIES,
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCO_LABEL_OF_CATEGORY,
    COCO_PROMPTS,
    COCO_SYNONYMS,
    CocoDataset,
)
from pole_core.data.voc import DataError, VOCDataset
from pole_core.demo.world import WORLD_CLASSES, generate_world
from pole_core.io.png import read_mask

TRAIN_ANN = "annotations/instances_train2014.json"
# pycocotools under NumPy 2, in the fixture's own decoding (the reader silences it itself)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world") / "w"
    generate_world(root, n_train=12, n_val=4, n_clip=8, image_size=32, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def coco_world(world, tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """The shared COCO copy of the world: tests must not modify it."""
    root = tmp_path_factory.mktemp("coco") / "coco"
    return root, make_coco_from_world(world, root)


@pytest.fixture
def fresh(world, tmp_path) -> tuple[Path, dict[str, list[str]]]:
    """A COCO copy of the world of the test's own, to break."""
    root = tmp_path / "coco"
    return root, make_coco_from_world(world, root)


@pytest.fixture(autouse=True)
def _own_index_cache(monkeypatch):
    """Each test starts with no parsed annotation file (the cache is per process)."""
    monkeypatch.setattr(coco, "_INDEX_CACHE", {})


def _world_pairs(world: Path, ids: dict[str, list[str]]):
    for world_split, split in (("train", "train2014"), ("val", "val2014")):
        world_ids = VOCDataset(world).ids(world_split)
        assert len(world_ids) == len(ids[split])
        yield from zip(world_ids, ids[split], strict=True)


def _to_coco_values(world_mask: np.ndarray) -> np.ndarray:
    """The world's mask with its class values 1..8 as COCO's 1..80 (0 and 255 kept)."""
    lut = np.arange(256, dtype=np.uint8)
    for k, name in enumerate(WORLD_CLASSES, 1):
        lut[k] = COCO_LABEL_OF_CATEGORY[WORLD_TO_COCO[name]]
    return lut[world_mask]


def _crowd_regions(root: Path) -> dict[str, np.ndarray]:
    doc = json.loads((root / TRAIN_ANN).read_text())
    names = {img["id"]: Path(img["file_name"]).stem for img in doc["images"]}
    out = {}
    for ann in doc["annotations"]:
        if ann["iscrowd"]:
            seg = ann["segmentation"]
            rle = mask_util.frPyObjects(seg, *seg["size"])
            out[names[ann["image_id"]]] = mask_util.decode(rle).astype(bool)
    return out


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- constants ---------------------------------------------------------------------------
def test_coco_constants():
    assert len(COCO_CLASSES) == 80 and len(set(COCO_CLASSES)) == 80
    assert list(COCO_CATEGORY_IDS) == sorted(set(COCO_CATEGORY_IDS))
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    missing = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids COCO 2014 leaves unused
    assert set(COCO_CATEGORY_IDS) == set(range(1, 91)) - missing
    cats = dict(COCO_CATEGORIES)
    assert [cats[WORLD_TO_COCO[c]] for c in WORLD_CLASSES] == [
        "airplane",
        "bird",
        "boat",
        "car",
        "cat",
        "bottle",
        "tv",
        "potted plant",
    ]
    assert COCO_LABEL_OF_CATEGORY[1] == 1 and COCO_LABEL_OF_CATEGORY[90] == 80
    assert COCO_LABEL_OF_CATEGORY[13] == 12  # after the gap at 12
    assert COCO_PROMPTS["person"] == "player"  # as CLIMS prompts COCO's person
    assert COCO_PROMPTS["traffic light"] == "traffic light"
    assert COCO_PROMPTS["hair drier"] == "hair drier"
    assert set(COCO_PROMPTS) == set(COCO_SYNONYMS) == set(COCO_CLASSES)
    for name, syn in COCO_SYNONYMS.items():
        assert len(syn) == len(set(syn)) == (4 if name == "person" else 3), name
        assert COCO_PROMPTS[name] not in syn and all(s.strip() == s and s for s in syn)
    assert COCO_SYNONYMS["person"][0] == "person"
    assert COCO_SYNONYMS["tv"] == ["television", "monitor", "screen"]
    assert len(COCO_BG_WORDS) == len(set(COCO_BG_WORDS)) == 88  # CLIMS's COCO list
    assert COCO_BG_WORDS[:3] == ("street sign", "mountain", "video game")
    assert COCO_BG_WORDS[-1] == "park"


def test_bank_and_interface(coco_world, tmp_path):
    root, ids = coco_world
    ds = CocoDataset(root, cache_dir=tmp_path / "gt")
    assert ds.root == root and ds.n_classes == 80 and ds.class_names == list(COCO_CLASSES)
    assert ds.bank.names == list(COCO_CLASSES)
    assert ds.bank.prompts[0] == "player" and ds.bank.prompts[62] == "tv"
    assert ds.bank.synonyms["potted plant"] == COCO_SYNONYMS["potted plant"]
    assert ds.bank.bg_words == list(COCO_BG_WORDS)
    assert ds.ids("train2014") == ids["train2014"] == sorted(ids["train2014"])
    assert ds.ids("val2014") == ids["val2014"]
    assert ids["train2014"][0] == "COCO_train2014_000000000001"
    img_id = ids["val2014"][1]
    assert ds.image_path(img_id) == root / "val2014" / f"{img_id}.jpg"
    assert ds.mask_path(img_id) == tmp_path / "gt" / "SegmentationClass" / f"{img_id}.png"
    assert ds.has_mask(img_id)
    assert CocoDataset(root).mask_path(img_id) is None
    with pytest.raises(DataError, match="dataset root not found"):
        CocoDataset(tmp_path / "nope")


def test_fixture_uses_every_segmentation_format(coco_world):
    root, _ = coco_world
    anns = json.loads((root / TRAIN_ANN).read_text())["annotations"]
    anns += json.loads((root / "annotations/instances_val2014.json").read_text())["annotations"]
    kinds = {"polygon": 0, "rle": 0, "uncompressed": 0}
    for a in anns:
        seg = a["segmentation"]
        if a["iscrowd"]:
            assert isinstance(seg["counts"], list)
        elif isinstance(seg, list):
            kinds["polygon"] += 1
        else:
            kinds["uncompressed" if isinstance(seg["counts"], list) else "rle"] += 1
    assert sum(a["iscrowd"] for a in anns) == 1
    assert min(kinds.values()) >= 5, kinds


# -- pixels and labels -------------------------------------------------------------------
def test_masks_are_the_worlds_but_bands_and_crowd(world, coco_world):
    """Pixel for pixel the world's masks, except: the world's 255 (its 1-px object boundary
    bands and too-small fragments: in no annotation) are background, and so is the crowd
    region (crowd annotations are not drawn). No 255 anywhere."""
    root, ids = coco_world
    ds, wds = CocoDataset(root), VOCDataset(world)
    crowd = _crowd_regions(root)
    assert len(crowd) == 1
    n_band = n_crowd = 0
    for wid, cid in _world_pairs(world, ids):
        got, wmask = ds.mask(cid), wds.mask(wid)
        assert got.dtype == np.uint8 and got.shape == wmask.shape == ds.image_size(cid)
        assert not (got == 255).any()
        in_crowd = crowd.get(cid, np.zeros(wmask.shape, dtype=bool))
        expected = _to_coco_values(wmask)
        expected[(wmask == 255) | in_crowd] = 0
        np.testing.assert_array_equal(got, expected)
        # which pixels differ from the world, and why: exactly the bands and the crowd region
        differ = got != _to_coco_values(wmask)
        np.testing.assert_array_equal(differ, (wmask == 255) | in_crowd)
        assert not (in_crowd & (wmask == 255)).any()  # the crowd region is one clean region
        n_band += int((wmask == 255).sum())
        n_crowd += int(in_crowd.sum())
    assert n_band > 0 and n_crowd > 0


def test_labels_are_the_worlds(world, coco_world):
    root, ids = coco_world
    ds, wds = CocoDataset(root), VOCDataset(world)
    for wid, cid in _world_pairs(world, ids):
        expected = np.zeros(80, np.float32)
        for k in np.flatnonzero(wds.labels(wid)):
            expected[COCO_LABEL_OF_CATEGORY[WORLD_TO_COCO[WORLD_CLASSES[k]]] - 1] = 1
        lab = ds.labels(cid)
        assert lab.dtype == np.float32 and lab.shape == (80,)
        np.testing.assert_array_equal(lab, expected)
    # the crowd region's class is a label even where the crowd region was its only region
    (cid,) = _crowd_regions(root)
    present = np.bincount(ds.mask(cid).ravel(), minlength=81)[1:] > 0
    assert (ds.labels(cid) >= present).all()


def test_images_are_the_worlds(world, coco_world):
    root, ids = coco_world
    ds, wds = CocoDataset(root), VOCDataset(world)
    for wid, cid in list(_world_pairs(world, ids))[:4]:
        img = ds.image(cid)
        assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
        np.testing.assert_array_equal(img, wds.image(wid))
        assert ds.image_size(cid) == (32, 32)


def test_overlaps_later_wins_crowd_not_drawn(tmp_path):
    """Instances are drawn in annotation order (later wins); crowd regions stay background
    unless a non-crowd instance covers them; their category still counts as a label."""
    img_id = "COCO_train2014_000000000001"

    def write(order):
        a = {"id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [[0, 0, 5, 0, 5, 4, 0, 4]]}
        b = {"id": 2, "category_id": 3, "iscrowd": 0, "segmentation": [[3, 2, 8, 2, 8, 6, 3, 6]]}
        crowd = np.zeros((6, 8), np.uint8)
        crowd[:, 0] = crowd[5, :3] = 1
        c = {"id": 3, "category_id": 90, "iscrowd": 1}
        c["segmentation"] = {"size": [6, 8], "counts": _runs(crowd)}
        by = {"a": a, "b": b, "c": c}
        anns = [dict(by[k], image_id=7) for k in order]
        doc = {"images": [{"id": 7, "file_name": f"{img_id}.jpg", "height": 6, "width": 8}]}
        doc["annotations"] = anns
        path = tmp_path / order / TRAIN_ANN
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(doc))
        return CocoDataset(tmp_path / order)

    ds = write("abc")
    m = ds.mask(img_id)
    assert m[0, 0] == 1 and m[3, 4] == 3 and m[1, 1] == 1  # b (later) over a
    assert m[5, 0] == m[5, 2] == 0 and m[5, 3] == 3  # crowd only: background
    assert (m[:4, 0] == 1).all()  # a covers the crowd column
    assert np.flatnonzero(ds.labels(img_id)).tolist() == [0, 2, 79]  # crowd's toothbrush too
    m2 = write("cba").mask(img_id)
    assert m2[3, 4] == 1 and m2[2, 3] == 1  # a now later: it wins the overlap
    np.testing.assert_array_equal(m != m2, (m == 3) & (m2 == 1))


def _runs(region: np.ndarray) -> list[int]:
    flat = region.ravel(order="F")
    out, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            out.append(n)
            cur, n = v, 1
    return [*out, n]


def test_grayscale_image_becomes_rgb(fresh):
    root, ids = fresh
    path = root / "train2014" / f"{ids['train2014'][0]}.jpg"
    Image.open(path).convert("L").save(path, format="JPEG")
    img = CocoDataset(root).image(ids["train2014"][0])
    assert img.shape == (32, 32, 3) and (img[..., 0] == img[..., 2]).all()


def test_images_without_annotation_are_not_ids(fresh):
    root, ids = fresh
    path = root / TRAIN_ANN
    doc = json.loads(path.read_text())
    doc["images"].append({"id": 999, "file_name": "COCO_train2014_000000000999.jpg"})
    doc["images"][-1].update(height=32, width=32)
    path.write_text(json.dumps(doc))
    ds = CocoDataset(root)
    assert ds.ids("train2014") == ids["train2014"]
    with pytest.raises(DataError, match="has no annotation"):
        ds.labels("COCO_train2014_000000000999")
    assert not ds.decode_mask("COCO_train2014_000000000999").any()


# -- the mask cache and the one parse ----------------------------------------------------
def test_masks_are_cached_as_pngs(fresh, tmp_path, monkeypatch):
    root, ids = fresh
    cache = tmp_path / "gt"
    ds = CocoDataset(root, cache_dir=cache)
    some = ids["train2014"][:5] + ids["val2014"][:2]
    first = {i: ds.mask(i) for i in some}
    for i, m in first.items():
        png = cache / "SegmentationClass" / f"{i}.png"
        assert ds.mask_path(i) == png and png.is_file()
        with Image.open(png) as im:
            assert im.mode == "P"
        np.testing.assert_array_equal(read_mask(png), m)
    assert sorted(p.name for p in (cache / "SegmentationClass").iterdir()) == sorted(
        f"{i}.png" for i in some
    )  # no temporary files left
    # Second read: from the PNG, with no annotation file and no decoder.
    shutil.rmtree(root / "annotations")
    monkeypatch.setattr(coco, "_INDEX_CACHE", {})

    def no_decode(*a, **k):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(coco, "_decode", no_decode)
    monkeypatch.setattr(coco, "_parse_annotations", no_decode)
    again = CocoDataset(root, cache_dir=cache)
    for i, m in first.items():
        np.testing.assert_array_equal(again.mask(i), m)
    with pytest.raises(DataError, match="annotation file not found"):
        again.mask(ids["train2014"][6])  # not cached: needs the annotations


def test_bad_cached_png(fresh, tmp_path):
    root, ids = fresh
    cache = tmp_path / "gt"
    ds = CocoDataset(root, cache_dir=cache)
    img_id = ids["train2014"][0]
    ds.mask(img_id)
    ds.mask_path(img_id).write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=rf"{img_id}\.png") as err:
        ds.mask(img_id)
    _one_line(err)


def test_annotation_file_is_parsed_once(coco_world, monkeypatch):
    root, ids = coco_world
    calls: list[Path] = []
    real = coco._parse_annotations

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(coco, "_parse_annotations", counting)
    for _ in range(2):  # two readers in one process share the parse
        ds = CocoDataset(root)
        for split in ("train2014", "val2014"):
            for i in ds.ids(split):
                ds.mask(i)
                ds.labels(i)
                ds.image_path(i)
    assert sorted(p.name for p in calls) == ["instances_train2014.json", "instances_val2014.json"]


def test_a_changed_annotation_file_is_parsed_again(fresh, monkeypatch):
    root, ids = fresh
    ds = CocoDataset(root)
    img_id = ids["train2014"][0]
    before = ds.labels(img_id)
    path = root / TRAIN_ANN
    doc = json.loads(path.read_text())
    for a in doc["annotations"]:
        if a["image_id"] == 1:
            a["category_id"] = 1
    path.write_text(json.dumps(doc) + " ")  # other size: another file
    after = ds.labels(img_id)
    assert after[0] == 1 and not np.array_equal(before, after)


# -- bad inputs: one line naming the file ------------------------------------------------
def test_missing_annotation_file(fresh):
    root, ids = fresh
    (root / TRAIN_ANN).unlink()
    ds = CocoDataset(root)
    for call in (lambda: ds.ids("train2014"), lambda: ds.labels(ids["train2014"][0])):
        with pytest.raises(
            DataError, match=r"instances_train2014\.json: annotation file not found"
        ) as err:
            call()
        _one_line(err)
    assert not ds.has_mask(ids["train2014"][0]) and ds.has_mask(ids["val2014"][0])
    with pytest.raises(DataError, match=r"instances_train_aug\.json: annotation file not found"):
        ds.ids("train_aug")


def test_unreadable_annotation_file(fresh):
    root, _ = fresh
    (root / TRAIN_ANN).write_text("{not json")
    with pytest.raises(DataError, match=r"instances_train2014\.json: not valid JSON") as err:
        CocoDataset(root).ids("train2014")
    _one_line(err)
    (root / TRAIN_ANN).write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match=r"instances_train2014\.json: not a COCO instances file"):
        CocoDataset(root).ids("train2014")


def test_unknown_category_id(fresh):
    root, _ = fresh
    path = root / TRAIN_ANN
    doc = json.loads(path.read_text())
    doc["annotations"][3]["category_id"] = 12  # unused by COCO 2014
    path.write_text(json.dumps(doc))
    ann_id = doc["annotations"][3]["id"]
    with pytest.raises(
        DataError,
        match=rf"instances_train2014\.json: annotation {ann_id} has unknown category id 12",
    ) as err:
        CocoDataset(root).ids("train2014")
    _one_line(err)


def test_annotation_of_unknown_image(fresh):
    root, _ = fresh
    path = root / TRAIN_ANN
    doc = json.loads(path.read_text())
    doc["annotations"][0]["image_id"] = 4242
    path.write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=r"instances_train2014\.json: annotation 1 refers to unknown image id 4242"
    ):
        CocoDataset(root).ids("train2014")


def test_listed_image_missing_on_disk(fresh):
    root, ids = fresh
    img_id = ids["train2014"][2]
    (root / "train2014" / f"{img_id}.jpg").unlink()
    ds = CocoDataset(root)
    assert img_id in ds.ids("train2014")  # listing does not read the images
    ds.mask(img_id), ds.labels(img_id)  # nor do the annotations
    for call in (ds.image, ds.image_size):
        with pytest.raises(
            DataError,
            match=rf"{img_id}\.jpg: image not found \(listed in .*instances_train2014\.json\)",
        ) as err:
            call(img_id)
        _one_line(err)


def test_unreadable_image_and_bad_ids(fresh):
    root, ids = fresh
    img_id = ids["val2014"][0]
    (root / "val2014" / f"{img_id}.jpg").write_text("not a JPEG")
    ds = CocoDataset(root)
    with pytest.raises(DataError, match=rf"{img_id}\.jpg: unreadable image"):
        ds.image(img_id)
    with pytest.raises(DataError, match="cannot tell the split of image id 'train_000001'"):
        ds.labels("train_000001")
    with pytest.raises(
        DataError, match=r"instances_val2014\.json: no image 'COCO_val2014_000000000077'"
    ):
        ds.mask("COCO_val2014_000000000077")


def test_undecodable_segmentation(fresh):
    root, ids = fresh
    path = root / TRAIN_ANN
    doc = json.loads(path.read_text())
    ann = next(a for a in doc["annotations"] if not a["iscrowd"])
    ann["segmentation"] = {"size": [5, 5], "counts": "zz"}
    path.write_text(json.dumps(doc))
    ds = CocoDataset(root)
    img_id = f"COCO_train2014_{ann['image_id']:012d}"
    with pytest.raises(
        DataError, match=rf"instances_train2014\.json: annotation {ann['id']}"
    ) as err:
        ds.mask(img_id)
    _one_line(err)
