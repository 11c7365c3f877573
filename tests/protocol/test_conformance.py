"""The conformance kit: it passes the reference guest and catches each deliberate defect.

Defective guests are the real guest behind a relay that rewrites frames in transit
(``defective_guests/relay.py``), so each defect is one wire-visible bug, named by the check that
must catch it, with the words the failure message must contain.
"""

from __future__ import annotations

import json
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


#: One defective guest per check added in protocol 1.1: (defect, check, words of the failure).
DEFECTS_1_1 = [
    ("survive_malformed", "malformed_frame", "waiting for the bad_request refusing a body that is"),
    ("int_from_float", "float_call_id", "must be answered with an ErrorFrame of code bad_request"),
    ("wait_for_body", "oversized_length", "refusing a length of"),
    ("exit_1_at_eof", "stdin_end", "exited with status 1, not 0"),
    ("exit_on_wrong_direction", "wrong_direction", "closed its stdout"),
    ("error_for_unknown_interrupt", "interrupt_unknown_session", "got ErrorFrame(code='unknown_session'"),
    ("error_for_late_reply", "late_host_call_reply", "got ErrorFrame(code='unknown_session'"),
    ("no_session_limit", "max_sessions", "must fail with too_large"),
    ("ignore_missing_cwd", "cwd", "must fail with bad_request"),
    ("drop_replacement", "non_utf8_output", "stdout.text is 'ab\\n'"),
    ("fd1_to_devnull", "output_below_runtime", "stdout is ''"),
    ("echo_last_expression", "no_echo", "printed '42\\n'"),
    ("show_vars_silent_when_empty", "show_vars_empty", "with no variables printed ''"),
    ("hide_final_from_state", "vars_state_names", "VarsState.names is ['json']"),
    ("fields_one_newline", "rlm_query_fields", "the payload is {'prompt': 'q\\na: 1"),
    ("llm_query_takes_fields", "llm_query_no_fields", "llm_query with a field sent"),
    ("partial_batch", "batched_error", "must raise the first error in prompt order"),
    ("set_vars_busy_internal", "set_vars_while_busy", "must get vars_set or session_busy"),
    ("strict_float_fields", "int_in_float_field", "got ErrorFrame(code='bad_request'"),
    ("timeout_pauses_for_host_calls", "timeout_counts_host_calls", "was not stopped within"),
    ("reset_without_flag", "interrupt_reset", "must end with interrupted and session_reset"),
    ("died_without_flag", "session_died", "must report session_reset and SessionDied"),
    ("result_after_close", "close_during_block", "got ExecResult(session='closing"),
    ("frame_after_bye", "shutdown_during_block", "after Bye the guest sent ErrorFrame"),
    ("silent_refusal", "welcome_other_major", "without an ErrorFrame"),
    ("value_when_not_ok", "final_json", "carries value 'unsendable'"),
    ("python_hidden_but_run", "unsupported_language", "must fail with unsupported"),
]


@pytest.mark.parametrize(("defect", "check", "words"), DEFECTS_1_1, ids=[d[1] for d in DEFECTS_1_1])
def test_each_check_of_1_1_fails_its_defective_guest(defect: str, check: str, words: str) -> None:
    # A check that waits for an answer that never comes fails at half its deadline (still
    # seconds of slack for a loaded machine); the reset check waits out the guest's real 2 s
    # grace, so it keeps its full deadline.
    factor = 1.0 if check == "interrupt_reset" else 0.5
    report = run_conformance(relay(defect), only=["handshake", check], timeout_factor=factor)
    assert words in _only_failure(report, check)


#: One defective guest (at least) per check of ``prompt_ref`` (PROTOCOL.md 4.2).
DEFECTS_PROMPT_REF = [
    ("ref_prefix_800", "prompt_ref_payload", "PromptRef.prefix is 800 characters, not the first 1600"),
    ("refs_without_opt_in", "prompt_ref_opt_in", "a session opened without prompt_refs sent {'prompt_ref'"),
    ("bind_refs_keeps_final", "bind_refs_text", "BindRefs must unset Final"),
    ("bind_refs_lossy", "bind_refs_text", "'prompt' is bound to 'str 1664 e9eeefa3"),
    ("unknown_ref_binds_nothing", "bind_refs_unknown_ref", "must fail with unknown_ref, got VarsSet"),
    ("bind_refs_checks_refs_first", "bind_refs_unknown_ref", "must fail with unknown_session, got code 'unknown_ref'"),
    ("ref_dies_with_its_maker", "prompt_ref_lifetime", "must outlive the session that made it"),
    ("refs_never_freed", "prompt_ref_lifetime", "whose session closed before it was bound must fail with unknown_ref"),
    ("rebinds_after_reset", "prompt_ref_lifetime", "after a reset 'prompt' in globals() printed 'True"),
    ("bind_refs_limit_bad_request", "bind_refs_limit", "must fail with too_large, got code 'bad_request'"),
    ("batch_sends_text", "prompt_ref_batched", "no host call of the batch carries a PromptRef of prompt 0"),
    ("batch_shares_one_ref", "prompt_ref_batched", "the batch's prompts share refs"),
]

