"""The W/A report of a sweep (src/report/activations.py): its rows are the sweep's own summary rows,
W/A jobs labelled by their activation bits next to their weight-only twins, one panel per quantizer."""
from __future__ import annotations

import json
from pathlib import Path

from src.report import activations as A
from test_report import PNG_MAGIC, make_result


def make_sweep(root: Path) -> Path:
    jobs = []
    for q in ("adaround", "rtn"):
        for act in (None, 8, 4):
            res = make_result(q, 2.0)
            if act is not None:
                res["job"]["act_bits"] = act
            jobs.append(res)
    seq = make_result("rtn", 2.0)
    seq["config"]["quant"] = {"name": "rtn", "sequential": True}
    jobs.append(seq)
    for n, res in enumerate(jobs):
        for a, m in res["attacks"].items():
            d = round(m["auc"] - res["fp_attacks"][a]["auc"], 6)
            m["paired"] = {"auc": {"delta": d, "ci": [d - 0.01, d + 0.01], "significant": abs(d) > 0.01}}
        (root / str(n)).mkdir(parents=True)
        (root / str(n) / "results.json").write_text(json.dumps(res))
    return root


def test_table_and_figure(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    paths = A.write(sweep, tmp_path / "out", attack="lira_online")
    md = paths["md"].read_text()
    body = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    labels = [(c[1].strip(), c[3].strip()) for c in (line.split("|") for line in body)]
    assert labels == [("FP", "–"), ("adaround", "weights only"), ("adaround", "A8"), ("adaround", "A4"),
                      ("rtn", "weights only"), ("rtn", "weights only, sequential"), ("rtn", "A8"), ("rtn", "A4")]
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_unknown_attack_is_one_line(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep")
    assert A.main([str(sweep), "--attack", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and "\n" not in err
