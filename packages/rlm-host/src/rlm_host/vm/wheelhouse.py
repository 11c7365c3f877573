"""The wheelhouse: this workspace's ``rlm-protocol`` and ``rlm-guest`` wheels plus ``msgspec``.

It lives on the read-only cache share (``share/wheelhouse/<hash>/``) and the guest installs
the agent from it with pip and no network (:mod:`.provision`). ``<hash>`` covers the
sources of both packages and the msgspec version, so host and guest always run the same
protocol code, and an unchanged tree never rebuilds wheels (wheel files themselves are not
byte-reproducible, so they cannot be the key).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .cache import build_lock, downloads_dir, share_dir
from .errors import ImageBuildError

__all__ = ["GUEST_PACKAGES", "Wheelhouse", "ensure_wheelhouse", "find_workspace", "wheelhouse_hash"]

#: Workspace packages installed into the guest (rlm-guest depends on rlm-protocol).
GUEST_PACKAGES: tuple[str, ...] = ("rlm-protocol", "rlm-guest")
# Guest interpreters that need a binary msgspec wheel: (python, platform, required).
# Debian bookworm: CPython 3.11 on glibc. Alpine (the alpine recipe, best effort): CPython
# 3.12 on musl; pip in the guest picks whichever wheel matches.
_GUEST_TARGETS: tuple[tuple[str, str, bool], ...] = (
    ("3.11", "manylinux2014_x86_64", True),
    ("3.12", "musllinux_1_2_x86_64", False),
)
_COMPLETE_MARKER = ".complete"


@dataclass(frozen=True)
class Wheelhouse:
    """A complete wheelhouse on the share; ``relative`` is its path below the share root."""

    path: Path
    hash: str

    @property
    def relative(self) -> str:
        """Path relative to the share root, i.e. below ``/cache`` in the guest."""
        return f"wheelhouse/{self.hash}"


def find_workspace(start: Path | None = None) -> Path:
    """Return the uv workspace root holding the rlm packages (``$RLM_WORKSPACE`` wins).

    Raises:
        ImageBuildError: not running from a workspace checkout.
    """
    if env := os.environ.get("RLM_WORKSPACE"):
        return Path(env)
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and "[tool.uv.workspace]" in pyproject.read_text():
            return parent
    raise ImageBuildError(
        "cannot find the rlm workspace (needed to build the guest agent's wheels); "
        "run from a checkout or set RLM_WORKSPACE=/path/to/checkout"
    )


def _msgspec_version() -> str:
    # The guest gets the same msgspec as the host, so both encode frames identically.
    return importlib.metadata.version("msgspec")


def _package_dir(workspace: Path, name: str) -> Path:
    return workspace / "packages" / name


def wheelhouse_hash(workspace: Path) -> str:
    """Digest of the guest packages' sources and the msgspec version."""
    digest = hashlib.sha256(f"msgspec=={_msgspec_version()} {_GUEST_TARGETS}\n".encode())
    for name in GUEST_PACKAGES:
        root = _package_dir(workspace, name)
        files = [root / "pyproject.toml", *sorted((root / "src").rglob("*"))]
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(workspace)).encode() + b"\0")
                digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _build_wheel(workspace: Path, name: str, out: Path) -> None:
    uv = shutil.which("uv")
    if uv:
        cmd = [uv, "build", "--wheel", "--package", name, "--out-dir", str(out), "--quiet"]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(_package_dir(workspace, name))]
    result = subprocess.run(cmd, cwd=workspace, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ImageBuildError(f"building the {name} wheel failed:\n{result.stderr[-2000:]}")


def _download_msgspec(version: str, python: str, platform: str, dest: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "pip", "download", f"msgspec=={version}", "--no-deps",
        "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
        "--platform", platform, "--dest", str(dest), "--disable-pip-version-check", "--quiet",
    ]
    if subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode != 0 and shutil.which("uv"):
        # uv-made virtualenvs have no pip; run pip from uv's tool cache instead.
        cmd = ["uv", "tool", "run", "pip", *cmd[3:]]
    return subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _msgspec_wheel(out: Path) -> None:
    version = _msgspec_version()
    cache = downloads_dir() / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    for python, platform, required in _GUEST_TARGETS:
        tag = "cp" + python.replace(".", "")
        family = platform.split("_")[0].rstrip("0123456789")  # manylinux / musllinux
        pattern = f"msgspec-{version}-{tag}-*{family}*x86_64*.whl"
        if not list(cache.glob(pattern)):
            result = _download_msgspec(version, python, platform, cache)
            if result.returncode != 0 and required:
                raise ImageBuildError(
                    f"downloading msgspec {version} for the guest ({tag}, {platform}) failed (is PyPI reachable?):\n{result.stderr[-2000:]}"
                )
        for wheel in cache.glob(pattern):
            shutil.copy2(wheel, out / wheel.name)


def ensure_wheelhouse(workspace: Path | None = None) -> Wheelhouse:
    """Return the wheelhouse for the current sources, building it when missing.

    Raises:
        ImageBuildError: a wheel could not be built or downloaded.
    """
    workspace = workspace or find_workspace()
    key = wheelhouse_hash(workspace)
    final = share_dir() / "wheelhouse" / key
    if (final / _COMPLETE_MARKER).exists():
        return Wheelhouse(final, key)
    with build_lock(final):
        if (final / _COMPLETE_MARKER).exists():  # built by another start while we waited
            return Wheelhouse(final, key)
        return _create_wheelhouse(workspace, key, final)


def _create_wheelhouse(workspace: Path, key: str, final: Path) -> Wheelhouse:
    tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name in GUEST_PACKAGES:
            _build_wheel(workspace, name, tmp)
        _msgspec_wheel(tmp)
        (tmp / _COMPLETE_MARKER).write_text(key + "\n")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Wheelhouse(final, key)
