"""train_cam / load_cam_net on a tiny fake dataset and a tiny frozen fake CLIP."""

from __future__ import annotations

import zlib
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from killing import killed_after_steps
from torch import nn
from torch.utils.data import Dataset

from pole_core.cam.network import build_cam_net
from pole_core.cam.train import CamTrainParams, load_cam_net, train_cam
from pole_core.training import RunOptions, partial_path

NAMES = ["red", "green", "blue"]
COLOURS = torch.eye(3)


class FakeBundle(nn.Module):
    """Frozen random conv + pooling + linear; words hash to fixed random vectors.

    Both sides share an offset direction so cosines are positive, as with real CLIP
    (a cosine below the 1e-4 clamp would give OTM no gradient).
    """

    embed_dim = 16
    input_size = 32
    device = torch.device("cpu")

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.conv = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.proj = nn.Linear(12, self.embed_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.register_buffer("offset", torch.randn(self.embed_dim, generator=g))
        self.requires_grad_(False)
        self.eval()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False)
        f = F.normalize(self.proj(F.relu(self.conv(x)).mean(dim=(2, 3))), dim=-1)
        return F.normalize(f + self.offset, dim=-1)

    def _word(self, w: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(w.encode()))
        return torch.randn(self.embed_dim, generator=g)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(
            torch.stack([sum(self._word(w) for w in t.strip(".").split()) for t in texts]), dim=-1
        )


class TinyItems(Dataset):
    """8 images 32×32: coloured squares on grey, 1–2 classes each."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(7)
        self.items = []
        for i in range(n):
            img = torch.full((3, 32, 32), 0.5)
            labels = torch.zeros(3)
            for k in torch.randperm(3, generator=g)[: 1 + i % 2].tolist():
                y, x = torch.randint(0, 20, (2,), generator=g).tolist()
                img[:, y : y + 12, x : x + 12] = COLOURS[k].view(3, 1, 1)
                labels[k] = 1
            self.items.append({"image": img, "labels": labels, "index": i})
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def prompts(ds: TinyItems) -> list[dict[int, str]]:
    return [
        {k: f"a photo of {NAMES[k]}." for k in torch.nonzero(it["labels"])[:, 0].tolist()}
        for it in ds.items
    ]


def make_net(seed: int = 0):
    torch.manual_seed(seed)
    return build_cam_net("mini", 3, strides=(2, 2, 1, 1), widths=(8, 8, 16, 16))


HP = {
    "batch_size": 4,
    "lr": 0.01,
    "head_lr": None,
    "weight_decay": 1e-4,
    "momentum": 0.9,
    "loss_weights": {"otm": 10, "btm": 24, "cbs": 1, "reg": 0.2},
    "cbs_thresh": 0.01,  # the fake CLIP's cosines are small; keep CBS active
    "seed": 3,
}


def fit(net, ds, prompts_for, bundle, out, *, log=lambda s: None, **hp):
    """train_cam with the test's hyper-parameters, overridden by ``hp``."""
    params = CamTrainParams(**{**HP, **hp})
    return train_cam(
        net, ds, prompts_for, bundle, out, params,
        bg_words=["grey", "wall"], run=RunOptions(device="cpu", progress=False, log=log),
    )  # fmt: skip


def test_train_save_and_load(tmp_path):
    ds, bundle = TinyItems(), FakeBundle()
    out = tmp_path / "cam" / "model.pt"
    net = make_net()
    stats = fit(net, ds, prompts(ds), bundle, out, epochs=2, adapters=False)
    assert out.is_file() and not partial_path(out).exists()
    assert not list(out.parent.glob(".*tmp*"))  # no temp files left behind
    assert stats["steps"] == 4 and len(stats["epochs"]) == 2
    assert ds.epochs_seen == [0, 1]
    for row in stats["epochs"]:
        assert all(
            torch.isfinite(torch.tensor(row[k])) for k in ("total", "otm", "btm", "cbs", "reg")
        )
    net2, adapters, meta = load_cam_net(out, "cpu")
    assert (
        adapters is None
        and meta["arch"]["backbone"] == "mini"
        and meta["arch"]["strides"] == [2, 2, 1, 1]
    )
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net2(x), net.eval()(x), rtol=0, atol=0)


def test_loss_decreases(tmp_path):
    ds, bundle = TinyItems(), FakeBundle()
    stats = fit(make_net(), ds, prompts(ds), bundle, tmp_path / "m.pt", epochs=6, lr=0.002)
    totals = [row["total"] for row in stats["epochs"]]
    assert totals[-1] < 0.8 * totals[0]
    assert all(row["cbs"] > 0 for row in stats["epochs"])


