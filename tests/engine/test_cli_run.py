"""``rlm run`` as a user runs it: a subprocess, real stdout/stderr, the scripted model server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import trio

from tests.engine.engine_harness import fence
from tests.pdf_maker import write_pdf
from tests.scripted_model import ChatRequest, ScriptedModel

#: The lead mounts ``run`` in ``rlm_host.cli``; the test mounts it itself so that it tests
#: exactly this command.
RUN_APP = (
    "import typer; from rlm_host.cli_run import run; "
    "app = typer.Typer(); app.command()(run); app()"
)


async def rlm_run(
    *args: str, env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-c", RUN_APP, *args, "--isolation", "local"],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, **env},
    )


def echo_prefix(request: ChatRequest) -> str:
    """Answer with the first line of the prompt the root sees (its task)."""
    return fence("Final = prompt.splitlines()[0]")


async def test_answer_alone_on_stdout_and_default_trajectory(tmp_path: Path) -> None:
    source = tmp_path / "notes.txt"
    source.write_text("first line of the notes\nsecond\n")
    with ScriptedModel(echo_prefix) as server:
        done = await rlm_run(
            str(source), "--llm-url", server.url, "--model", "m",
            env={"XDG_STATE_HOME": str(tmp_path / "state")},
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"first line of the notes\n"
    # Not a terminal: stderr has only the warning about local isolation.
    assert b"unsandboxed" in done.stderr and b"model calls" not in done.stderr
    (written,) = (tmp_path / "state" / "rlm" / "trajectories").glob("*.jsonl")
    assert b'"event":"run_end"' in written.read_bytes().splitlines()[-1]


async def test_query_with_stdin_context_and_json(tmp_path: Path) -> None:
    with ScriptedModel(echo_prefix) as server:
        done = await rlm_run(
            "-", "--query", "What is in the context?", "--json", "--api", "openai",
            "--llm-url", server.url, "--trajectory", str(tmp_path / "t.jsonl"),
            env={}, stdin=b"the context body",
        )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["answer"] == "What is in the context?" and data["stop_reason"] == "final"
    assert data["trajectory"] == str(tmp_path / "t.jsonl") and data["usage"]["calls"] == 1
    (request,) = server.requests()
    assert request.api == "openai"
    assert "[BEGIN CONTEXT]\nthe context body" in request.prompt_prefix


async def test_pdf_gets_the_paper_brief_and_smoke_the_smoke_task(tmp_path: Path) -> None:
    paper = write_pdf(tmp_path / "paper.pdf", [["Recursive Language Models", "we propose"]])
    with ScriptedModel(echo_prefix) as server:
        brief = await rlm_run(str(paper), "--llm-url", server.url, env={"XDG_STATE_HOME": str(tmp_path)})
        smoke = await rlm_run(
            str(paper), "--smoke", "--limit-chars", "9", "--llm-url", server.url,
            env={"XDG_STATE_HOME": str(tmp_path)},
        )
    assert brief.stdout == b"Analyze the paper text below and produce a clear structured brief.\n"
    assert smoke.stdout == b"Smoke test: summarize this excerpt from rlm.pdf in three bullets.\n"
    brief_request, smoke_request = server.requests()
    assert "Recursive Language Models" in brief_request.prompt_prefix
    assert "[BEGIN EXCERPT]\nRecursive\n[END EXCERPT]" in smoke_request.prompt_prefix


async def test_budget_stop_exits_3(tmp_path: Path) -> None:
    with ScriptedModel(lambda request: fence("print(1)")) as server:
        done = await rlm_run(
            "-q", "loop", "--max-steps", "2", "--llm-url", server.url,
            env={"XDG_STATE_HOME": str(tmp_path)},
        )
    assert done.returncode == 3 and done.stdout == b""
    assert b"stopped without an answer (max_steps): no Final after 2 steps" in done.stderr


async def test_a_bad_budget_exits_2_with_what_is_wrong(tmp_path: Path) -> None:
    # Checked by Limits when the options are built, before any model or guest starts.
    done = await rlm_run("-q", "hi", "--max-steps", "0", env={"XDG_STATE_HOME": str(tmp_path)})
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.strip().splitlines()[-1] == b"rlm: max_steps must be at least 1"


async def test_server_down_exits_2_with_the_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = await rlm_run(
        "-q", "hi", "--llm-url", url, "--llm-retries", "0", env={"XDG_STATE_HOME": str(tmp_path)}
    )
    assert done.returncode == 2 and done.stdout == b""
    assert f"model server at {url}/api/chat is not reachable".encode() in done.stderr
