"""Checks of the REPL contract (PROTOCOL.md 4 for Python, 4.1 for the bash REPL)."""

from __future__ import annotations

from typing import Any

from ..frames import ErrorFrame, Exec, ExecResult, HostCall, HostCallError, HostCallReply, SetVars, VarsSet
from .peer import CheckFailed, describe
from .probe import Probe, fail_unless

__all__ = [
    "bash_repl_host_calls",
    "bash_repl_vars",
    "batched_error",
    "llm_query_no_fields",
    "no_echo",
    "output_below_runtime",
    "rlm_query_fields",
    "show_vars_empty",
    "vars_state_names",
]


def no_echo(probe: Probe) -> None:
    """A block ending in an expression prints nothing: blocks run as modules, not interactively."""
    session = probe.open_session("echo")
    result = probe.exec_ok(session, "x = 20\nx + 22")
    fail_unless(result.stdout.text == "", f"the block `x + 22` printed {result.stdout.text!r}")
    probe.close_session(session)


def output_below_runtime(probe: Probe) -> None:
    """Writes to descriptors 1 and 2 (os.write, a subprocess) are captured like print."""
    session = probe.open_session("below")
    result = probe.exec_ok(
        session,
        "import os, subprocess\nos.write(1, b'fd\\n')\nos.write(2, b'err\\n')\n"
        "subprocess.run(['echo', 'child'])",
    )
    fail_unless(result.stdout.text == "fd\nchild\n", f"stdout is {result.stdout.text!r}, not 'fd\\nchild\\n'")
    fail_unless(result.stderr.text == "err\n", f"stderr is {result.stderr.text!r}, not 'err\\n'")
    probe.close_session(session)


def show_vars_empty(probe: Probe) -> None:
    """SHOW_VARS() in a fresh session prints '(no variables)'; with one, 'name: type(len=N)'."""
    session = probe.open_session("show")
    empty = probe.exec_ok(session, "SHOW_VARS()").stdout.text
    fail_unless(empty == "(no variables)\n", f"SHOW_VARS() with no variables printed {empty!r}")
    one = probe.exec_ok(session, "word = 'abc'\nSHOW_VARS()").stdout.text
    fail_unless(one == "word: str(len=3)\n", f"SHOW_VARS() printed {one!r}, not 'word: str(len=3)\\n'")
    probe.close_session(session)


def vars_state_names(probe: Probe) -> None:
    """VarsState lists modules and Final, hides _names, REPL functions and _rlm_functions."""
    session = probe.open_session("names")
    result = probe.exec_ok(
        session,
        "import json\nFinal = 1\n_private = 2\ndef tool():\n    pass\n_rlm_functions = ['tool']",
    )
    names = list(result.state.names)
    fail_unless(names == ["Final", "json"], f"VarsState.names is {names}, not ['Final', 'json']")
    fail_unless(result.state.count == 2, f"VarsState.count is {result.state.count}, not 2")
    many = probe.exec_ok(session, "globals().update({f'v{i:02}': i for i in range(25)})")
    expected = sorted(["Final", "json", *(f"v{i:02}" for i in range(25))])
    fail_unless(
        list(many.state.names) == expected[:20] and many.state.count == 27,
        f"with 27 names VarsState is {many.state}; it must list the first 20 sorted and count 27",
    )
    probe.close_session(session)


def _calls_of(probe: Probe, code: str, count: int, what: str) -> tuple[int, list[HostCall]]:
    session_call = probe.link.new_call()
    session = probe.open_session("calls")
    probe.send(Exec(session=session, call=session_call, code=code))
    calls: list[HostCall] = []
    while len(calls) < count:
        frame = probe.receive(f"HostCall {len(calls) + 1} of {count} ({what})")
        fail_unless(isinstance(frame, HostCall), f"{what}: expected a HostCall, got {describe(frame)}")
        assert isinstance(frame, HostCall)
        calls.append(frame)
    return session_call, calls


def rlm_query_fields(probe: Probe) -> None:
    """rlm_query('q', a=1, b='x') sends prompt 'q\\n\\na: 1\\nb: x' and model nil."""
    probe.require("host_call")
    session = probe.open_session("fields")
    seen: list[HostCall] = []

    def serve(call: HostCall) -> None:
        seen.append(call)
        probe.send(HostCallReply(session=call.session, call=call.call, value="ok"))

    probe.exec_ok(session, "r = rlm_query('q', a=1, b='x')", serve=serve)
    fail_unless(len(seen) == 1, f"expected one HostCall, got {len(seen)}")
    call = seen[0]
    fail_unless(call.method == "rlm_query", f"the method is {call.method!r}")
    expected: dict[str, Any] = {"prompt": "q\n\na: 1\nb: x", "model": None}
    fail_unless(
        call.payload == expected and "model" in call.payload,
        f"the payload is {call.payload!r}, not {expected!r}",
    )
    probe.close_session(session)


def llm_query_no_fields(probe: Probe) -> None:
    """llm_query with an extra keyword field raises TypeError and sends nothing."""
    probe.require("host_call")
    session = probe.open_session("nofields")
    seen: list[HostCall] = []

    def serve(call: HostCall) -> None:
        seen.append(call)
        probe.send(HostCallReply(session=call.session, call=call.call, value="ok"))

    result = probe.exec(session, "llm_query('q', a=1)", serve=serve)
    fail_unless(not seen, f"llm_query with a field sent {seen}")
    fail_unless(
        result.error is not None and result.error.name == "TypeError",
        f"llm_query with a field must raise TypeError, got {describe(result)}",
    )
    probe.close_session(session)


