"""Finding, killing and reaping the processes of a session (Linux ``/proc``).

Each session process calls ``setsid``, so every process a block starts — a bash pipeline, a
``subprocess``, a fork bomb — carries that session id unless it deliberately calls ``setsid``
itself. Killing by session id therefore stops everything a block started, where killing one
process or one process group would leave the rest running.
"""

from __future__ import annotations

import os
import signal

__all__ = ["kill_session", "reap_children", "session_members"]

#: A fork bomb forks between our scan and our kill; each pass kills what the last one saw, and
#: killed processes cannot fork, so a few passes settle it.
_KILL_PASSES = 20

_statuses: dict[int, int] = {}


def session_members(sid: int) -> list[int]:
    """Pids of the processes whose session id is ``sid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        # After the ")" that ends the command name: state, ppid, pgrp, session, ...
        # A zombie is already dead; it only waits to be reaped.
        if int(fields[3]) == sid and fields[0] != b"Z":
            members.append(int(entry.name))
    return members


def kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the session leader's pid)."""
    try:
        os.kill(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(_KILL_PASSES):
        members = [pid for pid in session_members(sid) if pid != os.getpid()]
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def reap_children() -> dict[int, int]:
    """Collect every exited child without blocking; return all statuses seen so far by pid.

    The agent may be PID 1 in the VM, and then orphans of model code become its children.
    """
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        _statuses[pid] = status
    return _statuses
