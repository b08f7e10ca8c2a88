"""Reports a reader can trust: resolution marks, distinct series, readable labels, LaTeX tables, filters."""
from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from src.report import plots as P
from src.report import summary as S
from src.report.labels import series_style
from src.report.results import _evaluate, _per_example_plot, print_results

REPO = Path(__file__).resolve().parents[1]
ATTACKS = ["lira_online", "loss"]


def _block(n_non: int, seed: float, k: int = 2) -> dict:
    """An attack block as results.json has it, with ``n_non`` non-members per target and ``k`` targets."""
    tprs = {"tpr_at_fpr_1e-2": 0.05 + seed / 10, "tpr_at_fpr_1e-3": 0.012 + seed / 50,
            "tpr_at_fpr_1e-4": 0.011 + seed / 50}
    m = {"auc": 0.6 + seed / 10, "balanced_accuracy": 0.57, **tprs, "n_nonmembers": n_non, "n_targets": k}
    m["ci"] = {key: [v * 0.9, v * 1.1] for key, v in m.items() if key not in ("n_nonmembers", "n_targets")}
    m["per_target"] = [{"n_nonmembers": n_non, **tprs}] * k
    m["paired"] = {"auc": {"delta": -0.03 - seed / 100, "ci": [-0.05, -0.01], "significant": True,
                           "ci_kind": "t over targets"}}
    grid = np.logspace(-5, 0, 60)
    m["roc"] = {"fpr": grid.tolist(), "tpr": np.minimum(1.0, grid ** (0.6 + seed / 10)).tolist()}
    return m


def _job(quant: str, bits: float, n_non: int = 740, reference="fp", policy="uniform", acc=0.95,
         dataset="digits", display=None, seed=0.1) -> dict:
    job = {"dataset": dataset, "model": "smallcnn", "quant": quant, "bits": bits, "policy": policy,
           "targets": [0, 1], "reference": reference}
    if display:
        job["dataset_display"] = display
    return {"config": {"attack": {"names": ATTACKS, "bootstrap": 200}, "dataset": {"name": dataset}},
            "job": job,
            "utility": {"fp_test_acc": 0.97, "test_acc": acc, "fp_train_acc": 1.0, "train_acc": 0.99,
                        "accuracy_drop": 0.97 - acc},
            "attacks": {a: _block(n_non, seed + i / 10) for i, a in enumerate(ATTACKS)},
            "fp_attacks": {a: _block(n_non, 0.3 + i / 10) for i, a in enumerate(ATTACKS)}}


def _write_sweep(root: Path, jobs: list[dict]) -> Path:
    for n, res in enumerate(jobs):
        (root / str(n)).mkdir(parents=True)
        (root / str(n) / "results.json").write_text(json.dumps(res))
    return root


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    kept = []
    finish = P._finish

    def keep(fig, path, *a, **kw):
        kept.append(fig)
        return finish(fig, path, *a, **kw)

    monkeypatch.setattr(P, "_finish", keep)
    return kept


# ---------------------------------------------------------------------------------------
# resolution


@pytest.mark.parametrize("n_non, expected", [(740, [True, False, False]), (999, [True, False, False]),
                                             (1000, [True, True, False]), (10_000, [True, True, True])])
def test_results_flag_tprs_below_one_over_n(n_non, expected):
    rng = np.random.default_rng(0)
    keep = np.zeros((1, n_non + 300), dtype=bool)
    keep[0, :300] = True
    cfg = OmegaConf.create({"attack": {"names": ["loss"], "fprs": [1e-2, 1e-3, 1e-4], "bootstrap": 0}, "seed": 0})
    out = _evaluate(cfg, keep, {0: {"loss": rng.normal(size=keep.shape[1])}})["loss"]
    # 1/N ≤ α ⇔ at least one false positive backs the read
    assert [out["resolved"][f"tpr_at_fpr_{a}"] for a in ("1e-2", "1e-3", "1e-4")] == expected
    assert out["tpr_at_fpr_1e-4"] is not None  # the number is kept, only flagged


