"""Choose QEMU's accelerator: KVM only when a probe guest really runs under it, else TCG.

Why a probe and not ``os.path.exists("/dev/kvm")``: on these machines /dev/kvm exists but
KVM fails in more than one way. Some hosts abort QEMU with ``-cpu host`` (``failed to set MSR
0x10a``); on others (nested KVM) a firmware image runs fine but the Linux kernel stops in its
first second with ``KVM internal error. Suberror: 1`` (an instruction the nested hypervisor
cannot emulate) and QEMU then pauses the guest forever, so a VM start would hang until its
timeout. The probe therefore runs two guests with the same ``-accel``/``-cpu`` the launcher
would use: a 64 KiB firmware image that writes to QEMU's ``isa-debug-exit`` port (cheap, catches
the first kind), then the kernel of the newest cached image, with no root file system, which
must reach its "unable to mount root" panic and exit (catches the second kind; a ``KVM internal
error`` on QEMU's stderr ends the probe at once). Only when both pass is KVM used. The answer is
cached per host boot (``/proc/sys/kernel/random/boot_id``), QEMU binary and probe kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .cache import cache_root, images_dir

__all__ = ["AccelChoice", "find_qemu", "probe_accel"]

_PROBE_EXIT_VALUE = 0x31
# isa-debug-exit makes QEMU exit with (value << 1) | 1.
_PROBE_EXIT_CODE = (_PROBE_EXIT_VALUE << 1) | 1
_PROBE_TIMEOUT = 5.0
# A kernel with no root file system panics after its drivers are up: about 0.5 s under KVM, 2 s
# under TCG here (6-8 s on a loaded host). A KVM that needs longer than this is slower than TCG
# would be, so TCG is the better answer anyway; nested KVM here crawls (every exit goes through
# two hypervisors) and often reaches its internal error only after 20-30 s.
_KERNEL_PROBE_TIMEOUT = 15.0
_KVM_INTERNAL_ERROR = b"KVM internal error"
# The kernel's last words when it has booted but finds no root: proof that it ran.
_KERNEL_REACHED_ROOT = (b"VFS: Unable to mount root", b"Kernel panic")


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator to use, the QEMU arguments for it, and why it was chosen."""

    name: Literal["kvm", "tcg"]
    reason: str

    @property
    def qemu_args(self) -> list[str]:
        """``-accel``/``-cpu`` arguments for QEMU."""
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", "host"]
        # thread=multi: one host thread per vCPU. -cpu max: every feature TCG emulates
        # (RDRAND for early entropy, SSE4.2 crc32 for ext4 checksums).
        return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def find_qemu() -> str | None:
    """Path of ``qemu-system-x86_64`` on PATH, or None."""
    return shutil.which("qemu-system-x86_64") or shutil.which("qemu-system-x86-64")


def _probe_rom() -> bytes:
    rom = bytearray(b"\xf4" * 65536)  # hlt everywhere
    # At the reset vector (offset 0xFFF0 of the top 64 KiB): mov al, 0x31; out 0xf4, al; hlt; jmp $
    rom[0xFFF0:0xFFF7] = bytes([0xB0, _PROBE_EXIT_VALUE, 0xE6, 0xF4, 0xF4, 0xEB, 0xFE])
    return bytes(rom)


def _kvm_runs(qemu: str, kernel: Path | None) -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user (add yourself to the kvm group)"
    runs, why = _firmware_runs(qemu)
    if not runs or kernel is None:
        return runs, why
    return _kernel_runs(qemu, kernel)


