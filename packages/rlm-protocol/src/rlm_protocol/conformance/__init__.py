"""A conformance kit: the protocol's behavioural suite, run against any guest over stdio.

Modelled on trio's ``check_streams`` and Jupyter's kernel tests: a library function, no pytest,
that starts the guest program, speaks the protocol to it and reports pass, fail or skip per
check. Every frame the guest sends goes through the typed decoder (which enforces the JSON
Schema) and must be a guest-to-host frame; a check for a capability the guest did not advertise
is skipped; each check has a deadline, and a guest that hangs or dies is replaced for the next
check. Standard library only, so an alternative guest's CI needs nothing but ``rlm-protocol``::

    python -m rlm_protocol.conformance -- ./my-guest --stdio

or, with the host installed, ``rlm conformance -- ./my-guest --stdio``. ``--list`` prints every
check with what it tests and why; ``--json`` prints the report as one JSON object.
"""

from __future__ import annotations

import json
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
    "list_checks",
    "main",
    "run_conformance",
]


def list_checks() -> str:
    """Every check: its name, the capabilities it needs, what it tests and why.

    >>> print(list_checks().splitlines()[0])
    handshake                  Hello comes first, with a compatible version, known shapes and sane limits.
    """
    lines = []
    for check in CHECKS:
        lines.append(f"{check.name:<26} {check.summary}")
        needs = f" [needs {', '.join(check.requires)}]" if check.requires else ""
        lines.append(f"{'':<26} why: {check.reason}{needs}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the kit on ``argv`` (a guest command, after an optional ``--``); 0 when all pass.

    ``--list`` prints the checks instead; ``--json`` (before the command) prints the report as
    JSON on stdout instead of one line per check.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--list"]:
        print(list_checks())
        return 0
    as_json = args[:1] == ["--json"]
    if as_json:
        args = args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m rlm_protocol.conformance [--list | --json] -- GUEST-COMMAND...", file=sys.stderr)
        return 2
    report = run_conformance(
        args, progress=None if as_json else lambda r: print(r.line(), flush=True)
    )
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        return 0 if report.ok else 1
    counts = report.counts()
    print(
        f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
        f"{counts[Outcome.SKIP]} skipped: {'OK' if report.ok else 'FAILED'}"
    )
    return 0 if report.ok else 1
