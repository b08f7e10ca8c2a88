"""Every benchmark entry point and every section of ``benchmarks.bench`` and ``benchmarks.gpu_check``
runs through in its smallest form, so none can land broken. These check that the code paths run and
that what they print and write is complete (no section failed), not speeds: tiny sizes on a CPU."""
from __future__ import annotations

import json

import pytest

TINY_JOB = ["dataset=synthetic", "n_models=4", "train.epochs=1", "budget.n_calib=32", "budget.iters=4",
            "attack.bootstrap=10"]


def test_bench_every_section(tmp_path):
    """(a)-(f) at the tiny size: every section reports figures, none an error."""
    from benchmarks import bench

    res = bench.main(["--device", "cpu", "--size", "tiny", "--out", str(tmp_path / "b.json")])
    for sec in ("reference", "scoring", "plain_vs_bare", "precision"):
        assert "error" not in res[sec], (sec, res[sec])
    assert all("error" not in v for v in res["fast"]["variants"].values())
    assert set(res["quant"]) == {"rtn", "adaround", "brecq", "obc"}
    assert all("error" not in v for v in res["quant"].values()), res["quant"]
    # the precision rows: both paths, the four cells, fp32 NCHW the unit of each ratio
    rows = res["precision"]["rows"]
    assert {r["path"] for r in rows} == {"plain", "fast"}
    for r in rows:
        assert r["ratio"]["32-true"] == 1.0 and set(r["ratio"]) == {"32-true", "32-true CL", "bf16-mixed",
                                                                       "bf16-mixed CL"}


def test_bench_only_precision(tmp_path, capsys):
    """``make bench``'s ``--only precision`` (it once stopped with a NameError)."""
    from benchmarks import bench

    out = tmp_path / "p.json"
    res = bench.main(["--only", "precision", "--size", "tiny", "--out", str(out)])
    assert json.loads(out.read_text())["precision"]["rows"] == json.loads(json.dumps(res["precision"]["rows"]))
    assert "(f) training precision" in capsys.readouterr().out


