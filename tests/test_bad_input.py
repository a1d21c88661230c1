"""Bad input: each problem is one line naming the file or key, a non-zero exit, nothing lost.

Three parts:

* `BAD_INPUTS`: a table of broken datasets, checkpoints, CAM stores and config values fed
  to the library functions the rule scripts call. Each must raise with a one-line message
  that names the file (or config key) and says what is wrong; `_common.run` prints exactly
  that line and exits 1.
* `HANDLED`: inputs that look odd but are valid (grayscale and CMYK JPEGs, 16-bit masks,
  images smaller than a CAM network's stride) must go through, not be rejected.
* `CLI_CASES`: the real Snakemake CLI on a tiny VOC-layout folder (data.source voc): the
  failing rule exits non-zero with the one line in its output, and finished outputs of
  other rules in the same results folder keep their bytes and mtime.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from workflow_utils import REPO, snakemake

from pole_core.cam.extract import extract_cams
from pole_core.cam.network import build_cam_net
from pole_core.cam.train import load_cam_net
from pole_core.clip.bundle import load_clip
from pole_core.clip.mini import build_mini_clip, full_model_cfg
from pole_core.clip.tokenizer import WordTokenizer
from pole_core.config import ConfigError, validate_config
from pole_core.data.voc import DataError, VOCDataset
from pole_core.io.atomic import write_json
from pole_core.io.cam_store import CamWriter, open_cams
from pole_core.io.checkpoint import load_checkpoint, save_checkpoint
from pole_core.io.png import write_mask

sys.path.insert(0, str(REPO / "workflow" / "scripts"))
from _common import candidates  # noqa: E402

VOC_CONFIG = "config/voc.yaml"
IDS = ["2007_000000", "2007_000001", "2007_000002", "2007_000003"]
H, W = 24, 32
MINI_CAM = {"strides": (2, 2, 1, 1), "widths": (8, 8, 16, 16)}
TINY_CLIP = {
    "embed_dim": 16,
    "image_size": 16,
    "patch_size": 8,
    "width": 16,
    "layers": 1,
    "head_width": 8,
    "text_width": 16,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 8,
}


# --------------------------------------------------------------------------- builders


def _jpeg(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path, format="JPEG", quality=95)


def _gt(h: int = H, w: int = W) -> np.ndarray:
    """Classes 1 (aeroplane) and 15 (person) with a 255 band, like a VOC mask."""
    m = np.zeros((h, w), np.uint8)
    m[: h // 2, : w // 3] = 1
    m[h // 2 :, w // 2 :] = 15
    m[h // 2, :] = 255
    return m


def voc_root(base: Path, h: int = H, w: int = W) -> Path:
    """A tiny VOC2012-layout folder: 4 images, palette masks, train and val splits."""
    root = base / "VOC2012"
    rng = np.random.default_rng(0)
    for i in IDS:
        _jpeg(root / "JPEGImages" / f"{i}.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        write_mask(root / "SegmentationClass" / f"{i}.png", _gt(h, w))
    splits = root / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text("\n".join(IDS) + "\n")
    (splits / "val.txt").write_text("\n".join(IDS[:2]) + "\n")
    return root


def write_cams(path: Path, ds: VOCDataset, ids: list[str]) -> None:
    """A valid CAM store for ``ids`` (labelled classes only, values in [0,1])."""
    rng = np.random.default_rng(1)
    with CamWriter(path, {"classes": ds.class_names, "scales": [1.0], "source": "test"}) as w:
        for i in ids:
            keys = np.flatnonzero(ds.labels(i))
            h, w_ = ds.image_size(i)
            cam = rng.random((len(keys), h, w_)).astype(np.float32)
            s4 = rng.random((len(keys), (h + 3) // 4, (w_ + 3) // 4)).astype(np.float32)
            w.add(i, cam, keys, s4)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def cam_checkpoint(path: Path, arch_widths: tuple[int, ...] | None = None) -> Path:
    """A CAM-network checkpoint as train_cam writes it; optionally claim other widths."""
    net = build_cam_net("mini", 20, **MINI_CAM)
    arch = dict(net.arch)
    if arch_widths is not None:
        arch["widths"] = list(arch_widths)
    save_checkpoint(
        path, {"state_dict": net.state_dict(), "adapters": None, "arch": arch, "stats": {}}
    )
    return path


def clip_checkpoint(path: Path, claimed: dict | None = None) -> Path:
    """A mini-CLIP checkpoint as train_mini_clip writes it; optionally claim another config."""
    tok = WordTokenizer(["a", "photo", "of", "cat", "."], TINY_CLIP["context_length"])
    model = build_mini_clip(tok.vocab_size, tok.eot_id, **TINY_CLIP)
    save_checkpoint(
        path,
        {
            "model_cfg": full_model_cfg({**TINY_CLIP, **(claimed or {})}),
            "vocab": tok.vocab,
            "state_dict": model.state_dict(),
            "stats": {},
        },
    )
    return path


# --------------------------------------------------------------------------- the table

Trigger = Callable[[], object]
# Each case: tmp_path -> (call that must fail, text the line must name, problem regex).
Case = Callable[[Path], tuple[Trigger, str, str]]


def missing_root(tmp: Path):
    root = tmp / "nowhere" / "VOC2012"
    return lambda: VOCDataset(root), str(root), r"dataset root not found"


def id_without_image(tmp: Path):
    root = voc_root(tmp)
    (root / "JPEGImages" / f"{IDS[2]}.jpg").unlink()
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    return lambda: VOCDataset(root).ids("train"), str(split), rf"id '{IDS[2]}' has no image"


def truncated_jpeg(tmp: Path):
    root = voc_root(tmp, 64, 64)
    path = root / "JPEGImages" / f"{IDS[0]}.jpg"
    truncate(path)
    return lambda: VOCDataset(root).image(IDS[0]), str(path), r"unreadable image"


def not_an_image(tmp: Path):
    root = voc_root(tmp)
    path = root / "JPEGImages" / f"{IDS[1]}.jpg"
    path.write_text("<html>403 Forbidden</html>\n")
    return lambda: VOCDataset(root).image(IDS[1]), str(path), r"unreadable image"


def _bad_mask(tmp: Path, mask: np.ndarray, expected: str):
    """The first image's ground truth replaced by ``mask``: reading it must fail so."""
    root = voc_root(tmp)
    path = root / "SegmentationClass" / f"{IDS[0]}.png"
    write_mask(path, mask)
    return lambda: VOCDataset(root).mask(IDS[0]), str(path), expected