def test_console_marks_unresolved_tprs_and_explains_auc_ci_and_delta(capsys):
    res = _job("rtn", 4.0, n_non=740)
    res["attacks"]["lira_online"]["resolved"] = {"tpr_at_fpr_1e-2": True, "tpr_at_fpr_1e-3": False,
                                                 "tpr_at_fpr_1e-4": False}
    print_results(res)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "lira_online" in line and "quantized" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[-3:-1] == ["below res.", "below res."]  # TPR@1e-3, TPR@1e-4 (before ε): 1/740 > 1e-3
    assert cells[-4] == f"{100 * (0.05 + 0.01):.2f}"  # TPR@1e-2 resolved (7 false positives), in %
    assert f"{-0.031:+.4f} [{-0.05:+.4f}, {-0.01:+.4f}]*" in row  # paired ΔAUC with its CI
    assert "below res. = below resolution: FPR < 1/N non-members" in out and "N = 740" in out
    assert "P(member score > non-member score)" in out and "Student-t over the k = 2 targets" in out
    # a single target: the CI is the bootstrap one
    res["job"]["targets"] = [0]
    for block in ("attacks", "fp_attacks"):
        for m in res[block].values():
            m["n_targets"] = 1
    print_results(res)
    assert "percentile bootstrap, one target (200 replicates" in capsys.readouterr().out


def test_summary_marks_unresolved_metric(tmp_path):
    sweep = _write_sweep(tmp_path / "s", [_job("rtn", 4.0), _job("rtn", 2.0, acc=0.8)])
    paths = S.write_summary(sweep, quiet=True, metric="tpr_at_fpr_1e-3")
    md = paths["md"].read_text()
    rows = [l for l in md.splitlines() if l.startswith("| rtn") or l.startswith("| FP")]
    assert rows and all(l.split(" | ")[7] == "below res." for l in rows)  # the TPR @ 0.1 % column
    assert "below res. = below resolution: FPR < 1/N non-members" in md and "740" in md
    table = list(csv.DictReader(open(paths["csv"])))
    assert {r["tpr_at_fpr_1e-2_resolved"] for r in table} == {"True"}
    assert {r["tpr_at_fpr_1e-3_resolved"] for r in table} == {"False"}
    assert float(table[0]["tpr_at_fpr_1e-3"]) > 0  # the CSV keeps the number
    # no METRIC: TPR at the lowest FPR every row resolves (1 % with 740 non-members)
    md = S.write_summary(sweep, quiet=True)["md"].read_text()
    assert "TPR @ 1 % FPR (%)" in md and "below res." not in md.replace("### ", "").split("\n\n")[1]


# ---------------------------------------------------------------------------------------
# series styles and labels


def test_first_twelve_series_differ_in_colour_and_marker():
    styles = [series_style(i) for i in range(12)]
    assert len({s["color"] for s in styles}) == 12 and len({s["marker"] for s in styles}) == 12
    pairs = {(s["color"], s["marker"]) for s in (series_style(i) for i in range(84))}
    assert len(pairs) == 84
    assert all(s["color"].lower() not in ("black", "#000000", "grey", "gray") for s in styles)


def _roc_jobs() -> list[dict]:
    jobs = [_job(q, b, seed=i / 20) for i, (q, b) in enumerate(itertools.product(("rtn", "obc", "gptq"), (4.0, 3.0, 2.0, 1.58)))]
    jobs += [_job("rtn", 2.0, reference="matched", seed=0.9), _job("obc", 2.0, policy="paper", seed=0.95)]
    return jobs


