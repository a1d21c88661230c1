"""CLIMS losses on hand-made images and a fake CLIP whose features are colours."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pole_core.cam.adapters import Adapter
from pole_core.cam.losses import clims_losses, masked_pairs, present_pairs
from pole_core.cam.network import IMAGENET_MEAN

RED, GREEN, BLUE = torch.eye(3)


class ColourBundle:
    """Fake CLIP: the image feature is the normalised mean colour (differentiable)."""

    embed_dim = 3
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return F.normalize(x.mean(dim=(2, 3)), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        table = {"red": RED, "green": GREEN, "blue": BLUE}
        return torch.stack([table[t] for t in texts])


def scene() -> tuple[torch.Tensor, torch.Tensor]:
    """A red square (rows/cols 4..11) on a blue background, and its mask."""
    img = BLUE.view(3, 1, 1).repeat(1, 16, 16)
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1
    img[:, mask.bool()] = RED.view(3, 1)
    return img.unsqueeze(0), mask


def run(prob_map: torch.Tensor, bg=None, **kw):
    img, _ = scene()
    probs = prob_map.view(1, 1, 16, 16)
    labels = torch.ones(1, 1)
    kw.setdefault("mask_fill", "zero")
    kw.setdefault("weights", {"otm": 1, "btm": 1, "cbs": 1, "reg": 1})
    return clims_losses(probs, img, labels, ColourBundle(), RED.view(1, 1, 3), bg, **kw)


def test_otm_falls_when_foreground_matches_text():
    _, mask = scene()
    good = run(mask)["otm"]
    whole = run(torch.ones(16, 16))["otm"]
    assert good < 1e-3  # cosine 1, clamped at 0.9999
    # fg = whole image: mean colour 0.25 red + 0.75 blue, cos = 0.25 / |(0.25, 0, 0.75)|
    expected = -math.log(0.25 / math.hypot(0.25, 0.75))
    assert whole.item() == pytest.approx(expected, rel=1e-5)
    assert whole > good


def test_btm_rises_when_background_keeps_the_object():
    _, mask = scene()
    half = mask.clone()
    half[:, 8:] = 0  # the CAM covers only the left half of the object
    full = run(mask)["btm"]
    partial = run(half)["btm"]
    assert full.item() == pytest.approx(-math.log(1 - 1e-4), abs=1e-6)  # cos 0 → clamp 1e-4
    assert partial > full + 0.01


def test_cbs_zero_below_threshold_positive_above():
    _, mask = scene()
    bg = torch.stack([BLUE, GREEN])
    below = run(mask, bg=bg)["cbs"]  # fg is pure red: cos(red, blue) = cos(red, green) = 0
    assert below.item() == 0.0
    above = run(torch.ones(16, 16), bg=bg)["cbs"]  # fg is mostly blue
    c = 0.75 / math.hypot(0.25, 0.75)
    assert c > 0.26
    assert above.item() == pytest.approx(-math.log(1 - c), rel=1e-5)  # green stays below τ
    assert run(torch.ones(16, 16), bg=bg, cbs_thresh=0.99)["cbs"].item() == 0.0


def test_reg_is_mean_and_total_is_weighted_sum():
    torch.manual_seed(0)
    p = torch.rand(16, 16)
    out = run(p, bg=torch.stack([BLUE]), weights={"otm": 10, "btm": 24, "cbs": 1, "reg": 0.2})
    assert out["reg"].item() == pytest.approx(p.mean().item(), rel=1e-6)
    total = 10 * out["otm"] + 24 * out["btm"] + out["cbs"] + 0.2 * out["reg"]
    torch.testing.assert_close(out["total"], total)
    assert set(out) >= {"otm", "btm", "cbs", "reg", "total"}


def test_mask_fill_mean_matches_clims_normalised_masking():
    img, _ = scene()
    p = torch.rand(1, 1, 16, 16)
    fg, bg = masked_pairs(p, img, torch.tensor([0]), torch.tensor([0]), mask_fill="mean")
    m = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(fg, m + p * (img - m))
    torch.testing.assert_close(bg, m + (1 - p) * (img - m))
    # after normalisation (x - m)/s this is P ⊙ normalise(X), what CLIMS feeds CLIP
    fg0, _ = masked_pairs(torch.zeros(1, 1, 16, 16), img, torch.tensor([0]), torch.tensor([0]))
    torch.testing.assert_close(fg0, m.expand_as(fg0))


def test_batch_pairs_text_forms_and_gradients():
    torch.manual_seed(0)
    b, c, d = 3, 4, 3
    images = torch.rand(b, 3, 8, 8)
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float)
    logits = torch.randn(b, c, 4, 4, requires_grad=True)
    probs = torch.sigmoid(logits)  # low resolution: upsampled per pair inside
    table = F.normalize(torch.randn(b, c, d), dim=-1)
    bi, ki = present_pairs(labels)
    assert bi.tolist() == [0, 0, 2] and ki.tolist() == [0, 2, 1]
    bundle = ColourBundle()
    bg = F.normalize(torch.randn(2, d), dim=-1)
    kw = {"weights": {"otm": 10, "btm": 24, "cbs": 1, "reg": 0.2}, "clip_input_size": 12}
    ref = clims_losses(probs, images, labels, bundle, table, bg, **kw)
    assert len(bundle.seen) == 1 and bundle.seen[0].shape == (6, 3, 12, 12)  # one call, fg + bg
    forms = [
        table[bi, ki],
        {(x, y): table[x, y] for x, y in zip(bi.tolist(), ki.tolist(), strict=True)},
        lambda bb, kk: table[bb, kk],
    ]
    for form in forms:
        out = clims_losses(probs, images, labels, ColourBundle(), form, bg, **kw)
        for k in ("otm", "btm", "cbs", "reg", "total"):
            torch.testing.assert_close(out[k], ref[k])
    # OTM is the mean over pairs of the single-pair losses
    singles = [
        clims_losses(
            probs[[x]],
            images[[x]],
            F.one_hot(torch.tensor([y]), c).float(),
            ColourBundle(),
            table[[x]],
            bg,
            **kw,
        )["otm"]
        for x, y in zip(bi.tolist(), ki.tolist(), strict=True)
    ]
    torch.testing.assert_close(ref["otm"], torch.stack(singles).mean())
    ad = Adapter(d, reduction=1)
    out = clims_losses(probs, images, labels, ColourBundle(), table, bg, image_adapter=ad, **kw)
    out["total"].backward()
    assert logits.grad is not None and logits.grad[1].abs().sum() > 0  # REG reaches absent classes
    assert ad.fc1.weight.grad is not None and torch.isfinite(ad.fc1.weight.grad).all()


def test_no_present_class_and_cbs_reduction():
    probs = torch.rand(2, 3, 4, 4, requires_grad=True)
    out = clims_losses(
        probs, torch.rand(2, 3, 4, 4), torch.zeros(2, 3), ColourBundle(), torch.zeros(2, 3, 3), None
    )
    assert out["otm"].item() == 0 and out["btm"].item() == 0 and out["cbs"].item() == 0
    out["total"].backward()
    assert probs.grad is not None
    img, _ = scene()
    two = torch.ones(1, 2, 16, 16)
    kw = {"mask_fill": "zero", "weights": {"cbs": 1}}
    s = clims_losses(
        two, img, torch.ones(1, 2), ColourBundle(), RED.expand(1, 2, 3), BLUE[None], **kw
    )["cbs"]
    m = clims_losses(
        two,
        img,
        torch.ones(1, 2),
        ColourBundle(),
        RED.expand(1, 2, 3),
        BLUE[None],
        cbs_reduction="mean",
        **kw,
    )["cbs"]
    torch.testing.assert_close(s, 2 * m)  # CLIMS sums over pairs
    with pytest.raises(ValueError, match="weights"):
        clims_losses(
            two,
            img,
            torch.ones(1, 2),
            ColourBundle(),
            RED.expand(1, 2, 3),
            None,
            weights={"otn": 1},
        )
