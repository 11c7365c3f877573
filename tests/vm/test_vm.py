"""Integration tests with a real QEMU VM (marked ``vm``): isolation properties and death."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import trio

from rlm_host.vm import VMConfig, VMDiedError, find_image, open_vm

from vm_harness import SharedVM, run_block

pytestmark = pytest.mark.vm


async def test_guest_kernel_is_not_the_host_kernel(shared_vm: SharedVM) -> None:
    result = await run_block(shared_vm, "import os; print(os.uname().release)")
    guest_release = result.stdout.text.strip()
    assert guest_release
    assert guest_release != os.uname().release
    assert guest_release == find_image().manifest.kernel_release


async def test_tmp_file_stays_in_the_guest(shared_vm: SharedVM) -> None:
    name = f"/tmp/rlm-vm-test-{uuid.uuid4().hex}"
    result = await run_block(shared_vm, f"echo inside > {name} && cat {name}", "bash")
    assert result.stdout.text.strip() == "inside"
    assert not Path(name).exists()


async def test_cache_share_is_read_only(shared_vm: SharedVM) -> None:
    result = await run_block(
        shared_vm,
        "ls /cache; touch /cache/written-by-guest; echo status=$?; grep ' /cache ' /proc/mounts",
        "bash",
    )
    out = result.stdout.text
    assert "wheelhouse" in out  # the share is mounted...
    assert "status=0" not in out  # ...and refuses writes
    assert "Read-only file system" in result.stderr.text
    assert " 9p ro," in out or " 9p ro " in out
    assert shared_vm.config.share is not None
    assert not (shared_vm.config.share / "written-by-guest").exists()


async def test_only_loopback_without_network(shared_vm: SharedVM) -> None:
    result = await run_block(shared_vm, "import os; print(sorted(os.listdir('/sys/class/net')))")
    assert result.stdout.text.strip() == "['lo']"


async def test_root_is_writable_but_image_is_not_modified(shared_vm: SharedVM) -> None:
    result = await run_block(shared_vm, "echo x > /etc/rlm-scratch && cat /etc/rlm-scratch; grep ' / ' /proc/mounts", "bash")
    assert result.stdout.text.startswith("x\n")
    assert "overlay" in result.stdout.text


async def test_killed_qemu_raises_typed_error_quickly(vm_config: VMConfig) -> None:
    # A VM of its own: killing the shared one would break the other tests.
    with trio.fail_after(300):
        with pytest.raises(VMDiedError) as caught:
            async with open_vm(vm_config) as vm:
                os.kill(vm.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                await trio.sleep_forever()
    detected = time.monotonic() - killed_at
    assert detected < 1.0
    assert caught.value.returncode == -signal.SIGKILL
    assert "rlm-init" in caught.value.console_tail
