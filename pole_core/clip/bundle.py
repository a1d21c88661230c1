"""A frozen CLIP model plus its tokenizer behind one small interface.

CAM training, prompt selection and zero-shot evaluation only need "embed these
images" and "embed these texts", whatever the CLIP is: the in-pipeline
mini-CLIP or an open_clip architecture with real weights (a pretrained tag or
a local checkpoint file). :func:`load_clip` builds the bundle from the config's
``clip`` group; the bundle does resizing and normalisation itself, so callers
hand it images as float tensors in [0, 1].
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..io.checkpoint import load_checkpoint
from .mini import MINI_MEAN, MINI_STD, build_mini_clip, full_model_cfg
from .tokenizer import WordTokenizer

Tokenizer = Callable[[list[str]], torch.Tensor]
_LOG = logging.getLogger(__name__)


def clip_resize_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's own test-time geometry on B×3×H×W floats in [0, 1]: bicubic (antialiased)
    resize of the short side to ``size``, then the centre ``size``×``size`` crop.

    Same arithmetic as open_clip's/OpenAI's preprocess (torchvision ``Resize(size)`` then
    ``CenterCrop(size)``): the long side becomes ``int(size * long / short)``, the crop
    offset ``round((side - size) / 2)``; values are clamped to [0, 1] as PIL's uint8 are.
    """
    if x.ndim != 4:
        raise ValueError(f"clip_resize_crop expects B×C×H×W, got shape {tuple(x.shape)}")
    size = int(size)
    h, w = x.shape[-2:]
    if min(h, w) != size:
        if h <= w:
            new_h, new_w = size, int(size * w / h)
        else:
            new_h, new_w = int(size * h / w), size
        x = F.interpolate(
            x.float(), size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True
        ).clamp_(0.0, 1.0)
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


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


# Keys of OpenAI's CLIP state dicts (ViT and ModifiedResNet towers); anything else
# (logit_bias, text.*, visual.trunk.*, visual.attn_pool.*, layer scales, ...) is open_clip's own.
_OPENAI_KEY = re.compile(
    r"(positional_embedding|text_projection|logit_scale|token_embedding\.weight"
    r"|ln_final\.(weight|bias)|input_resolution|context_length|vocab_size"
    r"|(visual\.)?transformer\.resblocks\.\d+\.(attn\.(in_proj_weight|in_proj_bias"
    r"|out_proj\.(weight|bias))|ln_[12]\.(weight|bias)|mlp\.c_(fc|proj)\.(weight|bias))"
    r"|visual\.(class_embedding|positional_embedding|proj|conv1\.weight"
    r"|ln_(pre|post)\.(weight|bias))"
    r"|visual\.(conv[123]|bn[123]|layer[1-4]|attnpool)\.[\w.]+)"
)
_OPENAI_REQUIRED = ("positional_embedding", "text_projection", "logit_scale")
_OPENAI_TOWER = (
    "visual.transformer.resblocks.0.attn.in_proj_weight",
    "visual.layer1.0.conv1.weight",
)
# Entries of OpenAI's TorchScript archives that are not weights.
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def is_openai_layout(state_dict: dict) -> bool:
    """True when every key is one of OpenAI's CLIP keys (ViT or ResNet tower) and the
    characteristic ones are present. open_clip's standard CLIP class has the same keys, so a
    plain state dict of it reads as OpenAI's too (set ``quick_gelu`` for GELU-trained weights)."""
    keys = set(state_dict)
    return (
        all(k in keys for k in _OPENAI_REQUIRED)
        and any(k in keys for k in _OPENAI_TOWER)
        and all(_OPENAI_KEY.fullmatch(k) for k in keys)
    )


