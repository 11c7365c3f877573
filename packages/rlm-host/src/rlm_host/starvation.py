"""How long a process's threads waited for a host CPU: the part of a wait that says nothing
about the guest.

Under TCG the guest's clock is the host's, and a vCPU thread that is runnable but not running
(two cores shared by several VMs and test runs) makes no progress while that clock goes on. A
verdict such as "the guest is hung: no answer 30 s past the block's timeout" must therefore not
count that time, or a loaded host declares a healthy guest dead. Linux counts it per thread:
the second field of ``/proc/<pid>/task/<tid>/schedstat`` is the time spent runnable on a run
queue, waiting for a CPU (``Documentation/scheduler/sched-stats.rst``, "/proc/<pid>/schedstat").

    >>> sample = {1: 2.0, 2: 0.5}
    >>> starved_between(sample, {1: 5.0, 2: 0.5, 3: 1.0})
    3.0
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["starved_between", "thread_waits"]


def thread_waits(pid: int) -> dict[int, float]:
    """Seconds each thread of ``pid`` has waited on a run queue; empty when unknown (no such
    process, or a kernel without schedstat)."""
    waits: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return waits
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                fields = f.read().split()
            waits[int(tid)] = int(fields[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return waits


def starved_between(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """Seconds the most starved thread waited for a CPU between two samples.

    The most starved one: the guest advances no faster than its slowest vCPU (another vCPU
    waits for it at the next lock or IPI). A thread new since ``before`` counts from zero.
    Under 100 % starvation this grows as fast as the wall clock, so a verdict that subtracts it
    is put off for as long as the guest gets no CPU at all, and no longer.
    """
    return max((wait - before.get(tid, 0.0) for tid, wait in after.items()), default=0.0)
