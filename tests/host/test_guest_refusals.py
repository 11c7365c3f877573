"""The guest agent's own refusals and dispatch: garbage from the host, more sessions than its
limit, frames for unknown sessions, a process that died between blocks."""

from __future__ import annotations

import sys

import pytest
import trio

from rlm_host import GuestConnection, SessionError, open_local_guest
from rlm_host.transport import LocalGuestStream
from rlm_protocol import (
    BindRefs,
    Bye,
    ErrorFrame,
    Exec,
    ExecResult,
    FrameDecoder,
    Hello,
    Interrupt,
    OpenSession,
    SessionOpened,
    Shutdown,
    Welcome,
    encode,
)

#: The agent on stdio with a limit of two sessions (``python -m rlm_guest`` has no flag for it).
TWO_SESSIONS = (
    "import sys\n"
    "from rlm_guest.agent import Agent, DEFAULT_LIMITS\n"
    "from rlm_guest.channel import StdioChannel\n"
    "from msgspec import structs\n"
    "limits = structs.replace(DEFAULT_LIMITS, max_sessions=2)\n"
    "sys.exit(Agent(StdioChannel(), StdioChannel.diagnostic_stream(), limits).serve())\n"
)


async def test_the_guest_refuses_sessions_past_its_limit() -> None:
    with trio.fail_after(60):
        async with open_local_guest([sys.executable, "-c", TWO_SESSIONS]) as stream, GuestConnection.open(
            stream, death_detail=stream.death_detail
        ) as connection:
            assert connection.hello.limits.max_sessions == 2
            first = await connection.open_session()
            await connection.open_session()
            with pytest.raises(SessionError) as refused:
                await connection.open_session()
            assert refused.value.code == "too_large" and "at most 2 sessions" in str(refused.value)
            await first.close()
            third = await connection.open_session()  # a closed session frees its place
            assert (await third.exec("print(3)")).stdout.text == "3\n"


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00\x00\x05hello", b"\x00\x00\x00\x01\xc1", b"\x7f\xff\xff\xff"],
    ids=["not-msgpack", "reserved-byte", "length-over-the-limit"],
)
async def test_garbage_from_the_host_is_a_typed_error_and_the_end(garbage: bytes) -> None:
    decoder = FrameDecoder()
    frames: list[object] = []
    with trio.fail_after(60):
        async with open_local_guest() as stream:
            while not frames:
                frames += decoder.feed(await stream.receive_some())
            assert isinstance(frames[0], Hello)
            await stream.send_all(garbage)
            # The guest answers with an error frame that names no call, then ends the channel.
            while chunk := await stream.receive_some():
                frames += decoder.feed(chunk)
    errors = [frame for frame in frames if isinstance(frame, ErrorFrame)]
    assert len(errors) == 1 and errors[0].call is None, frames
    assert errors[0].code == "bad_request" and "protocol error" in errors[0].message, errors[0]


async def test_each_frame_the_agent_answers_itself_reaches_its_own_handler() -> None:
    """``exec`` and ``bind_refs`` for an unknown session are refused, not taken for a shutdown.

    The agent once kept a table from kind to handler in which ``exec`` and ``bind_refs`` pointed
    at the shutdown handler, kept away from it only by an ``isinstance`` check in the router.
    """
    decoder = FrameDecoder()
    received: list[object] = []

    async def next_frame(stream: LocalGuestStream) -> object:
        while not received:
            chunk = await stream.receive_some()
            assert chunk, f"the guest ended the channel; frames so far: {seen}"
            received.extend(decoder.feed(chunk))
        frame = received.pop(0)
        seen.append(frame)
        return frame

    seen: list[object] = []
    with trio.fail_after(60):
        async with open_local_guest() as stream:
            hello = await next_frame(stream)
            assert isinstance(hello, Hello)
            await stream.send_all(encode(Welcome(protocol=hello.protocol, host="test", host_version="0")))
            await stream.send_all(encode(Exec(session="nobody", call=1, code="print(1)")))
            refused = await next_frame(stream)
            assert isinstance(refused, ErrorFrame) and refused.code == "unknown_session", refused
            assert refused.call == 1
            await stream.send_all(encode(BindRefs(session="nobody", call=2, refs={"p": "1"})))
            refused = await next_frame(stream)
            assert isinstance(refused, ErrorFrame) and refused.code == "unknown_session", refused
            assert refused.call == 2
            await stream.send_all(encode(Interrupt(session="nobody")))  # no reply (PROTOCOL.md)
            await stream.send_all(encode(OpenSession(session="s", call=3)))
            assert isinstance(await next_frame(stream), SessionOpened)
            await stream.send_all(encode(Exec(session="s", call=4, code="print(4)")))
            result = await next_frame(stream)
            assert isinstance(result, ExecResult) and result.stdout.text == "4\n", result
            await stream.send_all(encode(Shutdown()))
            assert isinstance(await next_frame(stream), Bye)


async def test_a_process_that_died_between_blocks_is_reported_on_the_next_result() -> None:
    """The first result after a session's process died idle says the state is gone."""
    with trio.fail_after(60):
        async with open_local_guest() as stream, GuestConnection.open(
            stream, death_detail=stream.death_detail
        ) as connection:
            doomed = await connection.open_session()
            watcher = await connection.open_session()
            # The process ends a moment after its block answered: between blocks.
            started = await doomed.exec(
                "import os, threading\nx = 1\nprint(os.getpid())\n"
                "threading.Timer(0.05, os._exit, (3,)).start()"
            )
            pid = int(started.stdout.text)
            await watcher.exec(
                "import time\n"
                "def gone(pid):\n"
                "    try:\n"
                "        with open(f'/proc/{pid}/stat', 'rb') as stat:\n"
                "            return stat.read().rsplit(b')', 1)[1].split()[0] == b'Z'\n"
                "    except OSError:\n"
                "        return True\n"
                f"while not gone({pid}):\n"
                "    time.sleep(0.01)\n"
            )
            result = await doomed.exec("print('x' in dir())")
            # Either the agent saw the death before this block (a fresh process ran it) or
            # during it (the block itself is answered as died): both say the state is gone.
            assert result.session_reset, result
            if result.error is None:
                assert result.stdout.text == "False\n", result


async def test_an_interrupt_that_overtakes_its_block_stops_it_when_it_starts() -> None:
    """``interrupt`` right behind ``exec`` (one write) reaches the session process before the block
    does; the block stops as it starts, and the session keeps its state (no reset)."""
    decoder = FrameDecoder()
    frames: list[object] = []

    async def reply(stream: LocalGuestStream, kind: type) -> object:
        while not any(isinstance(f, kind) for f in frames):
            chunk = await stream.receive_some()
            assert chunk, f"the guest ended the channel; frames so far: {frames}"
            frames.extend(decoder.feed(chunk))
        return next(f for f in frames if isinstance(f, kind))

    with trio.fail_after(60):
        async with open_local_guest() as stream:
            hello = await reply(stream, Hello)
            assert isinstance(hello, Hello)
            await stream.send_all(encode(Welcome(protocol=hello.protocol, host="test", host_version="0")))
            await stream.send_all(encode(OpenSession(session="s", call=1)))
            await reply(stream, SessionOpened)
            for call in range(2, 7):
                frames.clear()
                await stream.send_all(
                    encode(Exec(session="s", call=call, code="import time\ntime.sleep(600)"))
                    + encode(Interrupt(session="s"))
                )
                result = await reply(stream, ExecResult)
                assert isinstance(result, ExecResult) and result.call == call
                # Lost, the interrupt would leave the block to the 2 s grace and a reset.
                assert result.interrupted and not result.session_reset, result
