"""Version compatibility across minors, and refusal across majors, on both sides of the wire.

The host side runs ``GuestConnection`` against scripted guests over memory streams; frames of
other versions are written as raw msgpack maps, since our own Structs cannot omit a required
field or carry one they do not know. The guest side drives the real ``rlm_guest`` subprocess
through the conformance kit's blocking ``GuestPeer``. The newer-minor guest case of the host
(extra Hello fields, unknown frame kinds, unknown capabilities) is in
``tests/host/test_connection.py``; it is not repeated here.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import rlm_host.connection
import rlm_protocol.version
from rlm_host import GuestConnection, HandshakeError, SessionError, open_local_guest
from rlm_protocol import (
    PROTOCOL_MAJOR,
    PROTOCOL_VERSION,
    Bye,
    ErrorFrame,
    ExecResult,
    Frame,
    FrameDecoder,
    OpenSession,
    SessionOpened,
    Shutdown,
    Welcome,
)
from rlm_protocol.conformance import CheckFailed, GuestPeer

GUEST = [sys.executable, "-m", "rlm_guest", "--stdio"]
TIMEOUT = 20.0

Body = dict[str, Any]


def framed(body: Body) -> bytes:
    data = msgspec.msgpack.encode(body)
    return len(data).to_bytes(4, "big") + data


# --- host side -----------------------------------------------------------------------------


ScriptedGuest = Callable[[trio.abc.Stream, FrameDecoder], Awaitable[None]]


async def receive(stream: trio.abc.Stream, decoder: FrameDecoder) -> Frame:
    while True:
        frames = decoder.feed(await stream.receive_some())
        if frames:
            assert len(frames) == 1 and isinstance(frames[0], Frame), frames
            return frames[0]


async def host_against(
    guest: ScriptedGuest, body: Callable[[GuestConnection], Awaitable[None]]
) -> None:
    host_side, guest_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(guest, guest_side, FrameDecoder())
        with trio.fail_after(10):
            async with GuestConnection.open(host_side, handshake_timeout=5) as connection:
                await body(connection)
        nursery.cancel_scope.cancel()


#: A 1.0 guest's Hello as a map, with only the required fields (no ``runtime``).
OLD_HELLO: Body = {
    "kind": "hello",
    "protocol": [1, 0],
    "agent": "old-guest",
    "agent_version": "0.9",
    "capabilities": ["exec.python"],
    "limits": {"max_frame_bytes": 1 << 20, "max_output_chars": 1000, "max_sessions": 4},
}


async def test_newer_host_works_with_an_older_minor_guest_omitting_optional_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This host is a 1.4; the guest a 1.0 that knows no capability beyond exec.python.
    monkeypatch.setattr(rlm_host.connection, "PROTOCOL_VERSION", (PROTOCOL_MAJOR, 4))
    welcomes: list[Frame] = []

    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(framed(OLD_HELLO))
        welcomes.append(await receive(stream, decoder))
        opening = await receive(stream, decoder)
        assert isinstance(opening, OpenSession)
        # Every optional field left out: no state, no final, no returncode, no duration.
        await stream.send_all(
            framed({"kind": "session_opened", "session": opening.session, "call": opening.call})
        )
        run = await receive(stream, decoder)
        await stream.send_all(
            framed(
                {
                    "kind": "exec_result",
                    "session": opening.session,
                    "call": getattr(run, "call"),
                    "stdout": {"text": "42\n", "chars": 3, "lines": 2},
                    "stderr": {},
                }
            )
        )
        await trio.sleep_forever()

    async def body(connection: GuestConnection) -> None:
        assert connection.hello.protocol == (1, 0) and connection.hello.runtime == {}
        session = await connection.open_session()
        result = await session.exec("print(42)")
        assert result.stdout.text == "42\n" and result.stderr.chars == 0
        assert result.final is None and result.error is None and not result.interrupted

    await host_against(guest, body)
    welcome = welcomes[0]
    assert isinstance(welcome, Welcome) and welcome.protocol == (PROTOCOL_MAJOR, 4)
    # The host uses only what the older guest offered.
    assert welcome.capabilities == ("exec.python",)


async def test_host_accepts_a_newer_guests_nested_fields_and_error_codes() -> None:
    async def guest(stream: trio.abc.Stream, decoder: FrameDecoder) -> None:
        await stream.send_all(framed({**OLD_HELLO, "protocol": [1, 9]}))
        await receive(stream, decoder)
        opening = await receive(stream, decoder)
        assert isinstance(opening, OpenSession)
        await stream.send_all(
            framed(
                {
                    "kind": "session_opened",
                    "session": opening.session,
                    "call": opening.call,
                    "state": {"names": [], "count": 0, "bytes": 0},
                }
            )
        )
        run = await receive(stream, decoder)
        await stream.send_all(
            framed(
                {
                    "kind": "exec_result",
                    "session": opening.session,
                    "call": getattr(run, "call"),
                    "stdout": {"text": "x", "chars": 1, "lines": 1, "encoding": "utf-8"},
                    "stderr": {"text": "", "chars": 0, "lines": 0},
                    "final": {"ok": True, "value": 1, "schema": "int"},
                    "cpu_seconds": 0.01,
                }
            )
        )
        refused = await receive(stream, decoder)
        # An error code from the future: the host must take it as an error, not a crash.
        await stream.send_all(
            framed(
                {
                    "kind": "error",
                    "code": "quota_exceeded",
                    "message": "too many blocks today",
                    "session": opening.session,
                    "call": getattr(refused, "call"),
                    "retry_after": 60,
                }
            )
        )
        await trio.sleep_forever()

    async def body(connection: GuestConnection) -> None:
        session = await connection.open_session()
        result = await session.exec("x")
        assert isinstance(result, ExecResult)
        assert result.final is not None and result.final.value == 1
        with pytest.raises(SessionError, match="quota_exceeded") as caught:
            await session.exec("y")
        assert caught.value.code == "quota_exceeded"

    await host_against(guest, body)


async def test_real_host_and_real_guest_of_different_majors_both_refuse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The host in this process pretends to be a 2.0; the guest subprocess is a 1.0.
    monkeypatch.setattr(rlm_protocol.version, "PROTOCOL_MAJOR", PROTOCOL_MAJOR + 1)
    monkeypatch.setattr(rlm_host.connection, "PROTOCOL_VERSION", (PROTOCOL_MAJOR + 1, 0))
    log = tmp_path / "guest.log"
    with log.open("wb") as stderr:
        async with open_local_guest(GUEST, stderr=stderr) as stream:
            with pytest.raises(HandshakeError, match=rf"protocol {PROTOCOL_VERSION[0]}\.{PROTOCOL_VERSION[1]}, this host 2\.0.*majors differ"):
                async with GuestConnection.open(stream, handshake_timeout=TIMEOUT):
                    pass
            with trio.fail_after(TIMEOUT):
                status = await stream.process.wait()
    assert status != 0
    assert f"host speaks protocol 2.0, this guest {PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: majors differ" in log.read_text()


# --- guest side ------------------------------------------------------------------------------


@pytest.fixture
def peer() -> Any:
    guest = GuestPeer(GUEST)
    try:
        yield guest
    finally:
        guest.close()


def expect_reply(peer: GuestPeer, call: int) -> Frame:
    frame = peer.receive(TIMEOUT)
    assert getattr(frame, "call", None) == call, frame
    return frame


def test_guest_serves_an_older_host_omitting_optional_fields(peer: GuestPeer) -> None:
    peer.receive(TIMEOUT)  # Hello
    # A 1.0 host that leaves out every optional field: no Welcome capabilities, no cwd, no
    # language, no timeout.
    peer.send_bytes(framed({"kind": "welcome", "protocol": [1, 0], "host": "h", "host_version": "0"}))
    peer.send_bytes(framed({"kind": "open_session", "session": "s", "call": 1}))
    assert isinstance(expect_reply(peer, 1), SessionOpened)
    peer.send_bytes(framed({"kind": "exec", "session": "s", "call": 2, "code": "print(6 * 7)"}))
    result = expect_reply(peer, 2)
    assert isinstance(result, ExecResult) and result.stdout.text == "42\n"


def test_guest_serves_a_newer_minor_host(peer: GuestPeer) -> None:
    peer.receive(TIMEOUT)
    peer.send_bytes(
        framed(
            {
                "kind": "welcome",
                "protocol": [1, 9],
                "host": "h",
                "host_version": "9",
                "capabilities": ["exec.python", "teleport"],
                "region": "eu",
            }
        )
    )
    peer.send_bytes(framed({"kind": "telemetry", "cpu": 0.5}))
    peer.send_bytes(framed({"kind": "open_session", "session": "s", "call": 1, "quota": 3}))
    assert isinstance(expect_reply(peer, 1), SessionOpened)
    peer.send_bytes(
        framed({"kind": "set_vars", "session": "s", "call": 2, "values": {"a": 1}, "ttl": 9})
    )
    expect_reply(peer, 2)
    peer.send_bytes(
        framed({"kind": "exec", "session": "s", "call": 3, "code": "print(a)", "trace": True})
    )
    result = expect_reply(peer, 3)
    assert isinstance(result, ExecResult) and result.stdout.text == "1\n"
    peer.send(Shutdown())
    assert isinstance(peer.receive(TIMEOUT), Bye)
    assert peer.wait_exit(TIMEOUT) == 0


def test_guest_refuses_another_major_with_a_clear_error(peer: GuestPeer) -> None:
    peer.receive(TIMEOUT)
    peer.send(Welcome(protocol=(PROTOCOL_MAJOR + 1, 0), host="h", host_version="2"))
    refusal = peer.receive(TIMEOUT)
    assert isinstance(refusal, ErrorFrame) and refusal.call is None
    assert f"host speaks protocol 2.0, this guest {PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: majors differ" in refusal.message
    # The guest closes the connection and exits with a failure status.
    with pytest.raises(CheckFailed, match="closed its stdout"):
        peer.receive(TIMEOUT)
    status = peer.wait_exit(TIMEOUT)
    assert status is not None and status != 0
