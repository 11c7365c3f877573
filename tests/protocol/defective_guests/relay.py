"""A man in the middle for defective guests: the real guest, with frames rewritten in transit.

Each defective guest is this relay around ``python -m rlm_guest --stdio`` with one rewrite, so a
defect is exactly one wire-visible bug and does not depend on the guest's internals. Frames are
handled as plain msgpack maps, so unknown kinds and fields pass through untouched.

Run as ``python relay.py DEFECT``; see ``DEFECTS``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

import msgspec

Body = dict[str, Any]
#: Rewrites one frame body; ``None`` drops the frame.
Rewrite = Callable[[Body], Body | None]


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _pump(
    source: IO[bytes],
    sink: IO[bytes],
    rewrite: Rewrite,
    frame_bytes: Callable[[bytes], bytes],
) -> None:
    while (header := _read_exact(source, 4)) is not None:
        body = _read_exact(source, int.from_bytes(header, "big"))
        if body is None:
            break
        rewritten = rewrite(msgspec.msgpack.decode(body))
        if rewritten is not None:
            sink.write(frame_bytes(msgspec.msgpack.encode(rewritten)))
            sink.flush()
    sink.close()


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def keep(body: Body) -> Body | None:
    return body


class FifoHostCallRouting:
    """Routes each host-call reply to the oldest call still waiting, ignoring its id.

    The classic bug of a guest that assumes replies come back in order.
    """

    def __init__(self) -> None:
        self.waiting: list[int] = []
        self.lock = threading.Lock()

    def to_host(self, body: Body) -> Body | None:
        if body["kind"] == "host_call":
            with self.lock:
                self.waiting.append(body["call"])
        return body

    def to_guest(self, body: Body) -> Body | None:
        if body["kind"] == "host_call_reply":
            with self.lock:
                body = {**body, "call": self.waiting.pop(0)}
        return body


def drop_interrupts(body: Body) -> Body | None:
    return None if body["kind"] == "interrupt" else body


def count_utf8_bytes(body: Body) -> Body | None:
    """Reports ``Captured.chars`` as UTF-8 bytes (a guest that measures bytes, not characters)."""
    if body["kind"] == "exec_result":
        for name in ("stdout", "stderr"):
            stream = body[name]
            extra = len(stream["text"].encode()) - len(stream["text"])
            body[name] = {**stream, "chars": stream["chars"] + extra}
    return body


def accept_any_major(body: Body) -> Body | None:
    """Rewrites the host's Welcome to our own version: the guest never sees another major."""
    if body["kind"] == "welcome":
        body = {**body, "protocol": [1, 0]}
    return body


def hide_bash(body: Body) -> Body | None:
    """Leaves ``exec.bash`` out of Hello, as a guest without a shell would."""
    if body["kind"] == "hello":
        body = {**body, "capabilities": [c for c in body["capabilities"] if c != "exec.bash"]}
    return body


def short_length(body: bytes) -> bytes:
    """A length prefix one less than the body: the peer's framing desynchronises."""
    return (len(body) - 1).to_bytes(4, "big") + body


def main(defect: str) -> int:
    to_guest: Rewrite = keep
    to_host: Rewrite = keep
    host_framing = framed
    if defect == "fifo_host_calls":
        routing = FifoHostCallRouting()
        to_guest, to_host = routing.to_guest, routing.to_host
    elif defect == "ignore_interrupt":
        to_guest = drop_interrupts
    elif defect == "utf8_chars":
        to_host = count_utf8_bytes
    elif defect == "accept_any_major":
        to_guest = accept_any_major
    elif defect == "no_bash":
        to_host = hide_bash
    elif defect == "bad_length":
        host_framing = short_length
    else:
        print(f"unknown defect {defect!r}", file=sys.stderr)
        return 2
    guest = subprocess.Popen(
        [sys.executable, "-m", "rlm_guest", "--stdio"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert guest.stdin is not None and guest.stdout is not None
    host_in = os.fdopen(0, "rb", buffering=0)
    host_out = os.fdopen(1, "wb", buffering=0)
    upstream = threading.Thread(
        target=_pump, args=(host_in, guest.stdin, to_guest, framed), daemon=True
    )
    upstream.start()
    _pump(guest.stdout, host_out, to_host, host_framing)
    return guest.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
