"""The agent's spare session process (docs/decisions.md, "A spare session process, forked ahead
of time"), seen from inside the sessions: the agent forks the next spare after a block's result
(or a close's reply) when an open or a reset took the last one, so a session's first block sees
no spare, its later blocks exactly one, and each open is served by the spare ready before it.

Run against the real guest agent as a local subprocess: its session processes and the spare
are its children, which a block lists from ``/proc``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from rlm_host import GuestConnection, Session, open_local_guest

#: A block that names its own process and the agent's other live children (session processes
#: and the spare), as ``Final``. Without cgroups a close does not wait for its processes' end:
#: one that is exiting (``PF_EXITING``) or has a SIGKILL pending is left out.
_CHILDREN = r"""
import os
_agent = os.getppid()
_kids = []
for _e in os.listdir('/proc'):
    if not _e.isdigit():
        continue
    try:
        with open(f'/proc/{_e}/stat', 'rb') as _f:
            _fields = _f.read().rsplit(b')', 1)[1].split()
        with open(f'/proc/{_e}/status') as _f:
            _pending = [int(l.split()[1], 16) for l in _f if l.startswith(('SigPnd', 'ShdPnd'))]
    except OSError:
        continue
    _dying = int(_fields[6]) & 0x4 or any(p & (1 << 8) for p in _pending)
    if _fields[0] != b'Z' and int(_fields[1]) == _agent and not _dying:
        _kids.append(int(_e))
Final = {'me': os.getpid(), 'others': sorted(k for k in _kids if k != os.getpid())}
"""


@pytest.fixture
async def connection() -> AsyncIterator[GuestConnection]:
    async with open_local_guest() as stream, GuestConnection.open(
        stream, death_detail=stream.death_detail
    ) as connection:
        yield connection


async def _children(session: Session) -> dict[str, Any]:
    result = await session.exec(_CHILDREN)
    assert result.final is not None and result.final.ok, result
    value: dict[str, Any] = result.final.value
    return value


async def test_each_open_is_served_by_the_spare_forked_after_the_last_result(
    connection: GuestConnection,
) -> None:
    a = await connection.open_session()
    first = await _children(a)
    assert first["others"] == []  # the open took the spare; none is forked before a result
    (spare,) = (await _children(a))["others"]
    b = await connection.open_session()
    seen_by_b = await _children(b)
    assert seen_by_b["me"] == spare
    assert seen_by_b["others"] == [first["me"]]
    (next_spare,) = [pid for pid in (await _children(b))["others"] if pid != first["me"]]
    c = await connection.open_session()
    seen_by_c = await _children(c)
    assert seen_by_c["me"] == next_spare
    assert sorted(seen_by_c["others"]) == sorted([first["me"], spare])


async def test_an_open_without_a_spare_forks_one_at_once(connection: GuestConnection) -> None:
    a = await connection.open_session()
    b = await connection.open_session()  # a took the spare, and no result came since
    seen_by_a, seen_by_b = await _children(a), await _children(b)
    assert seen_by_a["others"] == [seen_by_b["me"]]
    # b's block ran after a's result: the spare forked then stands beside it.
    assert len(seen_by_b["others"]) == 2 and seen_by_a["me"] in seen_by_b["others"]


async def test_closes_do_not_add_spares(connection: GuestConnection) -> None:
    for _ in range(3):
        async with await connection.open_session() as session:
            await session.exec("pass")
    async with await connection.open_session() as session:
        first, second = await _children(session), await _children(session)
    assert first["others"] == [] and len(second["others"]) == 1, (first, second)


async def test_a_close_before_any_result_forks_the_spare(connection: GuestConnection) -> None:
    a = await connection.open_session()
    await a.exec("pass")  # its result forked a spare
    async with await connection.open_session() as b:
        seen_by_b = await _children(b)  # b took that spare; b's own result forks the next
        assert seen_by_b["others"] == [(await _children(a))["me"]]
        (spare,) = [pid for pid in (await _children(a))["others"] if pid != seen_by_b["me"]]
    async with await connection.open_session():
        pass  # took that spare and ran nothing: its close's reply forks the next
    seen_by_a = await _children(a)
    assert len(seen_by_a["others"]) == 1 and seen_by_b["me"] not in seen_by_a["others"], seen_by_a


async def test_a_spare_that_died_is_replaced(connection: GuestConnection) -> None:
    a = await connection.open_session()
    await a.exec("pass")
    (spare,) = (await _children(a))["others"]
    killed = await a.exec(f"import os, signal, time\nos.kill({spare}, signal.SIGKILL)\ntime.sleep(0.2)")
    assert killed.error is None, killed
    (replacement,) = (await _children(a))["others"]
    assert replacement != spare
    b = await connection.open_session()
    first = await b.exec("import os\nprint(os.getpid())")
    # The replacement, not the dead spare: the block runs and nothing says state was lost.
    assert first.stdout.text == f"{replacement}\n" and first.error is None, first
    assert not first.session_reset


async def test_a_reset_forks_the_next_spare(connection: GuestConnection) -> None:
    a = await connection.open_session()
    await a.exec("pass")
    (spare,) = (await _children(a))["others"]
    died = await a.exec("import os\nos._exit(3)")
    assert died.session_reset, died
    seen = await _children(a)
    assert seen["me"] == spare  # the reset took the spare
    assert len(seen["others"]) == 1 and seen["others"] != [spare]
