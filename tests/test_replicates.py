"""The replicate table (make replicate): every score from the runs' summary.json, mean ± sd."""

from __future__ import annotations

import math

import pytest

from pole_core.io.atomic import read_json, write_json
from pole_core.report.replicates import build_replicates, main, mean_sd, run_seed


def _summary(cam_b, cam_p, crf_b, crf_p, ps_b, ps_p, seg, oracle=None) -> dict:
    """A summary.json as pole_core.report.summary writes it (oracle: cam, crf, pseudo)."""
    rows = [
        ("cam", cam_b, cam_p, oracle and oracle[0]),
        ("crf", crf_b, crf_p, oracle and oracle[1]),
        ("rw", 1.0, 2.0, None),  # not a column of the table
        ("pseudo", ps_b, ps_p, oracle and oracle[2]),
        ("seg_val", None, seg, None),
    ]
    table = []
    for stage, b, p, o in rows:
        row = {"stage": stage, "baseline": b, "pole": p}
        if oracle is not None:
            row["oracle"] = o
        table.append(row)
    return {"miou": {}, "table": table, "timings_s": {}, "clip_zeroshot": None}


@pytest.fixture()
def runs(tmp_path):
    dirs = []
    docs = [
        _summary(40.0, 44.0, 50.0, 55.0, 60.0, 66.0, 58.0, oracle=(47.0, 57.0, 69.0)),
        _summary(42.0, 45.0, 52.0, 54.0, 61.0, 65.0, 59.0, oracle=(49.0, 59.0, 71.0)),
        _summary(41.0, 46.0, 51.0, 56.0, 62.0, 67.0, 60.0),  # a run without the oracle
    ]
    for seed, doc in enumerate(docs):
        d = tmp_path / f"seed_{seed}"
        write_json(d / "summary.json", doc)
        dirs.append(d)
    (dirs[1] / "config.yaml").write_text("seed: 7\nresults_dir: elsewhere\n")  # wins over the name
    return dirs


def test_mean_and_sample_sd():
    mean, sd = mean_sd([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert sd == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert mean_sd([3.0]) == (3.0, None) and mean_sd([]) == (None, None)


def test_table_from_fake_summaries(runs, tmp_path):
    out = tmp_path / "replicates.md"
    table = build_replicates(runs, out)
    keys = [c["key"] for c in table["columns"]]
    assert keys == [
        "cam_baseline",
        "crf_baseline",
        "pseudo_baseline",
        "cam_pole",
        "crf_pole",
        "pseudo_pole",
        "cam_oracle",
        "crf_oracle",
        "pseudo_oracle",
        "seg_val_pole",
    ]
    assert [r["seed"] for r in table["runs"]] == [0, 7, 2]
    assert table["runs"][2]["scores"]["cam_oracle"] is None
    assert table["mean"]["cam_pole"] == pytest.approx(45.0)
    assert table["sd"]["cam_pole"] == pytest.approx(1.0)
    assert table["mean"]["seg_val_pole"] == pytest.approx(59.0)
    assert table["sd"]["seg_val_pole"] == pytest.approx(1.0)
    # the missing variant: mean and sd over the two runs that have it
    assert table["n"]["pseudo_oracle"] == 2 and table["n"]["cam_baseline"] == 3
    assert table["mean"]["pseudo_oracle"] == pytest.approx(70.0)
    assert table["sd"]["pseudo_oracle"] == pytest.approx(math.sqrt(2.0))
    assert read_json(tmp_path / "replicates.json") == table

    lines = out.read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith("|")]
    assert len(rows) == 2 + 3 + 1  # header, rule, one row per seed, mean ± sd
    assert all(r.count("|") == len(keys) + 2 for r in rows)
    assert rows[0].startswith(
        "| seed | CAM (baseline) | CAM+CRF (baseline) | pseudo-masks (baseline)"
    )
    assert rows[0].endswith("| segmenter (val) on pole |")
    assert rows[1] == "|---|" + "---:|" * len(keys)
    assert rows[2] == (
        "| 0 | 40.00 | 50.00 | 60.00 | 44.00 | 55.00 | 66.00 | 47.00 | 57.00 | 69.00 | 58.00 |"
    )
    assert rows[4].startswith("| 2 | 41.00 |") and "| – | – | – | 60.00 |" in rows[4]
    assert rows[5].startswith("| **mean ± sd** | 41.00 ± 1.00 |")
    assert "| 70.00 ± 1.41 (n=2) |" in rows[5]


def test_one_run_and_cli(runs, tmp_path, capsys):
    out = tmp_path / "one" / "rep.md"
    main([str(runs[0]), "--out", str(out)])
    assert "wrote" in capsys.readouterr().out
    md = out.read_text()
    assert "| **mean ± sd** | 40.00 ± – |" in md  # one seed: no sd
    assert run_seed(runs[0]) == 0 and run_seed(tmp_path) == tmp_path.name


def test_missing_summary_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="seed_9/summary.json"):
        build_replicates([tmp_path / "seed_9"], tmp_path / "r.md")
