"""A tiny initramfs: busybox-static, the few kernel modules the guest needs, and ``/init``.

Why not Debian's own initrd: initramfs-tools' 35 MB image costs about 5 s more under TCG
(DESIGN.md). Ours is a few MB, uncompressed (the emulated CPU would spend longer in gzip
than the copy saves), and does only what our VM needs:

1. load the virtio, ext4, overlay, 9p and virtio-console modules in dependency order
   (computed here on the host from each module's ``.modinfo``, so the guest needs no
   ``modprobe`` or ``modules.dep``);
2. mount the root image read-only and put a tmpfs-backed overlay on top, so the guest can
   write anywhere while the image file is never modified (and many VMs can share it);
3. ``switch_root`` into ``/usr/local/sbin/rlm-init`` in the image.

With ``rlm.provision`` on the kernel command line the root is mounted read-write instead
(no overlay): that boot installs the agent into a per-wheelhouse qcow2 overlay.
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageBuildError

__all__ = ["GUEST_MODULES", "InitramfsFile", "build_initramfs", "init_script", "resolve_modules", "write_cpio"]

# Modules the guest needs, beyond what the kernel has built in. Dependencies are added
# by resolve_modules(). virtio_net is loaded even without --network: it costs little and
# keeps one image for both. crc32c_generic: ext4's metadata checksums ask the crypto API
# for "crc32c" at mount time, which is a soft dependency modinfo does not list.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "crc32c_generic",
    "ext4",
    "overlay",
    "9pnet_virtio",
    "9p",
    "virtio_net",
)

# Busybox applets /init uses, installed as symlinks (cheaper than `busybox --install` at boot).
_APPLETS = ("sh", "mount", "umount", "mkdir", "insmod", "switch_root", "cat", "echo", "sleep", "poweroff", "ls")


@dataclass(frozen=True)
class InitramfsFile:
    """One entry of the cpio archive: a regular file, directory or symlink."""

    path: str
    mode: int
    data: bytes = b""


def _modinfo(path: Path) -> dict[str, list[str]]:
    # .modinfo is a run of NUL-separated "key=value" strings; scanning the whole file for
    # them is good enough (and simpler than an ELF parser) because we only read keys that
    # do not occur elsewhere in a module image.
    raw = _read_module(path)
    info: dict[str, list[str]] = {}
    for key in (b"depends=", b"softdep="):
        start = raw.find(b"\0" + key)
        while start != -1:
            end = raw.find(b"\0", start + 1)
            value = raw[start + 1 + len(key) : end].decode("ascii", "replace")
            info.setdefault(key[:-1].decode(), []).append(value)
            start = raw.find(b"\0" + key, end)
    return info


def _read_module(path: Path) -> bytes:
    # Debian ships plain .ko files, Alpine .ko.gz, newer kernels .ko.xz; busybox insmod
    # wants them plain.
    raw = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(raw)
    if path.suffix == ".gz":
        return gzip.decompress(raw)
    return raw


def _index_modules(modules_root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in modules_root.rglob("*.ko*"):
        name = path.name.split(".ko")[0].replace("-", "_")
        index[name] = path
    return index


def resolve_modules(modules_root: Path, wanted: Iterable[str] = GUEST_MODULES) -> list[Path]:
    """Return the module files for ``wanted`` plus their dependencies, in load order.

    Modules that are built into the kernel (no ``.ko`` file) are skipped silently only
    when ``modules.builtin`` lists them.

    Raises:
        ImageBuildError: a wanted module is neither a file nor built in.
    """
    index = _index_modules(modules_root)
    builtin: set[str] = set()
    builtin_file = modules_root / "modules.builtin"
    if builtin_file.exists():
        for line in builtin_file.read_text().splitlines():
            builtin.add(Path(line).name.split(".ko")[0].replace("-", "_"))
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = index.get(name)
        if path is None:
            if name in builtin:
                return
            raise ImageBuildError(f"kernel module {name!r} not found under {modules_root}")
        info = _modinfo(path)
        for dep_list in info.get("depends", []):
            for dep in filter(None, dep_list.split(",")):
                visit(dep)
        for soft in info.get("softdep", []):
            # "pre: a b post: c" — only the pre-dependencies must be loaded first.
            words = soft.split()
            if "pre:" in words:
                for dep in words[words.index("pre:") + 1 :]:
                    if dep.endswith(":"):
                        break
                    if dep.replace("-", "_") in index:
                        visit(dep)
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def _module_name(path: Path) -> str:
    return path.name.split(".ko")[0]


def init_script(module_names: list[str]) -> str:
    """The initramfs ``/init`` that loads ``module_names`` (in order) and switches to the root
    disk; the recipes hash it into the image (``init_script([])`` stands for its text)."""
    insmods = "\n".join(f"insmod /lib/modules/{name}.ko" for name in module_names)
    return f"""#!/bin/sh
