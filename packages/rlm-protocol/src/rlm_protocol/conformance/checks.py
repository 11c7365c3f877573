"""The behavioural checks of the protocol, one function each, gathered in :data:`CHECKS`.

Each check drives a guest through a :class:`~.probe.Probe` and raises ``CheckFailed`` with a
message saying what the guest did wrong, or ``Skip`` when the guest did not advertise the
capability the check needs. Sample code is Python or POSIX shell: a check that is not about one language uses whichever the
guest runs (``samples.py``), so a bash-only guest is certified for what it advertises.

Over 400 lines on purpose: a catalogue of independent checks, each read on its own; the checks
of sessions, prompt references, the bash REPL and the wire already have modules of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..frames import (
    CloseSession,
    ErrorFrame,
    Exec,
    ExecResult,
    Frame,
    HostCall,
    HostCallError,
    HostCallReply,
    Interrupt,
    OpenSession,
    SessionOpened,
    SetVars,
    Shutdown,
    Bye,
    VarsSet,
)
from ..metadata import count_lines
from ..version import PROTOCOL_MAJOR, PROTOCOL_MINOR
from .peer import CheckFailed, GuestPeer, describe
from . import prompt_ref_checks, repl_checks, session_checks, wire_checks
from .probe import Link, Probe, Skip, expect_exit, fail_unless, receive_hello, welcome_for
from .samples import BASH, PYTHON, Samples

__all__ = ["CHECKS", "Check"]

#: Seconds a check may take unless it says otherwise; generous for a guest in a cold VM.
DEFAULT_CHECK_SECONDS: Final = 20.0

#: How long the kit lets a block run before interrupting it, so the interrupt lands mid-block.
BUSY_LEAD_SECONDS: Final = 0.3

#: ``Exec.timeout`` used by the timeout checks.
EXEC_TIMEOUT_SECONDS: Final = 0.5

#: A block must end this soon after its interrupt or timeout (the reference guest resets a stuck
#: session after two seconds, so five leaves room for a slow machine).
STOP_SECONDS: Final = 5.0

#: The output-cap check prints ``max_output_chars`` plus this many characters.
CAP_OVERSHOOT: Final = 1000

#: Above this ``max_output_chars`` the output-cap check is skipped: printing it would take
#: longer than the check's budget and the frame would dwarf the other checks.
CAP_CHECK_MAX_CHARS: Final = 16_000_000


@dataclass(frozen=True)
class Check:
    """A named behavioural check.

    ``own_guest`` checks get a guest process of their own, started for them; with
    ``handshake=False`` the check receives the raw peer and does the handshake itself.
    """

    name: str
    run: Callable[[Probe], None] | None = None
    run_raw: Callable[[GuestPeer, float], None] | None = None
    requires: tuple[str, ...] = ()
    own_guest: bool = False
    timeout: float = DEFAULT_CHECK_SECONDS
    #: Why the protocol asks for this, in one line (``rlm conformance --list``).
    reason: str = ""

    @property
    def summary(self) -> str:
        """First line of the check function's docstring."""
        function = self.run or self.run_raw
        doc = (function.__doc__ or "").strip() if function is not None else ""
        return doc.splitlines()[0] if doc else ""


# --- handshake ---------------------------------------------------------------------------------


def handshake(peer: GuestPeer, timeout: float) -> None:
    """Hello comes first, with a compatible version, known shapes and sane limits."""
    started = time.monotonic()
    hello = receive_hello(peer, timeout)
    fail_unless(
        hello.protocol[0] == PROTOCOL_MAJOR,
        f"Hello.protocol is {hello.protocol}, the kit speaks major {PROTOCOL_MAJOR}",
    )
    fail_unless(bool(hello.agent), "Hello.agent is empty")
    limits = hello.limits
    # The host sends prompts of several MiB; below 64 KiB a guest could not take a real one.
    fail_unless(
        limits.max_frame_bytes >= 65536,
        f"Hello.limits.max_frame_bytes is {limits.max_frame_bytes}; at least 65536 is needed",
    )
    # The model is shown an 800-character prefix of each stream; a smaller cap hides part of it.
    fail_unless(
        limits.max_output_chars >= 800,
        f"Hello.limits.max_output_chars is {limits.max_output_chars}; at least 800 is needed",
    )
    fail_unless(
        limits.max_sessions >= 2,
        f"Hello.limits.max_sessions is {limits.max_sessions}; a host needs at least 2 (a child RLM)",
    )
    fail_unless(
        len(set(hello.capabilities)) == len(hello.capabilities),
        f"Hello.capabilities repeats entries: {hello.capabilities}",
    )
    peer.send(welcome_for(hello))
    probe = Probe(Link(peer, hello), max(timeout - (time.monotonic() - started), 0.0))
    probe.close_session(probe.open_session("handshake"))


