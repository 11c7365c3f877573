"""Checks of sessions under stress: while a block runs, at the limits, after a reset or a death.

Probes are in the language the guest runs (``Probe.samples``), except where the behaviour is
Python's own (``KeyboardInterrupt`` ignored, a session process that exits).
"""

from __future__ import annotations

import time
from typing import Final

from ..frames import (
    CloseSession,
    ErrorFrame,
    Exec,
    ExecResult,
    Frame,
    HostCall,
    HostCallReply,
    Interrupt,
    OpenSession,
    SessionClosed,
    SessionOpened,
    SetVars,
    VarsSet,
)
from .peer import CheckFailed, describe
from .probe import Probe, Skip, fail_unless

__all__ = [
    "close_during_block",
    "cwd",
    "int_in_float_field",
    "interrupt_reset",
    "interrupt_unknown_session",
    "late_host_call_reply",
    "max_sessions",
    "non_utf8_output",
    "session_died",
    "set_vars_while_busy",
    "timeout_counts_host_calls",
    "wrong_direction",
]

#: Above this ``max_sessions`` the limit is not checked: opening that many would take too long.
MAX_SESSIONS_CHECKED: Final = 64

#: PROTOCOL.md 6: the reference grace; a reset must come within it plus a margin.
INTERRUPT_GRACE_SECONDS: Final = 2.0
RESET_MARGIN_SECONDS: Final = 5.0

#: Lead before acting on a running block (nothing to observe from outside that it started).
BLOCK_LEAD_SECONDS: Final = 0.3

#: ``Exec.timeout`` of the block that waits on a host call.
HOST_CALL_TIMEOUT_SECONDS: Final = 2.0

#: A directory that no guest has.
MISSING_DIRECTORY: Final = "/nonexistent/rlm-conformance-cwd"


def wrong_direction(probe: Probe) -> None:
    """A guest-to-host frame sent to the guest gets bad_request with its session and call; no exit."""
    session = probe.open_session("wrong")
    call = probe.link.new_call()
    probe.expect_error(
        SessionOpened(session=session, call=call), call, ("bad_request",), "a SessionOpened sent to the guest"
    )
    # The stream is in sync: the guest carries on.
    s = probe.samples
    result = probe.exec_ok(session, s.alive(), language=s.language)
    fail_unless(result.stdout.text == "alive\n", f"the block printed {result.stdout.text!r}")
    probe.close_session(session)


def interrupt_unknown_session(probe: Probe) -> None:
    """An Interrupt for a session that does not exist is ignored: no frame comes back."""
    probe.send(Interrupt(session="never-opened"))
    session = probe.open_session("after")  # the very next frame must be this reply
    probe.close_session(session)


def late_host_call_reply(probe: Probe) -> None:
    """A HostCallReply for a closed session (a cancelled call) is dropped: no frame comes back."""
    session = probe.open_session("gone")
    probe.close_session(session)
    probe.send(HostCallReply(session=session, call=77, value="too late"))
    other = probe.open_session("after")  # the very next frame must be this reply
    probe.close_session(other)


def max_sessions(probe: Probe) -> None:
    """OpenSession beyond Hello.limits.max_sessions fails with too_large; open sessions still work."""
    limit = probe.limits.max_sessions
    if limit > MAX_SESSIONS_CHECKED:
        raise Skip(f"max_sessions is {limit}; the kit checks the limit up to {MAX_SESSIONS_CHECKED}")
    sessions = [probe.open_session("full") for _ in range(limit)]
    call = probe.link.new_call()
    extra = probe.link.new_session_id("extra")
    probe.expect_error(
        OpenSession(session=extra, call=call), call, ("too_large",), f"OpenSession number {limit + 1}"
    )
    if probe.has("exec.python") or probe.has("exec.bash"):
        s = probe.samples
        probe.exec_ok(sessions[0], s.alive(), language=s.language)
    probe.close_session(sessions[-1])
    sessions[-1] = probe.open_session("again")  # a closed session frees its place
    for session in sessions:
        probe.close_session(session)