# rlm initramfs /init (generated by rlm_host.vm.initramfs)
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "rlm-init: modules $(cat /proc/uptime)"
{insmods}
echo "rlm-init: modules loaded $(cat /proc/uptime)"
provision=0
for arg in $(cat /proc/cmdline); do
  [ "$arg" = rlm.provision ] && provision=1
done
fail() {{ echo "rlm-init: FATAL: $*"; poweroff -f; }}
if [ "$provision" = 1 ]; then
  mount -t ext4 -o rw /dev/vda /newroot || fail "cannot mount /dev/vda read-write"
else
  # noload: the image is attached read-only, so the journal must not be replayed.
  mount -t ext4 -o ro,noload /dev/vda /lower || fail "cannot mount /dev/vda"
  mount -t tmpfs -o mode=0755 tmpfs /rw || fail "cannot mount tmpfs"
  mkdir -p /rw/upper /rw/work
  mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
    || fail "cannot mount the overlay root"
  mkdir -p /newroot/run/rlm/lower /newroot/run/rlm/rw
  mount --move /lower /newroot/run/rlm/lower
  mount --move /rw /newroot/run/rlm/rw
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /usr/local/sbin/rlm-init
"""


def write_cpio(entries: Iterable[InitramfsFile], target: Path) -> None:
    """Write ``entries`` as an uncompressed ``newc`` cpio archive (the initramfs format)."""

    def pad(n: int) -> bytes:
        return b"\0" * ((4 - n % 4) % 4)

    with target.open("wb") as out:
        inode = 1
        for entry in [*entries, InitramfsFile("TRAILER!!!", 0)]:
            name = entry.path.lstrip("/").encode() + b"\0"
            header = (
                "070701"
                + "".join(
                    f"{v:08x}"
                    for v in (
                        inode, entry.mode, 0, 0, 1, 0, len(entry.data), 0, 0, 0, 0, len(name), 0,
                    )
                )
            ).encode()
            out.write(header + name + pad(len(header) + len(name)))
            out.write(entry.data + pad(len(entry.data)))
            inode += 1


def build_initramfs(*, busybox: Path, modules_root: Path, target: Path) -> list[str]:
    """Build the initramfs at ``target``; return the module names it loads, in order.

    ``busybox`` must be a static binary (Debian's ``busybox-static``); ``modules_root`` is
    ``lib/modules/<release>`` of the guest kernel.

    Raises:
        ImageBuildError: busybox or a module is missing.
    """
    if not busybox.is_file():
        raise ImageBuildError(f"static busybox not found at {busybox} (install busybox-static in the image)")
    modules = resolve_modules(modules_root)
    names = [_module_name(p) for p in modules]
    dirs = ["dev", "proc", "sys", "bin", "lib", "lib/modules", "lower", "rw", "newroot"]
    entries = [InitramfsFile(d, stat.S_IFDIR | 0o755) for d in dirs]
    entries.append(InitramfsFile("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()))
    entries += [InitramfsFile(f"bin/{a}", stat.S_IFLNK | 0o777, b"busybox") for a in _APPLETS]
    for path in modules:
        data = _read_module(path)
        entries.append(InitramfsFile(f"lib/modules/{_module_name(path)}.ko", stat.S_IFREG | 0o644, data))
    entries.append(InitramfsFile("init", stat.S_IFREG | 0o755, init_script(names).encode()))
    tmp = target.with_suffix(".part")
    write_cpio(entries, tmp)
    os.replace(tmp, target)
    return names