def welcome_from_newer_minor(peer: GuestPeer, timeout: float) -> None:
    """A Welcome of a newer minor, with an unknown field and capability, is accepted."""
    deadline = time.monotonic() + timeout
    hello = receive_hello(peer, timeout)
    welcome = welcome_for(hello, (PROTOCOL_MAJOR, PROTOCOL_MINOR + 7))
    body = {
        "kind": "welcome",
        "protocol": list(welcome.protocol),
        "host": welcome.host,
        "host_version": welcome.host_version,
        "capabilities": [*welcome.capabilities, "teleport.v2"],
        "host_motd": "a field from the future",
    }
    probe = Probe(Link(peer, hello), max(deadline - time.monotonic(), 0.0))
    probe.send_map(body)
    probe.close_session(probe.open_session("newer"))


def welcome_other_major(peer: GuestPeer, timeout: float) -> None:
    """A Welcome with another major is refused: an ErrorFrame naming both versions, then exit."""
    deadline = time.monotonic() + timeout
    hello = receive_hello(peer, timeout)
    other = (PROTOCOL_MAJOR + 1, 0)
    peer.send(welcome_for(hello, other))
    # Then a request: a guest that silently carried on would answer it.
    peer.send(OpenSession(session="after-refusal", call=1))
    refusal: ErrorFrame | None = None
    while refusal is None:
        try:
            frame = peer.receive(max(deadline - time.monotonic(), 0.0))
        except CheckFailed as error:
            if peer.alive:
                raise CheckFailed(
                    f"after a Welcome of protocol {other[0]}.{other[1]} the guest neither "
                    f"refused nor closed: {error}"
                ) from None
            raise CheckFailed(
                f"the guest closed the connection on a Welcome of protocol {other[0]}.{other[1]} "
                "without an ErrorFrame; PROTOCOL.md 5 asks for one naming both versions"
            ) from None
        if isinstance(frame, ErrorFrame) and frame.call is None:
            refusal = frame
        elif isinstance(frame, SessionOpened):
            raise CheckFailed(
                f"the guest accepted a Welcome of protocol {other[0]}.{other[1]} and opened a "
                "session; a different major must be refused"
            )
        elif not isinstance(frame, ErrorFrame):
            raise CheckFailed(f"expected the refusal, got {describe(frame)}")
    fail_unless(refusal.code == "bad_request", f"the refusal has code {refusal.code!r}, not bad_request")
    theirs = f"{other[0]}.{other[1]}"
    ours = f"{hello.protocol[0]}.{hello.protocol[1]}"
    fail_unless(
        theirs in refusal.message and ours in refusal.message,
        f"the refusal must name both versions ({theirs} and {ours}): {refusal.message!r}",
    )
    expect_exit(peer, deadline, "after refusing a Welcome", zero=False)


# --- sessions ----------------------------------------------------------------------------------


def session_lifecycle(probe: Probe) -> None:
    """Open, a duplicate open, close, and a second close of one session."""
    session = probe.open_session("life")
    call = probe.link.new_call()
    probe.expect_error(
        OpenSession(session=session, call=call), call, ("session_exists",), "a second OpenSession"
    )
    probe.close_session(session)
    call = probe.link.new_call()
    probe.expect_error(
        CloseSession(session=session, call=call),
        call,
        ("unknown_session",),
        "CloseSession of a closed session",
    )


def unknown_session(probe: Probe) -> None:
    """SetVars, Exec and CloseSession on a session never opened fail with unknown_session."""
    ghost = "never-opened"
    for make, what in (
        (lambda c: SetVars(session=ghost, call=c, values={"a": 1}), "SetVars"),
        (lambda c: Exec(session=ghost, call=c, code="1"), "Exec"),
        (lambda c: CloseSession(session=ghost, call=c), "CloseSession"),
    ):
        call = probe.link.new_call()
        probe.expect_error(make(call), call, ("unknown_session",), f"{what} on an unknown session")


def session_isolation(probe: Probe) -> None:
    """Two sessions have separate state."""
    s = probe.repl_samples
    first, second = probe.open_session("iso"), probe.open_session("iso")
    probe.exec_ok(first, s.assign("x", "first"), language=s.language)
    result = probe.exec(second, s.show("x"), language=s.language)
    fail_unless(
        "first" not in result.stdout.text
        and (result.error is not None or bool(result.returncode)),
        f"a variable of session {first!r} is visible in {second!r}: {describe(result)}",
    )
    probe.exec_ok(second, s.assign("x", "second"), language=s.language)
    shown = probe.exec_ok(first, s.show("x"), language=s.language).stdout.text
    fail_unless(shown == "first\n", f"session {second!r} overwrote {first!r}'s x: {shown!r}")
    probe.close_session(first)
    probe.close_session(second)


