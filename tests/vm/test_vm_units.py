"""Fast tests of the VM layer's pure parts (no VM boots; QEMU only where noted)."""

from __future__ import annotations

import lzma
import stat
from pathlib import Path

import pytest

from rlm_host.vm import VMConfig, VMDiedError, open_vm
from rlm_host.vm.accel import AccelChoice
from rlm_host.vm.errors import ImageBuildError
from rlm_host.vm.initramfs import InitramfsFile, write_cpio
from rlm_host.vm.kernel import extract_vmlinux
from rlm_host.vm.qemu import qemu_command
from tests.vm_plugin import require_qemu


def _config(tmp_path: Path, **overrides: object) -> VMConfig:
    base: dict[str, object] = dict(kernel=tmp_path / "vmlinux", initramfs=tmp_path / "initramfs.cpio", disk=tmp_path / "disk.qcow2")
    base.update(overrides)
    return VMConfig(**base)  # type: ignore[arg-type]


def test_command_has_no_network_by_default_and_a_read_only_share(tmp_path: Path) -> None:
    cmd = qemu_command(_config(tmp_path, share=tmp_path), qemu="qemu", accel=AccelChoice("tcg", ""), run_dir=tmp_path, console=tmp_path / "c")
    assert cmd[cmd.index("-nic") + 1] == "none"
    virtfs = cmd[cmd.index("-virtfs") + 1]
    assert "readonly=on" in virtfs and "mount_tag=rlmcache" in virtfs
    assert "readonly=on" in cmd[cmd.index("-drive") + 1]
    assert "-no-reboot" in cmd and "-nodefaults" in cmd


def test_command_with_network_and_restore(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cmd = qemu_command(_config(tmp_path, network=True, restore_from=state), qemu="qemu", accel=AccelChoice("tcg", ""), run_dir=tmp_path, console=tmp_path / "c")
    assert cmd[cmd.index("-nic") + 1].startswith("user,")
    assert cmd[cmd.index("-incoming") + 1] == f"exec:cat {state}"
    assert "vmgenid" in cmd
    assert "rlm.network" in cmd[cmd.index("-append") + 1]


def test_extract_vmlinux_finds_the_xz_payload(tmp_path: Path) -> None:
    elf = b"\x7fELF" + b"kernel" * 1000
    # A decoy magic before the real payload, and trailing bytes after it, as in a bzImage.
    bzimage = tmp_path / "bzImage"
    bzimage.write_bytes(b"MZ" + b"\xfd7zXZ\x00garbage" + b"\0" * 100 + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"trailer")
    out = extract_vmlinux(bzimage, tmp_path / "vmlinux")
    assert out.read_bytes() == elf


def test_extract_vmlinux_rejects_unknown_payloads(tmp_path: Path) -> None:
    bad = tmp_path / "bzImage"
    bad.write_bytes(b"MZ" + b"\0" * 4096)
    with pytest.raises(ImageBuildError):
        extract_vmlinux(bad, tmp_path / "vmlinux")


def test_cpio_is_newc_and_aligned(tmp_path: Path) -> None:
    target = tmp_path / "initramfs.cpio"
    write_cpio([InitramfsFile("init", stat.S_IFREG | 0o755, b"#!/bin/sh\n"), InitramfsFile("bin", stat.S_IFDIR | 0o755)], target)
    data = target.read_bytes()
    assert data.startswith(b"070701")
    assert b"TRAILER!!!" in data
    assert len(data) % 4 == 0
    # The name of the first entry follows the 110-byte header.
    assert data[110:115] == b"init\0"


async def test_qemu_that_cannot_start_raises_vm_died_error_with_its_message(tmp_path: Path) -> None:
    require_qemu()
    config = _config(tmp_path, boot_timeout=30, accel=AccelChoice("tcg", "test"))
    with pytest.raises(VMDiedError) as caught:
        async with open_vm(config):
            pass  # pragma: no cover - never reached
    assert caught.value.returncode not in (None, 0)
    assert "qemu said" in str(caught.value)


async def test_a_silent_qmp_does_not_hang_a_restore(tmp_path: Path) -> None:
    """QEMU that accepts the QMP connection but never answers: the start times out, typed."""
    import socket
    import subprocess
    import sys

    import trio

    from rlm_host.errors import GuestError
    from rlm_host.vm.errors import BootTimeoutError
    from rlm_host.vm.qemu import VM

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "qmp.sock"))
    listener.listen(1)
    console = tmp_path / "console.log"
    console.write_text("")
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        vm = VM(stand_in, tmp_path, console, ["qemu-stand-in"])
        with trio.fail_after(30):  # a guard against the hang itself, not a timing assertion
            with pytest.raises(BootTimeoutError, match="QMP did not answer") as caught:
                await vm._resume(trio.current_time() + 0.5)
        # api.py promises a GuestError for a guest that never came up.
        assert isinstance(caught.value, GuestError)
    finally:
        stand_in.kill()
        stand_in.wait()
        listener.close()


def test_pruning_keeps_agent_disks_asked_for_recently(tmp_path: Path) -> None:
    """Beyond the newest three, a disk is removed (with its snapshots) only when nobody asked
    for it lately: a running test session of other guest code still boots from its own."""
    import os
    import types

    from rlm_host.vm.provision import KEEP_RECENT_SECONDS, prune_agent_disks

    agent, snapshots = tmp_path / "agent", tmp_path / "snapshots"
    agent.mkdir()
    now = 1_000_000.0
    ages = {"new1": 0, "new2": 10, "new3": 20, "recent": 3600, "old": KEEP_RECENT_SECONDS + 60}
    for name, age in ages.items():
        disk = agent / f"{name}.qcow2"
        disk.write_bytes(b"")
        os.utime(disk, (now - age, now - age))
        (snapshots / f"{name}-key").mkdir(parents=True)
    removed = prune_agent_disks(types.SimpleNamespace(path=tmp_path), now=now)  # type: ignore[arg-type]
    assert sorted(p.name for p in removed) == ["old-key", "old.qcow2"]
    assert sorted(p.stem for p in agent.glob("*.qcow2")) == ["new1", "new2", "new3", "recent"]


def test_vm_modules_import_no_private_names_and_not_the_isolation_layer() -> None:
    """The VM layer sits below ``rlm_host.isolation`` (which imports it), and its modules share
    helpers through public names only (``snapshot`` once took ``qemu``'s private ones, and
    ``alpine`` ``debian``'s)."""
    import ast

    import rlm_host.vm

    offences = []
    for path in sorted(Path(rlm_host.vm.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                if node.module.endswith("isolation"):
                    offences.append(f"{path.name}: imports {node.module}")
                offences += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_") and a.name != "__future__"]
    assert offences == []
