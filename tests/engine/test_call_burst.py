"""A child's session opens once its parent's burst of host calls has gone quiet, or at once when
its first block needs it.

Watched where the host asks the guest for a session (``GuestConnection.open_session``), in one
order with the run's events (``on_event``): the local-subprocess guest, the scripted model
over HTTP.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from rlm_host.api import run_rlm
from rlm_host.connection import GuestConnection
from rlm_host.engine import call_burst
from rlm_host.trajectory import ChildStart, Event
from tests.engine.engine_harness import fence, local_options
from tests.scripted_model import ChatRequest, ScriptedModel

BATCH = """
answers = rlm_query_batched([f"child {i}" for i in range(4)])
print("|".join(answers))
"""

#: Seconds a child's reply waits for the other three requests (the batch really in flight).
BARRIER_SECONDS = 60.0


def script(together: threading.Barrier | None) -> Callable[[ChatRequest], str]:
    def reply(request: ChatRequest) -> str:
        if request.prompt_prefix.startswith("child "):
            if together is not None:
                together.wait()
            return fence(f"Final = {request.prompt_prefix.upper()!r}")
        if request.turn == 0:
            return fence(BATCH)
        return fence('Final = "done"')

    return reply


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each session asked of the guest (``open``) and each child's start, in order."""
    seen: list[str] = []
    open_session = GuestConnection.open_session

    async def watched(self: GuestConnection, *args: Any, **kwargs: Any) -> Any:
        seen.append("open")
        return await open_session(self, *args, **kwargs)

    monkeypatch.setattr(GuestConnection, "open_session", watched)
    return seen


def _on_event(order: list[str]) -> Callable[[Event], None]:
    def record(event: Event) -> None:
        if isinstance(event, ChildStart):
            order.append("child_start")

    return record


async def test_children_open_after_the_parents_calls(trajectory: Path, order: list[str]) -> None:
    # Every child's reply waits until all four requests are out: no child's block can ask for
    # its session before the burst is over, so only the quiet can open it.
    together = threading.Barrier(4, timeout=BARRIER_SECONDS)
    with ScriptedModel(script(together)) as server:
        result = await run_rlm(
            "root", options=local_options(server.url, trajectory, concurrency=4, on_event=_on_event(order))
        )
    assert result.answer == "done", result
    # The root's session, then the four calls, then the four children's sessions.
    assert order == ["open"] + ["child_start"] * 4 + ["open"] * 4, order


async def test_a_child_that_needs_its_session_does_not_wait(
    trajectory: Path, order: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A parent that never goes quiet (an hour): the children's first blocks open their sessions.
    monkeypatch.setattr(call_burst, "QUIET_SECONDS", 3600.0)
    with ScriptedModel(script(None)) as server, trio.fail_after(BARRIER_SECONDS):
        result = await run_rlm(
            "root", options=local_options(server.url, trajectory, concurrency=4, on_event=_on_event(order))
        )
    assert result.answer == "done", result
    assert order.count("open") == 5
