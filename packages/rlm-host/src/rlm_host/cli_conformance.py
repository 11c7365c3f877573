"""``rlm conformance -- GUEST-COMMAND...``: the protocol's conformance kit against any guest.

The guest command must speak the rlm protocol on its stdin/stdout (as ``python -m rlm_guest
--stdio`` does). One line per check is printed as the check ends, then a summary. Exit status: 0
when no check failed (skipped checks do not count as failures), 1 otherwise, 2 on bad usage.

The checks live in :mod:`rlm_protocol.conformance` (standard library only), so an alternative
guest's CI can run them without the host: ``python -m rlm_protocol.conformance -- GUEST...``.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from rlm_protocol import Frame, UnknownFrame
from rlm_protocol.conformance import CHECKS, CheckResult, Outcome, list_checks, run_conformance

__all__ = ["conformance"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def _trace(direction: str, frame: Frame | UnknownFrame) -> None:
    arrow = "->" if direction == "host" else "<-"
    text = repr(frame)
    print(f"  {arrow} {text if len(text) <= 200 else text[:197] + '...'}", file=sys.stderr)


def conformance(
    guest_command: Annotated[
        Optional[list[str]],
        typer.Argument(help="The guest program and its arguments (after `--`).", show_default=False),
    ] = None,
    only: Annotated[
        Optional[list[str]],
        typer.Option("--only", help="Run only this check (repeatable); an unknown name prints the list."),
    ] = None,
    timeout_factor: Annotated[
        float,
        typer.Option(help="Scale every deadline, e.g. 3 for a guest in a slow VM."),
    ] = 1.0,
    trace: Annotated[
        bool, typer.Option(help="Print every frame sent and received to stderr.")
    ] = False,
    list_: Annotated[
        bool, typer.Option("--list", help="Print every check, what it tests and why, and exit.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object on stdout.")
    ] = False,
) -> None:
    """Run the protocol's conformance checks against a guest speaking it over stdio.

    Example: rlm conformance -- uv run python -m rlm_guest --stdio
    """
    if list_:
        print(list_checks())
        raise typer.Exit(0)
    guest_command = list(guest_command or [])
    if guest_command[:1] == ["--"]:
        guest_command = guest_command[1:]
    if not guest_command:
        raise typer.BadParameter("give the guest command after `--`")
    if timeout_factor <= 0:
        raise typer.BadParameter("must be positive", param_hint="--timeout-factor")

    def progress(result: CheckResult) -> None:
        if not as_json:
            print(result.line(), flush=True)

    try:
        report = run_conformance(
            guest_command,
            only=only,
            trace=_trace if trace else None,
            progress=progress,
            timeout_factor=timeout_factor,
        )
    except ValueError as error:  # an unknown --only name
        print(f"rlm: {error}", file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from error
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
        raise typer.Exit(0 if report.ok else EXIT_FAILED)
    counts = report.counts()
    print(
        f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
        f"{counts[Outcome.SKIP]} skipped of {len(CHECKS) if only is None else len(only)} checks: "
        f"{'OK' if report.ok else 'FAILED'}"
    )
    raise typer.Exit(0 if report.ok else EXIT_FAILED)
