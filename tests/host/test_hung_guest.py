"""A guest that stops answering (a locked-up VM, a stopped process) is declared dead."""

from __future__ import annotations

import os
import signal

import pytest
import trio

import rlm_host.session
from rlm_host import GuestConnection, GuestDiedError, open_local_guest
from rlm_host.starvation import thread_waits


async def test_a_block_without_an_answer_past_its_timeout_ends_the_guest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rlm_host.session, "HUNG_GUEST_SECONDS", 1.0)
    async with open_local_guest() as stream, GuestConnection.open(stream) as connection:
        session = await connection.open_session()
        assert (await session.exec("x = 1")).error is None
        # The agent itself stops: nothing in the guest can enforce the block's timeout now.
        os.kill(stream.process.pid, signal.SIGSTOP)
        try:
            with trio.fail_after(60):  # a guard against the hang itself
                with pytest.raises(GuestDiedError, match="the guest is hung"):
                    await session.exec("x = 2", timeout=0.5)
            assert connection.closed
            with pytest.raises(GuestDiedError):
                await connection.open_session()
        finally:
            os.kill(stream.process.pid, signal.SIGCONT)


async def test_a_block_without_a_timeout_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """No timeout, no verdict: a long block is not mistaken for a hung guest."""
    monkeypatch.setattr(rlm_host.session, "HUNG_GUEST_SECONDS", 0.0)
    async with open_local_guest() as stream, GuestConnection.open(stream) as connection:
        session = await connection.open_session()
        result = await session.exec("import time; time.sleep(1.5); Final = 'slept'")
        assert result.final is not None and result.final.value == "slept"
        assert not connection.closed


async def test_a_guest_starved_of_cpu_is_not_declared_hung(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time the guest waited for a host CPU does not count toward the hung verdict.

    The guest here gets no CPU at all (stopped), and the host is told that its threads waited
    for a CPU the whole time, as on a host loaded beyond its cores: the block is waited for past
    its verdict, and its result arrives once the guest runs again.
    """
    monkeypatch.setattr(rlm_host.session, "HUNG_GUEST_SECONDS", 0.5)
    async with open_local_guest() as stream:
        stopped_at: list[float] = []

        def all_starved() -> dict[int, float]:
            # The wait of a thread that has been runnable, and not running, since the stop.
            return {1: (trio.current_time() - stopped_at[0]) if stopped_at else 0.0}

        async with GuestConnection.open(stream, cpu_waits=all_starved) as connection:
            session = await connection.open_session()
            assert (await session.exec("x = 1")).error is None
            os.kill(stream.process.pid, signal.SIGSTOP)
            stopped_at.append(trio.current_time())
            verdict_due = 0.2 + 0.5  # the block's timeout plus HUNG_GUEST_SECONDS

            async def resume_later() -> None:
                await trio.sleep(3 * verdict_due)
                os.kill(stream.process.pid, signal.SIGCONT)

            try:
                with trio.fail_after(60):  # a guard against the hang itself
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(resume_later)
                        result = await session.exec("x = 2; Final = x", timeout=0.2)
            finally:
                os.kill(stream.process.pid, signal.SIGCONT)
            assert result.final is not None and result.final.value == 2
            assert not connection.closed


def test_thread_waits_reads_this_process() -> None:
    """The real source of the figures: this process's threads, from /proc."""
    waits = thread_waits(os.getpid())
    assert os.getpid() in waits and all(wait >= 0 for wait in waits.values())


async def test_a_starved_guest_confirms_its_interrupt_before_the_session_is_used_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancelled block waits for the guest's interrupt confirmation, not counting time the
    guest waited for a host CPU (as the hung verdict does).

    Before, the wait was 5 s of wall-clock time: on a loaded host a guest still killing a fork
    bomb answered later, and the next block in the session was refused with ``session_busy``.
    """
    monkeypatch.setattr(rlm_host.session, "INTERRUPT_CONFIRM_SECONDS", 0.5)
    async with open_local_guest() as stream:
        stopped_at: list[float] = []
        resumed: list[bool] = []

        def all_starved() -> dict[int, float]:
            return {1: (trio.current_time() - stopped_at[0]) if stopped_at else 0.0}

        async with GuestConnection.open(stream, cpu_waits=all_starved) as connection:
            session = await connection.open_session()
            assert (await session.exec("x = 1")).error is None

            async def stop_then_resume() -> None:
                await trio.sleep(0.5)  # the block is running by then, or its Exec is queued
                os.kill(stream.process.pid, signal.SIGSTOP)
                stopped_at.append(trio.current_time())
                await trio.sleep(1.5)  # three times the confirmation's bound
                resumed.append(True)
                os.kill(stream.process.pid, signal.SIGCONT)

            try:
                with trio.fail_after(60):  # a guard against the hang itself
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(stop_then_resume)
                        with trio.move_on_after(1.0):
                            await session.exec("while True: pass")
                        # The cancellation returned only once the guest had answered.
                        assert resumed == [True]
                result = await session.exec("print(x)")
            finally:
                os.kill(stream.process.pid, signal.SIGCONT)
            assert result.stdout.text == "1\n"
            assert not connection.closed


async def test_only_the_blocks_thread_takes_the_agents_sigint() -> None:
    """Every other thread of a session process blocks SIGINT, so the kernel delivers the agent's
    interrupt to the thread that runs the block: taken by the reader thread, it left a block
    asleep in ``time.sleep`` to its 2 s grace and a reset (seen once in CI)."""
    code = (
        "import os\n"
        "for tid in sorted(os.listdir('/proc/self/task')):\n"
        "    status = open(f'/proc/self/task/{tid}/status').read().splitlines()\n"
        "    blocked = int(next(l for l in status if l.startswith('SigBlk:')).split()[1], 16)\n"
        "    print(int(tid) == os.getpid(), bool(blocked & 1 << 1))\n"
    )
    async with open_local_guest() as stream, GuestConnection.open(stream) as connection:
        session = await connection.open_session()
        # A bash block first: it starts threads of its own (its output pumps).
        assert (await session.exec("echo warm", "bash")).stdout.text == "warm\n"
        result = await session.exec(code)
    rows = result.stdout.text.splitlines()
    assert "True False" in rows and len(rows) >= 2, rows  # the main thread, and others
    assert [row for row in rows if row.startswith("False")] == ["False True"] * (len(rows) - 1), rows
