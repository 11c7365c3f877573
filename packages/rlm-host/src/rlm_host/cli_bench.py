"""``rlm bench``: the benchmarks of the checkout's ``bench`` package (``python -m bench``).

The benchmarks need the repository (the scripted model server of the tests, the rlms runner,
``bench/results``), so this command finds the checkout that this ``rlm_host`` was installed
from and runs ``python -m bench`` there with the same interpreter. Mount in cli.py with
``app.command("bench")(bench)``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from .cli_exit import fail

__all__ = ["bench", "find_checkout"]


def find_checkout(start: Path | None = None) -> Path | None:
    """The nearest directory above ``start`` (default: this file) holding ``bench/__main__.py``."""
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        if (parent / "bench" / "__main__.py").is_file():
            return parent
    return None


def bench(
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quick: Annotated[bool, typer.Option(help="Fewer repetitions (a few minutes instead of ~15).")] = False,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only these parts (vm, boot, engine); repeatable.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="Write the results here instead of bench/results/latest.json.")
    ] = None,
) -> None:
    """Measure channel, exec, boot and engine speed beside the seed's design and rlms."""
    root = find_checkout() or find_checkout(Path.cwd() / "x")
    if root is None:
        fail("the benchmarks live in the rlm repository (bench/); run this from a checkout")
    argv = [sys.executable, "-m", "bench", *(["--json"] if as_json else []), *(["--quick"] if quick else [])]
    for part in only or []:
        argv += ["--only", part]
    if output is not None:
        argv += ["--output", str(output.resolve())]
    raise typer.Exit(subprocess.call(argv, cwd=root))
