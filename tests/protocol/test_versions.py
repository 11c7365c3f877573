"""Versions written out in code agree with the distributions' metadata."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import rlm_guest


def test_guest_version_is_the_distributions() -> None:
    assert rlm_guest.__version__ == importlib.metadata.version("rlm-guest")


def test_the_agent_does_not_import_importlib_metadata() -> None:
    """It is the slowest import of the agent's start in a cold VM; keep it off that path."""
    code = "import sys, rlm_guest.__main__; print('importlib.metadata' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
