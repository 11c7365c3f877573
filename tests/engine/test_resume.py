"""--resume: a run killed mid-way continues from its last completed step to the same Final."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import trio

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import resume_rlm, run_rlm
from rlm_host.tools import load_tool
from rlm_host.trajectory import ChildStart, Resumed, RunStart, read_trajectory
from tests.scripted_model import ChatRequest, Hang, Outcome, ScriptedModel

RUN_APP = (
    "import typer; from rlm_host.cli_run import run; "
    "app = typer.Typer(); app.command()(run); app()"
)

TOOL_MODULE = '''
from pathlib import Path

def lookup(key: str) -> str:
    """Look a key up (and count the calls in calls.txt)."""
    with open(Path(__file__).parent / "calls.txt", "a") as calls:
        calls.write(key + "\\n")
    return key * 3
'''

STEPS = {
    0: "a = 6",
    1: 'b = int(rlm_query("child: say seven"))\nt = lookup("k")',
    2: "Final = a * b + len(t)",
}


def script(request: ChatRequest) -> str:
    if request.prompt_prefix.startswith("child:"):
        return fence("Final = '7'")
    return fence(STEPS[request.turn])


async def test_a_killed_run_resumes_to_the_same_final(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "resumetools.py").write_text(TOOL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    lookup = load_tool("resumetools:lookup")
    with ScriptedModel(script) as server:
        reference = await run_rlm(
            "task", options=local_options(server.url, tmp_path / "reference.jsonl", host_tools=[lookup])
        )
    assert reference.answer == "45"
    (tmp_path / "calls.txt").unlink(missing_ok=True)

    third_step = threading.Event()

    def interrupted(request: ChatRequest) -> Outcome:
        if not request.prompt_prefix.startswith("child:") and request.turn == 2:
            third_step.set()
            return Hang()
        return script(request)

    first = tmp_path / "first.jsonl"
    common = ["--isolation", "local", "--tool", "resumetools:lookup", "--model", "m"]
    with ScriptedModel(interrupted) as server:
        process = subprocess.Popen(
            [sys.executable, "-c", RUN_APP, "--query", "task", "--llm-url", server.url,
             "--trajectory", str(first), *common],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert await trio.to_thread.run_sync(third_step.wait, 120), "the run never reached step 3"
        finally:
            process.kill()  # a crash: nothing gets to write run_end
            process.communicate()
    assert b'"event":"run_end"' not in first.read_bytes()
    # The child's prompt stayed in the guest (protocol 1.1): the replay below matches its call by
    # the digest the guest sent.
    (child,) = [e for e in read_trajectory(first) if isinstance(e, ChildStart)]
    assert child.prompt_in_guest and child.prompt_blake2b and not child.prompt_sha256
    assert (tmp_path / "calls.txt").read_text() == "k\n"

    second = tmp_path / "second.jsonl"
    with ScriptedModel(script) as server:
        done = await trio.run_process(
            [sys.executable, "-c", RUN_APP, "--resume", str(first), "--llm-url", server.url,
             "--trajectory", str(second), "--json", *common],
            cwd=tmp_path, capture_stdout=True, capture_stderr=True, check=False, env=dict(os.environ),
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == reference.answer
    assert b"2 blocks replayed" in done.stderr and b"not restored" not in done.stderr
    # The model was asked once, with the two completed turns; the child and the tool were not
    # run again: their recorded answers served the replay.
    (request,) = server.requests()
    assert request.turn == 2
    assert (tmp_path / "calls.txt").read_text() == "k\n"
    events = read_trajectory(second)
    start = events[0]
    assert isinstance(start, RunStart) and start.resumed_from == str(first)
    (resumed,) = [e for e in events if isinstance(e, Resumed)]
    assert resumed.steps_replayed == 2 and resumed.problems == ()


async def test_what_cannot_be_restored_is_said(tmp_path: Path) -> None:
    source = tmp_path / "data.txt"
    source.write_text("payload")
    code = {0: f"data = open({str(source)!r}).read()", 1: 'n = llm_query("hi")', 2: "x = 1"}

    def stop_at_three(request: ChatRequest) -> Outcome:
        if request.is_leaf:
            return "leaf"
        return fence(code[request.turn])

    first = tmp_path / "first.jsonl"
    with ScriptedModel(stop_at_three) as server:
        stopped = await run_rlm("task", options=local_options(server.url, first, max_steps=2))
    assert stopped.stop_reason == "max_steps"
    source.unlink()

    def finish(request: ChatRequest) -> str:
        return fence("Final = n")

    with ScriptedModel(finish) as server:
        result = await resume_rlm(first, options=local_options(server.url, tmp_path / "second.jsonl"))
    assert result.answer == "leaf"
    (resumed,) = [e for e in read_trajectory(tmp_path / "second.jsonl") if isinstance(e, Resumed)]
    (problem,) = resumed.problems
    assert problem.startswith("step 1: the block failed in the replay (FileNotFoundError")
