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
raises :class:`~.errors.VMDiedError` with the console tail.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import trio

from .accel import AccelChoice, find_qemu, probe_accel
from .errors import BootTimeoutError, VMDiedError, VMError
from .guest_scripts import AGENT_PORT_NAME, CACHE_MOUNT_TAG
from ..starvation import thread_waits

__all__ = ["BootTimings", "VM", "VMConfig", "console_excerpt", "default_cpus", "open_vm", "qemu_command"]

# Kernel arguments. quiet: printing to the emulated UART is slow under TCG. panic=-1 with
# -no-reboot: a guest panic (e.g. the agent, PID 1's child, taking init down) ends QEMU, which
# the watcher reports. The rest skip work that a throwaway VM does not need (each measured to
# shave boot time under TCG): mitigation patching, KASLR, clock-source checks, crypto
# self-tests, audit, legacy PS/2 probing. random.trust_cpu: seed the RNG from RDRAND at once so
# Python's os.urandom never blocks at start.
_KERNEL_ARGS = (
    "console=ttyS0", "quiet", "panic=-1", "mitigations=off", "nokaslr", "tsc=reliable",
    "no_timer_check", "cryptomgr.notests", "random.trust_cpu=on", "audit=0", "8250.nr_uarts=1",
    "i8042.noaux", "i8042.nokbd", "i8042.nopnp",
    # No softlockup_panic (nor any other panic on a timing): under TCG guest time is host time,
    # so on a loaded host a vCPU that merely ran slowly for 20 s looks locked up to the guest's
    # watchdog, and a panic there killed healthy VMs. A hung guest is the host's to detect: a
    # block with no result well past its timeout, counted in time QEMU was not starved of CPU
    # (``rlm_host.starvation``). The lockup report itself still reaches the console.
    "softlockup_panic=0",
)
_QBOOT = Path("/usr/share/qemu/qboot.rom")
_log = logging.getLogger(__name__)
_CONSOLE_TAIL_BYTES = 64 * 1024
_INIT_LINE = re.compile(r"rlm-init: (.+?) ([0-9]+\.[0-9]+)(?: [0-9.]+)?\s*$")
#: The first line of a kernel report that explains a death (printed even with ``quiet``). Its
#: register dump, call trace and module list run past a 40-line tail, which then shows only the
#: interrupted code and ``Kernel Offset``, not what the kernel complained about.
_KERNEL_REPORT = re.compile(
    r"(Kernel panic|BUG:|watchdog:|rcu: INFO|Oops|general protection fault|Out of memory|INFO: task .* blocked)"
)


def console_excerpt(text: str, max_lines: int = 40) -> str:
    """The last ``max_lines`` lines of ``text``, preceded by the kernel report lines above them.

    >>> log = "boot\\nwatchdog: BUG: soft lockup - CPU#1 stuck for 22s!\\n" + "trace\\n" * 50
    >>> print(console_excerpt(log, max_lines=2))
    watchdog: BUG: soft lockup - CPU#1 stuck for 22s!
    [...]
    trace
    trace
    """
    lines = text.splitlines()
    tail = lines[-max_lines:]
    earlier = [line for line in lines[: max(0, len(lines) - max_lines)] if _KERNEL_REPORT.search(line)]
    if not earlier:
        return "\n".join(tail)
    return "\n".join([*earlier[-10:], "[...]", *tail])


def default_cpus() -> int:
    """vCPUs for a guest: 2 when the host has more than one core (TCG runs one thread each)."""
    return 2 if (os.cpu_count() or 1) > 1 else 1


@dataclass(frozen=True)
class VMConfig:
    """How to start one guest VM.

    ``disk`` is the root disk: the provisioned agent overlay by default (see
    :func:`.provision.ensure_agent_disk`, done by :func:`.connect.open_vm_guest`), or any
    raw/qcow2 image with the rlm init scripts. ``guest_entry`` replaces the agent with a
    script run as ``python3 <guest_entry> --device <port>`` (test stand-ins).
    """

    kernel: Path
    initramfs: Path
    disk: Path
    memory_mb: int = 1536
    cpus: int = field(default_factory=default_cpus)
    network: bool = False
    share: Path | None = None
    accel: AccelChoice | None = None
    boot_timeout: float = 180.0
    guest_entry: str | None = None
    extra_kernel_args: tuple[str, ...] = ()
    writable_disk: bool = False
    console_log: Path | None = None
    #: Use the device set snapshots need (SeaBIOS with ACPI, ``vmgenid``, a QMP socket):
    #: slower to cold-boot than qboot, but only snapshot creation cold-boots it.
    snapshot_compatible: bool = False
    #: A state file written by :func:`.snapshot.ensure_snapshot` to resume instead of booting.
    restore_from: Path | None = None
    #: Extra virtio-serial ports (names), each on a unix socket ``<run_dir>/<name>.sock`` that
    #: :meth:`VM.extra_socket` gives: raw channels beside the agent's (the benchmarks' echo).
    extra_ports: tuple[str, ...] = ()
    #: Add a second emulated 16550 UART (the guest's ``/dev/ttyS1``; needs the kernel argument
    #: ``8250.nr_uarts=2``) on the unix socket ``<run_dir>/uart1.sock``: the seed's channel,
    #: for the benchmarks' baseline.
    extra_uart: bool = False


