"""Model server failures: down, flaky, broken; and a failing child that the parent survives."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.llm import ModelNotFound, ModelResponseError, ModelServerDown
from rlm_host.trajectory import ChildEnd, EngineError, ModelResponse, RunEnd, read_trajectory
from tests.scripted_model import ChatRequest, Fail, Malformed, Outcome, ScriptedModel


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_server_down(trajectory: Path) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    with pytest.raises(ModelServerDown) as caught:
        await run_rlm("task", options=local_options(url, trajectory, llm_retries=1))
    assert url in str(caught.value) and "ollama serve" in str(caught.value)
    events = read_trajectory(trajectory)
    assert any(isinstance(e, EngineError) and e.error_type == "ModelServerDown" for e in events)
    assert isinstance(events[-1], RunEnd) and events[-1].stop_reason == "error"


async def test_500_then_success(trajectory: Path) -> None:
    with ScriptedModel(lambda request: fence("Final = 'ok'")) as server:
        server.inject(Fail(500), Fail(503))
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    assert result.answer == "ok"
    assert [record.status for record in server.log] == [500, 503, 200]
    (response,) = [e for e in read_trajectory(trajectory) if isinstance(e, ModelResponse)]
    assert response.attempts == 3


async def test_malformed_reply(trajectory: Path) -> None:
    with ScriptedModel(lambda request: Malformed()) as server:
        with pytest.raises(ModelResponseError):
            await run_rlm("task", options=local_options(server.url, trajectory))


async def test_missing_model(trajectory: Path) -> None:
    with ScriptedModel(lambda request: "x", known_models={"other"}) as server:
        with pytest.raises(ModelNotFound, match="'scripted'"):
            await run_rlm("task", options=local_options(server.url, trajectory))


async def test_failing_child_returns_an_error_string_to_its_parent(trajectory: Path) -> None:
    def script(request: ChatRequest) -> Outcome:
        if request.prompt_prefix == "doomed":
            return Fail(400, "the child's request is refused")
        if request.turn == 0:
            return fence("r = rlm_query('doomed')\nprint(r)")
        stdout = request.last_user
        assert "rlm_query failed: ModelServerError" in stdout, stdout
        return fence("Final = 'parent survived'")

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    assert result.answer == "parent survived"
    (end,) = [e for e in read_trajectory(trajectory) if isinstance(e, ChildEnd)]
    assert end.stop_reason == "error" and end.error is not None and "refused" in end.error


async def test_unknown_host_call_raises_in_the_guest_code(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return fence("try:\n    host_call('launch_rockets', {})\nexcept Exception as e:\n    print(e)")
        assert "unknown host call 'launch_rockets'" in request.last_user
        return fence("Final = 'ok'")

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory))
    assert result.answer == "ok"
