"""Sans-IO framing: 4-byte big-endian length + msgpack body. Bytes in, frames out.

No sockets, threads or clocks here (h11's rule), so the same code runs in the trio host, in the
guest's blocking reader, in the conformance kit and under the fuzzer.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .errors import LocalProtocolError, RemoteProtocolError
from .frames import AnyFrame, Frame, UnknownFrame

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "Envelope",
    "decode_envelope",
    "FrameDecoder",
    "FrameEncoder",
    "HEADER_BYTES",
    "decode_body",
    "encode",
]

HEADER_BYTES: Final = 4

#: Default bound on one frame body. A 16 MiB prompt is the largest frame we send in practice;
#: 128 MiB leaves room for big logs while keeping one hostile length prefix from making either
#: side allocate gigabytes. Peers announce their own bound in ``Hello.limits``.
DEFAULT_MAX_FRAME_BYTES: Final = 128 * 1024 * 1024

_body_decoder: Final = msgspec.msgpack.Decoder(AnyFrame)


class Envelope(msgspec.Struct, frozen=True):
    """The routing fields of any frame, decoded without touching the rest of the body."""

    kind: str
    session: str | None = None
    call: int | None = None


class _Kind(msgspec.Struct):
    kind: str


_envelope_decoder: Final = msgspec.msgpack.Decoder(Envelope)
_kind_decoder: Final = msgspec.msgpack.Decoder(_Kind)


#: What msgspec raises on hostile bytes: ``DecodeError``, and ``UnicodeDecodeError`` for a
#: string that is not UTF-8 (found by the fuzz in tests/security/test_hostile_frames.py).
_DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError)


def decode_envelope(frame: bytes | bytearray | memoryview) -> Envelope:
    """Routing fields of a framed message (length prefix included), as ``feed_raw`` returns it.

    msgpack strings carry their length, so a 16 MiB value is skipped, not scanned.

    Raises:
        RemoteProtocolError: the body is not a map with a string ``kind``.
    """
    try:
        return _envelope_decoder.decode(memoryview(frame)[HEADER_BYTES:])
    except _DECODE_ERRORS as error:
        raise RemoteProtocolError(f"malformed frame: {error}") from error


_known_kinds: Final = frozenset(
    t.__struct_config__.tag for t in AnyFrame.__args__  # type: ignore[attr-defined]
)


def decode_body(body: bytes | bytearray | memoryview) -> Frame | UnknownFrame:
    """Decode one frame body (without its length prefix).

    Returns ``UnknownFrame`` for a well-formed map whose ``kind`` we do not know, so that a peer
    of an older minor can ignore frames a newer one added.

    Raises:
        RemoteProtocolError: the body is not msgpack, not a map with a string ``kind``, or a known
            kind with missing or mistyped fields.
    """
    try:
        frame: Frame = _body_decoder.decode(body)
        return frame
    except _DECODE_ERRORS as error:
        try:
            envelope = _kind_decoder.decode(body)
        except _DECODE_ERRORS:
            raise RemoteProtocolError(f"malformed frame: {error}") from error
        if envelope.kind not in _known_kinds:
            return UnknownFrame(kind=envelope.kind)
        raise RemoteProtocolError(f"malformed {envelope.kind!r} frame: {error}") from error


class FrameEncoder:
    """Encodes frames into one reused buffer (msgspec's ``encode_into`` pattern).

    The returned ``bytes`` is a fresh copy of the framed message, so the encoder may be reused
    at once; use :meth:`encode_view` to avoid that copy when the caller writes before encoding
    again.
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._encoder = msgspec.msgpack.Encoder()
        self._buffer = bytearray()

    def encode_view(self, frame: Frame) -> memoryview:
        """Frame ``frame`` into the internal buffer; valid until the next call.

        Raises:
            LocalProtocolError: the body exceeds ``max_frame_bytes``.
        """
        buffer = self._buffer
        try:
            self._encoder.encode_into(frame, buffer, HEADER_BYTES)
        except BufferError:
            # A view of the last frame is still alive (a caller kept it): that buffer is the
            # caller's now; encode into a new one.
            buffer = self._buffer = bytearray()
            self._encoder.encode_into(frame, buffer, HEADER_BYTES)
        size = len(buffer) - HEADER_BYTES
        if size > self.max_frame_bytes:
            # Keep a huge buffer from pinning memory after one oversized attempt.
            self._buffer = bytearray()
            raise LocalProtocolError(
                f"{type(frame).__name__} frame of {size} bytes exceeds the limit of "
                f"{self.max_frame_bytes} bytes"
            )
        buffer[:HEADER_BYTES] = size.to_bytes(HEADER_BYTES, "big")
        view = memoryview(buffer)
        if len(buffer) > 4 * 1024 * 1024:
            # A 16 MiB prompt should not stay resident between sends: hand the buffer over.
            self._buffer = bytearray()
        return view

    def encode(self, frame: Frame) -> bytes:
        """Return the framed bytes (length prefix + body) of ``frame``."""
        return bytes(self.encode_view(frame))


_default_encoder = FrameEncoder()


def encode(frame: Frame) -> bytes:
    """Length-prefix and msgpack-encode one frame with the default size bound.

    >>> from rlm_protocol import Interrupt, FrameDecoder
    >>> data = encode(Interrupt(session="s1"))
    >>> data[:4]
    b'\\x00\\x00\\x00\\x1b'
    >>> FrameDecoder().feed(data)
    [Interrupt(session='s1')]
    """
    return _default_encoder.encode(frame)


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` returns every frame completed by those bytes.

    Work is linear in the input: bytes are appended once, a frame body is decoded once when it is
    complete, and consumed bytes are dropped in bulk rather than by re-slicing per frame. After a
    ``RemoteProtocolError`` the decoder is failed and every later ``feed`` raises the same error
    (fail closed: a desynchronised length-prefixed stream cannot be trusted again).
    """

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._start = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer) - self._start

    @property
    def missing(self) -> int:
        """Bytes still to come to complete the frame being received (0 when its length is
        not known yet), so that a reader can fetch a large frame in one tight loop.

        >>> decoder = FrameDecoder()
        >>> decoder.feed((10).to_bytes(4, "big") + b"abc")
        []
        >>> decoder.missing
        7
        """
        available = len(self._buffer) - self._start
        if available < HEADER_BYTES:
            return 0
        size = int.from_bytes(self._buffer[self._start : self._start + HEADER_BYTES], "big")
        return max(0, HEADER_BYTES + size - available)

    def detach_partial(self) -> tuple[bytearray, int]:
        """Hand over the frame being received, to be completed by the caller without copies.

        Returns a buffer the size of the whole framed message (length prefix included) holding
        the bytes received so far, and how many those are; the caller reads the rest into
        ``buffer[received:]`` and then owns a complete raw frame (``decode_body`` of
        ``buffer[HEADER_BYTES:]`` decodes it). The decoder is left empty. Only valid when
        ``missing`` is non-zero (the length is known and the frame incomplete).

        >>> decoder = FrameDecoder()
        >>> decoder.feed((3).to_bytes(4, "big") + b"a")
        []
        >>> buffer, received = decoder.detach_partial()
        >>> len(buffer), received, decoder.buffered
        (7, 5, 0)
        """
        missing = self.missing
        if missing == 0:
            raise LocalProtocolError("no partial frame with a known length to detach")
        received = len(self._buffer) - self._start
        frame = bytearray(received + missing)
        frame[:received] = memoryview(self._buffer)[self._start :]
        self._buffer = bytearray()
        self._start = 0
        return frame, received

    def detach_head(self) -> tuple[bytes, int]:
        """Hand over the start of the frame being received, to be completed by the caller.

        Returns the bytes received so far of that frame (length prefix included) and the size
        of the whole framed message; the caller reads the rest into a buffer of its own. Unlike
        :meth:`detach_partial`, nothing of the frame's full size is allocated here: a reader
        that completes a 16 MiB frame in a buffer it keeps (the guest agent's shared buffer)
        would otherwise zero 16 MiB of fresh memory per frame for nothing. The decoder is left
        empty. Only valid when ``missing`` is non-zero.

        Raises:
            LocalProtocolError: no partial frame with a known length.

        >>> decoder = FrameDecoder()
        >>> decoder.feed((3).to_bytes(4, "big") + b"a")
        []
        >>> decoder.detach_head(), decoder.buffered
        ((b'\\x00\\x00\\x00\\x03a', 7), 0)
        """
        missing = self.missing
        if missing == 0:
            raise LocalProtocolError("no partial frame with a known length to detach")
        with memoryview(self._buffer) as view:
            head = bytes(view[self._start :])
        self._buffer = bytearray()
        self._start = 0
        return head, len(head) + missing

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame | UnknownFrame]:
        """Add received bytes; return the frames they complete, in order.

        Raises:
            RemoteProtocolError: a length over ``max_frame_bytes`` or a malformed body.
        """
        return self._consume(data, decode=True)  # type: ignore[return-value]

    def feed_raw(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Like :meth:`feed`, but return each complete frame undecoded, length prefix included.

        For relays that route frames without paying for a full decode (the guest agent forwards
        a 16 MiB ``set_vars`` to a session's process after reading only its envelope).

        Raises:
            RemoteProtocolError: a length over ``max_frame_bytes``.
        """
        return self._consume(data, decode=False)  # type: ignore[return-value]

    def _consume(
        self, data: bytes | bytearray | memoryview, *, decode: bool
    ) -> list[Frame | UnknownFrame] | list[bytes]:
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        buffer += data
        out: list[Any] = []
        start = self._start
        end = len(buffer)
        try:
            while end - start >= HEADER_BYTES:
                size = int.from_bytes(buffer[start : start + HEADER_BYTES], "big")
                if size > self.max_frame_bytes:
                    raise RemoteProtocolError(
                        f"frame length {size} exceeds the limit of {self.max_frame_bytes} bytes"
                    )
                if end - start - HEADER_BYTES < size:
                    break
                body_start = start + HEADER_BYTES
                if decode:
                    with memoryview(buffer) as view:
                        out.append(decode_body(view[body_start : body_start + size]))
                else:
                    # One copy: slicing the bytearray first would copy the frame twice.
                    with memoryview(buffer) as view:
                        out.append(bytes(view[start : body_start + size]))
                start = body_start + size
        except RemoteProtocolError as error:
            self._error = error
            self._buffer = bytearray()
            self._start = 0
            raise
        if start == end:
            buffer.clear()
            start = 0
        elif start > 65536 and start * 2 > end:
            # Drop the consumed prefix only when it dominates, so a long run of small frames
            # costs amortised O(1) per byte instead of one memmove per frame.
            del buffer[:start]
            start = 0
        self._start = start
        return out

    def eof(self) -> None:
        """Declare the end of the stream.

        Raises:
            RemoteProtocolError: the stream ended inside a frame.
        """
        if self._error is not None:
            raise self._error
        if self.buffered:
            self._error = RemoteProtocolError(
                f"stream ended inside a frame ({self.buffered} bytes of a partial frame)"
            )
            raise self._error

