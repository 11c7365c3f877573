"""A VM's run directory: its sockets, console log and QEMU's stderr, removed with the VM."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["new_run_dir"]

_PREFIX = "rlm-vm-"


def new_run_dir() -> Path:
    """A fresh private directory for one VM (blocking: run it in a worker thread), after
    removing those whose owner process is gone.

    Short, in the temp directory: unix socket paths are limited to 107 bytes.
    """
    _sweep()
    run_dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
    (run_dir / "owner.pid").write_text(str(os.getpid()))
    return run_dir


def _sweep() -> None:
    # A host killed with SIGKILL takes QEMU along (PDEATHSIG) but cannot remove its run
    # directory; remove those whose owner process is gone.
    for path in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
        try:
            owner = int((path / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)
