"""Errors of the protocol layer.

As in h11, a ``ProtocolError`` comes in two flavours: the peer broke the protocol
(``RemoteProtocolError``), or we asked the codec to do something invalid (``LocalProtocolError``).
After either, the decoder that raised it stays failed: a stream with one bad frame is not resynced.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Anything malformed on the wire: bad length, bad msgpack, unknown shape, size over limit."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame."""


class LocalProtocolError(ProtocolError):
    """We tried to send something that is not a valid frame (e.g. larger than the limit)."""
