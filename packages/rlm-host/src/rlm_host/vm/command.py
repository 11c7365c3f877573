"""The QEMU command line of a guest VM: :class:`VMConfig` in, argv out (pure).

    >>> from pathlib import Path
    >>> from rlm_host.vm.accel import AccelChoice
    >>> config = VMConfig(kernel=Path("vmlinux"), initramfs=Path("initrd"), disk=Path("agent.qcow2"))
    >>> argv = qemu_command(config, qemu="qemu-system-x86_64", accel=AccelChoice("tcg", "probe"),
    ...                     run_dir=Path("/tmp/run"), console=Path("/tmp/run/console.log"))
    >>> argv[argv.index("-nic") + 1]
    'none'
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
from dataclasses import dataclass, field
from pathlib import Path

from .accel import AccelChoice
from .guest_scripts import AGENT_PORT_NAME, CACHE_MOUNT_TAG
from .lockup import AFTER_READY_LIMIT, DURING_START_LIMIT

__all__ = ["KERNEL_ARGS", "VMConfig", "default_cpus", "qemu_command", "set_pdeathsig"]

# Kernel arguments. quiet: printing to the emulated UART is slow under TCG. panic=-1 with
# -no-reboot: a guest panic (e.g. the agent, PID 1's child, taking init down) ends QEMU, which
# the watcher reports. The rest skip work that a throwaway VM does not need (each measured to
# shave boot time under TCG): mitigation patching, KASLR, clock-source checks, crypto
# self-tests, audit, legacy PS/2 probing. random.trust_cpu: seed the RNG from RDRAND at once so
# Python's os.urandom never blocks at start.
KERNEL_ARGS = (
    "console=ttyS0", "quiet", "panic=-1", "mitigations=off", "nokaslr", "tsc=reliable",
    "no_timer_check", "cryptomgr.notests", "random.trust_cpu=on", "audit=0", "8250.nr_uarts=1",
    "i8042.noaux", "i8042.nokbd", "i8042.nopnp",
    # No softlockup_panic (nor any other panic on a timing): under TCG guest time is host time,
    # so on a loaded host a vCPU that merely ran slowly for 20 s looks locked up to the guest's
    # watchdog, and a panic there killed healthy VMs. A hung guest is the host's to detect: a
    # block with no result well past its timeout, counted in time QEMU was not starved of CPU
    # (``rlm_host.starvation``), and a lockup report on the console that starvation does not
    # explain (``.lockup``: the host then ends the VM).
    "softlockup_panic=0",
)
_QBOOT = Path("/usr/share/qemu/qboot.rom")


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
    #: Seconds QEMU must have had a host CPU within a span the guest kernel reports a CPU stuck
    #: before the host ends the VM (:class:`~.errors.VMLockupError`; see :mod:`.lockup`).
    lockup_limit: float = AFTER_READY_LIMIT
    #: The same before the agent is ready; such a start is made once more, as a cold boot.
    start_lockup_limit: float = DURING_START_LIMIT


def qemu_command(config: VMConfig, *, qemu: str, accel: AccelChoice, run_dir: Path, console: Path) -> list[str]:
    """The full QEMU command line for ``config`` (pure: no side effects)."""
    disk_format = "qcow2" if config.disk.suffix == ".qcow2" else "raw"
    kernel_args = [*KERNEL_ARGS, *config.extra_kernel_args]
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


def set_pdeathsig() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGKILL QEMU when the
    # thread that forked it (our main thread) dies. PR_SET_PDEATHSIG = 1.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)
