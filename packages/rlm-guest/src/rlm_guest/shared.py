"""Large frames from the host handed to a session process in shared memory, not over its socket.

A 16 MiB ``set_vars`` used to be read by the agent into a fresh buffer, copied through the
session's socketpair and read again into a fresh buffer in the session process. Under TCG each of
those steps cost about as much as the virtio-serial transfer itself (bench, set_vars 16 MiB:
socketpair ~0.17 s; first touch of 16 MiB of fresh memory ~0.15-0.19 s). Instead the agent reads
the frame straight into a memfd that it keeps mapped (its pages stay allocated from one frame to
the next), sends the session process a read-only descriptor of it (``SCM_RIGHTS``) behind a small
``shared_frame`` notice, and the session process decodes the frame from its own mapping of the
same pages and says ``buffer_released`` when it no longer needs them.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
from array import array

from rlm_protocol import HEADER_BYTES, Frame, RemoteProtocolError, UnknownFrame, decode_body

__all__ = [
    "BufferPool", "BufferReleased", "FrameComing", "KeepRef", "SharedBuffer", "SharedFrame", "make_room", "read_kept",
    "read_shared", "received_fds", "write_kept",
]

#: A buffer that grew beyond this is not kept for the next frame: one 128 MiB frame must not pin
#: 128 MiB of the guest's memory for the rest of its life.
KEEP_AT_MOST = 32 << 20

#: Most descriptors one message between the agent and a session process carries: a notice has
#: one, a ``bind_refs`` one per name (the agent refuses more names than this in one frame).
MAX_FDS_PER_MESSAGE = 16

#: Room for the descriptors of one ``recvmsg``.
ANCILLARY_BYTES = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * array("i").itemsize)


class SharedFrame(Frame, frozen=True, tag="shared_frame"):
    """Agent to session process only: the next received descriptor holds one whole framed
    message (length prefix included) from the host."""

    session: str


class FrameComing(Frame, frozen=True, tag="frame_coming"):
    """Agent to session process only, ahead of a ``shared_frame``: the next received descriptor
    holds the start of a large frame for this session, length prefix included; its end is still
    crossing the channel (``make_room``)."""

    session: str


class BufferReleased(Frame, frozen=True, tag="buffer_released"):
    """Session process to agent only: the oldest lent buffer may be reused."""

    session: str


class KeepRef(Frame, frozen=True, tag="keep_ref"):
    """Session process to agent only, with a memfd holding a prompt's UTF-8 bytes: keep it under
    ``ref`` (protocol 1.1, ``prompt_ref``) until a ``bind_refs`` hands it to another session."""

    session: str
    ref: str


def write_kept(data: bytes) -> int:
    """A new memfd holding ``data`` (its descriptor; the caller closes it)."""
    fd = os.memfd_create("rlm-prompt", os.MFD_CLOEXEC)
    try:
        with memoryview(data) as view:
            written = 0
            while written < len(view):
                written += os.write(fd, view[written:])
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_kept(fd: int) -> str:
    """The text in a kept memfd (``write_kept``); the descriptor is closed."""
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return ""
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as view:
            return str(view, "utf-8", "surrogatepass")
    except (OSError, ValueError) as error:
        raise RemoteProtocolError(f"unreadable kept prompt: {error}") from error
    finally:
        os.close(fd)


class SharedBuffer:
    """A memfd and the agent's writable mapping of it."""

    def __init__(self, capacity: int, *, populate: bool = False) -> None:
        self.fd = os.memfd_create("rlm-frame", os.MFD_CLOEXEC)
        self.capacity = 0
        self.map = mmap.mmap(-1, 1)  # replaced at once by ``grow``
        self.grow(capacity, populate=populate)

    def grow(self, capacity: int, *, populate: bool = False) -> None:
        """Make room for ``capacity`` bytes; the pages already touched stay allocated.

        ``populate`` allocates and maps every page now (``MAP_POPULATE``) rather than on first
        touch, one page fault at a time.
        """
        if capacity <= self.capacity:
            return
        self.map.close()
        os.ftruncate(self.fd, capacity)
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
        self.map = mmap.mmap(self.fd, capacity, flags=flags)
        self.capacity = capacity

    def reader_fd(self) -> int:
        """A new read-only descriptor of the buffer, for the session process."""
        # Reopened through /proc rather than dup'ed: a dup would share the read-write open file,
        # and a session could then write into frames lent later to other sessions.
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class BufferPool:
    """The one shared buffer the agent keeps between large frames (the largest seen, up to
    ``KEEP_AT_MOST``): its pages are what the next large frame saves faulting in."""

    def __init__(self, kept: SharedBuffer | None = None) -> None:
        self._kept = kept

    def take(self, size: int) -> SharedBuffer:
        """A buffer of at least ``size`` bytes: the kept one (grown) or a new one."""
        buffer, self._kept = self._kept, None
        if buffer is None:
            return SharedBuffer(size)
        buffer.grow(size)
        return buffer

    def give_back(self, buffer: SharedBuffer) -> None:
        """Keep the larger of ``buffer`` and the kept one; close the other."""
        if buffer.capacity > KEEP_AT_MOST:
            buffer.close()
            return
        if self._kept is not None:
            if self._kept.capacity >= buffer.capacity:
                buffer.close()
                return
            self._kept.close()
        self._kept = buffer

    def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None


