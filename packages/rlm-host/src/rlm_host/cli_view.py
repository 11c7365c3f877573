"""``rlm view``: a trajectory as one HTML page, to open in any browser (no server, no network).

The page's path alone goes to stdout, so that ``xdg-open "$(rlm view run.jsonl)"`` works; notes
about a partial trajectory go to stderr. Exit status 2 when the trajectory cannot be read or the
page cannot be written.
"""

from __future__ import annotations

import sys
import webbrowser
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_exit import fail
from .viewer import render_trajectory

__all__ = ["view"]


def view(
    trajectory: Annotated[Path, typer.Argument(help="Trajectory file (JSON lines) written by rlm run.")],
    output: Annotated[
        Optional[Path],
        typer.Option("--output", "-o", help="Where to write the page [default: TRAJECTORY with .html]."),
    ] = None,
    open_page: Annotated[bool, typer.Option("--open", help="Open the page in the default browser.")] = False,
) -> None:
    """Render a run's trajectory as one self-contained HTML page and print its path.

    Partial trajectories (a run that crashed or is still running) are shown as far as they go.
    """
    target = output if output is not None else trajectory.with_suffix(".html")
    if target == trajectory:
        # ``run.html`` given as the trajectory must not be overwritten by its own page.
        target = trajectory.with_name(trajectory.name + ".html")
    try:
        run = render_trajectory(trajectory, target)
    except OSError as error:
        fail(error, cause=error)
    for problem in run.problems:
        print(f"rlm: {trajectory}: {problem}", file=sys.stderr)
    print(target)
    if open_page:
        # The page is a local file: the browser needs an absolute file:// URI.
        webbrowser.open(target.resolve().as_uri())
