"""Integration tests with a real QEMU VM (marked ``vm``): isolation properties and death."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import trio

from rlm_host.connection import GuestConnection
from rlm_host.errors import GuestDiedError
from rlm_host.vm import VMConfig, VMDiedError, find_image, find_qemu, open_vm
from rlm_host.vm.accel import probe_accel
from rlm_host.vm.command import qemu_command
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.qmp import QMPClient

from tests.vm_harness import SharedVM, run_block

pytestmark = pytest.mark.vm


async def test_guest_kernel_is_not_the_host_kernel(shared_vm: SharedVM) -> None:
    result = await run_block(shared_vm, "import os; print(os.uname().release)")
    guest_release = result.stdout.text.strip()
    assert guest_release
    assert guest_release != os.uname().release
    assert guest_release == find_image().manifest.kernel_release


async def test_no_kernel_watchdog_can_kill_a_slow_guest(shared_vm: SharedVM) -> None:
    """No watchdog of the guest kernel panics (a loaded host makes a healthy TCG guest look
    locked up to it); a real panic still ends QEMU (``panic=-1`` with ``-no-reboot``)."""
    knobs = ["softlockup_panic", "hardlockup_panic", "hung_task_panic", "panic_on_rcu_stall", "panic"]
    result = await run_block(
        shared_vm, "cat " + " ".join(f"/proc/sys/kernel/{knob}" for knob in knobs), "bash"
    )
    assert dict(zip(knobs, result.stdout.text.split())) == {
        "softlockup_panic": "0", "hardlockup_panic": "0", "hung_task_panic": "0",
        "panic_on_rcu_stall": "0", "panic": "-1",
    }


async def _paused_restore_hmp(config: VMConfig, commands: list[str]) -> list[str]:
    """Load ``config``'s snapshot without resuming it and run QEMU monitor commands on it."""
    assert config.restore_from is not None
    qemu = find_qemu()
    assert qemu is not None
    accel = config.accel if config.accel is not None else await trio.to_thread.run_sync(probe_accel)
    run_dir = Path(tempfile.mkdtemp(prefix="rlm-peek-"))  # short: unix socket paths
    argv = qemu_command(config, qemu=qemu, accel=accel, run_dir=run_dir, console=run_dir / "console.log")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive() -> None:
        assert process.poll() is None, "QEMU exited while loading the snapshot"

    try:
        with trio.fail_after(120):
            qmp = await QMPClient.connect(run_dir / "qmp.sock", check_alive=alive)
            try:
                while (await qmp.execute("query-status"))["status"] == "inmigrate":
                    await trio.sleep(0.02)
                return [str(await qmp.execute("human-monitor-command", **{"command-line": c})) for c in commands]
            finally:
                await qmp.aclose()
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


async def test_memory_cgroup_accounting_is_switched_on_in_the_snapshot(
    shared_vm: SharedVM, vm_config: VMConfig
) -> None:
    """The guest kernel switches its memory-cgroup accounting on (static keys) at its first
    memory cgroup by rewriting its own code; done right after a restore, with a just-forked
    session process on the other vCPU, that rewrite sometimes left both vCPUs trapping for ever on
    a stale TCG translation of its ``int3`` (docs/decisions.md). The agent makes a memory cgroup
    before the snapshot is taken and keeps it, so the keys are on in the saved state itself.

    Read where it matters: the saved state, loaded and not resumed (QEMU's ``x`` command reads the
    paused guest's memory; ``nokaslr``, so the key's address from a running VM's
    ``/proc/kallsyms`` holds). A cgroup made after the restore instead leaves the keys at 0.
    """
    result = await run_block(
        shared_vm,
        "grep -E ' (memcg_kmem_enabled_key|memcg_kmem_online_key|memcg_sockets_enabled_key)$' /proc/kallsyms",
        "bash",
    )
    keys = {line.split()[2]: int(line.split()[0], 16) for line in result.stdout.text.splitlines()}
    assert "memcg_sockets_enabled_key" in keys and len(keys) == 2, result
    replies = await _paused_restore_hmp(vm_config, [f"x /1wx {address:#x}" for address in keys.values()])
    # "ffffffff840464b0: 0x00000001": the key's ``enabled`` count, the first word of the struct.
    counts = {name: int(reply.split()[-1], 16) for name, reply in zip(keys, replies)}
    assert all(count >= 1 for count in counts.values()), counts


async def test_a_kernel_panic_ends_the_vm(vm_config: VMConfig) -> None:
    """A panic ends QEMU: a guest whose kernel gave up is a dead VM, not a hang.

    The test panics a VM of its own (sysrq ``c``, as root in the guest) and awaits QEMU's end.
    """
    with trio.fail_after(300), pytest.raises(GuestDiedError) as caught:
        async with open_vm(vm_config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail) as conn:
            async with await conn.open_session() as session:
                await session.exec("echo c > /proc/sysrq-trigger", "bash")
                await trio.sleep_forever()
    # panic=-1 reboots at once, and -no-reboot turns the reboot into QEMU's exit (status 0);
    # x86's panic() ends its report with the kernel offset, the last line on the console.
    assert isinstance(caught.value, VMDiedError) and caught.value.returncode == 0, caught.value
    assert "Kernel Offset:" in caught.value.console_tail, caught.value


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def test_root_is_writable_but_image_is_not_modified(shared_vm: SharedVM, vm_config: VMConfig) -> None:
    disks = [vm_config.disk, find_image().rootfs]
    before = [await trio.to_thread.run_sync(_sha256, disk) for disk in disks]
    token = uuid.uuid4().hex
    result = await run_block(
        shared_vm,
        f"echo {token} > /etc/rlm-scratch && head -c 8000000 /dev/urandom > /var/rlm-scratch"
        " && sync && cat /etc/rlm-scratch; grep ' / ' /proc/mounts",
        "bash",
    )
    assert result.stdout.text.startswith(f"{token}\n")
    assert "overlay" in result.stdout.text
    after = [await trio.to_thread.run_sync(_sha256, disk) for disk in disks]
    assert after == before


