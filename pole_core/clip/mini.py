"""The in-pipeline mini-CLIP: an ``open_clip.CLIP`` built from a small config and
trained contrastively on the demo world's caption corpus.

No CLIP weights can be downloaded where the demo runs, so the pipeline trains
its own (~1.5 M parameters, ~10 minutes on 2 CPU threads with the defaults).
It is a real ``open_clip.CLIP``, so everything downstream (ClipBundle, CAM
training, prompt selection) runs the same code for it and for ViT-B-32.

Recipe (measured to train in minutes on 2 CPU threads): ViT with average pooling, text tower pooled at the
``<eot>`` token of the word tokenizer, AdamW (β 0.9/0.98, weight decay on
matrices only), linear warm-up + cosine decay, gradient clipping, random
horizontal flips, and a multi-positive contrastive loss because the template
captions repeat within a batch.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from ..device import autocast
from ..io.checkpoint import file_hash, seed_everything
from ..training import RunOptions, TrainLoop
from .tokenizer import WordTokenizer

#: Architecture defaults of :func:`build_mini_clip` (the 1.47 M-parameter recipe).
MINI_DEFAULTS: dict[str, int] = {
    "embed_dim": 128,
    "image_size": 64,
    "patch_size": 8,
    "width": 128,
    "layers": 4,
    "head_width": 32,
    "text_width": 128,
    "text_layers": 3,
    "text_heads": 4,
    "context_length": 16,
}

#: Image normalisation of the mini-CLIP (the OpenAI constants, like most open_clip models).
MINI_MEAN: tuple[float, float, float] = tuple(OPENAI_DATASET_MEAN)
MINI_STD: tuple[float, float, float] = tuple(OPENAI_DATASET_STD)

MAX_LOGIT_SCALE = math.log(100.0)


def build_mini_clip(
    vocab_size: int,
    eot_id: int,
    *,
    embed_dim: int = 128,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 4,
    head_width: int = 32,
    text_width: int = 128,
    text_layers: int = 3,
    text_heads: int = 4,
    context_length: int = 16,
) -> open_clip.CLIP:
    """Build a small ``open_clip.CLIP`` for a word-level tokenizer.

    Vision: ViT with ``pool_type="avg"`` (mean of patch tokens; gave usable
    dense maps, the class token did not). Text: ``pool_type="eos"`` with
    ``eos_id=eot_id`` and ``pad_id=0``: open_clip's default ``argmax`` pooling
    assumes the end-of-text token has the largest id, which is false for our
    tokenizer. ``heads = width // head_width`` (open_clip's head_width default
    of 64 would give only 2 heads at width 128).
    """
    if width % head_width:
        raise ValueError(f"mini-CLIP: width {width} is not a multiple of head_width {head_width}")
    if text_width % text_heads:
        raise ValueError(
            f"mini-CLIP: text_width {text_width} is not a multiple of text_heads {text_heads}"
        )
    if image_size % patch_size:
        raise ValueError(
            f"mini-CLIP: image_size {image_size} is not a multiple of patch_size {patch_size}"
        )
    if not 0 <= eot_id < vocab_size:
        raise ValueError(f"mini-CLIP: eot_id {eot_id} outside the vocabulary (size {vocab_size})")
    vision = CLIPVisionCfg(
        layers=layers,
        width=width,
        head_width=head_width,
        patch_size=patch_size,
        image_size=image_size,
        pool_type="avg",
    )
    text = CLIPTextCfg(
        context_length=context_length,
        vocab_size=vocab_size,
        width=text_width,
        heads=text_heads,
        layers=text_layers,
        pool_type="eos",
        eos_id=eot_id,
        pad_id=0,
    )
    model = open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text)
    open_clip.model.set_model_preprocess_cfg(
        model,
        {"size": image_size, "mean": MINI_MEAN, "std": MINI_STD, "interpolation": "bilinear"},
    )
    return model


def full_model_cfg(model_cfg: dict[str, Any] | None) -> dict[str, int]:
    """Defaults overlaid with ``model_cfg``; unknown keys are an error (typos in config.yaml)."""
    cfg = dict(MINI_DEFAULTS)
    unknown = set(model_cfg or {}) - set(cfg)
    if unknown:
        raise ValueError(
            f"mini-CLIP model_cfg: unknown key(s) {sorted(unknown)}; known: {sorted(cfg)}"
        )
    cfg.update({k: int(v) for k, v in (model_cfg or {}).items()})
    return cfg


def load_corpus(corpus_dir: str | os.PathLike) -> tuple[np.ndarray, list[str], list[str]]:
    """Read ``images.npy`` (uint8 N×H×W×3), ``captions.txt`` and ``vocab.txt``, checked."""
    corpus_dir = Path(corpus_dir)
    paths = {name: corpus_dir / name for name in ("images.npy", "captions.txt", "vocab.txt")}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: caption corpus file not found")
    try:
        images = np.load(paths["images.npy"])
    except Exception as err:
        raise ValueError(
            f"{paths['images.npy']}: unreadable ({type(err).__name__}: {err})"
        ) from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"{paths['images.npy']}: expected uint8 N×H×W×3, got {images.dtype} {images.shape}"
        )
    captions = [line.strip() for line in paths["captions.txt"].read_text().splitlines()]
    captions = [c for c in captions if c]
    if len(captions) != len(images):
        raise ValueError(
            f"{paths['captions.txt']}: {len(captions)} captions for {len(images)} images"
        )
    if len(images) < 2:
        raise ValueError(f"{corpus_dir}: a contrastive corpus needs at least 2 pairs")
    vocab = paths["vocab.txt"].read_text().splitlines()
    return images, captions, vocab


def multi_positive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    groups: torch.Tensor,
    scale: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption is a positive.

    With template captions, identical texts occur in one batch; one-hot
    targets would push an image away from its own caption's duplicates, so the
    target row spreads its mass uniformly over all positives.
    """
    logits = scale * image_features @ text_features.t()
    pos = (groups[:, None] == groups[None, :]).to(logits.dtype)
    target = pos / pos.sum(dim=1, keepdim=True)  # symmetric, so valid for both directions
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to ``base_lr`` then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only; gains, biases and the logit scale are not shrunk."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling and flips of one epoch depend only on (seed, epoch): resume-safe by construction."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


