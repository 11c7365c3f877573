"""Boot-to-ready benchmark of the rlm guest VM; prints JSON on stdout.

    uv run python bench/boot.py [--runs 3] [--cpus 2] [--memory 1536]

Modes: ``cold`` boots the kernel each time, ``restore`` resumes the saved snapshot.
Per run: QEMU spawn to the agent's first bytes (``total``) with the breakdown from
:class:`rlm_host.vm.BootTimings` (firmware, kernel, initramfs modules, switch_root,
userspace, agent start), then the protocol handshake and one ``exec`` round trip.
Image and agent disk are prepared first (cache hits after the first run) and not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm import find_image, probe_accel
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.qemu import VMConfig, open_vm


async def one_run(config: VMConfig) -> dict[str, Any]:
    started = time.monotonic()
    async with open_vm(config) as vm:
        ready = time.monotonic() - started
        async with GuestConnection.open(vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits) as conn:
            handshake = time.monotonic() - started
            async with await conn.open_session() as session:
                t = time.monotonic()
                result = await session.exec("print(1 + 1)")
                exec_rtt = time.monotonic() - t
            assert result.stdout.text.strip() == "2", result
        return {
            "ready": round(ready, 3),
            "handshake": round(handshake, 3),
            "first_exec_roundtrip": round(exec_rtt, 3),
            "breakdown": vm.timings.as_dict(),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=None)
    parser.add_argument("--memory", type=int, default=1536)
    parser.add_argument("--mode", choices=["cold", "restore", "both"], default="both",
                        help="cold: boot the kernel every time; restore: resume the saved snapshot")
    options = parser.parse_args()
    modes = ["cold", "restore"] if options.mode == "both" else [options.mode]
    results: dict[str, Any] = {}
    config = prepare_vm_config(memory_mb=options.memory, cpus=options.cpus, snapshot=False)
    for mode in modes:
        if mode == "restore":
            config = prepare_vm_config(memory_mb=options.memory, cpus=options.cpus, snapshot=True)
            if config.restore_from is None:
                results[mode] = {"error": "no snapshot could be made (see log)"}
                continue
        runs = [trio.run(one_run, config) for _ in range(options.runs)]
        results[mode] = {
            "median_ready": statistics.median(r["ready"] for r in runs),
            "median_handshake": statistics.median(r["handshake"] for r in runs),
            "runs": runs,
        }
    image = find_image()
    report = {
        "accel": probe_accel().name,
        "host_cpus": os.cpu_count(),
        "guest_cpus": config.cpus,
        "memory_mb": config.memory_mb,
        "image": image.manifest.hash,
        "image_rootfs_mib_used": round(image.manifest.sizes.get("rootfs.ext4.allocated", 0) / 2**20, 1),
        "kernel": image.manifest.kernel_release,
        "load_average": os.getloadavg(),
        **results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
