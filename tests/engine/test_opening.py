"""The first model request goes out while the guest starts; sessions open and close around it.

The guest is replaced by a wrapper of the real one (a local subprocess) that the test holds back
or breaks, so what the engine waits for is visible without any timing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import rlm_host.run_context
from tests.engine.engine_harness import fence, local_options
from rlm_host import GuestConnection, GuestDiedError
from rlm_host.api import run_rlm
from rlm_host.isolation import GuestOptions, Isolation, open_guest
from rlm_host.trajectory import EngineError, ModelRequest, RunEnd, read_trajectory
from tests.scripted_model import ChatRequest, Hang, ScriptedModel

#: A guard against a hang in a broken engine, not a timing assertion.
GUARD_SECONDS = 60


async def test_first_model_request_does_not_wait_for_the_guest(
    trajectory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_request = threading.Event()

    def script(request: ChatRequest) -> str:
        first_request.set()
        return fence("Final = len(prompt)")

    @asynccontextmanager
    async def held_back_guest(options: GuestOptions) -> AsyncIterator[GuestConnection]:
        # The guest starts only once the model has been asked: an engine that waited for the
        # guest before asking would wait here until the guard fails the test.
        seen = await trio.to_thread.run_sync(first_request.wait, GUARD_SECONDS)
        assert seen, "the engine waited for the guest before its first model request"
        async with open_guest(options) as connection:
            yield connection

    monkeypatch.setattr(rlm_host.run_context, "open_guest", held_back_guest)
    with ScriptedModel(script) as server, trio.fail_after(2 * GUARD_SECONDS):
        result = await run_rlm("x" * 1000, options=local_options(server.url, trajectory))
    assert result.answer == "1000"
    assert len(server.requests()) == 1


async def test_a_guest_that_fails_to_start_ends_the_run_during_the_first_request(
    trajectory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @asynccontextmanager
    async def broken_guest(options: GuestOptions) -> AsyncIterator[GuestConnection]:
        raise GuestDiedError("scripted: the VM did not start", "console tail here")
        yield

    monkeypatch.setattr(rlm_host.run_context, "open_guest", broken_guest)
    # The model never answers: the run can only end because the guest's failure stopped it.
    with ScriptedModel(lambda request: Hang()) as server, trio.fail_after(GUARD_SECONDS):
        with pytest.raises(GuestDiedError, match="the VM did not start"):
            await run_rlm("text", options=local_options(server.url, trajectory))
    events = read_trajectory(trajectory)
    assert any(isinstance(e, ModelRequest) for e in events)
    errors = [e for e in events if isinstance(e, EngineError)]
    assert [(e.error_type, e.rlm) for e in errors] == [("GuestDiedError", "0")]
    assert isinstance(events[-1], RunEnd) and events[-1].stop_reason == "error"


def children_script(request: ChatRequest) -> str:
    if request.prompt_prefix.startswith("child "):
        return fence("import os\nFinal = os.getpid()")
    return fence('Final = rlm_query_batched([f"child {i}" for i in range(4)])')


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_children_sessions_are_closed_while_the_guest_stays_up(trajectory: Path) -> None:
    """Children close in the background of the connection: the guest still tears them down."""
    async with open_guest(GuestOptions(isolation=Isolation.local)) as connection:
        with ScriptedModel(children_script) as server:
            result = await run_rlm(
                "batch", options=local_options(server.url, trajectory), connection=connection
            )
        assert isinstance(result.value, list)
        pids = [int(pid) for pid in result.value]
        # The connection is still open: the closes were sent and the guest acts on them.
        with trio.fail_after(GUARD_SECONDS):
            while [pid for pid in pids if alive(pid)]:
                await trio.sleep(0.05)
