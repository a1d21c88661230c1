"""What every rule script shares: logging to the rule's log, threads, dataset and ids.

Scripts stay thin: they translate the `snakemake` object into arguments of
pole_core functions. This module is the only place that knows the config layout
of the data group.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from pole_core.data.voc import VOCDataset  # the interface every reader follows (data.registry)
from pole_core.device import resolve_device
from pole_core.io.checkpoint import seed_everything
from pole_core.training import RunOptions

P = TypeVar("P")


def setup(snakemake) -> logging.Logger:
    """Log to the rule's log file and to stderr; set torch threads to the job's threads."""
    name = snakemake.rule
    logger = logging.getLogger(f"pole.{name}")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S")
    if snakemake.log:
        Path(snakemake.log[0]).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(snakemake.log[0], mode="w")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    sh = logging.StreamHandler(sys.stderr)
    sh.setFormatter(fmt)
    logger.addHandler(sh)
    threads = snakemake.config.get("torch_threads") or snakemake.threads
    torch.set_num_threads(max(1, int(threads)))
    return logger


def run(snakemake, main: Callable[[logging.Logger], None]) -> None:
    """Run a script's main; on error log one line (and the traceback to the log file) and exit 1."""
    log = setup(snakemake)
    # The scripts build their networks (random initial weights) before the trainers seed:
    # seed from the config first, so a job gives the same result wherever it runs.
    seed_everything(int(snakemake.config.get("seed", 0)))
    try:
        main(log)
    except Exception as err:  # report, then fail the job
        for h in log.handlers:
            if isinstance(h, logging.FileHandler):
                h.stream.write(traceback.format_exc())
        log.error("%s: %s", type(err).__name__, err)
        sys.exit(1)


def dataset(snakemake):
    """The run's dataset reader (data.source, pole_core.data.registry) over input ``data``
    (the world's output folder or data.root), with the SBD train_aug folder as its aug_root
    when the rule has one (input ``aug``); COCO caches its ground truth under results."""
    from pole_core.data.registry import open_dataset

    # `aug=sbd_input()` is a list: Snakemake gives a (possibly empty) Namedlist for it.
    aug = snakemake.input.get("aug")
    if aug is not None and not isinstance(aug, (str, Path)):
        aug = aug[0] if len(aug) else None
    cfg = snakemake.config
    return open_dataset(
        cfg["data"]["source"],
        Path(snakemake.input.data),
        aug_root=aug,
        cache_dir=Path(cfg["results_dir"]) / "gt",
    )


def ids(ds: VOCDataset, split: str, max_images: int) -> list[str]:
    """A split's ids, cut to data.max_images when set."""
    out = ds.ids(split)
    return out[:max_images] if max_images else out


def union_ids(ds: VOCDataset, splits: list[str], max_images: int) -> list[str]:
    """Ids of several splits, each once, in first-seen order."""
    seen: dict[str, None] = {}
    for split in splits:
        for i in ids(ds, split, max_images):
            seen.setdefault(i, None)
    return list(seen)


def device(snakemake) -> torch.device:
    return resolve_device(snakemake.params.device)


def train_run(snakemake, log: logging.Logger, workers: int = 0) -> RunOptions:
    """How a trainer runs in a rule: the config's device, ``workers`` loaders, the rule's log."""
    return RunOptions(device=device(snakemake), workers=int(workers), log=log.info)


def shard_index(scatteritem: str) -> tuple[int, int]:
    """'2-of-4' -> (1, 4): zero-based shard and shard count."""
    i, n = scatteritem.split("-of-")
    return int(i) - 1, int(n)


def shard_of(snakemake, all_ids: list[str]) -> list[str]:
    """This job's share of ``all_ids`` (the rule's scatter item, e.g. '2-of-4')."""
    from pole_core.cam.extract import shard_ids

    shard, n = shard_index(snakemake.wildcards.scatteritem)
    return shard_ids(all_ids, n, shard)


def shard_of_splits(snakemake, ds: VOCDataset) -> list[str]:
    """This job's share of the ids of the rule's ``params.splits``."""
    return shard_of(snakemake, union_ids(ds, snakemake.params.splits, snakemake.params.max_images))


def clip_bundle(snakemake):
    """The frozen CLIP of the run: the in-pipeline mini-CLIP or an open_clip model."""
    from pole_core.clip.bundle import load_clip

    clip_cfg = snakemake.params.clip
    dev = device(snakemake)
    if clip_cfg["source"] == "mini":
        return load_clip("mini", checkpoint=snakemake.input.clip[0], device=dev)
    return load_clip(
        "open_clip",
        model=clip_cfg["model"],
        pretrained=clip_cfg["pretrained"],
        checkpoint=clip_cfg["checkpoint"],
        input_size=clip_cfg["input_size"],
        device=dev,
        quick_gelu=clip_cfg.get("quick_gelu"),
    )


