"""The seed's loop end to end: a scripted model, the real guest (local), real HTTP."""

from __future__ import annotations

from pathlib import Path

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from tests.scripted_model import ChatRequest, ScriptedModel


async def test_final_string_is_returned_as_is(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        return fence("Final = prompt.upper()")

    with ScriptedModel(script) as server:
        result = await run_rlm("hello", options=local_options(server.url, trajectory))
    assert result.answer == "HELLO"
    assert result.stop_reason == "final"
