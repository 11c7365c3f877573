"""``python -m bench [--json] [--quick]``: every workload, one run, results/latest.json."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm import find_image, probe_accel
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.qemu import open_vm

from .boot import one_run
from .engine import run_engine_workloads
from .report import table
from .vm_bench import run_vm_workloads

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _boot(quick: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = time.monotonic()
    cold_config = prepare_vm_config(snapshot=False)
    out["prepare_vm_config_cold"] = round(time.monotonic() - t, 4)
    t = time.monotonic()
    restore_config = prepare_vm_config(snapshot=True)
    out["prepare_vm_config"] = round(time.monotonic() - t, 4)
    cold = [trio.run(one_run, cold_config) for _ in range(1 if quick else 2)]
    out["cold"] = {"median_ready": statistics.median(r["ready"] for r in cold), "runs": cold}
    if restore_config.restore_from is not None:
        restores = [trio.run(one_run, restore_config) for _ in range(3 if quick else 5)]
        out["restore"] = {
            "median_ready": statistics.median(r["ready"] for r in restores),
            "median_first_exec": statistics.median(r["first_exec_roundtrip"] for r in restores),
            "runs": restores,
        }
    return out


async def _engine(quick: bool) -> dict[str, Any]:
    config = prepare_vm_config(snapshot=True)
    async with open_vm(config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits) as conn:
        return await run_engine_workloads(conn, quick=quick)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller seed transfer")
    parser.add_argument("--only", choices=["vm", "boot", "engine"], action="append", help="run only these parts")
    parser.add_argument("--output", type=Path, default=RESULTS)
    options = parser.parse_args(argv)
    parts = options.only or ["vm", "boot", "engine"]
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(), "accel": probe_accel().name, "python": platform.python_version(),
            "kernel": platform.release(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": options.quick,
        "image": find_image().manifest.hash,
    }
    log = sys.stderr
    if "vm" in parts:
        print("bench: channel and exec workloads (one cold-booted VM)...", file=log, flush=True)
        config = prepare_vm_config(snapshot=False)
        report["vm"] = trio.run(lambda: run_vm_workloads(config, quick=options.quick))
    if "boot" in parts:
        print("bench: cold boot and restore...", file=log, flush=True)
        report["boot"] = _boot(options.quick)
    if "engine" in parts:
        print("bench: engine, ours and rlms, against the scripted model...", file=log, flush=True)
        report["engine"] = trio.run(_engine, options.quick)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["duration"] = round(time.monotonic() - started, 1)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report, indent=2) + "\n")
    if options.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(table(report))
        print(f"\n(written to {options.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
