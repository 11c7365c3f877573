"""What every guest image recipe shares: the tools shown to the model, running a build step,
and looking at the root tree a recipe made."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

from .errors import ImageBuildError
from .recipe import BuildReporter

__all__ = ["TOOL_COMMANDS", "present_tools", "run_step", "tree_bytes"]

#: Tool name shown to the model -> command that must exist in the image.
TOOL_COMMANDS: dict[str, str] = {
    "python3": "python3", "pip": "pip3", "bash": "bash", "ripgrep": "rg", "jq": "jq", "fd": "fd",
    "file": "file", "tree": "tree", "tar": "tar", "unzip": "unzip", "gzip": "gzip",
    "sqlite3": "sqlite3", "git": "git", "diff": "diff", "pdftotext": "pdftotext",
    "find": "find", "xargs": "xargs", "grep": "grep", "sed": "sed", "awk": "awk", "ps": "ps",
    "xz": "xz", "bzip2": "bzip2", "bc": "bc", "less": "less",
}


def run_step(cmd: list[str], reporter: BuildReporter, *, what: str, fix: str) -> None:
    """Run ``cmd``, streaming its output to ``reporter``; raise ImageBuildError on failure."""
    reporter.detail("$ " + shlex.join(cmd[:3]) + (" ..." if len(cmd) > 3 else ""))
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace")
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{what}: {cmd[0]} is not installed. Fix: {fix}") from exc
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-29:], line]
        reporter.detail(line)
    if proc.wait() != 0:
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}). Fix: {fix}\n" + "\n".join(tail))


def present_tools(rootfs: Path) -> list[str]:
    """The names of :data:`TOOL_COMMANDS` whose command exists in the root tree ``rootfs``."""
    present = []
    for tool, command in TOOL_COMMANDS.items():
        for directory in ("usr/local/bin", "usr/bin", "bin", "usr/sbin"):
            if os.path.lexists(rootfs / directory / command):
                present.append(tool)
                break
    return present


def tree_bytes(root: Path) -> int:
    """Disk space the files under ``root`` take (allocated blocks; symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total
