"""The same config and seed give identical numbers on CPU, run to run (fresh cache dirs, nothing shared)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from _main_runner import TINY, merge, numbers, run_main

# every attack, and a learned quantizer (AdaRound) so its optimisation is covered too
CFG = merge(TINY, ["device=cpu", "attack=all", "quant=adaround", "quant.iters=50"])


def test_two_identical_runs_give_identical_results(tmp_path):
    dirs = [tmp_path / f"run{i}" for i in range(2)]
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda d: run_main(CFG, d / "cache", d / "run"), dirs))
    a, b = (numbers(d / "run") for d in dirs)
    assert a["attacks"].keys() == {"lira_online", "lira_online_fixed", "lira_offline", "lira_offline_fixed",
                                   "rmia", "rmia_offline", "loss"}
    assert a["utility"] == b["utility"]
    assert a["attacks"] == b["attacks"]
    assert a["fp_attacks"] == b["fp_attacks"]
    assert a == b
    with np.load(dirs[0] / "run" / "scores.npz") as za, np.load(dirs[1] / "run" / "scores.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            np.testing.assert_array_equal(za[k], zb[k], err_msg=k)
