"""Cross-dataset summary over several sweep dirs: rows equal the sweeps' own summary rows, one panel
per dataset on a log TPR axis, one-line errors."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from src.report import cross_dataset as X
from src.report import summary as S
from test_report import PNG_MAGIC, make_result


def make_sweep(root: Path, dataset: str, experiment: str | None = None, fp_tpr: float | None = None) -> Path:
    """A multirun dir of 2 quantizers × 2 bit-widths with paired ΔAUC; ``fp_tpr`` overrides the FP
    target's TPR@0.1 %FPR (0 checks the log axis)."""
    sweep = root / dataset
    jobs = [make_result(q, b, dataset=dataset) for q in ("adaround", "rtn") for b in (4.0, 1.58)]
    for n, res in enumerate(jobs):
        if experiment:
            res["config"]["experiment_name"] = experiment
        for a, m in res["attacks"].items():
            d = round(m["auc"] - res["fp_attacks"][a]["auc"], 6)
            m["paired"] = {"auc": {"delta": d, "ci": [d - 0.01, d + 0.01], "significant": abs(d) > 0.01}}
        if fp_tpr is not None:
            for m in res["fp_attacks"].values():
                m["tpr_at_fpr_1e-3"] = fp_tpr
        (sweep / str(n)).mkdir(parents=True)
        (sweep / str(n) / "results.json").write_text(json.dumps(res))
    return sweep


def test_rows_are_the_sweeps_summary_rows_per_dataset(tmp_path):
    a = make_sweep(tmp_path, "digits")
    b = make_sweep(tmp_path, "synthetic", experiment="synthetic-cpu", fp_tpr=0.0)
    paths = X.write([a, b], tmp_path / "out")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert [r["dataset"] for r in rows] == ["digits-smallcnn"] * 5 + ["synthetic-cpu"] * 5
    assert {r["attack"] for r in rows} == {"lira_online"}  # the sweeps' primary attack
    for sweep, label in ((a, "digits-smallcnn"), (b, "synthetic-cpu")):
        want = [r for r in S.rows_from_results(S.collect(sweep)) if r["attack"] == "lira_online"]
        got = [r for r in rows if r["dataset"] == label]
        assert [(r["quant"], float(r["bits"])) for r in got] == [(w["quant"], w["bits"]) for w in want]
        for g, w in zip(got, want):
            for k in ("test_acc", "auc", "tpr_at_fpr_1e-2", "tpr_at_fpr_1e-3"):
                assert float(g[k]) == pytest.approx(w[k])
            if w["quant"] == "fp":
                assert g["delta_auc"] == ""
            else:
                assert float(g["delta_auc"]) == pytest.approx(w["delta_auc"])
                assert float(g["delta_auc_ci_lo"]) == pytest.approx(w["delta_auc"] - 0.01)
    md = paths["md"].read_text()
    assert "| synthetic-cpu | FP | 32 |" in md and "| digits-smallcnn | adaround | 1.58 |" in md
    assert paths["png"].read_bytes()[:8] == PNG_MAGIC


def test_one_log_panel_per_dataset_fp_star_and_zero_tpr_drawn(tmp_path, monkeypatch):
    from src.report import plots

    figs = []
    monkeypatch.setattr(plots, "_finish", lambda fig, path, *a, **k: figs.append(fig) or Path(path))
    sweeps = [make_sweep(tmp_path, "digits", fp_tpr=0.0), make_sweep(tmp_path, "synthetic")]
    X.write(sweeps, tmp_path / "out", attack="loss")
    axes = figs[0].axes
    assert len(axes) == 2 and all(ax.get_yscale() == "log" for ax in axes)
    # display names, not code names
    assert [ax.get_title() for ax in axes] == ["Digits (8×8) / small ResNet — loss attack",
                                               "Synthetic / small ResNet — loss attack"]
    stars = [ln for ln in axes[0].lines if ln.get_marker() == "*"]
    assert len(stars) == 1 and stars[0].get_ydata()[0] > 0  # FP TPR 0, drawn at the floor
    assert stars[0].get_markerfacecolor() == "none"
    points = [ln for ln in axes[1].lines if ln.get_marker() not in ("_", "None", None, "")]  # not error-bar caps
    assert len(points) == 5


def test_same_experiment_twice_is_told_apart_and_errors_are_one_line(tmp_path, capsys):
    a = make_sweep(tmp_path / "x", "digits")
    b = make_sweep(tmp_path / "y", "digits")
    rows, _ = X.cross_rows([a, b])
    labels = list(dict.fromkeys(r["dataset"] for r in rows))
    assert len(labels) == 2 and all(lb.startswith("digits-smallcnn (") for lb in labels)
    assert X.main([str(a), str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no */results.json under" in err
    assert X.main([str(a), "--out", str(tmp_path / "o"), "--attack", "rmia"]) == 1
    assert "no rows for attack 'rmia'" in capsys.readouterr().err
