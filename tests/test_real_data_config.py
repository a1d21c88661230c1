"""config/voc.yaml as a user types it: no demo value leaks in, missing weights stop the run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from rehearsal.vocdevkit import make_weights
from workflow_utils import REPO, snakemake

from pole_core.cam.network import build_cam_net, import_irnet_cam, irnet_cam_state_dict
from pole_core.config import flatten, paper_defaults
from pole_core.device import amp_dtype, grad_scaler


def _differing_keys(proc) -> dict[str, str]:
    """The keys of the start-up line 'config: N keys differ from the paper defaults: k=v, ...'."""
    text = proc.stdout + proc.stderr
    m = re.search(r"config: (\d+) keys differ from the paper defaults(?:: (.*))?", text)
    assert m, text[-2000:]
    pairs = re.findall(r"([a-z_]+(?:\.[a-z_0-9]+)*)=", m.group(2) or "")
    assert len(pairs) == int(m.group(1))
    return set(pairs)


@pytest.fixture(scope="module")
def voc_work(tmp_path_factory) -> Path:
    """A working directory with the weight files config/voc.yaml names and an (empty) VOC root."""
    work = tmp_path_factory.mktemp("voc_config")
    (work / "data" / "VOCdevkit" / "VOC2012").mkdir(parents=True)
    (work / "data" / "benchmark_RELEASE" / "dataset").mkdir(parents=True)
    make_weights(work / "data" / "weights")
    return work


def test_voc_config_gets_only_its_own_keys(voc_work):
    """The demo's config.yaml must not reach a --configfile run (it would silently change
    epochs, crop sizes, thresholds ...): the differing keys are exactly voc.yaml's."""
    proc = snakemake(voc_work, "--dry-run", configfile="config/voc.yaml")
    voc = flatten(yaml.safe_load((REPO / "config" / "voc.yaml").read_text()))
    # data.source, data.train_split ... are set in voc.yaml to the default value itself
    defaults = flatten(paper_defaults())
    expected = {k for k, v in voc.items() if defaults.get(k) != v}
    assert _differing_keys(proc) == expected
    assert "rule world" not in proc.stdout


def test_no_configfile_is_the_demo_run(tmp_path):
    cmd_proc = snakemake(tmp_path, "--dry-run", "--config", "seed=3", configfile=None)
    assert "world" in cmd_proc.stdout  # the demo world's rule is planned
    keys = _differing_keys(cmd_proc)
    assert {"seed", "data.source", "cam.backbone"} <= keys


def test_missing_weights_stop_with_one_line_naming_the_key(tmp_path):
    (tmp_path / "voc").mkdir()
    proc = snakemake(
        tmp_path,
        "--dry-run",
        "--config",
        f"data={{root: {tmp_path / 'voc'}, sbd_root: null}}",
        configfile="config/voc.yaml",
        check=False,
    )
    assert proc.returncode != 0
    assert (
        "config: cam.weights = data/weights/resnet50-0676ba61.pth: file not found; "
        "the CAM network starts from torchvision's ResNet-50 ImageNet file"
    ) in proc.stdout + proc.stderr


def test_null_from_the_command_line_is_none(voc_work):
    proc = snakemake(
        voc_work,
        "--dry-run",
        "--config",
        "clip={checkpoint: null, pretrained: openai}",
        configfile="config/voc.yaml",
    )
    assert "clip.checkpoint" not in _differing_keys(proc)


def test_irnet_cam_classifier_imports_with_its_key_names(tmp_path):
    """IRNet's res50_cam.pth holds resnet50.*, stageN.* aliases and classifier.weight."""
    src = build_cam_net("resnet50", 20, freeze_bn=True)
    torch.nn.init.normal_(src.classifier.weight)
    irnet = {}
    for k, v in src.backbone.state_dict().items():
        irnet[f"resnet50.{k}"] = v
    aliases = {
        "conv1.": "stage1.0.",
        "bn1.": "stage1.1.",
        "layer1.": "stage1.4.",
        "layer2.": "stage2.0.",
        "layer3.": "stage3.0.",
        "layer4.": "stage4.0.",
    }
    for k, v in src.backbone.state_dict().items():
        for old, new in aliases.items():
            if k.startswith(old):
                irnet[new + k.removeprefix(old)] = v
    irnet["resnet50.fc.weight"] = torch.zeros(1000, 2048)
    irnet["classifier.weight"] = src.classifier.weight.detach().clone()
    irnet["newly_added.0.weight"] = irnet["classifier.weight"]
    path = tmp_path / "res50_cam.pth"
    torch.save(irnet, path)
    net = import_irnet_cam(path, 20)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, msg=k)
    # the stage aliases alone (no resnet50.* copy) map to the same names
    only_stages = {k: v for k, v in irnet.items() if not k.startswith("resnet50.")}
    assert set(irnet_cam_state_dict(only_stages)) == set(irnet_cam_state_dict(irnet))


def test_irnet_import_refuses_another_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"resnet50.conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match=r"other.pth: not IRNet's ResNet-50 CAM classifier"):
        import_irnet_cam(path, 20)


def test_frozen_stages_keep_their_weights():
    net = build_cam_net("resnet50", 20)
    net.freeze_stages(2)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert any(n.startswith("backbone.layer2.") for n in frozen)
    assert not any(n.startswith("backbone.layer3.") for n in frozen)
    assert {"backbone.conv1.weight", "backbone.bn1.weight"} <= frozen
    names = {g["name"]: g for g in net.param_groups(0.1, 1.0)}
    assert not any(
        p is q for p in names["backbone"]["params"] for q in net.backbone.layer1.parameters()
    )


def test_cpu_runs_without_autocast_or_loss_scaling():
    cpu = torch.device("cpu")
    assert amp_dtype(cpu) is None
    assert not grad_scaler(cpu).is_enabled()


def _rule_blocks() -> dict[str, str]:
    """rule name -> its text, from every workflow/rules/*.smk."""
    blocks = {}
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        parts = re.split(r"^rule (\w+):\n", smk.read_text(), flags=re.M)
        blocks.update(dict(zip(parts[1::2], parts[2::2], strict=True)))
    return blocks


def test_every_rule_that_uses_the_gpu_declares_it():
    """A script that puts work on the device must ask for one: otherwise profiles/gpu would
    run it beside another GPU job, and SLURM would send it to a node without a GPU."""
    scripts = REPO / "workflow" / "scripts"
    blocks = _rule_blocks()
    checked = 0
    for rule, text in blocks.items():
        m = re.search(r'"\.\./scripts/(\w+\.py)"', text)
        if not m:
            continue
        code = (scripts / m.group(1)).read_text()
        if re.search(r"\b(device|train_run|clip_bundle)\(snakemake\b", code):
            checked += 1
            assert "gpu=GPU" in text, f"rule {rule} uses the device but declares no gpu resource"
    assert checked >= 10


def test_cam_stage_bn_mode_follows_the_config():
    net = build_cam_net("resnet50", 20, freeze_bn=True)
    net.set_freeze_bn(False)  # CLIMS/POLE: BN in train mode during the CAM stage
    net.train()
    bn = net.backbone.layer3[0].bn1
    assert bn.training and net.arch["freeze_bn"] is False
    before = bn.running_mean.clone()
    net(torch.rand(2, 3, 64, 64))
    assert not torch.equal(before, bn.running_mean)
    net.set_freeze_bn(True)
    net.train()
    assert not bn.training and net.arch["freeze_bn"] is True
