"""Channel and exec workloads, all in one VM booted with two extra channels:

- ``rlm.bench``: a second virtio-serial port (same device, same kind of QEMU chardev as the
  agent's) where a guest program receives ``length + bytes`` into one buffer and acks with one
  byte: the ceiling for a one-way transfer such as ``set_vars``;
- ``uart1``: a second emulated 16550 UART (``/dev/ttyS1``, raw mode) where a guest program
  speaks the seed's framing: host to guest ``<len>:<json>``, guest to host
  ``<marker><len>:<json>\\n`` (``seeds/nano_rlm.txt``: ``read_frame``/``emit``, ``_read_frame``).
"""

from __future__ import annotations

import json
import secrets
import statistics
import time
from dataclasses import replace
from typing import Any

import trio

from rlm_host import serving
from rlm_host.connection import GuestConnection
from rlm_host.vm.qemu import VM, VMConfig, open_vm
from rlm_protocol import HostCall

MIB = 1 << 20

#: The raw ceiling's guest side: read ``4-byte length + body`` into one preallocated buffer.
RAW_SINK = r'''
import os, sys
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

#: The seed's guest side on the UART (its read_frame/emit, in raw mode as it used the console).
SEED_GUEST = r'''
import json, os, sys, termios, tty
fd = os.open("/dev/ttyS1", os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
attrs = termios.tcgetattr(fd)
attrs[4] = attrs[5] = termios.B115200
termios.tcsetattr(fd, termios.TCSANOW, attrs)
raw_in = os.fdopen(fd, "rb", buffering=0, closefd=False)
raw_out = os.fdopen(fd, "wb", buffering=0, closefd=False)
raw_out.write(b"listening\n")  # setraw flushed the input: the host sends the marker after this
marker = raw_in.readline().rstrip(b"\r\n")[-16:]
def read_exact(count):
    chunks, remaining = [], count
    while remaining:
        chunk = raw_in.read(remaining)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
def read_frame():
    size = b""
    while True:
        b = raw_in.read(1)
        if not b:
            raise EOFError
        if b in b" \r\n\t" and not size:
            continue
        if b == b":":
            break
        size += b
    return json.loads(read_exact(int(size)).decode("utf-8"))
def emit(frame):
    data = json.dumps(frame, ensure_ascii=True).encode("utf-8")
    raw_out.write(marker + str(len(data)).encode() + b":" + data + b"\n")
emit({"type": "ready"})
namespace = {}
while True:
    frame = read_frame()
    namespace.update(frame["values"])
    emit({"type": "vars_set", "names": sorted(namespace)})
'''

_START = '''
import subprocess, sys
open("/tmp/{name}.py", "w").write({code!r})
{name} = subprocess.Popen([sys.executable, "/tmp/{name}.py"], stderr=open("/tmp/{name}.err", "w"))
'''


def prompt_text(size: int) -> str:
    """A deterministic ASCII prompt of ``size`` characters, in lines like a log."""
    line = "2024-05-01T12:00:00 INFO request 000000 served in 12 ms by worker-7\n"
    text = line * (size // len(line) + 1)
    return text[:size]


class _Seed:
    """The seed's host side: send ``<len>:<json>``, scan for the marker, parse ``<len>:<json>``."""

    def __init__(self, stream: trio.SocketStream, marker: bytes) -> None:
        self.stream, self.marker, self.buffer = stream, marker, b""

    async def _pull(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise EOFError("the UART closed")
        self.buffer += chunk

    async def read_frame(self) -> dict[str, Any]:
        while self.marker not in self.buffer:
            await self._pull()
        self.buffer = self.buffer[self.buffer.index(self.marker) + len(self.marker):]
        while b":" not in self.buffer:
            await self._pull()
        i = self.buffer.index(b":")
        size = int(self.buffer[:i])
        while len(self.buffer) < i + 1 + size:
            await self._pull()
        body, self.buffer = self.buffer[i + 1 : i + 1 + size], self.buffer[i + 1 + size :]
        result: dict[str, Any] = json.loads(body)
        return result

    async def set_vars(self, values: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps({"type": "set_vars", "values": values}).encode()
        await self.stream.send_all(str(len(data)).encode() + b":" + data)
        return await self.read_frame()


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(samples), 6),
        "min": round(min(samples), 6),
        "n": len(samples),
    }


async def _connect(vm: VM, name: str) -> trio.SocketStream:
    return await trio.open_unix_socket(str(vm.extra_socket(name)))


async def channel_workloads(vm: VM, conn: GuestConnection, sizes: list[int], seed_sizes: list[int], repeat: int) -> dict[str, Any]:
    raw = await _connect(vm, "rlm.bench")
    uart = await _connect(vm, "uart1")
    helper = await conn.open_session()
    result = await helper.exec(_START.format(name="raw_sink", code=RAW_SINK) + _START.format(name="seed_guest", code=SEED_GUEST))
    assert result.error is None, result
    marker = secrets.token_hex(8).encode()
    seed = _Seed(uart, b"listening\n")
    with trio.fail_after(60):
        while seed.marker not in seed.buffer:
            await seed._pull()
    await uart.send_all(marker + b"\n")
    seed = _Seed(uart, marker)
    with trio.fail_after(60):
        assert (await seed.read_frame())["type"] == "ready"
    target = await conn.open_session()
    out: dict[str, Any] = {"ours": {}, "raw": {}, "seed": {}}
    for size in sizes:
        text = prompt_text(size)
        payload = text.encode()
        header = len(payload).to_bytes(4, "big")
        ours, rawt = [], []
        for _ in range(repeat):
            t = time.perf_counter()
            await raw.send_all(header)
            await raw.send_all(payload)
            assert await raw.receive_some(1) == b"k"
            rawt.append(time.perf_counter() - t)
            t = time.perf_counter()
            await target.set_vars({"prompt": text})
            ours.append(time.perf_counter() - t)
        out["ours"][str(size // MIB)] = _stats(ours)
        out["raw"][str(size // MIB)] = _stats(rawt)
    for size in seed_sizes:
        text = prompt_text(size)
        t = time.perf_counter()
        reply = await seed.set_vars({"prompt": text})
        assert reply["type"] == "vars_set", reply
        out["seed"][str(size // MIB)] = _stats([time.perf_counter() - t])
    for stream in (raw, uart):
        await stream.aclose()
    await target.close()
    await helper.close()
    return out


async def exec_workloads(conn: GuestConnection, repeat: int, concurrency: list[int], blocks: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with await conn.open_session() as session:
        for _ in range(20):
            await session.exec("pass")
        samples = []
        for _ in range(repeat):
            t = time.perf_counter()
            await session.exec("pass")
            samples.append(time.perf_counter() - t)
        out["exec_pass"] = _stats(samples)
    opens, firsts, closes = [], [], []
    for _ in range(max(10, repeat // 10)):
        t = time.perf_counter()
        session = await conn.open_session()
        t1 = time.perf_counter()
        await session.exec("pass")
        t2 = time.perf_counter()
        await session.close()
        t3 = time.perf_counter()
        opens.append(t1 - t)
        firsts.append(t2 - t1)
        closes.append(t3 - t2)
    out["new_session"] = _stats(opens)
    out["new_session_first_exec"] = _stats(firsts)
    out["close_session"] = _stats(closes)
    # The same after a pause, as in a run where model calls come between sessions: the guest
    # may prepare the next session's process while the host is away.
    opens, firsts = [], []
    for _ in range(max(10, repeat // 10)):
        await trio.sleep(0.2)
        t = time.perf_counter()
        session = await conn.open_session()
        t1 = time.perf_counter()
        await session.exec("pass")
        opens.append(t1 - t)
        firsts.append(time.perf_counter() - t1)
        await session.close()
    out["new_session_after_pause"] = _stats(opens)
    out["new_session_after_pause_first_exec"] = _stats(firsts)

    async def echo(call: HostCall) -> Any:
        return call.payload

    code = "total = 0\nfor i in range(4):\n    total += host_call('echo', {'i': i})['i']\nassert total == 6"
    for n in concurrency:
        errors: list[str] = []

        async def one(index: int) -> None:
            try:
                async with await conn.open_session(host_calls=True) as s, serving(s, echo):
                    for _ in range(blocks):
                        r = await s.exec(code)
                        if r.error is not None:
                            errors.append(f"{r.error.name}: {r.error.value}")
            except Exception as error:  # counted, not raised: the figure is "no error"
                errors.append(repr(error))

        t = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        wall = time.perf_counter() - t
        out[f"concurrent_{n}"] = {
            "sessions": n, "blocks_each": blocks, "host_calls_each": 4 * blocks,
            "wall": round(wall, 4), "blocks_per_s": round(n * blocks / wall, 1),
            "errors": len(errors), "first_error": errors[0] if errors else None,
        }
    return out


async def run_vm_workloads(config: VMConfig, *, quick: bool) -> dict[str, Any]:
    sizes = [MIB, 4 * MIB, 16 * MIB]
    seed_sizes = [MIB // 4] if quick else [MIB]
    config = replace(
        config, snapshot_compatible=False, restore_from=None, extra_ports=("rlm.bench",), extra_uart=True,
        extra_kernel_args=(*config.extra_kernel_args, "8250.nr_uarts=2"),
    )
    async with open_vm(config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits) as conn:
        channel = await channel_workloads(vm, conn, sizes, seed_sizes, repeat=2 if quick else 3)
        execs = await exec_workloads(conn, repeat=100 if quick else 300, concurrency=[1, 8, 64], blocks=3 if quick else 5)
    return {"channel": channel, "exec": execs, "boot_of_this_vm": vm.timings.as_dict()}
