"""``rlm batch`` as a user runs it: a subprocess, killed midway and resumed; the Ray engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.batch.batch_harness import KILLER, LOOPER, read_lines, script, write_tasks
from tests.scripted_model import ScriptedModel

#: The lead mounts ``batch`` in ``rlm_host.cli``; the test mounts it itself.
BATCH_APP = (
    "import typer; from rlm_host.cli_batch import batch; "
    "app = typer.Typer(); app.command()(batch); app()"
)


def batch_command(tasks: Path, results: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-c", BATCH_APP, str(tasks), "-o", str(results),
        "--llm-url", url, "--model", "m", "--llm-retries", "1", *extra,
    ]


async def wait_for_lines(path: Path, count: int) -> None:
    """Until ``path`` has ``count`` complete lines (polling a file the subprocess writes)."""
    while not path.exists() or path.read_bytes().count(b"\n") < count:
        await trio.sleep(0.05)


async def kill_midway_and_resume(tmp_path: Path, isolation: str) -> list[dict[str, object]]:
    tasks, results = tmp_path / "tasks.jsonl", tmp_path / "results.jsonl"
    write_tasks(tasks, count=24)
    with ScriptedModel(script, latency=0.2) as server:
        command = batch_command(tasks, results, server.url, "--isolation", isolation, "--workers", "2")
        process = await trio.lowlevel.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with trio.fail_after(600):
            await wait_for_lines(results, 5)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        first = read_lines(results)
        assert 5 <= len(first) < 24
        # Without --resume the results file is not overwritten.
        refused = await trio.run_process(command, check=False, capture_stderr=True)
        assert refused.returncode == 2 and b"--resume" in refused.stderr
        done = await trio.run_process([*command, "--resume"], capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    summary = json.loads(done.stdout)
    lines = read_lines(results)
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)) == 24
    assert summary["skipped"] == len(first) and summary["tasks"] == 24 - len(first)
    return lines


async def test_killed_batch_resumes_every_id_exactly_once_local(tmp_path: Path) -> None:
    lines = await kill_midway_and_resume(tmp_path, "local")
    by_id = {line["id"]: line for line in lines}
    assert by_id[KILLER]["status"] == "error" and by_id[LOOPER]["status"] == "budget_stop"
    assert sum(line["status"] == "ok" for line in lines) == 22


@pytest.mark.vm
async def test_killed_batch_resumes_every_id_exactly_once_vm(tmp_path: Path, vm_image: None) -> None:
    lines = await kill_midway_and_resume(tmp_path, "vm")
    by_id = {line["id"]: line for line in lines}
    assert by_id[KILLER]["status"] == "error" and by_id[LOOPER]["status"] == "budget_stop"
    assert sum(line["status"] == "ok" for line in lines) == 22


async def test_bad_tasks_file_exits_2(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"id": 1, "text": "a", "file": "b"}\n')
    done = await trio.run_process(
        batch_command(tasks, tmp_path / "r.jsonl", "http://127.0.0.1:9", "--isolation", "local"),
        check=False, capture_stderr=True,
    )
    assert done.returncode == 2 and b"exactly one" in done.stderr


def test_batch_takes_the_model_and_budget_options_of_run() -> None:
    import typer
    from typer.testing import CliRunner

    from rlm_host.cli_batch import SHARED_RUN_OPTIONS, _run_options, batch

    app = typer.Typer()
    app.command()(batch)
    shown = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    for option in (
        "--model", "--llm-url", "--max-steps", "--max-tokens", "--isolation", "--workers", "--resume",
        "--ray-actor-replacements",
    ):
        assert option in shown
    assert "max_steps" in SHARED_RUN_OPTIONS
    options = _run_options({"max_steps": 5, "model": "m", "not_a_run_option": 1})
    assert (options.limits.max_steps, options.llm.model) == (5, "m")


async def test_cost_budget_and_host_tools_as_in_rlm_run(tmp_path: Path) -> None:
    """``--tool``, ``--price`` and ``--max-cost`` reach every task, as they do in ``rlm run``."""
    tasks, results = tmp_path / "tasks.jsonl", tmp_path / "results.jsonl"
    write_tasks(tasks, count=3)
    (tmp_path / "batch_tools.py").write_text("def shout(text: str) -> str:\n    return text.upper()\n")
    with ScriptedModel(script, latency=0.0) as server:
        command = batch_command(
            tasks, results, server.url, "--isolation", "local", "--workers", "1",
            "--tool", "batch_tools:shout", "--price", "m=1000,1000", "--max-cost", "0.0001",
        )
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
        )
        assert done.returncode == 0, done.stderr.decode()
        lines = {line["id"]: line for line in read_lines(results)}
        assert lines["t000"]["status"] == "ok"
        # Every run was given the tool and the cost budget at the price: the trajectory says so.
        trajectory = Path(str(lines["t000"]["trajectory"])).read_text()
        assert "shout(text: str) -> str" in trajectory
        assert '"max_cost":0.0001' in trajectory
        # One token costs 1 at this price: each attempt's spend is its token count, far over
        # budget, and the result counts every attempt's (t000 is retried when it shared the
        # killer's guest).
        spent = 0.0
        for path in Path(str(lines["t000"]["trajectory"])).parent.glob("t000*.jsonl"):
            spent += max(json.loads(line).get("cost") or 0 for line in path.read_text().splitlines())
        usage = lines["t000"]["usage"]
        assert spent == usage["cost"] == usage["total_tokens"] > 0
        bad = await trio.run_process(
            [*batch_command(tasks, tmp_path / "other.jsonl", server.url), "--tool", "nowhere:missing"],
            capture_stderr=True, check=False, cwd=tmp_path,
        )
    assert bad.returncode == 2 and b"nowhere" in bad.stderr
