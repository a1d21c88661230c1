"""The config schema: paper defaults, one-line errors naming the key, docs in sync."""

from pathlib import Path

import pytest
import yaml

from pole_core.config import (
    ConfigError,
    config_diff,
    paper_defaults,
    schema_markdown,
    thresholds,
    validate_config,
    variant_settings,
)

REPO = Path(__file__).resolve().parents[1]


def _voc(**extra):
    cfg = {"data": {"root": "/data/VOC2012"}}
    cfg.update(extra)
    return cfg


def test_paper_defaults_are_filled_in():
    cfg = validate_config(_voc())
    assert cfg["cam"]["loss_weights"] == {"otm": 10, "btm": 25, "cbs": 1, "reg": 0, "cls": 0}
    assert variant_settings(cfg, "baseline")["loss_weights"]["btm"] == 24
    assert variant_settings(cfg, "baseline")["loss_weights"]["reg"] == 0.2
    assert variant_settings(cfg, "pole")["adapters"] is True
    # thresholds of the CLIMS/POLE run script (IRNet: 0.30 / 0.05 and 0.25)
    assert cfg["crf"]["fg_thresh"] == 0.30 and cfg["crf"]["bg_thresh"] == 0.10
    assert cfg["crf"]["bi_sxy"] == 50 and cfg["crf"]["bi_srgb"] == 5 and cfg["crf"]["iters"] == 10
    assert cfg["random_walk"] == {
        "beta": 10,
        "exp_times": 8,
        "radius": 5,
        "bg_thresh": 0.20,
        "normalize": "global",
        "damp_boundary": True,
        "shards": 4,
        "final_crf": {
            "enabled": False,
            "gt_prob": 0.7,
            "gauss_sxy": 3,
            "gauss_compat": 3,
            "bi_sxy": 50,
            "bi_srgb": 5,
            "bi_compat": 10,
            "iters": 10,
        },
    }
    assert cfg["affinity"]["radius"] == 10 and cfg["affinity"]["lr"] == 0.1
    assert (cfg["affinity"]["stride"], cfg["affinity"]["context"]) == (4, 0)
    assert cfg["affinity"]["image_level"] is False
    assert cfg["extract"]["scales"] == [1.0, 0.5, 1.5, 2.0]
    assert cfg["cam"]["adapter_ratio"] == 0.2 and cfg["cam"]["cbs_thresh"] == 0.26
    assert cfg["cam"]["bg_words"] == []  # the dataset's own: VOC's bank has CLIMS's list
    from pole_core.data.voc import VOC_BG_WORDS

    assert VOC_BG_WORDS[:3] == ("tree", "river", "sea")


def test_released_code_recipe_is_the_default():
    """What the released CLIMS/POLE/IRNet code ran, where it differs from the textbook."""
    cfg = validate_config(_voc())
    cam, pre, aff = cfg["cam"], cfg["cam"]["pretrain"], cfg["affinity"]
    # PolyOptimizer hands weight_decay to SGD's momentum slot; the per-group decay applies
    assert (cam["momentum"], cam["weight_decay"]) == (1e-4, 1e-4)
    assert (aff["momentum"], aff["weight_decay"]) == (1e-4, 1e-4)
    assert cam["freeze_bn"] is False  # CLIMS's resnet50_v2: BN in train mode
    assert cam["grad_clip"] == 0  # neither CLIMS nor POLE clips the gradient
    # IRNet step 1 (run_sample.py) builds the start of the CAM stage
    assert (pre["epochs"], pre["batch_size"], pre["lr"], pre["head_lr"]) == (5, 16, 0.1, 1.0)
    assert pre["freeze_bn"] is True and pre["frozen_stages"] == 2
    assert cam["init"] is None
    assert aff["backbone"] == "resnet50"  # IRNet's own frozen ImageNet ResNet-50
    assert cfg["data"]["crop_fill"] == "mean"  # zero padding after normalisation


