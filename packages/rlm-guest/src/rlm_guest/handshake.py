"""The agent's side of the handshake (PROTOCOL.md, "Handshake"): its ``hello``, the host's
``welcome`` checked, and the limits it announces."""

from __future__ import annotations

import os
import platform

from rlm_protocol import (
    CAPABILITIES,
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    Hello,
    Limits,
    RemoteProtocolError,
    Welcome,
    is_compatible,
)

from . import __version__

__all__ = ["DEFAULT_LIMITS", "check_welcome", "hello"]

DEFAULT_LIMITS = Limits(
    max_frame_bytes=DEFAULT_MAX_FRAME_BYTES,
    # The model only ever sees an 800-character prefix; a million characters per stream keeps
    # enough for the trajectory while a block that prints gigabytes costs neither side memory.
    max_output_chars=1_000_000,
    max_sessions=1024,
)


def hello(limits: Limits) -> Hello:
    """The agent's first frame on every connection."""
    return Hello(
        protocol=PROTOCOL_VERSION,
        agent="rlm-guest",
        agent_version=__version__,
        # Every capability of the protocol but the bash REPL: this guest's REPL is Python.
        capabilities=tuple(c for c in CAPABILITIES if c != "repl.bash"),
        limits=limits,
        runtime={
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "kernel": platform.release(),
            "pid": str(os.getpid()),
        },
    )


def check_welcome(frame: Welcome) -> None:
    """Raises:
    RemoteProtocolError: the host speaks another major version.
    """
    if not is_compatible(frame.protocol):
        raise RemoteProtocolError(
            f"host speaks protocol {frame.protocol[0]}.{frame.protocol[1]}, this guest "
            f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: majors differ"
        )
