"""Worker processes that die with the job that spawned them.

A process pool's workers normally outlive a parent killed by SIGKILL, the OOM killer or a scheduler's
pre-emption: they are re-parented to init and keep their memory (a trained model's worth each) until
killed by hand. Every spawned worker of the project therefore watches its parent from its first
instruction on:

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``. The kernel kills the worker the moment the thread that
  created it exits; the pools below are created, used and shut down inside one ``with`` block of
  one thread, so that thread outlives them. The parent may have died before the call: the parent
  PID is compared once afterwards.
- Everywhere (and on Linux as a second line): a daemon thread that compares ``os.getppid()`` with
  the parent's PID every ``POLL_S`` seconds and ends the process with ``os._exit`` when it changed
  (re-parenting is how a dead parent shows on POSIX).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

POLL_S = 1.0            # the fallback's latency: a worker outlives its parent by at most this (+ scheduling)
_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def _parent_death_signal() -> bool:
    """Ask the kernel for SIGKILL when the parent dies (Linux); False where unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int, poll_s: float) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(poll_s)


def die_with_parent(parent_pid: int, pdeathsig: bool = True, poll_s: float = POLL_S) -> None:
    """Pool initializer: end this worker when ``parent_pid`` is no longer its parent."""
    if pdeathsig:
        _parent_death_signal()
    if os.getppid() != parent_pid:     # died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid, poll_s), name="parent-watch", daemon=True).start()


def spawn_pool(workers: int, pdeathsig: bool = True):
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes (spawn: the parent holds threads, of
    torch and of loggers, that fork would copy mid-lock), each ending soon after this process does.
    ``pdeathsig=False`` leaves only the portable watcher (tests of the fallback)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent, initargs=(os.getpid(), pdeathsig))