@dataclass
class BootTimings:
    """Boot-to-ready breakdown in seconds.

    Host-measured: ``total`` (QEMU spawn to the agent's first bytes) and ``qemu_socket``
    (spawn until the agent socket accepted us). Guest-measured from console lines, mapped to
    host time via the moment the first ``rlm-init`` line appeared: ``firmware`` (QEMU start to
    kernel entry, estimated), ``kernel`` (kernel entry to /init), ``modules`` (initramfs module
    loading), ``switch_root`` (mounts and switch_root), ``userspace`` (stage-2 init up to the
    agent exec), ``agent_import`` (python start and the agent's imports), ``agent`` (from
    then to its first bytes: host-connect check, 9p mount, Hello). A restored VM
    (``restored``) has host-measured figures instead: ``restore_load`` (spawn until the
    state is loaded and the VM continues), ``restore_resume`` (until the guest noticed the
    host and printed ``agent start``, after mounting the share) and ``agent`` (from then to
    the Hello).
    """

    total: float = 0.0
    qemu_socket: float = 0.0
    restored: bool = False
    firmware: float | None = None
    kernel: float | None = None
    modules: float | None = None
    switch_root: float | None = None
    userspace: float | None = None
    agent_import: float | None = None
    agent: float | None = None
    restore_load: float | None = None
    restore_resume: float | None = None

    def as_dict(self) -> dict[str, float | bool | None]:
        """Rounded values for JSON output."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def qemu_command(config: VMConfig, *, qemu: str, accel: AccelChoice, run_dir: Path, console: Path) -> list[str]:
    """The full QEMU command line for ``config`` (pure: no side effects)."""
    disk_format = "qcow2" if config.disk.suffix == ".qcow2" else "raw"
    kernel_args = [*_KERNEL_ARGS, *config.extra_kernel_args]
    if config.guest_entry:
        kernel_args.append(f"rlm.entry={config.guest_entry}")
    if config.network:
        kernel_args.append("rlm.network")
    if config.share is None:
        kernel_args.append("rlm.nocache")
    cmd = [
        qemu, "-name", "rlm-guest", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        *accel.qemu_args,
        "-machine", "q35",
        "-m", str(config.memory_mb), "-smp", str(config.cpus),
        "-kernel", str(config.kernel), "-initrd", str(config.initramfs), "-append", " ".join(kernel_args),
        "-serial", f"file:{console}",
        "-drive", f"file={config.disk},format={disk_format},if=virtio,cache=unsafe"
        + ("" if config.writable_disk else ",readonly=on"),
        "-chardev", f"socket,id=agent,path={run_dir / 'agent.sock'},server=on,wait=off",
        "-device", "virtio-serial-pci",
        "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}",
    ]
    for index, name in enumerate(config.extra_ports):
        cmd += [
            "-chardev", f"socket,id=extra{index},path={run_dir / (name + '.sock')},server=on,wait=off",
            "-device", f"virtserialport,chardev=extra{index},name={name}",
        ]
    if config.extra_uart:
        cmd += [
            "-chardev", f"socket,id=uart1,path={run_dir / 'uart1.sock'},server=on,wait=off",
            "-device", "isa-serial,chardev=uart1",
        ]
    if config.snapshot_compatible or config.restore_from is not None:
        # A new VM generation id at every QEMU start makes the guest kernel reseed its RNG
        # after a restore, so restored guests do not share random state (DESIGN.md).
        cmd += ["-device", "vmgenid", "-qmp", f"unix:{run_dir / 'qmp.sock'},server=on,wait=off"]
    elif _QBOOT.exists():
        # qboot: a minimal firmware that jumps to the PVH kernel sooner than SeaBIOS. (It
        # hangs with -device vmgenid, hence SeaBIOS for snapshot VMs.)
        cmd += ["-bios", str(_QBOOT)]
    if config.restore_from is not None:
        cmd += ["-incoming", "exec:cat " + shlex.quote(str(config.restore_from))]
    if config.share is not None:
        cmd += ["-virtfs", f"local,path={config.share},mount_tag={CACHE_MOUNT_TAG},security_model=none,readonly=on"]
    cmd += ["-nic", "user,model=virtio-net-pci"] if config.network else ["-nic", "none"]
    return cmd


_RUN_DIR_PREFIX = "rlm-vm-"


def _sweep_run_dirs() -> None:
    # A host killed with SIGKILL takes QEMU along (PDEATHSIG) but cannot remove its run
    # directory; remove those whose owner process is gone.
    for path in Path(tempfile.gettempdir()).glob(_RUN_DIR_PREFIX + "*"):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _set_pdeathsig() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL QEMU when the
    # thread that forked it (our main thread) dies. PR_SET_PDEATHSIG = 1.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


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
        self._console_scope = trio.CancelScope()
        self._resumed_at: float | None = None
        self._spawned = 0.0
        self._init_lines: list[tuple[float, str, float]] = []  # (host time, label, guest uptime)

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
        try:
            with self.console_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _CONSOLE_TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return console_excerpt(text, max_lines)

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
        return state + "\n--- guest console (tail) ---\n" + self.console_tail()

    def _report_kernel_complaints(self) -> None:
        # A guest that lived through a kernel report (a soft lockup, an RCU stall: a slow TCG
        # guest on a loaded host) is a warning, not a death; the report says where it was.
        try:
            text = self.console_path.read_bytes()[-_CONSOLE_TAIL_BYTES:].decode("utf-8", "replace")
        except OSError:
            return
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if _KERNEL_REPORT.search(line)), None)
        if first is not None:
            _log.warning("the guest kernel complained (the VM lived on):\n%s", "\n".join(lines[first : first + 30]))

    def qemu_stderr(self) -> str:
        """What QEMU itself printed (argument errors, assertion failures)."""
        try:
            return (self.run_dir / "qemu.stderr").read_text(errors="replace")[-4000:].strip()
        except OSError:
            return ""

    def died_error(self, message: str = "the VM's QEMU process exited") -> VMDiedError:
        """A :class:`VMDiedError` describing the current state."""
        if stderr := self.qemu_stderr():
            message += f"; qemu said: {stderr}"
        return VMDiedError(message, returncode=self.process.poll(), console_tail=self.console_tail())

    def kill(self) -> None:
        """Kill QEMU now (idempotent; does not wait long: SIGKILL cannot be refused)."""
        self._closing = True
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
            pass

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

    async def _follow_console(self, spawned: float) -> None:
        with self._console_scope:
            await self._follow_console_lines(spawned)

    async def _follow_console_lines(self, spawned: float) -> None:
        # Record when each rlm-init line appears, to map guest uptime onto host time.
        offset = 0
        partial = b""
        while True:
            try:
                with self.console_path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            now = time.monotonic() - spawned
            if chunk:
                offset += len(chunk)
                *lines, partial = (partial + chunk).split(b"\n")
                for raw in lines:
                    match = _INIT_LINE.search(raw.decode("utf-8", "replace"))
                    if match:
                        self._init_lines.append((now, match.group(1), float(match.group(2))))
            await trio.sleep(0.01)

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
        path = self.run_dir / "qmp.sock"
        while True:
            try:
                qmp = await trio.open_unix_socket(str(path))
                break
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                    raise VMError(f"cannot connect to QMP at {path}: {exc}") from exc
            if self.process.poll() is not None:
                raise self.died_error("QEMU exited while restoring the snapshot")
            if trio.current_time() > deadline:
                raise BootTimeoutError("QEMU did not open its QMP socket", console_tail=self.console_tail())
            await trio.sleep(0.005)
        async with qmp:
            buffer = b""

            async def reply() -> dict[str, object]:
                nonlocal buffer
                while True:
                    while b"\n" not in buffer:
                        chunk = await qmp.receive_some(65536)
                        if not chunk:
                            raise self.died_error("QMP closed while restoring the snapshot")
                        buffer += chunk
                    line, buffer = buffer.split(b"\n", 1)
                    message: dict[str, object] = json.loads(line)
                    if "event" not in message:
                        return message

            async def execute(command: str) -> object:
                await qmp.send_all(json.dumps({"execute": command}).encode() + b"\r\n")
                answer = await reply()
                if "error" in answer:
                    raise VMError(f"QMP {command} failed while restoring the snapshot: {answer['error']}")
                return answer.get("return")

            # A QEMU that accepted the connection but never answers must not hang the start.
            with trio.move_on_at(deadline):
                await reply()  # greeting
                await execute("qmp_capabilities")
                # The saved VM was stopped, so the loaded one stays paused: "cont" once loaded.
                while True:
                    status = await execute("query-status")
                    if not isinstance(status, dict) or status.get("status") != "inmigrate":
                        break
                    await trio.sleep(0.005)
                await execute("cont")
                self._resumed_at = time.monotonic()
                return
            raise BootTimeoutError(
                "restoring the VM snapshot took too long (QMP did not answer)", console_tail=self.console_tail()
            )

    def _compute_timings(self, total: float, socket_at: float) -> None:
        t = self.timings
        t.total, t.qemu_socket = total, socket_at
        t.restored = "-incoming" in self.command
        uptime = {label: up for _host, label, up in self._init_lines}
        first = next(((host, up) for host, label, up in self._init_lines if label == "modules"), None)
        if t.restored:
            # A restored guest's uptime continues from the snapshot: host times only.
            if self._resumed_at is not None:
                t.restore_load = self._resumed_at - self._spawned
                started = next((host for host, label, _up in self._init_lines if label == "agent start"), None)
                if started is not None:
                    t.restore_resume = started - t.restore_load
                    t.agent = total - started
            return
        if first is None:
            return
        # The first line appeared (host time) at most ~10 ms after the guest printed it.
        kernel_entry = first[0] - first[1]
        t.firmware = max(0.0, kernel_entry)
        t.kernel = first[1]

        def span(start: str, end: str) -> float | None:
            return uptime[end] - uptime[start] if start in uptime and end in uptime else None

        t.modules = span("modules", "modules loaded")
        t.switch_root = span("modules loaded", "stage2")
        t.userspace = span("stage2", "agent")
        t.agent_import = span("agent", "agent waiting")
        if "agent waiting" in uptime:
            t.agent = total - (kernel_entry + uptime["agent waiting"])


@asynccontextmanager
async def open_vm(config: VMConfig) -> AsyncIterator[VM]:
    """Boot a VM, wait until its agent has sent its first bytes, and yield it.

    On exit QEMU is killed, whatever happened in the block.

    Raises:
        VMDiedError: QEMU exited during boot or inside the block (noticed at once; the
            block is cancelled).
        BootTimeoutError: the agent was not ready within ``config.boot_timeout``.
        VMError: QEMU is missing or the VM could not be set up.
    """
    qemu = find_qemu()
    if qemu is None:
        raise VMError("qemu-system-x86_64 not found. Fix: sudo scripts/setup-system.sh (apt-get install qemu-system-x86)")
    accel = config.accel if config.accel is not None else await trio.to_thread.run_sync(probe_accel)
    _sweep_run_dirs()
    # Short private directory: unix socket paths are limited to 107 bytes.
    run_dir = Path(tempfile.mkdtemp(prefix=_RUN_DIR_PREFIX))
    (run_dir / "owner.pid").write_text(str(os.getpid()))
    console = config.console_log or run_dir / "console.log"
    console.touch()
    command = qemu_command(config, qemu=qemu, accel=accel, run_dir=run_dir, console=console)
    spawned = time.monotonic()
    # Started from the calling (trio main) thread on purpose: PDEATHSIG follows the thread
    # that forked, and trio's worker threads come and go.
    with (run_dir / "qemu.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=_set_pdeathsig, close_fds=True,
        )
    vm = VM(process, run_dir, console, command)
    vm._spawned = spawned
    died: VMDiedError | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(vm._watch, nursery.cancel_scope)
            nursery.start_soon(vm._follow_console, spawned)
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
            # One more console read so that the last rlm-init line is counted.
            await trio.sleep(0.02)
            vm._console_scope.cancel()
            vm._compute_timings(time.monotonic() - spawned, socket_at)
            try:
                yield vm
            finally:
                vm._closing = True
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps what the block raised; a caller of a context manager should see
        # the exception itself (trio's advice for nurseries inside context managers).
        if len(group.exceptions) != 1:
            raise
        inner = group.exceptions[0]
        raise inner.with_traceback(inner.__traceback__) from inner.__cause__
    finally:
        if vm._stream is not None:
            with trio.CancelScope(shield=True):
                await vm._stream.aclose()
        vm.kill()
        if vm._died:
            died = vm.died_error()  # before the run directory (and QEMU's stderr) goes
        else:
            vm._report_kernel_complaints()
        if config.console_log is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    if died is not None:
        raise died
