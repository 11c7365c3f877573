"""Fixtures of the viewer tests: one real run's trajectory, and one headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.missing_part import require
from tests.viewer.browser import Browser, chromium_path
from tests.viewer.scenario import run_scenario


@pytest.fixture(scope="session")
def scenario_trajectory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trajectory of ``scenario.run_scenario``: one real run, shared by the viewer tests."""
    path = tmp_path_factory.mktemp("viewer") / "scenario.jsonl"
    trio.run(run_scenario, path)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """A headless Chromium for the session; skipped without one, except in CI (setup installs it)."""
    executable = chromium_path()
    require(executable is not None, "chromium", "apt-get install chromium (scripts/setup-system.sh does it)")
    assert executable is not None
    with Browser.launch(executable) as launched:
        yield launched