def sessions_run_concurrently(probe: Probe) -> None:
    """A block waiting on a host call in one session does not hold up another session."""
    s = probe.repl_samples
    held, other = probe.open_session("hold"), probe.open_session("free")
    held_call = probe.link.new_call()
    probe.send(Exec(session=held, call=held_call, code=s.host_call("hold"), language=s.language))
    host_call = probe.receive("the HostCall of the held block")
    fail_unless(isinstance(host_call, HostCall), f"expected a HostCall, got {describe(host_call)}")
    assert isinstance(host_call, HostCall)
    shown = probe.exec_ok(other, s.alive(), language=s.language).stdout.text
    fail_unless(shown == "alive\n", f"the other session printed {shown!r}")
    probe.send(HostCallReply(session=held, call=host_call.call, value="released"))
    result = probe.expect(ExecResult, held_call, "the held Exec")
    expected = "released\n" if s.language == "python" else '"released"\n'
    fail_unless(result.stdout.text == expected, f"the held block printed {result.stdout.text!r}")
    probe.close_session(held)
    probe.close_session(other)


def state_persists(probe: Probe) -> None:
    """Variables persist across blocks and show in the VarsState summary."""
    s = probe.repl_samples
    session = probe.open_session("state")
    first = probe.exec_ok(session, s.assign("counter", "41"), language=s.language)
    fail_unless("counter" in first.state.names, f"state after a binding: {first.state}")
    shown = probe.exec_ok(session, s.show("counter"), language=s.language).stdout.text
    fail_unless(shown == "41\n", f"the second block printed {shown!r}, not '41\\n'")
    probe.close_session(session)


# --- exec --------------------------------------------------------------------------------------


def exec_python_streams(probe: Probe) -> None:
    """print, sys.stdout.write and sys.stderr are captured separately."""
    session = probe.open_session("py")
    result = probe.exec_ok(
        session,
        "import sys\nprint('out')\nsys.stdout.write('written')\nprint('err', file=sys.stderr)",
    )
    fail_unless(result.stdout.text == "out\nwritten", f"stdout is {result.stdout.text!r}")
    fail_unless(result.stderr.text == "err\n", f"stderr is {result.stderr.text!r}")
    fail_unless(result.returncode is None, f"a Python block has returncode {result.returncode}")
    fail_unless(not result.interrupted, "a block that ended by itself is marked interrupted")
    probe.close_session(session)


def exec_python_error(probe: Probe) -> None:
    """An exception is a result with name, value and traceback; output before it is kept."""
    session = probe.open_session("pyerr")
    result = probe.exec(session, "print('before')\nraise ValueError('boom')")
    error = result.error
    fail_unless(error is not None, f"a raising block has no error: {describe(result)}")
    assert error is not None
    fail_unless(error.name == "ValueError", f"error.name is {error.name!r}, not 'ValueError'")
    fail_unless(error.value == "boom", f"error.value is {error.value!r}, not 'boom'")
    last = error.traceback.rstrip("\n").rsplit("\n", 1)[-1]
    fail_unless(
        last == "ValueError: boom",
        f"the traceback's last line is {last!r}, not 'ValueError: boom' (PROTOCOL.md 3.3)",
    )
    fail_unless(
        error.traceback in result.stderr.text,
        f"the traceback is not written to stderr: {result.stderr.text!r}",
    )
    fail_unless(result.stdout.text == "before\n", f"stdout is {result.stdout.text!r}")
    # The session survives an exception.
    probe.exec_ok(session, "print('after')")
    probe.close_session(session)


def exec_bash(probe: Probe) -> None:
    """A bash block reports its exit status and both streams."""
    session = probe.open_session("sh")
    result = probe.exec(session, "echo out; echo err >&2; exit 3", language="bash")
    fail_unless(result.returncode == 3, f"returncode is {result.returncode}, not 3")
    fail_unless(result.stdout.text == "out\n", f"stdout is {result.stdout.text!r}")
    fail_unless(result.stderr.text == "err\n", f"stderr is {result.stderr.text!r}")
    fail_unless(result.error is None, f"a bash block has a Python error: {result.error}")
    ok = probe.exec(session, "true", language="bash")
    fail_unless(ok.returncode == 0, f"`true` has returncode {ok.returncode}")
    probe.close_session(session)


def metadata(probe: Probe) -> None:
    """Captured.chars counts code points; lines is the count of newlines plus one ("a\\n" is 2)."""
    s = probe.samples
    session = probe.open_session("meta")
    # Non-ASCII on purpose: chars are Unicode code points, not UTF-8 bytes or UTF-16 units.
    for text in ("a\nbb\n\u00e9\u20ac\U0001f600", "a\n", "a"):
        result = probe.exec_ok(session, s.write(text), language=s.language)
        out = result.stdout
        fail_unless(out.text == text, f"stdout.text is {out.text!r}, not {text!r}")
        fail_unless(
            out.chars == len(text),
            f"stdout.chars is {out.chars} for {text!r}; it must be {len(text)}",
        )
        fail_unless(
            out.lines == count_lines(text),
            f"stdout.lines is {out.lines} for {text!r}; it must be {count_lines(text)}",
        )
    empty = probe.exec_ok(session, "pass" if s.language == "python" else "true", language=s.language)
    for name, captured in (("stdout", empty.stdout), ("stderr", empty.stderr)):
        fail_unless(
            (captured.text, captured.chars, captured.lines) == ("", 0, 0),
            f"an empty {name} is reported as {captured}",
        )
    probe.close_session(session)