def test_roc_series_are_distinct_and_matched_refs_labelled(tmp_path, figures):
    jobs = _roc_jobs()
    P.roc(jobs, "lira_online", tmp_path / "roc.png")
    (ax,) = figures[-1].axes
    lines = [l for l in ax.get_lines() if l.get_label().split(" ")[0] in ("RTN", "OBC", "GPTQ")]
    assert len(lines) == len(jobs) == 14
    labels = [l.get_label() for l in lines]
    assert len(set(labels)) == 14
    assert "RTN 2 bit, matched refs" in labels and "RTN 2 bit" in labels  # display names
    assert "OBC 2 bit, last layer 8-bit below 2 bits" in labels
    assert len({l.get_color() for l in lines}) == 14
    assert len({l.get_marker() for l in lines}) == 12  # 12 markers, then the pairs stay unique
    assert len({(l.get_color(), l.get_marker()) for l in lines}) == 14
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == len(set(legend))
    # the resolution floor: 2 targets × 740 non-members pooled
    assert any("FPR < 1/N, N = 1,480 non-members" in t for t in legend)
    floor = [l for l in ax.get_lines() if list(l.get_xdata()) == [1 / 1480, 1 / 1480]]
    assert floor, "a vertical line at FPR = 1/N"
    assert min(min(l.get_xdata()) for l in lines) >= 1 / 1480  # no curve below the floor
    assert ax.xaxis.get_major_formatter()(1e-3, 0) == "0.1%"


def test_titles_use_the_display_name(tmp_path, figures):
    jobs = [_job("rtn", 4.0, dataset="imagefolder", display="CIFAR-10")]
    P.roc(jobs, "lira_online", tmp_path / "roc.png")
    title = figures[-1].axes[0].get_title()
    assert title.startswith("CIFAR-10 / small ResNet") and "imagefolder" not in title
    rows = S.rows_from_results(jobs)
    P.privacy_utility(rows, "lira_online", tmp_path / "pu.png", metric="tpr_at_fpr_1e-2")
    ax = figures[-1].axes[0]
    assert ax.get_title().startswith("CIFAR-10 / small ResNet")
    assert ax.xaxis.get_major_formatter()(0.5, 0) == "50%" and ax.get_xlabel() == "test accuracy (%)"


def test_dataset_display_name_from_presets():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=["experiment=cifar10_cpu", "dataset=imagefolder", "dataset.root=/x/y"])
        assert (cfg.dataset.name, cfg.dataset.display_name) == ("imagefolder", "CIFAR-10")
        assert compose("config", overrides=["dataset=cifar100"]).dataset.display_name == "CIFAR-100"


def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


def test_point_labels_never_overlap(tmp_path, figures):
    # two methods on the very same point by the FP star; three more a label's width apart in a row;
    # one far away that stretches the axis, so that the row is crowded
    jobs = [_job(q, 4.0, acc=0.965, seed=0.3) for q in ("rtn", "obc")]
    jobs += [_job(q, 4.0, acc=0.95 - 0.015 * i, seed=0.3) for i, q in enumerate(("gptq", "adaround", "brecq"))]
    jobs += [_job("rtn", 2.0, acc=0.5, seed=0.5)]
    rows = S.rows_from_results(jobs)
    P.privacy_utility(rows, "lira_online", tmp_path / "pu.png", metric="tpr_at_fpr_1e-2")
    fig = figures[-1]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the saved figure's layout, measured again
    # the crowded high-accuracy points get a zoom panel beside the full view; each panel's labels apart
    assert len(fig.axes) == 2 and fig.axes[1].get_title().startswith("zoom")
    joined = ""
    for ax in fig.axes:
        texts = [t for t in ax.texts if t.get_text() and "below resolution" not in t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in texts]
        assert not [(a.get_text(), b.get_text()) for (a, ba), (b, bb) in
                    itertools.combinations(zip(texts, boxes), 2) if _overlap(ba, bb)]
        joined += " | ".join(t.get_text() for t in texts) + " | "
    # the two coincident points share one label that names both methods (display names)
    assert "RTN 4 bit" in joined and "OBC 4 bit" in joined and "FP" in joined


