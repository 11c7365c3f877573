"""Checks of the byte stream and the connection's end, each on a guest process of its own.

These checks break the connection on purpose (a malformed frame, an oversized length, the end
of input, a shutdown mid-block), so none of them may share its guest with another check.
"""

from __future__ import annotations

import time
from typing import Final

import msgspec

from ..frames import Bye, ErrorFrame, Exec, ExecResult, HostCall, Shutdown
from .peer import CheckFailed, GuestPeer, describe
from .probe import Link, Probe, expect_exit, fail_unless, handshake

__all__ = [
    "float_call_id",
    "malformed_frame",
    "oversized_length",
    "shutdown_during_block",
    "stdin_end",
]

#: The kit writes this much of an oversized frame's body, at most: a guest must refuse on the
#: length alone, so a conformant one answers long before the body would have arrived.
OVERSIZE_SENT_BYTES: Final = 16


def _probe(peer: GuestPeer, timeout: float) -> Probe:
    started = time.monotonic()
    hello = handshake(peer, timeout)
    return Probe(Link(peer, hello), max(timeout - (time.monotonic() - started), 0.0))


def _expect_refusal(probe: Probe, what: str) -> None:
    """A connection-level ``bad_request`` (no ``call``), then the end with a failure status."""
    frame = probe.receive(f"the bad_request refusing {what}")
    fail_unless(
        isinstance(frame, ErrorFrame) and frame.code == "bad_request" and frame.call is None,
        f"{what} must be answered with an ErrorFrame of code bad_request and no call, got "
        f"{describe(frame)}",
    )
    expect_exit(probe.peer, probe.deadline, f"after refusing {what}", zero=False)


def malformed_frame(peer: GuestPeer, timeout: float) -> None:
    """A body that is not a msgpack map is refused with bad_request, and the guest exits non-zero."""
    probe = _probe(peer, timeout)
    probe.open_session("before")
    body = msgspec.msgpack.encode(["exec", "not", "a", "map"])
    probe.peer.send_bytes(len(body).to_bytes(4, "big") + body)
    _expect_refusal(probe, "a body that is a msgpack array")


def float_call_id(peer: GuestPeer, timeout: float) -> None:
    """A float where an int belongs (call = 1.0) is a malformed frame, not call 1."""
    probe = _probe(peer, timeout)
    session = probe.open_session("floats")
    probe.send_map({"kind": "exec", "session": session, "call": 1.0, "code": "x"})
    _expect_refusal(probe, "an Exec whose call is the float 1.0")


def oversized_length(peer: GuestPeer, timeout: float) -> None:
    """A length above max_frame_bytes is refused from its four bytes, before any body arrives."""
    probe = _probe(peer, timeout)
    limit = probe.limits.max_frame_bytes
    # Only a few bytes of the body follow: a guest that waits for the rest never answers.
    probe.peer.send_bytes((limit + 1).to_bytes(4, "big") + b"\x81" * OVERSIZE_SENT_BYTES)
    _expect_refusal(probe, f"a length of {limit + 1} bytes (max_frame_bytes is {limit})")


def stdin_end(peer: GuestPeer, timeout: float) -> None:
    """Over stdio, the end of input ends the guest with status 0 and no further frame."""
    probe = _probe(peer, timeout)
    probe.open_session("eof")
    stdin = probe.peer.process.stdin
    assert stdin is not None
    stdin.close()
    expect_exit(probe.peer, probe.deadline, "after the end of its input", zero=True)


def shutdown_during_block(peer: GuestPeer, timeout: float) -> None:
    """Shutdown while a block runs: at most the block's result, then Bye last, then exit 0."""
    probe = _probe(peer, timeout)
    s = probe.samples
    session = probe.open_session("busy")
    call = probe.link.new_call()
    probe.send(Exec(session=session, call=call, code=s.write_then_sleep("x"), language=s.language))
    time.sleep(0.3)  # the block is running; nothing to observe from outside
    probe.send(Shutdown())
    while True:
        frame = probe.receive("Bye after a Shutdown during a block")
        if isinstance(frame, Bye):
            break
        fail_unless(
            (isinstance(frame, ExecResult) and frame.call == call)
            or (isinstance(frame, HostCall) and frame.session == session),
            f"before Bye only the running block's frames may come, got {describe(frame)}",
        )
    try:
        expect_exit(probe.peer, probe.deadline, "after Bye", zero=True)
    except CheckFailed as failure:
        raise CheckFailed(f"{failure} (the block was running at Shutdown)") from None
