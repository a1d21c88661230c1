"""Tests of pole_core.clip: tokenizer, mini-CLIP build/training/resume, ClipBundle loading, zero-shot eval."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from killing import killed_after_steps

from pole_core.clip import (
    ClipBundle,
    WordTokenizer,
    build_mini_clip,
    load_clip,
    train_mini_clip,
    zeroshot_eval,
)
from pole_core.clip.bundle import clip_resize_crop, is_openai_layout, read_clip_checkpoint
from pole_core.clip.mini import (
    MINI_MEAN,
    MINI_STD,
    MiniClipParams,
    full_model_cfg,
    multi_positive_loss,
)
from pole_core.clip.zeroshot import average_precision, format_zeroshot, topk_in_gt
from pole_core.io.checkpoint import save_checkpoint
from pole_core.training import RunOptions

TINY_CFG = {
    "embed_dim": 32,
    "image_size": 16,
    "patch_size": 8,
    "width": 32,
    "layers": 1,
    "head_width": 16,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
    "context_length": 12,
}
WORDS = ["ship", "feline", "plane", "hound"]
COLOURS = np.array([[220, 30, 30], [30, 200, 30], [30, 30, 220], [200, 200, 40]], dtype=np.uint8)
VOCAB = ["a", "photo", "of", "and", "on", "the", "water", "."] + WORDS


def _quiet(log=lambda s: None) -> RunOptions:
    return RunOptions(device="cpu", progress=False, log=log)


def make_corpus(root: Path, n: int = 64, size: int = 16, seed: int = 0) -> Path:
    """Images coloured by their class (with noise); caption names the class, half with a background."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, len(WORDS), n)
    images = COLOURS[cls][:, None, None, :].repeat(size, 1).repeat(size, 2).astype(np.int16)
    images += rng.integers(-20, 20, images.shape, dtype=np.int16)
    images = np.clip(images, 0, 255).astype(np.uint8)
    captions = [
        f"a photo of a {WORDS[c]} on the water ."
        if rng.random() < 0.5
        else f"a photo of a {WORDS[c]} ."
        for c in cls
    ]
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "images.npy", images)
    (root / "captions.txt").write_text("\n".join(captions) + "\n")
    (root / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return root


def tiny_bundle(tmp_path: Path) -> ClipBundle:
    """A random-init tiny mini-CLIP saved in train_mini_clip's format and loaded back."""
    torch.manual_seed(0)
    tok = WordTokenizer(VOCAB, TINY_CFG["context_length"])
    model = build_mini_clip(tok.vocab_size, tok.eot_id, **TINY_CFG)
    path = tmp_path / "tiny.pt"
    save_checkpoint(
        path,
        {
            "model_cfg": full_model_cfg(TINY_CFG),
            "vocab": tok.vocab,
            "state_dict": model.state_dict(),
            "stats": {},
        },
    )
    return load_clip("mini", checkpoint=str(path))


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_ids_eot_and_roundtrip(tmp_path):
    tok = WordTokenizer(VOCAB, context_length=8)
    assert tok.vocab_size == 4 + len(VOCAB)
    assert (tok.pad_id, tok.sot_id, tok.eot_id, tok.unk_id) == (0, 1, 2, 3)
    ids = tok(["A photo of a Ship.", "a photo of a zebra ."])
    assert ids.dtype == torch.long and ids.shape == (2, 8)
    first = ids[0].tolist()
    assert first[0] == tok.sot_id and first[7] == tok.eot_id
    assert first[6] == 4 + VOCAB.index(".")  # "." split off as its own word
    assert ids[1, 5].item() == tok.unk_id
    assert tok(["plane ."])[0].tolist() == [
        1,
        4 + VOCAB.index("plane"),
        4 + VOCAB.index("."),
        2,
        0,
        0,
        0,
        0,
    ]
    assert tok.decode(ids[0]) == "a photo of a ship ."
    assert tok.count_unknown(["a zebra and a zebra"]) == {"zebra": 2}
    # truncation keeps <eot> at the last position
    long = tok(["a photo of a ship and a plane on the water ."])[0]
    assert long[-1].item() == tok.eot_id and (long != tok.pad_id).all()
    # multi-word prompts and round trip through the saved vocabulary
    tok.save(tmp_path / "vocab.txt")
    tok2 = WordTokenizer.load(tmp_path / "vocab.txt", context_length=8)
    texts = ["a photo of a ship and a plane .", "feline hound"]
    assert torch.equal(tok(texts), tok2(texts))
    assert (
        WordTokenizer(VOCAB + ["ship", "<eot>"], 8).vocab == tok.vocab
    )  # dedup, specials implicit


# --------------------------------------------------------------------------- mini-CLIP model


def test_build_mini_clip_shapes_and_eos_pooling():
    torch.manual_seed(0)
    tok = WordTokenizer(VOCAB, TINY_CFG["context_length"])
    model = build_mini_clip(tok.vocab_size, tok.eot_id, **TINY_CFG).eval()
    assert isinstance(model, open_clip.CLIP)
    assert model.visual.pool_type == "avg" and model.text_pool_type == "eos"
    assert model.text_eos_id == tok.eot_id
    assert (
        model.visual.transformer.resblocks[0].attn.num_heads
        == TINY_CFG["width"] // TINY_CFG["head_width"]
    )
    texts = ["a photo of a ship .", "plane"]
    tokens = tok(texts)
    with torch.no_grad():
        img = model.encode_image(torch.randn(3, 3, 16, 16))
        txt = model.encode_text(tokens)
        # the text feature is the <eot> position's, not the max-id token's (open_clip's default)
        x = model.token_embedding(tokens) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        eot_pos = (tokens == tok.eot_id).int().argmax(dim=1)
        manual = x[torch.arange(2), eot_pos] @ model.text_projection
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    assert torch.allclose(txt, manual, atol=1e-6)
    with pytest.raises(ValueError, match="head_width"):
        build_mini_clip(20, 2, width=40, head_width=32)
    with pytest.raises(ValueError, match="unknown key"):
        full_model_cfg({"widht": 64})


def test_multi_positive_loss_duplicates_are_positives():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=1), F.normalize(torch.randn(4, 8), dim=1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.t()
    # distinct captions: the standard CLIP loss
    clip_loss = 0.5 * (
        F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.t(), torch.arange(4))
    )
    assert torch.allclose(multi_positive_loss(img, txt, torch.arange(4), scale), clip_loss)
    # images 0 and 1 share a caption: each one's target is split over both texts
    target = torch.tensor([[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    manual = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    assert torch.allclose(multi_positive_loss(img, txt, torch.tensor([5, 5, 1, 2]), scale), manual)


# --------------------------------------------------------------------------- ClipBundle


def test_encode_image_gradient_reaches_input_not_weights(tmp_path):
    bundle = tiny_bundle(tmp_path)
    assert bundle.input_size == 16 and bundle.embed_dim == 32
    assert not bundle.model.training
    assert all(not p.requires_grad for p in bundle.model.parameters())
    assert bundle.mean == pytest.approx(MINI_MEAN) and bundle.std == pytest.approx(MINI_STD)
    assert bundle.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)
    x = torch.rand(2, 3, 24, 24, requires_grad=True)  # not the input size: resize path
    emb = bundle.encode_image(x)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    txt = bundle.encode_text(["a photo of a ship .", "a photo of a plane ."])
    (emb * txt).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    assert all(p.grad is None for p in bundle.model.parameters())
    # text cache: same result, no recomputation of known texts
    again = bundle.encode_text(["a photo of a plane .", "a photo of a ship ."])
    assert torch.equal(again[0], txt[1]) and len(bundle._text_cache) == 2
    dense = bundle.dense_features(torch.rand(2, 3, 16, 16))
    assert dense.shape == (2, 32, 2, 2)
    assert torch.allclose(dense.norm(dim=1), torch.ones(2, 2, 2), atol=1e-5)


def test_load_clip_mini_input_size_override_and_errors(tmp_path):
    tiny_bundle(tmp_path)
    big = load_clip("mini", checkpoint=str(tmp_path / "tiny.pt"), input_size=32)
    assert big.input_size == 32 and big.encode_image(torch.rand(1, 3, 32, 32)).shape == (1, 32)
    with pytest.raises(FileNotFoundError, match="nothere.pt: CLIP checkpoint not found"):
        load_clip("mini", checkpoint=str(tmp_path / "nothere.pt"))
    with pytest.raises(ValueError, match="clip.source"):
        load_clip("clip")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        load_clip("open_clip", model="ViT-Z-99", checkpoint=str(tmp_path / "tiny.pt"))
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        load_clip("open_clip", model="RN50", checkpoint=str(tmp_path / "missing.pt"))


# --------------------------------------------------------------------------- training


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_train_mini_clip_loss_decreases_and_resume_is_exact(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    recipe = dict(epochs=3, batch_size=16, lr=3e-3, warmup_steps=2, seed=3)

    def fit(out, log=lambda s: None, **hp):
        params = MiniClipParams(**{**recipe, **hp})
        return train_mini_clip(corpus, out, params, run=_quiet(log), model_cfg=TINY_CFG)

    straight = tmp_path / "straight" / "model.pt"
    stats = fit(straight)
    assert stats["steps"] == 12 and stats["resumed_from_epoch"] == 0
    assert stats["loss_per_epoch"][-1] < stats["loss_per_epoch"][0]
    assert not (straight.parent / "model.pt.partial.pt").exists()
    saved = torch.load(straight, weights_only=False)
    assert set(saved) >= {"model_cfg", "vocab", "state_dict", "stats"}

    # a run killed after epoch 1 leaves only the partial checkpoint ...
    resumed = tmp_path / "resumed" / "model.pt"

    with killed_after_steps(4):  # 4 steps per epoch: dies at the start of epoch 2
        fit(resumed)
    partial = resumed.parent / "model.pt.partial.pt"
    assert partial.exists() and not resumed.exists()
    # ... and the restarted run continues from it to bit-identical weights
    stats2 = fit(resumed)
    assert stats2["resumed_from_epoch"] == 1 and not partial.exists()
    assert stats2["loss_per_epoch"] == stats["loss_per_epoch"]
    a, b = _state_dict(straight), _state_dict(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a stale partial from another config is ignored, not mixed in
    with killed_after_steps(4):
        fit(resumed, seed=4)
    logs: list[str] = []
    stats3 = fit(resumed, log=logs.append)
    assert stats3["resumed_from_epoch"] == 0 and any("ignoring" in line for line in logs)

    # the trained file loads as a bundle and reproduces the model's embeddings
    bundle = load_clip("mini", checkpoint=str(straight))
    model = build_mini_clip(bundle.tokenizer.vocab_size, bundle.tokenizer.eot_id, **TINY_CFG).eval()
    model.load_state_dict(a)
    x = torch.rand(2, 3, 16, 16)
    mean = torch.tensor(MINI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(MINI_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model.encode_image((x - mean) / std, normalize=True)
    assert torch.equal(bundle.encode_image(x), ref)


def test_corpus_errors(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", n=8)
    (corpus / "captions.txt").write_text("a photo of a ship .\n")
    with pytest.raises(ValueError, match="1 captions for 8 images"):
        train_mini_clip(
            corpus, tmp_path / "m.pt", MiniClipParams(), run=_quiet(), model_cfg=TINY_CFG
        )
    with pytest.raises(FileNotFoundError, match="images.npy: caption corpus file not found"):
        train_mini_clip(
            tmp_path / "none",
            tmp_path / "m.pt",
            MiniClipParams(),
            run=_quiet(),
        )


# --------------------------------------------------------------------------- real open_clip architectures


def _roundtrip_real_architecture(name: str, tmp_path: Path) -> tuple[Path, ClipBundle]:
    torch.manual_seed(0)
    # a plain state dict of open_clip's CLIP class has OpenAI's keys: auto QuickGELU
    ref = open_clip.create_model(name, pretrained=None, force_quick_gelu=True).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(ref.state_dict(), path)
    bundle = load_clip("open_clip", model=name, checkpoint=str(path))
    ref.requires_grad_(
        False
    )  # same attention kernels as the frozen bundle, so results are bit-equal
    assert bundle.input_size == 224 and bundle.embed_dim == ref.visual.output_dim
    x = torch.rand(1, 3, 224, 224)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    texts = ["a photo of a cat.", "a photo of a feline."]
    with torch.no_grad():
        ref_img = ref.encode_image((x - mean) / std, normalize=True)
        ref_txt = ref.encode_text(open_clip.get_tokenizer(name)(texts), normalize=True)
        img = bundle.encode_image(x)
    assert torch.equal(img, ref_img)
    assert torch.equal(bundle.encode_text(texts), ref_txt)
    return path, bundle


def test_open_clip_rn50_checkpoint_roundtrip_and_wrong_architecture(tmp_path):
    path, bundle = _roundtrip_real_architecture("RN50", tmp_path)
    dense = bundle.dense_features(torch.rand(1, 3, 224, 224))
    assert dense.shape == (1, 1024, 7, 7)
    with pytest.raises(ValueError) as err:
        load_clip("open_clip", model="ViT-B-32", checkpoint=str(path))
    msg = str(err.value)
    assert (
        msg.startswith(f"{path}: checkpoint does not match architecture ViT-B-32 (")
        and "\n" not in msg
    )


@pytest.mark.slow
def test_open_clip_vit_b16_checkpoint_roundtrip(tmp_path):
    _, bundle = _roundtrip_real_architecture("ViT-B-16", tmp_path)
    assert bundle.dense_features(torch.rand(1, 3, 224, 224)).shape == (1, 512, 14, 14)


# --------------------------------------------------------------------------- OpenAI files, QuickGELU, checkpoint vs tag

TINY_VIT = "pole-test-tiny-vit"
TINY_VIT_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    """A small open_clip ViT config (OpenAI tokenizer and text length) and its -quickgelu twin."""
    if TINY_VIT not in open_clip.list_models():
        folder = tmp_path_factory.mktemp("cfg")
        (folder / f"{TINY_VIT}.json").write_text(json.dumps(TINY_VIT_CFG))
        (folder / f"{TINY_VIT}-quickgelu.json").write_text(
            json.dumps({**TINY_VIT_CFG, "quick_gelu": True})
        )
        open_clip.add_model_config(folder)
    return TINY_VIT


class _OpenAIArchive(torch.nn.Module):
    """Holds a state dict under OpenAI's names (nested modules), as torch.jit.save writes it."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        for key, value in state.items():
            *parents, leaf = key.split(".")
            mod: torch.nn.Module = self
            for part in parents:
                if not hasattr(mod, part):
                    mod.add_module(part, torch.nn.Module())
                mod = getattr(mod, part)
            mod.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))
        # OpenAI's archives carry these next to the weights
        self.register_buffer("input_resolution", torch.tensor(32))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(49408))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _reference(name: str, quick_gelu: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu).eval()


def _embeddings(model_or_bundle, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.rand(2, 3, 32, 32)
    texts = ["a photo of a cat.", "a photo of player."]
    if isinstance(model_or_bundle, ClipBundle):
        return model_or_bundle.encode_image(x), model_or_bundle.encode_text(texts)
    model = model_or_bundle.requires_grad_(False)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        img = model.encode_image((x - mean) / std, normalize=True)
        txt = model.encode_text(open_clip.get_tokenizer(name)(texts), normalize=True)
    return img, txt


def _activations(model: torch.nn.Module) -> set[type]:
    return {
        type(m)
        for m in model.modules()
        if isinstance(m, (open_clip.transformer.QuickGELU, torch.nn.GELU))
    }


def test_openai_torchscript_archive_and_state_dict_load_with_same_embeddings(tiny_vit, tmp_path):
    ref = _reference(tiny_vit, quick_gelu=True)  # OpenAI weights: QuickGELU
    state = ref.state_dict()
    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(_OpenAIArchive(state)), str(archive))
    plain = tmp_path / "ViT-tiny-state.pt"
    torch.save(state, plain)
    # the failure this handles: torch >= 2.6 refuses TorchScript archives with weights_only
    with pytest.raises(RuntimeError, match="TorchScript"):
        torch.load(archive, map_location="cpu", weights_only=True)
    ref_img, ref_txt = _embeddings(ref, tiny_vit)
    for path in (archive, plain):
        bundle = load_clip("open_clip", model=tiny_vit, checkpoint=str(path))
        assert _activations(bundle.model) == {open_clip.transformer.QuickGELU}, path.name
        img, txt = _embeddings(bundle, tiny_vit)
        assert torch.allclose(img, ref_img, atol=1e-6) and torch.allclose(txt, ref_txt, atol=1e-6)
    assert read_clip_checkpoint(archive)[1] == "torchscript"
    assert read_clip_checkpoint(plain)[1] == "openai"
    # a damaged archive is one line naming the file
    broken = tmp_path / "broken.pt"
    broken.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(ValueError, match=f"^{broken}: "):
        load_clip("open_clip", model=tiny_vit, checkpoint=str(broken))


def test_quick_gelu_auto_from_layout_and_explicit_wins(tiny_vit, tmp_path):
    gelu = _reference(tiny_vit, quick_gelu=False)
    state = gelu.state_dict()
    openai_file = tmp_path / "openai_layout.pt"
    torch.save(state, openai_file)
    # open_clip's training checkpoint: {"epoch", "name", "state_dict" (DDP "module." keys), ...}
    open_clip_file = tmp_path / "epoch_32.pt"
    torch.save(
        {"epoch": 32, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}},
        open_clip_file,
    )
    assert is_openai_layout(state)
    assert not is_openai_layout({**state, "logit_bias": torch.zeros(1)})  # open_clip-only key
    assert read_clip_checkpoint(open_clip_file)[1] == "open_clip"

    def acts(path, quick_gelu=None):
        return _activations(
            load_clip(
                "open_clip", model=tiny_vit, checkpoint=str(path), quick_gelu=quick_gelu
            ).model
        )

    quick, plain = {open_clip.transformer.QuickGELU}, {torch.nn.GELU}
    assert acts(openai_file) == quick
    assert acts(open_clip_file) == plain
    assert acts(open_clip_file, quick_gelu=True) == quick
    assert acts(openai_file, quick_gelu=False) == plain
    # the GELU model read from its open_clip checkpoint gives the original embeddings
    bundle = load_clip("open_clip", model=tiny_vit, checkpoint=str(open_clip_file))
    ref_img, ref_txt = _embeddings(gelu, tiny_vit)
    img, txt = _embeddings(bundle, tiny_vit)
    assert torch.allclose(img, ref_img, atol=1e-6) and torch.allclose(txt, ref_txt, atol=1e-6)
    # explicit false also overrides a "-quickgelu" architecture, whose config says true
    qg = f"{tiny_vit}-quickgelu"
    assert (
        _activations(load_clip("open_clip", model=qg, checkpoint=str(open_clip_file)).model)
        == quick
    )
    off = load_clip("open_clip", model=qg, checkpoint=str(openai_file), quick_gelu=False)
    assert _activations(off.model) == plain


def test_checkpoint_wins_over_pretrained(tiny_vit, tmp_path, caplog):
    path = tmp_path / "weights.pt"
    torch.save(_reference(tiny_vit, quick_gelu=True).state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="pole_core.clip.bundle"):
        # "openai" is no tag of this model and no file: using it would fail
        bundle = load_clip("open_clip", model=tiny_vit, pretrained="openai", checkpoint=str(path))
    assert bundle.name == f"{tiny_vit}:weights.pt"
    assert any("wins over clip.pretrained" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match="neither a file nor a known tag"):
        load_clip("open_clip", model=tiny_vit, pretrained="openai")


def test_clip_resize_crop_matches_clip_preprocess():
    torchvision = pytest.importorskip("torchvision")
    T = torchvision.transforms
    torch.manual_seed(0)
    x = torch.rand(2, 3, 13, 29)
    ours = clip_resize_crop(x, 8)
    theirs = T.Compose(
        [T.Resize(8, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(8)]
    )(x).clamp(0, 1)
    assert ours.shape == (2, 3, 8, 8)
    assert torch.allclose(ours, theirs, atol=1e-6)
    tall = clip_resize_crop(torch.rand(1, 3, 40, 16), 8)
    assert tall.shape == (1, 3, 8, 8)
    same = torch.rand(1, 3, 8, 12)  # short side already the size: a pure centre crop
    assert torch.equal(clip_resize_crop(same, 8), same[..., :, 2:10])


# --------------------------------------------------------------------------- zero-shot


def test_average_precision_and_topk_by_hand():
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    pos = np.array([[1], [0], [1], [0]], dtype=bool)
    assert average_precision(scores, pos)[0] == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(average_precision(scores, np.zeros_like(pos))[0])
    s = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.8], [0.1, 0.2, 0.3]])
    lab = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0]])
    acc, top1 = topk_in_gt(
        s, lab
    )  # image 0: top-2 = {0, 1} -> 1/2; image 1: top-1 = 2 -> 0; image 2 skipped
    assert acc == pytest.approx(0.25) and top1 == pytest.approx(0.5)


class _StubBundle:
    """Image embedding = mean colour; text embedding looked up per prompt: scores are known exactly."""

    input_size = 4

    def __init__(self, text_vectors: dict[str, list[float]]):
        self.text_vectors = text_vectors

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.mean(dim=(2, 3)), dim=1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(
            torch.tensor([self.text_vectors[t] for t in texts], dtype=torch.float32), dim=1
        )


def test_zeroshot_eval_names_vs_synonyms():
    # class 0 "ship" is red; class 1 "potted plant" is green. The name "ship" points at blue
    # (a co-occurring background), its synonym "vessel" at red; both plant tokens point at green.
    images = [
        np.full((8, 8, 3), c, dtype=np.uint8)
        for c in ([250, 5, 5], [5, 250, 5], [5, 5, 250], [250, 250, 5])
    ]
    labels = np.array([[1, 0], [0, 1], [0, 0], [1, 1]])
    vec = {
        "a photo of a ship.": [0.0, 0.0, 1.0],
        "a photo of a vessel.": [1.0, 0.0, 0.0],
        "a photo of a boat.": [0.0, 1.0, 0.0],
        "a photo of a potted plant.": [0.0, 1.0, 0.0],
        "a photo of a houseplant.": [0.1, 1.0, 0.0],
    }
    res = zeroshot_eval(
        _StubBundle(vec),
        lambda i: images[i],
        labels,
        ["ship", "potted plant"],
        {"ship": ["vessel", "boat", "ship"], "pottedplant": ["houseplant", "pottedplant"]},
        class_names=["ship", "pottedplant"],
        batch_size=3,
    )
    ship = res["per_class"]["ship"]
    assert list(ship["ap"]) == ["ship", "vessel", "boat"]
    assert ship["ap"]["vessel"] == pytest.approx(1.0) and ship["ap"]["ship"] < 1.0
    assert ship["best_synonym"] == "vessel" and ship["best_token"] == "vessel"
    assert ship["mean_synonym_ap"] == pytest.approx((ship["ap"]["vessel"] + ship["ap"]["boat"]) / 2)
    assert list(res["per_class"]["potted plant"]["ap"]) == ["potted plant", "houseplant"]
    assert res["map_best_synonym"] > res["map_names"]
    assert res["map_oracle"] >= res["map_best_synonym"] >= res["map_mean_synonym"]
    assert res["topk_acc_best"] >= res["topk_acc_names"]
    assert res["n_images"] == 4 and "mAP names" in format_zeroshot(res)
