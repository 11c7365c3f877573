"""``rlm run`` through the ``rlm`` script's entry point builds that command alone: the same help
and errors as the whole application's ``run``, without importing the other commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: ``rlm ARGS`` as the script runs it, or through the whole application (``app``); the program
#: name is fixed so that both print the same usage line. Prints whether another command's module
#: was imported, after the command's own output.
_RUN = """
import sys
sys.argv = ["rlm", *sys.argv[2:]]
from rlm_host import cli
try:
    cli.main() if sys.argv_mode == "main" else cli.app()
except SystemExit as exit:
    print(f"exit {exit.code}; batch imported: {'rlm_host.cli_batch' in sys.modules}")
"""


def _rlm(mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = _RUN.replace("sys.argv_mode", repr(mode))
    return subprocess.run(
        [sys.executable, "-c", code, mode, *args],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "100", "PATH": ""},
    )


@pytest.mark.parametrize(
    "args",
    [("run", "--help"), ("run",), ("run", "--max-steps", "x", "f"), ("run", "--bogus"), ("run", "/nonexistent")],
)
def test_run_alone_says_what_the_whole_application_says(args: tuple[str, ...]) -> None:
    alone, whole = _rlm("main", *args), _rlm("app", *args)
    assert alone.stderr == whole.stderr
    assert alone.stdout.replace("batch imported: False", "batch imported: True") == whole.stdout
    assert "exit 0" in alone.stdout or "exit 2" in alone.stdout
    assert "batch imported: False" in alone.stdout


def test_other_commands_get_the_whole_application(tmp_path: Path) -> None:
    out = _rlm("main", "view", "--help")
    assert "exit 0" in out.stdout and "batch imported: True" in out.stdout
