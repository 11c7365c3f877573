"""Finding, killing and reaping the processes of a session (Linux ``/proc``).

Each session process calls ``setsid``, so every process a block starts — a bash pipeline, a
``subprocess``, a fork bomb — carries that session id unless it deliberately calls ``setsid``
itself. Killing by session id therefore stops everything a block started, where killing one
process or one process group would leave the rest running.

A process that *does* call ``setsid`` (``setsid cmd &``, a double-forking daemon) leaves its
session. The agent is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so such a process stays
its descendant even when orphaned, and :func:`kill_strays` finds it: every descendant of the
agent whose session is not a live session's is killed.
"""

from __future__ import annotations

import ctypes
import os
import signal

__all__ = ["become_subreaper", "kill_session", "kill_strays", "reap_children", "session_members", "strays"]

#: A fork bomb forks between our scan and our kill; each pass kills what the last one saw, and
#: killed processes cannot fork, so a few passes settle it.
_KILL_PASSES = 20

_PR_SET_CHILD_SUBREAPER = 36

_statuses: dict[int, int] = {}


def session_members(sid: int) -> list[int]:
    """Pids of the live processes whose session id is ``sid``."""
    return [pid for pid, (_, session) in _process_table().items() if session == sid]


def kill_session(sid: int, *, spare_leader: bool = False) -> None:
    """SIGKILL every process of session ``sid`` (the session leader's pid).

    ``spare_leader``: kill what the leader started but not the leader itself (after an
    interrupted block: the session lives on, what the block left behind does not).
    """
    if not spare_leader:
        _kill(sid)
    spared = {os.getpid(), sid} if spare_leader else {os.getpid()}
    for _ in range(_KILL_PASSES):
        members = [pid for pid in session_members(sid) if pid not in spared]
        if not members:
            return
        for pid in members:
            _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _process_table() -> dict[int, tuple[int, int]]:
    """``{pid: (ppid, sid)}`` of every live process (a zombie is dead, only not yet reaped)."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        # After the ")" that ends the command name: state, ppid, pgrp, session, ...
        if fields[0] != b"Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    return table


def strays(root: int, live_sessions: set[int]) -> list[int]:
    """Descendants of ``root`` whose session id is not in ``live_sessions``.

    The leaders themselves never count (a session process that was just forked has not called
    ``setsid`` yet).
    """
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _sid) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        if pid not in live_sessions and table[pid][1] not in live_sessions:
            found.append(pid)
    return found


def kill_strays(live_sessions: set[int]) -> int:
    """SIGKILL the agent's descendants that belong to no live session; return how many."""
    killed: set[int] = set()
    for _ in range(_KILL_PASSES):
        found = strays(os.getpid(), live_sessions)
        if not found:
            break
        for pid in found:
            _kill(pid)
        killed.update(found)
    return len(killed)


def become_subreaper() -> None:
    """Make orphans of our descendants our children (Linux ``PR_SET_CHILD_SUBREAPER``).

    Without it, a process that double-forks is re-parented to PID 1 and lost to
    :func:`kill_strays`.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
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
