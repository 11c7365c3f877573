"""Fixtures of the VM integration tests, shared by every folder (a pytest plugin).

Registered by ``tests/conftest.py`` so that ``tests/vm`` and ``tests/security`` (and any other
folder) use the same session-wide image and the same single VM: a test session boots one shared
VM however many folders ask for it.

Without QEMU the VM tests are skipped, except when ``CI`` is set: there they fail, so that a CI
machine without QEMU cannot pass by skipping them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from rlm_host.vm import VMConfig, build_image, find_qemu
from rlm_host.vm.connect import prepare_vm_config
from tests.missing_part import require
from tests.vm_harness import SharedVM


class _PrintReporter:
    def step(self, message: str) -> None:
        print(f"[image] {message}", flush=True)

    def detail(self, message: str) -> None:
        pass


def require_qemu() -> None:
    """Skip without QEMU, or fail under ``CI``."""
    require(find_qemu() is not None, "qemu-system-x86_64", "scripts/setup-system.sh installs it")


@pytest.fixture(scope="session")
def vm_config() -> VMConfig:
    """Image (built when missing), wheelhouse and agent disk for the current sources."""
    require_qemu()
    started = time.monotonic()
    build_image("debian", reporter=_PrintReporter())
    config = prepare_vm_config(memory_mb=1024)
    print(f"[image] ready in {time.monotonic() - started:.1f} s", flush=True)
    return config


@pytest.fixture(scope="session")
def shared_vm(vm_config: VMConfig) -> Iterator[SharedVM]:
    """The session's VM; every VM test talks to this one guest."""
    shared = SharedVM(vm_config)
    shared.start()
    yield shared
    shared.stop()
