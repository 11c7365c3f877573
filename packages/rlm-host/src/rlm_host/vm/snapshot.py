"""VM snapshots: boot once, save the running guest, resume copies of it in a fraction of a second.

DESIGN.md measured 0.17-0.19 s from QEMU start to a reply from a restored guest, against
about 5 s (more on a loaded host) for a cold boot under TCG. How:

1. Cold-boot a VM with the snapshot device set (:attr:`VMConfig.snapshot_compatible`) and
   do *not* connect to the agent port. The guest's ``rlm-agent-start`` imports the agent,
   prints ``rlm-init: agent waiting`` and polls for a host; the 9p share is not mounted yet
   (a mounted 9p share blocks migration).
2. Over QMP: ``stop``, then ``migrate`` to ``exec:cat > state`` (QEMU skips zero pages: the
   file is ~100 MB for a 1.5 GB guest).
3. Every VM then starts with the same command line plus ``-incoming "exec:cat state"``; when
   the host connects to the port, the guest mounts the share, fixes its clock from the RTC
   and starts the agent, whose Hello marks it ready. ``vmgenid`` reseeds the guest kernel's
   RNG per restore; anything the agent seeded itself at import is shared by all restores.

The state is keyed by everything that must match between save and restore: kernel,
initramfs, disk (which names the agent's wheelhouse), memory, CPUs, network, accelerator and
the QEMU binary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .accel import find_qemu, probe_accel
from .cache import build_lock
from .errors import VMError
from .guest_scripts import AGENT_WAITING
from .qemu import _KERNEL_ARGS, VMConfig, _set_pdeathsig, qemu_command

__all__ = ["ensure_snapshot", "snapshot_path"]

_SNAPSHOT_TIMEOUT = 600.0


def snapshot_path(config: VMConfig) -> Path:
    """Where the saved state for ``config`` lives (next to the agent disk)."""
    qemu = find_qemu() or "qemu"
    accel = config.accel or probe_accel()
    stat = os.stat(qemu) if os.path.exists(qemu) else None
    key_source = json.dumps(
        [str(config.kernel), str(config.initramfs), str(config.disk), config.memory_mb, config.cpus,
         config.network, config.share is not None, accel.name, qemu, stat.st_mtime_ns if stat else 0,
         config.extra_kernel_args, config.guest_entry, _KERNEL_ARGS]
        # Extra devices change the machine; only added when present, so existing keys hold.
        + ([list(config.extra_ports), config.extra_uart] if config.extra_ports or config.extra_uart else []),
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    # Prefixed with the agent disk's name (the wheelhouse hash), so that pruning old agent
    # disks can take their snapshots along.
    return config.disk.parent.parent / "snapshots" / f"{config.disk.stem}-{key}" / "state"


class _QMP:
    """A minimal blocking QMP client: enough for stop/migrate/query-migrate."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.settimeout(timeout)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self.file = self.sock.makefile("rwb")
        self._read()  # greeting
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        while True:
            line = self.file.readline()
            if not line:
                raise VMError("QMP connection closed")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:  # events can come between a command and its reply
                return message

    def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.file.write(json.dumps(request).encode() + b"\r\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise VMError(f"QMP {command} failed: {reply['error']}")
        return reply.get("return")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def ensure_snapshot(config: VMConfig) -> Path:
    """Return the saved state for ``config``, creating it first if needed (blocking, one boot).

    Raises:
        VMError: the snapshot boot failed or QEMU refused to migrate.
    """
    target = snapshot_path(config)
    if target.exists():
        return target
    with build_lock(target):
        if target.exists():  # another VM start made it while we waited
            return target
        return _create_snapshot(config, target)


def _create_snapshot(config: VMConfig, target: Path) -> Path:
    qemu = find_qemu()
    if qemu is None:
        raise VMError("qemu-system-x86_64 not found. Fix: sudo scripts/setup-system.sh")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"state.tmp-{os.getpid()}")
    run_dir = Path(tempfile.mkdtemp(prefix="rlm-snap-"))
    console = run_dir / "console.log"
    console.touch()
    snap_config = replace(config, snapshot_compatible=True, restore_from=None, accel=config.accel or probe_accel())
    assert snap_config.accel is not None
    cmd = qemu_command(snap_config, qemu=qemu, accel=snap_config.accel, run_dir=run_dir, console=console)
    with (run_dir / "qemu.stderr").open("wb") as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=_set_pdeathsig)
    try:
        deadline = time.monotonic() + _SNAPSHOT_TIMEOUT
        while AGENT_WAITING not in console.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(console.read_text(errors="replace").splitlines()[-20:])
                raise VMError(f"the snapshot VM did not reach '{AGENT_WAITING}' (qemu status {proc.poll()})\n{tail}")
            time.sleep(0.05)
        qmp = _QMP(run_dir / "qmp.sock")
        try:
            qmp.execute("stop")
            qmp.execute("migrate", uri="exec:cat > " + shlex.quote(str(partial)))
            while True:
                status = qmp.execute("query-migrate").get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled"):
                    raise VMError(f"saving the VM state failed: {qmp.execute('query-migrate')}")
                time.sleep(0.05)
        finally:
            qmp.close()
        partial.rename(target)
    finally:
        proc.kill()
        proc.wait()
        partial.unlink(missing_ok=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return target

