"""A frozen CLIP model plus its tokenizer behind one small interface.

CAM training, prompt selection and zero-shot evaluation only need "embed these
images" and "embed these texts", whatever the CLIP is: the in-pipeline
mini-CLIP or an open_clip architecture with real weights (a pretrained tag or
a local checkpoint file). :func:`load_clip` builds the bundle from the config's
``clip`` group; the bundle does resizing and normalisation itself, so callers
hand it images as float tensors in [0, 1].
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..io.checkpoint import load_checkpoint
from .mini import MINI_MEAN, MINI_STD, build_mini_clip, full_model_cfg
from .tokenizer import WordTokenizer

Tokenizer = Callable[[list[str]], torch.Tensor]


class ClipBundle:
    """Frozen CLIP (eval mode, ``requires_grad=False``) with tokenizer and preprocessing.

    Gradients flow through :meth:`encode_image` to its input (CLIMS trains the
    CAM network through the frozen image encoder) but never into CLIP weights.
    Text embeddings are constant, so :meth:`encode_text` runs without autograd
    and caches them by text.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        device: torch.device | str = "cpu",
        name: str = "clip",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.input_size = int(input_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        self._text_cache: dict[str, torch.Tensor] = {}
        self.logit_scale = float(self.model.logit_scale.detach().exp().item())
        self.embed_dim = int(self.encode_text(["a"]).shape[1])
        self._text_cache.clear()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Resize (bilinear) to ``input_size`` when needed and normalise; differentiable."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"encode_image expects B×3×H×W floats in [0,1], got shape {tuple(x.shape)}"
            )
        x = x.to(self.device, dtype=torch.float32)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return (x - self._mean_t) / self._std_t

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings B×D of images in [0, 1]; gradients reach ``x``."""
        return F.normalize(self.model.encode_image(self.preprocess(x)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings B×D (cached by text, batched for the new ones)."""
        if isinstance(texts, str):
            texts = [texts]
        new = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if new:
            tokens = self.tokenizer(new).to(self.device)
            feats = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
            for text, feat in zip(new, feats, strict=True):
                self._text_cache[text] = feat
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.stack([self._text_cache[t] for t in texts])

    def dense_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location embeddings B×D×h×w (L2-normalised) by the MaskCLIP value path.

        The last attention block's query/key mixing is skipped: each token's
        value projection goes through the output projection, the final norm and
        the image projection, landing in the joint text space. Plain projected
        patch tokens make useless dense maps; this path gives usable
        training-free CAMs (CLIP-ES/MaskCLIP). ViT (nn.MultiheadAttention blocks)
        and ModifiedResNet (attention-pool value path) are supported.
        """
        visual = self.model.visual
        x = self.preprocess(x)
        if isinstance(visual, open_clip.transformer.VisionTransformer):
            return _vit_value_path(visual, x)
        if isinstance(visual, open_clip.modified_resnet.ModifiedResNet):
            return _resnet_value_path(visual, x)
        raise NotImplementedError(
            f"dense_features: unsupported vision tower {type(visual).__name__}"
        )

    def __repr__(self) -> str:
        return (
            f"ClipBundle({self.name}, input_size={self.input_size}, embed_dim={self.embed_dim}, "
            f"device={self.device})"
        )


def _vit_value_path(
    visual: open_clip.transformer.VisionTransformer, x: torch.Tensor
) -> torch.Tensor:
    blocks = visual.transformer.resblocks
    last = blocks[-1]
    attn = getattr(last, "attn", None)
    if visual.attn_pool is not None or not isinstance(attn, torch.nn.MultiheadAttention):
        raise NotImplementedError("dense_features: ViT variant without a plain attention block")
    b, _, h, w = x.shape
    gh, gw = h // visual.patch_size[0], w // visual.patch_size[1]
    tokens = visual._embeds(x)
    if not visual.transformer.batch_first:
        tokens = tokens.transpose(0, 1)
    for blk in blocks[:-1]:
        tokens = blk(tokens)
    if not visual.transformer.batch_first:
        tokens = tokens.transpose(0, 1)
    width = tokens.shape[-1]
    y = last.ln_1(tokens)
    bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = F.linear(y, attn.in_proj_weight[2 * width :], bias)
    v = attn.out_proj(v)
    v = visual.ln_post(v)
    if visual.proj is not None:
        v = v @ visual.proj
    v = v[:, 1:].reshape(b, gh, gw, -1).permute(0, 3, 1, 2)
    return F.normalize(v.float(), dim=1)


def _resnet_value_path(
    visual: open_clip.modified_resnet.ModifiedResNet, x: torch.Tensor
) -> torch.Tensor:
    x = visual.stem(x.to(visual.conv1.weight.dtype))
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    v = x.permute(0, 2, 3, 1)  # B×h×w×C
    v = pool.c_proj(pool.v_proj(v))
    return F.normalize(v.permute(0, 3, 1, 2).float(), dim=1)


def _mismatch_summary(err: BaseException) -> str:
    """Condense torch's multi-line state-dict error into one short clause."""
    text = str(err)
    parts = []
    for label, pattern in (
        ("missing", r"Missing key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)"),
        ("unexpected", r"Unexpected key\(s\) in state_dict: (.*?)\.\s*(?:\n|$)"),
    ):
        m = re.search(pattern, text, flags=re.S)
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            parts.append(f"{len(keys)} {label} keys, e.g. {keys[0]}" if keys else label)
    shapes = re.findall(r"size mismatch for ([^:]+):", text)
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches, e.g. {shapes[0]}")
    if not parts:
        first = text.strip().splitlines()[0] if text.strip() else ""
        parts.append(f"{type(err).__name__}: {first[:200]}")
    return "; ".join(parts)


