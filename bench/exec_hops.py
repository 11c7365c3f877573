"""``python -m bench.exec_hops [--json]``: where the time of an ``exec("pass")`` round trip goes.

One VM restored from the image's snapshot. The host times ``exec("pass")``; the guest reports
how long the block itself took (``ExecResult.duration``); blocks run inside the guest time the
hops the agent's relay is made of, each the same way (a ping-pong, halved per hop):

- ``process_hop``: one message between two processes over a ``socketpair`` (agent <-> session
  process), blocking reads on both sides;
- ``thread_handoff``: one item from a reader thread to the main thread over a
  ``queue.SimpleQueue`` (the session process's reader thread <-> its main thread);
- ``signal_wakeup``: ``SIGINT`` from one process to another that waits in ``select``.

The round trip's relay pays the process hop four times (``exec`` in, ``block_started`` out,
``exec_result`` out, each through the agent's ``select`` loop) and the thread handoff once.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import time
from typing import Any

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.qemu import VMConfig, open_vm

HOPS = r'''
import json, os, queue, socket, threading, time, select, signal
N = 300
def median(xs):
    xs = sorted(xs); return xs[len(xs) // 2]
out = {}
a, b = socket.socketpair()
pid = os.fork()
if pid == 0:
    a.close()
    while True:
        m = b.recv(64)
        if not m:
            os._exit(0)
        b.send(m)
b.close()
samples = []
for _ in range(N):
    t = time.perf_counter(); a.send(b"x"); a.recv(64); samples.append((time.perf_counter() - t) / 2)
out["process_hop"] = median(samples)
a.close(); os.waitpid(pid, 0)
inbox, outbox = queue.SimpleQueue(), queue.SimpleQueue()
def echo():
    while True:
        item = inbox.get()
        if item is None:
            return
        outbox.put(item)
thread = threading.Thread(target=echo); thread.start()
samples = []
for _ in range(N):
    t = time.perf_counter(); inbox.put(1); outbox.get(); samples.append((time.perf_counter() - t) / 2)
inbox.put(None); thread.join()
out["thread_handoff"] = median(samples)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    signal.signal(signal.SIGINT, lambda *_: os.write(w, b"k"))
    while True:
        select.select([], [], [], 10)
os.close(w)
time.sleep(0.2)
samples = []
for _ in range(N):
    t = time.perf_counter(); os.kill(pid, signal.SIGINT); os.read(r, 1); samples.append((time.perf_counter() - t) / 2)
os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); os.close(r)
out["signal_wakeup"] = median(samples)
print(json.dumps(out))
'''


async def measure(repeat: int, config: VMConfig | None = None) -> dict[str, Any]:
    config = config or prepare_vm_config(snapshot=True)
    async with open_vm(config) as vm, GuestConnection.open(
        vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits
    ) as conn:
        async with await conn.open_session() as session:
            for _ in range(20):
                await session.exec("pass")
            totals, inside = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                result = await session.exec("pass")
                totals.append(time.perf_counter() - t)
                inside.append(result.duration)
            hops = json.loads((await session.exec(HOPS)).stdout.text)
    return {
        "exec_pass": statistics.median(totals),
        "exec_pass_min": min(totals),
        "block_in_guest": statistics.median(inside),
        **hops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument(
        "--config", help="a pickled VMConfig of another tree's guest (see bench/guest_ab.py)"
    )
    options = parser.parse_args()
    config = None
    if options.config:
        with open(options.config, "rb") as f:
            config = pickle.load(f)
    out = trio.run(measure, options.repeat, config)
    print(json.dumps({k: (round(v * 1000, 3) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
