"""Tests of pole_core.cam.clip_es: softmax Grad-CAM, class-aware attention affinity, contract."""

from __future__ import annotations

import math
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from pole_core.cam import clip_es as ce
from pole_core.clip import WordTokenizer, build_mini_clip

WIDTH, PATCH, SIZE = 64, 8, 32
GRID = SIZE // PATCH


def tiny_clip(pool_type: str = "avg", layers: int = 2, seed: int = 0) -> open_clip.CLIP:
    """A random-init open_clip.CLIP: ViT width 64, patch 8, 32 px (a 4x4 grid), embed dim 64."""
    torch.manual_seed(seed)
    vision = CLIPVisionCfg(
        layers=layers,
        width=WIDTH,
        head_width=32,
        patch_size=PATCH,
        image_size=SIZE,
        pool_type=pool_type,
    )
    text = CLIPTextCfg(context_length=8, vocab_size=16, width=32, heads=2, layers=1)
    return open_clip.CLIP(embed_dim=WIDTH, vision_cfg=vision, text_cfg=text).eval()


def directions() -> list[torch.Tensor]:
    """Four orthonormal, zero-mean directions of the token space (LayerNorm keeps their shape)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(WIDTH, 4, generator=g)
    q = q - q.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(q)
    return [F.normalize(c - c.mean(), dim=0) for c in q.T]


def constructed_clip(pool_type: str, channel_dirs: list[torch.Tensor]) -> open_clip.CLIP:
    """A ViT whose patch token is the sum of ``channel_dirs[c]`` weighted by channel c's patch mean.

    No positions, no class embedding, the first block and both MLPs are identities, the
    last block's attention is uniform (zero queries/keys) with identity values and output,
    the image projection is the identity. So a patch painted in channel c carries exactly
    direction c, and the embedding mixes the patches' directions.
    """
    model = tiny_clip(pool_type)
    v = model.visual
    eye = torch.eye(WIDTH)
    with torch.no_grad():
        v.class_embedding.zero_()
        v.positional_embedding.zero_()
        v.proj.copy_(eye)
        v.conv1.weight.zero_()
        for c, d in enumerate(channel_dirs):
            v.conv1.weight[:, c] = d[:, None, None] / (PATCH * PATCH)
        for blk in v.transformer.resblocks:
            blk.attn.out_proj.weight.zero_()
            blk.attn.out_proj.bias.zero_()
            blk.mlp.c_proj.weight.zero_()
            blk.mlp.c_proj.bias.zero_()
        last = v.transformer.resblocks[-1]
        last.attn.in_proj_weight.zero_()
        last.attn.in_proj_bias.zero_()
        last.attn.in_proj_weight[2 * WIDTH :].copy_(eye)
        last.attn.out_proj.weight.copy_(eye)
    return model


def paint(cells_by_channel: dict[int, list[tuple[int, int]]], fill: int = 2) -> torch.Tensor:
    """A 3x32x32 image: channel ``fill`` = 1 everywhere except the listed patches, which carry
    only their own channel."""
    img = torch.zeros(3, SIZE, SIZE)
    img[fill] = 1.0
    for channel, cells in cells_by_channel.items():
        for r, c in cells:
            img[:, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = 0.0
            img[channel, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = 1.0
    return img


# --------------------------------------------------------------------------- (a) Grad-CAM


@pytest.mark.parametrize("pool_type", ["avg", "tok"])
@pytest.mark.parametrize("cell", [(1, 2), (3, 0)])
def test_gradcam_peaks_at_the_patch_carrying_the_class(pool_type, cell):
    u, v, n, b = directions()
    model = constructed_clip(pool_type, [u, v, n])
    image = paint({0: [cell]})  # one patch carries u, the rest the neutral direction n
    text = torch.stack([u, b, n])  # class 0 = u, class 1 = b, one background prompt = n
    grid = ce.gradcam_grid(model, image[None], [0], text, num_classes=2)
    cam = grid.cam[0, 0]
    assert cam.shape == (GRID, GRID)
    assert divmod(int(cam.argmax()), GRID) == cell
    others = cam.clone()
    others[cell] = 0
    assert cam[cell] > 0.5 and others.max() < 0.05 * cam[cell]
    assert grid.attn.shape == (1, GRID * GRID, GRID * GRID)


@pytest.mark.parametrize("pool_type", ["avg", "tok"])
def test_gradcam_matches_a_hooked_reference(pool_type):
    """Against Grad-CAM by a hook on the model's own forward (trained input size, one class
    per backward): softmax over [labelled classes, bg], grads averaged over patch tokens."""
    model = tiny_clip(pool_type, layers=3, seed=4)
    torch.manual_seed(4)
    x = torch.randn(1, 3, SIZE, SIZE)
    text = F.normalize(torch.randn(4 + 3, WIDTH), dim=-1)
    labels = [2, 0]
    got = ce.gradcam_grid(model, x, labels, text, num_classes=4).cam[0]
    bank = torch.cat([text[labels], text[4:]])
    ln_1 = model.visual.transformer.resblocks[-1].ln_1
    for row in range(len(labels)):
        seen = []
        handle = ln_1.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
        emb = F.normalize(model.encode_image(x), dim=-1)
        handle.remove()
        prob = (model.logit_scale.exp() * emb @ bank.t()).softmax(-1)[0, row]
        (grad,) = torch.autograd.grad(prob, seen[0])
        act, grad = seen[0][0, 1:].detach(), grad[0, 1:]
        cam = F.relu(act @ grad.mean(0))
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        torch.testing.assert_close(got[row].flatten(), cam, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pool_type", ["avg", "tok"])
def test_image_embedding_is_the_models(pool_type):
    model = tiny_clip(pool_type, layers=3, seed=1)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ce.image_embedding(model, x), model.encode_image(x))
        # another input size runs on the interpolated positions
        assert ce.image_embedding(model, torch.randn(1, 3, 40, 56)).shape == (1, WIDTH)


def test_pos_embed_interpolation():
    pos = torch.randn(1 + 4 * 4, 8)
    assert ce.interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos
    out = ce.interpolate_pos_embed(pos, (4, 4), (6, 10))
    assert out.shape == (1 + 60, 8)
    torch.testing.assert_close(out[0], pos[0])
    const = torch.ones(1 + 16, 8)
    torch.testing.assert_close(ce.interpolate_pos_embed(const, (4, 4), (3, 7)), torch.ones(22, 8))
    with pytest.raises(ValueError, match="rows"):
        ce.interpolate_pos_embed(pos, (3, 3), (4, 4))


# --------------------------------------------------------------------------- (b) competition


def test_softmax_suppresses_a_competing_class_region():
    """Class B's text is partly similar to class A's; on a raw-logit Grad-CAM B's map lights
    up A's patches too, with the shared softmax (A labelled as well) they are suppressed."""
    u, v, n, b = directions()
    model = constructed_clip("avg", [u, v, n])
    a_cells, b_cells = [(0, 0), (0, 1), (1, 0), (1, 1)], [(3, 2), (3, 3)]
    image = paint({0: a_cells, 1: b_cells})
    text = torch.stack([u, F.normalize(v + 0.8 * u, dim=0), b])  # classes A, B; bg unrelated

    def b_map(**kw):
        return ce.gradcam_grid(model, image[None], **kw).cam[0, -1]

    raw = b_map(label_indices=[0, 1], text=text, num_classes=2, use_softmax=False)
    soft = b_map(label_indices=[0, 1], text=text, num_classes=2)
    assert raw[3, 3] == pytest.approx(1.0, abs=1e-3) and soft[3, 3] == pytest.approx(1.0, abs=1e-3)
    assert raw[0, 0] > 0.3  # plain Grad-CAM: B's map also covers A's region
    assert soft[0, 0] < 0.05  # class-aware: A's region belongs to A
    # CLIP-ES lets only the labelled classes compete: with B alone, A's region is not claimed
    alone = b_map(label_indices=[1], text=text, num_classes=2)
    assert alone[0, 0] > 0.3
    every = b_map(label_indices=[1], text=text, num_classes=2, compete="all")
    assert every[0, 0] < 0.05


