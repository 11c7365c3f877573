"""The ``debian`` image recipe: a trimmed bookworm root built with mmdebstrap.

Why mmdebstrap: it builds a complete root filesystem from the host's apt mirror in about a
minute, with no VM and no network beyond the Debian mirror (the only one these machines
reach). The kernel package is *not* installed into the root: it would pull in initramfs-tools
and 390 MB of modules. Instead a hook downloads the ``linux-image-*-amd64`` package (the
generic flavour: the ``-cloud-`` kernel lacks 9p) and unpacks it next to the root; we take
the uncompressed vmlinux and the dozen modules the initramfs needs from it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from .build_steps import TOOL_COMMANDS, present_tools, run_step, tree_bytes
from .errors import ImageBuildError
from .guest_scripts import RLM_AGENT_START, RLM_INIT, RLM_PROVISION
from .recipe import INITRAMFS_NAME, KERNEL_NAME, ROOTFS_NAME, BuildReporter, RecipeOutput
from .initramfs import GUEST_MODULES, build_initramfs
from .kernel import extract_vmlinux

__all__ = ["DEBIAN_PACKAGES", "DebianRecipe", "TOOL_COMMANDS"]

# Bump when the build steps change in a way the inputs below do not capture.
RECIPE_VERSION = 1
SUITE = "bookworm"

#: Packages of the guest root (mmdebstrap's minbase variant adds the essential set).
DEBIAN_PACKAGES: tuple[str, ...] = (
    "python3", "python3-pip", "ripgrep", "jq", "fd-find", "file", "tree", "tar", "unzip",
    "gzip", "sqlite3", "git", "diffutils", "poppler-utils", "findutils", "coreutils",
    "procps", "busybox-static", "ca-certificates", "less", "bc", "xz-utils", "bzip2",
)

# Paths dpkg never unpacks: documentation, man pages and translations are dead weight
# in a sandbox (copyright files stay, as Debian asks).
_DPKG_OPTIONS: tuple[str, ...] = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/bash-completion/*",
    "path-exclude=/usr/share/zsh/*",
)

# Removed after installation: caches that only matter to apt, and Python test suites.
_TRIM_PATHS: tuple[str, ...] = (
    "var/cache/apt", "var/lib/apt/lists", "var/log", "usr/share/doc-base",
    "usr/share/pixmaps", "usr/share/icons", "usr/share/common-licenses",
)

_KERNEL_DIR = "kernel"
_ROOTFS_DIR = "rootfs"


def _privilege_prefix() -> list[str]:
    """``[]`` as root, ``["sudo", "-n"]`` if passwordless sudo works, else an error.

    Why root: the tree must hold root-owned files (setuid bits, /etc/shadow) exactly as
    dpkg made them, and ``mke2fs -d`` must be able to read all of them.
    """
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    raise ImageBuildError(
        "building the debian image needs root (mmdebstrap and mke2fs run as root). "
        "Fix: sudo -E env PATH=\"$PATH\" rlm image build   (or allow passwordless sudo)"
    )


def _dpkg_versions(rootfs: Path) -> dict[str, str]:
    versions: dict[str, str] = {}
    status = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    for block in status.split("\n\n"):
        name = re.search(r"^Package: (\S+)", block, re.M)
        version = re.search(r"^Version: (\S+)", block, re.M)
        if name and version and "install ok installed" in block:
            versions[name.group(1)] = version.group(1)
    return versions




class DebianRecipe:
    """Debian bookworm, built with mmdebstrap from the host's apt mirror."""

    name = "debian"

    def __init__(self, mirror: str | None = None) -> None:
        # None: mmdebstrap's default (deb.debian.org), which the host apt also uses here.
        self.mirror = mirror or os.environ.get("RLM_DEBIAN_MIRROR")

    def inputs(self) -> Mapping[str, object]:
        """Recipe version, suite, packages, dpkg filters, modules and the guest scripts."""
        from .initramfs import init_script  # the generated /init is part of the image

        return {
            "version": RECIPE_VERSION,
            "suite": SUITE,
            "packages": sorted(DEBIAN_PACKAGES),
            "dpkg": list(_DPKG_OPTIONS),
            "modules": list(GUEST_MODULES),
            "initramfs_init": init_script([]),
            "rlm_init": RLM_INIT,
            "rlm_provision": RLM_PROVISION,
            "rlm_agent_start": RLM_AGENT_START,
        }

    def _mmdebstrap_command(self, work: Path) -> list[str]:
        rootfs = work / _ROOTFS_DIR
        kernel = work / _KERNEL_DIR
        # Root mode: the hooks chroot into the tree. Non-root users go through sudo
        # (see _privilege_prefix), so mmdebstrap always runs as root.
        mode = "root"
        download_kernel = (
            'chroot "$1" sh -c \'cd /tmp && apt-get download -q '
            '"$(apt-cache depends linux-image-amd64 | sed -n "s/.*Depends: \\(linux-image-[0-9].*\\)/\\1/p" | head -n1)"\''
        )
        unpack_kernel = f'mkdir -p {shlex.quote(str(kernel))} && dpkg-deb -x "$1"/tmp/linux-image-*.deb {shlex.quote(str(kernel))} && rm -f "$1"/tmp/*.deb'
        install_scripts = " && ".join(
            [
                'mkdir -p "$1"/usr/local/sbin "$1"/usr/local/bin "$1"/cache',
                'ln -sf /usr/bin/fdfind "$1"/usr/local/bin/fd',
                f'printf %s {shlex.quote(RLM_INIT)} > "$1"/usr/local/sbin/rlm-init',
                f'printf %s {shlex.quote(RLM_PROVISION)} > "$1"/usr/local/sbin/rlm-provision',
                f'printf %s {shlex.quote(RLM_AGENT_START)} > "$1"/usr/local/sbin/rlm-agent-start',
                'chmod 0755 "$1"/usr/local/sbin/rlm-init "$1"/usr/local/sbin/rlm-provision "$1"/usr/local/sbin/rlm-agent-start',
                'echo rlm-guest > "$1"/etc/hostname',
            ]
        )
        cmd = [
            "mmdebstrap",
            "--variant=minbase",
            f"--mode={mode}",
            "--format=directory",
            "--aptopt=APT::Install-Recommends \"false\"",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            *(f"--dpkgopt={opt}" for opt in _DPKG_OPTIONS),
            f"--customize-hook={download_kernel}",
            f"--customize-hook={unpack_kernel}",
            f"--customize-hook={install_scripts}",
            SUITE,
            str(rootfs),
        ]
        if self.mirror:
            cmd.append(self.mirror)
        return cmd

    def build(self, work: Path, reporter: BuildReporter) -> RecipeOutput:
        """Bootstrap, trim, extract kernel and initramfs, then pack the root as ext4."""
        rootfs = work / _ROOTFS_DIR
        sudo = _privilege_prefix()
        reporter.step(f"bootstrapping Debian {SUITE} with mmdebstrap" + (" (through sudo)" if sudo else ""))
        run_step(
            [*sudo, *self._mmdebstrap_command(work)],
            reporter,
            what="mmdebstrap",
            fix="run scripts/setup-system.sh (installs mmdebstrap) and check that apt can reach the Debian mirror",
        )
        reporter.step("trimming the root filesystem")
        trim = [str(rootfs / rel) + "/" for rel in _TRIM_PATHS] + [str(p) for p in rootfs.glob("usr/lib/python3*/test")]
        run_step([*sudo, "sh", "-c", 'for d in "$@"; do rm -rf "$d"; done', "trim", *trim], reporter,
             what="trimming", fix="check permissions of the cache directory")
        for rel in _TRIM_PATHS:
            if not (rootfs / rel).exists():
                run_step([*sudo, "mkdir", "-p", str(rootfs / rel)], reporter, what="trimming", fix="")

        reporter.step("extracting the kernel for PVH boot")
        kernel_root = work / _KERNEL_DIR
        bzimages = sorted(kernel_root.glob("boot/vmlinuz-*"))
        if not bzimages:
            raise ImageBuildError("the linux-image package had no /boot/vmlinuz-*; is the apt mirror complete?")
        release = bzimages[-1].name.removeprefix("vmlinuz-")
        extract_vmlinux(bzimages[-1], work / KERNEL_NAME)

        reporter.step("building the initramfs")
        modules_root = kernel_root / "lib/modules" / release
        modules = build_initramfs(busybox=rootfs / "bin/busybox", modules_root=modules_root, target=work / INITRAMFS_NAME)
        run_step([*sudo, "rm", "-rf", str(kernel_root)], reporter, what="cleaning up", fix="")

        reporter.step("packing the root filesystem as ext4")
        packages = _dpkg_versions(rootfs)
        tools = present_tools(rootfs)
        # The file is sparse, so generous headroom is free; the agent's pip install at
        # provisioning time writes into it.
        size_mb = max(1024, int(tree_bytes(rootfs) * 1.4) // 2**20 + 256)
        run_step(
            [*sudo, "mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "rlmroot", "-d", str(rootfs), str(work / ROOTFS_NAME), f"{size_mb}M"],
            reporter,
            what="mke2fs",
            fix="install e2fsprogs >= 1.43 (mke2fs -d), e.g. run scripts/setup-system.sh",
        )
        run_step([*sudo, "rm", "-rf", str(rootfs)], reporter, what="cleaning up", fix="")
        if sudo:
            # Files written by root through sudo: hand them to the user who owns the cache.
            run_step([*sudo, "chown", f"{os.getuid()}:{os.getgid()}", str(work / ROOTFS_NAME)], reporter, what="chown", fix="")
        wanted = {"python3", "python3-pip", "ripgrep", "jq", "fd-find", "file", "tree", "sqlite3", "git", "poppler-utils", "busybox-static", "coreutils", "findutils", "diffutils", "tar", "unzip", "gzip"}
        return RecipeOutput(
            distribution=f"debian {SUITE}",
            kernel_release=release,
            python_version=packages.get("python3", "unknown"),
            tools=tools,
            packages={name: version for name, version in packages.items() if name in wanted},
            modules=modules,
        )
