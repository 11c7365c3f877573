"""Isolation of the real VM: devices, paths, memory and disk limits; the host never evaluates
guest data.

Already proven in ``tests/vm/test_vm.py`` (referenced, not repeated): only ``lo`` without
``--network`` (``test_only_loopback_without_network``), user-mode NAT with it
(``test_network_flag_gives_user_mode_nat``), the 9p share mounted read-only
(``test_cache_share_is_read_only``), guest files never reaching the host
(``test_tmp_file_stays_in_the_guest``), a writable root that leaves the image unmodified.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from rlm_host.connection import GuestConnection
from rlm_host.engine.prompts import observation_message
from tests.vm_harness import SharedVM

from tests.security.guest_probe import guest_processes

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.vm
async def test_the_guest_sees_no_host_path_but_the_share(shared_vm: SharedVM, tmp_path: Path) -> None:
    marker = tmp_path / "host-only-marker"
    marker.write_text("secret")
    share = shared_vm.config.share
    assert share is not None
    code = (
        "import os\n"
        f"paths = {[str(marker), str(REPO), str(Path.home() / '.cache' / 'rlm'), str(share)]!r}\n"
        "mounts = [line.split()[:3] for line in open('/proc/mounts')]\n"
        "Final = {'exists': [p for p in paths if os.path.exists(p)],\n"
        "         'mounts': mounts, 'cache': sorted(os.listdir('/cache')),\n"
        "         'blocks': sorted(os.listdir('/sys/block'))}\n"
    )

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as session:
            return await session.exec(code)

    result = await shared_vm.run(go)
    assert result.final is not None and result.final.ok, result
    seen = result.final.value
    print(f"\n[figure] guest mounts: {[m[1] + ':' + m[2] for m in seen['mounts']]}; disks {seen['blocks']}")
    assert seen["exists"] == []  # no host path, not even the share's host path
    assert seen["cache"] == sorted(p.name for p in share.iterdir())  # the share is all of it
    nine_p = [m for m in seen["mounts"] if m[2] == "9p"]
    assert [m[1] for m in nine_p] == ["/cache"]  # the only host filesystem
    assert [b for b in seen["blocks"] if not b.startswith(("loop", "ram"))] == ["vda"]  # the image


@pytest.mark.vm
async def test_allocating_past_guest_memory_fails_in_the_guest(shared_vm: SharedVM) -> None:
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(32 * 2**20))"

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as session:
            await session.exec("kept = 1")
            at_once = await session.exec("x = bytearray(8 * 2**30)")
            growing = await session.exec(grow, timeout=600)
            after = await session.exec("print(globals().get('kept'))")
        return at_once, growing, after

    at_once, growing, after = await shared_vm.run(go)
    print(f"\n[figure] 8 GiB at once: {at_once.error.name if at_once.error else None}; "
          f"growing: {growing.error.name if growing.error else None} ({growing.error.value if growing.error else ''})")
    assert at_once.error is not None and at_once.error.name == "MemoryError"
    # Growing past the VM's memory: a MemoryError, or the guest's OOM killer ends the session
    # (its cgroup, never the agent), which is reported and reset.
    assert growing.error is not None
    assert growing.error.name == "MemoryError" or growing.session_reset, growing
    if growing.session_reset:
        assert "session_reset" in observation_message(growing)
    assert after.stdout.text in ("1\n", "None\n")
    # The agent survived: the VM's connection still works (the fixture's VM is alive).
    assert not shared_vm.connection.closed  # type: ignore[union-attr]


@pytest.mark.vm
async def test_filling_tmp_fails_in_the_guest(shared_vm: SharedVM) -> None:
    fill = "dd if=/dev/zero of=/tmp/fill bs=1M 2>&1; df -m /tmp | tail -1; rm -f /tmp/fill"

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as session:
            result = await session.exec(fill, "bash", timeout=600)
            again = await session.exec("echo ok > /tmp/small && cat /tmp/small", "bash")
        return result, again

    result, again = await shared_vm.run(go)
    print(f"\n[figure] filling /tmp: {result.stdout.text.strip()!r} {result.stderr.text.strip()!r}")
    assert "No space left on device" in result.stdout.text + result.stderr.text
    assert again.stdout.text == "ok\n"


@pytest.mark.vm
async def test_every_session_process_is_in_a_cgroup_of_its_own(shared_vm: SharedVM) -> None:
    # A session process moves itself into the cgroup the agent made for it, first thing after
    # its fork (docs/decisions.md): two sessions, two cgroups with the session's limits, none
    # the agent's. The hierarchy is mounted with favordynmods (the move is then cheap).
    code = (
        "import os\n"
        "(line,) = open('/proc/self/cgroup').read().split()\n"
        "path = '/sys/fs/cgroup' + line.split('::', 1)[1]\n"
        "mount = [l.split()[3] for l in open('/proc/mounts') if l.split()[1] == '/sys/fs/cgroup']\n"
        "Final = {'cgroup': line, 'pids_max': open(path + '/pids.max').read().strip(),\n"
        "         'agent': open(f'/proc/{os.getppid()}/cgroup').read().strip(), 'mount': mount}\n"
    )

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as a, await conn.open_session() as b:
            return [await a.exec(code), await b.exec(code)]

    results = await shared_vm.run(go)
    seen = [result.final.value for result in results if result.final is not None and result.final.ok]
    assert len(seen) == 2, results
    print(f"\n[figure] session cgroups: {seen}")
    assert seen[0]["cgroup"] != seen[1]["cgroup"]
    for one in seen:
        assert one["cgroup"].startswith("0::/rlm-") and one["cgroup"] != one["agent"], one
        assert one["pids_max"] == "512"
        assert "favordynmods" in one["mount"][0].split(","), one


@pytest.mark.vm
async def test_nothing_runs_outside_a_session(shared_vm: SharedVM) -> None:
    # Whatever ran before in this VM (the hostile blocks of this folder among others): every
    # process is init, the agent, or belongs to a session the host still has open.
    rows = await shared_vm.run(guest_processes)
    print(f"\n[figure] guest processes: {rows}")
    (agent,) = [row for row in rows if "rlm-agent-start" in row[3] and row[1] == 1]
    leaders = {row[0] for row in rows if row[1] == agent[0] and row[3] == agent[3]}
    outside = [row for row in rows if row[0] not in (1, agent[0]) and row[2] not in leaders]
    assert outside == []


_DANGEROUS = re.compile(r"\b(pickle|dill|marshal|shelve|cloudpickle)\b|\beval\(|\bexec\(|yaml\.load\(|__import__\(")


def test_the_host_never_evaluates_guest_data() -> None:
    # The host and protocol packages decode guest frames with msgspec into typed structs only.
    # No unpickling and no eval/exec anywhere in them (the guest legitimately execs model code,
    # and is not checked here). Calls named exec on a Session are the protocol's, not Python's.
    hits = []
    for package in ("rlm-host/src/rlm_host", "rlm-protocol/src/rlm_protocol"):
        for path in sorted((REPO / "packages" / package).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                code = re.sub(r"\.exec\(|def exec\(|async def exec\(", "", code)
                if _DANGEROUS.search(code):
                    hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == [], "\n".join(hits)
