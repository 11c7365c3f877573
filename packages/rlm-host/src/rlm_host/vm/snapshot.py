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
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import trio

from .accel import find_qemu, probe_accel
from .cache import build_lock
from .errors import VMError
from .guest_scripts import AGENT_WAITING
from .command import KERNEL_ARGS, VMConfig, qemu_command, set_pdeathsig
from .qmp import QMPClient

__all__ = ["ensure_snapshot", "snapshot_path"]

_SNAPSHOT_TIMEOUT = 600.0
#: Writing ~120 MB of state through ``cat`` takes seconds; this only stops a QEMU that hangs.
_SAVE_TIMEOUT = 300.0


def snapshot_path(config: VMConfig) -> Path:
    """Where the saved state for ``config`` lives (next to the agent disk)."""
    qemu = find_qemu() or "qemu"
    accel = config.accel or probe_accel()
    stat = os.stat(qemu) if os.path.exists(qemu) else None
    key_source = json.dumps(
        [str(config.kernel), str(config.initramfs), str(config.disk), config.memory_mb, config.cpus,
         config.network, config.share is not None, accel.name, qemu, stat.st_mtime_ns if stat else 0,
         config.extra_kernel_args, config.guest_entry, KERNEL_ARGS]
        # Extra devices change the machine; only added when present, so existing keys hold.
        + ([list(config.extra_ports), config.extra_uart] if config.extra_ports or config.extra_uart else []),
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    # Prefixed with the agent disk's name (the wheelhouse hash), so that pruning old agent
    # disks can take their snapshots along.
    return config.disk.parent.parent / "snapshots" / f"{config.disk.stem}-{key}" / "state"


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


async def _save_state(qmp_socket: Path, partial: Path) -> None:
    with trio.fail_after(_SAVE_TIMEOUT):
        qmp = await QMPClient.connect(qmp_socket)
        try:
            await qmp.execute("stop")
            await qmp.execute("migrate", uri="exec:cat > " + shlex.quote(str(partial)))
            while True:
                status = (await qmp.execute("query-migrate")).get("status")
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise VMError(f"saving the VM state failed: {await qmp.execute('query-migrate')}")
                await trio.sleep(0.05)
        finally:
            await qmp.aclose()


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
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=set_pdeathsig)
    try:
        deadline = time.monotonic() + _SNAPSHOT_TIMEOUT
        while AGENT_WAITING not in console.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(console.read_text(errors="replace").splitlines()[-20:])
                raise VMError(f"the snapshot VM did not reach '{AGENT_WAITING}' (qemu status {proc.poll()})\n{tail}")
            time.sleep(0.05)
        # The one QMP client of the VM layer is a trio one; this function blocks (it runs in a
        # worker thread, or in a sync caller), so it gets a trio loop of its own.
        trio.run(_save_state, run_dir / "qmp.sock", partial)
        partial.rename(target)
    finally:
        proc.kill()
        proc.wait()
        partial.unlink(missing_ok=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return target

