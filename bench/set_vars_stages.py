"""``python -m bench.set_vars_stages [--json] [--repeat N] [--size MIB]``: where a large
``set_vars`` spends its time, stage by stage, next to the raw virtio echo measured the same way.

One VM cold-booted with two extra virtio-serial ports on the agent's device:

- ``rlm.bench``: the raw ceiling of ``bench.vm_bench`` (read ``length + body`` into one
  preallocated buffer with ``readv``, ack with one byte), every other frame into a populated
  memfd mapping like the agent's kept buffer instead of a ``bytearray`` (``raw_into_memfd``);
- ``rlm.trace``: a second agent of the image's own guest code, started by a session of the real
  one, with every stage of a frame's way timestamped (``time.perf_counter`` is
  ``CLOCK_MONOTONIC``, one clock for every process of the guest): each ``readv`` on the port
  (time and size), the agent's large-frame path, the notice to the session process, the session
  process's decode, bind and reply, the agent's relay of that reply. The wrappers cost a few
  microseconds per call; each ``readv``'s record is one list append.

The host times the encode alone, ``send_all`` of the frame and the whole request; host and guest
clocks are not compared, only durations on each side. The two workloads alternate, ``repeat``
times each; the first round pages in the buffers and is left out of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from typing import Any

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.qemu import VM, open_vm
from rlm_protocol import FrameEncoder, SetVars

MIB = 1 << 20

#: Shared by both guest programs: timestamped records, kept in memory and written out between
#: frames (a write per ``readv`` would double the syscalls it measures).
_TRACE = r'''
import json, os, time
if os.environ.get("RLM_STAGES_PIN"):
    os.sched_setaffinity(0, {int(os.environ["RLM_STAGES_PIN"])})
REC = []
pc = time.perf_counter
PORT_FD = [None]
def mark(name, value=None):
    REC.append((os.getpid(), name, pc(), value))
def dump():
    if REC:
        with open("/tmp/trace.jsonl", "a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in REC))
        REC.clear()
_readv = os.readv
def readv(fd, buffers):
    n = _readv(fd, buffers)
    if fd == PORT_FD[0]:
        REC.append((os.getpid(), "read", pc(), n))
    return n
os.readv = readv
'''

RAW_SINK = _TRACE + r'''
import mmap
fd = os.open("/dev/virtio-ports/rlm.bench", os.O_RDWR)
PORT_FD[0] = fd
# Frames alternate between two targets: a bytearray (bench.vm_bench's ceiling) and, like the
# agent's kept buffer, a populated mapping of a memfd.
memfd = os.memfd_create("raw")
os.ftruncate(memfd, 64 << 20)
targets = [memoryview(bytearray(64 << 20)), memoryview(mmap.mmap(memfd, 64 << 20, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE))]
frames = 0
def read_exact(view, n):
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:n]])
        if k <= 0:
            raise SystemExit(0)
        got += k
while True:
    view = targets[frames % 2]
    frames += 1
    read_exact(view, 4)
    size = int.from_bytes(view[:4], "big")
    read_exact(view, size)
    mark("ack")
    os.write(fd, b"k")
    dump()
'''

TRACED_AGENT = _TRACE + r'''
import sys
from rlm_guest import agent, channel, relay, session, shared, supervisor, worker
from rlm_guest.__main__ import SHARED_BYTES_IN_A_VM
from rlm_protocol import codec

def wrap(owner, name, label, after=None):
    inner = getattr(owner, name)
    def wrapper(*args, **kwargs):
        mark(label + ":start")
        try:
            return inner(*args, **kwargs)
        finally:
            mark(label + ":end")
            if after is not None:
                after()
    setattr(owner, name, wrapper)

wrap(agent.Agent, "_large_from_host", "large_from_host")
# The agent takes its large frame's start with one or the other (before and after detach_head).
wrap(codec.FrameDecoder, "detach_partial", "detach")
if hasattr(codec.FrameDecoder, "detach_head"):
    wrap(codec.FrameDecoder, "detach_head", "detach")
wrap(shared.BufferPool, "take", "buffers_take")
wrap(channel.Channel, "read_into", "read_into")
wrap(agent, "decode_envelope", "decode_envelope")
wrap(supervisor.Supervisor, "send_to", "send_to_process")
wrap(worker, "read_shared", "decode")
wrap(shared, "decode_body", "decode_body")
wrap(session.Session, "set_vars", "bind")
wrap(relay.SessionRelay, "receive", "relay_receive")
_write = channel.Channel.write
def write(self, data):
    mark("write:start", len(data))
    _write(self, data)
    mark("write:end")
    dump()
channel.Channel.write = write
_send = worker._Link.send
def send(self, frame):
    kind = type(frame).__name__
    mark("link_send:start", kind)
    _send(self, frame)
    mark("link_send:end", kind)
    if kind == "VarsSet":
        dump()
worker._Link.send = send

port = channel.DeviceChannel("/dev/virtio-ports/rlm.trace")
PORT_FD[0] = port.read_fd
pool = shared.SharedBuffer(SHARED_BYTES_IN_A_VM, populate=True)
sys.exit(agent.Agent(port, sys.stderr, pool=pool).serve())
'''

_START = '''
import subprocess, sys
open("/tmp/{name}.py", "w").write({code!r})
subprocess.Popen([sys.executable, "/tmp/{name}.py"], stderr=open("/tmp/{name}.err", "w"), start_new_session=True, env={env!r})
'''


class _TimedStream(trio.abc.Stream):
    """A stream that notes when each ``send_all`` starts and ends and when data comes back."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.marks: list[tuple[str, float, int]] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.marks.append(("send:start", time.perf_counter(), len(data)))
        await self.inner.send_all(data)
        self.marks.append(("send:end", time.perf_counter(), len(data)))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.marks.append(("receive", time.perf_counter(), len(data)))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