def test_per_example_plot_has_title_and_promised_numbers(tmp_path, figures):
    rng = np.random.default_rng(1)
    keep = rng.random((2, 400)) < 0.5
    fp, q = rng.normal(size=400), rng.normal(size=400)
    res = _job("obc", 2.0, display="CIFAR-10")
    res["attacks"]["lira_online"]["per_example"] = {
        "per_target": [{"top1_retained": 0.25, "top10_retained": 0.625, "spearman": 0.8123}]}
    arrays = {"target_ids": np.array([1]), "keep": keep, "fp_attack_lira_online": fp[None],
              "attack_lira_online": q[None]}
    _per_example_plot(tmp_path, res, arrays)
    assert (tmp_path / "per_example.png").read_bytes().startswith(b"\x89PNG")
    ax = figures[-1].axes[0]
    assert ax.get_title() == "CIFAR-10 / small ResNet / OBC 2 bit — LiRA (online), target 1"
    # the numbers and the score's definition sit under the axes, not over the points
    assert not ax.texts
    text = " ".join(t.get_text() for t in figures[-1].texts).replace("\n", " ")
    assert "top-1 % most exposed members still in the top 1 %: 25 %" in text and "top 10 %: 62 %" in text
    assert "Spearman ρ (FP vs quantized, all examples): 0.812" in text
    assert "LiRA (online) score = log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)" in text


# ---------------------------------------------------------------------------------------
# tables: policy labels, targets, LaTeX


def test_summary_columns_policy_label_and_one_table_per_attack(tmp_path):
    jobs = [_job("adaround", 1.58, policy="paper", acc=0.7), _job("rtn", 4.0, policy="8bit_ends")]
    md = S.write_summary(_write_sweep(tmp_path / "s", jobs), quiet=True)["md"].read_text()
    assert [l for l in md.splitlines() if l.startswith("### ")] == [
        "### Digits (8×8) / smallcnn — attack: lira_online", "### Digits (8×8) / smallcnn — attack: loss"]
    assert "| method | bits | bit policy | targets | train acc (%) | test acc (%) | AUC [95% CI] |" in md
    assert "| adaround | 1.58 | last layer 8-bit below 2 bits | 2 | 99.00 | 70.00 |" in md
    assert "| rtn | 4 | first and last layer 8-bit | 2 |" in md
    assert "(paper)" not in md


def test_summary_tex_is_a_booktabs_table(tmp_path):
    jobs = [_job("rtn", 4.0), _job("rtn", 2.0, reference="matched"), _job("obc", 1.58, policy="paper")]
    paths = S.write_summary(_write_sweep(tmp_path / "s", jobs), quiet=True, metric="tpr_at_fpr_1e-3")
    tex = paths["tex"].read_text()
    assert paths["tex"] == tmp_path / "s" / "summary_tpr_at_fpr_1e-3.tex"  # beside the sweep's own
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == len(ATTACKS)
    for block in tex.split(r"\begin{tabular}")[1:]:
        body = block.split(r"\end{tabular}")[0]
        assert body.index(r"\toprule") < body.index(r"\midrule") < body.index(r"\bottomrule")
        rows = body.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        header = body.split(r"\toprule")[1].split(r"\midrule")[0].strip()
        n_cols = len(block.split("}", 1)[0].lstrip("{"))  # the column spec, e.g. lrlrrrrrr
        for line in [header] + rows:
            assert line.endswith(r"\\")
            assert len(re.findall(r"(?<!\\)&", line)) == n_cols - 1, line
            assert not re.search(r"(?<!\\)[%_#]", line), line  # specials escaped
        assert len(rows) == 4  # FP + 3 jobs
        assert any(r.startswith("rtn [matched refs] & 2 &") for r in rows)
        assert all("below res." in r.split("&")[7] for r in rows)  # TPR @ 0.1 % below resolution
    assert tex.count("{") == tex.count("}")


