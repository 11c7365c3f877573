"""Helpers of the engine tests: options that point a run at a scripted server, locally."""

from __future__ import annotations

from pathlib import Path

from typing_extensions import Unpack

from rlm_host.api import RunOptionFields, RunOptions


def local_options(url: str, trajectory: Path, **changes: Unpack[RunOptionFields]) -> RunOptions:
    """A run against ``url`` with the guest as a local subprocess and millisecond retries."""
    base = RunOptions.of(
        model="scripted",
        llm_url=url,
        api="ollama",
        isolation="local",
        trajectory_path=trajectory,
        llm_backoff=0.001,
    )
    return base.replace(**changes)


def fence(code: str, language: str = "python") -> str:
    """A model reply with some prose and one fenced block."""
    return f"Here is my step.\n```{language}\n{code}\n```\n"
