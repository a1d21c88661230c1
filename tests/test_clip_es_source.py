"""The clip_es CAM source: its store passes extract_cams's contract, its texts, its DAG."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from workflow_utils import snakemake

from pole_core.cam import clip_es as ce
from pole_core.cam.clip_es_store import (
    clamp_attn_layers,
    default_text,
    extract_clip_es_cams,
    resolve_text,
    selected_prompts,
)
from pole_core.cam.sources import CAM_SOURCES
from pole_core.clip import WordTokenizer, build_mini_clip, load_clip
from pole_core.clip.mini import full_model_cfg
from pole_core.data.coco import COCO_CLASSES
from pole_core.data.voc import VOC_CLASSES, VOCDataset
from pole_core.demo.world import WORLD_SYNONYMS, build_vocab, generate_world
from pole_core.io.checkpoint import save_checkpoint

TINY = {
    "embed_dim": 32,
    "image_size": 32,
    "patch_size": 8,
    "width": 32,
    "layers": 2,
    "head_width": 16,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 12,
}


@pytest.fixture(scope="module")
def world_and_clip(tmp_path_factory):
    """A 6-image 32-px world and a random-init 2-block mini-CLIP over its vocabulary,
    saved in train_mini_clip's format and loaded back as the pipeline loads it."""
    root = tmp_path_factory.mktemp("clip_es")
    generate_world(root / "w", n_train=6, n_val=2, n_clip=0, image_size=32, progress=False)
    torch.manual_seed(0)
    tok = WordTokenizer(build_vocab(), TINY["context_length"])
    model = build_mini_clip(tok.vocab_size, tok.eot_id, **TINY)
    path = root / "clip.pt"
    save_checkpoint(
        path,
        {"model_cfg": full_model_cfg(TINY), "vocab": tok.vocab, "state_dict": model.state_dict()},
    )
    return VOCDataset(root / "w"), load_clip("mini", checkpoint=str(path))


class OddSizes:
    """The world cropped to sizes that are neither patch nor stride-4 multiples."""

    def __init__(self, ds: VOCDataset):
        self.ds, self.class_names, self.bank = ds, ds.class_names, ds.bank

    def image(self, image_id: str) -> np.ndarray:
        return self.ds.image(image_id)[:29, :23]

    def labels(self, image_id: str) -> np.ndarray:
        return self.ds.labels(image_id)

    def image_size(self, image_id: str) -> tuple[int, int]:
        return self.image(image_id).shape[:2]


def check_store(path: Path, ds, ids: list[str]) -> None:
    """The checks tests/test_voc_rehearsal.py makes of extract_cams's stores."""
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == sorted(ids)
        assert list(f.attrs["classes"]) == list(ds.class_names)
        for image_id in ids:
            h, w = ds.image_size(image_id)
            cam, keys = f[image_id]["cam"], f[image_id]["keys"][()]
            assert cam.dtype == np.float16 and cam.shape == (len(keys), h, w)
            s4 = f[image_id]["cam_s4"]
            assert s4.dtype == np.float16
            assert s4.shape == (len(keys), math.ceil(h / 4), math.ceil(w / 4))
            np.testing.assert_array_equal(keys, np.flatnonzero(ds.labels(image_id)))
            for values in (cam[()].astype(np.float32), s4[()].astype(np.float32)):
                assert np.isfinite(values).all() and values.min(initial=0) >= 0
                assert values.max(initial=0) <= 1.0


def _run(bundle, ds, ids, out, **kw):
    bank = ds.bank
    text = resolve_text(
        bank.names, bank.prompts, bank.bg_words, class_prompts=None, bg_prompts=None
    )
    return extract_clip_es_cams(
        bundle.model,
        bundle.tokenizer,
        ds,
        ids,
        out,
        mean=bundle.mean,
        std=bundle.std,
        text=text,
        template="a photo of a {}.",
        progress=False,
        **kw,
    )


@pytest.mark.parametrize("odd", [False, True], ids=["world", "odd_sizes"])
def test_clip_es_store_follows_the_cam_store_contract(world_and_clip, tmp_path, odd, caplog):
    world, bundle = world_and_clip
    ds = OddSizes(world) if odd else world
    ids = world.ids("train")
    with caplog.at_level(logging.INFO):
        stats = _run(bundle, ds, ids, tmp_path / "shard.h5", attn_layers=8)
    check_store(tmp_path / "shard.h5", ds, ids)
    assert stats["n_images"] == len(ids) and stats["attn_layers"] == 2  # clamped to the depth
    assert "clip_es.attn_layers 8 > the ViT's 2 blocks" in caplog.text
    with h5py.File(tmp_path / "shard.h5", "r") as f:
        assert f.attrs["method"] == "clip_es" and list(f.attrs["bg_prompts"]) == list(
            world.bank.bg_words
        )
        peaks = [f[i]["cam"][()].max(axis=(1, 2)) for i in ids if len(f[i]["keys"])]
    assert all((p > 0.5).all() for p in peaks)  # each labelled map peaks (normalised by max)