@dataclass(frozen=True)
class MiniClipParams:
    """Training recipe of the mini-CLIP (measured to train in minutes on 2 CPU threads)."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip: float = 1.0
    seed: int = 0


def train_mini_clip(
    corpus_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    params: MiniClipParams,
    *,
    run: RunOptions = RunOptions(),
    model_cfg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the mini-CLIP on a caption corpus and save it to ``out_path``.

    Resumable (:class:`pole_core.training.TrainLoop`): the fingerprint holds the
    recipe, the architecture, the vocabulary and hashes of the corpus, so a partial
    file from another config or corpus is never mixed in. On CPU a resumed run gives
    bit-identical weights to an uninterrupted one. The final file is
    ``{"model_cfg", "vocab", "state_dict", "stats", "image_mean", "image_std"}``.
    Returns the training statistics.
    """
    p = params
    t_start = time.perf_counter()
    dev, log = run.torch_device(), run.log
    cfg = full_model_cfg(model_cfg)
    if p.epochs < 1 or p.batch_size < 2:
        raise ValueError(
            f"mini-CLIP: need epochs >= 1 and batch_size >= 2 (got {p.epochs}, {p.batch_size})"
        )

    images_np, captions, vocab = load_corpus(corpus_dir)
    tokenizer = WordTokenizer(vocab, cfg["context_length"])
    unknown = tokenizer.count_unknown(captions)
    if unknown:
        top = sorted(unknown.items(), key=lambda kv: -kv[1])[:5]
        log(f"clip: warning: {len(unknown)} caption words missing from vocab.txt, e.g. {top}")
    tokens = tokenizer(captions)
    _, groups = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
    groups_t = torch.from_numpy(groups.astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(images_np.transpose(0, 3, 1, 2)))
    del images_np
    n = images.shape[0]
    bs = min(p.batch_size, n)
    n_steps = n // bs
    total_steps = n_steps * p.epochs
    fingerprint = {
        **asdict(p),
        "model_cfg": cfg,
        "vocab": tokenizer.vocab,
        "n_pairs": n,
        "images": file_hash(Path(corpus_dir) / "images.npy"),
        "captions": hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16],
    }

    seed_everything(p.seed)
    model = build_mini_clip(tokenizer.vocab_size, tokenizer.eot_id, **cfg).to(dev)
    optimizer = torch.optim.AdamW(
        _param_groups(model, p.weight_decay), lr=p.lr, betas=(0.9, 0.98), eps=1e-6
    )
    mean = torch.tensor(MINI_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(MINI_STD, device=dev).view(1, 3, 1, 1)
    images, tokens, groups_t = images.to(dev), tokens.to(dev), groups_t.to(dev)
    n_params = sum(q.numel() for q in model.parameters())
    loop = TrainLoop(
        "clip_pretrain",
        out_path,
        modules={"model": model},
        optimizer=optimizer,
        device=dev,
        epochs=p.epochs,
        schedule=lambda base_lr, step: lr_at(step, base_lr, p.warmup_steps, total_steps),
        fingerprint=fingerprint,
        grad_clip=p.grad_clip,
        clip_params=model.parameters(),
        progress=run.progress,
        log=log,
    )
    loop.resume()
    log(
        f"clip: {n} pairs, vocab {tokenizer.vocab_size}, {n_params / 1e6:.2f} M params, "
        f"{p.epochs} epochs x {n_steps} steps of {bs} on {dev}"
    )

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = _epoch_generator(p.seed, epoch)
        perm = torch.randperm(n, generator=gen)
        flips = torch.rand(n, generator=gen) < 0.5
        for b in range(n_steps):
            idx = perm[b * bs : (b + 1) * bs]
            yield idx, flips[idx]

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        idx, flip = batch
        idx_dev = idx.to(dev)
        x = images[idx_dev].float().div_(255.0)
        x = torch.where(flip.to(dev).view(-1, 1, 1, 1), x.flip(-1), x)
        if x.shape[-1] != cfg["image_size"] or x.shape[-2] != cfg["image_size"]:
            x = F.interpolate(x, size=cfg["image_size"], mode="bilinear", align_corners=False)
        x = (x - mean) / std
        with autocast(dev):
            img = model.encode_image(x, normalize=True)
            txt = model.encode_text(tokens[idx_dev], normalize=True)
            loss = multi_positive_loss(
                img.float(), txt.float(), groups_t[idx_dev], model.logit_scale.exp()
            )
        return loss, {"loss": loss}

    def clamp_scale() -> None:
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    loop.run(
        batches,
        step,
        after_step=clamp_scale,
        epoch_end=lambda: {"logit_scale": float(model.logit_scale.detach().exp())},
    )
    losses = loop.column("loss")
    stats: dict[str, Any] = {
        "n_pairs": n,
        "n_params": n_params,
        "vocab_size": tokenizer.vocab_size,
        "epochs": p.epochs,
        "steps": loop.step,
        "batch_size": bs,
        "loss_per_epoch": losses,
        "logit_scale_per_epoch": loop.column("logit_scale"),
        "final_loss": losses[-1] if losses else float("nan"),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "resumed_from_epoch": loop.resumed_from_epoch,
        "sec_per_step": loop.seconds_per_step or float("nan"),
        "seconds": time.perf_counter() - t_start,
        "device": str(dev),
        "unknown_words": len(unknown),
    }
    model.eval()
    loop.finish(
        {
            "model_cfg": cfg,
            "vocab": tokenizer.vocab,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "stats": stats,
            "image_mean": MINI_MEAN,
            "image_std": MINI_STD,
        }
    )
    log(
        f"clip: saved {out_path} (final loss {stats['final_loss']:.4f}, "
        f"logit scale {stats['logit_scale']:.1f})"
    )
    return stats
