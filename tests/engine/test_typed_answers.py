"""Typed answers: Final is converted on the host; a mismatch is an observation, then a retry."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.trajectory import FinalSet, Observation, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel


class Verdict(msgspec.Struct):
    label: str
    confidence: float


def script(request: ChatRequest) -> str:
    if request.turn == 0:
        return fence('Final = {"label": "spam"}')  # confidence missing
    if request.turn == 1:
        assert "does not match the requested answer type" in request.last_user
        assert "Object missing required field `confidence`" in request.last_user
        return fence("print(Final)")  # the rejected Final was unset: this raises NameError
    return fence('Final = {"label": "spam", "confidence": 0.9}')


async def test_a_typed_answer_rejected_once_then_accepted(trajectory: Path) -> None:
    with ScriptedModel(script) as server:
        result = await run_rlm("classify", options=local_options(server.url, trajectory), answer_type=Verdict)
    assert result.value == Verdict(label="spam", confidence=0.9)
    assert isinstance(result.value, Verdict)
    first = server.requests()[0]
    # The schema of the answer type is in the first message.
    schema = json.loads(first.first_user)["answer_schema"]
    assert schema["$defs"]["Verdict"]["required"] == ["label", "confidence"]
    third = server.requests()[2]
    assert "NameError" in third.last_user
    events = read_trajectory(trajectory)
    rejected = [e for e in events if isinstance(e, Observation) and e.error and e.error.startswith("AnswerTypeError")]
    assert len(rejected) == 1 and [e.step for e in events if isinstance(e, FinalSet)] == [3]


async def test_a_plain_answer_type(trajectory: Path) -> None:
    # JSON has no tuple: only the conversion to the answer type makes one of the list.
    with ScriptedModel(lambda request: fence("Final = [1, 2, 3]")) as server:
        result = await run_rlm("numbers", options=local_options(server.url, trajectory), answer_type=tuple[int, ...])
    assert result.value == (1, 2, 3) and isinstance(result.value, tuple)
    assert json.loads(server.requests()[0].first_user)["answer_schema"]["type"] == "array"
