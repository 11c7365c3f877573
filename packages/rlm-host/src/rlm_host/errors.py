"""The host's error hierarchy. Lower layers' errors are translated here with ``raise ... from``.

    RlmError
    ├── GuestError                    the guest or its channel failed
    │   ├── GuestDiedError            the guest/VM went away; every waiting call gets this one
    │   ├── GuestProtocolError        the guest sent bytes that are not the protocol
    │   └── HandshakeError            no valid Hello, or a protocol major we do not speak
    └── SessionError                  the guest refused a request (``ErrorFrame``: code, message)
        └── SessionClosedError        the session was closed on the host side
"""

from __future__ import annotations

__all__ = [
    "GuestDiedError",
    "GuestError",
    "GuestProtocolError",
    "HandshakeError",
    "RlmError",
    "SessionClosedError",
    "SessionError",
]


class RlmError(Exception):
    """Base of every error raised by rlm-host."""


class GuestError(RlmError):
    """The guest, or the channel to it, failed."""


class GuestDiedError(GuestError):
    """The guest is gone (process exited, VM died, channel closed).

    ``reason`` says what was observed; ``detail`` carries diagnosis such as the VM console tail.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(reason + (f"\n{detail}" if detail else ""))


class GuestProtocolError(GuestError):
    """The guest broke the wire protocol; the connection was closed."""


class HandshakeError(GuestError):
    """The guest did not complete the handshake, or speaks an incompatible protocol."""


class SessionError(RlmError):
    """The guest answered a request with an ``ErrorFrame``."""

    def __init__(self, code: str, message: str, session: str | None = None) -> None:
        self.code = code
        self.message = message
        self.session = session
        super().__init__(f"[{code}] {message}")


class SessionClosedError(SessionError):
    """The session is closed; open a new one."""

    def __init__(self, session: str) -> None:
        super().__init__("session_closed", f"session {session!r} is closed", session)
