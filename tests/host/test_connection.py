"""GuestConnection against scripted fake guests over in-memory streams (no subprocess)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import pytest
import trio
import trio.testing

from rlm_host import (
    GuestConnection,
    GuestDiedError,
    GuestProtocolError,
    HandshakeError,
    SessionError,
)
from rlm_protocol import (
    CAPABILITIES,
    PROTOCOL_VERSION,
    Captured,
    CloseSession,
    ErrorFrame,
    Exec,
    ExecResult,
    Frame,
    FrameDecoder,
    Hello,
    HostCall,
    HostCallReply,
    Interrupt,
    Limits,
    LocalProtocolError,
    OpenSession,
    SessionClosed,
    SessionOpened,
    Welcome,
    encode,
)
from rlm_host.session_link import answer_host_call

LIMITS = Limits(max_frame_bytes=1 << 20, max_output_chars=100, max_sessions=10)


def hello(protocol: tuple[int, int] = PROTOCOL_VERSION) -> Hello:
    return Hello(
        protocol=protocol,
        agent="fake",
        agent_version="0",
        capabilities=CAPABILITIES + ("from.the.future",),
        limits=LIMITS,
    )


FakeGuest = Callable[[trio.abc.Stream, FrameDecoder], Awaitable[None]]


async def run_against(guest: FakeGuest, body: Callable[[GuestConnection], Awaitable[None]]) -> None:
    host_side, guest_side = trio.testing.memory_stream_pair()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guest, guest_side, FrameDecoder())
            with trio.fail_after(10):
                async with GuestConnection.open(host_side, handshake_timeout=5) as connection:
                    await body(connection)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # Surface the one real failure (the fake guest's task is only ever cancelled).
        leaves = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


async def receive(stream: trio.abc.Stream, decoder: FrameDecoder) -> list[Frame]:
    while True:
        frames = decoder.feed(await stream.receive_some())
        if frames:
            return frames  # type: ignore[return-value]


async def handshake_and_open(stream: trio.abc.Stream, decoder: FrameDecoder) -> OpenSession:
    """The guest's side up to one open session: Hello, the host's Welcome, OpenSession answered."""
    await stream.send_all(encode(hello()))
    await receive(stream, decoder)
    opened = (await receive(stream, decoder))[0]
    assert isinstance(opened, OpenSession)
    await stream.send_all(encode(SessionOpened(session=opened.session, call=opened.call)))
    return opened


async def test_different_major_is_refused_on_both_sides() -> None:
    seen: list[Frame] = []

    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(encode(hello((2, 0))))
        seen.extend(await receive(stream, decoder))

    async def body(connection: GuestConnection) -> None:
        raise AssertionError("unreachable")

    with pytest.raises(HandshakeError, match=r"protocol 2\.0.*majors differ"):
        await run_against(guest, body)
    # The host still said who it is, so the guest can refuse with its own message.
    assert isinstance(seen[0], Welcome) and seen[0].protocol == PROTOCOL_VERSION


async def test_newer_minor_with_unknown_fields_frames_and_capabilities_works() -> None:
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        newer = msgspec.msgpack.encode(
            {**msgspec.to_builtins(hello((1, 9))), "kind": "hello", "brand_new_field": [1, 2]}
        )
        await stream.send_all(len(newer).to_bytes(4, "big") + newer)
        welcome = (await receive(stream, decoder))[0]
        assert isinstance(welcome, Welcome)
        # Capabilities the host does not know are not echoed back as "used".
        assert "from.the.future" not in welcome.capabilities
        unknown = msgspec.msgpack.encode({"kind": "telemetry", "cpu": 0.5})
        await stream.send_all(len(unknown).to_bytes(4, "big") + unknown)
        request = (await receive(stream, decoder))[0]
        assert isinstance(request, OpenSession)
        await stream.send_all(encode(SessionOpened(session=request.session, call=request.call)))
        await trio.sleep_forever()

    async def body(connection: GuestConnection) -> None:
        assert connection.hello.protocol == (1, 9)
        session = await connection.open_session()
        assert session.id

    await run_against(guest, body)


async def test_missing_hello_times_out_with_a_clear_error() -> None:
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await trio.sleep_forever()

    async def body(connection: GuestConnection) -> None:
        raise AssertionError("unreachable")

    host_side, _guest_side = trio.testing.memory_stream_pair()
    with pytest.raises(HandshakeError, match="no Hello"):
        async with GuestConnection.open(host_side, handshake_timeout=0.2):
            pass


async def test_first_frame_other_than_hello_is_a_protocol_error() -> None:
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(encode(SessionOpened(session="s", call=1)))
        await trio.sleep_forever()

    async def body(connection: GuestConnection) -> None:
        raise AssertionError("unreachable")

    with pytest.raises(GuestProtocolError, match="expected Hello"):
        await run_against(guest, body)


async def test_garbage_fails_waiters_with_a_protocol_error() -> None:
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(encode(hello()))
        await receive(stream, decoder)  # Welcome
        await receive(stream, decoder)  # OpenSession
        await stream.send_all(b"\x00\x00\x00\x03\xc1\xc1\xc1")
        await trio.sleep_forever()

    async def body(connection: GuestConnection) -> None:
        with pytest.raises(GuestProtocolError, match="broke the protocol"):
            await connection.open_session()

    await run_against(guest, body)


async def test_replies_out_of_order_and_error_frames_route_by_call() -> None:
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(encode(hello()))
        await receive(stream, decoder)
        requests: list[Frame] = []
        while len(requests) < 2:
            requests += await receive(stream, decoder)
        first, second = requests
        assert isinstance(first, OpenSession) and isinstance(second, OpenSession)
        # Answer the second first, and refuse the first.
        await stream.send_all(encode(SessionOpened(session=second.session, call=second.call)))
        await stream.send_all(
            encode(ErrorFrame(code="too_large", message="full", session=first.session, call=first.call))
        )
        await trio.sleep_forever()

    outcomes: dict[str, object] = {}

    async def body(connection: GuestConnection) -> None:
        async def one(name: str) -> None:
            try:
                outcomes[name] = await connection.open_session()
            except SessionError as error:
                outcomes[name] = error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "a")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one, "b")

    await run_against(guest, body)
    assert isinstance(outcomes["a"], SessionError) and outcomes["a"].code == "too_large"
    assert not isinstance(outcomes["b"], SessionError)


async def test_late_reply_to_a_cancelled_request_is_dropped(autojump_clock: trio.testing.MockClock) -> None:
    # The guest ignores the interrupt, so the host stops waiting for the exec (after
    # INTERRUPT_CONFIRM_SECONDS of the mock clock); only then, when the host's next request
    # arrives, does the guest send the exec's result: a reply that no one waits for any more.
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        opened = await handshake_and_open(stream, decoder)
        (exec_request,) = await receive(stream, decoder)
        assert isinstance(exec_request, Exec)
        (interrupt,) = await receive(stream, decoder)
        assert isinstance(interrupt, Interrupt)
        (second,) = await receive(stream, decoder)
        assert isinstance(second, OpenSession)
        late = ExecResult(session=opened.session, call=exec_request.call, stdout=Captured(), stderr=Captured())
        await stream.send_all(encode(late) + encode(SessionOpened(session=second.session, call=second.call)))
        await trio.sleep_forever()

    async def body(connection: GuestConnection) -> None:
        session = await connection.open_session()
        with trio.move_on_after(0.2):
            await session.exec("while True: pass")
        # The late result reaches the reader before this reply: dropping it kept the reader up.
        second = await connection.open_session()
        assert second.id != session.id and not connection.closed

    await run_against(guest, body)


async def test_guest_closing_the_channel_fails_requests_with_guest_died() -> None:
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(encode(hello()))
        await receive(stream, decoder)
        await receive(stream, decoder)
        await stream.aclose()

    async def body(connection: GuestConnection) -> None:
        with pytest.raises(GuestDiedError, match="closed the channel"):
            await connection.open_session()

    await run_against(guest, body)


async def test_host_calls_go_to_their_sessions_owner_or_get_a_refusal() -> None:
    """Routing (``GuestConnection`` + ``Session.host_calls``): a session opened with
    ``host_calls`` hands its calls to its owner; the connection refuses the others itself."""
    replies: dict[int, HostCallReply] = {}

    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(encode(hello()))
        opened: list[str] = []
        while True:
            for frame in await receive(stream, decoder):
                if isinstance(frame, OpenSession):
                    await stream.send_all(encode(SessionOpened(session=frame.session, call=frame.call)))
                    opened.append(frame.session)
                    if len(opened) == 2:
                        served, plain = opened
                        for call, session in ((1, served), (2, plain), (3, "s99")):
                            payload = {"prompt": str(call), "model": None}
                            await stream.send_all(
                                encode(HostCall(session=session, call=call, method="llm_query", payload=payload))
                            )
                elif isinstance(frame, HostCallReply):
                    replies[frame.call] = frame
                elif isinstance(frame, CloseSession):
                    await stream.send_all(encode(SessionClosed(session=frame.session, call=frame.call)))

    async def body(connection: GuestConnection) -> None:
        served = await connection.open_session(host_calls=True)
        await connection.open_session()
        with trio.fail_after(5):
            call = await served.host_calls.receive()
            assert (call.call, call.payload["prompt"]) == (1, "1")
            await served.answer(call, value="A")
            while len(replies) < 3:
                await trio.sleep(0.01)
            await served.close()
            # A closed session's channel ends: whoever serves it stops.
            assert [c async for c in served.host_calls] == []

    await run_against(guest, body)
    assert replies[1].value == "A" and replies[1].error is None
    assert replies[2].error is not None and replies[2].error.name == "NoHandler"
    assert replies[3].error is not None and replies[3].error.name == "UnknownSession"


async def test_a_reply_that_cannot_be_sent_becomes_an_error_and_never_raises() -> None:
    sent: list[HostCallReply] = []

    async def too_large_then_dead(frame: Frame) -> None:
        assert isinstance(frame, HostCallReply)
        if frame.error is None:
            raise LocalProtocolError("HostCallReply frame of 99 bytes exceeds the limit of 9 bytes")
        sent.append(frame)
        raise GuestDiedError("the guest exited")

    call = HostCall(session="s1", call=4, method="llm_query", payload={"prompt": "p"})
    # The guest died between the reply and its fallback: nothing may reach the caller's nursery.
    await answer_host_call(too_large_then_dead, call, value="x" * 99)
    assert sent[0].error is not None and sent[0].error.name == "TooLarge"


async def test_a_request_waiting_in_a_shield_ends_when_the_reader_is_cancelled() -> None:
    # A VM whose QEMU exits has its users cancelled, the connection's reader among them, while
    # a session's close waits (shielded) for the guest's answer. The reader's end must fail the
    # waiting request: before, the close waited forever (seen in a lockup test: the run hung in
    # its shield past every deadline). A hang here is caught by the test's time limit.
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await handshake_and_open(stream, decoder)
        await trio.sleep_forever()  # never answers the CloseSession

    host_side, guest_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guest, guest_side, FrameDecoder())
        with trio.CancelScope() as users:
            async with GuestConnection.open(host_side, handshake_timeout=5) as connection:
                async with await connection.open_session():
                    users.cancel()
        assert users.cancelled_caught and connection.closed
        nursery.cancel_scope.cancel()
