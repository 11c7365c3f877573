"""Choose QEMU's accelerator: KVM only when a probe guest really runs under it, else TCG.

Why a probe and not ``os.path.exists("/dev/kvm")``: on these machines /dev/kvm exists but
QEMU aborts with ``-cpu host`` (``failed to set MSR 0x10a``) and a Linux guest hangs
with the default CPU model. The probe boots a 64 KiB firmware image that writes to QEMU's
``isa-debug-exit`` port, with the same ``-accel``/``-cpu`` the launcher would use; only a
clean exit with the expected code within a few seconds means KVM works. The answer is
cached per host boot (``/proc/sys/kernel/random/boot_id``) and QEMU binary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .cache import cache_root

__all__ = ["AccelChoice", "find_qemu", "probe_accel"]

_PROBE_EXIT_VALUE = 0x31
# isa-debug-exit makes QEMU exit with (value << 1) | 1.
_PROBE_EXIT_CODE = (_PROBE_EXIT_VALUE << 1) | 1
_PROBE_TIMEOUT = 5.0


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


def _kvm_runs(qemu: str) -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not readable and writable by this user (add yourself to the kvm group)"
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


def _cache_key(qemu: str) -> str:
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = "unknown"
    stat = os.stat(qemu)
    return f"{boot_id}:{qemu}:{stat.st_mtime_ns}"


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
    key = _cache_key(qemu)
    if not refresh:
        try:
            cached = json.loads(cache_file.read_text())
            if cached.get("key") == key:
                return AccelChoice(cached["name"], cached["reason"] + " (cached)")
        except (OSError, ValueError, KeyError):
            pass
    runs, why = _kvm_runs(qemu)
    choice = AccelChoice("kvm", why) if runs else AccelChoice("tcg", f"KVM unusable: {why}")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps({"key": key, **asdict(choice)}))
    except OSError:
        pass  # a read-only cache only costs a re-probe next time
    return choice