#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Whether this process's heap keeps the memory of freed large blocks (``_keep_freed_memory``).
_heap_keeps: bool | None = None


def _keep_freed_memory() -> bool:
    """Make glibc's malloc serve blocks up to ``KEEP_AT_MOST`` from the heap and keep freed heap
    memory up to twice that, instead of mapping and unmapping each large block; False where
    that cannot be asked for (not glibc)."""
    global _heap_keeps
    if _heap_keeps is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _heap_keeps = False
        else:
            # 32 MiB is the most glibc accepts for the mmap threshold; the same bounds that
            # its own dynamic threshold reaches once a 16 MiB block was freed.
            _heap_keeps = bool(
                mallopt(_M_MMAP_THRESHOLD, KEEP_AT_MOST) and mallopt(_M_TRIM_THRESHOLD, 2 * KEEP_AT_MOST)
            )
    return _heap_keeps


def make_room(fd: int) -> None:
    """Fault in the heap memory that decoding the frame whose start is in a lent buffer will
    take; the descriptor is closed.

    Decoding a 16 MiB prompt into a new ``str`` in a process that never held one writes 16 MiB
    of fresh pages, which the guest kernel must fault in and zero one by one: 45-85 ms under
    TCG, against 11-22 ms for the decode into memory used before (bench.set_vars_stages). Done
    here, on the session process's reader thread while the frame is still crossing the
    channel, that cost runs beside the transfer instead of after it: the block allocated and
    freed here stays in the heap (``_keep_freed_memory``) and the decode, on the same thread
    and so in the same malloc arena, gets it back.
    """
    global _coming
    try:
        size = int.from_bytes(os.pread(fd, HEADER_BYTES, 0), "big")
        if size > KEEP_AT_MOST:
            return
        if _keep_freed_memory():
            bytearray(size)  # zeroed, so every page is faulted in; freed at once
        # The buffer's mapping too, for ``read_shared`` (its page tables filled now as well).
        _forget_coming()
        stat = os.fstat(fd)
        if HEADER_BYTES + size <= stat.st_size:
            _coming = ((stat.st_dev, stat.st_ino), _map_frame(fd, HEADER_BYTES + size))
    except (OSError, ValueError):
        pass  # only a head start: ``read_shared`` maps the buffer itself and reports errors
    finally:
        os.close(fd)


#: The mapping ``make_room`` made of the buffer its frame is coming in, for ``read_shared``:
#: which file it maps, and the map.
_coming: tuple[tuple[int, int], mmap.mmap] | None = None


def _forget_coming() -> None:
    global _coming
    if _coming is not None:
        _coming[1].close()
        _coming = None


def _map_frame(fd: int, length: int) -> mmap.mmap:
    # Mapped with its page tables filled in one call (MAP_POPULATE): the decode would otherwise
    # take one page fault per 4 KiB, about 10 ms for 16 MiB under TCG (bench.set_vars_stages).
    # Only the frame's own pages: the buffer may be larger.
    return mmap.mmap(fd, length, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)


def received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors of a ``recvmsg``'s ancillary data."""
    fds = array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def read_shared(fd: int, max_frame_bytes: int) -> Frame | UnknownFrame:
    """Decode the frame in a lent buffer; the descriptor is closed."""
    global _coming
    coming, _coming = _coming, None
    try:
        header = os.pread(fd, HEADER_BYTES, 0)
        size = int.from_bytes(header, "big")
        stat = os.fstat(fd)
        if len(header) < HEADER_BYTES or size > max_frame_bytes or HEADER_BYTES + size > stat.st_size:
            raise RemoteProtocolError(f"shared frame of {size} bytes does not fit its buffer")
        if coming is not None and coming[0] == (stat.st_dev, stat.st_ino) and len(coming[1]) == HEADER_BYTES + size:
            mapped, coming = coming[1], None
        else:
            mapped = _map_frame(fd, HEADER_BYTES + size)
        with mapped, memoryview(mapped) as view:
            # Released explicitly: a slice kept alive by a traceback would keep the map open.
            with view[HEADER_BYTES : HEADER_BYTES + size] as body:
                return decode_body(body)
    except (OSError, ValueError) as error:
        raise RemoteProtocolError(f"unreadable shared frame: {error}") from error
    finally:
        os.close(fd)
        if coming is not None:
            coming[1].close()