def test_gptq_vs_obc(tmp_path):
    from benchmarks import gptq_vs_obc

    res = gptq_vs_obc.main(["--rows", "4", "--cols", "32", "--obc-rows", "2", "--out", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text()) == json.loads(json.dumps(res))


def test_epsilon_coverage(capsys):
    from benchmarks import epsilon_coverage

    epsilon_coverage.main(["--draws", "20", "--n", "50", "--eps", "0", "1"])
    out = capsys.readouterr().out
    assert "P(ε_lb > ε)" in out and "| 50 | split |" in out


def test_lira_reference_count(capsys):
    from benchmarks import lira_reference_count

    lira_reference_count.main(["--sizes", "4", "--n", "100", "--reps", "1", "--targets", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "n_models" and lines[1].split()[0] == "4" and len(lines) == 2


def test_pool_speed_tiny(capsys):
    """All three variants, the last in spawned worker processes (cpu_workers=auto)."""
    from benchmarks import pool_speed

    pool_speed.main(["--tiny"])
    out = capsys.readouterr().out
    assert all(name in out for name in pool_speed.VARIANTS)


def test_quant_table(tmp_path):
    from benchmarks import quant_table

    res = quant_table.main(["--bits", "2", "--methods", "rtn,adaround", "--out", str(tmp_path / "q.json"),
                            *TINY_JOB, f"paths.cache_dir={tmp_path / 'cache'}"])
    assert set(res["methods"]) == {"rtn", "adaround"}
    assert all(not r["errors"] and set(r["acc"]) == {"2.0"} for r in res["methods"].values())


def test_protocol_effects_one_row(tmp_path, capsys):
    from benchmarks import protocol_effects

    out = tmp_path / "pe.json"
    protocol_effects.main(["--tiny", "--rows", "0", "--targets", "0", "--out", str(out),
                           f"paths.cache_dir={tmp_path / 'cache'}"])
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and "error" not in rows[0], rows
    assert 0.0 <= rows[0]["test_acc"] <= 1.0 and "lira_online/auc" in rows[0]["quantized"]


@pytest.mark.slow
def test_protocol_effects_every_row(tmp_path):
    from benchmarks import protocol_effects

    out = tmp_path / "pe.json"
    protocol_effects.main(["--tiny", "--targets", "0", "--out", str(out), f"paths.cache_dir={tmp_path / 'cache'}"])
    rows = json.loads(out.read_text())
    assert len(rows) == len(protocol_effects.ROWS) and all("error" not in r for r in rows), rows


def test_bad_protocol_effects_rows():
    from benchmarks import protocol_effects

    with pytest.raises(SystemExit) as e:
        protocol_effects.main(["--rows", "99"])
    assert e.value.code == 2


def test_same_numbers_against_head(capsys):
    """The committed code against the working tree on a tiny job: it runs both and compares."""
    from benchmarks import same_numbers

    rc = same_numbers.main(["--ref", "HEAD", "quant=rtn", "bits=2", "targets=[0]", "logger=none", "progress=false",
                            *TINY_JOB])
    out = capsys.readouterr().out
    assert rc in (0, 1) and "reference HEAD vs working tree" in out
    assert ("identical" in out) == (rc == 0)


def test_gpu_check_every_section_smallest(tmp_path, monkeypatch):
    """Every section of the GPU check (and its deferred CUDA-graph variant) in one run, at sizes below
    --tiny's: one model per path, one quantizer at one bit-width in the mini protocol. --tiny in
    full is tests/test_gpu_check.py (slow)."""
    from benchmarks import gpu_check as G

    tiny = G.PROFILES["tiny"]
    micro = dict(tiny, s2=dict(tiny["s2"], models=2, epochs=1),
                 s3=dict(tiny["s3"], n_models=4, epochs=1, iters=2, bootstrap=5, methods=("adaround",), bits=(2,)))
    monkeypatch.setitem(G.PROFILES, "tiny", micro)
    out = tmp_path / "out"
    res = G.main(["--device", "cpu", "--tiny", "--out", str(out), "--workdir", str(tmp_path / "wd")])
    assert set(res["sections"]) == set(G.SECTIONS.values())
    for name, sec in res["sections"].items():
        assert "error" not in sec, (name, sec["error"])
    b = res["sections"]["bench"]
    assert set(b["fast"]["variants"]) == {"eager", "graphs"} and "graphs_error" not in b
    n = res["sections"]["new_paths"]
    assert "error" not in n["training"] and all("error" not in v for v in n["quant"].values()), n
    assert [j["quant"] for j in res["sections"]["mini_protocol"]["jobs"]] == ["adaround"]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.txt"]
    assert not (tmp_path / "wd").exists()


def test_attack_phase_worker_smallest(tmp_path, capsys):
    """The attack-phase benchmark's measured part (the job's attack phase on synthetic φ), 2 targets."""
    from benchmarks import attack_phase

    attack_phase.main(["--worker", "--targets", "2", "--out", str(tmp_path), "--repeats", "1"])
    out = capsys.readouterr().out
    assert '"total"' in out or "total" in out


def test_tpr_coverage_smallest(capsys):
    from benchmarks import tpr_coverage

    tpr_coverage.main(["--draws", "10", "--boot", "10", "--targets", "4"])
    assert "4" in capsys.readouterr().out


def test_convergence_tiny(tmp_path, capsys):
    from benchmarks import convergence

    convergence.main(["--tiny", "--cache", str(tmp_path)])
    out = capsys.readouterr().out
    assert "60:1e-3" in out and "60:1e-2" in out and "FP test accuracy" in out


def test_joint_reference_count_smallest(capsys):
    from benchmarks import joint_reference_count

    joint_reference_count.main(["--n", "200", "--reps", "1", "--targets", "2"])
    assert capsys.readouterr().out.strip()
