"""A reasoning model's run in the viewer and the progress display: its thinking collapsed, its
usage per model, a window overflow as a notice."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable
from pathlib import Path

import trio

from tests.viewer.browser import Browser
from tests.engine.engine_harness import fence, local_options
from tests.model_servers import ModelCard, OpenAIServer, Thought
from rich.console import Console
from rlm_host.api import run_rlm
from rlm_host.progress import Progress
from rlm_host.trajectory import read_trajectory
from rlm_host.viewer import render_trajectory
from rlm_host.viewer.tree import build_view
from tests.scripted_model import ChatRequest

GUARD_SECONDS = 120
THOUGHT = "First I look at the prompt.\nThen   I decide.\n" + "More thinking. " * 40
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def script_of_steps() -> Callable[[ChatRequest], Thought]:
    steps = itertools.count(1)

    def script(request: ChatRequest) -> Thought:
        if request.is_leaf:
            if request.last_user.startswith("You are compacting"):
                return Thought("summary of the earlier turns")
            return Thought("leaf answer", reasoning="a short leaf thought")
        step = next(steps)
        if step < 9:
            return Thought(fence(f"x{step} = 'y' * 3000\nprint(x{step})"), reasoning=THOUGHT)
        return Thought(fence("Final = llm_query('hi')"), reasoning=THOUGHT)

    return script


def reasoning_run(path: Path) -> None:
    # llama.cpp with a 1,800-token window it does not announce: the seventh request is refused.
    card = ModelCard("root", context_length=1800)
    models = (card, ModelCard("small"))

    async def go() -> None:
        with OpenAIServer(script_of_steps(), flavour="llama.cpp", models=models, reasoning_field="reasoning_content") as server:
            with trio.fail_after(GUARD_SECONDS):
                result = await run_rlm("task", options=local_options(
                    server.url, path, api="openai", model="root", sub_model="small"))
        assert result.answer == "leaf answer", result.detail

    trio.run(go)


def test_view_and_progress_of_a_reasoning_run(browser: Browser, tmp_path: Path) -> None:
    trajectory = tmp_path / "reasoning.jsonl"
    reasoning_run(trajectory)
    events = read_trajectory(trajectory)
    view = build_view(events)
    root = view.rlms[0]
    assert [s.reasoning for s in root.steps if s.reasoning] and all(
        s.reasoning == THOUGHT.strip() for s in root.steps if s.reasoning
    )
    assert set(view.usage_by_model) == {"root", "small"}
    # Reasoning tokens as the server reported them (OpenAI-shape completion_tokens_details).
    assert root.usage.reasoning_tokens == sum(len(THOUGHT) // 4 for s in root.steps if s.reasoning)
    assert any(n.kind == "context" and "refused" in n.title for n in root.notices)

    render_trajectory(trajectory, tmp_path / "run.html")
    page = browser.open_page((tmp_path / "run.html").as_uri())
    assert page.evaluate("document.body.dataset.ready") == "true"
    assert page.errors() == []
    # Collapsed: the summary line shows, the thinking does not until opened.
    assert page.evaluate("document.querySelectorAll('details.reasoning').length") >= 4
    assert page.evaluate("[...document.querySelectorAll('details.reasoning')].every((d) => !d.open)")
    hidden = "[...document.querySelectorAll('details.reasoning > :not(summary)')].every((el) => !el.checkVisibility())"
    assert page.evaluate(hidden)
    page.evaluate("document.querySelector('details.reasoning').open = true")
    assert not page.evaluate(hidden)
    assert page.evaluate("document.getElementById('usage-by-model').textContent.includes('small')")
    assert page.evaluate("document.querySelector('.notice.context') !== null")
    assert page.evaluate("document.querySelector('#rlm-0 .rlm-head').textContent.includes(' reasoning')")

    for verbose in (True, False):
        terminal = io.StringIO()
        with Progress(Console(file=terminal, force_terminal=True, width=200), verbose=verbose) as progress:
            for event in events:
                progress(event)
        shown = ANSI.sub("", terminal.getvalue())
        assert ("reasoning (" in shown) is verbose
        if verbose:
            line = next(line for line in shown.splitlines() if "step 1 reasoning" in line)
            # One line, whitespace collapsed, cut well before the whole reasoning.
            assert "First I look at the prompt. Then I decide." in line
            assert "More thinking. " * 20 not in shown
        assert "request did not fit the window (refused" in shown
        assert "root: window unknown" in shown and "small: window unknown" in shown
