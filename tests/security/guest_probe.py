"""What the security tests (issue 7) observe: the processes in the guest, the host's memory.

The VM fixtures (``vm_config``, ``shared_vm``) come from ``tests/vm_plugin.py``: these tests
use the one VM of the test session, like ``tests/vm``.
"""

from __future__ import annotations

from typing import Any

from rlm_host.connection import GuestConnection

#: A block that lists the guest's user-space processes (not kernel threads, not zombies, not
#: the processes of the session that runs it) as ``Final``: [[pid, ppid, sid, cmdline], ...].
GUEST_PS = r"""
import os
_me = os.getsid(0)
_rows = []
for _e in os.listdir('/proc'):
    if not _e.isdigit():
        continue
    try:
        with open(f'/proc/{_e}/stat', 'rb') as _f:
            _stat = _f.read()
        with open(f'/proc/{_e}/cmdline', 'rb') as _f:
            _cmd = _f.read()
    except OSError:
        continue
    _fields = _stat.rsplit(b')', 1)[1].split()
    if not _cmd or _fields[0] == b'Z' or int(_fields[3]) == _me:
        continue
    _rows.append([int(_e), int(_fields[1]), int(_fields[3]), _cmd.replace(b'\0', b' ').decode(errors='replace')[:80]])
Final = sorted(_rows)
"""


async def guest_processes(connection: GuestConnection) -> list[list[Any]]:
    """The guest's user-space processes, seen from a fresh session (which is left out)."""
    async with await connection.open_session() as probe:
        result = await probe.exec(GUEST_PS)
    assert result.final is not None and result.final.ok, result
    rows: list[list[Any]] = result.final.value
    return rows


def host_rss_kib() -> int:
    """Resident memory of this (the host) process, from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")
