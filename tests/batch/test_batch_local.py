"""The batch runner's logic with local guests (subprocesses): fast, no VM."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.batch.batch_harness import KILLER, LOOPER, script, write_tasks
from rlm_host.api import Price, RunOptions
from rlm_host.batch import (
    BatchOptions,
    ResultsFile,
    Summary,
    TaskError,
    TaskResult,
    TokenUsage,
    WorkerError,
    parse_task,
    read_results,
    read_tasks,
    run_batch,
)
from tests.scripted_model import ScriptedModel


def batch_options(url: str, tmp_path: Path, **changes: object) -> BatchOptions:
    run = RunOptions.of(
        model="scripted", llm_url=url, api="ollama", isolation="local", llm_backoff=0.001,
        prices={"scripted": Price(input_per_1k=1.0, output_per_1k=2.0)},
    )
    base = BatchOptions(
        run=run, workers=2, sessions_per_worker=3, model_requests=4,
        trajectory_dir=tmp_path / "trajectories", base_dir=tmp_path,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def spent_in(directory: Path, names: list[str]) -> TokenUsage:
    """The usage that trajectories recorded, model response by model response."""
    prompt = completion = calls = 0
    for name in names:
        for line in (directory / name).read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "model_response" and event.get("usage"):
                prompt += event["usage"]["prompt_tokens"]
                completion += event["usage"]["completion_tokens"]
                calls += 1
    cost = Price(input_per_1k=1.0, output_per_1k=2.0).cost(prompt, completion)
    return TokenUsage(prompt, completion, prompt + completion, calls, cost=pytest.approx(cost))  # type: ignore[arg-type]


async def test_fifty_tasks_two_workers_killer_retried_once_looper_budget(tmp_path: Path) -> None:
    expected = write_tasks(tmp_path / "tasks.jsonl")
    with ScriptedModel(script, latency=0.02) as server:
        options = batch_options(server.url, tmp_path)
        results = [r async for r in run_batch(read_tasks(tmp_path / "tasks.jsonl"), options)]
        # One bound across the pool: never more model requests at once than model_requests.
        assert server.max_in_flight() <= options.model_requests
    by_id = {r.key: r for r in results}
    assert len(results) == 50 and len(by_id) == 50
    killer = by_id[KILLER]
    assert killer.status == "error" and killer.attempts == 2
    assert "died" in (killer.reason or "")
    # Its usage is both attempts', although neither left a result: what both trajectories say.
    assert killer.usage.calls == 2
    assert killer.usage == spent_in(tmp_path / "trajectories", ["t-kill.jsonl", "t-kill.retry.jsonl"])
    looper = by_id[LOOPER]
    assert looper.status == "budget_stop" and looper.stop_reason == "max_steps" and looper.score is None
    for key, answer in expected.items():
        result = by_id[key]
        # Tasks that shared the killer's guest are retried alone, so none is charged twice.
        assert result.status == "ok", result
        assert result.answer == answer and result.score == 1.0
        # A task retried after sharing the killer's guest may have made its first call before
        # the guest died, and that call counts too.
        assert 1 <= result.usage.calls <= result.attempts and result.usage.total_tokens > 0
        assert result.trajectory is not None and Path(result.trajectory).exists()
    summary = Summary.of(results, wall_time=1.0)
    assert summary.by_status == {"ok": 48, "error": 1, "budget_stop": 1}
    # The killer is scored (0), the looper is not: 48 of 49 scored tasks are right.
    assert summary.scored == 49 and summary.accuracy == round(48 / 49, 4)
    assert {r.worker for r in results} == {"w0", "w1"}


async def test_model_bound_is_shared_by_the_pool(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text(
        "".join(json.dumps({"id": i, "text": f"answer={i}"}) + "\n" for i in range(12))
    )
    with ScriptedModel(script, latency=0.05) as server:
        options = batch_options(server.url, tmp_path, model_requests=2, sessions_per_worker=4)
        results = [r async for r in run_batch(read_tasks(tmp_path / "tasks.jsonl"), options)]
        assert server.max_in_flight() <= 2
    assert sorted(r.answer or "" for r in results) == sorted(str(i) for i in range(12))


async def test_a_worker_that_cannot_start_a_guest_is_the_batch_error_itself(tmp_path: Path) -> None:
    # A guest that exits before its Hello: the worker gives up, and the caller gets its
    # WorkerError, named by the guest's own error, not the nurseries' ExceptionGroup around it.
    # The error used to be lost in about half the runs (trio's scheduling order varies from run
    # to run): the batch then ended with neither a result nor an error. Ten runs: a regression
    # passes all of them about once in a thousand.
    with ScriptedModel(script) as server:
        options = batch_options(server.url, tmp_path, workers=1)
        options = replace(options, run=options.run.replace(guest_command=(sys.executable, "-c", "pass")))
        for _ in range(10):
            with pytest.raises(WorkerError, match=r"worker w0: cannot start a guest: \w+Error: ") as raised:
                async for _ in run_batch([parse_task('{"id": "a", "text": "x"}')], options):
                    pass
            assert "Group" not in str(raised.value)


async def test_unreadable_file_and_bad_options_are_task_errors(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text(
        json.dumps({"id": "missing", "file": "nope.txt"}) + "\n"
        + json.dumps({"id": "bad", "text": "answer=1", "options": {"max_steps": 0}}) + "\n"
        + json.dumps({"id": "good", "file": "good.txt", "expected": "42"}) + "\n"
    )
    (tmp_path / "good.txt").write_text("answer=42")
    with ScriptedModel(script) as server:
        results = {
            r.key: r async for r in run_batch(read_tasks(tmp_path / "tasks.jsonl"), batch_options(server.url, tmp_path))
        }
    assert results["missing"].status == "error" and "nope.txt" in (results["missing"].reason or "")
    assert results["bad"].status == "error" and "max_steps" in (results["bad"].reason or "")
    assert results["good"].status == "ok" and results["good"].score == 1.0


def test_task_lines_are_checked() -> None:
    with pytest.raises(TaskError, match="exactly one"):
        parse_task('{"id": 1}')
    with pytest.raises(TaskError, match="unknown options"):
        parse_task('{"id": 1, "text": "x", "options": {"isolation": "local"}}')
    with pytest.raises(TaskError):
        parse_task('{"id": 1, "text": "x", "colour": "red"}')


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"id": 1, "text": "a"}\n\n{"id": "1", "text": "b"}\n')
    with pytest.raises(TaskError, match="duplicate id '1'"):
        list(read_tasks(path))


def test_results_file_resume_drops_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultsFile(path, resume=False) as results:
        results.write(TaskResult(id="a", status="ok", answer="1"))
    with path.open("ab") as file:
        file.write(b'{"id": "b", "status": "o')  # a kill in the middle of a line
    with ResultsFile(path, resume=True) as results:
        assert results.done == {"a"}
        results.write(TaskResult(id="b", status="ok", answer="2"))
    assert [r.key for r in read_results(path)] == ["a", "b"]