def _load_mini(checkpoint: str | None, input_size: int | None, dev: torch.device) -> ClipBundle:
    if not checkpoint:
        raise ValueError(
            "clip: source 'mini' needs clip.checkpoint (a file written by train_mini_clip)"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CLIP checkpoint not found")
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"model_cfg", "vocab", "state_dict"} <= set(state):
        raise ValueError(f"{path}: not a mini-CLIP checkpoint (needs model_cfg, vocab, state_dict)")
    cfg = full_model_cfg(state["model_cfg"])
    tokenizer = WordTokenizer(state["vocab"], cfg["context_length"])
    state_dict = dict(state["state_dict"])
    native = cfg["image_size"]
    if input_size and input_size != native:
        # A different input size means interpolated positional embeddings.
        cfg["image_size"] = int(input_size)
    try:
        model = build_mini_clip(tokenizer.vocab_size, tokenizer.eot_id, **cfg)
        if cfg["image_size"] != native:
            open_clip.model.resize_pos_embed(state_dict, model, interpolation="bilinear")
        model.load_state_dict(state_dict)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(
            f"{path}: checkpoint does not match architecture mini-CLIP ({_mismatch_summary(err)})"
        ) from None
    return ClipBundle(
        model,
        tokenizer,
        input_size=cfg["image_size"],
        mean=tuple(state.get("image_mean", MINI_MEAN)),
        std=tuple(state.get("image_std", MINI_STD)),
        device=dev,
        name=f"mini:{path.name}",
    )


