"""A guest that stops answering (a locked-up VM, a stopped process) is declared dead."""

from __future__ import annotations

import os
import signal

import pytest
import trio

import rlm_host.session
from rlm_host import GuestConnection, GuestDiedError, open_local_guest


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
