"""Runs the checks against a guest command and collects a report.

Guests are reused between checks that pass; a check that fails, hangs or kills the guest gets the
guest replaced before the next check, so one defect is reported once and does not cascade.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..frames import Hello
from ..version import PROTOCOL_VERSION
from .checks import CHECKS, Check
from .peer import CheckFailed, GuestPeer, TraceHook
from .probe import Link, Probe, Skip, handshake

__all__ = ["CheckResult", "ConformanceReport", "Outcome", "run_conformance"]

#: Seconds a guest may take from start to ``Hello`` when the kit starts it for a check.
START_SECONDS = 30.0


class Outcome(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check; ``message`` says why it failed or was skipped."""

    name: str
    outcome: Outcome
    summary: str
    message: str = ""
    seconds: float = 0.0
    reason: str = ""

    def line(self) -> str:
        """One line of the report, plus an indented reason when there is one."""
        text = f"{self.outcome.name:<4}  {self.name:<26} {self.summary}"
        if self.message:
            text += f"\n      -> {self.message}"
        return text


@dataclass(frozen=True)
class ConformanceReport:
    """Everything a run found. ``ok`` is true when no check failed (skips are not failures)."""

    guest: tuple[str, ...]
    results: tuple[CheckResult, ...]
    hello: Hello | None = field(default=None)

    @property
    def ok(self) -> bool:
        return all(r.outcome is not Outcome.FAIL for r in self.results)

    def counts(self) -> dict[Outcome, int]:
        return {o: sum(r.outcome is o for r in self.results) for o in Outcome}

    def result(self, name: str) -> CheckResult:
        """The result of the check called ``name``.

        Raises:
            KeyError: no such check ran.
        """
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def as_json(self) -> dict[str, Any]:
        """The report as plain data (``rlm conformance --json``): guest, counts, every result."""
        counts = self.counts()
        return {
            "guest": list(self.guest),
            "protocol": list(PROTOCOL_VERSION),
            "hello": msgspec.to_builtins(self.hello) if self.hello is not None else None,
            "ok": self.ok,
            "counts": {outcome.value: counts[outcome] for outcome in Outcome},
            "results": [
                {
                    "name": r.name,
                    "outcome": r.outcome.value,
                    "summary": r.summary,
                    "reason": r.reason,
                    "message": r.message,
                    "seconds": round(r.seconds, 3),
                }
                for r in self.results
            ],
        }

    def format(self) -> str:
        """The human-readable report: a header, one line per check, a summary."""
        lines = [f"rlm protocol conformance: {' '.join(self.guest)}"]
        if self.hello is not None:
            h = self.hello
            lines.append(
                f"guest {h.agent} {h.agent_version}, protocol {h.protocol[0]}.{h.protocol[1]}, "
                f"capabilities: {', '.join(h.capabilities) or '(none)'}"
            )
        lines.extend(r.line() for r in self.results)
        counts = self.counts()
        lines.append(
            f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
            f"{counts[Outcome.SKIP]} skipped: {'OK' if self.ok else 'FAILED'}"
        )
        return "\n".join(lines)


def format_report(report: ConformanceReport) -> str:
    """``report.format()``, as a function for callers that print reports."""
    return report.format()


class _Guests:
    """The current guest process and its handshake, replaced whenever it cannot be trusted."""

    def __init__(self, argv: Sequence[str], trace: TraceHook | None, scale: float) -> None:
        self.argv = argv
        self.trace = trace
        self.scale = scale
        self.link: Link | None = None
        self.first_hello: Hello | None = None
        #: Why the last start for a check failed; later checks fail at once instead of waiting
        #: for every restart to time out the same way.
        self.start_failure: str | None = None

    def fresh_peer(self) -> GuestPeer:
        self.discard()
        return GuestPeer(self.argv, trace=self.trace)

    def linked(self) -> Link:
        """A handshaken guest: the current one while healthy, else a new one.

        Raises:
            CheckFailed: the new guest did not complete the handshake.
        """
        if self.link is not None and self.link.peer.alive and not self.link.spent:
            return self.link
        if self.start_failure is not None:
            raise CheckFailed(f"not run: an earlier guest start failed ({self.start_failure})")
        peer = self.fresh_peer()
        try:
            hello = handshake(peer, START_SECONDS * self.scale)
        except CheckFailed as error:
            peer.close()
            self.start_failure = str(error)
            raise CheckFailed(f"could not start a guest for this check: {error}") from None
        self.link = Link(peer, hello)
        self.first_hello = self.first_hello or hello
        return self.link

    def discard(self) -> None:
        if self.link is not None:
            self.link.peer.close()
            self.link = None


def _run_one(check: Check, guests: _Guests) -> tuple[Outcome, str]:
    peer: GuestPeer | None = None
    timeout = check.timeout * guests.scale
    try:
        if check.run_raw is not None:
            peer = guests.fresh_peer()
            check.run_raw(peer, timeout)
            return Outcome.PASS, ""
        assert check.run is not None
        link = guests.linked()
        peer = link.peer
        missing = [c for c in check.requires if c not in link.hello.capabilities]
        if missing:
            return Outcome.SKIP, f"the guest does not advertise {', '.join(missing)}"
        check.run(Probe(link, timeout, guests.scale))
        if peer.violations:
            return Outcome.FAIL, "; ".join(peer.violations)
        return Outcome.PASS, ""
    except Skip as skip:
        return Outcome.SKIP, str(skip)
    except CheckFailed as failure:
        message = str(failure)
        if peer is not None and peer.violations:
            message = "; ".join([*peer.violations, message])
        return Outcome.FAIL, message
    finally:
        if peer is not None and check.run_raw is not None:
            peer.close()


def run_conformance(
    guest: Sequence[str],
    *,
    only: Sequence[str] | None = None,
    trace: TraceHook | None = None,
    progress: Callable[[CheckResult], None] | None = None,
    timeout_factor: float = 1.0,
) -> ConformanceReport:
    """Run the protocol's behavioural checks against the guest started by ``guest`` (an argv).

    The guest must speak the protocol on its stdin/stdout; its stderr is kept for failure
    messages. ``only`` limits the run to the named checks; ``trace`` sees every frame in both
    directions; ``progress`` is called with each result as soon as it is known;
    ``timeout_factor`` scales every deadline (above 1 for a guest in a slow VM, below 1 for tests
    of guests that hang).

    >>> import sys
    >>> report = run_conformance([sys.executable, "-m", "rlm_guest", "--stdio"], only=["metadata"])
    >>> print(report.results[0].line())
    PASS  metadata                   Captured.chars counts code points; lines is the count of newlines plus one ("a\\n" is 2).

    Raises:
        ValueError: ``only`` names a check that does not exist.
    """
    checks = CHECKS
    if only is not None:
        known = {c.name for c in CHECKS}
        unknown = [name for name in only if name not in known]
        if unknown:
            raise ValueError(f"no such check: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        checks = tuple(c for c in CHECKS if c.name in only)
    guests = _Guests(tuple(guest), trace, timeout_factor)
    results: list[CheckResult] = []
    try:
        for check in checks:
            started = time.monotonic()
            outcome, message = _run_one(check, guests)
            if outcome is Outcome.FAIL:
                # A failed check may leave the guest mid-block or desynchronised: start over.
                guests.discard()
            result = CheckResult(
                check.name, outcome, check.summary, message, time.monotonic() - started, check.reason
            )
            results.append(result)
            if progress is not None:
                progress(result)
    finally:
        guests.discard()
    return ConformanceReport(tuple(guest), tuple(results), guests.first_hello)