def augmented_items(snakemake, ds: VOCDataset, image_ids: list[str], cfg: dict, **kw):
    """Training items of a stage: random long-side resize, crop and flip from its config group.

    ``kw`` goes to ``AugmentedDataset`` (e.g. ``mask_fn`` for label maps, ``flip``).
    """
    from pole_core.data.transforms import AugmentedDataset

    kw.setdefault("flip", cfg.get("flip", True))
    return AugmentedDataset(
        ds,
        image_ids,
        resize_long=tuple(cfg["resize_long"]),
        crop_size=cfg["crop_size"],
        seed=snakemake.params.seed,
        crop_fill=snakemake.params.crop_fill,
        **kw,
    )


def new_cam_net(cam_cfg: dict, n_classes: int):
    """A freshly initialised CAM network as cam.* describes it (ImageNet file if given)."""
    from pole_core.cam.network import build_cam_net

    return build_cam_net(
        cam_cfg["backbone"],
        n_classes,
        strides=tuple(cam_cfg["strides"]),
        widths=tuple(cam_cfg["widths"]),
        weights=cam_cfg["weights"],
    )


def boundary_features(backbone: str, path: str, dev: torch.device):
    """The frozen feature levels the boundary network reads (affinity.backbone).

    ``resnet50``: IRNet's own ResNet-50 (strides 2,2,2,1, BN fixed) from the ImageNet
    file ``path``; ``cam_net``: the backbone of the CAM network saved at ``path``.
    """
    from pole_core.cam.network import build_cam_net
    from pole_core.cam.train import load_cam_net

    if backbone == "cam_net":
        net = load_cam_net(path, dev)[0]
    else:
        net = build_cam_net("resnet50", 1, weights=path, freeze_bn=True).to(dev).eval()
    return net.feature_levels


def bg_words(cam_cfg: dict, bank) -> list[str]:
    """CBS background words: the configured list, or the dataset's own when the list is empty."""
    if cam_cfg["bg_words"]:
        return list(cam_cfg["bg_words"])
    if not bank.bg_words:
        raise ValueError(
            "config: cam.bg_words is empty and the dataset names no background words "
            "(classes.json / classes.yaml: bg_words)"
        )
    return list(bank.bg_words)


def candidates(prompt_cfg: dict, bank) -> dict[str, list[str]]:
    """POLE candidates per class name: the dataset prompt first, then the synonyms."""
    unknown = sorted(set(prompt_cfg["synonyms"]) - set(bank.names))
    if unknown:
        raise ValueError(
            f"config: prompts.synonyms names unknown class {unknown[0]!r} (classes: {', '.join(bank.names)})"
        )
    out = {}
    for name, prompt in zip(bank.names, bank.prompts, strict=True):
        syn = prompt_cfg["synonyms"].get(name, bank.synonyms.get(name, []))
        out[name] = [prompt, *[s for s in syn if s != prompt]]
    return out


def stage_params(cls: type[P], group: dict, **given: Any) -> P:
    """A stage's hyper-parameter record (a dataclass) from its config group.

    Every field is read from the config key of the same name, so ``grep`` follows a key
    from config.yaml to its field; ``given`` supplies fields whose value lives elsewhere
    (another group, the variant, the seed). A field with neither keeps the record's default.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TypeError(f"{cls.__name__} has no fields {unknown}")
    values = {n: group[n] for n in names if n in group and n not in given}
    return cls(**values, **given)


def crf_params(group: dict):
    """The CRF terms of a config group (``crf`` or ``random_walk.final_crf``)."""
    from pole_core.refine.crf import CRFParams

    return stage_params(CRFParams, group)


def find_in_shards(shard_dirs: list[str], sub: str) -> Callable[[str], Path]:
    """Map an image id to its PNG in one of the shard folders (``<shard>/<sub>/<id>.png``)."""
    index: dict[str, Path] = {}
    for d in shard_dirs:
        for p in (Path(d) / sub).glob("*.png"):
            index[p.stem] = p

    def path(image_id: str) -> Path:
        if image_id not in index:
            raise FileNotFoundError(
                f"{shard_dirs[0]}/../*/{sub}/{image_id}.png: no label for image {image_id!r}"
            )
        return index[image_id]

    return path
