"""Spawned workers end soon after their parent is killed (SIGKILL: no clean-up code of the parent runs).

A parent process starts a pool of 2 workers through ``src.workers.spawn_pool`` (the pool every
spawned worker of the project comes from), makes sure both ran a task (so both are past their
initializer), gives each a 600 s task and prints their PIDs; the test kills the parent with SIGKILL
and asserts that neither worker is alive ``GRACE_S`` seconds later. Once with the kernel's
parent-death signal (Linux) and once with the portable watcher alone.

GRACE_S = 10: the parent-death signal acts at once and the watcher polls every ``POLL_S`` = 1 s, so
on an idle machine both end within ~1 s; the rest is room for a loaded 2-core runner (scheduling and
the kernel's tear-down of a process that holds a torch import). Without the mechanism the workers
would live out their 600 s task, far beyond it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRACE_S = 10.0

PARENT = r"""
import os, sys, time
from src.workers import spawn_pool

def main(pdeathsig):
    ex = spawn_pool(2, pdeathsig=pdeathsig)
    seen, t0 = set(), time.time()
    while time.time() - t0 < 120:          # every worker past its initializer: each ran a task
        seen |= {f.result() for f in [ex.submit(_pid_after, 0.3) for _ in range(2)]}
        if len(ex._processes) == 2 and seen == set(ex._processes):
            break
    for _ in range(2):
        ex.submit(time.sleep, 600)
    print(" ".join(map(str, sorted(seen))), flush=True)
    time.sleep(600)
"""

HELPER = r"""
import os, time

def _pid_after(s):
    time.sleep(s)
    return os.getpid()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():     # a zombie (exited, not yet reaped by its new parent) is not alive
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return True


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and re-parenting are POSIX")
@pytest.mark.parametrize("pdeathsig", [True, False], ids=["pdeathsig", "watcher-only"])
def test_workers_die_with_a_killed_parent(tmp_path, pdeathsig):
    # the task function must be importable by spawned workers: a module of its own on PYTHONPATH
    (tmp_path / "_pidtask.py").write_text(HELPER)
    script = tmp_path / "parent.py"
    script.write_text("from _pidtask import _pid_after\n" + PARENT + f"\nif __name__ == '__main__':\n"
                      f"    main({pdeathsig})\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(tmp_path)]))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        line = parent.stdout.readline()
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2, f"parent printed {line!r}"
        assert all(_alive(p) for p in pids)            # running their 600 s task
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + GRACE_S
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [p for p in pids if _alive(p)]
        assert not alive, f"workers {alive} alive {GRACE_S:g} s after their parent was killed"
    finally:
        if parent.poll() is None:
            parent.kill()
        for p in pids:                                  # never leave a worker behind, even on failure
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_every_spawned_pool_watches_its_parent():
    """The job's pools (pool training, quantized targets, image decoding) come from ``spawn_pool``:
    no other process pool is built in src/."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "src").rglob("*.py")
                 if p.name != "workers.py" and ("ProcessPoolExecutor" in p.read_text()
                                               or "get_context(" in p.read_text())]
    assert not offenders, offenders
    for mod in ("src/pipeline.py", "src/data/datasets.py"):
        assert "spawn_pool(" in (REPO / mod).read_text(), mod
