"""The live tree of ``rlm run``: driven by a real run's events, on a terminal and off one."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from rlm_host.progress import Progress
from rlm_host.trajectory import ChildStart, read_trajectory

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
