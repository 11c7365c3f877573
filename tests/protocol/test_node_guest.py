"""The JavaScript guest (``guests/node``), written from PROTOCOL.md alone, certified by the kit.

It claims ``exec.bash``, ``repl.bash``, ``interrupt`` and ``host_call``: every check of those
passes, and every check it skips is one about a capability it does not claim.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from rlm_protocol.conformance import CHECKS, Outcome, run_conformance

ROOT = Path(__file__).resolve().parents[2]
RELAY = Path(__file__).parent / "defective_guests" / "relay.py"


def node_guest(*options: str) -> list[str]:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed: scripts/setup-system.sh installs Debian's nodejs")
        pytest.skip("node is not installed (scripts/setup-system.sh installs it)")
    return [node, str(ROOT / "guests" / "node" / "agent.js"), *options]


def test_the_node_guest_passes_every_check_of_what_it_claims() -> None:
    guest = node_guest("--max-sessions", "4", "--max-output-chars", "5000")
    report = run_conformance(guest)
    assert report.ok, report.format()
    assert report.hello is not None and report.hello.agent == "rlm-node-guest"
    claimed = set(report.hello.capabilities)
    assert "exec.python" not in claimed and {"exec.bash", "repl.bash"} <= claimed
    by_name = {c.name: c for c in CHECKS}
    for result in report.results:
        if result.outcome is Outcome.SKIP:
            # Skipped only for a capability it does not claim, never for want of a probe.
            assert set(by_name[result.name].requires) - claimed, report.format()
    passed = {r.name for r in report.results if r.outcome is Outcome.PASS}
    assert {"bash_repl_vars", "bash_repl_host_calls", "interrupt_reset", "max_sessions",
            "session_busy", "metadata", "unsupported_language", "state_persists"} <= passed


@pytest.mark.parametrize(
    ("defect", "check", "words"),
    [
        ("final_file_ignored", "bash_repl_vars", "$RLM_VARS/Final is reported as None"),
        ("host_call_error_as_value", "bash_repl_host_calls", "a failed host call exited with 0, not 1"),
    ],
)
def test_the_bash_repl_checks_fail_their_defective_guest(defect: str, check: str, words: str) -> None:
    guest = " ".join(node_guest())
    report = run_conformance(
        ["env", f"RLM_RELAY_GUEST={guest}", sys.executable, str(RELAY), defect],
        only=["handshake", check],
    )
    failed = [r.name for r in report.results if r.outcome is Outcome.FAIL]
    assert failed == [check], report.format()
    assert words in report.result(check).message