def test_selected_tokens_change_the_maps_of_their_classes(world_and_clip, tmp_path):
    ds, bundle = world_and_clip
    ids = ds.ids("train")
    bank = ds.bank
    selection = {
        i: {bank.names[k]: WORLD_SYNONYMS[bank.names[k]][0] for k in np.flatnonzero(ds.labels(i))}
        for i in ids
    }
    names = _run(bundle, ds, ids, tmp_path / "names.h5")
    chosen = _run(
        bundle,
        ds,
        ids,
        tmp_path / "chosen.h5",
        image_prompts=selected_prompts(selection, bank.names, bank.prompts, bank.prompts),
    )
    check_store(tmp_path / "chosen.h5", ds, ids)
    assert chosen["distinct_prompts"] > names["distinct_prompts"] == len(bank.names)
    with h5py.File(tmp_path / "names.h5", "r") as a, h5py.File(tmp_path / "chosen.h5", "r") as b:
        assert any(not np.array_equal(a[i]["cam"][()], b[i]["cam"][()]) for i in ids)
    with pytest.raises(ValueError, match="no prompt selection for image 'zzz'"):
        selected_prompts(selection, bank.names, bank.prompts, bank.prompts)("zzz")


def test_selected_prompts_keep_clip_es_words_where_pole_kept_the_name():
    pick = selected_prompts(
        {"im": {"person": "player", "horse": "stallion"}},
        ["person", "horse"],
        ["player", "horse"],  # the dataset prompts (CLIMS prompts person as "player")
        ["person with clothes,people,human", "horse"],  # CLIP-ES's words
    )
    assert pick("im") == {0: "person with clothes,people,human", 1: "stallion"}


def test_default_text_is_clip_es_for_voc_and_coco_else_the_datasets():
    voc = default_text(VOC_CLASSES, list(VOC_CLASSES), ["tree"])
    assert voc.origin == "voc" and voc.class_prompts == list(ce.VOC_CLASS_NAMES)
    assert voc.bg_prompts == list(ce.VOC_BG_PROMPTS)
    coco = default_text(COCO_CLASSES, list(COCO_CLASSES), [])
    assert coco.origin == "coco" and len(coco.class_prompts) == 80
    assert coco.bg_prompts == list(ce.COCO_BG_PROMPTS)
    own = default_text(["cat", "tvmonitor"], ["cat", "tv monitor"], ["room"])
    assert own == (["cat", "tv monitor"], ["room"], "dataset")
    mixed = resolve_text(
        ["cat", "dog"], ["cat", "dog"], ["room"], class_prompts={"dog": "hound"}, bg_prompts=None
    )
    assert mixed.class_prompts == ["cat", "hound"] and mixed.bg_prompts == ["room"]
    with pytest.raises(ValueError, match="unknown class 'cow'"):
        resolve_text(["cat"], ["cat"], ["room"], class_prompts={"cow": "x"}, bg_prompts=None)
    with pytest.raises(ValueError, match="bg_prompts is empty"):
        resolve_text(["cat"], ["cat"], [], class_prompts=None, bg_prompts=None)
    assert clamp_attn_layers(8, 12) == 8 and clamp_attn_layers(8, 4) == 4


def test_every_source_names_its_rule():
    assert set(CAM_SOURCES) == {"trained", "clip_es"}
    assert CAM_SOURCES["trained"].rule == "extract_cams" and CAM_SOURCES["trained"].network
    assert CAM_SOURCES["clip_es"].rule == "clip_es_cams" and not CAM_SOURCES["clip_es"].network


CLIP_ES_VARIANTS = (
    "cam={variants: {baseline: {prompts: names, adapters: false, loss_weights: {otm: 10, "
    "btm: 24, cbs: 1, reg: 0.2}}, pole: {prompts: selected}, "
    "clip_es: {source: clip_es, prompts: names}, clip_es_pole: {source: clip_es, prompts: selected}}}"
)


def _jobs(text: str) -> dict[str, list[str]]:
    """Each planned job's block of the dry-run output, by rule."""
    out: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            out.setdefault(m.group(1), []).append(block)
    return out


def test_a_clip_es_variant_plans_its_cams_without_a_cam_network(tmp_path):
    proc = snakemake(tmp_path, "--dry-run", "--config", CLIP_ES_VARIANTS)
    text = proc.stdout + proc.stderr
    jobs = _jobs(text)
    counts = {rule: len(blocks) for rule, blocks in jobs.items()}
    # 2 shards per variant; train_cam and extract_cams only for baseline and pole
    assert counts["clip_es_cams"] == 4 and counts["train_cam"] == 2
    assert counts["extract_cams"] == 4 and counts["gather_cams"] == 4
    assert counts["select_prompts"] == 2  # from baseline and from clip_es
    assert counts["crf"] == 8 and counts["random_walk"] == 8 and counts["train_affinity"] == 4
    assert "cam_net/clip_es" not in text
    (from_clip_es,) = [b for b in jobs["select_prompts"] if "selected_clip_es.json" in b]
    assert "results_smoke/cams/clip_es.h5" in from_clip_es
    assert "results_smoke/cams/baseline.h5" not in from_clip_es
    pole_shards = [b for b in jobs["clip_es_cams"] if "variant=clip_es_pole" in b]
    assert len(pole_shards) == 2
    assert all("results_smoke/prompts/selected_clip_es.json" in b for b in pole_shards)
    for rule in ("crf", "random_walk"):
        for variant in ("clip_es", "clip_es_pole"):
            assert any(f"variant={variant}," in b for b in jobs[rule]), (rule, variant)
    # under affinity.backbone cam_net (the smoke config) the boundary net reads baseline's
    for b in jobs["train_affinity"]:
        if "variant=clip_es" in b:
            assert "results_smoke/cam_net/baseline/model.pt" in b
