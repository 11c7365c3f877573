"""The examples in the docstrings of the engine-side modules hold."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

import rlm_host.cli_run
import rlm_host.engine.blocks
import rlm_host.llm
import rlm_host.llm.config
import rlm_host.trajectory

MODULES = [
    rlm_host.cli_run,
    rlm_host.engine.blocks,
    rlm_host.llm,
    rlm_host.llm.config,
    rlm_host.trajectory,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda module: module.__name__)
def test_doctests(module: ModuleType) -> None:
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0