def test_paper_defaults_and_config_diff():
    defaults = paper_defaults()
    assert defaults["crf"]["fg_thresh"] == 0.30 and defaults["data"]["source"] == "voc"
    assert config_diff(defaults, defaults) == {}
    other = validate_config(_voc(crf={"bg_thresh": 0.05}))
    assert config_diff(defaults, other) == {
        "crf.bg_thresh": (0.10, 0.05),
        "data.root": (None, "/data/VOC2012"),
    }


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ({"seed": "abc"}, "seed = 'abc' is not of type integer"),
        ({"sede": 1}, "unknown key sede"),
        ({"cam": {"epochs": 0}}, "cam.epochs = 0 is out of range"),
        ({"cam": {"loss_weights": {"otx": 1}}}, "unknown key cam.loss_weights.otx"),
        ({"crf": {"fg_thresh": 1.5}}, "crf.fg_thresh = 1.5 is out of range"),
        ({"device": "gpu"}, "device"),
        ({"seg": {"variant": "nope"}}, "seg.variant = 'nope'"),
        ({"cams": {"shards": 2}}, "cams is now called extract"),
        ({"random_walk": {"crf": {}}}, "random_walk.crf is now called random_walk.final_crf"),
    ],
)
def test_bad_config_names_the_key(bad, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(_voc(**bad))
    msg = str(err.value)
    assert expected in msg
    assert "\n" not in msg


def test_voc_needs_a_root():
    with pytest.raises(ConfigError, match="data.root"):
        validate_config({})


@pytest.mark.parametrize(
    "name", ["config.yaml", "config/voc.yaml", "config/coco.yaml", "config/smoke.yaml"]
)
def test_shipped_configs_validate(name):
    cfg = yaml.safe_load((REPO / name).read_text())
    validate_config(cfg)


def test_oracle_variant_and_probe_keys():
    variants = {
        "baseline": {"prompts": "names"},
        "pole": {"prompts": "selected"},
        "oracle": {"prompts": "oracle"},
    }
    cfg = validate_config(_voc(cam={"variants": variants}))
    assert variant_settings(cfg, "oracle")["prompts"] == "oracle"
    assert "oracle" not in paper_defaults()["cam"]["variants"]  # off by default
    assert cfg["eval"]["probe"] == {"images": 200, "blur": 0.04, "dilate": 0.08}
    with pytest.raises(ConfigError, match=r"cam\.variants\.oracle\.prompts = 'gt' must be one of"):
        validate_config(_voc(cam={"variants": {**variants, "oracle": {"prompts": "gt"}}}))


CLIP_ES_VARIANTS = {
    "baseline": {"prompts": "names"},
    "pole": {"prompts": "selected"},
    "clip_es": {"source": "clip_es", "prompts": "names"},
    "clip_es_pole": {"source": "clip_es", "prompts": "selected"},
}


def test_cam_source_registry_and_selection_sources():
    cfg = validate_config(_voc(cam={"variants": CLIP_ES_VARIANTS}))
    assert variant_settings(cfg, "pole")["source"] == "trained"  # unset = trained
    assert variant_settings(cfg, "pole")["select_from"] == "baseline"
    assert variant_settings(cfg, "clip_es_pole")["select_from"] == "clip_es"  # its own source
    assert variant_settings(cfg, "clip_es")["select_from"] is None
    assert cfg["clip_es"]["template"] == "a clean origami {}." and cfg["clip_es"]["scales"] == [1.0]
    assert "source" not in paper_defaults()["cam"]["variants"]["baseline"]  # defaults unchanged
    bad = {**CLIP_ES_VARIANTS, "clip_es": {"source": "clipes", "prompts": "names"}}
    with pytest.raises(ConfigError) as err:
        validate_config(_voc(cam={"variants": bad}))
    assert str(err.value) == (
        "config: cam.variants.clip_es.source = 'clipes' is not one of 'trained', 'clip_es'"
    )


@pytest.mark.parametrize(
    ("variants", "extra", "expected"),
    [
        (  # a selected clip_es variant needs a clip_es variant with names to select from
            {"baseline": {"prompts": "names"}, "x": {"source": "clip_es", "prompts": "selected"}},
            {"seg": {"variant": "baseline"}},
            "cam.variants.x (source clip_es, prompts selected) has no variant",
        ),
        (
            {**CLIP_ES_VARIANTS, "pole": {"prompts": "selected", "select_from": "nope"}},
            {},
            "cam.variants.pole.select_from = 'nope' is not one of cam.variants",
        ),
        (
            {**CLIP_ES_VARIANTS, "pole": {"prompts": "selected", "select_from": "clip_es_pole"}},
            {},
            "select_from = 'clip_es_pole' has prompts 'selected'",
        ),
        (
            {
                **CLIP_ES_VARIANTS,
                "clip_es": {"source": "clip_es", "prompts": "names", "select_from": "baseline"},
            },
            {},
            "cam.variants.clip_es.select_from applies only to prompts: selected",
        ),
        (  # the boundary net of a clip_es variant reads the baseline's CAM network
            {
                "baseline": {"source": "clip_es", "prompts": "names"},
                "pole": {"prompts": "selected"},
            },
            {"affinity": {"backbone": "cam_net"}},
            "cam.variants.baseline.source must be trained",
        ),
    ],
)
def test_bad_cam_sources_name_the_key(variants, extra, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(_voc(cam={"variants": variants}, **extra))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_threshold_sweep():
    cfg = validate_config(
        _voc(eval={"cam_bg_thresholds": {"start": 0.1, "stop": 0.3, "step": 0.05}})
    )
    assert thresholds(cfg) == [0.1, 0.15, 0.2, 0.25, 0.3]


def test_config_docs_are_generated_from_the_schema():
    assert (REPO / "docs" / "CONFIG.md").read_text() == schema_markdown()


def test_adapter_lr_defaults_to_the_head_lr_and_a_variant_may_set_its_own():
    variants = {
        "baseline": {"prompts": "names"},
        "slow": {"prompts": "selected", "adapter_lr": 1e-5},
    }
    cfg = validate_config(_voc(cam={"variants": variants}, seg={"variant": "slow"}))
    assert cfg["cam"]["adapter_lr"] is None  # = cam.head_lr in train_cam
    assert variant_settings(cfg, "baseline")["adapter_lr"] is None
    assert variant_settings(cfg, "slow")["adapter_lr"] == 1e-5
