"""The ``run_batch`` example of the README's batch section runs as written."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import trio

from tests.batch.batch_harness import fence
from tests.scripted_model import ChatRequest, ScriptedModel

README = Path(__file__).parents[2] / "README.md"


def batch_example() -> str:
    section = README.read_text().split("## Batches", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README lost its run_batch example"
    return match.group(1)


def answer(request: ChatRequest) -> str:
    question = request.prompt_prefix
    if question.startswith("What is 6 * 7?"):
        return fence("Final = 6 * 7")
    if question.startswith("What is 2 + 2?"):
        return fence("Final = 2 + 2")
    raise AssertionError(f"no script for {question[:60]!r}")


async def test_readme_run_batch_example(tmp_path: Path) -> None:
    with ScriptedModel(answer) as server:
        done = await trio.run_process(
            [sys.executable, "-c", batch_example()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
            env={**os.environ, "RLM_LLM_URL": server.url, "RLM_MODEL": "m", "XDG_STATE_HOME": str(tmp_path)},
        )
    assert done.returncode == 0, done.stderr.decode()
    # Results come as tasks finish: in either order.
    assert sorted(done.stdout.decode().splitlines()) == ["q1 ok 42 1.0 1", "q2 ok 4 1.0 1"]
