"""A conformance kit: the protocol's behavioural suite, run against any guest over stdio.

Modelled on trio's ``check_streams`` and Jupyter's kernel tests: a library function, no pytest,
that starts the guest program, speaks the protocol to it and reports pass, fail or skip per
check. Every frame the guest sends goes through the typed decoder (which enforces the JSON
Schema) and must be a guest-to-host frame; a check for a capability the guest did not advertise
is skipped; each check has a deadline, and a guest that hangs or dies is replaced for the next
check. Standard library only, so an alternative guest's CI needs nothing but ``rlm-protocol``::

    python -m rlm_protocol.conformance -- ./my-guest --stdio

or, with the host installed, ``rlm conformance -- ./my-guest --stdio``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .checks import CHECKS, Check
from .peer import CheckFailed, GuestPeer, TraceHook
from .runner import CheckResult, ConformanceReport, Outcome, format_report, run_conformance

__all__ = [
    "CHECKS",
    "Check",
    "CheckFailed",
    "CheckResult",
    "ConformanceReport",
    "GuestPeer",
    "Outcome",
    "TraceHook",
    "format_report",
    "main",
    "run_conformance",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the kit on ``argv`` (a guest command, after an optional ``--``); 0 when all pass."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m rlm_protocol.conformance -- GUEST-COMMAND...", file=sys.stderr)
        return 2
    report = run_conformance(args, progress=lambda r: print(r.line(), flush=True))
    counts = report.counts()
    print(
        f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
        f"{counts[Outcome.SKIP]} skipped: {'OK' if report.ok else 'FAILED'}"
    )
    return 0 if report.ok else 1