def cwd(probe: Probe) -> None:
    """OpenSession.cwd is where bash blocks run; a cwd that does not exist is refused."""
    call = probe.link.new_call()
    probe.expect_error(
        OpenSession(session=probe.link.new_session_id("nocwd"), call=call, cwd=MISSING_DIRECTORY),
        call,
        ("bad_request",),
        f"OpenSession with cwd {MISSING_DIRECTORY!r}",
    )
    if not probe.has("exec.bash"):
        return
    session = probe.open_session("root", cwd="/")
    shown = probe.exec_ok(session, "pwd", language="bash").stdout.text
    fail_unless(shown == "/\n", f"a bash block of a session opened with cwd '/' ran in {shown!r}")
    probe.close_session(session)


def close_during_block(probe: Probe) -> None:
    """CloseSession while a block runs: at most the block's result, then SessionClosed, then nothing."""
    s = probe.samples
    session, other = probe.open_session("closing"), probe.open_session("bystander")
    call = probe.link.new_call()
    probe.send(Exec(session=session, call=call, code=s.write_then_sleep("x"), language=s.language))
    time.sleep(BLOCK_LEAD_SECONDS)
    close = probe.link.new_call()
    probe.send(CloseSession(session=session, call=close))
    while True:
        frame = probe.receive("SessionClosed for a session running a block")
        if isinstance(frame, SessionClosed) and frame.call == close:
            break
        fail_unless(
            (isinstance(frame, ExecResult) and frame.call == call)
            or (isinstance(frame, HostCall) and frame.session == session),
            f"before SessionClosed only the running block's frames may come, got {describe(frame)}",
        )
    # Nothing names the closed session afterwards: the next frame is the bystander's result.
    result = probe.exec_ok(other, s.alive(), language=s.language)
    fail_unless(result.stdout.text == "alive\n", f"the other session printed {result.stdout.text!r}")
    probe.close_session(other)


def set_vars_while_busy(probe: Probe) -> None:
    """SetVars while a block runs gets vars_set or session_busy, and the block finishes normally."""
    s = probe.samples
    session = probe.open_session("busyvars")
    block, bind = probe.link.new_call(), probe.link.new_call()
    probe.send(Exec(session=session, call=block, code=s.sleep_then_write(1, "done"), language=s.language))
    time.sleep(BLOCK_LEAD_SECONDS)
    probe.send(SetVars(session=session, call=bind, values={"late": "value"}))
    replies: dict[int, Frame] = {}
    while len(replies) < 2:
        frame = probe.receive("the replies to an Exec and a SetVars in one session")
        reply_call = getattr(frame, "call", None)
        if reply_call not in (block, bind) or reply_call in replies:
            raise CheckFailed(f"unexpected {describe(frame)}")
        replies[reply_call] = frame
    bound = replies[bind]
    fail_unless(
        isinstance(bound, VarsSet)
        or (isinstance(bound, ErrorFrame) and bound.code == "session_busy"),
        f"SetVars during a block must get vars_set or session_busy, got {describe(bound)}",
    )
    done = replies[block]
    fail_unless(
        isinstance(done, ExecResult) and done.stdout.text == "done\n" and not done.interrupted,
        f"the block must finish normally, got {describe(done)}",
    )
    probe.close_session(session)


def non_utf8_output(probe: Probe) -> None:
    """Output that is not UTF-8 arrives with U+FFFD replacements, counted as characters."""
    s = probe.samples
    session = probe.open_session("bytes")
    result = probe.exec_ok(session, s.write_bytes(b"a\xffb\xc3\n"), language=s.language)
    expected = "a\ufffdb\ufffd\n"
    out = result.stdout
    fail_unless(out.text == expected, f"stdout.text is {out.text!r}, not {expected!r}")
    fail_unless(out.chars == len(expected), f"stdout.chars is {out.chars}, not {len(expected)}")
    probe.close_session(session)


def int_in_float_field(probe: Probe) -> None:
    """An integer in a float field (Exec.timeout = 30) is accepted."""
    s = probe.samples
    session = probe.open_session("intfloat")
    call = probe.link.new_call()
    probe.send_map(
        {"kind": "exec", "session": session, "call": call, "code": s.alive(), "language": s.language, "timeout": 30}
    )
    result = probe.expect(ExecResult, call, "an Exec whose timeout is the integer 30")
    fail_unless(result.stdout.text == "alive\n", f"the block printed {result.stdout.text!r}")
    probe.close_session(session)


