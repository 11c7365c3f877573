"""Reading the guest's serial console: boot-progress lines and the kernel's reports."""

from __future__ import annotations

import re

__all__ = ["INIT_LINE", "KERNEL_REPORT", "console_excerpt"]

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