def output_cap(probe: Probe) -> None:
    """Output beyond Hello.limits.max_output_chars is cut, and its true size still reported."""
    limit = probe.limits.max_output_chars
    if limit > CAP_CHECK_MAX_CHARS:
        raise Skip(f"max_output_chars is {limit}; the kit checks caps up to {CAP_CHECK_MAX_CHARS}")
    size = limit + CAP_OVERSHOOT
    s = probe.samples
    session = probe.open_session("cap")
    result = probe.exec_ok(session, s.write_many(size), language=s.language)
    out = result.stdout
    fail_unless(
        len(out.text) <= limit,
        f"stdout.text has {len(out.text)} characters, over the announced limit of {limit}",
    )
    fail_unless(out.text == "x" * len(out.text), "the kept stdout is not a prefix of the output")
    fail_unless(
        out.chars == size,
        f"stdout.chars is {out.chars}; the block wrote {size} (the true size must be reported)",
    )
    fail_unless(out.cut, "stdout is not marked as cut (chars must exceed len(text))")
    fail_unless(result.stderr.text == "", f"stderr is {result.stderr.text!r}")
    probe.close_session(session)


# --- host calls and variables -------------------------------------------------------------------


def host_call_roundtrip(probe: Probe) -> None:
    """host_call sends a HostCall and returns the reply's value; an error reply raises."""
    session = probe.open_session("call")
    seen: list[HostCall] = []

    def serve(call: HostCall) -> None:
        seen.append(call)
        probe.send(HostCallReply(session=call.session, call=call.call, value={"got": call.payload}))

    result = probe.exec_ok(
        session, "r = host_call('echo', {'n': [1, 2]})\nprint(r['got']['n'])", serve=serve
    )
    fail_unless(len(seen) == 1, f"expected one HostCall, got {len(seen)}")
    call = seen[0]
    fail_unless(call.session == session, f"HostCall names session {call.session!r}")
    fail_unless(call.method == "echo", f"HostCall.method is {call.method!r}, not 'echo'")
    fail_unless(call.payload == {"n": [1, 2]}, f"HostCall.payload is {call.payload!r}")
    fail_unless(result.stdout.text == "[1, 2]\n", f"the block printed {result.stdout.text!r}")

    def refuse(call: HostCall) -> None:
        probe.send(
            HostCallReply(
                session=call.session, call=call.call, error=HostCallError("Refused", "no budget")
            )
        )

    failed = probe.exec(session, "host_call('echo', {})", serve=refuse)
    fail_unless(failed.error is not None, "an error reply did not raise in the block")
    assert failed.error is not None
    fail_unless(
        "Refused: no budget" in failed.error.value,
        f"the raised error should read 'Refused: no budget', got {failed.error.value!r}",
    )
    probe.close_session(session)


def host_calls_out_of_order(probe: Probe) -> None:
    """llm_query_batched of 5 prompts: all calls in flight at once, replies in reverse, routed by id."""
    session = probe.open_session("batch")
    call = probe.link.new_call()
    prompts = [f"p{i}" for i in range(5)]
    probe.send(
        Exec(session=session, call=call, code=f"answers = llm_query_batched({prompts!r})\nprint(answers)")
    )
    calls: list[HostCall] = []
    while len(calls) < len(prompts):
        frame = probe.receive(f"HostCall {len(calls) + 1} of {len(prompts)}")
        fail_unless(
            isinstance(frame, HostCall),
            f"expected {len(prompts)} HostCalls before any reply, got {describe(frame)} after "
            f"{len(calls)}",
        )
        assert isinstance(frame, HostCall)
        calls.append(frame)
    ids = [c.call for c in calls]
    fail_unless(len(set(ids)) == len(ids), f"host call ids repeat: {ids}")
    got_prompts = sorted(str(c.payload.get("prompt")) for c in calls)
    fail_unless(got_prompts == prompts, f"the HostCalls carry prompts {got_prompts}")
    fail_unless(
        all(c.method == "llm_query" for c in calls),
        f"methods are {[c.method for c in calls]}, not llm_query",
    )
    for host_call in reversed(calls):
        prompt = host_call.payload["prompt"]
        probe.send(
            HostCallReply(session=session, call=host_call.call, value=f"answer to {prompt}")
        )
    result = probe.expect(ExecResult, call, "the batched Exec")
    expected = repr([f"answer to {p}" for p in prompts]) + "\n"
    fail_unless(
        result.stdout.text == expected,
        "replies answered in reverse order were routed wrongly: the block printed "
        f"{result.stdout.text!r}, expected {expected!r}",
    )
    probe.close_session(session)


