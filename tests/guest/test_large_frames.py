"""The guest's way for large frames from the host: the agent reads one into a shared buffer
(``rlm_guest.shared``) and, from the first read, tells the frame's session process to make room
for it (``rlm_guest.frame_head``, ``shared.make_room``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlm_guest.frame_head import routing_in_head
from rlm_guest.shared import KEEP_AT_MOST, make_room, read_shared
from rlm_host import GuestConnection, open_local_guest, serving
from rlm_protocol import (
    HEADER_BYTES,
    BindRefs,
    Exec,
    Frame,
    HostCall,
    HostCallError,
    HostCallReply,
    SetVars,
    decode_envelope,
    encode,
)

FRAMES: list[Frame] = [
    SetVars(session="s-1", call=7, values={"prompt": "x" * 70_000, "n": 3}),
    SetVars(session="é" * 40, call=2**40, values={"prompt": "y"}),
    SetVars(session="session-0123456789ab", call=200, values={"prompt": "y" * 70_000}),  # fixstr of 20
    HostCallReply(session="s2", call=300, value="z" * 70_000),
    HostCallReply(session="s3", call=65_536, error=HostCallError(name="E", message="m")),
    Exec(session="s4", call=0, code="pass" * 10_000),
    BindRefs(session="s5", call=1, refs={"prompt": "r"}),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_routing_in_head_is_right_or_absent_wherever_the_head_is_cut(frame: Frame) -> None:
    data = encode(frame)
    expected = decode_envelope(data)  # what the agent routes a whole frame by
    found = 0
    for cut in range(len(data) if len(data) < 400 else 400):
        envelope = routing_in_head(data[:cut])
        # Never a wrong session: a frame would be announced to a process it is not for.
        assert envelope is None or envelope.session == expected.session, cut
        if envelope == expected:
            found += 1
    assert found, "the routing fields were never found"
    assert routing_in_head(data) == expected


@pytest.mark.parametrize(
    "body",
    [b"\x93\xa4kind\xa2s1\x01", b"\x81\x01\xa2s1", b"\x82\xa4kind\xa8set_vars\xa7session\x05", b"\xc1", b""],
    ids=["array", "int-key", "int-session", "reserved", "empty"],
)
def test_routing_in_head_of_other_shapes_is_none(body: bytes) -> None:
    assert routing_in_head(len(body).to_bytes(HEADER_BYTES, "big") + body) is None


#: ``make_room`` in a process of its own (glibc's malloc settings are the process's): how much
#: of the heap stays resident after it, for a frame of the size given.
MAKE_ROOM = r'''
import os, sys, json
from rlm_guest.shared import make_room
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
size = int(sys.argv[1])
fd = os.memfd_create("t")
os.write(fd, size.to_bytes(4, "big"))
before = rss()
make_room(fd)
try:
    os.fstat(fd)
    closed = False
except OSError:
    closed = True
print(json.dumps({"kept": rss() - before, "closed": closed}))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc: the guest's platform")
@pytest.mark.parametrize("mib", [16, 40])
def test_make_room_leaves_the_frames_memory_paged_in(mib: int) -> None:
    # The point of make_room: the decode that follows reuses pages already faulted in. Up to
    # KEEP_AT_MOST they stay resident; a larger frame is not prepared for (it is not kept either).
    out = subprocess.run(
        [sys.executable, "-c", MAKE_ROOM, str(mib << 20)], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(out.stdout)
    assert result["closed"]
    if mib << 20 <= KEEP_AT_MOST:
        assert result["kept"] >= (mib << 20) * 0.9, result
    else:
        assert result["kept"] < 1 << 20, result


#: The agent on stdio, noting in a file each frame that a session process was told to make room
#: for (the size in the length prefix of the lent buffer).
NOTING_AGENT = r'''
import os, sys
from rlm_guest import worker
from rlm_guest.agent import Agent
from rlm_guest.channel import StdioChannel
make_room = worker.make_room
def noting(fd):
    size = int.from_bytes(os.pread(fd, 4, 0), "big")
    with open(sys.argv[1], "a") as f:
        f.write(f"{size}\n")
    make_room(fd)
worker.make_room = noting
sys.exit(Agent(StdioChannel(), StdioChannel.diagnostic_stream()).serve())
'''


def _noted(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def test_large_frames_are_announced_and_arrive_whole(tmp_path: Path) -> None:
    # Over stdio a pipe gives at most 64 KiB per read: every frame here is split across many.
    noted = tmp_path / "noted"
    command = [sys.executable, "-c", NOTING_AGENT, str(noted)]
    async with open_local_guest(command) as stream, GuestConnection.open(
        stream, death_detail=stream.death_detail
    ) as connection:
        session = await connection.open_session(host_calls=True)
        check = "Final = [len(prompt), prompt[:2], prompt[-2:], prompt.count('q')]"
        sizes = []
        # Growing and shrinking; the second is larger than the buffer the agent keeps (not
        # announced, and read into a buffer of its own), the next ones go to a new buffer.
        for length in (3 << 20, KEEP_AT_MOST + (1 << 20), 5 << 20, 200_000):
            text = ("ab" + "q" * 1000 + "é") * (length // 1003)
            frame = SetVars(session=session.id, call=0, values={"prompt": text})
            if length <= KEEP_AT_MOST:
                sizes.append(len(encode(frame)) - HEADER_BYTES)  # what the length prefix says
            await session.set_vars({"prompt": text})
            result = await session.exec(check)
            assert result.final is not None
            assert result.final.value == [len(text), text[:2], text[-2:], text.count("q")]
        big = "r" * (2 << 20)

        async def handler(call: HostCall) -> str:
            return big

        async with serving(session, handler):
            result = await session.exec("v = host_call('big')\nFinal = [len(v), v == 'r' * len(v)]")
        assert result.final is not None and result.final.value == [len(big), True]
    noted_sizes = _noted(noted)
    assert noted_sizes[:3] == sizes, (noted_sizes, sizes)
    assert len(noted_sizes) == 4 and noted_sizes[3] > len(big)  # the host-call reply's frame


def _lent(frame: Frame) -> int:
    """A memfd holding ``frame`` framed, as the agent lends it (``SharedBuffer``)."""
    fd = os.memfd_create("lent")
    os.write(fd, encode(frame))
    return fd


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="memfd: Linux, the guest's platform")
def test_a_frame_is_decoded_from_its_own_buffer_whatever_was_announced() -> None:
    # read_shared decodes from the mapping make_room made ahead only when it is of the same
    # buffer and frame; anything else is mapped afresh (and the stale mapping dropped).
    a = SetVars(session="s", call=1, values={"prompt": "a" * 100_000})
    b = SetVars(session="s", call=2, values={"prompt": "b" * 100_001})
    fd_a, fd_b = _lent(a), _lent(b)
    try:
        make_room(os.dup(fd_a))
        assert read_shared(os.dup(fd_b), 1 << 30) == b
        assert read_shared(os.dup(fd_a), 1 << 30) == a
        make_room(os.dup(fd_a))
        assert read_shared(os.dup(fd_a), 1 << 30) == a
        make_room(os.dup(fd_a))
        os.pwrite(fd_a, encode(b), 0)  # same buffer, another frame: longer by one byte
        assert read_shared(os.dup(fd_a), 1 << 30) == b
    finally:
        os.close(fd_a)
        os.close(fd_b)
