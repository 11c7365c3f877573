"""``python -m bench.guest_ab BEFORE.pkl AFTER.pkl``: two guest codes side by side, one run.

Each argument is a pickled ``VMConfig`` made by ``prepare_vm_config(snapshot=True)`` in a tree
of the code to compare (its agent disk and snapshot hold that code). Both VMs run at once and the
workloads alternate between them round by round, so that both see the same load: on a shared
two-core TCG machine the whole bench moves 2-3x from one run to the next, far more than the
differences this compares. Per round and VM: ``exec("pass")`` x 40; open, first exec, close x 5
back to back; open after a 0.2 s pause and its first exec x 3; ``set_vars`` of 16 MiB x 1.
Prints one JSON object: medians and minima in ms per VM, and after/before ratios of the medians.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import sys
import time
from typing import Any

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm.qemu import VMConfig, open_vm

ROUNDS = int(os.environ.get("RLM_AB_ROUNDS", "8"))
PROMPT = "x" * (16 << 20)


async def _round(conn: GuestConnection, out: dict[str, list[float]]) -> None:
    async with await conn.open_session() as session:
        for _ in range(5):
            await session.exec("pass")
        for _ in range(40):
            t = time.perf_counter()
            await session.exec("pass")
            out["exec_pass"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await session.set_vars({"prompt": PROMPT})
        out["set_vars_16mib"].append(time.perf_counter() - t)
    for _ in range(5):
        t = time.perf_counter()
        session = await conn.open_session()
        out["new_session"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await session.exec("pass")
        out["new_session_first_exec"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await session.close()
        out["close_session"].append(time.perf_counter() - t)
    for _ in range(3):
        await trio.sleep(0.2)
        t = time.perf_counter()
        session = await conn.open_session()
        out["new_session_after_pause"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await session.exec("pass")
        out["new_session_after_pause_first_exec"].append(time.perf_counter() - t)
        await session.close()


async def compare(before: VMConfig, after: VMConfig) -> dict[str, Any]:
    results: dict[str, dict[str, list[float]]] = {}
    async with open_vm(before) as vm_a, GuestConnection.open(
        vm_a.stream, death_detail=vm_a.death_detail, cpu_waits=vm_a.cpu_waits
    ) as a, open_vm(after) as vm_b, GuestConnection.open(
        vm_b.stream, death_detail=vm_b.death_detail, cpu_waits=vm_b.cpu_waits
    ) as b:
        for name in ("before", "after"):
            results[name] = {}
        for i in range(ROUNDS):
            # Alternate which goes first, so neither always follows the other's teardown.
            order = [("before", a), ("after", b)] if i % 2 == 0 else [("after", b), ("before", a)]
            for name, conn in order:
                out = results[name]
                samples: dict[str, list[float]] = {}
                for key in (
                    "exec_pass", "set_vars_16mib", "new_session", "new_session_first_exec",
                    "close_session", "new_session_after_pause", "new_session_after_pause_first_exec",
                ):
                    samples[key] = out.setdefault(key, [])
                await _round(conn, samples)
    medians = {
        name: {key: round(statistics.median(v) * 1000, 2) for key, v in values.items()}
        for name, values in results.items()
    }
    minimum = {name: round(min(values["exec_pass"]) * 1000, 2) for name, values in results.items()}
    least = {
        name: {key: round(min(v) * 1000, 2) for key, v in values.items()}
        for name, values in results.items()
    }
    ratios = {
        key: round(medians["after"][key] / medians["before"][key], 2) for key in medians["before"]
    }
    return {
        "rounds": ROUNDS, "median_ms": medians, "exec_pass_min_ms": minimum, "min_ms": least,
        "after_over_before": ratios,
    }


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        before = pickle.load(f)
    with open(sys.argv[2], "rb") as f:
        after = pickle.load(f)
    print(json.dumps(trio.run(compare, before, after), indent=1))


if __name__ == "__main__":
    main()