def prompt_text(size: int) -> str:
    line = "2024-05-01T12:00:00 INFO request 000000 served in 12 ms by worker-7\n"
    return (line * (size // len(line) + 1))[:size]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _span(records: list[list[Any]], start: str, end: str) -> float | None:
    starts = [r[2] for r in records if r[1] == start]
    ends = [r[2] for r in records if r[1] == end]
    return ends[-1] - starts[0] if starts and ends else None


def _reads(records: list[list[Any]]) -> dict[str, Any]:
    reads = [r for r in records if r[1] == "read" and r[3]]
    sizes = [r[3] for r in reads]
    return {
        "reads": len(reads),
        "bytes": sum(sizes),
        "read_sizes": {str(k): sizes.count(k) for k in sorted(set(sizes), reverse=True)[:6]},
        "first_to_last_read_ms": _ms(reads[-1][2] - reads[0][2]) if reads else None,
    }


def _ours_stages(records: list[list[Any]]) -> dict[str, Any]:
    """One set_vars frame's records (agent and session process) as named durations."""
    out = _reads(records)
    reads = [r for r in records if r[1] == "read" and r[3]]
    first_read, last_read = reads[0][2], reads[-1][2]
    by_name: dict[str, list[float]] = {}
    for r in records:
        by_name.setdefault(r[1], []).append(r[2])

    def first(name: str) -> float:
        return by_name[name][0]

    def last(name: str) -> float:
        return by_name[name][-1]

    out.update({
        "first_read_to_large_path_ms": _ms(first("large_from_host:start") - first_read),
        "detach_ms": _ms(last("detach:end") - first("detach:start")),
        "buffers_take_ms": _ms(last("buffers_take:end") - first("buffers_take:start")),
        "copy_head_ms": _ms(first("read_into:start") - last("buffers_take:end")),
        "read_into_ms": _ms(last("read_into:end") - first("read_into:start")),
        "last_read_to_notice_sent_ms": _ms(last("send_to_process:end") - last_read),
        "notice_to_decode_start_ms": _ms(first("decode:start") - last("send_to_process:end")),
        "decode_ms": _ms(last("decode:end") - first("decode:start")),
        "of_which_decode_body_ms": _ms(last("decode_body:end") - first("decode_body:start")),
        "decode_to_bind_ms": _ms(first("bind:start") - last("decode:end")),
        "bind_ms": _ms(last("bind:end") - first("bind:start")),
        "reply_sent_by_session_ms": _ms(
            [r[2] for r in records if r[1] == "link_send:end" and r[3] == "VarsSet"][-1] - last("bind:end")
        ),
        "relayed_to_host_ms": _ms(last("write:end") - [r[2] for r in records if r[1] == "link_send:end" and r[3] == "VarsSet"][-1]),
        "last_read_to_reply_written_ms": _ms(last("write:end") - last_read),
        "first_read_to_reply_written_ms": _ms(last("write:end") - first_read),
    })
    return out


#: Waits (in the guest) until every process has written its records of the frame out.
_COLLECT = """
import os, time
for _ in range(400):
    text = open('/tmp/trace.jsonl').read() if os.path.exists('/tmp/trace.jsonl') else ''
    if all(marker in text for marker in {markers!r}):
        break
    time.sleep(0.05)
os.remove('/tmp/trace.jsonl')
print(text, end='')
"""


async def _guest_records(helper: Any, *markers: str) -> list[list[Any]]:
    result = await helper.exec(_COLLECT.format(markers=[f'"{m}"' for m in markers]))
    assert result.error is None, result
    text = result.stdout.text
    assert not result.stdout.cut, "trace too long for one exec output"
    return [json.loads(line) for line in text.splitlines() if line]


def _guest_env() -> dict[str, str]:
    """``RLM_STAGES_PIN=<cpu>``: both guest programs pinned to that vCPU (``sched_setaffinity``)."""
    pin = os.environ.get("RLM_STAGES_PIN")
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", **({"RLM_STAGES_PIN": pin} if pin else {})}


async def measure(vm: VM, conn: GuestConnection, size: int, repeat: int) -> dict[str, Any]:
    helper = await conn.open_session()
    result = await helper.exec(
        _START.format(name="raw_sink_traced", code=RAW_SINK, env=_guest_env())
        + _START.format(name="traced_agent", code=TRACED_AGENT, env=_guest_env())
    )
    assert result.error is None, result
    raw = await trio.open_unix_socket(str(vm.extra_socket("rlm.bench")))
    timed = _TimedStream(await trio.open_unix_socket(str(vm.extra_socket("rlm.trace"))))
    text = prompt_text(size)
    payload = text.encode()
    header = len(payload).to_bytes(4, "big")
    rounds: list[dict[str, Any]] = []
    async with GuestConnection.open(timed) as traced:
        target = await traced.open_session()
        for i in range(repeat):
            await trio.sleep(0.3)
            raw_runs = []
            for _target in ("bytearray", "memfd"):
                r = time.perf_counter()
                await raw.send_all(header)
                await raw.send_all(payload)
                raw_sent = time.perf_counter() - r
                assert await raw.receive_some(1) == b"k"
                raw_total = time.perf_counter() - r
                await trio.sleep(0.3)
                raw_runs.append((raw_total, raw_sent, await _guest_records(helper, "ack")))
                await trio.sleep(0.3)
            (raw_total, raw_sent, raw_records), memfd_run = raw_runs
            await trio.sleep(0.3)
            encoder = FrameEncoder()
            frame = SetVars(session=target.id, call=0, values={"prompt": text})
            e = time.perf_counter()
            view = encoder.encode_view(frame)
            encode = time.perf_counter() - e
            view.release()
            del view, encoder
            timed.marks.clear()
            t = time.perf_counter()
            await target.set_vars({"prompt": text})
            total = time.perf_counter() - t
            marks = list(timed.marks)
            await trio.sleep(0.3)
            ours_records = await _guest_records(helper, "write:end", "bind:end", "large_from_host:end")
            big = [m for m in marks if m[0] == "send:start" and m[2] > MIB]
            big_end = [m for m in marks if m[0] == "send:end" and m[2] > MIB]
            rounds.append({
                "raw": {
                    "total_ms": _ms(raw_total),
                    "host_send_all_ms": _ms(raw_sent),
                    **_reads(raw_records),
                },
                "raw_into_memfd": {
                    "total_ms": _ms(memfd_run[0]),
                    "host_send_all_ms": _ms(memfd_run[1]),
                    **_reads(memfd_run[2]),
                },
                "ours": {
                    "total_ms": _ms(total),
                    "host_encode_ms (separately)": _ms(encode),
                    "host_request_to_send_start_ms": _ms(big[0][1] - t),
                    "host_send_all_ms": _ms(big_end[0][1] - big[0][1]),
                    "host_send_end_to_reply_ms": _ms(t + total - big_end[0][1]),
                    **_ours_stages(ours_records),
                },
            })
        await target.close()
    await raw.aclose()
    await helper.close()
    kept = rounds[1:] if len(rounds) > 1 else rounds
    medians: dict[str, dict[str, float]] = {}
    for side in ("raw", "raw_into_memfd", "ours"):
        medians[side] = {
            key: round(statistics.median(r[side][key] for r in kept if r[side][key] is not None), 2)
            for key, value in kept[0][side].items()
            if isinstance(value, (int, float))
        }
    medians["ours_over_raw"] = {
        "total": round(medians["ours"]["total_ms"] / medians["raw"]["total_ms"], 3),
        "raw_speed_over_ours (the goal's ratio)": round(medians["raw"]["total_ms"] / medians["ours"]["total_ms"], 3),
    }
    return {"size_mib": size // MIB, "rounds": rounds, "medians_after_first": medians}


async def run(size: int, repeat: int) -> dict[str, Any]:
    config = prepare_vm_config(snapshot=False)
    config = replace(config, snapshot_compatible=False, restore_from=None, extra_ports=("rlm.bench", "rlm.trace"))
    async with open_vm(config) as vm, GuestConnection.open(
        vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits
    ) as conn:
        return await measure(vm, conn, size, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=16, help="MiB")
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--json", action="store_true", help="every round, not only the medians")
    options = parser.parse_args()
    out = trio.run(run, options.size * MIB, options.repeat)
    print(json.dumps(out if options.json else out["medians_after_first"], indent=1))


if __name__ == "__main__":
    main()