def _is_torchscript_archive(path: Path) -> bool:
    """A torch.jit.save zip (code/ and constants.pkl), as OpenAI's released CLIP .pt files."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def read_clip_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """State dict of a local CLIP weights file and its layout: ``"torchscript"`` (an OpenAI
    TorchScript archive), ``"openai"`` (OpenAI's keys, see :func:`is_openai_layout`) or
    ``"open_clip"`` (open_clip-only keys, a training checkpoint ``{"epoch", "state_dict", ...}``
    or DDP ``module.`` keys). Errors are one line naming the file."""
    path = Path(path)
    if _is_torchscript_archive(path):
        try:
            state = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except Exception as err:  # torch.jit raises many types for damaged archives
            raise ValueError(
                f"{path}: unreadable TorchScript archive ({_mismatch_summary(err)})"
            ) from None
        for key in _JIT_EXTRAS:
            state.pop(key, None)
        return state, "torchscript"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for bad files
        raise ValueError(f"{path}: unreadable checkpoint ({_mismatch_summary(err)})") from None
    trained_here = False
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        trained_here = bool({"epoch", "optimizer", "name"} & set(obj))  # open_clip's train.py
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path}: not a CLIP state dict (got {type(obj).__name__})")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
        trained_here = True
    layout = "openai" if not trained_here and is_openai_layout(state) else "open_clip"
    for key in _JIT_EXTRAS:
        state.pop(key, None)
    return state, layout


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip logs "initialized randomly" for a model whose weights we load right after."""
    flt = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _load_state_into(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """open_clip's load_checkpoint on an in-memory state dict (strict).

    OpenAI's half-precision tensors are widened first, so resizing works on them too."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    state = open_clip.convert.convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = open_clip.model.convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and own is not None and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    open_clip.model.resize_pos_embed(state, model)
    open_clip.model.resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


def _uses_quick_gelu(model: torch.nn.Module) -> bool:
    return any(isinstance(m, open_clip.transformer.QuickGELU) for m in model.modules())


def _load_open_clip(
    model_name: str | None,
    pretrained: str | None,
    checkpoint: str | None,
    input_size: int | None,
    quick_gelu: bool | None,
    dev: torch.device,
) -> ClipBundle:
    if not model_name:
        raise ValueError("clip: source 'open_clip' needs clip.model (e.g. ViT-B-32, RN50)")
    has_schema = model_name.startswith(("hf-hub:", "local-dir:"))
    if not has_schema and model_name not in open_clip.list_models():
        raise ValueError(
            f"clip.model: unknown open_clip architecture {model_name!r} "
            "(e.g. ViT-B-32, ViT-B-16, RN50; see open_clip.list_models())"
        )
    if pretrained and checkpoint:
        _LOG.warning(
            "clip: clip.checkpoint %s wins over clip.pretrained %r (the tag is not used)",
            checkpoint,
            pretrained,
        )
        pretrained = None
    weights = checkpoint or pretrained
    kwargs = {}
    if input_size:
        kwargs["force_image_size"] = int(input_size)
    state = None
    if not has_schema:
        if weights is None:
            raise ValueError(
                f"clip: open_clip model {model_name} needs clip.pretrained (a tag such as 'openai') "
                "or clip.checkpoint (a local file); refusing to run CLIP at random init"
            )
        tag_cfg = {} if checkpoint else open_clip.pretrained.get_pretrained_cfg(model_name, weights)
        if tag_cfg:
            # OpenAI weights were trained with QuickGELU; open_clip 3.x only warns about it.
            auto, why = bool(tag_cfg.get("quick_gelu", False)), f"pretrained tag {weights!r}"
        else:
            path = Path(weights)
            if not path.is_file():
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                what = (
                    "checkpoint not found"
                    if checkpoint
                    else f"neither a file nor a known tag of {model_name} {tags}"
                )
                raise FileNotFoundError(f"{path}: {what}")
            state, layout = read_clip_checkpoint(path)
            auto, why = layout in ("torchscript", "openai"), f"{layout} layout of {path.name}"
        if quick_gelu is None:
            if not auto and (open_clip.get_model_config(model_name) or {}).get("quick_gelu"):
                auto, why = True, f"architecture {model_name}"  # a "-quickgelu" name
            quick_gelu = auto
        else:
            why = "clip.quick_gelu"
        # As model kwarg it also overrides a "-quickgelu" config when false.
        kwargs["quick_gelu"] = bool(quick_gelu)
        _LOG.info("clip: %s with QuickGELU %s (%s)", model_name, bool(quick_gelu), why)
    sized = f" at input size {input_size}" if input_size else ""
    try:
        if state is not None:
            with _quiet_random_init():
                model = open_clip.create_model(
                    model_name,
                    pretrained=None,
                    device="cpu",
                    force_quick_gelu=bool(quick_gelu),
                    **kwargs,
                )
        else:
            model, _, _ = open_clip.create_model_and_transforms(
                model_name,
                pretrained=weights,
                device="cpu",
                force_quick_gelu=bool(quick_gelu),
                **kwargs,
            )
    except Exception as err:  # torch/open_clip raise many types for bad or mismatched files
        text = str(err)
        if weights and Path(weights).is_file():
            if "state_dict" in text or "size mismatch" in text or isinstance(err, KeyError):
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
    if state is not None:
        try:
            _load_state_into(model, state)
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{weights}: checkpoint does not match architecture {model_name}{sized} "
                f"({_mismatch_summary(err)})"
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
        name=f"{model_name}:{Path(weights).name if state is not None else weights}",
    )


def load_clip(
    source: str = "mini",
    *,
    model: str | None = None,
    pretrained: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    input_size: int | None = None,
    device: str | torch.device = "cpu",
    quick_gelu: bool | None = None,
) -> ClipBundle:
    """Build a frozen :class:`ClipBundle` from the config's ``clip`` group.

    - ``source="mini"``: ``checkpoint`` is a file written by ``train_mini_clip``.
    - ``source="open_clip"``: ``model`` is an open_clip architecture name
      (ViT-B-32, ViT-B-16, RN50, ...) and the weights are either ``pretrained`` (a tag
      such as "openai", downloaded by open_clip, or a file path) or ``checkpoint`` (a
      local file: a state dict, an open_clip training checkpoint or one of OpenAI's
      TorchScript ``.pt`` archives). With both, ``checkpoint`` wins (logged).

    ``quick_gelu``: None = auto, True for OpenAI weights: a tag whose open_clip config
    says so, a TorchScript archive, or a file in OpenAI's key layout
    (:func:`read_clip_checkpoint`); True/False force it (also over a ``-quickgelu``
    model name). ``input_size`` overrides the model's native input size (ViT
    positional embeddings are interpolated); default: native. Errors are one line
    naming the file: missing checkpoint, or "<path>: checkpoint does not match
    architecture <model> (...)".
    """
    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    checkpoint = str(checkpoint) if checkpoint is not None else None
    if source == "mini":
        return _load_mini(checkpoint, input_size, dev)
    if source == "open_clip":
        return _load_open_clip(model, pretrained, checkpoint, input_size, quick_gelu, dev)
    raise ValueError(f"clip.source must be 'mini' or 'open_clip' (got {source!r})")
