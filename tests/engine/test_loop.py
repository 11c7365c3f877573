"""The loop over real HTTP: observations read back in both APIs, plain and streamed, and the
trajectory of a run. What the model sees between steps on the engine alone (tracebacks, a bad
``Final``, no block, several blocks) is ``test_steps.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
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
