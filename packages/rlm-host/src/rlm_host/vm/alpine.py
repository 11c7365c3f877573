"""The ``alpine`` image recipe, the seed's way: the Alpine "virt" ISO plus apk.

It needs the internet (Alpine's CDN): on hosts that only reach Debian's mirror (such as the
machines this project is developed on) it fails at once with a clear message; the
``debian`` recipe is the default for that reason. Steps: download the latest virt ISO
(cached), take ``apk.static`` from the ISO's own package repository, install the guest
packages and the ``linux-virt`` kernel into a root directory with it, then share the
Debian recipe's tail: PVH kernel, tiny initramfs, ext4 via ``mke2fs -d``.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from .cache import downloads_dir
from .build_steps import TOOL_COMMANDS, present_tools, run_step, tree_bytes
from .errors import ImageBuildError
from .guest_scripts import RLM_AGENT_START, RLM_INIT, RLM_PROVISION
from .recipe import INITRAMFS_NAME, KERNEL_NAME, ROOTFS_NAME, BuildReporter, RecipeOutput
from .initramfs import GUEST_MODULES, build_initramfs
from .kernel import extract_vmlinux

__all__ = ["ALPINE_PACKAGES", "AlpineRecipe"]

RECIPE_VERSION = 1
_MIRROR = os.environ.get("RLM_ALPINE_MIRROR", "https://dl-cdn.alpinelinux.org/alpine")
_RELEASES = f"{_MIRROR}/latest-stable/releases/x86_64"
_TIMEOUT = 10.0

#: The seed's package list, plus the kernel and a static busybox for the initramfs.
ALPINE_PACKAGES: tuple[str, ...] = (
    "alpine-baselayout", "busybox", "busybox-static", "python3", "py3-pip", "ripgrep", "jq", "fd",
    "file", "tree", "tar", "unzip", "gzip", "sqlite", "git", "diffutils", "poppler-utils",
    "coreutils", "findutils", "procps", "bash", "linux-virt",
)


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "rlm-image-build"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            data: bytes = response.read()
            return data
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ImageBuildError(
            f"cannot reach Alpine's download site ({url}): {exc}. The alpine recipe needs the internet; "
            "use the default debian recipe (rlm image build), which builds from the Debian apt mirror, "
            "or set RLM_ALPINE_MIRROR to a reachable Alpine mirror."
        ) from exc


class AlpineRecipe:
    """Alpine latest-stable: virt ISO (for apk.static) + apk from the network."""

    name = "alpine"

    def inputs(self) -> Mapping[str, object]:
        """Recipe version, mirror, packages, modules and guest scripts."""
        from .initramfs import init_script

        return {
            "version": RECIPE_VERSION,
            "mirror": _MIRROR,
            "packages": sorted(ALPINE_PACKAGES),
            "modules": list(GUEST_MODULES),
            "initramfs_init": init_script([]),
            "rlm_init": RLM_INIT,
            "rlm_provision": RLM_PROVISION,
            "rlm_agent_start": RLM_AGENT_START,
        }

    def _iso(self, reporter: BuildReporter) -> Path:
        reporter.step(f"looking up the Alpine virt ISO at {_RELEASES}")
        index = _fetch(f"{_RELEASES}/").decode("utf-8", "replace")
        names: list[str] = sorted(set(re.findall(r"alpine-virt-[0-9.]+-x86_64\.iso", index)))
        if not names:
            raise ImageBuildError(f"no alpine-virt ISO listed at {_RELEASES}/")
        target = downloads_dir() / names[-1]
        if not target.exists():
            reporter.step(f"downloading {names[-1]}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".part")
            tmp.write_bytes(_fetch(f"{_RELEASES}/{names[-1]}"))
            tmp.rename(target)
        return target

    def _apk_static(self, iso: Path, work: Path, reporter: BuildReporter) -> tuple[Path, str]:
        listing = subprocess.run(
            ["xorriso", "-indev", str(iso), "-find", "/apks", "-name", "apk-tools-static-*.apk"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )
        if listing.returncode != 0:
            raise ImageBuildError(f"xorriso failed (install xorriso: scripts/setup-system.sh): {listing.stderr[-500:]}")
        members = re.findall(r"'?(/apks/\S*apk-tools-static-[^'\s]+\.apk)'?", listing.stdout)
        if not members:
            raise ImageBuildError(f"{iso.name} has no apk-tools-static package")
        apk_file = work / "apk-tools-static.apk"
        run_step(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", members[0], str(apk_file)], reporter,
             what="extracting apk.static from the ISO", fix="install xorriso")
        # An .apk is concatenated gzip'd tar streams; tarfile reads through them in one pass.
        with tarfile.open(fileobj=io.BytesIO(apk_file.read_bytes()), mode="r:gz") as tar:
            member = tar.getmember("sbin/apk.static")
            extracted = tar.extractfile(member)
            assert extracted is not None
            binary = work / "apk.static"
            binary.write_bytes(extracted.read())
            binary.chmod(0o755)
        version = re.search(r"alpine-virt-([0-9]+\.[0-9]+)", iso.name)
        branch = f"v{version.group(1)}" if version else "latest-stable"
        return binary, branch

    def build(self, work: Path, reporter: BuildReporter) -> RecipeOutput:
        """Download, install with apk, then pack as in the debian recipe."""
        if os.geteuid() != 0:
            raise ImageBuildError("the alpine recipe runs apk --root and needs root (sudo)")
        iso = self._iso(reporter)
        apk, branch = self._apk_static(iso, work, reporter)
        rootfs = work / "rootfs"
        rootfs.mkdir()
        reporter.step(f"installing Alpine {branch} packages with apk")
        repos = [f"{_MIRROR}/{branch}/main", f"{_MIRROR}/{branch}/community"]
        run_step(
            [str(apk), "--root", str(rootfs), "--initdb", "--allow-untrusted", "--no-cache", "--arch", "x86_64",
             *(arg for repo in repos for arg in ("--repository", repo)), "add", *ALPINE_PACKAGES],
            reporter, what="apk add", fix="check that the Alpine mirror is reachable",
        )
        (rootfs / "etc/apk/repositories").write_text("\n".join(repos) + "\n")
        for sub in ("usr/local/sbin", "usr/local/bin", "cache"):
            (rootfs / sub).mkdir(parents=True, exist_ok=True)
        for name, text in (("rlm-init", RLM_INIT), ("rlm-provision", RLM_PROVISION), ("rlm-agent-start", RLM_AGENT_START)):
            (rootfs / "usr/local/sbin" / name).write_text(text)
            (rootfs / "usr/local/sbin" / name).chmod(0o755)
        for trimmed in ("usr/share/doc", "usr/share/man", "usr/share/locale"):
            shutil.rmtree(rootfs / trimmed, ignore_errors=True)

        reporter.step("extracting the kernel for PVH boot")
        modules_dirs = sorted((rootfs / "lib/modules").iterdir())
        if not modules_dirs:
            raise ImageBuildError("linux-virt installed no modules")
        release = modules_dirs[-1].name
        extract_vmlinux(rootfs / "boot/vmlinuz-virt", work / KERNEL_NAME)
        reporter.step("building the initramfs")
        modules = build_initramfs(busybox=rootfs / "bin/busybox.static", modules_root=modules_dirs[-1], target=work / INITRAMFS_NAME)
        # The initramfs holds the modules the guest needs; the rest is dead weight.
        shutil.rmtree(rootfs / "lib/modules", ignore_errors=True)
        shutil.rmtree(rootfs / "boot", ignore_errors=True)

        reporter.step("packing the root filesystem as ext4")
        tools = present_tools(rootfs)
        size_mb = max(1024, int(tree_bytes(rootfs) * 1.4) // 2**20 + 256)
        run_step(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-L", "rlmroot", "-d", str(rootfs), str(work / ROOTFS_NAME), f"{size_mb}M"],
             reporter, what="mke2fs", fix="install e2fsprogs (scripts/setup-system.sh)")
        shutil.rmtree(rootfs)
        return RecipeOutput(
            distribution=f"alpine {branch}", kernel_release=release, python_version="3 (alpine)",
            tools=[t for t in tools if t in TOOL_COMMANDS], packages={}, modules=modules,
        )