def mask_wrong_size(tmp: Path):
    return _bad_mask(tmp, _gt(H // 2, W // 2), rf"mask size 12x16 differs from image {H}x{W}")


def mask_value_out_of_range(tmp: Path):
    m = _gt()
    m[3, 3] = 21
    return _bad_mask(tmp, m, r"label value 21 outside 0\.\.20 and 255")


def unreadable_mask(tmp: Path):
    root = voc_root(tmp)
    path = root / "SegmentationClass" / f"{IDS[3]}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return lambda: VOCDataset(root).mask(IDS[3]), str(path), r"unreadable mask"


def empty_split(tmp: Path):
    root = voc_root(tmp)
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("\n  \n")
    return lambda: VOCDataset(root).ids("train"), str(split), r"split is empty"


def label_without_class(tmp: Path):
    root = voc_root(tmp)
    path = root / "SegmentationClass" / f"{IDS[1]}.png"
    m = np.zeros((H, W), np.uint8)
    m[0, :] = 255  # background and ignore only
    write_mask(path, m)
    return lambda: VOCDataset(root).labels(IDS[1]), str(path), r"has no class in its label"


def cls_labels_wrong_length(tmp: Path):
    root = voc_root(tmp)
    path = root / "cls_labels.npy"
    np.save(path, {IDS[0]: np.ones(5, np.float32)})
    return lambda: VOCDataset(root).labels(IDS[0]), str(path), r"has 5 entries, expected 20"


def unknown_synonym_class(tmp: Path):
    root = voc_root(tmp)
    cfg = {"synonyms": {"aeroplane": ["plane"], "boaat": ["ship"]}}
    return (
        lambda: candidates(cfg, VOCDataset(root).bank),
        "prompts.synonyms",
        r"unknown class 'boaat'",
    )


def cam_checkpoint_wrong_arch(tmp: Path):
    path = cam_checkpoint(tmp / "cam.pt", arch_widths=(16, 16, 32, 32))
    return lambda: load_cam_net(path), str(path), r"weights do not match arch"


def clip_given_as_cam_net(tmp: Path):
    path = clip_checkpoint(tmp / "clip.pt")
    return lambda: load_cam_net(path), str(path), r"not a CAM network checkpoint"


def clip_checkpoint_wrong_arch(tmp: Path):
    path = clip_checkpoint(tmp / "clip.pt", claimed={"width": 32})
    return (
        lambda: load_clip("mini", checkpoint=path),
        str(path),
        r"checkpoint does not match architecture mini-CLIP",
    )


def cam_net_given_as_clip(tmp: Path):
    path = cam_checkpoint(tmp / "cam.pt")
    return lambda: load_clip("mini", checkpoint=path), str(path), r"not a mini-CLIP checkpoint"


def truncated_checkpoint(tmp: Path):
    path = cam_checkpoint(tmp / "cam.pt")
    truncate(path)
    return lambda: load_checkpoint(path), str(path), r"unreadable checkpoint"


def truncated_hdf5(tmp: Path):
    root = voc_root(tmp)
    path = tmp / "cams.h5"
    write_cams(path, VOCDataset(root), IDS)
    truncate(path)
    return lambda: open_cams(path), str(path), r"unreadable HDF5 CAM file"


def config_type_error(tmp: Path):
    cfg = {"cam": {"epochs": "three"}}
    return lambda: validate_config(cfg), "cam.epochs", r"= 'three' is not of type integer"


def config_unknown_key(tmp: Path):
    cfg = {"crf": {"bi_rgb": 3}}
    return lambda: validate_config(cfg), "crf.bi_rgb", r"unknown key crf\.bi_rgb \(allowed here: "


def config_out_of_range(tmp: Path):
    cfg = {"extract": {"scales": [1.0, -0.5]}}
    return lambda: validate_config(cfg), "extract.scales.1", r"is out of range"


BAD_INPUTS: list[Case] = [
    missing_root,
    id_without_image,
    truncated_jpeg,
    not_an_image,
    mask_wrong_size,
    mask_value_out_of_range,
    unreadable_mask,
    empty_split,
    label_without_class,
    cls_labels_wrong_length,
    unknown_synonym_class,
    cam_checkpoint_wrong_arch,
    clip_given_as_cam_net,
    clip_checkpoint_wrong_arch,
    cam_net_given_as_clip,
    truncated_checkpoint,
    truncated_hdf5,
    config_type_error,
    config_unknown_key,
    config_out_of_range,
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.__name__ for c in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_file_or_key(tmp_path, case):
    trigger, name, problem = case(tmp_path)
    with pytest.raises((DataError, ConfigError, ValueError, FileNotFoundError)) as info:
        trigger()
    msg = str(info.value)
    assert "\n" not in msg.strip(), f"more than one line:\n{msg}"
    assert name in msg, f"{name!r} not named in: {msg}"
    assert re.search(problem, msg), f"{problem!r} not in: {msg}"


# --------------------------------------------------------------------------- handled


def test_grayscale_and_cmyk_jpegs_are_read_as_rgb(tmp_path):
    root = voc_root(tmp_path)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    _jpeg(root / "JPEGImages" / f"{IDS[0]}.jpg", rgb, mode="L")
    _jpeg(root / "JPEGImages" / f"{IDS[1]}.jpg", rgb, mode="CMYK")
    ds = VOCDataset(root)
    for i in IDS[:2]:
        img = ds.image(i)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
    gray = ds.image(IDS[0])
    assert (gray[..., 0] == gray[..., 2]).all()
    assert abs(int(ds.image(IDS[1])[5, 5, 0]) - 200) < 20


def test_16bit_png_mask_is_read(tmp_path):
    root = voc_root(tmp_path)
    Image.fromarray(_gt().astype(np.uint16)).save(root / "SegmentationClass" / f"{IDS[2]}.png")
    with Image.open(root / "SegmentationClass" / f"{IDS[2]}.png") as im:
        assert im.mode.startswith("I")
    ds = VOCDataset(root)
    assert np.array_equal(ds.mask(IDS[2]), _gt())
    assert ds.labels(IDS[2]).nonzero()[0].tolist() == [0, 14]


@pytest.mark.parametrize("size", [(20, 20), (5, 7), (1, 1), (3, 40)])
@pytest.mark.parametrize("backbone", ["mini", "resnet50"])
def test_tiny_images_go_through_cam_extraction_at_the_paper_scales(tmp_path, size, backbone):
    """0.5 of a 20-px image is 10 px, less than ResNet-50's output stride 16: no crash."""
    h, w = size
    root = voc_root(tmp_path, h, w) if min(h, w) >= 2 else _one_pixel_root(tmp_path)
    ds = VOCDataset(root)
    torch.manual_seed(0)
    kw = MINI_CAM if backbone == "mini" else {}
    net = build_cam_net(backbone, ds.n_classes, **kw).eval()
    out = tmp_path / "cams.h5"
    extract_cams(net, ds, IDS[:2], out, scales=(1.0, 0.5, 1.5, 2.0), flip=True, progress=False)
    with open_cams(out) as f:
        for i in IDS[:2]:
            cam = f[i]["cam"][()]
            assert cam.shape == (len(np.flatnonzero(ds.labels(i))), h, w)
            assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1.001


def _one_pixel_root(tmp: Path) -> Path:
    """1×1 images: a mask of a single class-1 pixel."""
    root = tmp / "VOC2012"
    for i in IDS:
        _jpeg(root / "JPEGImages" / f"{i}.jpg", np.full((1, 1, 3), 120, np.uint8))
        write_mask(root / "SegmentationClass" / f"{i}.png", np.ones((1, 1), np.uint8))
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(IDS) + "\n")
    return root


def test_tiny_images_go_through_crf_random_walk_and_segmenter(tmp_path):
    from pole_core.data.transforms import AugmentedDataset
    from pole_core.refine.affinity import BoundaryNet
    from pole_core.refine.crf import CRFParams, ir_label_fn, refine_fn, write_labels
    from pole_core.refine.random_walk import run_random_walk_shard
    from pole_core.seg.infer import predict
    from pole_core.seg.network import build_seg_net

    root = voc_root(tmp_path, 5, 7)
    ds = VOCDataset(root)
    cams = tmp_path / "cams.h5"
    write_cams(cams, ds, IDS)
    params = CRFParams(iters=2)
    ir_label = ir_label_fn(fg_thresh=0.30, bg_thresh=0.05, params=params)
    stats = write_labels(ds, IDS, cams, tmp_path / "ir_label", ir_label, progress=False)
    assert stats["done"] == len(IDS)
    refine = refine_fn(bg_thresh=0.15, params=params)
    stats = write_labels(ds, IDS, cams, tmp_path / "refine", refine, progress=False)
    assert stats["done"] == len(IDS)
    torch.manual_seed(0)
    cam_net = build_cam_net("mini", ds.n_classes, **MINI_CAM).eval()
    stats = run_random_walk_shard(
        ds, IDS, cams, BoundaryNet(cam_net.features), tmp_path / "rw", radius=2, progress=False
    )
    assert stats["done"] == len(IDS)
    crops = AugmentedDataset(
        ds, IDS, resize_long=(28, 36), crop_size=32, flip=True, seed=0, mask_fn=ds.mask
    )
    assert crops[0]["image"].shape == (3, 32, 32) and crops[0]["mask"].shape == (32, 32)
    seg = build_seg_net("mini", ds.n_classes + 1, widths=(8, 8, 16, 16))
    assert predict(seg, ds.image(IDS[0]), scales=(0.5, 1.0, 1.5), flip=True).shape == (21, 5, 7)


# --------------------------------------------------------------------------- the real CLI


def _voc_config(root: Path) -> list[str]:
    """`--config` overrides of config/voc.yaml for the tiny root. The rules these cases run
    load no network, so empty files stand in for the weights config/voc.yaml names."""
    weights = root.parent / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    for name in ("resnet50.pth", "resnet101.pth", "clip.pt"):
        (weights / name).touch()
        os.utime(weights / name, (0, 0))  # downloaded long before any result
    overrides = {
        "data": f"{{root: {root}, sbd_root: null, train_split: train, eval_split: train, val_split: val}}",
        "results_dir": "results_bad",
        "device": "cpu",
        "crf": "{shards: 1}",
        "cam": f"{{weights: {weights / 'resnet50.pth'}}}",
        "affinity": f"{{weights: {weights / 'resnet50.pth'}}}",
        "seg": f"{{weights: {weights / 'resnet101.pth'}}}",
        "clip": f"{{checkpoint: {weights / 'clip.pt'}}}",
    }
    return ["--config"] + [f"{k}={v}" for k, v in overrides.items()]


def _finished_outputs(work: Path) -> dict[Path, tuple[bytes, int]]:
    """Outputs of other rules (none upstream of the targets), as an earlier run left them."""
    r = work / "results_bad"
    write_json(r / "eval" / "seg_val.json", {"miou": 42.0, "split": "val", "n_images": 2})
    write_json(r / "eval" / "crf_baseline.json", {"miou": 40.0, "split": "train"})
    (r / "figures").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(r / "figures" / "overlays.png")
    done = [r / "eval" / "seg_val.json", r / "eval" / "crf_baseline.json"]
    done += [r / "figures" / "overlays.png"]
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in done}


def cli_id_without_image(tmp: Path, root: Path, work: Path):
    (root / "JPEGImages" / f"{IDS[3]}.jpg").unlink()
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    return "results_bad/eval/pseudo_pole.json", f"{split}: id '{IDS[3]}' has no image"


def cli_mask_wrong_size(tmp: Path, root: Path, work: Path):
    path = root / "SegmentationClass" / f"{IDS[1]}.png"
    write_mask(path, _gt(H, W + 4))
    return "results_bad/eval/pseudo_pole.json", f"{path}: mask size {H}x{W + 4} differs"


def cli_truncated_jpeg(tmp: Path, root: Path, work: Path):
    ds = VOCDataset(root)
    write_cams(work / "results_bad" / "cams" / "pole.h5", ds, IDS)
    write_json(work / "results_bad" / "eval" / "cam_pole.json", {"best_threshold": 0.3})
    path = root / "JPEGImages" / f"{IDS[2]}.jpg"
    _jpeg(path, np.random.default_rng(2).integers(0, 255, (H, W, 3), dtype=np.uint8))
    truncate(path, 0.4)
    return "results_bad/crf/pole/shard_1-of-1", f"{path}: unreadable image"


def cli_truncated_hdf5(tmp: Path, root: Path, work: Path):
    path = work / "results_bad" / "cams" / "pole.h5"
    write_cams(path, VOCDataset(root), IDS)
    truncate(path)
    return "results_bad/eval/cam_pole.json", f"{path.relative_to(work)}: unreadable HDF5 CAM file"


CLI_CASES = [cli_id_without_image, cli_mask_wrong_size, cli_truncated_jpeg, cli_truncated_hdf5]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.__name__ for c in CLI_CASES])
def test_cli_bad_data_fails_the_rule_with_one_line_and_keeps_finished_outputs(tmp_path, case):
    root = voc_root(tmp_path)
    work = tmp_path / "work"
    # The pseudo-masks of a finished random walk: eval_pseudo's input.
    for i in IDS:
        write_mask(work / "results_bad" / "pseudo_masks" / "pole" / f"{i}.png", _gt())
    target, line = case(tmp_path, root, work)
    before = _finished_outputs(work)
    proc = snakemake(work, *_voc_config(root), "--", target, configfile=VOC_CONFIG, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert any(line in ln for ln in out.splitlines()), f"no line with {line!r} in:\n{out[-3000:]}"
    assert not (work / target).exists()
    for path, (data, mtime) in before.items():
        assert path.is_file(), f"{path} was removed"
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, f"{path} changed"


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "prompts={synonyms: {boaat: [ship]}}",
            "config: prompts.synonyms names unknown class 'boaat'",
        ),
        ("cam={epochs: -1}", "config: cam.epochs = -1 is out of range (minimum 1)"),
    ],
)
def test_cli_config_errors_stop_before_anything_runs(tmp_path, override, line):
    root = voc_root(tmp_path)
    work = tmp_path / "work"
    before = _finished_outputs(work)
    args = _voc_config(root)
    proc = snakemake(work, "--dry-run", *args, override, configfile=VOC_CONFIG, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert any(line in ln for ln in out.splitlines()), f"no line with {line!r} in:\n{out[-3000:]}"
    for path, (data, mtime) in before.items():
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, f"{path} changed"


def test_cli_missing_dataset_root_is_one_line(tmp_path):
    missing = tmp_path / "VOCdevkit" / "VOC2012"
    proc = snakemake(
        tmp_path / "work", "--dry-run", *_voc_config(missing), configfile=VOC_CONFIG, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"{missing}: dataset root not found (config data.root)" in out


def test_h5py_and_pil_agree_with_the_readers_on_truncation(tmp_path):
    """The kill-and-resume test checks results with PIL and h5py; make sure they see truncation."""
    root = voc_root(tmp_path)
    png = root / "SegmentationClass" / f"{IDS[0]}.png"
    truncate(png)
    with pytest.raises(OSError), Image.open(png) as im:
        im.load()
    h5 = tmp_path / "c.h5"
    write_cams(h5, VOCDataset(voc_root(tmp_path / "b")), IDS)
    truncate(h5)
    with pytest.raises(OSError):
        h5py.File(h5, "r")
    assert os.path.getsize(h5) > 0


def test_stage_params_reads_fields_by_key_name_and_refuses_unknown_ones():
    from _common import stage_params

    from pole_core.seg.train import SegTrainParams

    group = {"epochs": 3, "batch_size": 4, "lr": 0.5, "weight_decay": 0.0, "backbone": "mini"}
    params = stage_params(SegTrainParams, group, seed=7)
    assert params == SegTrainParams(epochs=3, batch_size=4, lr=0.5, weight_decay=0.0, seed=7)
    assert params.momentum == SegTrainParams.momentum  # no key of that name: the default
    with pytest.raises(TypeError, match="no fields"):
        stage_params(SegTrainParams, group, seeed=7)
