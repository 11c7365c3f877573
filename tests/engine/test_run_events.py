"""Run events: the async iterator yields exactly what the trajectory records."""

from __future__ import annotations

from pathlib import Path

import msgspec
import trio

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import open_run, run_rlm_sync
from rlm_host.trajectory import Event, FinalSet, ModelRequest, RunEnd, RunStart, ToolCall, read_trajectory
from tests.scripted_model import ChatRequest, Hang, ScriptedModel


def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()


def script(request: ChatRequest) -> str:
    if request.is_leaf:
        return "leaf answer"
    return fence('Final = lookup("a") + llm_query("hi")')


async def test_events_as_an_async_iterator_and_a_callback(trajectory: Path) -> None:
    seen_by_callback: list[Event] = []
    with ScriptedModel(script) as server:
        options = local_options(server.url, trajectory, host_tools=[lookup], on_event=seen_by_callback.append)
        async with open_run("task", options=options) as run:
            streamed = [event async for event in run]
        result = run.result
    assert result.answer == "Aleaf answer"
    kinds = [type(event).__name__ for event in streamed]
    assert kinds[0] == "RunStart" and kinds[-1] == "RunEnd"
    assert {"ModelRequest", "ModelResponse", "BlockRun", "ToolCall", "ChildStart", "ChildEnd", "FinalSet"} <= set(kinds)
    recorded = read_trajectory(trajectory)
    assert streamed == recorded == seen_by_callback
    assert isinstance(streamed[0], RunStart) and isinstance(streamed[-1], RunEnd)
    assert any(isinstance(e, ToolCall) for e in streamed) and any(isinstance(e, FinalSet) for e in streamed)
    assert msgspec.json.encode(streamed[-1])


async def test_cancelling_a_run_during_its_first_model_request(trajectory: Path) -> None:
    # The first request goes out while the session still opens; cancelling then must end the
    # run (its opening too) instead of waiting forever for a session that will never settle.
    with ScriptedModel(lambda request: Hang()) as server:
        with trio.fail_after(60):
            async with open_run("task", options=local_options(server.url, trajectory)) as run:
                async for event in run:
                    if isinstance(event, ModelRequest):
                        run.cancel()
    events = read_trajectory(trajectory)
    assert [type(e).__name__ for e in events] == ["RunStart", "ModelReady", "ModelRequest", "RunEnd"]


def test_run_rlm_sync_outside_trio(trajectory: Path) -> None:
    with ScriptedModel(script) as server:
        result = run_rlm_sync("task", options=local_options(server.url, trajectory, host_tools=[lookup]))
    assert (result.answer, result.stop_reason) == ("Aleaf answer", "final")
    assert isinstance(read_trajectory(trajectory)[-1], RunEnd)
