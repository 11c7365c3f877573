"""Restore the VM snapshot again and again, and report any guest kernel lockup.

    uv run python bench/restore_soak.py [--runs 30] [--hold 25] [--disk AGENT.qcow2 --state STATE]

Each run restores a VM, runs one block, and holds the VM ``--hold`` seconds (a soft lockup is
reported only after 20 s stuck). The lockup limits are lowered to 10 s of QEMU's CPU, so that
any lockup the host believes ends the VM with ``VMLockupError``, whose message has the report
and each vCPU's registers (RIP resolves against the guest's /proc/kallsyms: ``nokaslr``).
One line per run: ``ok`` with the seconds to ready, ``LOCKUP`` or ``DIED`` with the error.

``--disk``/``--state`` restore another agent disk and its snapshot (under
``~/.cache/rlm/images/<image>/``) with this host code: an A/B of two guest versions, run side by
side under the same load.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.errors import VMDiedError, VMLockupError
from rlm_host.vm.qemu import open_vm


async def soak(runs: int, hold: float, memory_mb: int, disk: Path | None = None, state: Path | None = None) -> int:
    config = replace(prepare_vm_config(memory_mb=memory_mb), lockup_limit=10.0, start_lockup_limit=10.0)
    if disk is not None and state is not None:
        config = replace(config, disk=disk, restore_from=state, snapshot_compatible=True)
    failures = 0
    for run in range(runs):
        started = time.monotonic()
        try:
            async with open_vm(config) as vm, GuestConnection.open(
                vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits
            ) as connection:
                ready = time.monotonic() - started
                async with await connection.open_session() as session:
                    await session.exec("import os; os.getpid()")
                first_block = time.monotonic() - started - ready
                await trio.sleep(hold)
                reported = "lockup" in vm.console_tail(20)
            print(run, "ok", f"ready {ready:.2f}", f"first block {first_block:.2f}", "(a lockup report the host did not believe)" if reported else "", flush=True)
        except VMLockupError as error:
            failures += 1
            print(run, "LOCKUP", error, flush=True)
        except VMDiedError as error:
            failures += 1
            print(run, "DIED", error, flush=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--hold", type=float, default=25.0)
    parser.add_argument("--memory", type=int, default=1024)
    parser.add_argument("--disk", type=Path, help="an agent disk to restore instead of the current one")
    parser.add_argument("--state", type=Path, help="its snapshot's state file (with --disk)")
    options = parser.parse_args()
    return 1 if trio.run(soak, options.runs, options.hold, options.memory, options.disk, options.state) else 0


if __name__ == "__main__":
    sys.exit(main())
