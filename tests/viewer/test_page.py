"""The page in a real headless Chromium: it loads cleanly and shows every call and step.

The trajectory is a real run (``scenario``); the page is opened from ``file://`` as a user
would open it, and everything the browser logs (console calls, uncaught exceptions, failed loads,
content-security-policy violations) is collected over the DevTools protocol.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.viewer.browser import Browser, Page
from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.llm import ModelError
from rlm_host.trajectory import ChildStart, ModelRequest, read_trajectory
from rlm_host.viewer import decode_lines, render_trajectory
from tests.viewer.scenario import HOSTILE
from tests.scripted_model import ChatRequest, Fail, Outcome, ScriptedModel

SHOWN = "(el) => el.getClientRects().length > 0"


def open_view(browser: Browser, trajectory: Path, output: Path) -> Page:
    render_trajectory(trajectory, output)
    page = browser.open_page(output.as_uri())
    assert page.evaluate("document.body.dataset.ready") == "true"
    assert page.errors() == []
    return page


def shown(page: Page, selector: str) -> list[list[str]]:
    """``[rlm, step]`` of the elements matching ``selector`` that are laid out on the page."""
    return page.evaluate(  # type: ignore[no-any-return]
        f"[...document.querySelectorAll({selector!r})].filter({SHOWN})"
        ".map((el) => [el.dataset.rlm, el.dataset.step || ''])"
    )


def test_page_shows_every_call_and_step(browser: Browser, scenario_trajectory: Path, tmp_path: Path) -> None:
    events = read_trajectory(scenario_trajectory)
    page = open_view(browser, scenario_trajectory, tmp_path / "run.html")
    rlm_ids = {"0"} | {e.rlm for e in events if isinstance(e, ChildStart)}
    steps = {(e.rlm, str(e.step)) for e in events if isinstance(e, ModelRequest)}
    cards = shown(page, ".rlm")
    assert sorted(rlm for rlm, _ in cards) == sorted(rlm_ids)
    assert {tuple(step) for step in shown(page, ".step")} == steps
    # The four leaf calls of one batch sit side by side: one row, four columns.
    tops = page.evaluate(
        "[...document.querySelectorAll('.batch')].map((b) => [...b.children].map((c) => c.getBoundingClientRect().top))"
    )
    assert any(len(row) == 4 and len(set(row)) == 1 for row in tops)
    # One timeline row per call; code is highlighted; model text is text, never markup.
    assert page.evaluate("document.querySelectorAll('#timeline .row-label').length") == len(rlm_ids)
    assert page.evaluate("document.querySelectorAll('pre.code .tok-host').length") > 0
    assert page.evaluate("window.__pwned === undefined && document.querySelectorAll('#tree img').length === 0")
    assert page.evaluate(f"document.getElementById('tree').textContent.includes({HOSTILE!r})")
    assert page.evaluate("document.querySelector('.notice.budget') !== null")
    assert page.errors() == []


def test_search_and_depth_filters(browser: Browser, scenario_trajectory: Path, tmp_path: Path) -> None:
    page = open_view(browser, scenario_trajectory, tmp_path / "run.html")
    everything = len(shown(page, ".step"))
    page.evaluate("(() => { const s = document.getElementById('search'); s.value = 'WHICH DISK'; s.dispatchEvent(new Event('input')); })()")
    matching = shown(page, ".step")
    # The root step that spawned the investigators stays, as the way down to the match.
    assert 0 < len(matching) < everything and ["0", "4"] in matching
    assert "match" in page.evaluate("document.getElementById('match-count').textContent")
    page.evaluate("(() => { const s = document.getElementById('search'); s.value = ''; s.dispatchEvent(new Event('input')); })()")
    page.evaluate("(() => { const d = document.getElementById('depth'); d.value = '0'; d.dispatchEvent(new Event('input')); })()")
    assert {rlm for rlm, _ in shown(page, ".rlm")} == {"0"}
    assert len(shown(page, ".step")) == len([s for s in shown(page, ".step") if s[0] == "0"])
    assert page.errors() == []


def test_truncated_trajectory(browser: Browser, scenario_trajectory: Path, tmp_path: Path) -> None:
    lines = scenario_trajectory.read_bytes().splitlines(keepends=True)
    # The run "crashed" in the middle of writing a line, with children in flight.
    cut = next(i for i, line in enumerate(lines) if b'"event":"child_start"' in line and b'"kind":"rlm"' in line) + 4
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_bytes(b"".join(lines[:cut]) + lines[cut][:40])
    events = read_trajectory_prefix(lines[:cut])
    page = open_view(browser, crashed, tmp_path / "crashed.html")
    banner = page.evaluate("document.getElementById('problems').textContent")
    assert "cut short" in banner and "no run_end" in banner
    assert page.evaluate("document.querySelector('#summary .badge').textContent") == "running, incomplete"
    rlm_ids = {"0"} | {e.rlm for e in events if isinstance(e, ChildStart)}
    assert sorted(rlm for rlm, _ in shown(page, ".rlm")) == sorted(rlm_ids)
    assert {tuple(s) for s in shown(page, ".step")} == {
        (e.rlm, str(e.step)) for e in events if isinstance(e, ModelRequest)
    }
    # Calls still in flight when the run died are drawn as such, not as finished.
    assert page.evaluate("document.querySelectorAll('.rlm.status-running').length") >= 2


def read_trajectory_prefix(lines: list[bytes]) -> list[ModelRequest | ChildStart]:
    """The events of whole lines (which must all decode) that the assertions count."""
    events, problems = decode_lines(lines)
    assert problems == []
    return [e for e in events if isinstance(e, (ModelRequest, ChildStart))]


async def test_failed_child_and_failed_run(browser: Browser, tmp_path: Path) -> None:
    """A child whose model server fails, then the root's: errors are drawn where they happened."""

    def script(request: ChatRequest) -> Outcome:
        if request.prompt_prefix.startswith("doomed") or request.turn == 1:
            return Fail(500, "model server on fire <b>")
        return fence("print(rlm_query('doomed child'))")

    trajectory = tmp_path / "failed.jsonl"
    with ScriptedModel(script) as server:
        with pytest.raises(ModelError):
            await run_rlm("task", options=local_options(server.url, trajectory, llm_retries=0))
    page = open_view(browser, trajectory, tmp_path / "failed.html")
    notices = page.evaluate("[...document.querySelectorAll('.notice.error')].map((n) => n.closest('.rlm').dataset.rlm)")
    assert sorted(notices) == ["0", "0.1", "0.1"]  # the child's own error, its end, the root's error
    assert page.evaluate("document.getElementById('tree').textContent.includes('model server on fire <b>')")
    assert page.evaluate("document.querySelectorAll('.rlm.status-error').length") == 2


def test_empty_trajectory(browser: Browser, tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    page = open_view(browser, empty, tmp_path / "empty.html")
    assert page.evaluate("document.querySelectorAll('.rlm').length") == 0
