"""The guest agent's own refusals: garbage from the host, and more sessions than its limit."""

from __future__ import annotations

import sys

import pytest
import trio

from rlm_host import GuestConnection, SessionError, open_local_guest
from rlm_protocol import ErrorFrame, FrameDecoder, Hello

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
