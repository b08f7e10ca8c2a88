"""A saved W&B Report of one sweep's comparison, built with ``wandb-workspaces``.

``python -m src.report.wandb_report SWEEP_DIR`` (``make wandb-report SWEEP=<dir>``): reads the sweep's
``*/results.json`` (local files are the source of truth) and, with W&B credentials, saves a Report in
the sweep's project with

* the summary run's native charts (the ``wandb.plot.line`` tables of :mod:`src.report.dashboard`):
  test accuracy, and per attack AUC and TPR at 0.1 % FPR vs bits, one line per quantizer, and the
  privacy–utility chart;
* per attack a native scatter over the job runs (x = summary ``test_acc``, y = summary
  ``<attack>/tpr_at_fpr_1e-3``), runs grouped by ``quant.name``;
* the pool models' training curves (``pool/mNN/train_loss|train_acc`` against ``pool/mNN/epoch``).

Run sets select runs by the sweep's group and ``job_type`` (``summary`` / ``quantize-attack``), so
the Report needs the runs uploaded first. Without credentials (or with ``WANDB_MODE=offline``) it
prints one line saying so and exits 0; ``--spec FILE`` writes the JSON spec that would be sent (no
network) in either case.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from src.report.dashboard import attacks_of, chart_specs
from src.report.summary import collect, rows_from_results
from src.report.wandb_sink import (JOB_TYPE, SUMMARY_JOB_TYPE, SYNC_CMD, has_credentials, local_wandb_dirs,
                                   resolve_mode)

MAX_CURVE_PANELS = 16  # per-model curve panels in the Report; the workspace has every model
TPR_KEY = "tpr_at_fpr_1e-3"


def sweep_group(sweep_dir: Path, results: list[dict]) -> str:
    """The W&B group of the sweep's runs, as the jobs and the summary run compute it:
    ``logger.group`` when set, else ``<experiment_name>-<sweep stamp>``."""
    cfgs = [r.get("config") or {} for r in results]
    groups = {(c.get("logger") or {}).get("group") for c in cfgs} - {None, ""}
    if len(groups) == 1:
        return str(groups.pop())
    names = {c.get("experiment_name") for c in cfgs} - {None}
    experiment = names.pop() if len(names) == 1 else "sweep"
    return f"{experiment}-{Path(sweep_dir).name}"[:128]


def _logger_key(results: list[dict], key: str) -> str | None:
    for r in results:
        v = ((r.get("config") or {}).get("logger") or {}).get(key)
        if v:
            return str(v)
    return None


def _quote(s: str) -> str:
    return "'" + str(s).replace("\\", "\\\\").replace("'", "\\'") + "'"


def build_report(sweep_dir: str | Path, entity: str, project: str | None = None, results: list[dict] | None = None):
    """The ``wandb_workspaces.reports.v2.Report`` of the sweep (nothing is sent: ``save()`` does that)."""
    import wandb_workspaces.reports.v2 as wr

    sweep_dir = Path(sweep_dir)
    results = collect(sweep_dir) if results is None else results
    if not results:
        raise ValueError(f"no */results.json under {sweep_dir}")
    project = project or _logger_key(results, "project") or "ptq-mia"
    rows = rows_from_results(results)
    group = sweep_group(sweep_dir, results)

    def summary_rs():  # a run set per grid (each has its own id)
        return wr.Runset(entity=entity, project=project, name="summary run",
                         filters=f"Group = {_quote(group)} and JobType = {_quote(SUMMARY_JOB_TYPE)}")

    def jobs_rs(groupby=None):
        return wr.Runset(entity=entity, project=project, name="jobs", groupby=groupby or [],
                         filters=f"Group = {_quote(group)} and JobType = {_quote(JOB_TYPE)}")

    def chart(spec):
        return wr.CustomChart(query={"summaryTable": {"tableKey": spec.table_key}}, chart_name="wandb/line/v0",
                              chart_fields={"x": spec.x, "y": spec.y, "stroke": spec.stroke},
                              chart_strings={"title": spec.title})

    specs = chart_specs(rows)
    blocks = [
        wr.P(f"Sweep {sweep_dir.name}: {len(results)} jobs in group {group} (project {project}). "
             "Charts over bits come from the summary run (job_type = summary); the scatter and the "
             "training curves from the job runs (job_type = quantize-attack)."),
        wr.H2("Test accuracy vs bits"),
        wr.PanelGrid(runsets=[summary_rs()], panels=[chart(s) for s in specs if s.key == "charts/test_acc_vs_bits"]),
    ]
    for attack in attacks_of(rows):
        panels = [chart(s) for s in specs if s.key.startswith(f"charts/{attack}/")]
        blocks += [wr.H2(f"Attack: {attack}"), wr.PanelGrid(runsets=[summary_rs()], panels=panels)]
    blocks += [
        wr.H2("Privacy–utility over the job runs"),
        wr.PanelGrid(runsets=[jobs_rs(["config.quant.name"])], panels=[
            wr.ScatterPlot(title=f"{a}: TPR@0.1%FPR vs test accuracy", x=wr.SummaryMetric("test_acc"),
                           y=wr.SummaryMetric(f"{a}/{TPR_KEY}")) for a in attacks_of(rows)]),
    ]
    n_models = max(int((r.get("job") or {}).get("n_models") or 0) for r in results)
    width = max(2, len(str(max(0, n_models - 1))))
    curves = []
    for i in range(min(n_models, MAX_CURVE_PANELS)):
        p = f"pool/m{i:0{width}d}"
        curves.append(wr.LinePlot(title=f"pool model {i}: training curves", x=wr.Metric(f"{p}/epoch"),
                                  y=[wr.Metric(f"{p}/train_loss"), wr.Metric(f"{p}/train_acc")]))
    if curves:
        blocks += [
            wr.H2("Pool training curves"),
            wr.P("Per model, against its own epoch counter; logged by the run that trained the pool "
                 "(the first job of a sweep, or the stage=train jobs); jobs that loaded it from the cache "
                 f"have none. The workspace's 'pool' section holds all {n_models} models."),
            wr.PanelGrid(runsets=[jobs_rs()], panels=curves),
        ]
    return wr.Report(project=project, entity=entity, title=f"PTQ vs MIA: {group}"[:128],
                     description=f"Quantizers vs bits, per attack ({sweep_dir})", blocks=blocks, width="fluid")


def report_spec(report, offline: bool = True) -> dict:
    """What ``Report.save()`` sends as the view's spec (JSON-able dict). Serialising a run set looks
    up its project's internal id on the server; ``offline`` answers that lookup with a placeholder
    (``offline``) instead, so the spec can be built and checked without network or account."""
    from unittest import mock

    from wandb_workspaces.reports.v2 import interface

    def lookup(_api, _query, variables):
        return {"project": {"internalId": "offline", "name": variables.get("projectName")}}

    if offline:
        with mock.patch.object(interface, "execute_graphql", lookup), \
                mock.patch.object(interface, "_get_api", lambda: None):
            model = report._to_model()
    else:
        model = report._to_model()
    return {"displayName": model.display_name, "description": model.description,
            "project": {"name": model.project.name, "entityName": model.project.entity_name},
            "spec": json.loads(model.spec.model_dump_json(by_alias=True, exclude_none=True))}


def online() -> bool:
    return resolve_mode("auto") == "online" and has_credentials()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m src.report.wandb_report",
                                description="Save a W&B Report comparing the runs of a sweep.")
    p.add_argument("sweep_dir")
    p.add_argument("--entity", default=None, help="W&B entity (default: logger.entity, else your default)")
    p.add_argument("--project", default=None, help="W&B project (default: the jobs' logger.project)")
    p.add_argument("--spec", default=None, help="also write the report spec as JSON to this file")
    args = p.parse_args(argv)
    sweep = Path(args.sweep_dir)
    results = collect(sweep)
    if not results:
        print(f"error: no */results.json under {sweep}", file=sys.stderr)
        return 2
    local_wandb_dirs()
    is_online = online()
    entity = args.entity or _logger_key(results, "entity")
    try:
        if entity is None and is_online:
            import wandb

            entity = wandb.Api().default_entity
        report = build_report(sweep, entity or "<entity>", args.project, results)
        if args.spec:
            Path(args.spec).write_text(json.dumps(report_spec(report, offline=not is_online), indent=1))
        if not is_online:
            print(f"W&B report not saved: offline (no credentials or WANDB_MODE=offline); run `wandb login`, "
                  f"then `make sync` ({SYNC_CMD}), then `make wandb-report SWEEP={sweep}` again.")
            return 0
        report.save()
        print(f"saved W&B report: {report.url}")
        return 0
    except Exception as e:  # one line, not a traceback
        print(f"error: W&B report of {sweep} failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
