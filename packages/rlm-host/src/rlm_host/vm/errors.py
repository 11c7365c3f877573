"""Typed errors of the VM layer.

Everything the VM layer raises derives from :class:`VMError`, so a caller can catch
one type at the boundary (the CLI prints it, the engine turns it into a failed run).
"""

from __future__ import annotations

from ..errors import GuestDiedError, RlmError

__all__ = [
    "BootTimeoutError",
    "ImageBuildError",
    "ImageNotFoundError",
    "VMDiedError",
    "VMError",
]


class VMError(RlmError):
    """Base class of every error raised by :mod:`rlm_host.vm` (an ``RlmError``)."""


class ImageBuildError(VMError):
    """Building a guest image failed; the message says which step and how to fix it."""


class ImageNotFoundError(VMError):
    """No built guest image is in the cache; ``rlm image build`` makes one."""


class VMDiedError(VMError, GuestDiedError):
    """QEMU exited (or was killed) while the VM was in use.

    Also a :class:`~rlm_host.errors.GuestDiedError`: to a caller, a dead VM is a dead guest.
    ``returncode`` is QEMU's exit status (negative: killed by that signal) and
    ``console_tail`` the last lines of the guest console, which usually say why.
    """

    def __init__(self, message: str, *, returncode: int | None, console_tail: str) -> None:
        self.returncode = returncode
        self.console_tail = console_tail
        detail = "--- guest console (tail) ---\n" + console_tail if console_tail else ""
        GuestDiedError.__init__(self, f"{message} (qemu exit status {returncode})", detail)


class BootTimeoutError(VMError):
    """The guest agent did not become ready within the boot timeout."""

    def __init__(self, message: str, *, console_tail: str) -> None:
        self.console_tail = console_tail
        super().__init__(message + ("\n--- guest console (tail) ---\n" + console_tail if console_tail else ""))
