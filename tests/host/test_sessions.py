"""The trio host against the real guest agent running as a local subprocess."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from rlm_host import GuestConnection, GuestDiedError, SessionError, open_local_guest, serve_host_calls, serving
from rlm_host.session import Session
from rlm_host.transport import LocalGuestStream
from rlm_protocol import Exec, ExecResult, HostCall, SetVars, text_metadata


@pytest.fixture
async def guest() -> AsyncIterator[tuple[LocalGuestStream, GuestConnection]]:
    async with open_local_guest() as stream, GuestConnection.open(
        stream, death_detail=stream.death_detail
    ) as connection:
        yield stream, connection


@pytest.fixture
async def connection(
    guest: tuple[LocalGuestStream, GuestConnection],
) -> GuestConnection:
    return guest[1]


async def test_handshake_reports_version_and_capabilities(connection: GuestConnection) -> None:
    hello = connection.hello
    assert hello.protocol[0] == 1
    assert {"exec.python", "exec.bash", "interrupt", "host_call"} <= set(hello.capabilities)


async def test_state_persists_within_a_session_and_not_across(
    connection: GuestConnection,
) -> None:
    a = await connection.open_session()
    b = await connection.open_session()
    await a.exec("x = 41")
    result = await a.exec("x += 1\nprint(x)")
    assert result.stdout.text == "42\n"
    assert result.state.names == ("x",)
    leaked = await b.exec("print(x)")
    assert leaked.error is not None and leaked.error.name == "NameError"
    assert "NameError" in leaked.stderr.text


async def test_fifty_sessions_with_host_calls_answered_in_shuffled_order(
    connection: GuestConnection,
) -> None:
    sessions_count, calls_per_session = 50, 4
    # The batched calls are held until all of them are in flight; the single call comes after.
    expected_calls = sessions_count * calls_per_session
    arrived: list[tuple[HostCall, trio.Event]] = []
    all_arrived = trio.Event()
    answers: dict[int, str] = {}

    async def handler(call: HostCall) -> str:
        if call.payload["prompt"] == "solo":
            return f"{call.session}|solo"
        release = trio.Event()
        arrived.append((call, release))
        if len(arrived) == expected_calls:
            all_arrived.set()
        await release.wait()
        return f"{call.session}|{call.payload['prompt']}"

    async def releaser() -> None:
        # Hold every reply until all calls of all sessions are in flight, then answer them in
        # a random order: routing must not depend on order.
        await all_arrived.wait()
        order = list(arrived)
        random.Random(7).shuffle(order)
        for call, release in order:
            answers[call.call] = call.session
            release.set()
            await trio.lowlevel.checkpoint()

    code = (
        "batch = rlm_query_batched([f'q{i}' for i in range(%d)])\n"
        "single = llm_query('solo')\n"
        "print(repr((batch, single)))\n" % calls_per_session
    )
    results: dict[str, str] = {}

    async def run_one(session_index: int) -> None:
        session = await connection.open_session(host_calls=True)
        async with serving(session, handler):
            await session.set_vars({"me": session_index})
            result = await session.exec(code)
        assert result.error is None, result.stderr.text
        results[session.id] = result.stdout.text

    async with trio.open_nursery() as nursery:
        nursery.start_soon(releaser)
        for index in range(sessions_count):
            nursery.start_soon(run_one, index)

    assert len(results) == sessions_count
    for session_id, text in results.items():
        batch = [f"{session_id}|q{i}" for i in range(calls_per_session)]
        assert text == repr((batch, f"{session_id}|solo")) + "\n"
    assert len(answers) == expected_calls


async def test_batched_calls_are_in_flight_together(connection: GuestConnection) -> None:
    in_flight = 0
    peak = 0
    gate = trio.Event()

    async def handler(call: HostCall) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == 8:
            gate.set()
        await gate.wait()
        in_flight -= 1
        return str(call.payload["prompt"]).upper()

    session = await connection.open_session(host_calls=True)
    async with serving(session, handler):
        result = await session.exec("print(llm_query_batched(list('abcdefgh')))")
    assert peak == 8
    assert result.stdout.text == str(list("ABCDEFGH")) + "\n"


async def test_host_handler_exception_becomes_guest_exception(
    connection: GuestConnection,
) -> None:
    async def handler(call: HostCall) -> str:
        raise ValueError("model server said no")

    session = await connection.open_session(host_calls=True)
    async with serving(session, handler):
        result = await session.exec(
            "try:\n    rlm_query('x')\nexcept RuntimeError as e:\n    print('caught', e)"
        )
    assert result.stdout.text == "caught ValueError: model server said no\n"


async def test_guest_killed_mid_exec_fails_every_waiter_with_one_error(
    guest: tuple[LocalGuestStream, GuestConnection],
) -> None:
    stream, connection = guest
    started = 0
    all_started = trio.Event()

    async def handler(call: HostCall) -> str:
        nonlocal started
        started += 1
        if started == 5:
            all_started.set()
        return "go"

    sessions = [await connection.open_session(host_calls=True) for _ in range(5)]
    errors: list[BaseException] = []

    async def run(session_index: int) -> None:
        try:
            await sessions[session_index].exec("llm_query('started')\nimport time\ntime.sleep(600)")
        except GuestDiedError as error:
            errors.append(error)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(serve_host_calls, session, handler)
            for index in range(5):
                nursery.start_soon(run, index)
            await all_started.wait()
            stream.process.kill()
    assert len(errors) == 5
    assert len({id(e) for e in errors}) == 1
    assert "killed by signal 9" in str(errors[0])
    with pytest.raises(GuestDiedError):
        await connection.open_session()


async def test_final_that_is_not_json_is_reported_not_fatal(connection: GuestConnection) -> None:
    session = await connection.open_session()
    result = await session.exec("Final = {1, 2}")
    assert result.final is not None and not result.final.ok
    assert "JSON" in result.final.error and result.final.type == "set"
    good = await session.exec("Final = {'answer': (4, 2)}")
    assert good.final is not None and good.final.ok
    assert good.final.value == {"answer": [4, 2]}


async def test_set_vars_unsets_final_like_the_seed(connection: GuestConnection) -> None:
    session = await connection.open_session()
    await session.exec("Final = 'done'")
    state = await session.set_vars({"prompt": "p"})
    assert state.names == ("prompt",)
    result = await session.exec("pass")
    assert result.final is None


async def test_python_and_bash_results_carry_metadata(connection: GuestConnection) -> None:
    session = await connection.open_session()
    py = await session.exec("import sys\nprint('a')\nsys.stdout.write('b\\n')\nprint('e', file=sys.stderr)")
    assert py.stdout.text == "a\nb\n" and py.stdout.chars == 4 and py.stdout.lines == 3
    assert py.stderr.text == "e\n" and py.returncode is None
    sh = await session.exec("printf 'x\\ny'; echo oops >&2; exit 3", "bash")
    assert sh.returncode == 3
    assert (sh.stdout.chars, sh.stdout.lines) == (3, 2)
    assert text_metadata(sh.stdout.text) == text_metadata("x\ny")
    assert sh.stderr.text == "oops\n"


async def test_output_is_capped_with_the_true_size_reported() -> None:
    async with open_local_guest(
        ["python", "-m", "rlm_guest", "--stdio", "--max-output-chars", "1000"]
    ) as stream, GuestConnection.open(stream) as connection:
        session = await connection.open_session()
        result = await session.exec("print('x' * 5_000_000)")
        assert len(result.stdout.text) == 1000
        assert result.stdout.chars == 5_000_001 and result.stdout.cut
        bash = await session.exec("yes | head -c 3000000", "bash")
        assert len(bash.stdout.text) == 1000 and bash.stdout.chars == 3_000_000


async def test_interrupt_stops_a_busy_loop_and_the_session_lives_on(
    connection: GuestConnection,
) -> None:
    session = await connection.open_session()
    await session.exec("kept = 1")
    result = await session.exec("while True:\n    pass", timeout=0.3)
    assert result.interrupted and not result.session_reset
    assert result.error is not None and result.error.name == "KeyboardInterrupt"
    after = await session.exec("print(kept)")
    assert after.stdout.text == "1\n"


async def test_interrupt_frame_stops_a_bash_pipeline(connection: GuestConnection, tmp_path: Path) -> None:
    session = await connection.open_session()
    # The local guest shares this machine's files: the pipeline says it runs, then the interrupt
    # goes (one sent before the block starts stops it at its start, with no pipeline to kill).
    running = tmp_path / "running"
    async with trio.open_nursery() as nursery:
        results = []

        async def run() -> None:
            results.append(await session.exec(f"touch {running}; sleep 600 | cat", "bash"))

        nursery.start_soon(run)
        while not running.exists():
            await trio.sleep(0.01)
        await session.interrupt()
    assert results[0].interrupted
    assert results[0].returncode is not None and results[0].returncode < 0, results[0]


async def test_sleep_in_c_is_interrupted_and_state_kept(connection: GuestConnection) -> None:
    session = await connection.open_session()
    await session.exec("kept = 1")
    result = await session.exec("import time\ntime.sleep(10**6)", timeout=0.2)
    assert result.interrupted and not result.session_reset
    assert result.stderr.text.endswith("KeyboardInterrupt: the block was interrupted\n")
    assert "rlm_guest" not in result.stderr.text
    after = await session.exec("print(kept)")
    assert after.stdout.text == "1\n"


async def _interrupt_once_running(session: Session, code: str, running: Path) -> ExecResult:
    """Run ``code``, which creates ``running`` once it ignores interrupts, and interrupt it then
    (an interrupt that comes before would stop the block at its start, which it cannot ignore)."""
    async with trio.open_nursery() as nursery:
        results: list[ExecResult] = []

        async def run() -> None:
            results.append(await session.exec(code))

        nursery.start_soon(run)
        while not running.exists():
            await trio.sleep(0.01)
        await session.interrupt()
    return results[0]


def _ignoring_interrupts(running: Path) -> str:
    return (
        f"open({str(running)!r}, 'w').close()\n"
        "while True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass"
    )


async def test_block_ignoring_interrupts_resets_the_session(connection: GuestConnection, tmp_path: Path) -> None:
    session = await connection.open_session()
    await session.exec("lost = 1")
    running = tmp_path / "running"
    result = await _interrupt_once_running(session, "import time\n" + _ignoring_interrupts(running), running)
    assert result.interrupted and result.session_reset
    assert result.error is not None and result.error.name == "SessionReset"
    after = await session.exec("print('lost' in globals())")
    assert after.stdout.text == "False\n"


async def test_reset_kills_everything_the_block_started(connection: GuestConnection, tmp_path: Path) -> None:
    session = await connection.open_session()
    # A duration no other run uses: the local guest shares this machine with other test runs.
    seconds = str(random.randrange(10**6, 10**7))
    running = tmp_path / "running"
    spawn = (
        "import subprocess, time\n"
        f"child = subprocess.Popen(['sleep', '{seconds}'])\n"
        "print(child.pid, flush=True)\n" + _ignoring_interrupts(running)
    )
    result = await _interrupt_once_running(session, spawn, running)
    assert result.session_reset
    probe = await connection.open_session()
    # The reset came with no output, so find the sleeper by its command line instead.
    check = await probe.exec(f"pgrep -f '^sleep {seconds}$' || echo none", "bash")
    assert check.stdout.text == "none\n"


async def test_fork_bomb_is_stopped(connection: GuestConnection) -> None:
    session = await connection.open_session()
    bomb = "import os, time\nfor _ in range(6):\n    os.fork()\ntime.sleep(1000)"
    result = await session.exec(bomb, timeout=0.3)
    assert result.interrupted
    probe = await connection.open_session()
    check = await probe.exec("print('alive')")
    assert check.stdout.text == "alive\n"


async def test_process_exit_in_a_block_is_reported_and_the_session_restarts(
    connection: GuestConnection,
) -> None:
    session = await connection.open_session()
    await session.exec("x = 1")
    result = await session.exec("import os\nos._exit(3)")
    assert result.session_reset and result.error is not None
    assert result.error.name == "SessionDied" and "status 3" in result.error.value
    after = await session.exec("print('x' in globals())")
    assert after.stdout.text == "False\n"


async def test_output_of_subprocesses_started_from_python_is_captured(
    connection: GuestConnection,
) -> None:
    session = await connection.open_session()
    result = await session.exec("import os\nprint('a', flush=True)\nos.system('echo b; echo c >&2')")
    assert result.stdout.text == "a\nb\n"
    assert result.stderr.text == "c\n"


async def test_busy_session_refuses_a_second_block(connection: GuestConnection) -> None:
    entered, gate = trio.Event(), trio.Event()

    async def handler(call: HostCall) -> str:
        entered.set()
        await gate.wait()
        return "ok"

    session = await connection.open_session(host_calls=True)
    async with serving(session, handler), trio.open_nursery() as nursery:
        nursery.start_soon(session.exec, "llm_query('hold')")
        await entered.wait()
        with pytest.raises(SessionError) as caught:
            await session.exec("pass")
        gate.set()
    assert caught.value.code == "session_busy"


async def test_cancelled_exec_interrupts_the_guest(connection: GuestConnection) -> None:
    session = await connection.open_session()
    with trio.move_on_after(0.3):
        await session.exec("while True:\n    pass")
    # The block was interrupted, so the session accepts a new one.
    result = await session.exec("print('free')")
    assert result.stdout.text == "free\n"


async def test_unknown_session_is_a_typed_error(connection: GuestConnection) -> None:
    session = await connection.open_session()
    await session.close()
    from rlm_host import SessionClosedError

    with pytest.raises(SessionClosedError):
        await session.exec("pass")
    # The host's own check is above; the guest must refuse too, by name, and go on serving.
    for frame in (
        Exec(session=session.id, call=connection.new_call(), code="pass"),
        SetVars(session="s-never-opened", call=connection.new_call(), values={"x": 1}),
    ):
        with pytest.raises(SessionError) as refused, trio.fail_after(30):  # no answer: a hang
            await connection.request(frame, frame.call, ExecResult)
        assert refused.value.code == "unknown_session" and frame.session in str(refused.value)
    async with await connection.open_session() as other:
        assert (await other.exec("print(1)")).stdout.text == "1\n"


async def test_rlm_query_keyword_fields_are_appended(connection: GuestConnection) -> None:
    seen: list[str] = []

    async def handler(call: HostCall) -> str:
        seen.append(call.payload["prompt"])
        return "ok"

    session = await connection.open_session(host_calls=True)
    async with serving(session, handler):
        await session.exec("rlm_query('find it', snippet='abc', page=3)")
    assert seen == ["find it\n\nsnippet: abc\npage: 3"]


async def test_show_vars(connection: GuestConnection) -> None:
    session = await connection.open_session()
    await session.set_vars({"prompt": "hello"})
    result = await session.exec("n = 3\nSHOW_VARS()")
    assert result.stdout.text == "n: int\nprompt: str(len=5)\n"



async def test_large_frames_reach_their_sessions_whole(connection: GuestConnection) -> None:
    # Large host frames travel to the session process in a shared buffer that the agent reuses
    # (rlm_guest.shared): sizes that grow and shrink, two sessions in turn, a large host-call
    # reply while a block waits, and a large block (which takes the socket) must all arrive whole.
    big = "".join(chr(0x41 + i % 26) for i in range(1 << 16)) * 48  # 3 MiB

    async def handler(call: HostCall) -> str:
        return big + "!"

    a = await connection.open_session(host_calls=True)
    b = await connection.open_session()
    check = "Final = [len(prompt), prompt[:3], prompt[-3:], prompt.count('Z')]"
    for session, text in ((a, big), (b, big[:200_000] + "é"), (a, big + big), (b, big[:70_000])):
        await session.set_vars({"prompt": text})
        result = await session.exec(check)
        assert result.final is not None
        assert result.final.value == [len(text), text[:3], text[-3:], text.count("Z")]
    async with serving(a, handler):
        result = await a.exec("r = host_call('big')\nFinal = [len(r), r[-3:]]")
    assert result.final is not None and result.final.value == [len(big) + 1, big[-2:] + "!"]
    result = await b.exec("s = " + repr(big) + "\nFinal = len(s)")
    assert result.final is not None and result.final.value == len(big)
    await a.close()
    from rlm_host import SessionClosedError

    with pytest.raises(SessionClosedError):
        await a.set_vars({"prompt": big})
    result = await b.exec("Final = len(prompt)")
    assert result.final is not None and result.final.value == 70_000


async def test_a_final_that_is_not_strict_json_is_refused(connection: GuestConnection) -> None:
    session = await connection.open_session()
    result = await session.exec("Final = float('nan')")
    assert result.final is not None and not result.final.ok and result.final.value is None
    assert result.final.error  # why, for the model
    good = await session.exec("Final = {'a': (1, 2)}")
    assert good.final is not None and good.final.ok and good.final.value == {"a": [1, 2]}


async def test_a_traceback_shows_the_models_code_only(connection: GuestConnection) -> None:
    session = await connection.open_session()
    result = await session.exec("x = 1\ndef f():\n    return 1 / 0\nf()")
    assert result.error is not None and result.error.name == "ZeroDivisionError"
    assert "<rlm-repl>" in result.error.traceback and "rlm_guest" not in result.error.traceback
