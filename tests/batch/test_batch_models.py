"""A batch whose tasks use a second model for sub-calls: usage per model in every result."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from rlm_host.api import RunOptions
from rlm_host.batch import BatchOptions, read_tasks, run_batch
from tests.scripted_model import ChatRequest, ScriptedModel

GUARD_SECONDS = 120


def script(request: ChatRequest) -> str:
    if request.is_leaf:
        return f"leaf on {request.model}"
    return "```python\nFinal = llm_query('hi')\n```"


async def test_sub_model_per_task_and_usage_by_model(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"id": "a", "text": "one"}) + "\n"
        + json.dumps({"id": "b", "text": "two", "options": {"sub_model": "other-small"}}) + "\n"
    )
    with ScriptedModel(script) as server, trio.fail_after(GUARD_SECONDS):
        run = RunOptions.of(model="big", llm_url=server.url, api="ollama", isolation="local", llm_backoff=0.001,
                         sub_model="small")
        options = BatchOptions(run=run, workers=1, trajectory_dir=tmp_path / "trajectories", base_dir=tmp_path)
        results = {r.key: r async for r in run_batch(read_tasks(tasks), options)}
    assert results["a"].answer == "leaf on small" and results["b"].answer == "leaf on other-small"
    assert {m: u.calls for m, u in results["a"].usage_by_model.items()} == {"big": 1, "small": 1}
    assert {m: u.calls for m, u in results["b"].usage_by_model.items()} == {"big": 1, "other-small": 1}
