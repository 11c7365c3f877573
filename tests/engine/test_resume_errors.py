"""What cannot be resumed is a ``ResumeError`` that says why; a resumed run can be resumed again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import resume_rlm, run_rlm
from rlm_host.resume import ResumeError
from rlm_host.trajectory import RunStart, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel

STEPS = {0: "a = 6", 1: "b = 7", 2: "Final = a * b"}


def script(request: ChatRequest) -> str:
    return fence(STEPS[request.turn])


async def test_a_resumed_run_resumes_again(tmp_path: Path) -> None:
    first, second, third = (tmp_path / f"{name}.jsonl" for name in ("first", "second", "third"))
    with ScriptedModel(script) as server:
        stopped = await run_rlm("task", options=local_options(server.url, first, max_model_calls=1))
        assert stopped.stop_reason == "max_model_calls"
        again = await resume_rlm(first, options=local_options(server.url, second, max_model_calls=1))
        assert again.stop_reason == "max_model_calls"
        done = await resume_rlm(second, options=local_options(server.url, third))
    assert done.answer == "42"  # a from the first run and b from the second were restored
    # Each run saw one new turn: the turns already done were replayed, not asked again.
    assert [request.turn for request in server.requests()] == [0, 1, 2]
    starts = [next(e for e in read_trajectory(path) if isinstance(e, RunStart)) for path in (second, third)]
    assert [start.resumed_from for start in starts] == [str(first), str(second)]


async def test_what_cannot_be_resumed_is_said(tmp_path: Path) -> None:
    not_a_run = tmp_path / "notes.jsonl"
    not_a_run.write_text(json.dumps({"hello": "world"}) + "\n")
    answered, unsaved = tmp_path / "answered.jsonl", tmp_path / "unsaved.jsonl"
    with ScriptedModel(script) as server:
        options = local_options(server.url, tmp_path / "new.jsonl")
        await run_rlm("task", options=local_options(server.url, answered))
        await run_rlm("task", options=local_options(server.url, unsaved, max_model_calls=1, save_prompt=False))
        cases = [
            (not_a_run, None, options, "not an rlm trajectory"),
            (answered, None, options, "nothing to resume"),
            (unsaved, None, options, "task text is not kept"),
            (unsaved, "another task", options, "differs"),
            (unsaved, "task", local_options(server.url, unsaved), "new trajectory"),
        ]
        for path, prompt, resumed_options, message in cases:
            with pytest.raises(ResumeError, match=message):
                await resume_rlm(path, options=resumed_options, prompt=prompt)
        # The same text as the first run's: it resumes.
        done = await resume_rlm(unsaved, options=options, prompt="task")
    assert done.answer == "42"


def test_rlm_run_resume_error_exits_2(tmp_path: Path) -> None:
    not_a_run = tmp_path / "notes.jsonl"
    not_a_run.write_text("{}\n")
    done = subprocess.run(
        [sys.executable, "-c", "from rlm_host.cli import main; main()", "run", "--resume", str(not_a_run),
         "--isolation", "local", "--llm-url", "http://127.0.0.1:9", "--trajectory", str(tmp_path / "new.jsonl")],
        capture_output=True, env=os.environ, timeout=300,
    )
    assert done.returncode == 2 and b"rlm: cannot resume:" in done.stderr, done.stderr
