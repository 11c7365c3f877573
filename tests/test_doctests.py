"""Every docstring example in the three packages holds (the public API's examples are tested).

Collected here rather than with ``--doctest-modules`` so that pytest never imports the test
folders' ``conftest.py`` files as doctest modules.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import rlm_guest
import rlm_host
import rlm_protocol

#: Modules whose import needs something optional (the ``ray`` extra).
OPTIONAL = {"rlm_host.batch.ray_engine"}


def _modules() -> list[str]:
    names = []
    for package in (rlm_protocol, rlm_guest, rlm_host):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name not in OPTIONAL and not info.name.endswith("__main__"):
                names.append(info.name)
    return names


MODULES = _modules()


def test_the_packages_have_examples() -> None:
    tried = sum(doctest.testmod(importlib.import_module(name)).attempted for name in MODULES)
    assert tried >= 20


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
