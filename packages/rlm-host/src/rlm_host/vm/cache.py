"""Where the VM layer keeps its files: the XDG cache directory.

Layout (``$XDG_CACHE_HOME/rlm``, default ``~/.cache/rlm``)::

    images/<hash>/          one built guest image (rootfs.ext4, vmlinux, initramfs, manifest.json)
    images/<hash>/agent/    per-wheelhouse agent overlays (qcow2 over rootfs.ext4)
    share/                  exported read-only to every guest as the 9p tag ``rlmcache``
    share/wheelhouse/<hash>/ wheels of rlm-protocol, rlm-guest and msgspec
    downloads/              downloaded inputs (msgspec wheel, Alpine ISO)
    accel.json              the cached accelerator probe result
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["build_lock", "cache_root", "downloads_dir", "images_dir", "share_dir"]


@contextmanager
def build_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive lock for building ``target`` (a file or directory of the cache).

    Several VMs may start at once (``rlm batch`` workers, parallel test runs), in one process or
    several; the first builds and the others wait, then find the finished artifact.
    ``flock`` locks conflict between open files even within one process, so threads are covered.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cache_root() -> Path:
    """Return ``$XDG_CACHE_HOME/rlm`` (``~/.cache/rlm`` when unset); not created here."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rlm"


def images_dir() -> Path:
    """Directory holding one sub-directory per built image hash."""
    return cache_root() / "images"


def share_dir() -> Path:
    """Directory exported read-only to guests over 9p (mounted at ``/cache``)."""
    return cache_root() / "share"


def downloads_dir() -> Path:
    """Directory for downloaded build inputs, kept across image builds."""
    return cache_root() / "downloads"
