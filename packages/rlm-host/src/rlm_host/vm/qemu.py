"""The QEMU launcher: one guest VM owned by a trio ``async with``.

    async with open_vm(VMConfig(memory_mb=1536)) as vm:
        stream = vm.stream          # trio.SocketStream on the agent's virtio-serial port
        print(vm.timings)           # boot-to-ready breakdown

Channels: the agent speaks on a virtio-serial port whose QEMU chardev is a unix socket we
connect to (DESIGN.md: ~450x faster than the emulated UART the seed used); the serial
console goes to a log file, used for diagnosis (:meth:`VM.console_tail`) and for the boot
breakdown (``rlm-init:`` lines carry the guest's uptime).

Lifetime: QEMU gets ``PR_SET_PDEATHSIG=SIGKILL`` (it dies with the host process even on
SIGKILL of the host) and is killed in ``finally``. A watcher task waits on a pidfd of the
QEMU process, so an exit is noticed at once; it cancels the ``async with`` body, which then
raises :class:`~.errors.VMDiedError` with the console tail. A console follower, for the VM's
whole life, times the boot phases and ends a VM whose kernel locked up (:mod:`.lockup`).

(Over the ~400 lines a module should have: the start, the restore, the watcher, the console
follower and the end share one VM's state and its one nursery; the pure parts live in
``command``, ``console``, ``timings``, ``lockup`` and ``qmp``.)
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio

from .accel import AccelChoice, find_qemu, probe_accel
from .command import VMConfig, default_cpus, qemu_command, set_pdeathsig
from .console import INIT_LINE, console_excerpt, first_kernel_report, read_console_end
from .errors import BootTimeoutError, VMDiedError, VMError, VMLockupError
from .lockup import AFTER_READY_LIMIT, DURING_START_LIMIT, Lockup, LockupWatch
from .qmp import QMPClient, QMPClosedError, cpu_registers
from .run_dir import new_run_dir
from .timings import BootTimings, InitLine, boot_timings
from ..errors import GuestDiedError, single_error
from ..starvation import thread_waits

__all__ = ["BootTimings", "VM", "VMConfig", "console_excerpt", "default_cpus", "open_vm", "qemu_command"]

_log = logging.getLogger(__name__)


class VM:
    """A running guest. Made by :func:`open_vm`; valid inside its ``async with`` only."""

    def __init__(self, process: subprocess.Popen[bytes], run_dir: Path, console: Path, command: list[str]) -> None:
        self.process = process
        self.run_dir = run_dir
        self.console_path = console
        self.command = command
        self.timings = BootTimings()
        self._stream: trio.SocketStream | None = None
        self._closing = False
        self._died = False
        self._ready = False
        self._lockups = LockupWatch()
        self._lockup: Lockup | None = None
        self._lockup_during_start = False
        self._lockup_cpus = ""
        self._console_lock = trio.Lock()
        self._console_offset = 0
        self._console_partial = b""
        #: (before ready, after ready): see ``VMConfig.start_lockup_limit``/``lockup_limit``.
        self.lockup_limits = (DURING_START_LIMIT, AFTER_READY_LIMIT)
        self._resumed_at: float | None = None
        self._spawned = 0.0
        self._init_lines: list[InitLine] = []

    @property
    def pid(self) -> int:
        """Process id of QEMU."""
        return self.process.pid

    @property
    def stream(self) -> trio.SocketStream:
        """The agent's byte stream (virtio-serial port), connected and ready."""
        if self._stream is None:
            raise VMError("the VM's agent stream is not connected yet")
        return self._stream

    def extra_socket(self, name: str) -> Path:
        """The unix socket of an extra channel: a name of ``VMConfig.extra_ports`` or ``uart1``."""
        return self.run_dir / f"{name}.sock"

    @property
    def returncode(self) -> int | None:
        """QEMU's exit status once it has exited, else None."""
        return self.process.poll()

    def console_tail(self, max_lines: int = 40) -> str:
        """The last ``max_lines`` lines of the guest console log, after the headlines of the
        kernel's reports (panic, lockup, stall, oops) that came before them."""
        return console_excerpt(read_console_end(self.console_path), max_lines)

    def cpu_waits(self) -> dict[int, float]:
        """Seconds each QEMU thread has waited for a host CPU (for
        ``GuestConnection.open(cpu_waits=...)``; see ``rlm_host.starvation``)."""
        return thread_waits(self.pid)

    async def death_detail(self) -> str:
        """QEMU's exit status and the console tail (for ``GuestConnection.open(death_detail=...)``).

        The agent's socket closes a moment before QEMU is reaped, so this waits briefly for
        the exit status (cancellable).
        """
        for _ in range(50):
            if self.process.poll() is not None:
                break
            await trio.sleep(0.01)
        code = self.process.poll()
        state = f"qemu (pid {self.pid}) " + ("is still running" if code is None else f"exited with status {code}")
        if self._lockup is not None:
            state = self._lockup_message() + "; " + state
        return state + "\n--- guest console (tail) ---\n" + self.console_tail()

    def _report_kernel_complaints(self) -> None:
        # A guest that lived through a kernel report (a soft lockup, an RCU stall: a slow TCG
        # guest on a loaded host) is a warning, not a death; the report says where it was.
        if report := first_kernel_report(read_console_end(self.console_path)):
            _log.warning("the guest kernel complained (the VM lived on):\n%s", report)

    def qemu_stderr(self) -> str:
        """What QEMU itself printed (argument errors, assertion failures)."""
        try:
            return (self.run_dir / "qemu.stderr").read_text(errors="replace")[-4000:].strip()
        except OSError:
            return ""

    def died_error(self, message: str = "the VM's QEMU process exited") -> VMDiedError:
        """A :class:`VMDiedError` describing the current state (a :class:`VMLockupError` when
        the host ended the VM for a lockup)."""
        if self._lockup is not None:
            lockup = self._lockup
            return VMLockupError(
                self._lockup_message(), returncode=self.process.poll(), console_tail=self.console_tail(),
                lockup=lockup.line, ran=lockup.ran, during_start=self._lockup_during_start,
            )
        if stderr := self.qemu_stderr():
            message += f"; qemu said: {stderr}"
        return VMDiedError(message, returncode=self.process.poll(), console_tail=self.console_tail())

    def _lockup_message(self) -> str:
        assert self._lockup is not None
        when = "while starting" if self._lockup_during_start else "while running"
        return (
            f"the guest kernel locked up {when}, so the host ended the VM: {self._lockup.line!r}, "
            f"and QEMU had a host CPU for {self._lockup.ran:.0f} s of that span"
            + (f"; vCPUs at the end:\n{self._lockup_cpus}\n" if self._lockup_cpus else "")
        )

    def kill(self) -> None:
        """Send QEMU SIGKILL (idempotent, does not wait: see :meth:`terminate`)."""
        self._closing = True
        if self.process.poll() is None:
            self.process.kill()

    async def terminate(self) -> None:
        """Kill QEMU and wait until it is gone (at most 10 s, in a worker thread: SIGKILL cannot
        be refused, but a process in uninterruptible sleep dies only when its I/O ends)."""
        self.kill()
        await trio.to_thread.run_sync(_wait_for_exit, self.process, 10.0)

    async def _watch(self, cancel_scope: trio.CancelScope) -> None:
        # pidfd becomes readable when the process exits: no polling, no SIGCHLD handler.
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            pidfd = None  # QEMU already exited (and was reaped by a poll()): nothing to wait for
        if pidfd is not None:
            try:
                await trio.lowlevel.wait_readable(pidfd)
            finally:
                os.close(pidfd)
        self.process.wait()
        if not self._closing:
            self._died = True
            cancel_scope.cancel()

    async def _follow_console(self) -> None:
        # For the VM's whole life: the rlm-init lines (boot timings) and the kernel's lockup
        # reports. File and /proc reads run in a worker thread, off the trio thread; every 10 ms
        # while starting (each line's time is a boot figure), every 0.25 s once ready.
        next_sample = 0.0
        while self._lockup is None:
            now = time.monotonic()
            sample = now >= next_sample
            if sample:
                next_sample = now + 1.0
            await self._drain_console(sample)
            await trio.sleep(0.25 if self._ready else 0.01)

    async def _drain_console(self, sample: bool = False) -> None:
        """Take what the console got since the last call (and, if ``sample``, QEMU's CPU waits);
        end the VM if a line in it reports a lockup the host believes."""
        async with self._console_lock:
            if self._lockup is not None:
                return
            now = time.monotonic()
            chunk, waits = await trio.to_thread.run_sync(self._read_console, self._console_offset, sample)
            if sample:
                self._lockups.sample(now, waits)
            if not chunk:
                return
            self._console_offset += len(chunk)
            *lines, self._console_partial = (self._console_partial + chunk).split(b"\n")
            for raw in lines:
                if self._console_line(raw.decode("utf-8", "replace"), now, waits):
                    await self._end_for_lockup()
                    return

    def _read_console(self, offset: int, sample: bool) -> tuple[bytes, dict[int, float]]:
        try:
            with self.console_path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        # QEMU's CPU waits: every second, and whenever a lockup report needs judging now.
        waits = thread_waits(self.pid) if sample or b"soft lockup" in chunk else {}
        return chunk, waits

    def _console_line(self, line: str, now: float, waits: dict[int, float]) -> bool:
        """Take one console line; True when it ended the VM (a lockup the host believes)."""
        match = INIT_LINE.search(line)
        if match:
            self._init_lines.append((now - self._spawned, match.group(1), float(match.group(2))))
            return False
        limit = self.lockup_limits[1] if self._ready else self.lockup_limits[0]
        lockup = self._lockups.judge(line, now, waits, limit=limit)
        if lockup is None or self._closing:
            return False
        self._lockup, self._lockup_during_start = lockup, not self._ready
        return True

    async def _end_for_lockup(self) -> None:
        # With ``quiet`` the kernel prints the report's headline but not its call trace, so
        # the console does not say where the CPUs spin. QEMU can: each vCPU's registers, whose
        # RIP resolves against the guest's /proc/kallsyms (``nokaslr``: the same in every VM).
        self._lockup_cpus = await cpu_registers(self.run_dir / "qmp.sock")
        _log.warning("%s; ending it%s", self._lockup_message(), "\n" + self._lockup_cpus if self._lockup_cpus else "")
        self.process.kill()  # the watcher sees QEMU exit and cancels the VM's users

    async def _agent_spoke(self) -> bool:
        """Whether the readable agent socket holds bytes (the Hello), not an end of stream."""
        try:
            return bool(await self.stream.socket.recv(1, socket.MSG_PEEK))
        except OSError:  # reset: QEMU went away
            return False

    async def _connect(self, deadline: float) -> None:
        path = self.run_dir / "agent.sock"
        while True:
            if self.process.poll() is not None:
                raise self.died_error("QEMU exited during start-up")
            try:
                self._stream = await trio.open_unix_socket(str(path))
                return
            except OSError as exc:
                # QEMU creates the socket file (bind) a moment before it listens.
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise VMError(f"cannot connect to the agent socket {path}: {exc}") from exc
            if trio.current_time() > deadline:
                raise BootTimeoutError("QEMU did not open the agent socket", console_tail=self.console_tail())
            await trio.sleep(0.005)

    async def _resume(self, deadline: float) -> None:
        def check_alive() -> None:
            if self.process.poll() is not None:
                raise self.died_error("QEMU exited while restoring the snapshot")

        # A QEMU that accepted the connection but never answers must not hang the start.
        with trio.move_on_at(deadline):
            try:
                qmp = await QMPClient.connect(self.run_dir / "qmp.sock", check_alive=check_alive)
            except QMPClosedError as exc:
                raise self.died_error("QMP closed while restoring the snapshot") from exc
            try:
                # The saved VM was stopped, so the loaded one stays paused: "cont" once loaded.
                while True:
                    status = await qmp.execute("query-status")
                    if not isinstance(status, dict) or status.get("status") != "inmigrate":
                        break
                    await trio.sleep(0.005)
                await qmp.execute("cont")
            except QMPClosedError as exc:
                raise self.died_error("QMP closed while restoring the snapshot") from exc
            finally:
                await qmp.aclose()
            self._resumed_at = time.monotonic()
            return
        if not (self.run_dir / "qmp.sock").exists():
            raise BootTimeoutError("QEMU did not open its QMP socket", console_tail=self.console_tail())
        raise BootTimeoutError(
            "restoring the VM snapshot took too long (QMP did not answer)", console_tail=self.console_tail()
        )

    def _compute_timings(self, total: float, socket_at: float) -> None:
        resumed = None if self._resumed_at is None else self._resumed_at - self._spawned
        self.timings = boot_timings(
            self._init_lines, total=total, socket_at=socket_at, restored="-incoming" in self.command, resumed_after=resumed
        )


