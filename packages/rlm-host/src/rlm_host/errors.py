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

import trio

__all__ = [
    "GuestDiedError",
    "GuestError",
    "GuestProtocolError",
    "HandshakeError",
    "RlmError",
    "SessionClosedError",
    "SessionError",
    "single_error",
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


def single_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error a nursery's group stands for, or the group itself when there are several.

    A run's background tasks (a VM starting, a session opening) are an implementation detail:
    callers catch ``GuestError`` or ``ModelError``, not an ``ExceptionGroup`` around them.
    ``Cancelled`` leaves are dropped: they are what the other tasks got when one failed.
    """
    # One error can be a leaf twice: every task waiting on a failed part re-raises its error.
    leaves = list({id(error): error for error in _leaves(group) if not isinstance(error, trio.Cancelled)}.values())
    return leaves[0] if len(leaves) == 1 else group


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
