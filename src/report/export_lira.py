"""Export a job's scores in the layout of the LiRA reference code and lira-pytorch (docs/audit.md).

    python -m src.report.export_lira <job dir> <out>

Both read a folder holding one sub-folder per model, each with ``keep.npy`` (bool [N], the model's
members among the N candidates) and its scores: ``scores/<name>.npy`` (the reference code's
plot.py takes the last file in name order) or ``scores.npy`` (lira-pytorch). A score is the
logit-scaled confidence φ = log p_y − log(1 − p_y) per example and query view, float32 [N, Q], as
their score.py computes it from logits. The job stores φ already (scores.npz), so nothing is re-run.

One such folder per attacked target and precision, holding exactly that target and the references
the job attacked it with:

    <out>/target<t>-fp/                 the full-precision target and its references
    <out>/target<t>-quantized/          the quantized target and its references (FP ones, or the
                                        quantized references with attack.reference=matched)
    <out>/target<t>-quantized-matched/  attack.reference=both only: the quantized references
        experiment-ref<m>/keep.npy, scores/final.npy, scores.npy     reference m (pool model m)
        experiment-target/keep.npy, scores/final.npy, scores.npy     the target
    <out>/index.json                    per folder: target row and name, precision, reference models, queries
    <out>/y_train.npy                   the candidates' labels (the reference code's score.py reads it)

A folder holds nothing but the model folders, so either script can be pointed at it.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from src.report.labels import target_label

SCORE_NAME = "final.npy"


def _write_model(d: Path, keep: np.ndarray, phi: np.ndarray) -> None:
    (d / "scores").mkdir(parents=True)
    np.save(d / "keep.npy", np.asarray(keep, dtype=bool))
    scores = np.asarray(phi, dtype=np.float32)
    np.save(d / "scores" / SCORE_NAME, scores)
    np.save(d / "scores.npy", scores)


def views(job: dict, arrays) -> dict[str, dict]:
    """{folder name: {target, precision, reference_kind, references, ref_phi, target_phi}} of a job."""
    from omegaconf import OmegaConf

    from src.pipeline import reference_models

    cfg = OmegaConf.create(job["config"])
    keep = arrays["keep"]
    phi = arrays["phi"]
    kind = cfg.attack.get("reference", "fp")
    fp_job = cfg.quant.name in ("none", "fp")
    precision = "fp" if fp_job else f"{cfg.quant.name} {float(cfg.bits):g} bits"
    out = {}
    for i, t in enumerate(int(x) for x in arrays["target_ids"]):
        refs = reference_models(cfg, keep, t)
        base = {"target": t, "references": refs}
        out[f"target{t}-fp"] = {**base, "precision": "fp", "reference_kind": "fp", "ref_phi": phi,
                                "target_phi": phi[t]}
        if fp_job:
            continue
        quantized = {**base, "precision": precision, "target_phi": arrays["target_phi"][i]}
        if kind in ("fp", "both"):
            out[f"target{t}-quantized"] = {**quantized, "reference_kind": "fp", "ref_phi": phi}
        if kind in ("matched", "both"):
            name = f"target{t}-quantized" + ("-matched" if kind == "both" else "")
            out[name] = {**quantized, "reference_kind": "matched", "ref_phi": arrays["ref_phi"]}
    return out


def export(job_dir: str | Path, out: str | Path) -> dict:
    """Write the layout of the module doc for the job in ``job_dir``; returns the index."""
    job_dir, out = Path(job_dir), Path(out)
    results = json.loads((job_dir / "results.json").read_text())
    arrays = dict(np.load(job_dir / "scores.npz"))
    queries = list(results["config"]["dataset"].get("queries") or [])
    index = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, v in views(results, arrays).items():
        d = out / name
        for m in v["references"]:
            _write_model(d / f"experiment-ref{m:03d}", arrays["keep"][m], v["ref_phi"][m])
        _write_model(d / "experiment-target", arrays["keep"][v["target"]], v["target_phi"])
        index[name] = {"target": v["target"], "label": target_label(results["config"], v["target"]),
                       "precision": v["precision"], "reference_kind": v["reference_kind"],
                       "references": v["references"], "queries": queries,
                       "n_examples": int(arrays["keep"].shape[1])}
    np.save(out / "y_train.npy", arrays["labels"])
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index


def main(argv: list[str]) -> int:
    if len(argv) != 2 or any(a.startswith("-") for a in argv):
        print("usage: python -m src.report.export_lira <job dir> <out>", file=sys.stderr)
        return 2
    job_dir, out = Path(argv[0]), Path(argv[1])
    missing = [f for f in ("results.json", "scores.npz") if not (job_dir / f).is_file()]
    if missing:
        print(f"error: {job_dir}: not a finished job dir (no {' or '.join(missing)})", file=sys.stderr)
        return 2
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"error: {out}: exists and is not an empty folder; name a new one", file=sys.stderr)
        return 2
    index = export(job_dir, out)
    for name, v in index.items():
        print(f"{out / name}: target {v['label']}, {v['precision']}, {len(v['references'])} references "
              f"({v['reference_kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
