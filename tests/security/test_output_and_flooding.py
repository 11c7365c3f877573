"""Output caps and flooding, in the real VM: host memory stays flat, other sessions go on."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from rlm_host import serving
from rlm_host.connection import GuestConnection
from rlm_host.engine.prompts import observation_message
from rlm_protocol import HostCall
from tests.vm_harness import SharedVM

from tests.security.guest_probe import host_rss_kib

pytestmark = pytest.mark.vm

HUNDRED_MB = 100_000_000
PRINT_100_MB = (
    "import sys\nchunk = 'x' * 999_999 + '\\n'\nfor _ in range(100):\n    sys.stdout.write(chunk)"
)
#: The issue's "flat": the guest keeps 1 M characters per stream, so a few MiB of frames and
#: strings at most; 64 MiB is far below the 100 MB printed and leaves room for noise.
RSS_BOUND_KIB = 64 * 1024


@pytest.mark.parametrize("language", ["python", "bash"])
async def test_printing_100_mb_leaves_host_memory_flat(shared_vm: SharedVM, language: str) -> None:
    code = PRINT_100_MB if language == "python" else "head -c 100000000 /dev/zero | tr '\\0' x"

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as session:
            await session.exec("print('warm up')", language)  # type: ignore[arg-type]
            before = host_rss_kib()
            result = await session.exec(code, language, timeout=600)  # type: ignore[arg-type]
            return before, host_rss_kib(), result

    before, after, result = await shared_vm.run(go)
    kept = len(result.stdout.text)
    print(
        f"\n[figure] {language} printed {result.stdout.chars} chars, guest kept {kept}; "
        f"host RSS {before} KiB -> {after} KiB ({after - before:+d} KiB)"
    )
    assert result.stdout.chars == HUNDRED_MB and result.stdout.cut
    assert kept == shared_vm.connection.hello.limits.max_output_chars  # type: ignore[union-attr]
    assert after - before < RSS_BOUND_KIB
    # The model is told the true size and that it sees a prefix only.
    observation = observation_message(result)
    assert f'"chars": {HUNDRED_MB}' in observation and '"truncated": true' in observation
    assert f"kept {kept} of {HUNDRED_MB}" in observation


async def _quiet_blocks(conn: GuestConnection, count: int) -> list[float]:
    """Run ``count`` small blocks in a session of their own; return each one's latency."""
    latencies = []
    async with await conn.open_session() as session:
        for i in range(count):
            started = time.monotonic()
            result = await session.exec(f"print({i})")
            latencies.append(time.monotonic() - started)
            assert result.stdout.text == f"{i}\n"
    return latencies


async def test_a_session_flooding_host_calls_does_not_starve_another(shared_vm: SharedVM) -> None:
    calls = 0
    flooding = trio.Event()

    async def handler(call: HostCall) -> str:
        nonlocal calls
        calls += 1
        if calls == 20:
            flooding.set()
        return "pong"

    flood = "n = 0\nwhile True:\n    llm_query('ping')\n    n += 1"

    async def go(conn: GuestConnection) -> Any:
        quiet_alone = await _quiet_blocks(conn, 3)
        async with await conn.open_session(host_calls=True) as noisy, serving(noisy, handler):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: noisy.exec(flood, timeout=60))
                await flooding.wait()
                flooded_at = calls
                started = time.monotonic()
                quiet = await _quiet_blocks(conn, 5)
                served = calls - flooded_at
                rate = served / (time.monotonic() - started)
                await noisy.interrupt()
            left = await noisy.exec("print(n > 0)")
        return quiet_alone, quiet, served, rate, left

    with trio.fail_after(300):
        quiet_alone, quiet, served, rate, left = await shared_vm.run(go)
    print(
        f"\n[figure] host calls served during the flood: {rate:.0f}/s; a quiet block took "
        f"{max(quiet_alone) * 1000:.0f} ms alone, at most {max(quiet) * 1000:.0f} ms during the flood"
    )
    assert len(quiet) == 5  # every block of the quiet session completed...
    assert served > 0  # ...while the flood's host calls went on being served: neither starved
    assert left.stdout.text == "True\n"  # the flood itself ran (and the session lives on)


async def test_a_session_flooding_output_does_not_starve_another(shared_vm: SharedVM) -> None:
    # The flood's first act is a host call, so the test knows when it is running.
    flood = "llm_query('started')\nwhile True:\n    print('x' * 100_000)"
    started = trio.Event()

    async def handler(call: HostCall) -> str:
        started.set()
        return "go"

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session(host_calls=True) as noisy, serving(noisy, handler):
            async with trio.open_nursery() as nursery:
                results: list[Any] = []

                async def run_flood() -> None:
                    results.append(await noisy.exec(flood, timeout=120))

                nursery.start_soon(run_flood)
                await started.wait()
                quiet = await _quiet_blocks(conn, 5)
                still_flooding = not results
                await noisy.interrupt()
        return quiet, still_flooding, results[0]

    with trio.fail_after(300):
        quiet, still_flooding, flooded = await shared_vm.run(go)
    print(
        f"\n[figure] during an output flood ({flooded.stdout.chars} chars written) a quiet block "
        f"took at most {max(quiet) * 1000:.0f} ms"
    )
    assert len(quiet) == 5 and still_flooding  # the quiet blocks did not wait for the flood's end
    assert flooded.interrupted and flooded.stdout.cut
