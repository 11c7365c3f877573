"""Install the guest agent into an image, once per wheelhouse.

Why not pip-install at every boot: pip alone takes many seconds under TCG. Why not bake the
agent into the base image: every change to the guest code would then rebuild the whole
Debian root (a minute or more). Instead each wheelhouse gets a small qcow2 overlay over the
read-only ``rootfs.ext4``: one "provisioning" boot mounts it read-write, runs
``pip install --no-index --find-links /cache/wheelhouse/<hash> rlm-guest`` (no network), and
powers off. Normal boots attach that overlay read-only. Its name is the wheelhouse hash, so
host and guest always run the same protocol code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .accel import find_qemu, probe_accel
from .cache import build_lock, share_dir
from .errors import ImageBuildError
from .guest_scripts import PROVISION_OK
from .image import GuestImage
from .command import VMConfig, qemu_command, set_pdeathsig
from .wheelhouse import Wheelhouse

__all__ = ["agent_disk_path", "ensure_agent_disk", "prune_agent_disks"]

_PROVISION_TIMEOUT = 900.0
#: Agent disks (and their snapshots, ~100 MB each) kept per image: every change to the guest
#: code makes a new one, and a test run may still be using the previous few.
KEEP_AGENT_DISKS = 3
#: ... and any disk asked for this recently (its mtime is touched at every cache hit): a test
#: session or a batch prepares its VM config once and starts VMs from it for an hour or more,
#: while a checkout of other guest code on the same machine makes disks of its own. Pruning by
#: count alone removed a disk that a running session was about to boot.
KEEP_RECENT_SECONDS = 3 * 3600.0


def prune_agent_disks(image: GuestImage, keep: int = KEEP_AGENT_DISKS, *, now: float | None = None) -> list[Path]:
    """Delete the agent disks of ``image`` (and their snapshots) beyond the ``keep`` newest
    that were not asked for in the last :data:`KEEP_RECENT_SECONDS`.

    Safe while VMs run: QEMU holds its files open, and unlinking an open file on Linux
    only removes the name. Returns what was removed.
    """
    now = time.time() if now is None else now
    agent_dir = image.path / "agent"
    if not agent_dir.is_dir():
        return []
    disks = sorted(agent_dir.glob("*.qcow2"), key=lambda p: p.stat().st_mtime, reverse=True)
    removed: list[Path] = []
    for disk in disks[keep:]:
        if ".tmp-" in disk.name or disk.stat().st_mtime > now - KEEP_RECENT_SECONDS:
            continue
        disk.unlink(missing_ok=True)
        removed.append(disk)
        for snapshot in (image.path / "snapshots").glob(f"{disk.stem}-*"):
            shutil.rmtree(snapshot, ignore_errors=True)
            removed.append(snapshot)
    return removed


def agent_disk_path(image: GuestImage, wheelhouse: Wheelhouse) -> Path:
    """Where the agent overlay of ``image`` for ``wheelhouse`` lives."""
    return image.path / "agent" / f"{wheelhouse.hash}.qcow2"


def ensure_agent_disk(image: GuestImage, wheelhouse: Wheelhouse, *, log: Path | None = None) -> Path:
    """Return the agent overlay disk, provisioning it first if needed (blocking, ~30-90 s).

    Raises:
        ImageBuildError: qemu-img or the provisioning boot failed (the message has the
            guest console tail).
    """
    target = agent_disk_path(image, wheelhouse)
    if _touch(target):
        return target
    with build_lock(target):
        if target.exists():  # another VM start made it while we waited
            return target
        return _create_agent_disk(image, wheelhouse, target, log)


def _touch(disk: Path) -> bool:
    """Mark ``disk`` as asked for now (see :data:`KEEP_RECENT_SECONDS`); False if it is missing."""
    try:
        os.utime(disk)
    except FileNotFoundError:
        return False
    return True


def _create_agent_disk(
    image: GuestImage, wheelhouse: Wheelhouse, target: Path, log: Path | None
) -> Path:
    qemu = find_qemu()
    if qemu is None:
        raise ImageBuildError("qemu-system-x86_64 not found. Fix: sudo scripts/setup-system.sh")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.stem}.tmp-{os.getpid()}.qcow2")
    result = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image.rootfs), str(tmp)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise ImageBuildError(f"qemu-img create failed (install qemu-utils): {result.stderr.strip()}")
    try:
        with tempfile.TemporaryDirectory(prefix="rlm-prov-") as run:
            run_dir = Path(run)
            console = log or run_dir / "console.log"
            config = VMConfig(
                kernel=image.kernel, initramfs=image.initramfs, disk=tmp, writable_disk=True,
                share=share_dir(), extra_kernel_args=("rlm.provision", f"rlm.wheelhouse={wheelhouse.relative}"),
            )
            cmd = qemu_command(config, qemu=qemu, accel=probe_accel(), run_dir=run_dir, console=console)
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=_PROVISION_TIMEOUT,
                    stdin=subprocess.DEVNULL, preexec_fn=set_pdeathsig,
                )
            except subprocess.TimeoutExpired as exc:
                raise ImageBuildError(f"provisioning the agent did not finish in {_PROVISION_TIMEOUT:.0f} s") from exc
            text = console.read_text(errors="replace")
            if PROVISION_OK not in text:
                tail = "\n".join(text.splitlines()[-30:])
                raise ImageBuildError(
                    f"installing the agent in the guest failed (qemu exit {proc.returncode}, {proc.stderr.strip()})\n"
                    f"--- guest console (tail) ---\n{tail}"
                )
        tmp.rename(target)
    finally:
        tmp.unlink(missing_ok=True)
    prune_agent_disks(image)
    return target
