"""The batch on real VMs: 50 tasks, 2 workers (VMs from the snapshot), a VM killed by a task."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.batch.batch_harness import KILLER, LOOPER, script, write_tasks
from rlm_host.api import RunOptions
from rlm_host.batch import BatchOptions, read_tasks, run_batch
from tests.scripted_model import ScriptedModel

pytestmark = pytest.mark.vm


async def test_fifty_tasks_on_two_vms(tmp_path: Path, vm_image: None) -> None:
    expected = write_tasks(tmp_path / "tasks.jsonl")
    with ScriptedModel(script, latency=0.02) as server:
        run = RunOptions.of(model="m", llm_url=server.url, api="ollama", memory_mb=1024, llm_backoff=0.001)
        options = BatchOptions(
            run=run, workers=2, sessions_per_worker=4, model_requests=4, base_dir=tmp_path,
            trajectory_dir=tmp_path / "trajectories",
        )
        results = {r.key: r async for r in run_batch(read_tasks(tmp_path / "tasks.jsonl"), options)}
        assert server.max_in_flight() <= options.model_requests
    assert len(results) == 50
    assert results[KILLER].status == "error" and results[KILLER].attempts == 2
    assert results[LOOPER].status == "budget_stop"
    wrong = {key: results[key] for key, answer in expected.items() if results[key].answer != answer}
    assert not wrong
