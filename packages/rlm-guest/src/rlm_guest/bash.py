"""Bash blocks: ``/bin/sh -c`` in a process group of its own, both streams captured with caps."""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import IO

from rlm_protocol import OutputCapture

from .interrupt_slot import start_without_sigint

__all__ = ["kill_group", "run_bash"]


def kill_group(pgid: int) -> None:
    """SIGKILL a process group, ignoring one that is already gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pump(pipe: IO[bytes], sink: OutputCapture) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    fd = pipe.fileno()
    while chunk := os.read(fd, 65536):
        sink.write(decoder.decode(chunk))
    sink.write(decoder.decode(b"", final=True))
    pipe.close()


def run_bash(
    script: str,
    *,
    cwd: str,
    stdout: OutputCapture,
    stderr: OutputCapture,
    on_start: Callable[[int], None],
) -> int:
    """Run ``script`` and return its exit status (negative: killed by that signal).

    The shell leads a new process group (in the session process's session, so that the agent
    still finds it when it kills a session) and an interrupt kills the whole pipeline. When the
    shell exits, anything it left running in that group is killed too: a background job holding
    the pipes open would otherwise keep the block from ever ending.
    """
    process = subprocess.Popen(
        ["/bin/sh", "-c", script],
        cwd=cwd if os.path.isdir(cwd) else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
    )
    on_start(process.pid)
    assert process.stdout is not None and process.stderr is not None
    pumps = [
        threading.Thread(target=_pump, args=(process.stdout, stdout), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, stderr), daemon=True),
    ]
    for pump in pumps:
        start_without_sigint(pump)
    try:
        returncode = process.wait()
    finally:
        kill_group(process.pid)
    for pump in pumps:
        pump.join()
    return returncode