def test_resume_is_bit_identical(tmp_path):
    ds, bundle = TinyItems(), FakeBundle()
    kw = {"adapters": True, "cls_weight": 0.5, "epochs": 2}
    full = tmp_path / "full.pt"
    fit(make_net(0), ds, lambda i: prompts(ds)[i], bundle, full, **kw)

    cut = tmp_path / "cut.pt"
    with killed_after_steps(3):  # 2 steps per epoch: dies in epoch 2
        fit(make_net(0), ds, lambda i: prompts(ds)[i], bundle, cut, **kw)
    assert not cut.exists()
    part = partial_path(cut)
    assert part.is_file() and torch.load(part, weights_only=False)["epoch"] == 1
    # restart with a differently initialised net: the partial checkpoint wins
    stats = fit(make_net(99), ds, lambda i: prompts(ds)[i], bundle, cut, **kw)
    assert stats["resumed_from_epoch"] == 1 and cut.is_file() and not part.exists()

    a, b = torch.load(full, weights_only=False), torch.load(cut, weights_only=False)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    for k, v in a["adapters"]["state_dict"].items():
        assert torch.equal(v, b["adapters"]["state_dict"][k]), k
    net, adapters, _ = load_cam_net(cut)
    assert set(adapters) == {"image", "text"} and adapters["text"].dim == FakeBundle.embed_dim


def test_partial_from_other_settings_is_ignored_and_crash_keeps_partial(tmp_path, monkeypatch):
    ds, bundle = TinyItems(), FakeBundle()
    out = tmp_path / "m.pt"
    with killed_after_steps(2):
        fit(make_net(), ds, prompts(ds), bundle, out, epochs=2, adapters=False)
    assert partial_path(out).is_file()
    logs: list[str] = []
    # other settings: not resumed
    with killed_after_steps(0):
        fit(make_net(), ds, prompts(ds), bundle, out, epochs=1, adapters=False, log=logs.append)
    assert any("other settings" in s for s in logs) and not any("resuming" in s for s in logs)
    # a crash while the final file is written leaves no final file and keeps the partial
    import pole_core.io.checkpoint as ckpt

    real_save = torch.save

    def crash(obj, f, *a, **k):
        if "state_dict" in obj:  # the final checkpoint
            real_save({"half": 1}, f)
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        fit(make_net(), ds, prompts(ds), bundle, out, epochs=2, adapters=False)
    assert not out.exists() and partial_path(out).is_file()
    assert not list(tmp_path.glob(".*tmp*"))
    monkeypatch.undo()
    # rerun: all epochs are in the partial file, only the final file is written
    stats = fit(make_net(), ds, prompts(ds), bundle, out, epochs=2, adapters=False)
    assert stats["resumed_from_epoch"] == 2 and out.is_file() and not partial_path(out).exists()


def test_load_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="junk.pt: unreadable"):
        load_cam_net(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ValueError, match="other.pt: not a CAM network checkpoint"):
        load_cam_net(other)
    wrong = tmp_path / "wrong.pt"
    net = make_net()
    torch.save(
        {"state_dict": net.state_dict(), "arch": dict(net.arch, n_classes=5), "adapters": None},
        wrong,
    )
    with pytest.raises(ValueError, match="wrong.pt: weights do not match"):
        load_cam_net(wrong)


def test_missing_prompt_is_a_clear_error(tmp_path):
    ds, bundle = TinyItems(), FakeBundle()
    with pytest.raises(KeyError, match="no prompt"):
        fit(
            make_net(),
            ds,
            [{} for _ in ds.items],
            bundle,
            tmp_path / "x.pt",
            epochs=1,
            adapters=False,
        )


def test_adapters_train_at_their_own_lr(tmp_path):
    """adapter_lr sets the adapters' group; None keeps them at the head's lr."""
    ds, bundle = TinyItems(), FakeBundle()
    seen = []
    orig = torch.optim.SGD.__init__

    def spy(self, groups, *a, **kw):
        seen.append({g.get("name"): g["lr"] for g in groups})
        orig(self, groups, *a, **kw)

    with mock.patch.object(torch.optim.SGD, "__init__", spy):
        fit(make_net(), ds, prompts(ds), bundle, tmp_path / "a.pt", epochs=1, adapter_lr=1e-5)
        fit(make_net(), ds, prompts(ds), bundle, tmp_path / "b.pt", epochs=1, head_lr=0.2)
    assert seen[0]["adapters"] == 1e-5
    assert seen[1]["adapters"] == 0.2


def test_grad_clip_bounds_each_step(tmp_path):
    """One step of plain SGD moves the weights by lr × the clipped gradient, whose norm is
    at most grad_clip; without clipping the same step is far larger."""
    ds, bundle = TinyItems(), FakeBundle()
    lr, clip = 0.01, 1e-3

    def grad_norm_of_step(**hp) -> float:
        net = make_net()
        before = {n: p.detach().clone() for n, p in net.named_parameters()}
        fit(net, ds, prompts(ds), bundle, tmp_path / f"{len(hp)}.pt", epochs=1, batch_size=8,
            lr=lr, head_lr=10 * lr, momentum=0.0, weight_decay=0.0, adapters=False, **hp)  # fmt: skip
        sq = 0.0
        for n, p in net.named_parameters():
            step_lr = 10 * lr if n.startswith("classifier") else lr
            sq += float(((p.detach() - before[n]) / step_lr).pow(2).sum())
        return sq**0.5

    clipped, free = grad_norm_of_step(grad_clip=clip), grad_norm_of_step()
    assert 0.5 * clip < clipped <= clip * 1.02  # float32 weights: the difference is rounded
    assert free > 10 * clip
