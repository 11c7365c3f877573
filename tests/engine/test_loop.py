"""What the model sees between steps: observations, tracebacks, a bad Final, no block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.engine import NO_BLOCK_REPROMPT
from rlm_host.llm import Api
from rlm_host.trajectory import BlockRun, FinalSet, Observation, RunEnd, RunStart, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel


def observation_of(request: ChatRequest) -> dict[str, object]:
    """The metadata JSON of the last observation the model was sent."""
    text = request.last_user
    assert text.startswith("REPL observation metadata:\n"), text
    data: dict[str, object] = json.loads(text.split("\n", 1)[1])
    return data


@pytest.mark.parametrize("api", ["ollama", "openai"])
@pytest.mark.parametrize("stream", [False, True])
async def test_bash_output_is_read_back(trajectory: Path, api: Api, stream: bool) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return fence("echo from-bash-$((6*7))\nexit 3", "bash")
        seen = observation_of(request)
        stdout = seen["stdout"]
        assert isinstance(stdout, dict)
        return fence(f"Final = {stdout['prefix'].strip()!r} + ' rc={seen['returncode']}'")

    with ScriptedModel(script) as server:
        result = await run_rlm(
            "task", options=local_options(server.url, trajectory, api=api, stream=stream)
        )
    assert result.answer == "from-bash-42 rc=3"
    assert all(r.stream is stream and r.api == api for r in server.requests())
    blocks = [e for e in read_trajectory(trajectory) if isinstance(e, BlockRun)]
    assert [b.language for b in blocks] == ["bash", "python"]


async def test_traceback_is_read_back_and_recovered_from(trajectory: Path) -> None:
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

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    assert result.answer == "6"
    observations = [e for e in read_trajectory(trajectory) if isinstance(e, Observation)]
    assert observations[0].error == "IndexError: list index out of range"


async def test_non_json_final_goes_back_to_the_model(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return fence("Final = {1, 2, 3}")
        seen = observation_of(request)
        problem = seen["final_error"]
        assert isinstance(problem, str) and "not JSON-serializable" in problem and "set" in problem
        return fence("Final = {'items': sorted(Final)}")

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    # A non-string Final comes back as indented JSON (the seed's rule).
    assert result.answer == json.dumps({"items": [1, 2, 3]}, indent=2)
    assert len(server.requests()) == 2


async def test_reply_without_a_block_is_reprompted(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return "I think the answer is probably 42, no code needed."
        assert request.last_user == NO_BLOCK_REPROMPT
        assert request.messages[-2]["content"].startswith("I think the answer")
        return fence("Final = 42")

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    assert result.answer == "42"
    assert len(server.requests()) == 2


async def test_only_the_first_block_runs_and_tags_are_normalised(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return "```repl\nx = 1\n```\nand\n```python\nx = 99\n```"
        # The history keeps the block that ran, re-fenced, without the rest of the reply.
        assert request.messages[2] == {"role": "assistant", "content": "```python\nx = 1\n```"}
        return fence("Final = x")

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    assert result.answer == "1"


async def test_trajectory_records_the_run(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        return fence("print('hi')") if request.turn == 0 else fence("Final = 'done'")

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    assert result.trajectory_path == trajectory
    kinds = [type(e).__name__ for e in read_trajectory(trajectory)]
    assert kinds == [
        "RunStart",
        "ModelReady",
        "ModelRequest",
        "ModelResponse",
        "BlockRun",
        "Observation",
        "ModelRequest",
        "ModelResponse",
        "BlockRun",
        "FinalSet",
        "RunEnd",
    ]
    events = read_trajectory(trajectory)
    assert isinstance(events[0], RunStart) and events[0].model == "scripted"
    assert isinstance(events[-2], FinalSet) and events[-2].answer == "done"
    end = events[-1]
    assert isinstance(end, RunEnd) and end.stop_reason == "final"
    assert end.usage.calls == 2 and end.usage.reported
    assert end.usage == result.usage
