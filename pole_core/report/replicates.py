"""One table over replicate runs (``make replicate``): the scores of each seed, mean ± sd.

A single run's mIoU differences between variants can be smaller than what a different seed
changes; this table says how large that spread is. Every score is read from a run's
``summary.json`` (written by :mod:`pole_core.report.summary` from the eval files of
:mod:`pole_core.metrics`); nothing is recomputed. Columns: CAM, CAM + CRF and pseudo-masks
of every CAM variant present in any run, then the segmenter; a run without a variant
leaves its cells empty, and the mean and sd of a column are over the runs that have it.
The sd is the sample standard deviation (n − 1); with one value it is undefined.

CLI: ``python -m pole_core.report.replicates results/seed_0 results/seed_1 ... --out
results/replicates.md`` (also writes ``replicates.json`` beside it).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..io.atomic import read_json, write_json, write_text

# (stage in summary.json's table, column title), in the DAG's order
STAGES = (("cam", "CAM"), ("crf", "CAM+CRF"), ("pseudo", "pseudo-masks"))
SEG_STAGE, SEG_TITLE = "seg_val", "segmenter (val)"


def _finite(value: Any) -> float | None:
    """A finite float, else None (summary.json writes a missing score as null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def run_seed(run_dir: str | os.PathLike) -> int | str:
    """The seed of a run: its effective ``config.yaml``, else the ``seed_<N>`` folder name."""
    run_dir = Path(run_dir)
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        seed = (yaml.safe_load(cfg.read_text()) or {}).get("seed")
        if isinstance(seed, int):
            return seed
    m = re.fullmatch(r"seed_(\d+)", run_dir.name)
    return int(m.group(1)) if m else run_dir.name


def run_scores(summary: dict[str, Any]) -> dict[tuple[str, str], float]:
    """{(stage, variant): mIoU} of one summary.json dict, for the table's stages."""
    wanted = {s for s, _ in STAGES} | {SEG_STAGE}
    out: dict[tuple[str, str], float] = {}
    for row in summary.get("table") or []:
        stage = row.get("stage")
        if stage not in wanted:
            continue
        for variant, value in row.items():
            v = _finite(value)
            if variant != "stage" and v is not None:
                out[(stage, variant)] = v
    return out


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample sd (n − 1) of the values; None where undefined (no value, one value)."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _columns(scores: Sequence[dict[tuple[str, str], float]]) -> list[tuple[str, str]]:
    """(stage, variant) columns present in any run: variants in first-seen order, baseline
    first; per variant CAM, CAM+CRF, pseudo-masks; the segmenter column(s) last."""
    variants: dict[str, None] = {"baseline": None}
    for s in scores:
        for stage, variant in s:
            if stage != SEG_STAGE:
                variants.setdefault(variant, None)
    present = {k for s in scores for k in s}
    cols = [(st, v) for v in variants for st, _ in STAGES if (st, v) in present]
    seg = sorted({v for st, v in present if st == SEG_STAGE})
    return cols + [(SEG_STAGE, v) for v in seg]


def column_title(stage: str, variant: str) -> str:
    """'CAM (pole)', 'segmenter (val)' (its variant: the pseudo-masks it was trained on)."""
    if stage == SEG_STAGE:
        return f"{SEG_TITLE} on {variant}"
    return f"{dict(STAGES)[stage]} ({variant})"


def build_table(runs: Sequence[tuple[str, int | str, dict[str, Any]]]) -> dict[str, Any]:
    """The replicate table of ``(run folder, seed, summary.json dict)`` triples.

    Returns ``{"columns": [{"key", "title"}], "runs": [{"run", "seed", "scores" {key: %}}],
    "mean" {key: %}, "sd" {key: %}, "n" {key: runs with the column}}``; a column key is
    ``<stage>_<variant>`` as the run's eval file is named (``seg_val_<variant>``).
    """
    scores = [run_scores(summary) for _, _, summary in runs]
    cols = _columns(scores)
    key = {c: f"{c[0]}_{c[1]}" for c in cols}
    table: dict[str, Any] = {
        "columns": [{"key": key[c], "title": column_title(*c)} for c in cols],
        "runs": [
            {"run": str(run), "seed": seed, "scores": {key[c]: s.get(c) for c in cols}}
            for (run, seed, _), s in zip(runs, scores, strict=True)
        ],
        "mean": {},
        "sd": {},
        "n": {},
    }
    for c in cols:
        values = [s[c] for s in scores if c in s]
        table["mean"][key[c]], table["sd"][key[c]] = mean_sd(values)
        table["n"][key[c]] = len(values)
    return table


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def table_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: one row per seed, then mean ± sd (n when a run lacks the column)."""
    cols = table["columns"]
    n_runs = len(table["runs"])
    lines = [
        "# Replicates",
        "",
        f"mIoU (%) of {n_runs} run(s), each from its summary.json; mean ± sample sd (n − 1) "
        "over the runs that have the column.",
        "",
        "| seed | " + " | ".join(c["title"] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for run in table["runs"]:
        cells = [_fmt(run["scores"][c["key"]]) for c in cols]
        lines.append(f"| {run['seed']} | " + " | ".join(cells) + " |")
    cells = []
    for c in cols:
        k = c["key"]
        mean, sd, n = table["mean"][k], table["sd"][k], table["n"][k]
        cell = "–" if mean is None else f"{mean:.2f} ± {_fmt(sd)}"
        if mean is not None and n < n_runs:
            cell += f" (n={n})"
        cells.append(cell)
    lines.append("| **mean ± sd** | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def build_replicates(
    run_dirs: Sequence[str | os.PathLike], out_md: str | os.PathLike
) -> dict[str, Any]:
    """Read ``<run>/summary.json`` of every run, write the Markdown table and its JSON
    (``out_md`` with the suffix .json) and return the table dict."""
    runs = []
    for d in run_dirs:
        path = Path(d) / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no summary of this run (did it finish?)")
        runs.append((str(d), run_seed(d), read_json(path)))
    table = build_table(runs)
    write_text(out_md, table_markdown(table))
    write_json(Path(out_md).with_suffix(".json"), table)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="results folders with a summary.json each")
    parser.add_argument("--out", default="results/replicates.md", help="the Markdown table")
    args = parser.parse_args(argv)
    build_replicates(args.runs, args.out)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')}")


if __name__ == "__main__":
    main()
