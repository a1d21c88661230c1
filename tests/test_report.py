"""Report: the summary table from eval JSONs + benchmark TSVs, and the figure PNGs."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from pole_core.io.atomic import read_json, write_json
from pole_core.report.figures import TITLE_IN, overlay_grid, prompt_histogram, threshold_curve
from pole_core.report.summary import build_summary

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _bench(path, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        BENCH_HEADER + "".join(f"{s}\t0:00:01\t{rss}\tNA\tNA\tNA\t0\t0\t50\t1\n" for s, rss in rows)
    )


def test_summary_table_timings_histogram(tmp_path):
    ev = tmp_path / "eval"
    values = {
        "cam_baseline": 40.0,
        "cam_pole": 45.5,
        "crf_baseline": 50.0,
        "crf_pole": 53.0,
        "pseudo_baseline": 60.0,
        "pseudo_pole": 64.25,
        "seg_val": 58.0,
    }
    for stage, v in values.items():
        write_json(
            ev / f"{stage}.json",
            {"miou": v, "per_class": {"background": 90.0}, "split": "train", "n_images": 4},
        )
    write_json(
        ev / "clip_zeroshot.json", {"top1": 71.5, "n_images": 30, "template": "a photo of a {}."}
    )
    write_json(ev / "notes.json", {"whatever": 1})
    bench = tmp_path / "benchmarks"
    _bench(bench / "crf" / "baseline_0.tsv", (10.0, 100.0))
    _bench(bench / "crf" / "baseline_1.tsv", (12.5, 300.0))
    _bench(bench / "train_seg" / "seg.tsv", (30.0, 500.0), (34.0, 520.0))  # two repeats: mean
    _bench(bench / "world.tsv", ("NA", "NA"))
    hist = tmp_path / "hist.json"
    write_json(
        hist,
        {
            "pottedplant": {"plant": 7, "pottedplant": 1, "flower pot": 2},
            "tvmonitor": {"screen": 3},
        },
    )

    out = build_summary(ev, bench, hist, tmp_path / "summary.json", tmp_path / "summary.md")

    assert out["table"] == [
        {"stage": "cam", "baseline": 40.0, "pole": 45.5},
        {"stage": "crf", "baseline": 50.0, "pole": 53.0},
        {"stage": "pseudo", "baseline": 60.0, "pole": 64.25},
        {"stage": "seg_val", "baseline": None, "pole": 58.0},
    ]
    assert out["miou"] == values
    assert out["timings_s"] == {"crf": 22.5, "train_seg": 32.0, "world": 0.0}
    assert out["max_rss_mb"]["crf"] == 300.0
    assert out["unknown_eval_files"] == ["notes.json"]
    assert out["clip_zeroshot"]["top1"] == 71.5
    assert out["prompt_histogram"]["pottedplant"]["plant"] == 7
    assert read_json(tmp_path / "summary.json") == out
    md = (tmp_path / "summary.md").read_text()
    assert "| CAM | 40.00 | 45.50 | +5.50 |" in md
    assert "| segmenter (val) | – | 58.00 | – |" in md
    assert "| crf | 2 | 22.5 | 300.00 |" in md
    assert "**pottedplant** (1)" in md and "notes.json" in md and "| top1 | 71.50 |" in md


def test_summary_with_another_variant(tmp_path):
    """An extra CAM variant (an oracle) gets its own column; without it, it is unrecognised."""
    ev = tmp_path / "eval"
    for stem, v in {"cam_baseline": 40.0, "cam_pole": 45.0, "cam_oracle": 49.5}.items():
        write_json(ev / f"{stem}.json", {"miou": v})
    out = build_summary(
        ev,
        None,
        None,
        tmp_path / "s.json",
        tmp_path / "s.md",
        variants=["baseline", "pole", "oracle"],
    )
    assert out["table"] == [{"stage": "cam", "baseline": 40.0, "pole": 45.0, "oracle": 49.5}]
    assert out["miou"]["cam_oracle"] == 49.5 and out["unknown_eval_files"] == []
    md = (tmp_path / "s.md").read_text()
    assert "| stage | baseline | POLE | Δ (POLE − baseline) | oracle |" in md
    assert "| CAM | 40.00 | 45.00 | +5.00 | 49.50 |" in md
    default = build_summary(ev, None, None, tmp_path / "d.json", tmp_path / "d.md")
    assert default["unknown_eval_files"] == ["cam_oracle.json"]


def test_summary_of_empty_run(tmp_path):
    out = build_summary(
        tmp_path / "none", tmp_path / "nob", None, tmp_path / "s.json", tmp_path / "s.md"
    )
    assert out["table"] == [] and out["timings_s"] == {} and out["prompt_histogram"] is None
    assert "No evaluation results yet." in (tmp_path / "s.md").read_text()


class _Images:
    def __init__(self, n: int, size: int = 24):
        rng = np.random.default_rng(0)
        self._img = {
            f"im{i}": rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8) for i in range(n)
        }

    def image(self, image_id: str) -> np.ndarray:
        return self._img[image_id]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overlay_grid_size_and_determinism(tmp_path):
    ds = _Images(3)
    labels = np.zeros((24, 28), np.uint8)
    labels[4:12, 4:12] = 3
    labels[12, :] = 255
    columns = {
        "GT": lambda i: labels,
        "baseline CAM": lambda i: np.random.default_rng(1).random((2, 24, 28), dtype=np.float32),
        "POLE CAM": lambda i: np.zeros((0, 24, 28), np.float32),  # an image without classes
        "pseudo-mask": lambda i: labels[::2, ::2],  # another size: resized to the image
        "prediction": lambda i: None,  # stage not run yet
    }
    overlay_grid(ds, ["im0", "im1", "im2"], columns, tmp_path / "grid.png", n=6)
    with Image.open(tmp_path / "grid.png") as im:
        assert im.size == (6 * 160, 3 * 160 + round(TITLE_IN * 100))
    first = _digest(tmp_path / "grid.png")
    overlay_grid(ds, ["im0", "im1", "im2"], columns, tmp_path / "grid.png", n=6)
    assert _digest(tmp_path / "grid.png") == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_threshold_curve_and_prompt_histogram(tmp_path):
    curves = {
        "baseline": [{"threshold": t / 10, "miou": 40 + t - (t - 4) ** 2} for t in range(1, 8)],
        "pole": [{"threshold": t / 10, "miou": 45 + t - (t - 3) ** 2} for t in range(1, 8)],
    }
    threshold_curve(curves, tmp_path / "curve.png")
    with Image.open(tmp_path / "curve.png") as im:
        assert im.size == (600, 400)

    hist = {f"class{c}": {f"tok{t}": (t * 7 + c) % 5 + 1 for t in range(11)} for c in range(5)}
    names = {f"class{c}": f"class{c}" for c in range(5)}  # dataset names never chosen: zero bars
    prompt_histogram(hist, tmp_path / "hist.png", names)
    with Image.open(tmp_path / "hist.png") as im:
        assert im.size == (4 * 320, 2 * 240)


def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    """mkstemp's 0600 must not reach the results: a shared results folder stays readable."""
    from pole_core.io.atomic import current_umask, write_json

    write_json(tmp_path / "x.json", {"a": 1})
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    from pole_core.io.atomic import atomic_dir, current_umask

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    assert out.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with atomic_dir(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
