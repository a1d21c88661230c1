"""Collect a run's numbers into ``summary.json`` and ``summary.md``.

Reads what the pipeline already wrote instead of recomputing anything:
``results/eval/<stage>.json`` (mIoU per stage and variant), Snakemake's
benchmark TSVs (wall time per rule, summed over shards) and the POLE prompt
histogram. Missing stages are simply absent (a partial run still gets a
report); files it does not recognise are listed, not guessed at.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import read_json, write_json, write_text

VARIANTS = ("baseline", "pole")
# Table order: the DAG's order; stages not named here follow alphabetically.
ROW_ORDER = ("cam", "crf", "rw", "pseudo", "seg_val")
ROW_TITLES = {
    "cam": "CAM",
    "crf": "CAM + dense CRF",
    "rw": "random walk",
    "pseudo": "pseudo-masks (train)",
    "seg_val": "segmenter (val)",
}
# seg_val is trained on the POLE pseudo-masks (the DAG), unless its file says otherwise.
SINGLE_STAGES = {"seg_val": "pole"}
ZEROSHOT = "clip_zeroshot"


def _num(value: Any) -> float | None:
    """A finite float or None (JSON has no NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _stage_key(
    stem: str, content: Any, variants: Sequence[str] = VARIANTS
) -> tuple[str, str] | None:
    """(row, variant) for an eval file, or None when it is not a mIoU stage."""
    if not isinstance(content, dict) or "miou" not in content:
        return None
    if stem in SINGLE_STAGES:
        variant = content.get("variant", SINGLE_STAGES[stem])
        return (stem, variant) if variant in variants else None
    # longest first: a variant named x_pole is not pole of a stage called cam_x
    for variant in sorted(variants, key=len, reverse=True):
        if stem.endswith(f"_{variant}") and len(stem) > len(variant) + 1:
            return stem[: -len(variant) - 1], variant
    return None


def read_evals(eval_dir: str | os.PathLike, variants: Sequence[str] = VARIANTS) -> dict[str, Any]:
    """Read every ``<stage>.json``: mIoU per stage, table rows, zero-shot block, unknown files.

    ``variants``: the run's CAM variants (cam.variants); a row has a value per variant,
    baseline and pole always (the table's Δ column compares them).
    """
    columns = list(dict.fromkeys([*VARIANTS, *variants]))
    eval_dir = Path(eval_dir)
    miou: dict[str, float | None] = {}
    cells: dict[str, dict[str, float | None]] = {}
    zeroshot, unknown = None, []
    files = sorted(eval_dir.glob("*.json")) if eval_dir.is_dir() else []
    for path in files:
        content = read_json(path)
        stem = path.stem
        if stem == ZEROSHOT:
            zeroshot = content
            continue
        key = _stage_key(stem, content, columns)
        if key is None:
            unknown.append(path.name)
            continue
        value = _num(content.get("miou"))
        miou[stem] = value
        cells.setdefault(key[0], {})[key[1]] = value
    order = [r for r in ROW_ORDER if r in cells] + sorted(r for r in cells if r not in ROW_ORDER)
    table = [{"stage": r} | {v: cells[r].get(v) for v in columns} for r in order]
    return {"miou": miou, "table": table, "clip_zeroshot": zeroshot, "unknown_eval_files": unknown}


def read_benchmarks(benchmarks_dir: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Per rule: summed wall seconds over shards (rows of one file = repeats, averaged), max RSS, job count.

    Layout: ``<results_dir>/benchmarks/<rule>/<name>.tsv``, as the rules' ``benchmark:``
    write them (a TSV directly under the folder counts as a rule of its own name). Snakemake writes "NA" for values it
    could not measure; those are skipped.
    """
    root = Path(benchmarks_dir)
    out: dict[str, dict[str, float]] = {}
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*.tsv")):
        rel = path.relative_to(root)
        rule = rel.parts[0] if len(rel.parts) > 1 else path.stem
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        secs = [v for v in (_num(r.get("s")) for r in rows) if v is not None]
        rss = [v for v in (_num(r.get("max_rss")) for r in rows) if v is not None]
        entry = out.setdefault(rule, {"s": 0.0, "jobs": 0, "max_rss_mb": None})
        entry["jobs"] += 1
        if secs:
            entry["s"] += sum(secs) / len(secs)
        if rss:
            entry["max_rss_mb"] = max(entry["max_rss_mb"] or 0.0, max(rss))
    return {rule: out[rule] for rule in sorted(out)}


def _fmt(v: float | None, sign: bool = False) -> str:
    if v is None:
        return "–"
    return f"{v:+.2f}" if sign else f"{v:.2f}"


def _markdown(summary: dict[str, Any], bench: dict[str, dict[str, float]]) -> str:
    lines = ["# POLE pipeline summary", ""]
    lines += ["## mIoU (%)", ""]
    if summary["table"]:
        extra = [k for k in summary["table"][0] if k not in ("stage", *VARIANTS)]
        lines += [
            "| stage | baseline | POLE | Δ (POLE − baseline) |" + "".join(f" {v} |" for v in extra),
            "|---|---:|---:|---:|" + "---:|" * len(extra),
        ]
        for row in summary["table"]:
            b, p = row["baseline"], row["pole"]
            delta = p - b if b is not None and p is not None else None
            title = ROW_TITLES.get(row["stage"], row["stage"])
            lines.append(
                f"| {title} | {_fmt(b)} | {_fmt(p)} | {_fmt(delta, sign=True)} |"
                + "".join(f" {_fmt(row[v])} |" for v in extra)
            )
    elif summary.get("unscored"):
        lines.append(f"Not scored: {summary['unscored']}.")
    else:
        lines.append("No evaluation results yet.")
    lines.append("")
    zs = summary["clip_zeroshot"]
    if isinstance(zs, dict):
        scalars = {
            k: v
            for k, v in zs.items()
            if isinstance(v, int | float | str) and not isinstance(v, bool)
        }
        lines += ["## CLIP zero-shot", "", "| metric | value |", "|---|---:|"]
        for k, v in scalars.items():
            lines.append(f"| {k} | {_fmt(v) if isinstance(v, float) else v} |")
        lines.append("")
    if bench:
        lines += [
            "## Wall time per rule",
            "",
            "| rule | jobs | seconds | max RSS (MB) |",
            "|---|---:|---:|---:|",
        ]
        for rule, e in sorted(bench.items(), key=lambda kv: (-kv[1]["s"], kv[0])):
            lines.append(f"| {rule} | {e['jobs']} | {e['s']:.1f} | {_fmt(e['max_rss_mb'])} |")
        lines.append(
            f"| **total** | {sum(e['jobs'] for e in bench.values())} | {summary['total_s']:.1f} | |"
        )
        lines.append("")
    hist = summary["prompt_histogram"]
    if hist:
        lines += [
            "## POLE prompt choices",
            "",
            "Tokens chosen per class over the training images (the dataset name in bold).",
            "",
            "| class | tokens (count) |",
            "|---|---|",
        ]
        for cls, counts in hist.items():
            items = (
                sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if isinstance(counts, dict)
                else []
            )
            cells = [f"**{t}** ({c})" if t == cls else f"{t} ({c})" for t, c in items]
            lines.append(f"| {cls} | {', '.join(cells) or '–'} |")
        lines.append("")
    if summary["unknown_eval_files"]:
        lines += [
            f"Not in the table (unrecognised eval files): {', '.join(summary['unknown_eval_files'])}",
            "",
        ]
    return "\n".join(lines)


def build_summary(
    eval_dir: str | os.PathLike,
    benchmarks_dir: str | os.PathLike | None,
    prompt_histogram_json: str | os.PathLike | None,
    out_json: str | os.PathLike,
    out_md: str | os.PathLike,
    unscored: str | None = None,
    variants: Sequence[str] = VARIANTS,
) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.md`` (atomically) and return the summary dict.

    JSON keys: ``miou`` {stage: %}, ``table`` [{"stage", "baseline", "pole", and any other
    of ``variants`` (cam.variants, e.g. an oracle): %}],
    ``timings_s`` {rule: s}, ``total_s``, ``max_rss_mb`` {rule: MB},
    ``prompt_histogram``, ``clip_zeroshot``, ``unknown_eval_files``, ``unscored`` (why no
    stage was scored, e.g. a dataset without ground truth; None when scored).
    """
    evals = read_evals(eval_dir, variants)
    bench = read_benchmarks(benchmarks_dir) if benchmarks_dir is not None else {}
    hist = None
    if prompt_histogram_json is not None:
        hist = read_json(prompt_histogram_json)
        if isinstance(hist, dict) and isinstance(hist.get("histogram"), dict):
            hist = hist["histogram"]
    summary = {
        "miou": evals["miou"],
        "table": evals["table"],
        "timings_s": {rule: round(e["s"], 3) for rule, e in bench.items()},
        "total_s": round(sum(e["s"] for e in bench.values()), 3),
        "max_rss_mb": {rule: e["max_rss_mb"] for rule, e in bench.items()},
        "prompt_histogram": hist,
        "clip_zeroshot": evals["clip_zeroshot"],
        "unknown_eval_files": evals["unknown_eval_files"],
        "unscored": unscored,
    }
    write_json(out_json, summary)
    write_text(out_md, _markdown(summary, bench))
    return summary