# --------------------------------------------------------------------------- (c) CAA


def test_box_mask_is_the_union_of_region_boxes():
    cam = torch.zeros(2, 8, 10)
    cam[0, 1, 1:4] = 1.0  # an L-shaped region: its box also covers (2..3, 2..3)
    cam[0, 2:4, 1] = 0.9
    cam[0, 6, 7:9] = 0.5  # a second region, above 0.4 * max
    cam[0, 0, 9] = 0.3  # below the threshold: no box
    expected = torch.zeros(2, 8, 10, dtype=torch.bool)
    expected[0, 1:4, 1:4] = True
    expected[0, 6, 7:9] = True
    assert torch.equal(ce.box_mask(cam, 0.4), expected)  # map 1 is all zero: no box
    # diagonal neighbours are one region (8-connectivity)
    diag = torch.zeros(1, 5, 5)
    diag[0, 1, 1] = diag[0, 2, 2] = 1.0
    assert int(ce.box_mask(diag).sum()) == 4
    # a higher threshold drops the weaker region
    assert not ce.box_mask(cam, 0.7)[0, 6].any()


def test_sinkhorn_affinity_is_symmetric_and_balanced():
    attn = torch.rand(2, 12, 12) + 0.01
    aff = ce.sinkhorn_affinity(attn)
    torch.testing.assert_close(aff, aff.transpose(-1, -2))
    assert (aff >= 0).all()
    balanced = ce.sinkhorn_affinity(attn, iters=200, power=1)
    torch.testing.assert_close(balanced.sum(-1), torch.ones(2, 12), atol=1e-4, rtol=0)
    torch.testing.assert_close(balanced.sum(-2), torch.ones(2, 12), atol=1e-4, rtol=0)
    one = ce.sinkhorn_affinity(attn, power=1)
    torch.testing.assert_close(aff, one @ one)


