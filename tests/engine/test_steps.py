"""What the model sees between steps (observations, tracebacks, a bad Final, no block), on the
engine alone with an in-memory model (``tests/memory_model.py``); the same loop over real HTTP
and with its trajectory file is ``test_loop.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.engine.engine_harness import fence
from tests.memory_model import MemoryModel
from rlm_host import GuestConnection, open_local_guest
from rlm_host.engine import NO_BLOCK_REPROMPT, RlmEngine
from rlm_host.trajectory import Event, Observation, TrajectoryRecorder
from tests.scripted_model import ChatRequest


@pytest.fixture
async def connection() -> AsyncIterator[GuestConnection]:
    async with open_local_guest() as stream, GuestConnection.open(stream) as opened:
        yield opened


def engine(connection: GuestConnection, model: MemoryModel, events: list[Event]) -> RlmEngine:
    return RlmEngine(connection=connection, client=model, recorder=TrajectoryRecorder(None, [events.append]))


def observation_of(request: ChatRequest) -> dict[str, object]:
    """The metadata JSON of the last observation the model was sent."""
    text = request.last_user
    assert text.startswith("REPL observation metadata:\n"), text
    data: dict[str, object] = json.loads(text.split("\n", 1)[1])
    return data


async def test_traceback_is_read_back_and_recovered_from(connection: GuestConnection) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return fence("numbers = [1, 2, 3]\nprint(numbers[10])")
        seen = observation_of(request)
        stderr = seen["stderr"]
        assert isinstance(stderr, dict)
        assert "Traceback" in stderr["prefix"] and "IndexError" in stderr["prefix"]
        assert seen["error"] == "IndexError: list index out of range"
        # The namespace survived the exception: recover using the variable set before it.
        return fence("Final = sum(numbers)")

    model = MemoryModel(script)
    events: list[Event] = []
    result = await engine(connection, model, events).run("task")
    assert result.answer == "6"
    observations = [e for e in events if isinstance(e, Observation)]
    assert observations[0].error == "IndexError: list index out of range"


async def test_non_json_final_goes_back_to_the_model(connection: GuestConnection) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return fence("Final = {1, 2, 3}")
        seen = observation_of(request)
        problem = seen["final_error"]
        assert isinstance(problem, str) and "not JSON-serializable" in problem and "set" in problem
        return fence("Final = {'items': sorted(Final)}")

    model = MemoryModel(script)
    events: list[Event] = []
    result = await engine(connection, model, events).run("task")
    # A non-string Final comes back as indented JSON (the seed's rule).
    assert result.answer == json.dumps({"items": [1, 2, 3]}, indent=2)
    assert len(model.requests) == 2


async def test_reply_without_a_block_is_reprompted(connection: GuestConnection) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return "I think the answer is probably 42, no code needed."
        assert request.last_user == NO_BLOCK_REPROMPT
        assert request.messages[-2]["content"].startswith("I think the answer")
        return fence("Final = 42")

    model = MemoryModel(script)
    events: list[Event] = []
    result = await engine(connection, model, events).run("task")
    assert result.answer == "42"
    assert len(model.requests) == 2


async def test_only_the_first_block_runs_and_tags_are_normalised(connection: GuestConnection) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return "```repl\nx = 1\n```\nand\n```python\nx = 99\n```"
        # The history keeps the block that ran, re-fenced, without the rest of the reply.
        assert request.messages[2] == {"role": "assistant", "content": "```python\nx = 1\n```"}
        return fence("Final = x")

    model = MemoryModel(script)
    events: list[Event] = []
    result = await engine(connection, model, events).run("task")
    assert result.answer == "1"
