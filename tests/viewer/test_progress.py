"""The live tree of ``rlm run``: driven by a real run's events, on a terminal and off one."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from tests.engine.engine_harness import fence
from rlm_host.progress import Progress
from rlm_host.trajectory import BudgetStop, ChildEnd, ChildStart, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel

#: ``rlm run`` mounted on its own, as ``tests/engine/test_cli_run.py`` does.
RUN_APP = "import typer; from rlm_host.cli_run import run; app = typer.Typer(); app.command()(run); app()"

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    """A clock the test moves by hand: elapsed times in the display are then exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def draw(progress: Progress) -> str:
    sink = io.StringIO()
    Console(file=sink, width=160, color_system=None).print(progress.renderable())
    return sink.getvalue()


def test_tree_of_calls_in_flight(scenario_trajectory: Path) -> None:
    events = read_trajectory(scenario_trajectory)
    clock = Clock()
    terminal = io.StringIO()
    with Progress(Console(file=terminal, force_terminal=True, width=160), clock=clock) as progress:
        # Replay the run up to the moment the grandchild started: three levels in flight.
        grandchild = next(i for i, e in enumerate(events) if isinstance(e, ChildStart) and e.depth == 2)
        for event in events[: grandchild + 1]:
            clock.now += 0.5
            progress(event)
        clock.now += 2.0
        drawn = draw(progress)
        lines = drawn.splitlines()
        root = next(line for line in lines if re.match(r"^0 root", line))
        assert "depth 0 · step 4/12 · running its block" in root
        child = next(line for line in lines if "0.6 rlm_query" in line or "0.5 rlm_query" in line)
        grand = next(line for line in lines if re.search(r"0\.[56]\.1 rlm_query", line))
        # Deeper calls are drawn further right, under their parents; leaves that ended are gone.
        assert lines.index(root) < lines.index(child) < lines.index(grand)
        assert grand.index("0.") > child.index("0.") > root.index("0")
        assert "starting 2.0 s" in grand and "(leaf)" not in drawn
        assert "model calls" in lines[-1] and "children in flight 3" in lines[-1]
        for event in events[grandchild + 1 :]:
            progress(event)
        assert progress.state.in_flight == 0 and progress.state.calls_in_flight == {}
    shown = ANSI.sub("", terminal.getvalue())
    # Logged above the tree, and left on the screen: the budget stop of the looping child.
    assert "max_steps: no Final after 6 steps" in shown and "Final set" in shown


def test_quiet_when_not_a_terminal(scenario_trajectory: Path) -> None:
    sink = io.StringIO()
    with Progress(Console(file=sink, force_terminal=False)) as progress:
        for event in read_trajectory(scenario_trajectory):
            progress(event)
    assert sink.getvalue() == "" and progress.state.calls > 0


def test_a_big_batch_is_summed_up(scenario_trajectory: Path) -> None:
    progress = Progress(Console(file=io.StringIO(), force_terminal=False))
    events = read_trajectory(scenario_trajectory)
    progress(events[0])  # run_start: the root
    (start,) = [e for e in events if isinstance(e, ChildStart) and e.rlm == "0.1"]
    for n in range(1, 31):
        progress(ChildStart(ts=0, rlm=f"0.{n}", depth=1, parent="0", kind="leaf", method=start.method, prompt_chars=1))
    drawn = draw(progress)
    assert drawn.count("llm_query (leaf)") == 8 and "… and 22 more" in drawn


def test_model_text_is_never_markup() -> None:
    terminal = io.StringIO()
    with Progress(Console(file=terminal, force_terminal=True, width=160)) as progress:
        progress(ChildStart(ts=0, rlm="0.1", depth=1, parent="0", kind="leaf", method="llm_query", prompt_chars=3))
        progress(ChildEnd(ts=0, rlm="0.1", depth=1, parent="0", kind="leaf", duration=0.1, error="boom [x] [/]"))
        progress(BudgetStop(ts=0, rlm="0", depth=0, reason="max_steps", detail="[bold]no[/bold] Final"))
    shown = ANSI.sub("", terminal.getvalue())
    assert "child 0.1 failed: boom [x] [/]" in shown and "max_steps: [bold]no[/bold] Final" in shown


def test_rlm_run_draws_the_tree_on_a_terminal(tmp_path: Path) -> None:
    """``rlm run`` with stderr on a pseudo-terminal: the tree is drawn there, stdout has the answer."""

    def script(request: ChatRequest) -> str:
        if request.is_leaf:
            return "leaf says hi"
        return fence("Final = llm_query('hi?')")

    master, slave = pty.openpty()
    # A slow model: the display refreshes several times while calls are in flight.
    with ScriptedModel(script, latency=0.6) as server:
        done = subprocess.run(
            [sys.executable, "-c", RUN_APP, "--query", "say hi", "--llm-url", server.url,
             "--isolation", "local", "--trajectory", str(tmp_path / "t.jsonl")],
            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, timeout=60,
            env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        )
    os.close(slave)
    drawn = _drain(master)
    assert done.returncode == 0 and done.stdout == b"leaf says hi\n"
    plain = ANSI.sub("", drawn.decode(errors="replace"))
    assert "0 root · depth 0 · step 1/18" in plain
    assert "0.1 llm_query (leaf) · depth 1 · waiting for the model" in plain


def _drain(master: int) -> bytes:
    """Everything written to the pseudo-terminal (the writer has exited)."""
    data = b""
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed and nothing is left
            break
        if not chunk:
            break
        data += chunk
    os.close(master)
    return data