def test_caa_keeps_the_map_inside_its_box():
    torch.manual_seed(0)
    h, w = 6, 7
    affinity = ce.sinkhorn_affinity(torch.rand(h * w, h * w))
    cam = torch.rand(2, h, w) * 0.3  # low-level noise everywhere
    cam[0, 1:3, 1:3] = 1.0
    cam[1, 4, 4:6] = 1.0
    box = ce.box_mask(cam, 0.4)
    masked = ce.caa_refine(cam, affinity, mask_output=True)
    assert masked.shape == (2, h, w)
    assert (masked[~box] == 0).all() and (masked[box] > 0).all()
    assert masked.amax(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    # CLIP-ES's refinement: only CAM values inside the boxes propagate, so the noise
    # outside them (below the threshold) does not change the result ...
    refined = ce.caa_refine(cam, affinity)
    quieter = cam.clone()
    quieter[~box] *= 0.1
    torch.testing.assert_close(ce.caa_refine(quieter, affinity), refined)
    # ... while the values inside do, and the refinement is not the identity
    louder = cam.clone()
    louder[0, 1, 1] = 0.5
    assert not torch.allclose(ce.caa_refine(louder, affinity)[0], refined[0])
    assert not torch.allclose(refined, cam)
    with pytest.raises(ValueError, match="grid"):
        ce.caa_refine(cam, affinity[:-1, :-1])
    # an all-zero CAM has no box and stays zero
    assert (ce.caa_refine(torch.zeros(1, h, w), affinity) == 0).all()


# --------------------------------------------------------------------------- (d) contract


def check_contract(cam: np.ndarray, k: int, size: tuple[int, int]) -> None:
    assert isinstance(cam, np.ndarray) and cam.dtype == np.float32
    assert cam.shape == (k, *size)
    assert np.isfinite(cam).all()
    assert cam.min(initial=0.0) >= 0.0 and cam.max(initial=0.0) <= 1.0


@pytest.mark.parametrize("size", [(37, 53), (40, 24)])
@pytest.mark.parametrize("use_caa", [True, False])
def test_output_contract_and_label_order(size, use_caa):
    model = tiny_clip("avg")
    torch.manual_seed(2)
    image = torch.randn(3, *size)
    text = F.normalize(torch.randn(5 + 3, WIDTH), dim=-1)
    cam = ce.clip_es_cams(model, image, [3, 1], text, num_classes=5, use_caa=use_caa)
    check_contract(cam, 2, size)
    assert (cam.max(axis=(1, 2)) > 0.9).all()
    swapped = ce.clip_es_cams(model, image, np.array([1, 3]), text, num_classes=5, use_caa=use_caa)
    # the label order moves rows inside batched kernels, whose float sums may differ
    # in the last bits on some CPUs; a label mix-up would differ by tenths
    np.testing.assert_allclose(swapped[::-1], cam, atol=1e-4)
    # multi-scale with flips, and the stride-4 map of the CAM store from the same pass
    full, s4 = ce.clip_es_cams_s4(
        model, image, [3, 1], text, num_classes=5, scales=(1.0, 0.5, 1.5), flip=True
    )
    check_contract(full, 2, size)
    check_contract(s4, 2, (math.ceil(size[0] / 4), math.ceil(size[1] / 4)))
    assert not np.allclose(full, cam)


def test_caa_changes_the_maps_and_empty_labels():
    model = tiny_clip("tok")
    image = torch.randn(3, 32, 48)
    text = F.normalize(torch.randn(4 + 2, WIDTH), dim=-1)
    with_caa = ce.clip_es_cams(model, image, [0, 2], text, num_classes=4)
    without = ce.clip_es_cams(model, image, [0, 2], text, num_classes=4, use_caa=False)
    assert not np.allclose(with_caa, without, atol=1e-3)
    check_contract(ce.clip_es_cams(model, image, [], text, num_classes=4), 0, (32, 48))


def test_bad_inputs_are_refused():
    model = tiny_clip()
    image, text = torch.randn(3, 32, 32), F.normalize(torch.randn(6, WIDTH), dim=-1)
    with pytest.raises(ValueError, match="repeat"):
        ce.clip_es_cams(model, image, [1, 1], text, num_classes=4)
    with pytest.raises(ValueError, match="outside"):
        ce.clip_es_cams(model, image, [4], text, num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        ce.clip_es_cams(model, image, [0], text[:3], num_classes=4)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        ce.clip_es_cams(model, image[None], [0], text, num_classes=4)
    with pytest.raises(ValueError, match="multiple of the patch"):
        ce.gradcam_grid(model, torch.randn(1, 3, 30, 32), [0], text, num_classes=4)


def test_runs_under_inference_mode_and_keeps_train_mode():
    model = tiny_clip().train()
    text = F.normalize(torch.randn(5, WIDTH), dim=-1)
    with torch.inference_mode():
        image = torch.randn(3, 32, 40)
        cam = ce.clip_es_cams(model, image, [1], text, num_classes=3)
    check_contract(cam, 1, (32, 40))
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_text_features_average_normalised_templates():
    words = ["ship", "plane", "water", "sky", "a", "photo", "of", "clean", "origami", "."]
    tok = WordTokenizer(words, context_length=10)
    torch.manual_seed(0)
    model = build_mini_clip(
        tok.vocab_size,
        tok.eot_id,
        embed_dim=32,
        width=32,
        layers=1,
        head_width=16,
        text_width=32,
        text_layers=1,
        text_heads=2,
        context_length=10,
        image_size=16,
        patch_size=8,
    ).eval()
    templates = ["a clean origami {}.", "a photo of a {}."]
    feats = ce.text_features(model, tok, ["ship", "plane"], ["water", "sky", "a"], templates)
    assert feats.shape == (5, 32) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(5))
    with torch.no_grad():
        each = F.normalize(
            model.encode_text(tok(["a clean origami plane.", "a photo of a plane."])), dim=-1
        )
    torch.testing.assert_close(feats[1], F.normalize(each.mean(0), dim=0))
    single = ce.text_features(model, tok, ["ship"], [], ce.CLIP_ES_TEMPLATE)
    with torch.no_grad():
        expected = F.normalize(model.encode_text(tok(["a clean origami ship."])), dim=-1)
    torch.testing.assert_close(single, expected)
    with pytest.raises(ValueError, match="slot"):
        ce.text_features(model, tok, ["ship"], [], "no slot")


def test_clip_es_defaults():
    assert ce.CLIP_ES_TEMPLATE == "a clean origami {}."
    assert (
        len(ce.VOC_CLASS_NAMES) == 20
        and ce.VOC_CLASS_NAMES[14] == "person with clothes,people,human"
    )
    assert len(ce.VOC_BG_PROMPTS) == 25 and {"keyboard", "sign", "railroad"} <= set(
        ce.VOC_BG_PROMPTS
    )
    assert len(ce.COCO_CLASS_NAMES) == 80 and len(ce.COCO_BG_PROMPTS) == 23
    assert (ce.BOX_THRESHOLD_VOC, ce.BOX_THRESHOLD_COCO) == (0.4, 0.7)
    assert (ce.ATTN_LAYERS, ce.SINKHORN_ITERS, ce.AFFINITY_POWER) == (8, 3, 2)


def test_real_architecture_smoke():
    """ViT-B-16 at random init (class-token pooling, positions interpolated to 14x20)."""
    t0 = time.perf_counter()
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    text = ce.text_features(model, tokenizer, ce.VOC_CLASS_NAMES[:4], ce.VOC_BG_PROMPTS[:4])
    assert text.shape == (8, 512)
    torch.manual_seed(0)
    image = torch.randn(3, 224, 320)
    cam, s4 = ce.clip_es_cams_s4(model, image, [2, 0], text, num_classes=4)
    check_contract(cam, 2, (224, 320))
    check_contract(s4, 2, (56, 80))
    assert time.perf_counter() - t0 < 60


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_autocast_matches_cpu():
    model = tiny_clip("tok", layers=3, seed=3)
    torch.manual_seed(3)
    image = torch.randn(3, 48, 40)
    text = F.normalize(torch.randn(6, WIDTH), dim=-1)
    cpu = ce.clip_es_cams(model, image, [0, 1], text, num_classes=3)
    gpu = ce.clip_es_cams(model.cuda(), image, [0, 1], text, num_classes=3)
    check_contract(gpu, 2, (48, 40))
    corr = np.corrcoef(cpu.ravel(), gpu.ravel())[0, 1]
    assert corr > 0.9