def timeout_counts_host_calls(probe: Probe) -> None:
    """Exec.timeout counts time spent waiting on a host call: an unanswered call is interrupted."""
    s = probe.repl_samples
    session = probe.open_session("hostwait")
    call = probe.link.new_call()
    # Long enough that the block is surely waiting on its host call when the timeout ends, so
    # a guest that stops its clock for host calls is caught even on a loaded machine.
    timeout = HOST_CALL_TIMEOUT_SECONDS
    started = time.monotonic()
    probe.send(Exec(session=session, call=call, code=s.host_call("never"), language=s.language, timeout=timeout))
    budget = (timeout + RESET_MARGIN_SECONDS) * probe.scale
    while True:
        try:
            frame = probe.receive("the result of a block waiting on a host call", within=budget)
        except CheckFailed as error:
            raise CheckFailed(
                f"a block with timeout={timeout} waiting on an unanswered host call was not "
                f"stopped within {budget:.1f} s: {error}"
            ) from None
        if isinstance(frame, HostCall):
            continue  # never answered
        break
    fail_unless(
        isinstance(frame, ExecResult) and frame.call == call and frame.interrupted,
        f"expected the block's result with interrupted=true, got {describe(frame)}",
    )
    fail_unless(time.monotonic() - started <= budget, "the block stopped too late")
    probe.close_session(session)


def _stuck_code(language: str) -> str:
    if language == "python":
        return (
            "import time\nprint('lost')\nwhile True:\n    try:\n        time.sleep(30)\n"
            "    except KeyboardInterrupt:\n        pass"
        )
    # A process that left the block's process group holds its output open.
    return "echo lost; setsid sleep 30"


def interrupt_reset(probe: Probe) -> None:
    """A block that ignores its interrupt is ended by a reset within the grace: state and output lost."""
    probe.require("interrupt")
    s = probe.repl_samples
    session = probe.open_session("stuck")
    probe.exec_ok(session, s.assign("kept", "no"), language=s.language)
    call = probe.link.new_call()
    probe.send(Exec(session=session, call=call, code=_stuck_code(s.language), language=s.language))
    time.sleep(BLOCK_LEAD_SECONDS)
    started = time.monotonic()
    probe.send(Interrupt(session=session))
    budget = (INTERRUPT_GRACE_SECONDS + RESET_MARGIN_SECONDS) * probe.scale
    result: ExecResult = probe.expect(ExecResult, call, "the stuck block", within=budget)
    took = time.monotonic() - started
    if s.language == "bash" and not result.session_reset:
        # A guest that does not wait for the shell's pipes ends the block without a reset:
        # conformant too, and then the state must be intact.
        fail_unless(result.interrupted, f"the stuck block ended without interrupted=true: {describe(result)}")
        shown = probe.exec_ok(session, s.show("kept"), language=s.language).stdout.text
        fail_unless(shown == "no\n", f"an interrupt without a reset lost the state: {shown!r}")
        probe.close_session(session)
        return
    fail_unless(
        result.interrupted and result.session_reset,
        f"a block that ignored its interrupt must end with interrupted and session_reset: {describe(result)}",
    )
    fail_unless(took <= budget, f"the reset took {took:.1f} s (at most {budget:.1f} s)")
    fail_unless(
        result.error is not None and result.error.name == "SessionReset",
        f"a reset block must report an error named SessionReset, got {result.error}",
    )
    fail_unless(result.stdout.text == "", f"a reset block reports stdout {result.stdout.text!r}; it is lost")
    fail_unless(result.state.count == 0, f"a reset block reports state {result.state}; it is empty")
    after = probe.exec(session, s.show("kept"), language=s.language)
    fail_unless(
        "no" not in after.stdout.text,
        f"a variable survived the reset: {describe(after)}",
    )
    probe.close_session(session)


def session_died(probe: Probe) -> None:
    """A block that kills its session's process gets session_reset and SessionDied; the next block runs."""
    session = probe.open_session("dies")
    probe.exec_ok(session, "kept = 1")
    result = probe.exec(session, "import os\nos._exit(3)")
    fail_unless(
        result.session_reset and result.error is not None and result.error.name == "SessionDied",
        f"a block whose process exited must report session_reset and SessionDied, got {describe(result)}",
    )
    after = probe.exec(session, "print(kept)")
    fail_unless(
        after.error is not None and after.error.name == "NameError",
        f"the session's variables survived its process: {describe(after)}",
    )
    probe.close_session(session)

