"""The embedding example of rlm-host's README runs as written."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import trio

from tests.engine.engine_harness import fence
from tests.scripted_model import ChatRequest, ScriptedModel

README = Path(__file__).parents[2] / "packages" / "rlm-host" / "README.md"


def embedding_example() -> str:
    section = README.read_text().split("## Embedding", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README lost its embedding example"
    return match.group(1)


async def test_readme_embedding_example(tmp_path: Path) -> None:
    with ScriptedModel(lambda request: fence("Final = 6 * 7")) as server:
        done = await trio.run_process(
            [sys.executable, "-c", embedding_example()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "RLM_LLM_URL": server.url, "XDG_STATE_HOME": str(tmp_path)},
        )
    assert done.returncode == 0, done.stderr
    answer, tokens, trajectory = done.stdout.decode().split()
    assert answer == "42" and int(tokens) > 0 and Path(trajectory).exists()


# --- the sections of issue 12: each example runs as written against one scripted model --------


def section_example(heading: str) -> str:
    section = README.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, f"the README lost its {heading} example"
    return match.group(1)


def _question(request: ChatRequest) -> str:
    try:
        return str(json.loads(request.last_user)["question"])
    except (ValueError, KeyError, TypeError):
        return request.prompt_prefix


def readme_script(request: ChatRequest) -> str:
    if request.is_leaf and request.last_user == "What is 6 * 7? Only the number.":
        assert request.model == "qwen3:0.6b" and request.body["think"] is False
        return "42"
    if request.is_leaf:
        return "a summary of the earlier turns"
    task = _question(request)
    if task.startswith("Which page"):
        return fence('Final = search_docs("installing", k=1)[0]')
    if task.startswith("Is this message spam"):
        if request.turn == 0:
            return fence('Final = {"label": "spam"}')
        return fence('Final = {"label": "spam", "confidence": 0.97}')
    if task.startswith("Ask a smaller model"):
        assert request.model == "qwen3.6"
        return fence("Final = int(llm_query('What is 6 * 7? Only the number.'))")
    if task.startswith("What is 6 * 7?"):
        return fence("Final = 6 * 7")
    if task.startswith("How many words"):
        return fence('words = prompt.split("[BEGIN CONTEXT]")[1].split("[END CONTEXT]")[0].split()\nFinal = len(words)')
    if task.startswith("Which word is the longest?"):
        return fence("Final = max(words, key=len)")
    if task.startswith("Look through a long list"):
        if "summary_of_earlier_turns" in request.first_user:
            return fence("Final = 'done' if history else 'no history'")
        return fence('print("item " * 500)')
    if task.startswith("Count to three"):
        return fence("n = 1" if request.turn == 0 else "n += 1" if request.turn == 1 else "Final = n + 1")
    raise AssertionError(f"no script for {task[:60]!r}")


EXPECTED = {
    "Host tools": "installing guide, part 1\n",
    "Typed answers": "spam 0.97\n",
    "Run events": "block: Final = 6 * 7\nfinal: 42\nfinal\n",
    "Conversations": "3 alpha\n",
    "History compaction": "done\n",
    "Resume": "max_steps\n3\n",
    "Models and servers": "42 ['qwen3.6', 'qwen3:0.6b']\n",
}


@pytest.mark.parametrize("heading", [*EXPECTED, "Cost budget"])
async def test_readme_section_examples(tmp_path: Path, heading: str) -> None:
    with ScriptedModel(readme_script) as server:
        done = await trio.run_process(
            [sys.executable, "-c", section_example(heading)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "RLM_LLM_URL": server.url, "RLM_MODEL": "qwen3.6", "XDG_STATE_HOME": str(tmp_path)},
        )
    assert done.returncode == 0, done.stderr
    output = done.stdout.decode()
    if heading == "Cost budget":
        answer, cost = output.split()
        assert answer == "42" and float(cost) > 0
    else:
        assert output == EXPECTED[heading]