def _load_open_clip(
    model_name: str | None,
    pretrained: str | None,
    checkpoint: str | None,
    input_size: int | None,
    quick_gelu: bool,
    dev: torch.device,
) -> ClipBundle:
    if not model_name:
        raise ValueError("clip: source 'open_clip' needs clip.model (e.g. ViT-B-16, RN50)")
    has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and model_name not in open_clip.list_models():
        raise ValueError(
            f"clip.model: unknown open_clip architecture {model_name!r} "
            "(e.g. ViT-B-16, ViT-B-32, RN50; see open_clip.list_models())"
        )
    if pretrained and checkpoint:
        raise ValueError(
            "clip: give either clip.pretrained (a tag) or clip.checkpoint (a file), not both"
        )
    weights = checkpoint or pretrained
    if not has_schema:
        if weights is None:
            raise ValueError(
                f"clip: open_clip model {model_name} needs clip.pretrained (a tag such as 'openai') "
                "or clip.checkpoint (a local file); refusing to run CLIP at random init"
            )
        is_tag = open_clip.pretrained.get_pretrained_cfg(model_name, weights) != {}
        if checkpoint or not is_tag:
            path = Path(weights)
            if not path.is_file():
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                what = (
                    "checkpoint not found"
                    if checkpoint
                    else f"neither a file nor a known tag of {model_name} {tags}"
                )
                raise FileNotFoundError(f"{path}: {what}")
        else:
            # OpenAI weights were trained with QuickGELU; open_clip 3.x only warns about it.
            quick_gelu = quick_gelu or bool(
                open_clip.pretrained.get_pretrained_cfg(model_name, weights).get(
                    "quick_gelu", False
                )
            )
    kwargs = {}
    if input_size:
        kwargs["force_image_size"] = int(input_size)
    try:
        model, _, _ = open_clip.create_model_and_transforms(
            model_name,
            pretrained=weights,
            device="cpu",
            force_quick_gelu=quick_gelu,
            **kwargs,
        )
    except Exception as err:  # torch/open_clip raise many types for bad or mismatched files
        text = str(err)
        if weights and Path(weights).is_file():
            if "state_dict" in text or "size mismatch" in text or isinstance(err, KeyError):
                sized = f" at input size {input_size}" if input_size else ""
                raise ValueError(
                    f"{weights}: checkpoint does not match architecture {model_name}{sized} "
                    f"({_mismatch_summary(err)})"
                ) from None
            raise ValueError(
                f"{weights}: unreadable or incompatible checkpoint for {model_name} ({_mismatch_summary(err)})"
            ) from None
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        raise RuntimeError(
            f"clip: cannot create open_clip model {model_name} ({first[:300]})"
        ) from None
    pp = open_clip.model.get_model_preprocess_cfg(model)
    size = pp.get("size", input_size or 224)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"clip: non-square input size {tuple(size)} is not supported")
        size = size[0]
    mean = pp.get("mean", open_clip.constants.OPENAI_DATASET_MEAN)
    std = pp.get("std", open_clip.constants.OPENAI_DATASET_STD)
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipBundle(
        model,
        tokenizer,
        input_size=int(size),
        mean=tuple(mean),
        std=tuple(std),
        device=dev,
        name=f"{model_name}:{Path(weights).name if checkpoint else weights}",
    )


def load_clip(
    source: str = "mini",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    input_size: int | None = None,
    device: str | torch.device = "cpu",
    quick_gelu: bool = False,
) -> ClipBundle:
    """Build a frozen :class:`ClipBundle` from the config's ``clip`` group.

    - ``source="mini"``: ``checkpoint`` is a file written by ``train_mini_clip``.
    - ``source="open_clip"``: ``model`` is an open_clip architecture name
      (ViT-B-16, RN50, ...) and the weights are either ``pretrained`` (a tag such
      as "openai", downloaded by open_clip, or a file path) or ``checkpoint`` (a
      local state-dict file). OpenAI tags switch on QuickGELU automatically; for
      OpenAI weights from a local file pass ``quick_gelu=True`` (or use the
      ``-quickgelu`` model name).

    ``input_size`` overrides the model's native input size (ViT positional
    embeddings are interpolated); default: native. Errors are one line naming
    the file: missing checkpoint, or "<path>: checkpoint does not match
    architecture <model> (...)".
    """
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    checkpoint = str(checkpoint) if checkpoint is not None else None
    if source == "mini":
        return _load_mini(checkpoint, input_size, dev)
    if source == "open_clip":
        return _load_open_clip(model, pretrained, checkpoint, input_size, quick_gelu, dev)
    raise ValueError(f"clip.source must be 'mini' or 'open_clip' (got {source!r})")
