"""Run events: the async iterator yields exactly what the trajectory records."""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine_harness import fence, local_options
from rlm_host.api import open_run
from rlm_host.trajectory import Event, FinalSet, RunEnd, RunStart, ToolCall, read_trajectory
from scripted_model import ChatRequest, ScriptedModel


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