def _firmware_runs(qemu: str) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="rlm-accel-") as tmp:
        rom = Path(tmp) / "probe.rom"
        rom.write_bytes(_probe_rom())
        cmd = [
            qemu, *AccelChoice("kvm", "").qemu_args, "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-m", "16", "-bios", str(rom), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, f"a KVM probe guest did not finish within {_PROBE_TIMEOUT:.0f} s"
    if result.returncode == _PROBE_EXIT_CODE:
        return True, "a KVM probe guest ran"
    last = (result.stderr.strip().splitlines() or ["no message"])[-1]
    return False, f"a KVM probe guest failed (exit {result.returncode}: {last})"


def _kernel_runs(qemu: str, kernel: Path) -> tuple[bool, str]:
    internal_error = "a Linux kernel stopped under KVM with a KVM internal error (nested KVM?)"
    with tempfile.TemporaryDirectory(prefix="rlm-accel-") as tmp:
        out, err = Path(tmp) / "console", Path(tmp) / "stderr"
        cmd = [
            qemu, *AccelChoice("kvm", "").qemu_args, "-nodefaults", "-no-user-config", "-display", "none",
            "-no-reboot", "-m", "256", "-kernel", str(kernel),
            "-append", "console=ttyS0 panic=-1 quiet", "-serial", f"file:{out}",
        ]
        with err.open("wb") as stderr:
            process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + _KERNEL_PROBE_TIMEOUT
            # Polled, not waited on: QEMU does not exit after a KVM internal error, it pauses.
            while process.poll() is None:
                if _KVM_INTERNAL_ERROR in err.read_bytes():
                    return False, internal_error
                if time.monotonic() > deadline:
                    return False, f"a Linux kernel did not finish its probe boot under KVM within {_KERNEL_PROBE_TIMEOUT:.0f} s"
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        if _KVM_INTERNAL_ERROR in err.read_bytes():
            return False, internal_error
        console = out.read_bytes() if out.exists() else b""
    if any(mark in console for mark in _KERNEL_REACHED_ROOT):
        return True, "a KVM probe guest and a Linux kernel ran"
    return False, f"a Linux kernel under KVM exited (code {process.returncode}) without reaching its root file system"


def _probe_kernel() -> Path | None:
    # The newest cached image's kernel: the one the next VM will most likely boot. Before the
    # first image build there is none and only the firmware probe runs; that answer is cached
    # under a key without a kernel, so the first built kernel brings a new probe.
    try:
        kernels = [path for path in images_dir().glob("*/vmlinux") if path.is_file()]
    except OSError:
        return None
    return max(kernels, key=lambda path: path.stat().st_mtime_ns, default=None)


def _cache_key(qemu: str, kernel: Path | None) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    stat = os.stat(qemu)
    probe = f"{kernel}:{kernel.stat().st_mtime_ns}" if kernel is not None else "firmware-only"
    return f"{boot_id}:{qemu}:{stat.st_mtime_ns}:{probe}"


def probe_accel(*, qemu: str | None = None, refresh: bool = False) -> AccelChoice:
    """Return KVM if it really runs a guest here, else TCG (with the reason).

    ``$RLM_ACCEL`` (``kvm`` or ``tcg``) skips the probe. Never raises: any failure means TCG.
    """
    forced = os.environ.get("RLM_ACCEL")
    if forced == "kvm":
        return AccelChoice("kvm", "forced by RLM_ACCEL")
    if forced == "tcg":
        return AccelChoice("tcg", "forced by RLM_ACCEL")
    qemu = qemu or find_qemu()
    if qemu is None:
        return AccelChoice("tcg", "qemu-system-x86_64 not found")
    cache_file = cache_root() / "accel.json"
    kernel = _probe_kernel()
    key = _cache_key(qemu, kernel)
    if not refresh:
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key:
                return AccelChoice(cached["name"], cached["reason"] + " (cached)")
        except (OSError, ValueError, KeyError):
            pass
    runs, why = _kvm_runs(qemu, kernel)
    choice = AccelChoice("kvm", why) if runs else AccelChoice("tcg", f"KVM unusable: {why}")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps({"key": key, **asdict(choice)}))
    except OSError:
        pass  # a read-only cache only costs a re-probe next time
    return choice