def _wait_for_exit(process: subprocess.Popen[bytes], seconds: float) -> None:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
        pass


@asynccontextmanager
async def open_vm(config: VMConfig) -> AsyncIterator[VM]:
    """Boot a VM, wait until its agent has sent its first bytes, and yield it.

    On exit QEMU is killed, whatever happened in the block. A start in which the guest kernel
    locked up (see :mod:`.lockup`) is made once more, as a cold boot, before its error is raised.

    Raises:
        VMDiedError: QEMU exited during boot or inside the block (noticed at once; the
            block is cancelled).
        VMLockupError: the guest kernel locked up inside the block, or in both starts (a
            ``VMDiedError``).
        BootTimeoutError: the agent was not ready within ``config.boot_timeout``.
        VMError: QEMU is missing or the VM could not be set up.
    """
    qemu = find_qemu()
    if qemu is None:
        raise VMError("qemu-system-x86_64 not found. Fix: sudo scripts/setup-system.sh (apt-get install qemu-system-x86)")
    accel = config.accel if config.accel is not None else await trio.to_thread.run_sync(probe_accel)
    started = False
    try:
        async with _run_vm(config, qemu, accel) as vm:
            started = True
            yield vm
        return
    except VMLockupError as exc:
        if started or not exc.during_start:
            raise
        # Nothing is lost yet: start again. As a cold boot, in case the snapshot is the cause.
        _log.warning("%s; starting the VM once more, as a cold boot\n%s", exc.args[0], exc.console_tail)
    async with _run_vm(replace(config, restore_from=None), qemu, accel) as vm:
        yield vm


