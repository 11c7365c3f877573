"""The routing fields of a frame of which only the start has arrived.

A 16 MiB ``set_vars`` takes a few hundred milliseconds to cross the channel; knowing its session
from its first read lets the agent tell that session's process to get its memory ready while the
rest arrives (``shared.make_room``). msgspec decodes whole messages only, so the few scalar fields
in front of the frame's large value are read here by hand: a msgpack map whose keys are strings,
read pair by pair until the first value that is not a string, an integer, a boolean or nil (the
large value), or until the bytes run out. Frames that this package's codec encodes put ``kind``
first and then the fields in their declared order, ``session`` and ``call`` before ``values`` or
``value``. A frame laid out otherwise gives ``None``: it is then routed when whole, as always.
"""

from __future__ import annotations

from rlm_protocol import HEADER_BYTES, Envelope

__all__ = ["routing_in_head"]


class _Truncated(Exception):
    """The head ends before the value being read."""


class _NotScalar(Exception):
    """The next value is not one that can be routed on."""


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, count: int) -> memoryview:
        end = self.at + count
        if end > len(self.data):
            raise _Truncated
        chunk = self.data[self.at : end]
        self.at = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def value(self) -> str | int | bool | None:
        first = self.uint(1)
        if first <= 0x7F:
            return first
        if first >= 0xE0:
            return first - 0x100
        if 0xA0 <= first <= 0xBF:
            return self.text(first & 0x1F)
        match first:
            case 0xC0:
                return None
            case 0xC2 | 0xC3:
                return first == 0xC3
            case 0xD9 | 0xDA | 0xDB:
                return self.text(self.uint(1 << (first - 0xD9)))
            case 0xCC | 0xCD | 0xCE | 0xCF:
                return self.uint(1 << (first - 0xCC))
            case 0xD0 | 0xD1 | 0xD2 | 0xD3:
                return int.from_bytes(self.take(1 << (first - 0xD0)), "big", signed=True)
        raise _NotScalar

    def text(self, size: int) -> str:
        try:
            return str(self.take(size), "utf-8")
        except UnicodeDecodeError:
            raise _NotScalar from None


def routing_in_head(head: bytes | bytearray | memoryview) -> Envelope | None:
    """``kind``, ``session`` and ``call`` of a framed message (length prefix included) from the
    bytes received so far, when they come before its first large or nested value.

    >>> from rlm_protocol import SetVars, encode
    >>> data = encode(SetVars(session="s1", call=7, values={"prompt": "x" * 100_000}))
    >>> routing_in_head(data[:64])
    Envelope(kind='set_vars', session='s1', call=7)
    >>> routing_in_head(data[:29]) is None  # cut inside the session's name
    True
    """
    reader = _Reader(memoryview(head)[HEADER_BYTES:])
    fields: dict[str, str | int | bool | None] = {}
    try:
        first = reader.uint(1)
        if 0x80 <= first <= 0x8F:
            pairs = first & 0x0F
        elif first in (0xDE, 0xDF):
            pairs = reader.uint(2 if first == 0xDE else 4)
        else:
            return None
        for _ in range(pairs):
            key = reader.value()
            if not isinstance(key, str):
                return None
            fields[key] = reader.value()
    except (_Truncated, _NotScalar):
        pass
    kind, session, call = fields.get("kind"), fields.get("session"), fields.get("call")
    if not isinstance(kind, str) or not isinstance(session, str):
        return None
    return Envelope(kind=kind, session=session, call=call if type(call) is int else None)