def set_vars_unsets_final(probe: Probe) -> None:
    """SetVars binds variables and unsets Final."""
    session = probe.open_session("vars")
    result = probe.exec_ok(session, "Final = 'done'")
    fail_unless(
        result.final is not None and result.final.ok and result.final.value == "done",
        f"Final = 'done' is reported as {result.final}",
    )
    call = probe.link.new_call()
    probe.send(SetVars(session=session, call=call, values={"context": "abc", "n": [1, 2]}))
    state = probe.expect(VarsSet, call, "SetVars").state
    fail_unless(
        {"context", "n"} <= set(state.names), f"VarsSet.state does not list the variables: {state}"
    )
    after = probe.exec_ok(session, "print(context, n)")
    fail_unless(after.stdout.text == "abc [1, 2]\n", f"the block printed {after.stdout.text!r}")
    fail_unless(after.final is None, f"Final survived SetVars: {after.final}")
    probe.close_session(session)


def final_json(probe: Probe) -> None:
    """A JSON Final is returned as a value; a non-JSON or too-big Final is reported, not fatal."""
    session = probe.open_session("final")
    good = probe.exec_ok(session, "Final = {'a': [1, 2], 'b': None}")
    fail_unless(
        good.final is not None and good.final.ok and good.final.value == {"a": [1, 2], "b": None},
        f"a JSON Final is reported as {good.final}",
    )
    long = probe.exec_ok(session, "Final = 'x' * 1000")
    fail_unless(
        long.final is not None and long.final.ok and len(long.final.repr) <= 200,
        f"FinalValue.repr has {len(long.final.repr) if long.final else '?'} characters; at most 200",
    )
    for code, what in (
        ("Final = object()", "a non-JSON Final"),
        ("Final = 2 ** 70", "a Final holding an integer beyond 64 bits"),
    ):
        bad = probe.exec(session, code)
        fail_unless(
            not bad.session_reset and bad.error is None,
            f"{what} broke the session: {describe(bad)}",
        )
        fail_unless(
            bad.final is not None and not bad.final.ok and bool(bad.final.error),
            f"{what} must be ok=false with an error, got {bad.final}",
        )
        assert bad.final is not None
        fail_unless(
            bad.final.value is None,
            f"{what}: a FinalValue with ok=false carries value {bad.final.value!r}; it must be absent",
        )
    probe.close_session(session)


# --- interrupt, timeout, busy ---------------------------------------------------------------------


def _expect_stopped(probe: Probe, call: int, what: str, started: float, budget: float) -> ExecResult:
    budget *= probe.scale
    try:
        result: ExecResult = probe.expect(ExecResult, call, what, within=budget)
    except CheckFailed as error:
        raise CheckFailed(f"{what} did not stop within {budget:.1f} s: {error}") from None
    took = time.monotonic() - started
    fail_unless(result.interrupted, f"{what} ended without interrupted=true: {describe(result)}")
    fail_unless(took <= budget, f"{what} took {took:.1f} s to stop (at most {budget:.1f} s)")
    return result


def _interrupt(probe: Probe, s: Samples) -> ExecResult:
    session = probe.open_session("intr")
    call = probe.link.new_call()
    if s.language == "python" or probe.has("repl.bash"):
        probe.exec_ok(session, s.assign("kept", "yes"), language=s.language)
    probe.send(Exec(session=session, call=call, code=s.write_then_sleep("before"), language=s.language))
    time.sleep(BUSY_LEAD_SECONDS)  # let the block get going; nothing to observe from outside
    started = time.monotonic()
    probe.send(Interrupt(session=session))
    what = f"the interrupted {s.language} block"
    result = _expect_stopped(probe, call, what, started, STOP_SECONDS)
    fail_unless(not result.session_reset, f"{what} that stopped at once reset the session")
    fail_unless(
        result.stdout.text == "before",
        f"{what} lost the output written before the interrupt: stdout is {result.stdout.text!r}",
    )
    if s.language == "python":
        fail_unless(
            result.error is not None and result.error.name == "KeyboardInterrupt",
            f"{what} must report an error named KeyboardInterrupt, got {result.error}",
        )
    else:
        fail_unless(result.error is None, f"{what} has an error: {result.error}")
        fail_unless(
            result.returncode is not None and result.returncode != 0,
            f"{what} has returncode {result.returncode}: the killed shell's status is non-zero",
        )
    # The session stays usable, its state kept.
    probe.exec_ok(session, s.alive(), language=s.language)
    if s.language == "python" or probe.has("repl.bash"):
        shown = probe.exec_ok(session, s.show("kept"), language=s.language).stdout.text
        fail_unless(shown == "yes\n", f"an interrupt without a reset lost the session's state: {shown!r}")
    probe.close_session(session)
    return result


