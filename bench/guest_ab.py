"""``python -m bench.guest_ab BEFORE.pkl AFTER.pkl``: two guest codes side by side, one run.

Each argument is a pickled ``VMConfig`` made by ``prepare_vm_config(snapshot=True)`` in a tree
of the code to compare (its agent disk and snapshot hold that code). Both VMs run at once and the
workloads alternate between them round by round, so that both see the same load: on a shared
two-core TCG machine the whole bench moves 2-3x from one run to the next, far more than the
differences this compares. Per round and VM: ``exec("pass")`` x 40; open, first exec, close x 5
back to back; open after a 0.2 s pause and its first exec x 3; ``set_vars`` of 16 MiB x 1.
Prints one JSON object: medians and minima in ms per VM, and after/before ratios of the medians.

A config with a ``rlm.bench`` port (``--prepare OUT.pkl``, run with the Python of the tree to
measure: ``cd TREE && uv run python /path/to/bench/guest_ab.py --prepare OUT.pkl``) also gets the
raw virtio echo of ``bench.vm_bench`` beside each ``set_vars``, the same 16 MiB on the same VM in
the same round, and the ratio that issue's goal names: raw echo time / ``set_vars`` time.
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
from rlm_host.session import Session
from rlm_host.vm.qemu import VM, VMConfig, open_vm

#: The raw ceiling's guest side, as in ``bench.vm_bench`` (which this file does not import, so
#: that it runs from a path in another tree's environment for ``--prepare``).
RAW_SINK = r'''
import os
fd = os.open("/dev/virtio-ports/rlm.bench", os.O_RDWR)
buf = bytearray(64 << 20)
view = memoryview(buf)
def read_exact(n):
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:n]])
        if k <= 0:
            raise SystemExit(0)
        got += k
while True:
    read_exact(4)
    size = int.from_bytes(buf[:4], "big")
    read_exact(size)
    os.write(fd, b"k")
'''

RAW_PORT = "rlm.bench"

ROUNDS = int(os.environ.get("RLM_AB_ROUNDS", "8"))
#: ``set_vars``: each round is only the raw echo (where the config has its port) and
#: ``set_vars`` of 16 MiB into a new session after five ``exec("pass")``, as in a full round.
ONLY = os.environ.get("RLM_AB_ONLY", "")
PROMPT = "x" * (16 << 20)


class _RawEcho:
    """The raw virtio echo on a VM's ``rlm.bench`` port (``bench.vm_bench``'s ceiling)."""

    def __init__(self, stream: trio.SocketStream, helper: Session) -> None:
        self.stream = stream
        #: The session that started the sink, open as long as the sink is needed: closing it
        #: kills everything it started (its cgroup).
        self.helper = helper
        self.payload = PROMPT.encode()

    @classmethod
    async def start(cls, vm: VM, conn: GuestConnection) -> _RawEcho:
        helper = await conn.open_session()
        code = (
            f"import subprocess, sys\nopen('/tmp/raw_sink.py', 'w').write({RAW_SINK!r})\n"
            "subprocess.Popen([sys.executable, '/tmp/raw_sink.py'])"
        )
        result = await helper.exec(code)
        assert result.error is None, result
        return cls(await trio.open_unix_socket(str(vm.extra_socket(RAW_PORT))), helper)

    async def time(self) -> float:
        t = time.perf_counter()
        await self.stream.send_all(len(self.payload).to_bytes(4, "big"))
        await self.stream.send_all(self.payload)
        assert await self.stream.receive_some(1) == b"k"
        return time.perf_counter() - t


async def _round(conn: GuestConnection, out: dict[str, list[float]], raw: _RawEcho | None) -> None:
    async with await conn.open_session() as session:
        for _ in range(5):
            await session.exec("pass")
        for _ in range(0 if ONLY == "set_vars" else 40):
            t = time.perf_counter()
            await session.exec("pass")
            out["exec_pass"].append(time.perf_counter() - t)
        if raw is not None:
            out["raw_echo_16mib"].append(await raw.time())
        t = time.perf_counter()
        await session.set_vars({"prompt": PROMPT})
        out["set_vars_16mib"].append(time.perf_counter() - t)
    if ONLY == "set_vars":
        return
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
        raws: dict[str, _RawEcho | None] = {}
        for name, vm, conn, config in (("before", vm_a, a, before), ("after", vm_b, b, after)):
            results[name] = {}
            with_raw = RAW_PORT in config.extra_ports
            raws[name] = await _RawEcho.start(vm, conn) if with_raw else None
        for i in range(ROUNDS):
            # Alternate which goes first, so neither always follows the other's teardown.
            order = [("before", a), ("after", b)] if i % 2 == 0 else [("after", b), ("before", a)]
            for name, conn in order:
                out = results[name]
                samples: dict[str, list[float]] = {}
                for key in (
                    "exec_pass", "set_vars_16mib", "new_session", "new_session_first_exec",
                    "close_session", "new_session_after_pause", "new_session_after_pause_first_exec",
                ) + (("raw_echo_16mib",) if raws[name] is not None else ()):
                    samples[key] = out.setdefault(key, [])
                await _round(conn, samples, raws[name])
            print(f"round {i + 1}/{ROUNDS} done", file=sys.stderr, flush=True)
        for echo in raws.values():
            if echo is not None:
                await echo.stream.aclose()
                await echo.helper.close()
    medians = {
        name: {key: round(statistics.median(v) * 1000, 2) for key, v in values.items() if v}
        for name, values in results.items()
    }
    minimum = {
        name: round(min(values["exec_pass"]) * 1000, 2) for name, values in results.items() if values["exec_pass"]
    }
    least = {
        name: {key: round(min(v) * 1000, 2) for key, v in values.items() if v}
        for name, values in results.items()
    }
    ratios = {
        key: round(medians["after"][key] / medians["before"][key], 2)
        for key in medians["before"] if key in medians["after"]
    }
    report: dict[str, Any] = {
        "rounds": ROUNDS, "median_ms": medians, "exec_pass_min_ms": minimum, "min_ms": least,
        "after_over_before": ratios,
    }
    # The goal's ratio, per round (each set_vars beside the raw echo just before it) and of
    # the medians: 1.0 would be set_vars as fast as the bare channel.
    report["raw_echo_over_set_vars"] = {
        name: {
            "of_medians": round(medians[name]["raw_echo_16mib"] / medians[name]["set_vars_16mib"], 3),
            "median_of_rounds": round(statistics.median(
                r / s for r, s in zip(values["raw_echo_16mib"], values["set_vars_16mib"], strict=True)
            ), 3),
        }
        for name, values in results.items() if "raw_echo_16mib" in values
    }
    return report


def prepare(path: str) -> None:
    """Pickle this tree's ``VMConfig`` with the raw echo's port, its snapshot made."""
    from dataclasses import replace

    from rlm_host.vm.connect import prepare_vm_config
    from rlm_host.vm.snapshot import ensure_snapshot

    config = replace(prepare_vm_config(snapshot=False), extra_ports=(RAW_PORT,))
    config = replace(config, snapshot_compatible=True, restore_from=ensure_snapshot(config))
    with open(path, "wb") as f:
        pickle.dump(config, f)


def main() -> None:
    if sys.argv[1] == "--prepare":
        prepare(sys.argv[2])
        return
    with open(sys.argv[1], "rb") as f:
        before = pickle.load(f)
    with open(sys.argv[2], "rb") as f:
        after = pickle.load(f)
    print(json.dumps(trio.run(compare, before, after), indent=1))


if __name__ == "__main__":
    main()