# ---------------------------------------------------------------------------------------
# make report ATTACK= METRIC=

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(sweep: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "report", f"SWEEP={sweep}", f"PY={sys.executable}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@needs_make
def test_make_report_filters_attack_and_metric(tmp_path):
    sweep = _write_sweep(tmp_path / "s", [_job("rtn", 4.0, n_non=5000), _job("obc", 2.0, n_non=5000)])
    S.write_summary(sweep, quiet=True)
    own = {f: (sweep / f).read_bytes() for f in ("summary.md", "summary.csv", "summary.tex")}
    p = _make(sweep, "ATTACK=loss", "METRIC=tpr_at_fpr_1e-3")
    assert p.returncode == 0, p.stderr
    assert "unchanged" in p.stdout
    # the re-ranked report goes beside the sweep's own summary, which stays as it was
    assert {f: (sweep / f).read_bytes() for f in own} == own
    md = (sweep / "summary_loss_tpr_at_fpr_1e-3.md").read_text()
    assert "attack: loss" in md and "attack: lira_online" not in md
    assert "TPR @ 0.1 % FPR (%)" in md and "TPR @ 1 % FPR" not in md
    fp_loss = _job("rtn", 4.0)["fp_attacks"]["loss"]["tpr_at_fpr_1e-3"]
    (fp_row,) = [l for l in md.splitlines() if l.startswith("| FP |")]
    assert fp_row.startswith("| FP | 32 | full precision | 2 | 100.00 | 97.00 | ") and f"| {100 * fp_loss:.2f} [" in fp_row
    assert fp_row.endswith("| n/a |")  # no ΔAUC of FP against itself
    assert (sweep / "summary_loss_tpr_at_fpr_1e-3.tex").is_file() and (sweep / "roc_loss_tpr_at_fpr_1e-3.png").is_file()


@needs_make
@pytest.mark.parametrize("arg, allowed", [("ATTACK=lira", "lira_online, loss"),
                                          ("METRIC=tpr", "auc, balanced_accuracy, tpr_at_fpr_1e-2")])
def test_make_report_unknown_choice_is_one_line(tmp_path, arg, allowed):
    sweep = _write_sweep(tmp_path / "s", [_job("rtn", 4.0)])
    p = _make(sweep, arg)
    assert p.returncode != 0
    ours = [l for l in p.stderr.splitlines() if not l.startswith("make")]
    assert len(ours) == 1 and ours[0].startswith(f"error: {arg}:") and allowed in ours[0], p.stderr
    assert not (sweep / "summary.md").exists()  # nothing written
    # the module itself: exit 2, the same single line
    q = subprocess.run([sys.executable, "-m", "src.report.summary", str(sweep), "--" + arg.split("=")[0].lower(),
                        arg.split("=")[1]], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert q.returncode == 2 and q.stderr.strip() == ours[0] and q.stdout == ""


def test_zoom_panel_draws_every_point_inside_its_box(tmp_path, figures):
    """FP at 97 %, two quantized points within 8 % of the accuracy span of it (the crowded cluster that
    earns a zoom), GPTQ just outside that cluster but inside the box's padding, and a far point that sets
    the span (10 points). A point inside the dashed box must appear in the zoom, or the zoom hides it."""
    jobs = [_job("rtn", 4.0, acc=0.969, seed=0.3), _job("obc", 4.0, acc=0.9625, seed=0.3),
            _job("gptq", 4.0, acc=0.9615, seed=0.3), _job("rtn", 2.0, acc=0.87, seed=0.5)]
    rows = S.rows_from_results(jobs)
    P.privacy_utility(rows, "lira_online", tmp_path / "pu.png", metric="tpr_at_fpr_1e-2")
    fig = figures[-1]
    assert len(fig.axes) == 2 and fig.axes[1].get_title().startswith("zoom")
    x0, x1 = fig.axes[1].get_xlim()
    assert x0 <= 0.9615 <= x1  # the box reaches GPTQ ...
    zoom_labels = [t.get_text() for t in fig.axes[1].texts]
    assert sorted(zoom_labels) == ["4 bit", "4 bit", "4 bit", "FP"]  # ... so the zoom draws it; not 2 bit
    legend = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert "GPTQ" in legend
