"""Typed errors of the VM layer.

Everything the VM layer raises derives from :class:`VMError`, so a caller can catch
one type at the boundary (the CLI prints it, the engine turns it into a failed run).
"""

from __future__ import annotations

from ..errors import GuestDiedError, GuestError, RlmError

__all__ = [
    "BootTimeoutError",
    "ImageBuildError",
    "ImageNotFoundError",
    "VMDiedError",
    "VMLockupError",
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


class VMLockupError(VMDiedError):
    """The guest kernel locked up, so the host ended the VM.

    The kernel reported a CPU stuck (``lockup`` is its console line), and QEMU had a host CPU
    for ``ran`` seconds of that span: not a guest the host starved (see :mod:`.lockup`).
    ``during_start``: it happened before the agent was ready (the start was made once more
    before this was raised).
    """

    def __init__(self, message: str, *, returncode: int | None, console_tail: str, lockup: str, ran: float, during_start: bool) -> None:
        self.lockup = lockup
        self.ran = ran
        self.during_start = during_start
        super().__init__(message, returncode=returncode, console_tail=console_tail)


class BootTimeoutError(VMError, GuestError):
    """The guest agent did not become ready within the boot timeout (a ``GuestError``: to a
    caller, a guest that never came up is a failed guest)."""

    def __init__(self, message: str, *, console_tail: str) -> None:
        self.console_tail = console_tail
        super().__init__(message + ("\n--- guest console (tail) ---\n" + console_tail if console_tail else ""))