def interrupt_python(probe: Probe) -> None:
    """Interrupt stops a sleeping Python block with KeyboardInterrupt; output and namespace stay."""
    _interrupt(probe, PYTHON)


def interrupt_bash(probe: Probe) -> None:
    """Interrupt stops `sleep 30` in a bash block: non-zero status, output and session kept."""
    _interrupt(probe, BASH)


def exec_timeout(probe: Probe) -> None:
    """Exec.timeout stops a busy loop by itself, in every language the guest runs."""
    session = probe.open_session("timeout")
    for s in probe.all_samples():
        call = probe.link.new_call()
        started = time.monotonic()
        probe.send(
            Exec(session=session, call=call, code=s.busy(), language=s.language, timeout=EXEC_TIMEOUT_SECONDS)
        )
        _expect_stopped(
            probe,
            call,
            f"the {s.language} block with timeout={EXEC_TIMEOUT_SECONDS}",
            started,
            EXEC_TIMEOUT_SECONDS + STOP_SECONDS,
        )
    probe.close_session(session)


def session_busy(probe: Probe) -> None:
    """A second Exec while one runs fails with session_busy; the first one still finishes."""
    s = probe.samples
    session = probe.open_session("busy")
    first, second = probe.link.new_call(), probe.link.new_call()
    probe.send(Exec(session=session, call=first, code=s.sleep_then_write(1, "one"), language=s.language))
    probe.send(Exec(session=session, call=second, code=s.alive(), language=s.language))
    replies: dict[int, Frame] = {}
    while len(replies) < 2:
        frame = probe.receive("the replies to two Execs in one session")
        call = getattr(frame, "call", None)
        if call not in (first, second) or call in replies:
            raise CheckFailed(f"unexpected {describe(frame)}")
        replies[call] = frame
    refused = replies[second]
    fail_unless(
        isinstance(refused, ErrorFrame) and refused.code == "session_busy",
        f"the second Exec must fail with session_busy, got {describe(refused)}",
    )
    done = replies[first]
    fail_unless(
        isinstance(done, ExecResult) and done.stdout.text == "one\n",
        f"the first Exec must finish normally, got {describe(done)}",
    )
    probe.close_session(session)


# --- errors and evolution ---------------------------------------------------------------------


def unsupported_language(probe: Probe) -> None:
    """An Exec in a language the guest lacks (cobol, or an unadvertised one) fails with unsupported."""
    s = probe.samples
    session = probe.open_session("lang")
    missing = ["cobol", *(lang for lang in ("python", "bash") if not probe.has(f"exec.{lang}"))]
    for language in missing:
        call = probe.link.new_call()
        probe.send_map(
            {"kind": "exec", "session": session, "call": call, "code": "x", "language": language}
        )
        frame = probe.receive(f"the ErrorFrame for language {language!r}")
        fail_unless(
            isinstance(frame, ErrorFrame) and frame.code == "unsupported",
            f"Exec in {language!r}, which the guest does not advertise, must fail with "
            f"unsupported, got {describe(frame)}",
        )
        assert isinstance(frame, ErrorFrame)
        fail_unless(frame.call == call, f"the ErrorFrame names call {frame.call}, not {call}")
    # The session survives: an unknown language is one failed request, not a broken stream.
    result = probe.exec_ok(session, s.alive(), language=s.language)
    fail_unless(result.stdout.text == "alive\n", f"the block printed {result.stdout.text!r}")
    probe.close_session(session)


def unknown_frame_ignored(probe: Probe) -> None:
    """A frame of unknown kind (a newer minor's) is ignored, and the guest carries on."""
    s = probe.samples
    session = probe.open_session("future")
    probe.send_map({"kind": "teleport", "session": session, "call": 9_999_999, "to": [1, 2]})
    result = probe.exec_ok(session, s.alive(), language=s.language)
    fail_unless(result.stdout.text == "alive\n", f"the block printed {result.stdout.text!r}")
    probe.close_session(session)


def unknown_fields_ignored(probe: Probe) -> None:
    """Known frames with extra fields (a newer minor's) are accepted."""
    s = probe.samples
    session = probe.link.new_session_id("fields")
    call = probe.link.new_call()
    probe.send_map({"kind": "open_session", "session": session, "call": call, "sandbox": "strict"})
    probe.expect(SessionOpened, call, "OpenSession with an extra field")
    call = probe.link.new_call()
    probe.send_map(
        {
            "kind": "exec",
            "session": session,
            "call": call,
            "code": s.alive(),
            "language": s.language,
            "priority": 5,
        }
    )
    result = probe.expect(ExecResult, call, "Exec with an extra field")
    fail_unless(result.stdout.text == "alive\n", f"the block printed {result.stdout.text!r}")
    probe.close_session(session)