@asynccontextmanager
async def _run_vm(config: VMConfig, qemu: str, accel: AccelChoice) -> AsyncIterator[VM]:
    run_dir = await trio.to_thread.run_sync(new_run_dir)
    console = config.console_log or run_dir / "console.log"
    console.touch()
    command = qemu_command(config, qemu=qemu, accel=accel, run_dir=run_dir, console=console)
    spawned = time.monotonic()
    # Started from the calling (trio main) thread on purpose: PDEATHSIG follows the thread
    # that forked, and trio's worker threads come and go.
    with (run_dir / "qemu.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=set_pdeathsig, close_fds=True,
        )
    vm = VM(process, run_dir, console, command)
    vm._spawned = spawned
    vm.lockup_limits = (config.start_lockup_limit, config.lockup_limit)
    died: VMDiedError | None = None
    escaping: BaseException | None = None  # what the block (or the start) raised
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(vm._watch, nursery.cancel_scope)
            nursery.start_soon(vm._follow_console)
            deadline = trio.current_time() + config.boot_timeout
            await vm._connect(deadline)
            socket_at = time.monotonic() - spawned
            if config.restore_from is not None:
                await vm._resume(deadline)
            with trio.move_on_at(deadline) as ready_scope:
                # Readiness = the agent's first bytes (its Hello). Waiting for readability
                # does not consume them: the connection reads the Hello itself.
                await trio.lowlevel.wait_readable(vm.stream.socket)
            if ready_scope.cancelled_caught:
                raise BootTimeoutError(
                    f"the guest agent was not ready after {config.boot_timeout:.0f} s", console_tail=vm.console_tail()
                )
            # One more console read so that the last rlm-init line is counted (the agent printed
            # it before its Hello).
            await vm._drain_console()
            if vm._lockup is not None or not await vm._agent_spoke():
                # The socket was readable because QEMU closed it (a lockup's kill, QEMU that
                # failed after opening its sockets): a death, not a Hello. Let it finish dying,
                # so that the error has its exit status and what it printed.
                await trio.to_thread.run_sync(_wait_for_exit, vm.process, 5.0)
                raise vm.died_error("QEMU exited during start-up")
            vm._ready = True
            vm._compute_timings(time.monotonic() - spawned, socket_at)
            try:
                yield vm
            finally:
                vm._closing = True
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps what the block raised; a caller of a context manager should see
        # the exception itself (trio's advice for nurseries inside context managers).
        inner = single_error(group)
        if inner is group:
            raise
        escaping = inner
        raise inner.with_traceback(inner.__traceback__) from inner.__cause__
    except GuestDiedError as exc:
        escaping = exc
        raise
    finally:
        with trio.CancelScope(shield=True):
            if vm._stream is not None:
                await vm._stream.aclose()
            await vm.terminate()
            # A lockup kill may reach the block (the agent's channel closes) before the watcher
            # sees QEMU exit: it is a death all the same.
            if vm._died or vm._lockup is not None:
                died = vm.died_error()  # before the run directory (and QEMU's stderr) goes
            else:
                await trio.to_thread.run_sync(vm._report_kernel_complaints)
            if config.console_log is None:
                await trio.to_thread.run_sync(lambda: shutil.rmtree(run_dir, ignore_errors=True))
        if died is not None and isinstance(escaping, GuestDiedError) and not isinstance(escaping, VMDiedError):
            # The block saw the agent's channel close before the watcher saw QEMU exit: the
            # caller gets the VM's death (exit status, lockup, console) all the same.
            raise died from escaping
    if died is not None:
        raise died