def batched_error(probe: Probe) -> None:
    """A batch with an error reply waits for every reply, then raises the first error in order."""
    probe.require("host_call.batched")
    call, calls = _calls_of(probe, "r = llm_query_batched(['p0', 'p1', 'p2'])\nprint(r)", 3, "a batch of 3")
    by_prompt = {c.payload.get("prompt"): c for c in calls}
    fail_unless(sorted(map(str, by_prompt)) == ["p0", "p1", "p2"], f"the batch sent {list(by_prompt)}")
    session = calls[0].session
    # The failing prompt is answered first; the block must still wait for the others.
    order = [("p2", HostCallError("Late", "second failure")), ("p1", HostCallError("Refused", "no budget")), ("p0", None)]
    for prompt, error in order:
        host_call = by_prompt[prompt]
        reply = HostCallReply(session=session, call=host_call.call, value=None if error else "fine", error=error)
        probe.send(reply)
        if prompt != "p0":
            try:
                early = probe.receive("nothing before the last reply", within=0.3 * probe.scale)
            except CheckFailed:
                continue
            raise CheckFailed(f"the batch ended before every reply came: {describe(early)}")
    result = probe.expect(ExecResult, call, "the batch with error replies")
    fail_unless(
        result.error is not None and "Refused: no budget" in result.error.value,
        f"the batch must raise the first error in prompt order ('Refused: no budget'), got {describe(result)}",
    )
    fail_unless(result.stdout.text == "", f"the failed batch printed {result.stdout.text!r}")
    probe.close_session(session)


def bash_repl_vars(probe: Probe) -> None:
    """repl.bash: SetVars writes files in $RLM_VARS, Final is a file, a bad name is refused."""
    session = probe.open_session("files")
    call = probe.link.new_call()
    probe.send(SetVars(session=session, call=call, values={"prompt": "héllo\n", "n": [1, 2]}))
    state = probe.expect(VarsSet, call, "SetVars").state
    fail_unless({"prompt", "n"} <= set(state.names), f"VarsSet.state does not list the files: {state}")
    shown = probe.exec_ok(session, 'cat "$RLM_VARS/prompt"; cat "$RLM_VARS/n"', language="bash")
    fail_unless(
        shown.stdout.text == "héllo\n[1,2]",
        f"the files hold {shown.stdout.text!r}, not 'héllo\\n' and the JSON '[1,2]'",
    )
    done = probe.exec_ok(session, 'printf "the answer" > "$RLM_VARS/Final"', language="bash")
    final = done.final
    fail_unless(
        final is not None and final.ok and final.value == "the answer" and final.type == "str",
        f"$RLM_VARS/Final is reported as {final}",
    )
    call = probe.link.new_call()
    probe.send(SetVars(session=session, call=call, values={"more": "x"}))
    probe.expect(VarsSet, call, "SetVars")
    after = probe.exec_ok(session, "true", language="bash")
    fail_unless(after.final is None, f"Final survived SetVars: {after.final}")
    call = probe.link.new_call()
    reply = None
    probe.send(SetVars(session=session, call=call, values={"../escape": "x"}))
    reply = probe.reply_to(call, "SetVars of the name '../escape'")
    fail_unless(
        isinstance(reply, ErrorFrame) and reply.code == "bad_request",
        f"SetVars of the name '../escape' must fail with bad_request, got {describe(reply)}",
    )
    probe.close_session(session)


def bash_repl_host_calls(probe: Probe) -> None:
    """repl.bash: rlm_query and host_call commands call the host; an error reply exits 1."""
    session = probe.open_session("commands")
    seen: list[HostCall] = []

    def serve(call: HostCall) -> None:
        seen.append(call)
        if call.method == "fail":
            probe.send(HostCallReply(session=call.session, call=call.call, error=HostCallError("Refused", "no budget")))
        elif call.method == "rlm_query":
            probe.send(HostCallReply(session=call.session, call=call.call, value=f"answer to {call.payload['prompt']}"))
        else:
            probe.send(HostCallReply(session=call.session, call=call.call, value={"echo": call.payload}))

    result = probe.exec_ok(
        session, "rlm_query 'two words'; echo; printf from-stdin | rlm_query -; echo; host_call echo '{\"n\": 1}'",
        language="bash", serve=serve,
    )
    expected = 'answer to two words\nanswer to from-stdin\n{"echo":{"n":1}}'
    fail_unless(
        result.stdout.text.replace(" ", "") == expected.replace(" ", ""),
        f"the commands printed {result.stdout.text!r}, not {expected!r}",
    )
    first = seen[0] if seen else None
    fail_unless(
        first is not None and first.payload == {"prompt": "two words", "model": None},
        f"rlm_query sent {first}",
    )
    stdin_prompt = seen[1].payload.get("prompt") if len(seen) > 1 else None
    fail_unless(stdin_prompt == "from-stdin", f"rlm_query - sent the prompt {stdin_prompt!r}, not 'from-stdin'")
    leaf = probe.exec_ok(session, "llm_query 'a leaf' some-model", language="bash", serve=serve)
    fail_unless(
        seen[-1].method == "llm_query" and seen[-1].payload == {"prompt": "a leaf", "model": "some-model"},
        f"llm_query sent {seen[-1]}",
    )
    fail_unless(leaf.stdout.text.replace(" ", "") == '{"echo":{"prompt":"aleaf","model":"some-model"}}', f"llm_query printed {leaf.stdout.text!r}")
    failed = probe.exec(session, "host_call fail", language="bash", serve=serve)
    fail_unless(failed.returncode == 1, f"a failed host call exited with {failed.returncode}, not 1")
    fail_unless(
        "Refused: no budget" in failed.stderr.text, f"a failed host call wrote {failed.stderr.text!r} to stderr"
    )
    probe.close_session(session)
