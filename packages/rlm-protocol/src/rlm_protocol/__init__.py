"""rlm-protocol: the wire protocol between the rlm host and its guest agents.

Frames are frozen msgspec Structs in one tagged union (``kind``); the wire is a 4-byte big-endian
length followed by a msgpack body. This package is sans-IO: bytes in, frames out.

>>> from rlm_protocol import Exec, FrameDecoder, encode
>>> decoder = FrameDecoder()
>>> data = encode(Exec(session="s1", call=1, code="print(6*7)"))
>>> decoder.feed(data[:5]), decoder.feed(data[5:])
([], [Exec(session='s1', call=1, code='print(6*7)', language='python', timeout=None)])
"""

from __future__ import annotations

from .codec import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER_BYTES,
    Envelope,
    FrameDecoder,
    FrameEncoder,
    decode_body,
    decode_envelope,
    encode,
)
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .frames import (
    CAPABILITIES,
    GUEST_FRAMES,
    HOST_FRAMES,
    AnyFrame,
    Bye,
    Captured,
    CloseSession,
    ErrorCode,
    ErrorFrame,
    Exec,
    ExecError,
    ExecResult,
    FinalValue,
    Frame,
    Hello,
    HostCall,
    HostCallError,
    HostCallReply,
    Interrupt,
    Language,
    Limits,
    OpenSession,
    SessionClosed,
    SessionOpened,
    SetVars,
    Shutdown,
    UnknownFrame,
    VarsSet,
    VarsState,
    Welcome,
)
from .metadata import (
    OBSERVATION_PREFIX_CHARS,
    PROMPT_PREFIX_CHARS,
    OutputCapture,
    TextMeta,
    captured_metadata,
    count_lines,
    text_metadata,
)
from .version import PROTOCOL_MAJOR, PROTOCOL_MINOR, PROTOCOL_VERSION, is_compatible

__all__ = [
    "AnyFrame",
    "Bye",
    "CAPABILITIES",
    "Captured",
    "CloseSession",
    "DEFAULT_MAX_FRAME_BYTES",
    "Envelope",
    "ErrorCode",
    "ErrorFrame",
    "Exec",
    "ExecError",
    "ExecResult",
    "FinalValue",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "GUEST_FRAMES",
    "HEADER_BYTES",
    "HOST_FRAMES",
    "Hello",
    "HostCall",
    "HostCallError",
    "HostCallReply",
    "Interrupt",
    "Language",
    "Limits",
    "LocalProtocolError",
    "OBSERVATION_PREFIX_CHARS",
    "OpenSession",
    "OutputCapture",
    "PROMPT_PREFIX_CHARS",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "PROTOCOL_VERSION",
    "ProtocolError",
    "RemoteProtocolError",
    "SessionClosed",
    "SessionOpened",
    "SetVars",
    "Shutdown",
    "TextMeta",
    "UnknownFrame",
    "VarsSet",
    "VarsState",
    "Welcome",
    "captured_metadata",
    "count_lines",
    "decode_body",
    "decode_envelope",
    "encode",
    "is_compatible",
    "text_metadata",
]