async def test_killed_qemu_raises_typed_error_quickly(vm_config: VMConfig) -> None:
    # A VM of its own: killing the shared one would break the other tests.
    # The death is awaited, not timed: QEMU's exit must end the ``async with`` by itself (a
    # hang fails at the inner limit, which only bounds a hang, under any load).
    killed_at: list[float] = []
    with trio.fail_after(300):
        with pytest.raises(VMDiedError) as caught:
            async with open_vm(vm_config) as vm:
                os.kill(vm.pid, signal.SIGKILL)
                killed_at.append(time.monotonic())
                with trio.fail_after(60):
                    await trio.sleep_forever()
    assert killed_at, caught.value  # the VM had started: its death is the kill's
    print(f"\n[figure] death detected {time.monotonic() - killed_at[0]:.2f} s after SIGKILL")
    assert caught.value.returncode == -signal.SIGKILL
    assert "rlm-init" in caught.value.console_tail


async def test_a_kernel_report_in_a_vm_that_lived_on_is_a_warning(
    vm_config: VMConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """The guest kernel's complaint (here written to its log as a soft lockup would be) is
    reported when the VM closes; the VM itself was not harmed."""
    report = "watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [written-by-test:1]"
    with trio.fail_after(300):
        async with open_vm(vm_config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail) as conn:
            async with await conn.open_session() as session:
                # Level 2 (critical): printed on the console despite ``quiet``, as the real one.
                result = await session.exec(f"echo '<2>{report}' > /dev/kmsg; echo ok", "bash")
            assert result.stdout.text.strip() == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.name == "rlm_host.vm.qemu"]
    assert any(report in message for message in warnings), warnings


async def test_restored_guests_do_not_share_randomness(vm_config: VMConfig) -> None:
    # Every VM resumes the same snapshot; vmgenid must make the guest kernel reseed.
    samples = []
    for _ in range(2):
        with trio.fail_after(300):
            async with open_vm(vm_config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail) as conn:
                async with await conn.open_session() as session:
                    result = await session.exec("import os, random; print(os.urandom(16).hex(), random.random())")
                samples.append(result.stdout.text.strip())
    urandom = [s.split()[0] for s in samples]
    pyrandom = [s.split()[1] for s in samples]
    assert len(urandom[0]) == 32
    assert urandom[0] != urandom[1]
    assert pyrandom[0] != pyrandom[1]


async def test_guest_clock_follows_the_host_after_a_restore(shared_vm: SharedVM) -> None:
    # The snapshot may be hours old; rlm-agent-start sets the clock from the RTC when the two
    # differ by more than 2 s, and the RTC counts whole seconds: the guest's time lies between
    # the host's before and after the block give or take those 3 s (and not hours behind),
    # however slow the block is. (±2 s failed once under load: 2.2 s behind.)
    before = time.time()
    result = await run_block(shared_vm, "import time; print(time.time())")
    after = time.time()
    assert before - 3 <= float(result.stdout.text) <= after + 3


async def test_network_flag_gives_user_mode_nat(vm_config: VMConfig) -> None:
    # Only with network=True: eth0 with QEMU's user-mode address, and the host reachable
    # through the NAT gateway 10.0.2.2 (no internet needed for that). ``vm_config`` builds the
    # image (or fails in CI without QEMU) before this test makes a config of its own.
    config = await trio.to_thread.run_sync(lambda: prepare_vm_config(memory_mb=1024, network=True))
    listener = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener[0].socket.getsockname()[1]
    accepted = []

    async def serve(stream: trio.SocketStream) -> None:
        accepted.append(True)
        await stream.send_all(b"hello from host\n")
        await stream.aclose()

    code = (
        "import os, socket\n"
        "print(sorted(os.listdir('/sys/class/net')))\n"
        f"s = socket.create_connection(('10.0.2.2', {port}), timeout=10)\n"
        "print(s.recv(100).decode().strip())\n"
    )
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, serve, listener)
            async with open_vm(config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail) as conn:
                async with await conn.open_session() as session:
                    result = await session.exec(code)
            nursery.cancel_scope.cancel()
    lines = result.stdout.text.splitlines()
    assert lines[0] == "['eth0', 'lo']", result
    assert lines[1] == "hello from host"
    assert accepted


async def test_qemu_killed_during_a_block_fails_the_call_quickly(vm_config: VMConfig) -> None:
    # With a connection and a running block, the caller must get a GuestDiedError (a
    # VMDiedError is one) within a second, not hang on the dead channel.
    killed_at: list[float] = []

    def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())

    with trio.fail_after(300):
        with pytest.raises(GuestDiedError):
            async with open_vm(vm_config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail) as conn:
                async with await conn.open_session() as session:
                    # A timer thread, not a task: the block must be running when QEMU dies.
                    threading.Timer(1.0, kill, (vm.pid,)).start()
                    # The block would run an hour: only QEMU's death can end this call.
                    await session.exec("import time; time.sleep(3600)", timeout=None)
    assert killed_at
    print(f"\n[figure] call failed {time.monotonic() - killed_at[0]:.2f} s after SIGKILL")
