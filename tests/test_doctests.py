"""Every docstring example in the three packages holds (the public API's examples are tested).

Collected here rather than with ``--doctest-modules`` so that pytest never imports the test
folders' ``conftest.py`` files as doctest modules. Only modules that have at least one example
become test cases: a module without one would be a test that cannot fail.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import rlm_guest
import rlm_host
import rlm_protocol

#: Modules whose import needs something optional (the ``ray`` extra).
OPTIONAL = {"rlm_host.batch.ray_engine"}

FINDER = doctest.DocTestFinder()


def _modules() -> list[str]:
    names = []
    for package in (rlm_protocol, rlm_guest, rlm_host):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name not in OPTIONAL and not info.name.endswith("__main__"):
                names.append(info.name)
    return names


def _examples(name: str) -> int:
    return sum(len(test.examples) for test in FINDER.find(importlib.import_module(name)))


MODULES = _modules()
WITH_EXAMPLES = [name for name in MODULES if _examples(name)]


def test_the_packages_have_examples() -> None:
    assert sum(_examples(name) for name in WITH_EXAMPLES) >= 20
    assert len(WITH_EXAMPLES) >= 10


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
