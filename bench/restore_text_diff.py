"""Does a restored guest kernel rewrite its own code? The kernel text of the saved snapshot
against the same snapshot restored and used.

    uv run python bench/restore_text_diff.py [--memory 1536] [--disk AGENT.qcow2 --state STATE]

Restores the snapshot, opens, runs and closes three sessions, reads ``_stext``/``_etext`` from
the guest's ``/proc/kallsyms`` (``nokaslr``: the same in every VM) and saves that range with
QMP ``memsave``; then loads the snapshot again without resuming it and saves the same range.
Prints the sites that differ: code the kernel rewrote after the restore (static keys,
alternatives). Rewriting code while the other vCPU runs it is what locked restored guests up
under multi-threaded TCG (docs/decisions.md), so the answer for the shipped snapshot must be 0.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm.accel import find_qemu, probe_accel
from rlm_host.vm.command import VMConfig, qemu_command
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.qemu import open_vm
from rlm_host.vm.qmp import QMPClient


async def _memsave(socket: Path, start: int, size: int, out: Path) -> None:
    qmp = await QMPClient.connect(socket)
    try:
        # QMP takes the address as a signed 64-bit integer.
        await qmp.execute("memsave", val=start - (1 << 64), size=size, filename=str(out), **{"cpu-index": 0})
    finally:
        await qmp.aclose()


async def _used(config: VMConfig, out: Path) -> tuple[int, int]:
    async with open_vm(config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail) as connection:
        text = ""
        for _ in range(3):
            async with await connection.open_session() as session:
                result = await session.exec(
                    "import os, socket; a, b = socket.socketpair(); r, w = os.pipe()\n"
                    "print(''.join(l for l in open('/proc/kallsyms') if l.split()[2] in ('_stext', '_etext')))"
                )
                text = result.stdout.text
        symbols = {line.split()[2]: int(line.split()[0], 16) for line in text.splitlines() if line.strip()}
        start, end = symbols["_stext"], symbols["_etext"]
        await _memsave(vm.run_dir / "qmp.sock", start, end - start, out)
    return start, end


async def _saved(config: VMConfig, start: int, end: int, out: Path) -> None:
    qemu = find_qemu()
    assert qemu is not None and config.accel is not None
    run_dir = Path(tempfile.mkdtemp(prefix="rlm-text-"))
    argv = qemu_command(config, qemu=qemu, accel=config.accel, run_dir=run_dir, console=run_dir / "console.log")
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(120):
            qmp = await QMPClient.connect(run_dir / "qmp.sock")
            try:
                while (await qmp.execute("query-status"))["status"] == "inmigrate":
                    await trio.sleep(0.02)
            finally:
                await qmp.aclose()
            await _memsave(run_dir / "qmp.sock", start, end - start, out)
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


async def diff(config: VMConfig) -> int:
    with tempfile.TemporaryDirectory(prefix="rlm-text-diff-") as scratch:
        used, saved = Path(scratch) / "used.bin", Path(scratch) / "saved.bin"
        start, end = await _used(config, used)
        await _saved(config, start, end, saved)
        before, after = saved.read_bytes(), used.read_bytes()
    sites: list[list[int]] = []
    for offset in (i for i in range(len(before)) if before[i] != after[i]):
        if sites and offset - sites[-1][1] <= 8:
            sites[-1][1] = offset
        else:
            sites.append([offset, offset])
    for first, last in sites:
        print(f"{start + first:x}: {before[first:last + 1].hex()} -> {after[first:last + 1].hex()}")
    print(f"{sum(last - first + 1 for first, last in sites)} bytes at {len(sites)} sites of {len(before)} rewritten after the restore")
    return len(sites)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", type=int, default=1536)
    parser.add_argument("--disk", type=Path, help="an agent disk to restore instead of the current one")
    parser.add_argument("--state", type=Path, help="its snapshot's state file (with --disk)")
    options = parser.parse_args()
    config = prepare_vm_config(memory_mb=options.memory)
    if options.disk is not None and options.state is not None:
        config = replace(config, disk=options.disk, restore_from=options.state, snapshot_compatible=True)
    config = replace(config, accel=config.accel or probe_accel())
    return 1 if trio.run(diff, config) else 0


if __name__ == "__main__":
    sys.exit(main())