PROMPT_REF_CHECKS = [
    "prompt_ref_payload", "prompt_ref_opt_in", "bind_refs_text", "bind_refs_unknown_ref",
    "prompt_ref_lifetime", "bind_refs_limit", "prompt_ref_batched",
]


@pytest.mark.parametrize(("defect", "check", "words"), DEFECTS_PROMPT_REF, ids=[d[0] for d in DEFECTS_PROMPT_REF])
def test_each_check_of_prompt_ref_fails_its_defective_guest(defect: str, check: str, words: str) -> None:
    report = run_conformance(relay(defect), only=["handshake", check], timeout_factor=0.5)
    assert words in _only_failure(report, check)


def test_prompt_ref_checks_are_skipped_for_a_guest_without_it() -> None:
    # The relay hides "prompt_ref" from Hello; the kit's Welcome then does not offer it either.
    report = run_conformance(relay("no_prompt_ref"), only=["handshake", *PROMPT_REF_CHECKS])
    assert report.ok, report.format()
    for name in PROMPT_REF_CHECKS:
        assert report.result(name).outcome is Outcome.SKIP, report.format()
        assert "does not advertise prompt_ref" in report.result(name).message


def test_every_check_has_a_reason_and_the_1_1_checks_a_defective_guest() -> None:
    assert all(c.reason for c in CHECKS)
    pinned = {check for _, check, _ in DEFECTS_1_1} | {
        "host_calls_out_of_order", "interrupt_python", "metadata", "welcome_other_major", "handshake"
    }
    # Checks a relay cannot break in one wire-visible way are pinned by the Node guest's defects.
    by_node = {"bash_repl_vars", "bash_repl_host_calls"}
    new_in_1_1 = {
        "malformed_frame", "float_call_id", "oversized_length", "stdin_end", "wrong_direction",
        "interrupt_unknown_session", "late_host_call_reply", "max_sessions", "cwd", "non_utf8_output",
        "output_below_runtime", "no_echo", "show_vars_empty", "vars_state_names",
        "rlm_query_fields", "llm_query_no_fields", "batched_error", "set_vars_while_busy",
        "int_in_float_field", "timeout_counts_host_calls", "interrupt_reset", "session_died",
        "close_during_block", "shutdown_during_block",
    }
    assert new_in_1_1 | by_node <= {c.name for c in CHECKS}
    assert new_in_1_1 <= pinned
    # Every check of prompt_ref has its defective guest.
    assert {c.name for c in CHECKS if "prompt_ref" in c.requires} == set(PROMPT_REF_CHECKS)
    assert set(PROMPT_REF_CHECKS) == {check for _, check, _ in DEFECTS_PROMPT_REF}


def test_a_bash_only_guest_is_certified_with_bash_probes() -> None:
    # The relay hides exec.python and refuses Python blocks: a guest that runs bash alone.
    report = run_conformance(relay("python_hidden"))
    assert report.ok, report.format()
    outcomes = {r.name: r.outcome for r in report.results}
    for name in ("metadata", "session_busy", "output_cap", "exec_timeout", "non_utf8_output",
                 "unknown_frame_ignored", "unknown_fields_ignored", "unsupported_language",
                 "close_during_block", "set_vars_while_busy", "cwd"):
        assert outcomes[name] is Outcome.PASS, (name, report.format())
    # Without a REPL (no repl.bash) there is no state to check.
    assert outcomes["state_persists"] is Outcome.SKIP
    assert "neither exec.python nor exec.bash with repl.bash" in report.result("state_persists").message


def test_list_and_json() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "rlm_protocol.conformance", "--list"],
        capture_output=True, text=True, timeout=60,
    )
    assert listed.returncode == 0
    assert all(c.name in listed.stdout and c.reason in listed.stdout for c in CHECKS)
    report = subprocess.run(
        [sys.executable, "-m", "rlm_protocol.conformance", "--json", "--", *relay("utf8_chars")],
        capture_output=True, text=True, timeout=300,
    )
    assert report.returncode == 1
    data = json.loads(report.stdout)
    assert data["ok"] is False and data["hello"]["agent"] == "rlm-guest"
    failed = [r for r in data["results"] if r["outcome"] == "fail"]
    by_name = {r["name"]: r for r in failed}
    assert "stdout.chars is 14" in by_name["metadata"]["message"]
    assert by_name["metadata"]["reason"] and len(data["results"]) == len(CHECKS)


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
    listed = runner.invoke(app, ["conformance", "--list"])
    assert listed.exit_code == 0 and listed.output.count("why: ") == len(CHECKS)
    as_json = runner.invoke(app, ["conformance", "--json", "--only", "metadata", "--", *GUEST])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["results"][0]["outcome"] == "pass"
