"""The accelerator probe's decisions, against stand-in QEMU binaries (no VM, no /dev/kvm needed).

The real failure this guards against was seen on this project's machines: nested KVM runs the
probe firmware but stops a Linux kernel within its first second with ``KVM internal error.
Suberror: 1`` and then pauses the guest forever, so every VM start hung until its timeout.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from rlm_host.vm import accel


def _fake_qemu(tmp_path: Path, body: str) -> str:
    script = tmp_path / "qemu-system-x86_64"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


# Writes its arguments' serial file, like QEMU's ``-serial file:PATH``.
_SERIAL = 'for a in "$@"; do case "$a" in file:*) serial="${a#file:}";; esac; done\n'


def test_a_kernel_that_reaches_its_root_panic_means_kvm_runs(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, _SERIAL + 'echo "VFS: Unable to mount root fs on unknown-block(0,0)" > "$serial"\nexit 0\n')
    runs, why = accel._kernel_runs(qemu, tmp_path / "vmlinux")
    assert runs, why


def test_a_kvm_internal_error_is_seen_at_once_although_qemu_keeps_running(tmp_path: Path) -> None:
    # QEMU pauses the guest after an internal error and never exits: the probe must not wait
    # for its timeout (the script would sleep far past it).
    qemu = _fake_qemu(tmp_path, 'echo "KVM internal error. Suberror: 1" >&2\nexec sleep 600\n')
    started = time.monotonic()
    runs, why = accel._kernel_runs(qemu, tmp_path / "vmlinux")
    assert not runs
    assert "KVM internal error" in why
    # Not a timing threshold on the code's speed: only proof that the 30 s limit was not the reason.
    assert time.monotonic() - started < accel._KERNEL_PROBE_TIMEOUT


def test_a_kernel_that_exits_without_booting_is_not_kvm(tmp_path: Path) -> None:
    qemu = _fake_qemu(tmp_path, _SERIAL + 'echo "early garbage" > "$serial"\nexit 1\n')
    runs, why = accel._kernel_runs(qemu, tmp_path / "vmlinux")
    assert not runs
    assert "without reaching its root" in why


def test_the_firmware_probe_reads_the_debug_exit_code(tmp_path: Path) -> None:
    ok = _fake_qemu(tmp_path, f"exit {accel._PROBE_EXIT_CODE}\n")
    assert accel._firmware_runs(ok)[0]
    (tmp_path / "qemu-system-x86_64").unlink()
    bad = _fake_qemu(tmp_path, 'echo "failed to set MSR 0x10a" >&2\nexit 1\n')
    runs, why = accel._firmware_runs(bad)
    assert not runs and "MSR" in why


def test_the_cache_key_changes_with_the_probe_kernel(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"k")
    qemu = _fake_qemu(tmp_path, "exit 0\n")
    assert accel._cache_key(qemu, None) != accel._cache_key(qemu, kernel)


def test_forced_accelerator_skips_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_ACCEL", "tcg")
    assert accel.probe_accel(qemu="/nonexistent/qemu").name == "tcg"
