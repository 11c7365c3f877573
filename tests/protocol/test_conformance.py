"""The conformance kit: it passes the reference guest and catches each deliberate defect.

Defective guests are the real guest behind a relay that rewrites frames in transit
(``defective_guests/relay.py``), so each defect is one wire-visible bug, named by the check that
must catch it, with the words the failure message must contain.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlm_protocol.conformance import CHECKS, ConformanceReport, Outcome, run_conformance

HERE = Path(__file__).parent / "defective_guests"
GUEST = [sys.executable, "-m", "rlm_guest", "--stdio"]


def relay(defect: str) -> list[str]:
    return [sys.executable, str(HERE / "relay.py"), defect]


def test_reference_guest_passes_every_check() -> None:
    report = run_conformance([*GUEST, "--max-output-chars", "5000", "--max-sessions", "4"])
    assert report.ok, report.format()
    assert [r.name for r in report.results] == [c.name for c in CHECKS]
    # The bash REPL is the only part of the protocol this Python guest does not claim.
    skipped = [r.name for r in report.results if r.outcome is Outcome.SKIP]
    assert skipped == ["bash_repl_vars", "bash_repl_host_calls"], report.format()
    assert report.hello is not None and report.hello.agent == "rlm-guest"


def _only_failure(report: ConformanceReport, check: str) -> str:
    failed = [r.name for r in report.results if r.outcome is Outcome.FAIL]
    assert failed == [check], report.format()
    text = report.format()
    assert f"FAIL  {check}" in text and "FAILED" in text.splitlines()[-1]
    return report.result(check).message


@pytest.mark.parametrize(
    ("defect", "check", "words"),
    [
        ("fifo_host_calls", "host_calls_out_of_order", "routed wrongly"),
        ("ignore_interrupt", "interrupt_python", "did not stop within"),
        ("utf8_chars", "metadata", "stdout.chars is 14"),
        ("accept_any_major", "welcome_other_major", "must be refused"),
    ],
)
def test_a_defect_fails_its_check_and_only_that(defect: str, check: str, words: str) -> None:
    # Neighbouring checks run too, to show the kit pins the defect down instead of failing all.
    neighbours = ["handshake", "session_lifecycle", "host_call", "output_cap", check]
    report = run_conformance(relay(defect), only=neighbours)
    assert words in _only_failure(report, check)


def test_wrong_length_prefix_breaks_the_handshake() -> None:
    report = run_conformance(relay("bad_length"), only=["handshake", "metadata"])
    assert report.result("handshake").outcome is Outcome.FAIL
    assert "broke the protocol: malformed frame" in report.result("handshake").message
    # The kit does not wait for every later check to time out on the same broken guest.
    assert report.result("metadata").outcome is Outcome.FAIL


def test_a_guest_that_never_says_hello_fails_fast_with_a_reason() -> None:
    report = run_conformance(
        [sys.executable, str(HERE / "no_hello.py")],
        only=["handshake", "session_lifecycle", "metadata"],
        timeout_factor=0.05,
    )
    assert "no Hello: the guest sent nothing within 1.0 s" in report.result("handshake").message
    assert "not run: an earlier guest start failed" in report.result("metadata").message
    assert not report.ok


def test_a_guest_that_cannot_start_is_a_failure_not_a_crash() -> None:
    report = run_conformance(["/nonexistent/guest"], only=["handshake"])
    assert "cannot start the guest" in report.result("handshake").message


def test_checks_needing_an_unadvertised_capability_are_skipped() -> None:
    # The relay hides "exec.bash" from Hello: bash checks are skipped, not failed.
    report = run_conformance(relay("no_bash"), only=["exec_bash", "interrupt_bash", "metadata"])
    assert report.ok, report.format()
    outcomes = {r.name: r.outcome for r in report.results}
    assert outcomes == {
        "exec_bash": Outcome.SKIP,
        "interrupt_bash": Outcome.SKIP,
        "metadata": Outcome.PASS,
    }
    assert "does not advertise exec.bash" in report.result("exec_bash").message


def test_unknown_check_names_are_refused() -> None:
    with pytest.raises(ValueError, match="no such check: nope"):
        run_conformance(GUEST, only=["nope"])


def test_module_entry_point_exit_status() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rlm_protocol.conformance", "--", "/nonexistent/guest"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "FAIL  handshake" in done.stdout and "cannot start the guest" in done.stdout


def test_cli_command_exit_status() -> None:
    import typer

    from rlm_host.cli_conformance import conformance

    app = typer.Typer()
    app.command()(conformance)
    app.command("other")(lambda: None)  # two commands, so the command name is required
    runner = CliRunner()
    passed = runner.invoke(app, ["conformance", "--only", "metadata", "--", *GUEST])
    assert passed.exit_code == 0, passed.output
    assert "PASS  metadata" in passed.output and "OK" in passed.output
    failed = runner.invoke(app, ["conformance", "--only", "metadata", "--", *relay("utf8_chars")])
    assert failed.exit_code == 1, failed.output
    assert "FAIL  metadata" in failed.output
