"""The byte channel to the host: the process's stdio, or the VM's virtio-serial port.

Both are plain blocking file descriptors; the agent reads on its main thread and writes under a
lock from any thread.
"""

from __future__ import annotations

import mmap
import os
import select
import time
from typing import TextIO

__all__ = ["Channel", "DeviceChannel", "StdioChannel"]

#: Large reads keep the 16 MiB prompt path to a few dozen syscalls.
READ_CHUNK = 1 << 20


class Channel:
    """A pair of descriptors carrying frames; ``read`` returning ``b""`` means the host left."""

    #: Whether another host may connect after one leaves (a device stays; stdio ends).
    reconnects = False

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        # One buffer for every read: ``os.read(fd, 1 MiB)`` allocates (mmap) and frees 1 MiB per
        # call, and a virtio-serial port returns at most one 4 KiB buffer per read, so a 16 MiB
        # frame took 4096 such allocations, costly under TCG (bench: set_vars 16 MiB).
        self._buffer = memoryview(bytearray(READ_CHUNK))

    def wait_connected(self) -> None:
        """Block until a host is at the other end (immediate for stdio)."""

    def read(self) -> memoryview:
        """The next bytes from the host (empty: the host left); valid until the next read."""
        count = os.readv(self.read_fd, [self._buffer])
        return self._buffer[:count]

    def read_into(self, buffer: bytearray | mmap.mmap, start: int, end: int) -> bool:
        """Fill ``buffer[start:end]`` in a tight loop; False if the host left first.

        The rest of a large frame is read here rather than through the agent's event loop: a
        virtio-serial port gives at most 4 KiB per read, and one loop turn per 4 KiB made a
        16 MiB ``set_vars`` several times slower than the channel under TCG. Reading straight
        into the frame's own buffer also saves the copies of growing a receive buffer.
        """
        with memoryview(buffer) as view:
            while start < end:
                read = os.readv(self.read_fd, [view[start:end]])
                if read == 0:
                    return False
                start += read
        return True

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.write_fd, view)
            view = view[written:]


class StdioChannel(Channel):
    """Frames over the process's stdin/stdout (local isolation and the conformance kit).

    The protocol gets private duplicates of descriptors 0 and 1; descriptor 1 is then pointed at
    stderr and 0 at /dev/null, so a subprocess or C library that writes to "stdout" can never
    corrupt the frame stream.
    """

    def __init__(self) -> None:
        read_fd = os.dup(0)
        write_fd = os.dup(1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        super().__init__(read_fd, write_fd)

    @staticmethod
    def diagnostic_stream() -> TextIO:
        return open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)


class DeviceChannel(Channel):
    """Frames over a virtio-serial port such as ``/dev/virtio-ports/rlm.agent``.

    The kernel reports ``POLLHUP`` on the port while no host is connected to the QEMU chardev,
    and ``read`` returns ``b""`` when the host goes away; the agent then waits for the next host.
    """

    reconnects = True

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        super().__init__(fd, fd)

    def wait_connected(self) -> None:
        poller = select.poll()
        # virtio_console reports POLLOUT once a host is connected and POLLHUP while none is;
        # without POLLOUT in the mask, a connected but silent host is only noticed by timeout.
        poller.register(self.read_fd, select.POLLIN | select.POLLOUT | select.POLLHUP)
        while True:
            events = poller.poll(1000)
            if events and not any(mask & select.POLLHUP for _, mask in events):
                return
            # Host not connected yet: POLLHUP is level-triggered, so back off instead of spinning.
            time.sleep(0.01)