def shutdown(probe: Probe) -> None:
    """Shutdown is answered by Bye as the last frame, and the guest exits with status 0."""
    probe.send(Shutdown())
    frame = probe.receive("Bye")
    fail_unless(isinstance(frame, Bye), f"Shutdown must be answered with Bye, got {describe(frame)}")
    expect_exit(probe.peer, probe.deadline, "after Bye", zero=True)


PY = ("exec.python",)
REFS = prompt_ref_checks.REQUIRES

#: Every check, in the order the kit runs them. ``shutdown`` comes last: it ends the guest.
CHECKS: Final[tuple[Check, ...]] = (
    Check("handshake", run_raw=handshake, own_guest=True,
          reason="a host cannot talk to a guest before Hello, or to one that cannot take a prompt"),
    Check("welcome_newer_minor", run_raw=welcome_from_newer_minor, own_guest=True,
          reason="a newer host of the same major must be accepted (PROTOCOL.md 5)"),
    Check("welcome_other_major", run_raw=welcome_other_major, own_guest=True,
          reason="a refusal must be told apart from a crash, with both versions named (5)"),
    Check("malformed_frame", run_raw=wire_checks.malformed_frame, own_guest=True,
          reason="a stream that lost sync cannot be trusted again (1)"),
    Check("float_call_id", run_raw=wire_checks.float_call_id, own_guest=True,
          reason="ids are integers; a float read as an int by one side loses replies (1)"),
    Check("oversized_length", run_raw=wire_checks.oversized_length, own_guest=True,
          reason="one hostile length must not make a peer wait for or allocate gigabytes (1)"),
    Check("stdin_end", run_raw=wire_checks.stdin_end, own_guest=True,
          reason="a host that goes away must not leave a guest running (2)"),
    Check("session_lifecycle", session_lifecycle,
          reason="session ids are the host's; a duplicate or a stale id is an error, not a crash (2)"),
    Check("unknown_session", unknown_session,
          reason="a request for a session that is gone must be answered, not dropped (3.4)"),
    Check("wrong_direction", session_checks.wrong_direction,
          reason="a wrong-direction frame is one bad request in a stream still in sync (2)"),
    Check("interrupt_unknown_session", session_checks.interrupt_unknown_session,
          reason="an interrupt racing a block's end must not produce an error (3.2)"),
    Check("late_host_call_reply", session_checks.late_host_call_reply,
          reason="a reply racing a session's close must not produce an error (2)"),
    Check("max_sessions", session_checks.max_sessions,
          reason="the announced limit is what a host plans with; refusing beyond it is too_large (3.1)"),
    Check("cwd", session_checks.cwd,
          reason="a missing directory is refused when named, not hidden in later blocks (3.2)"),
    Check("session_isolation", session_isolation,
          reason="a child RLM must not see or overwrite its parent's variables (2)"),
    Check("sessions_concurrent", sessions_run_concurrently, requires=("host_call",),
          reason="a parent waits on its children's host calls while they run (2)"),
    Check("state_persists", state_persists,
          reason="the REPL's value is state kept between the model's blocks (4)"),
    Check("exec_python_streams", exec_python_streams, requires=PY,
          reason="the model sees stdout and stderr apart (4)"),
    Check("exec_python_error", exec_python_error, requires=PY,
          reason="an exception is a result for the model, with a traceback it can read (3.3)"),
    Check("exec_bash", exec_bash, requires=("exec.bash",),
          reason="the model reads a shell's exit status and both streams (3.3)"),
    Check("metadata", metadata,
          reason="the model is told sizes; both sides must count the same way (3.3)"),
    Check("non_utf8_output", session_checks.non_utf8_output,
          reason="binary output must not cost the block's result (3.3)"),
    Check("output_cap", output_cap,
          reason="a block that prints gigabytes must cost neither side memory (3.1)"),
    Check("output_below_runtime", repl_checks.output_below_runtime, requires=PY,
          reason="subprocess and C output is part of what the block did (4)"),
    Check("no_echo", repl_checks.no_echo, requires=PY,
          reason="blocks run as modules; the model prints what it wants to see (4)"),
    Check("show_vars_empty", repl_checks.show_vars_empty, requires=PY,
          reason="SHOW_VARS is the model's view of its state (4)"),
    Check("vars_state_names", repl_checks.vars_state_names, requires=PY,
          reason="the summary must list what the code bound, the same way in every guest (3.3)"),
    Check("host_call", host_call_roundtrip, requires=("exec.python", "host_call"),
          reason="host calls are how a block recurses into a child RLM (4)"),
    Check("host_calls_out_of_order", host_calls_out_of_order,
          requires=("exec.python", "host_call", "host_call.batched"),
          reason="batched children finish in any order; replies are routed by id (2)"),
    Check("rlm_query_fields", repl_checks.rlm_query_fields, requires=PY,
          reason="the child's prompt must be the same text in every guest (4)"),
    Check("llm_query_no_fields", repl_checks.llm_query_no_fields, requires=PY,
          reason="llm_query has no fields; accepting them would drop them silently (4)"),
    Check("batched_error", repl_checks.batched_error, requires=("exec.python", "host_call"),
          reason="a batch is one call for the code: all replies, then the first error (4)"),
    Check("set_vars_unsets_final", set_vars_unsets_final, requires=PY,
          reason="a new question must not be answered by the previous Final (3.2)"),
    Check("final_json", final_json, requires=PY,
          reason="the answer must reach the host, or the model must hear why not (3.3)"),
    Check("bash_repl_vars", repl_checks.bash_repl_vars, requires=("exec.bash", "repl.bash"),
          reason="without Python the prompt and the answer are files (4.1)"),
    Check("bash_repl_host_calls", repl_checks.bash_repl_host_calls,
          requires=("exec.bash", "repl.bash", "host_call"),
          reason="without Python the recursion is a command (4.1)"),
    Check("prompt_ref_payload", prompt_ref_checks.prompt_ref_payload, requires=REFS,
          reason="the host tells the child's model size, lines and prefix, and records the digest (4.2)"),
    Check("prompt_ref_opt_in", prompt_ref_checks.prompt_ref_opt_in, requires=REFS,
          reason="at the depth limit the host needs the text for a plain chat call (4.2)"),
    Check("bind_refs_text", prompt_ref_checks.bind_refs_text, requires=REFS,
          reason="the child must get the parent's text exactly, and a fresh question (3.2, 4.2)"),
    Check("bind_refs_unknown_ref", prompt_ref_checks.bind_refs_unknown_ref, requires=REFS,
          reason="a stale ref must be refused by name, not bind nothing (3.4)"),
    Check("prompt_ref_lifetime", prompt_ref_checks.prompt_ref_lifetime, requires=REFS,
          reason="a child outlives its parent's block and is re-bound after a reset; refs must not leak (4.2)"),
    Check("bind_refs_limit", prompt_ref_checks.bind_refs_limit, requires=REFS,
          reason="each name is a descriptor on one message; beyond 16 the guest refuses (3.2, 6)"),
    Check("prompt_ref_batched", prompt_ref_checks.prompt_ref_batched, requires=REFS,
          reason="the fan-out is where refs pay off; each child must get its own piece (4.2)"),
    Check("session_busy", session_busy,
          reason="one block at a time per session; the second is refused, the first unharmed (3.4)"),
    Check("set_vars_while_busy", session_checks.set_vars_while_busy,
          reason="binding during a block must not break the block (3.2)"),
    Check("int_in_float_field", session_checks.int_in_float_field,
          reason="encoders write whole floats as integers; float fields take both (1)"),
    Check("interrupt_python", interrupt_python, requires=("exec.python", "interrupt"),
          reason="the host stops runaway blocks and the REPL survives, as with Ctrl-C (4)"),
    Check("interrupt_bash", interrupt_bash, requires=("exec.bash", "interrupt"),
          reason="a shell pipeline may ignore SIGINT; its process group is killed (4)"),
    Check("exec_timeout", exec_timeout, requires=("interrupt",),
          reason="a block that loops forever must cost its timeout, not the run (3.2)"),
    Check("timeout_counts_host_calls", session_checks.timeout_counts_host_calls,
          requires=("interrupt", "host_call"),
          reason="a block's timeout bounds the block, children included (3.2)"),
    Check("interrupt_reset", session_checks.interrupt_reset, requires=("interrupt",),
          reason="a block that will not stop must not hang the session; the model must hear of it (4)"),
    Check("session_died", session_checks.session_died, requires=PY,
          reason="a block that kills its process is reported, and the session lives on (4)"),
    Check("close_during_block", session_checks.close_during_block,
          reason="a cancelled child's session closes at once, and nothing of it comes later (3.2)"),
    Check("unknown_frame_ignored", unknown_frame_ignored,
          reason="a newer minor's frames must not break an older guest (5)"),
    Check("unknown_fields_ignored", unknown_fields_ignored,
          reason="a newer minor's fields must not break an older guest (5)"),
    Check("unsupported_language", unsupported_language,
          reason="a block the guest cannot run is refused, not run as something else (3.1)"),
    Check("shutdown_during_block", run_raw=wire_checks.shutdown_during_block, own_guest=True,
          reason="a host that stops mid-block gets Bye last and a clean exit (3.2)"),
    Check("shutdown", shutdown,
          reason="Bye is the guest's last word; exit 0 tells a clean end from a crash (2)"),
)
