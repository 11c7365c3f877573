"""The same batch on a local Ray cluster (started by the engine's ``ray.init()``): same results."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from tests.missing_part import require
from tests.batch.batch_harness import KILLER, LOOPER, script, write_tasks
from rlm_host.api import RunOptions
from rlm_host.batch import BatchOptions, TaskResult, read_tasks, run_batch
from tests.scripted_model import ScriptedModel


#: Ray's own start-up takes a minute or more on a loaded two-core machine.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(autouse=True)
def _ray_installed() -> None:
    # Not imported here: the engine sets Ray's environment before Ray is first imported.
    require(
        importlib.util.find_spec("ray") is not None,
        "Ray (the rlm-host[ray] extra)",
        "uv sync --all-packages --all-extras (scripts/setup.sh does it)",
    )


def outcome(result: TaskResult) -> tuple[str, str | None, float | None]:
    """What must not depend on the engine (``attempts`` does: a task that shared a guest with
    the killer is retried, and which tasks share a guest depends on timing)."""
    return (result.status, result.answer, result.score)


async def same_batch_local_and_ray(tmp_path: Path, isolation: str) -> dict[str, TaskResult]:
    write_tasks(tmp_path / "tasks.jsonl", count=50)
    with trio.fail_after(900), ScriptedModel(script, latency=0.02) as server:
        run = RunOptions.of(model="m", llm_url=server.url, api="ollama", isolation=isolation, llm_backoff=0.001)
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
async def test_same_batch_on_ray_vms(tmp_path: Path, vm_image: None) -> None:
    ray = await same_batch_local_and_ray(tmp_path, "vm")
    assert ray[KILLER].status == "error" and ray[KILLER].attempts == 2


# --- the actors themselves (local guests: fast) -------------------------------------------------


def ray_options(url: str, tmp_path: Path, **changes: object) -> BatchOptions:
    run = RunOptions.of(model="m", llm_url=url, api="ollama", isolation="local", llm_backoff=0.001, exec_timeout=60)
    base = BatchOptions(
        run=run, engine="ray", ray_actor_cpus=0.5, workers=1, sessions_per_worker=1, model_requests=4,
        base_dir=tmp_path, trajectory_dir=tmp_path / "trajectories",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def task_lines(path: Path, texts: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": key, "text": text}) + "\n" for key, text in texts.items()))
    return path


async def test_an_actor_runs_its_sessions_at_once(tmp_path: Path) -> None:
    """Two tasks on one actor that each wait for the other: both finish only if the actor runs
    them at once (a class with a coroutine is an asyncio actor to Ray, one call at a time: then
    the first waits alone until its block times out)."""
    meet = tmp_path / "meet"
    meet.mkdir()
    tasks = task_lines(tmp_path / "tasks.jsonl", {"a": f"MEET {meet} a b", "b": f"MEET {meet} b a"})
    with ScriptedModel(script) as server:
        options = ray_options(server.url, tmp_path, sessions_per_worker=2)
        results = {r.key: r async for r in run_batch(read_tasks(tasks), options)}
    assert {key: r.answer for key, r in results.items()} == {"a": "met", "b": "met"}


async def test_a_dead_actor_is_replaced(tmp_path: Path) -> None:
    """A task that kills its actor (as a lost node would), twice: each time a new actor takes
    the dead one's place; the task is reported after its second death, the others all finish."""
    texts = {"die": "DIE with the actor", **{f"t{index}": f"answer={index}" for index in range(4)}}
    tasks = task_lines(tmp_path / "tasks.jsonl", texts)
    with ScriptedModel(script) as server:
        options = ray_options(server.url, tmp_path, ray_actor_replacements=2)
        results = {r.key: r async for r in run_batch(read_tasks(tasks), options)}
    die = results.pop("die")
    assert die.status == "error" and die.attempts == 2 and "died twice" in (die.reason or "")
    # ray0 died under it, then its replacement ray1; ray2 ran everything else.
    assert die.worker == "ray1"
    assert {key: (r.answer, r.worker) for key, r in results.items()} == {
        f"t{index}": (str(index), "ray2") for index in range(4)
    }


async def test_actor_replacements_are_bounded(tmp_path: Path) -> None:
    """With one replacement allowed, the second death leaves no actor: the tasks not yet run
    are reported as errors that say so, and the batch ends instead of waiting."""
    tasks = task_lines(
        tmp_path / "tasks.jsonl", {"first": "answer=1", "die": "DIE with the actor", "x": "answer=2", "y": "answer=3"}
    )
    with ScriptedModel(script) as server:
        options = ray_options(server.url, tmp_path, ray_actor_replacements=1)
        run_results = [r async for r in run_batch(read_tasks(tasks), options)]
    results = {r.key: r for r in run_results}
    assert len(run_results) == 4
    assert results["first"].status == "ok" and results["first"].worker == "ray0"
    assert results["die"].status == "error" and results["die"].worker == "ray1"
    for key in ("x", "y"):
        assert results[key].status == "error" and results[key].attempts == 0
        assert "no Ray actor left" in (results[key].reason or "")


async def test_rlm_batch_engine_ray_resumes_through_the_cli(tmp_path: Path) -> None:
    """``rlm batch --engine ray --resume`` as typed: the tasks already in the results file are
    skipped, the others run on Ray actors."""
    tasks = task_lines(tmp_path / "tasks.jsonl", {f"t{index}": f"answer={index}" for index in range(3)})
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"id": "t0", "status": "ok", "answer": "0"}) + "\n")
    with ScriptedModel(script) as server:
        done = await trio.run_process(
            [sys.executable, "-c", "from rlm_host.cli import main; main()", "batch", str(tasks),
             "-o", str(results), "--engine", "ray", "--workers", "1", "--isolation", "local",
             "--llm-url", server.url, "--model", "m", "--resume"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    assert (summary["skipped"], summary["tasks"]) == (1, 2)
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((line["id"], line.get("answer")) for line in lines) == [("t0", "0"), ("t1", "1"), ("t2", "2")]
    assert {line["worker"] for line in lines[1:]} == {"ray0"}
