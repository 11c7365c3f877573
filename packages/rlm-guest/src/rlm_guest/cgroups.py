"""One cgroup (v2) per session process, in a VM: a cap on processes and an atomic kill.

The ``/proc`` scans of :mod:`.processes` race with a fork bomb (it forks between a scan and a
kill) and miss nothing only eventually. A cgroup closes both gaps: ``pids.max`` stops a fork bomb
at a fixed number of processes, ``memory.max`` with ``memory.oom.group`` makes a block that eats
the guest's memory cost its own session only (the whole session is killed at once, never the
agent), and ``cgroup.kill`` kills every member at once, including processes that left their
session with ``setsid``.

Used only when the agent runs on a device (a VM, where it is root and alone): on a development
machine (``--stdio``) the host's cgroups are none of its business, and :class:`SessionCgroups`
is then disabled; everything still works through the ``/proc`` scans.
"""

from __future__ import annotations

import ctypes
import os
import select
import time

__all__ = ["SessionCgroups", "prepare_cgroups"]

_ROOT = "/sys/fs/cgroup"

#: Processes one session may have at once: plenty for ``make -j`` or a process pool, few
#: enough that a fork bomb stops long before the guest runs out of memory.
DEFAULT_PIDS_MAX = 512

#: Share of the guest's memory one session may use before its processes are killed together.
MEMORY_SHARE = 0.8

#: A cgroup made before the VM snapshot and never removed (see :func:`prepare_cgroups`).
RESIDENT = f"{_ROOT}/rlm-resident"



def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _memory_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemTotal in /proc/meminfo")


def prepare_cgroups() -> bool:
    """Set up the cgroup tree and make one memory cgroup that stays, before the VM snapshot.

    Why: the first memory cgroup of a kernel's life switches on the kernel's memory-cgroup
    accounting (static keys: ``memcg_kmem_enabled_key``; ``memcg_sockets_enabled_key`` counts
    the memory cgroups in being), and the kernel switches a static key by rewriting its own
    code while the other CPUs run (``text_poke_bp``: an ``int3`` written over each site, then
    the new instruction). Made after a restore, that rewrite ran while the other vCPU was in the
    very code being rewritten (a session process just forked), and QEMU's multi-threaded TCG
    sometimes went on executing its stale translation of the ``int3``: both vCPUs trapped on it
    for ever (``kmem_cache_alloc_lru+0x62``, a soft lockup on both CPUs; docs/decisions.md).
    Made here, in the snapshot, the switch happens once, in the boot that makes the snapshot,
    and stays on in every restored VM: a cgroup that is never removed keeps the count above 0.
    False when cgroups are not available (sessions then run without them).
    """
    if not SessionCgroups(True).enabled:
        return False
    try:
        os.makedirs(RESIDENT, exist_ok=True)
    except OSError:
        return False
    return True


class SessionCgroups:
    """Creates, fills and kills the per-session cgroups (``/sys/fs/cgroup/rlm-<n>``)."""

    def __init__(self, enabled: bool, pids_max: int = DEFAULT_PIDS_MAX) -> None:
        self.pids_max = pids_max
        self.memory_max: int | None = None
        self.enabled = enabled and self._setup()

    def _setup(self) -> bool:
        try:
            if not os.path.exists(f"{_ROOT}/cgroup.controllers"):
                # favordynmods (Linux 6.0+): moving a process into a cgroup (every new session
                # process) otherwise waits for an RCU grace period, 16-25 ms under TCG against
                # 5-6 ms with it (8 moves each in the VM). Its price, a plain instead of a
                # per-CPU lock in every fork and exit, did not show there (fork 9-10 ms either
                # way). An older kernel refuses the option: mounted without it.
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.mount(b"cgroup2", _ROOT.encode(), b"cgroup2", 0, b"favordynmods") != 0:
                    if libc.mount(b"cgroup2", _ROOT.encode(), b"cgroup2", 0, None) != 0:
                        return False
            with open(f"{_ROOT}/cgroup.controllers") as f:
                available = f.read().split()
            wanted = [c for c in ("pids", "memory") if c in available]
            if "pids" not in wanted:
                return False
            _write(f"{_ROOT}/cgroup.subtree_control", " ".join("+" + c for c in wanted))
            if "memory" in wanted:
                self.memory_max = int(_memory_total() * MEMORY_SHARE)
            return True
        except OSError:
            return False

    def make(self, name: str) -> str | None:
        """Create and configure the cgroup for the next session process; None without cgroups.

        The process joins it itself (:meth:`join`), first thing after its fork: the move costs
        several milliseconds, which the agent's loop then does not wait for.
        """
        if not self.enabled:
            return None
        path = f"{_ROOT}/rlm-{name}"
        try:
            os.mkdir(path)
            _write(f"{path}/pids.max", str(self.pids_max))
            if self.memory_max is not None:
                _write(f"{path}/memory.max", str(self.memory_max))
                _write(f"{path}/memory.oom.group", "1")
        except OSError:
            try:
                os.rmdir(path)
            except OSError:
                pass
            return None
        return path

    @staticmethod
    def join(path: str) -> None:
        """In a session process before it runs any other code: move into its cgroup.

        When the move fails the cgroup is removed, so that the agent, finding no cgroup to kill,
        falls back to killing the session's processes by ``/proc`` (``processes.kill_session``).
        """
        try:
            _write(f"{path}/cgroup.procs", "0")
        except OSError:
            try:
                os.rmdir(path)
            except OSError:
                pass

    @staticmethod
    def members(path: str) -> list[int]:
        try:
            with open(f"{path}/cgroup.procs") as f:
                return [int(line) for line in f if line.strip()]
        except OSError:
            return []

    @classmethod
    def kill(cls, path: str, timeout: float = 2.0) -> bool:
        """Kill every process of the cgroup at once, wait until it is empty, remove it.

        False when the kill could not be asked for (the cgroup is gone or unusable): the caller
        must then find the processes itself.
        """
        if not cls.start_kill(path):
            return False
        cls.remove(path, timeout)
        return True

    @staticmethod
    def start_kill(path: str) -> bool:
        """Send SIGKILL to every process of the cgroup (``cgroup.kill``) without waiting.

        Nothing in the cgroup runs model code again after this returns True: the kernel
        delivers the signal to every member, and new forks into the cgroup fail.
        """
        try:
            _write(f"{path}/cgroup.kill", "1")
        except OSError:
            return False
        return True

    @staticmethod
    def remove(path: str, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout``) until a killed cgroup is empty, then remove it."""
        _wait_empty(path, timeout)
        try:
            os.rmdir(path)
        except OSError:
            pass


def _wait_empty(path: str, timeout: float) -> None:
    # cgroup.events signals a change of "populated" with POLLPRI: waiting on it wakes up the
    # moment the last process is gone, where polling in 2 ms sleeps cost a close ~5 ms under TCG.
    deadline = time.monotonic() + timeout
    try:
        events = open(f"{path}/cgroup.events", "rb", buffering=0)
    except OSError:
        return
    with events:
        poller = select.poll()
        poller.register(events, select.POLLPRI)
        while True:
            events.seek(0)
            # Reading also re-arms the notification.
            if b"populated 0" in events.read():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            poller.poll(min(left, 0.05) * 1000)
