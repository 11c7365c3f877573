"""Multi-turn: one REPL session across questions; each new context is a new variable."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import trio

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import Conversation
from rlm_host.trajectory import Question, RunStart, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel

TURN_CODE = {
    "How many words?": 'words = prompt.split("[BEGIN CONTEXT]")[1].split("[END CONTEXT]")[0].split()\nFinal = len(words)',
    "Which is the longest?": "Final = max(words, key=len)",
    "Which of them are also in the new file?": "Final = sorted(set(words) & set(context_3.split()))",
}


def question_of(request: ChatRequest) -> str:
    """The question a root request is about: the last question message, or the first task."""
    try:
        return str(json.loads(request.last_user)["question"])
    except (ValueError, KeyError, TypeError):
        return request.prompt_prefix.splitlines()[0]


def script(request: ChatRequest) -> str:
    return fence(TURN_CODE[question_of(request)])


async def test_three_questions_reuse_a_variable_from_the_first(trajectory: Path) -> None:
    with ScriptedModel(script) as server:
        async with Conversation.open(options=local_options(server.url, trajectory)) as conversation:
            first = await conversation.ask("How many words?", context="alpha beta gamma delta")
            second = await conversation.ask("Which is the longest?")
            third = await conversation.ask("Which of them are also in the new file?", context="beta zeta delta")
    assert (first.answer, second.answer, third.value) == ("4", "alpha", ["beta", "delta"])
    # One session, one history: the third request carries the two earlier turns.
    last = server.requests()[-1]
    assert last.turn == 2 and '"name": "context_3"' in last.last_user
    events = read_trajectory(trajectory)
    assert sum(isinstance(e, RunStart) for e in events) == 1
    assert [(e.turn, e.variable) for e in events if isinstance(e, Question)] == [
        (1, "prompt"), (2, None), (3, "context_3")
    ]


CHAT_APP = (
    "import typer; from rlm_host.cli_chat import chat; "
    "app = typer.Typer(); app.command()(chat); app()"
)


async def test_rlm_chat_in_the_terminal(tmp_path: Path) -> None:
    (tmp_path / "words.txt").write_text("alpha beta gamma delta")
    (tmp_path / "more.txt").write_text("beta zeta delta")
    questions = b"How many words?\nWhich is the longest?\n/file more.txt\nWhich of them are also in the new file?\n"
    with ScriptedModel(script) as server:
        done = await trio.run_process(
            [sys.executable, "-c", CHAT_APP, "words.txt", "--isolation", "local", "--llm-url", server.url,
             "--trajectory", str(tmp_path / "chat.jsonl")],
            stdin=questions, capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path,
            env=dict(os.environ),
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines() == ["4", "alpha", "[", '  "beta",', '  "delta"', "]"]
