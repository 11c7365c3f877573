"""Hostile bytes: the decoder raises only ``ProtocolError``; a garbage-sending guest is cut off
with a clear error while the real VM's sessions go on; model code cannot reach the channel.

``tests/protocol/test_codec.py`` already fuzzes random bytes (2000 cases) and wrong field
shapes (1000 cases); this adds mutations of valid frames (truncations, bit flips, spliced
lengths), huge and negative-looking lengths, wrong types for every field of every kind, and
unknown kinds (thousands of cases in all).
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from rlm_host import GuestConnection, GuestProtocolError
from rlm_protocol import (
    CAPABILITIES,
    PROTOCOL_VERSION,
    Captured,
    ExecResult,
    FrameDecoder,
    Hello,
    HostCall,
    Limits,
    ProtocolError,
    SessionOpened,
    encode,
)
from rlm_protocol.frames import AnyFrame
from tests.vm_harness import SharedVM

VALID = [
    Hello(
        protocol=PROTOCOL_VERSION, agent="x", agent_version="0", capabilities=CAPABILITIES,
        limits=Limits(max_frame_bytes=1 << 16, max_output_chars=10, max_sessions=2),
    ),
    SessionOpened(session="s1", call=1),
    HostCall(session="s1", call=7, method="rlm_query", payload={"prompt": "p" * 50, "model": None}),
    ExecResult(session="s1", call=4, stdout=Captured(text="42\n", chars=3, lines=2), stderr=Captured()),
]
KINDS = sorted(t.__struct_config__.tag for t in AnyFrame.__args__)  # type: ignore[attr-defined]
FIELDS = sorted({f for t in AnyFrame.__args__ for f in t.__struct_fields__})  # type: ignore[attr-defined]
ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True) | st.text(max_size=10) | st.binary(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _feed(data: bytes, chunk: int = 0) -> None:
    """Decode ``data`` (in chunks of ``chunk`` bytes, 0: whole): only ProtocolError may escape."""
    decoder = FrameDecoder(max_frame_bytes=1 << 16)
    try:
        if chunk:
            for i in range(0, len(data), chunk):
                decoder.feed(data[i : i + chunk])
        else:
            decoder.feed(data)
        decoder.eof()
    except ProtocolError:
        pass


@settings(max_examples=3000, deadline=None)
@pytest.mark.timeout(600)  # thousands of examples: minutes on a loaded machine
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=7)), max_size=4),
    st.integers(min_value=0),
    st.integers(min_value=1, max_value=17),
)
def test_fuzz_mutated_and_truncated_frames(frame: Any, flips: list[tuple[int, int]], cut: int, chunk: int) -> None:
    data = bytearray(encode(frame) * 2)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    _feed(bytes(data[: cut % (len(data) + 1)]), chunk)


@settings(max_examples=1000, deadline=None)
@pytest.mark.timeout(600)  # thousands of examples: minutes on a loaded machine
@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=64))
def test_fuzz_any_length_prefix(length: int, body: bytes) -> None:
    # Huge lengths (up to 4 GiB) are refused before any buffering; small ones read the body.
    _feed(length.to_bytes(4, "big") + body)


@settings(max_examples=3000, deadline=None)
@pytest.mark.timeout(600)  # thousands of examples: minutes on a loaded machine
@given(
    st.sampled_from(KINDS) | st.text(max_size=12),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), ANY_VALUE, max_size=8),
)
def test_fuzz_wrong_types_and_unknown_kinds(kind: str, fields: dict[str, Any]) -> None:
    body = msgspec.msgpack.encode({"kind": kind, **fields})
    _feed(len(body).to_bytes(4, "big") + body)


@settings(max_examples=500, deadline=None)
@pytest.mark.timeout(600)  # thousands of examples: minutes on a loaded machine
@given(ANY_VALUE)
def test_fuzz_bodies_that_are_not_maps(value: Any) -> None:
    body = msgspec.msgpack.encode(value)
    _feed(len(body).to_bytes(4, "big") + body)


def test_huge_length_is_refused_before_reading_the_body() -> None:
    decoder = FrameDecoder(max_frame_bytes=1 << 20)
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(b"\xff\xff\xff\xff")


@pytest.mark.vm
async def test_garbage_guest_is_cut_off_and_the_real_vm_goes_on(shared_vm: SharedVM) -> None:
    # Two connections in one host process: a fake guest that shakes hands and then sends
    # garbage, and the real VM's guest running blocks all along.
    async def garbage_guest(stream: trio.abc.Stream) -> None:
        await stream.send_all(encode(VALID[0]))
        decoder = FrameDecoder()
        while not decoder.feed(await stream.receive_some()):
            pass  # the Welcome
        while not decoder.feed(await stream.receive_some()):
            pass  # the OpenSession
        await stream.send_all(b"\x00\x00\x00\x05\xc1garbage" + os.urandom(1000))
        await trio.sleep_forever()

    async def real_blocks(conn: GuestConnection) -> list[str]:
        out = []
        async with await conn.open_session() as session:
            await session.exec("n = 0")
            for _ in range(5):
                out.append((await session.exec("n += 1; print(n)")).stdout.text)
        return out

    host_side, guest_side = trio.testing.memory_stream_pair()
    outputs: list[list[str]] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(garbage_guest, guest_side)

            async def real() -> None:
                outputs.append(await shared_vm.run(real_blocks))

            nursery.start_soon(real)
            with pytest.raises(GuestProtocolError, match="broke the protocol") as caught:
                async with GuestConnection.open(host_side, handshake_timeout=30) as fake:
                    await fake.open_session()
            while not outputs:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    print(f"\n[figure] garbage guest: {caught.value}")
    assert outputs == [["1\n", "2\n", "3\n", "4\n", "5\n"]]
    after = await shared_vm.run(real_blocks)
    assert after == ["1\n", "2\n", "3\n", "4\n", "5\n"]


@pytest.mark.vm
async def test_model_code_cannot_open_the_agent_channel(shared_vm: SharedVM) -> None:
    # Forged frames would have to go through the agent's virtio-serial port, which the agent
    # holds open; the kernel allows one opener, so a block gets EBUSY, not a channel.
    code = (
        "import os, glob\n"
        "ports = sorted(glob.glob('/dev/virtio-ports/*') + glob.glob('/dev/vport*'))\n"
        "res = {}\n"
        "for p in ports:\n"
        "    try:\n"
        "        fd = os.open(p, os.O_RDWR | os.O_NONBLOCK)\n"
        "        os.write(fd, b'\\x00\\x00\\x00\\x05garbage')\n"
        "        res[p] = 'opened'\n"
        "    except OSError as e:\n"
        "        res[p] = e.strerror\n"
        "Final = res"
    )

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as session:
            result = await session.exec(code)
            again = await session.exec("print('still fine')")
        return result, again

    result, again = await shared_vm.run(go)
    print(f"\n[figure] opening the ports from a block: {result.final.value}")
    assert result.final is not None and result.final.ok and result.final.value
    assert "opened" not in result.final.value.values()
    assert again.stdout.text == "still fine\n"


def test_invalid_utf8_in_a_string_is_a_protocol_error() -> None:
    # Found by the mutation fuzz: msgspec raised UnicodeDecodeError, which escaped the decoder
    # (and would have ended the host's reader task with an unexpected exception).
    body = msgspec.msgpack.encode({"kind": "session_opened", "session": "s1", "call": 1})
    body = body.replace(b"s1", b"\xf0\x28")
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)
    envelope = msgspec.msgpack.encode({"kind": "\xff"}).replace("ÿ".encode(), b"\xff\xfe")
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(len(envelope).to_bytes(4, "big") + envelope)
