"""A newcomer's second hour: keys outside the schema, sweeps checked before their first job, W&B's
folders, units and marks, collapsed accuracy, the ε bound of 0, and the committed result pages."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _main_runner import PY, REPO, TINY, compose, env, merge


def _refusal(tmp_path, *overrides: str) -> str:
    from src.main import prepare
    from src.validate import ConfigError

    cfg = compose(merge(TINY, [f"paths.cache_dir={tmp_path}/cache", *overrides]))
    with pytest.raises(ConfigError) as ei:
        prepare(cfg)
    assert "\n" not in str(ei.value)
    return str(ei.value)


@pytest.mark.parametrize("override,needles", [
    ("+bit=2", ["bit: not a config key (did you mean bits?)", "allowed top-level keys:", "bits,"]),
    ("+paths.cache_dri=x", ["paths.cache_dri: not a config key (did you mean paths.cache_dir?)",
                            "allowed keys of paths: cache_dir, data_dir"]),
    ("+membership.targt=pool", ["membership.targt: not a config key", "allowed keys of membership: target"]),
    ("+budget.iter=3", ["budget.iter: not a config key (did you mean budget.iters?)"]),
    ("+logger.projet=x", ["logger.projet: not a config key (did you mean logger.project?)"]),
    ("+dataset.augment.crop=4", ["dataset.augment.crop: not a config key", "flip, pad"]),
])
def test_keys_outside_the_schema_are_refused_at_any_level(tmp_path, override, needles):
    msg = _refusal(tmp_path, "dataset=digits", override)
    for n in needles:
        assert n in msg, msg


def test_schema_keys_that_exist_somewhere_still_pass(tmp_path):
    from src.validate import check_schema_keys

    # optional keys the code reads, a budget key the quantizers look up, a preset's own key
    for extra in (["+dataset.max_train=100"], ["++budget.iters=3"], ["++protocol.calib_passes=2"]):
        check_schema_keys(compose(merge(TINY, [f"paths.cache_dir={tmp_path}", *extra])))


def test_logger_mode_typo_is_refused(tmp_path):
    msg = _refusal(tmp_path, "logger=wandb", "logger.mode=ofline")
    assert msg == "logger.mode=ofline: allowed: auto, online, offline, disabled"
    from src.report.wandb_sink import resolve_mode
    from src.validate import ConfigError

    with pytest.raises(ConfigError, match="logger.mode=ofline"):
        resolve_mode("ofline")


def test_every_job_of_a_sweep_is_checked_before_the_first(tmp_path):
    from src.validate import ConfigError, check_sweep, sweep_jobs

    base = [o for o in merge(TINY, [f"paths.cache_dir={tmp_path}/cache"])]
    jobs = sweep_jobs(["-m", "quant=rtn,obc", "bits=4,5.5", *base])
    assert [(j[0], j[1]) for j in jobs] == [("quant=rtn", "bits=4"), ("quant=rtn", "bits=5.5"),
                                            ("quant=obc", "bits=4"), ("quant=obc", "bits=5.5")]
    with pytest.raises(ConfigError) as ei:
        check_sweep(["-m", "quant=rtn,obc", "bits=4,5.5", *base])
    assert str(ei.value).startswith("job 1 of 4 (quant=rtn bits=5.5): bits=5.5:")
    assert "no job was started" in str(ei.value)
    assert check_sweep(["-m", "quant=rtn,obc", "bits=4,2", *base]) == 4
    assert check_sweep(["quant=rtn", *base]) == 0  # a single run is checked by the job itself
    # a preset's own sweep (hydra.sweeper.params) is expanded too
    assert len(sweep_jobs(["-m", "experiment=paper_cifar10"])) == 9


def test_a_bad_later_job_stops_the_sweep_before_any_job(tmp_path):
    sweep = tmp_path / "sweep"
    p = subprocess.run([PY, "-m", "src.main", "-m", "quant=rtn", "bits=4,5.5", *TINY,
                        f"paths.cache_dir={tmp_path}/cache", f"hydra.sweep.dir={sweep}"],
                       cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert "error: job 1 of 2 (bits=5.5): bits=5.5" in p.stderr
    assert not sweep.exists() and not (tmp_path / "cache" / "models").exists()


def test_wandb_folders_default_under_outputs_and_user_settings_win(tmp_path, monkeypatch):
    from src.report.wandb_sink import local_wandb_dirs

    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "mine"))
    got = local_wandb_dirs(tmp_path / "outputs" / "wandb")
    root = (tmp_path / "outputs" / "wandb").resolve()
    assert got == {"WANDB_DIR": str(root), "WANDB_DATA_DIR": str(root / "data")}
    assert os.environ["WANDB_CACHE_DIR"] == str(tmp_path / "mine")  # the user's choice is kept
    assert "WANDB_CONFIG_DIR" not in os.environ  # the user's own wandb settings stay where they are
    assert (root / "wandb").is_dir()  # `wandb sync` writes its CLI log here only if it exists


@pytest.mark.slow  # starts W&B's service in a subprocess
def test_an_offline_run_writes_nothing_outside_the_project(tmp_path):
    """An offline W&B run with an artifact, in a fresh HOME and temp dir: W&B's staging and logs land
    under <cwd>/outputs/wandb, nothing in HOME or the system's temp folder."""
    home, tmp, work = tmp_path / "home", tmp_path / "tmp", tmp_path / "work"
    for d in (home, tmp, work):
        d.mkdir()
    code = ("from omegaconf import OmegaConf\n"
            "from src.report.wandb_sink import WandbSink\n"
            "cfg = OmegaConf.create({'logger': {'backend': 'wandb', 'mode': 'offline', 'project': 't'},"
            " 'quant': {'name': 'rtn'}, 'bits': 4, 'dataset': {'name': 'digits'}, 'model': {'name': 'smallcnn'}})\n"
            "import pathlib; job = pathlib.Path('job'); job.mkdir(); (job / 'results.json').write_text('{}')\n"
            "with WandbSink(cfg, job) as s:\n"
            "    s._log_results_artifact({'job': {}})\n")
    e = {k: v for k, v in env().items() if not k.startswith(("WANDB_", "XDG_"))}
    e.update(HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=str(REPO), WANDB_SILENT="true",
             MPLCONFIGDIR=str(tmp_path / "mpl"))  # matplotlib's font cache is not W&B's business
    p = subprocess.run([PY, "-c", code], cwd=work, env=e, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert list((work / "job" / "wandb").glob("offline-run-*"))
    assert not [str(f) for f in home.rglob("*") if "wandb" in str(f)], "W&B wrote into HOME"
    assert not [str(f) for f in tmp.rglob("*") if "wandb" in str(f)], "W&B wrote into the temp folder"
    assert (work / "outputs" / "wandb" / "data").is_dir()


def test_collapse_threshold_is_half_the_accuracy_above_chance():
    from src.report.collapse import collapse_threshold, collapsed

    # digits: FP 98.32 %, 10 classes: chance 10 %, threshold 10 + (98.32 − 10)/2 = 54.16 %
    assert collapse_threshold(0.9832, 10) == pytest.approx(0.5416)
    assert collapsed(0.2997, 0.9832, 10) is True  # RTN 2 bit on digits
    assert collapsed(0.8923, 0.9832, 10) is False  # BRECQ 1.58 bit on digits
    # TinyImageNet: FP 5.74 %, chance 0.5 %: a model at 4.55 % keeps 77 % of its margin
    assert collapsed(0.0455, 0.0574, 200) is False and collapsed(0.02, 0.0574, 200) is True
    assert collapsed(0.5, None, 10) is None


def _collapsed_job():
    sys.path.insert(0, str(Path(__file__).parent))
    from test_report_figures import _job

    res = _job("rtn", 2.0, acc=0.30)
    res["job"]["num_classes"] = 10
    res["utility"]["fp_test_acc"] = 0.9832
    res["utility"].pop("collapsed", None)
    res["attacks"]["lira_online"]["eps_lower_bound"] = 0.0
    res["fp_attacks"]["lira_online"]["eps_lower_bound"] = 0.5491
    return res


def test_console_uses_percent_words_and_flags_collapse(capsys):
    from src.report.results import print_results

    res = _collapsed_job()
    print_results(res)
    out = capsys.readouterr().out
    assert "test accuracy 30.00 % (full precision 98.32 %" in out
    assert "accuracy collapsed: test accuracy 30.00 % < 54.16 %" in out and "lost utility" in out
    row = next(line for line in out.splitlines() if "lira_online" in line and "quantized" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    ba = res["attacks"]["lira_online"]["balanced_accuracy"]
    assert cells[4] == f"{100 * ba:.2f}"  # balanced accuracy in %
    assert cells[-1] == "not certified"  # a bound of 0 certifies nothing
    fp_row = next(line for line in out.splitlines() if "lira_online" in line and "│ fp" in line)
    assert "0.5491" in fp_row
    cells_all = " ".join(line for line in out.splitlines() if "│" in line)
    assert "–" not in cells_all and "—" not in cells_all  # no look-alike dashes as marks
    assert "Rates (accuracy, TPR) in %" in out


def test_summary_flags_collapsed_rows(tmp_path):
    import csv

    from test_report_figures import _write_sweep

    from src.report import summary as S

    sweep = _write_sweep(tmp_path / "s", [_collapsed_job()])
    paths = S.write_summary(sweep, quiet=True)
    md = paths["md"].read_text()
    row = next(line for line in md.splitlines() if line.startswith("| rtn"))
    assert "| 30.00 (collapsed) |" in row
    assert "(collapsed) = collapsed: the quantized model keeps less than half" in md
    assert re.search(r"Code version: tables and figures drawn by ptq-mia [0-9a-f]{12}", md)
    table = list(csv.DictReader(open(paths["csv"])))
    assert {r["collapsed"] for r in table if r["quant"] == "rtn"} == {"True"}
    # W&B: the job's summary carries the flag
    from src.report.wandb_sink import summary_values

    res = _collapsed_job()
    res["utility"]["collapsed"] = True
    assert summary_values(res)["collapsed"] == 1


COMMITTED = sorted(p for p in (REPO / "outputs").glob("*/summary.md"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_summaries_have_the_current_format(path):
    """Every committed summary.md is in the format the code writes now: its header row is the current
    one, rates in %, worded marks, and a code-version line naming the commit that drew it."""
    from src.report import summary as S

    md = path.read_text()
    heads = [line for line in md.splitlines() if line.startswith("| method |")]
    assert heads
    for h in heads:
        metric = next((m for m in S.TPR_METRICS if S.metric_label(m) in h), "auc")
        head = S._headers(metric)
        assert h == "| " + " | ".join(head[c] for c in S._columns(metric)) + " |"
    assert re.search(r"^Code version: tables and figures drawn( from summary\.csv)? by ptq-mia [0-9a-f]{12}",
                     md, re.M), "no code version"
    body = "\n".join(line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method"))
    assert "–" not in body and "—" not in body  # 'n/a' and 'below res.' instead
    assert "Units: accuracies and TPRs in %" in md


def test_configuration_doc_lists_every_option_that_help_lists():
    """docs/configuration.md's group table names every option --help prints (both from conf/)."""
    from src.main import help_options

    doc = (REPO / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in doc.splitlines() if line.startswith("| `")}
    for group in ("dataset", "model", "train", "quant", "bitwidth", "attack", "logger", "experiment", "protocol"):
        for option in help_options(group).split(", "):
            assert f"`{option}`" in rows[group], f"{group}={option} missing from docs/configuration.md"
