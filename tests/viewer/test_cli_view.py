"""``rlm view`` as a command: where the page goes, what is printed, failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from typer.testing import CliRunner

from rlm_host.cli_view import view

#: The lead mounts ``view`` in ``rlm_host.cli``; the test mounts it itself, as the run tests do.
app = typer.Typer()
app.command()(view)
runner = CliRunner()


def test_page_next_to_the_trajectory(scenario_trajectory: Path, tmp_path: Path) -> None:
    trajectory = tmp_path / "run.jsonl"
    shutil.copy(scenario_trajectory, trajectory)
    done = runner.invoke(app, [str(trajectory)])
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == str(tmp_path / "run.html")
    page = (tmp_path / "run.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "rlm-data" in page


def test_output_option_and_partial_notes(scenario_trajectory: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(scenario_trajectory.read_bytes()[:-30])
    done = runner.invoke(app, [str(cut), "-o", str(tmp_path / "page.html")])
    assert done.exit_code == 0
    assert done.stdout.strip() == str(tmp_path / "page.html")
    assert "cut short" in done.stderr and "no run_end" in done.stderr


def test_never_overwrites_its_input(tmp_path: Path) -> None:
    odd = tmp_path / "run.html"
    odd.write_text("")
    done = runner.invoke(app, [str(odd)])
    assert done.exit_code == 0 and odd.read_text() == ""
    assert (tmp_path / "run.html.html").exists()


def test_missing_file(tmp_path: Path) -> None:
    done = runner.invoke(app, [str(tmp_path / "nope.jsonl")])
    assert done.exit_code == 2 and "nope.jsonl" in done.stderr
