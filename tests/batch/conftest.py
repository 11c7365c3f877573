"""Fixtures of the batch tests."""

from __future__ import annotations

import pytest

from rlm_host.vm import build_image
from tests.vm_plugin import require_qemu


class _PrintReporter:
    def step(self, message: str) -> None:
        print(f"[image] {message}", flush=True)

    def detail(self, message: str) -> None:
        pass


@pytest.fixture(scope="session")
def vm_image() -> None:
    """The guest image, built when missing (the VM tests of the batch start their own VMs)."""
    require_qemu()
    build_image("debian", reporter=_PrintReporter())
