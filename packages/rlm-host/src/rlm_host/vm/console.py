"""Reading the guest's serial console: boot-progress lines and the kernel's reports."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["INIT_LINE", "KERNEL_REPORT", "console_excerpt", "first_kernel_report", "read_console_end"]

#: How much of the end of a console log is read for its tail and reports.
_END_BYTES = 64 * 1024

INIT_LINE = re.compile(r"rlm-init: (.+?) ([0-9]+\.[0-9]+)(?: [0-9.]+)?\s*$")
#: The first line of a kernel report that explains a death (printed even with ``quiet``). Its
#: register dump, call trace and module list run past a 40-line tail, which then shows only the
#: interrupted code and ``Kernel Offset``, not what the kernel complained about.
KERNEL_REPORT = re.compile(
    r"(Kernel panic|BUG:|watchdog:|rcu: INFO|Oops|general protection fault|Out of memory|INFO: task .* blocked)"
)


def console_excerpt(text: str, max_lines: int = 40) -> str:
    """The last ``max_lines`` lines of ``text``, preceded by the kernel report lines above them.

    >>> log = "boot\\nwatchdog: BUG: soft lockup - CPU#1 stuck for 22s!\\n" + "trace\\n" * 50
    >>> print(console_excerpt(log, max_lines=2))
    watchdog: BUG: soft lockup - CPU#1 stuck for 22s!
    [...]
    trace
    trace
    """
    lines = text.splitlines()
    tail = lines[-max_lines:]
    earlier = [line for line in lines[: max(0, len(lines) - max_lines)] if KERNEL_REPORT.search(line)]
    if not earlier:
        return "\n".join(tail)
    return "\n".join([*earlier[-10:], "[...]", *tail])


def read_console_end(path: Path) -> str:
    """The last 64 KiB of the console log at ``path`` (empty if it cannot be read)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _END_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def first_kernel_report(text: str, max_lines: int = 30) -> str:
    """The first kernel report in ``text`` and the lines after it (empty if there is none).

    >>> first_kernel_report("boot\\nrcu: INFO: rcu_sched self-detected stall\\n  1-....\\n", max_lines=2)
    'rcu: INFO: rcu_sched self-detected stall\\n  1-....'
    """
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if KERNEL_REPORT.search(line)), None)
    return "" if first is None else "\n".join(lines[first : first + max_lines])
