"""The same batch on a local Ray cluster (started by the engine's ``ray.init()``): same results."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from batch_harness import KILLER, LOOPER, script, write_tasks
from rlm_host.api import RunOptions
from rlm_host.batch import BatchOptions, TaskResult, read_tasks, run_batch
from scripted_model import ScriptedModel

# Not imported here: the engine sets Ray's environment before Ray is first imported.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs rlm-host[ray]")


def outcome(result: TaskResult) -> tuple[str, str | None, float | None]:
    """What must not depend on the engine (``attempts`` does: a task that shared a guest with
    the killer is retried, and which tasks share a guest depends on timing)."""
    return (result.status, result.answer, result.score)


async def same_batch_local_and_ray(tmp_path: Path, isolation: str) -> dict[str, TaskResult]:
    write_tasks(tmp_path / "tasks.jsonl", count=50)
    with trio.fail_after(900), ScriptedModel(script, latency=0.02) as server:
        run = RunOptions(model="m", llm_url=server.url, api="ollama", isolation=isolation, llm_backoff=0.001)  # type: ignore[arg-type]
        options = BatchOptions(
            run=run, workers=2, sessions_per_worker=3, model_requests=4, base_dir=tmp_path,
            trajectory_dir=tmp_path / "local",
        )
        local = {r.key: r async for r in run_batch(read_tasks(tmp_path / "tasks.jsonl"), options)}
        on_ray = replace(options, engine="ray", ray_actor_cpus=0.5, trajectory_dir=tmp_path / "ray")
        ray = {r.key: r async for r in run_batch(read_tasks(tmp_path / "tasks.jsonl"), on_ray)}
    assert len(ray) == len(local) == 50
    assert {key: outcome(r) for key, r in ray.items()} == {key: outcome(r) for key, r in local.items()}
    assert {r.worker for r in ray.values()} == {"ray0", "ray1"}
    assert all(Path(r.trajectory or "").parent == tmp_path / "ray" for r in ray.values())
    return ray


async def test_same_batch_on_ray_local_guests(tmp_path: Path) -> None:
    ray = await same_batch_local_and_ray(tmp_path, "local")
    assert ray[KILLER].status == "error" and ray[KILLER].attempts == 2
    assert ray[LOOPER].status == "budget_stop"


@pytest.mark.vm
@pytest.mark.skip(
    reason="intermittent stall (open issue 13): on Ray with real VMs, two tasks sent to an actor "
    "around the killer task's VM death never start (passed 3 runs of 3 alone, stalled once "
    "inside the full suite)"
)
async def test_same_batch_on_ray_vms(tmp_path: Path, vm_image: None) -> None:
    ray = await same_batch_local_and_ray(tmp_path, "vm")
    assert ray[KILLER].status == "error" and ray[KILLER].attempts == 2
