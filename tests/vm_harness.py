"""The shared-VM harness of the VM tests (see vm_plugin.py for the fixtures).

One real VM per test session, shared by the tests of every folder.

pytest-trio runs every test in its own ``trio.run``, so a session-wide VM cannot live in an
async fixture. Instead a thread runs its own trio loop that owns the VM and its
``GuestConnection``; tests hand it coroutine functions with :meth:`SharedVM.run`, which
crosses loops with ``trio.from_thread`` (inside ``trio.to_thread``, so the test's loop is
not blocked).

The image is built here if the cache does not have it (CI builds from scratch: ~1 min
for the Debian root, ~30 s to install the agent).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from rlm_host.connection import GuestConnection
from rlm_host.vm import VM, VMConfig, open_vm

T = TypeVar("T")


class SharedVM:
    """A VM + connection owned by a background trio loop."""

    def __init__(self, config: VMConfig) -> None:
        self.config = config
        self.vm: VM | None = None
        self.connection: GuestConnection | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="shared-vm", daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the fixture, which fails the tests
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_vm(self.config) as vm, GuestConnection.open(
            vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits
        ) as conn:
            self.vm, self.connection = vm, conn
            self._ready.set()
            await self._stop.wait()

    def start(self, timeout: float = 300.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"shared VM did not start: {self._error!r}")

    def stop(self) -> None:
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)

    async def run(self, fn: Callable[[GuestConnection], Awaitable[T]]) -> T:
        """Run ``fn(connection)`` in the VM's loop and return its result."""
        assert self.connection is not None and self._token is not None
        conn, token = self.connection, self._token

        async def call() -> T:
            return await fn(conn)

        result: T = await trio.to_thread.run_sync(lambda: trio.from_thread.run(call, trio_token=token))
        return result


async def run_block(shared: SharedVM, code: str, language: str = "python") -> Any:
    """Run one block in a fresh session of the shared VM and return the ExecResult."""

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as session:
            return await session.exec(code, language)  # type: ignore[arg-type]

    return await shared.run(go)
