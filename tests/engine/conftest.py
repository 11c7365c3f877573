"""Fixtures of the engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def trajectory(tmp_path: Path) -> Path:
    """Where a test's run writes its trajectory."""
    return tmp_path / "trajectory.jsonl"
