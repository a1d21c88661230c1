"""Your own data (data.source: folder): images of any format, labels.csv, classes.yaml, no masks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from workflow_utils import snakemake

from pole_core.config import ConfigError, registry, validate_config
from pole_core.data.folder import FolderDataset
from pole_core.data.registry import DATASETS, open_dataset
from pole_core.data.voc import DataError, VOCDataset
from pole_core.io.png import read_mask


def make_folder(world_root: Path, out: Path) -> list[str]:
    """A folder dataset from a world in VOC layout: mixed image formats, no masks."""
    world = VOCDataset(world_root)
    ids = world.ids("train")
    (out / "images").mkdir(parents=True)
    for i, img_id in enumerate(ids):
        img = Image.fromarray(world.image(img_id))
        kind = i % 6
        if kind == 0:
            img.save(out / "images" / f"{img_id}.png")
        elif kind == 1:
            img.save(out / "images" / f"{img_id}.webp", lossless=True)
        elif kind == 2:
            img.convert("L").save(out / "images" / f"{img_id}.jpg")
        elif kind == 3:
            img.convert("CMYK").save(out / "images" / f"{img_id}.jpg")
        elif kind == 4:
            grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(grey).save(out / "images" / f"{img_id}.png")  # 16-bit grey
        else:
            img.save(out / "images" / f"{img_id}.jpeg")
    names = world.class_names
    rows = ["image,labels"]
    for img_id in ids:
        present = [names[k] for k in np.flatnonzero(world.labels(img_id))]
        rows.append(f"{img_id},{';'.join(present)}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    doc = json.loads((world_root / "classes.json").read_text())
    classes = [
        {"name": c["name"], "prompt": c.get("prompt", c["name"]), "synonyms": c.get("synonyms", [])}
        for c in doc["classes"]
    ]
    (out / "classes.yaml").write_text(
        yaml.safe_dump({"classes": classes, "bg_words": doc.get("bg_words", [])})
    )
    return ids


@pytest.fixture(scope="module")
def folder(smoke_run, tmp_path_factory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("folder") / "mydata"
    ids = make_folder(smoke_run / "results_smoke" / "data", out)
    return out, ids


def test_data_source_is_checked_against_the_registry():
    """A dataset entry is one registry key: the config check reads DATASETS, no schema enum."""
    assert registry("data.source") is DATASETS
    with pytest.raises(ConfigError, match=r"config: data.source = 'nope' is not one of 'world'"):
        validate_config({"data": {"source": "nope", "root": "x"}})


def test_folder_reader_converts_every_format(folder, smoke_run):
    root, ids = folder
    ds = open_dataset("folder", root)
    world = VOCDataset(smoke_run / "results_smoke" / "data")
    assert isinstance(ds, FolderDataset) and ds.class_names == world.class_names
    assert ds.ids("train") == ids == ds.ids("val")  # no splits/: every split is the CSV
    for i, img_id in enumerate(ids):
        img = ds.image(img_id)
        assert img.dtype == np.uint8 and img.shape == world.image(img_id).shape
        assert ds.image_size(img_id) == img.shape[:2]
        np.testing.assert_array_equal(ds.labels(img_id), world.labels(img_id))
        if i % 6 in (0, 1):  # lossless formats keep the pixels
            np.testing.assert_array_equal(img, world.image(img_id))
        if i % 6 == 4:  # 16-bit grey scaled to 8 bits
            grey = np.asarray(Image.fromarray(world.image(img_id)).convert("L"))
            np.testing.assert_array_equal(img[..., 0], grey)
        assert not ds.has_mask(img_id)
    assert ds.bank.bg_words and ds.bank.synonyms


def test_folder_without_masks_runs_to_pseudo_masks_and_export(folder, smoke_run, tmp_path):
    root, ids = folder
    clip = smoke_run / "results_smoke" / "clip" / "model.pt"
    work = tmp_path / "work"
    snakemake(
        work,
        "--config",
        f"data={{source: folder, root: {root}, train_split: train, eval_split: train, val_split: val}}",
        f"clip={{checkpoint: {clip}}}",
        "results_dir=results_folder",
    )
    r = work / "results_folder"
    for variant in ("baseline", "pole"):
        masks = sorted((r / "pseudo_masks" / variant).glob("*.png"))
        assert [p.stem for p in masks] == sorted(ids)
        assert read_mask(masks[0]).shape == FolderDataset(root).image_size(masks[0].stem)
    manifest = json.loads((r / "export" / "manifest.json").read_text())
    assert manifest["n_train"] == len(ids)
    assert sorted(p.stem for p in (r / "export" / "voc" / "JPEGImages").iterdir()) == sorted(ids)
    assert (r / "seg" / "model.pt").is_file()
    assert not (r / "eval").exists() and not (r / "figures").exists()  # no score stage ran
    summary = json.loads((r / "summary.json").read_text())
    assert summary["miou"] == {} and "no ground-truth masks" in summary["unscored"]
    assert "Not scored:" in (r / "summary.md").read_text()


def _bad(root: Path, how: str) -> str:
    """Damage a copy of the folder dataset; return the line the run must stop with."""
    labels = root / "labels.csv"
    rows = labels.read_text().splitlines()
    first = rows[1].split(",")[0]
    if how == "unknown class":
        rows[2] = rows[2] + ";dragon"
        labels.write_text("\n".join(rows) + "\n")
        return f"{labels}:3: unknown class 'dragon'"
    if how == "image not on disk":
        rows.append("ghost,cat")
        labels.write_text("\n".join(rows) + "\n")
        return f"{labels}:{len(rows)}: image 'ghost' not found in {root / 'images'}"
    if how == "no label":
        rows[3] = rows[3].split(",")[0] + ","
        labels.write_text("\n".join(rows) + "\n")
        return f"{labels}:4: image {rows[3][:-1]!r} has no class"
    if how == "duplicate id":
        rows.append(rows[1])
        labels.write_text("\n".join(rows) + "\n")
        return f"{labels}:{len(rows)}: duplicate image id {first!r} (first on line 2)"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["unknown class", "image not on disk", "no label", "duplicate id"])
def test_bad_folder_input_is_one_line_before_anything_runs(folder, smoke_run, tmp_path, how):
    root = tmp_path / "data"
    shutil.copytree(folder[0], root)
    line = _bad(root, how)
    with pytest.raises(DataError) as err:
        FolderDataset(root)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)
    work = tmp_path / "work"
    clip = smoke_run / "results_smoke" / "clip" / "model.pt"
    proc = snakemake(
        work,
        "--config",
        f"data={{source: folder, root: {root}}}",
        f"clip={{checkpoint: {clip}}}",
        "results_dir=results_folder",
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert any(ln.startswith(line) for ln in out.splitlines()), out[-2000:]
    assert not (work / "results_folder").exists()  # nothing half-written
