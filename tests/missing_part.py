"""A test that needs a part this machine lacks is skipped, except under ``CI``: there it fails.

CI's set-up (``scripts/setup.sh``) installs every part, so a missing one in CI is a broken set-up,
and a skip would let the run pass without the tests that need it. The message names the fix.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """``CI`` is set to anything but an empty string, ``0`` or ``false`` (as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def require(present: bool, what: str, fix: str) -> None:
    """Skip (or, under ``CI``, fail) unless ``present``; ``what`` is missing, ``fix`` installs it.

    >>> require(True, "nothing", "no fix")
    """
    if present:
        return
    if in_ci():
        pytest.fail(f"{what} is missing and CI is set, so this fails instead of skipping; fix: {fix}")
    pytest.skip(f"{what} is missing (fix: {fix})")
