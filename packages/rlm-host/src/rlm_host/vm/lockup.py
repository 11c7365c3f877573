"""A guest kernel that locked up, told apart from one the host starved of CPU (sans-IO).

The guest kernel's soft-lockup detector prints ``watchdog: BUG: soft lockup - CPU#0 stuck for
48s! [comm:pid]`` when a CPU has not scheduled for twice ``watchdog_thresh`` (20 s), and (kernels
since 5.11) again every 20 s or so while it stays stuck, with the total. It no longer panics
(``softlockup_panic=0``): under TCG the guest's clock is the host's, so a vCPU that waited for a
host CPU looks stuck to it. A real lockup, though (a restored guest spinning on both vCPUs,
QEMU at 175 % CPU for minutes, docs/scaling.md), leaves a VM that answers nothing and never
exits. The host settles it: of the span the report says the CPU was stuck, how long QEMU's most
starved thread was *not* waiting for a host CPU (``rlm_host.starvation``). If QEMU ran that long,
the guest had the CPU and did not schedule: a lockup.

    >>> watch = LockupWatch()
    >>> watch.sample(0.0, {1: 0.0})
    >>> line = "watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [rlm-agent-start:139]"
    >>> watch.judge(line, 50.0, {1: 45.0}, limit=40.0) is None  # QEMU waited 45 of the 50 s
    True
    >>> watch.judge(line, 50.0, {1: 2.0}, limit=40.0)
    Lockup(line='watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [rlm-agent-start:139]', stuck_for=48.0, ran=46.0)
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from ..starvation import starved_between

__all__ = ["AFTER_READY_LIMIT", "DURING_START_LIMIT", "Lockup", "LockupWatch"]

#: Seconds QEMU must have run (not waited for a host CPU) within a reported stuck span before a
#: running VM is ended. Twice the kernel's own 20 s: a report means the kernel saw 20 s without
#: scheduling, but under TCG guest code runs 10-50x slower than native, so a kernel path of about
#: a second natively can take 20 s with nothing wrong. The second report of a lockup (stuck for
#: ~48 s) ends the VM; a healthy guest has not been seen to get there (docs/decisions.md).
AFTER_READY_LIMIT = 40.0
#: The same before the agent's Hello. Lower, because nothing is lost: the start is made again.
DURING_START_LIMIT = 20.0

_SOFT_LOCKUP = re.compile(r"soft lockup - CPU#\d+ stuck for (\d+)s!")
#: Samples older than this are dropped: longer stuck spans are judged on what is kept.
_HISTORY_SECONDS = 900.0


@dataclass(frozen=True)
class Lockup:
    """A lockup report the host believes: the console line, the span it names, and how many
    seconds of that span QEMU ran (was not waiting for a host CPU)."""

    line: str
    stuck_for: float
    ran: float


class LockupWatch:
    """QEMU's CPU waits sampled over time, and the verdict on each lockup report.

    Feed :meth:`sample` every second or so with ``VM.cpu_waits()``; call :meth:`judge` with each
    console line. Times are any monotonic clock in seconds.
    """

    def __init__(self) -> None:
        self._samples: deque[tuple[float, Mapping[int, float]]] = deque()

    def sample(self, now: float, waits: Mapping[int, float]) -> None:
        """Record QEMU's per-thread CPU waits at ``now``."""
        self._samples.append((now, dict(waits)))
        while len(self._samples) > 1 and self._samples[0][0] < now - _HISTORY_SECONDS:
            self._samples.popleft()

    def judge(self, line: str, now: float, waits: Mapping[int, float], *, limit: float) -> Lockup | None:
        """The lockup ``line`` reports, if QEMU ran at least ``limit`` seconds of its span;
        None for any other line, or for a report that starvation explains."""
        match = _SOFT_LOCKUP.search(line)
        if match is None or not self._samples:
            return None
        stuck_for = float(match.group(1))
        # The last sample taken before the span began covers it whole; without one (a span
        # longer than the VM's life) the host can vouch only for what it sampled: from the first.
        since = now - stuck_for
        base_time, base_waits = self._samples[0]
        for sample_time, sample_waits in self._samples:
            if sample_time > since:
                break
            base_time, base_waits = sample_time, sample_waits
        span = min(stuck_for, now - base_time)
        ran = span - min(span, starved_between(base_waits, waits))
        if ran < limit:
            return None
        return Lockup(line=line.strip(), stuck_for=stuck_for, ran=round(ran, 1))
