"""Every test runs under a time limit, so that a hang fails that test, by name, within minutes.

Two guards, registered by ``tests/conftest.py``:

- A trio test runs inside ``trio.fail_after`` at 90 % of its limit: the test is cancelled the
  trio way (fixtures and nurseries unwind, VMs and servers are closed) and fails with its name
  and the limit to raise; the run goes on with the next test.
- pytest-timeout (``timeout`` in ``pyproject.toml``, ``@pytest.mark.timeout(seconds)`` per test)
  stops a sync test with a traceback of where it hung (its signal method) and the run goes on.
  For a trio test it is the backstop for a hang that cancellation cannot reach (a shielded wait,
  a blocked thread): its thread method prints every thread's stack under the test's name and
  ends the run, because an exception raised by a signal inside trio's run loop would leave trio
  unusable for every later test.

Tests that use a VM get ``VM_SECONDS`` unless they are marked: the first of them also builds or
restores the image (minutes under TCG on a cold cache).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import trio

#: The fixtures that start a VM (or build its image) for the test that asks for them.
VM_FIXTURES = frozenset({"vm_config", "shared_vm", "vm_image"})
#: The limit of a test that uses a VM and has no mark of its own (the image may be built first).
VM_SECONDS = 600.0
#: The trio guard fires first, so that the test unwinds cleanly before pytest-timeout's signal.
TRIO_SHARE = 0.9


def _limit(item: pytest.Item) -> float:
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        seconds = marker.args[0] if marker.args else marker.kwargs["timeout"]
        return float(seconds)
    fixtures: Sequence[str] = getattr(item, "fixturenames", ())
    if VM_FIXTURES.intersection(fixtures):
        return VM_SECONDS
    return float(item.config.getini("timeout"))


async def _within(
    seconds: float, name: str, test: Callable[[], Awaitable[Any]]
) -> Any:
    try:
        with trio.fail_after(seconds):
            return await test()
    except trio.TooSlowError:
        pytest.fail(
            f"{name} did not finish within {seconds:.0f} s: it hangs, or it needs a larger"
            " @pytest.mark.timeout(...)",
            pytrace=False,
        )


def _guarded_run(
    seconds: float, name: str, test: Callable[[], Awaitable[Any]], **kwargs: Any
) -> Any:
    return trio.run(_within, seconds, name, test, **kwargs)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # trylast: after pytest-trio has marked the async tests (trio_mode) with ``trio``.
    for item in items:
        limit = _limit(item)
        if item.get_closest_marker("trio") is None:
            item.add_marker(pytest.mark.timeout(limit, method="signal"), append=False)
            continue
        item.add_marker(pytest.mark.timeout(limit, method="thread"), append=False)
        run = functools.partial(_guarded_run, limit * TRIO_SHARE, item.nodeid)
        # pytest-trio takes the first ``run`` it finds on the closest ``trio`` marker.
        item.add_marker(pytest.mark.trio(run=run), append=False)
