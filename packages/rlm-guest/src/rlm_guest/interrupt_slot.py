"""Which block an interrupt is for: a word of memory the agent shares with a session process.

The agent interrupts a block with ``SIGINT``, but a signal carries no block: one sent while the
process is still taking the block from its socket would hit nothing, and one that arrives late
would hit the next block. So the agent first writes the block's call id here, then signals; the
session process stops a block only when the slot names it, and checks the slot again as each
block starts, so that an interrupt that came early still lands.

This replaced a handshake in which the session process told the agent, by a frame, that each
block had started: one frame and one wakeup of the agent per block, which cost ~0.25 ms of the
block's ~1 ms inside a TCG guest (bench: ``python -m bench.exec_hops``).
"""

from __future__ import annotations

import mmap
import signal
import struct
import threading

__all__ = ["InterruptSlot", "start_without_sigint"]

#: An armed flag and the call id, one aligned 16-byte record; call ids are 64-bit on the wire
#: (msgpack integers), signed or not, so they are stored as unsigned modulo 2**64.
_RECORD = struct.Struct("<QQ")
_MASK = (1 << 64) - 1


class InterruptSlot:
    """Shared by fork: made by the agent before it forks the session process.

    >>> slot = InterruptSlot()
    >>> slot.requested(7)
    False
    >>> slot.request(7)
    >>> slot.requested(7), slot.requested(8)
    (True, False)
    >>> slot.close()
    """

    def __init__(self) -> None:
        # Anonymous and MAP_SHARED (mmap's default): the child of a fork sees the same page.
        self._map = mmap.mmap(-1, _RECORD.size)

    def request(self, call: int) -> None:
        """The agent's side: block ``call`` is to stop (written before the signal is sent)."""
        # No lock: the write is complete before ``kill`` is called, and the session reads the
        # slot only in its SIGINT handler or as a block starts, after it took the block from the
        # socket, that is after the agent wrote the block's ``exec`` (and any request before it).
        _RECORD.pack_into(self._map, 0, 1, call & _MASK)

    def requested(self, call: int) -> bool:
        """The session's side: whether block ``call`` was asked to stop."""
        armed, wanted = _RECORD.unpack_from(self._map, 0)
        return bool(armed) and wanted == call & _MASK

    def close(self) -> None:
        self._map.close()


def start_without_sigint(thread: threading.Thread) -> None:
    """Start ``thread`` with SIGINT blocked in it, so that the agent's SIGINT reaches the
    block's (main) thread.

    A process-directed signal goes to any thread that does not block it; taken by another
    thread, it would not wake a main thread asleep in a block (``time.sleep``, a wait on a
    child): CPython runs the handler only when the main thread next executes bytecode.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        thread.start()  # the new thread inherits the mask
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
