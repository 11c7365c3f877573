"""Timeouts and interrupts stop hostile blocks in the real VM, and nothing keeps running.

Each hostile block runs in a fresh session of the shared VM, stopped either by its per-block
timeout (the guest interrupts it: ``exec(timeout=...)``, what ``--block-timeout`` sets) or by
an interrupt from the host (a cancelled ``exec``: what an embedding application does on
Ctrl-C; the CLI's own Ctrl-C ends the whole VM, see ``test_cli_exits.py``). Then:

* the block ended within a bound (the issue says "a second or two": a block that honours
  ``KeyboardInterrupt`` ends at once, one that does not is killed after the guest's 2 s grace;
  the asserts allow a generous multiple, as other tests share the machine, and print the figure);
* the session runs the next block, or says it was reset (``session_reset``), and the engine's
  observation tells the model so;
* ``ps`` in the guest shows no process that was not there before.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from rlm_host.engine.prompts import observation_message
from rlm_host.connection import GuestConnection
from rlm_protocol import Language
from tests.vm_harness import SharedVM

from tests.security.guest_probe import guest_processes

pytestmark = pytest.mark.vm

#: The seconds after which a block is stopped (how long stopping then takes is printed, not
#: asserted: it is "a second or two", 2 s being the guest's grace before it kills a stubborn
#: session, but a loaded machine under TCG may take longer).
STOP_AFTER = 1.0

HOSTILE: dict[str, tuple[str, Language]] = {
    "busy_loop": ("while True:\n    pass", "python"),
    "sleep_in_c": ("import time\ntime.sleep(10**6)", "python"),
    # Unbounded: every process forks forever, ignoring failures (the session's cgroup caps it).
    "python_fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "python",
    ),
    "bash_fork_bomb": (":(){ :|:& };:\nsleep 100000", "bash"),
    "runaway_pipeline": ("yes | cat | cat > /dev/null", "bash"),
    # Ignores KeyboardInterrupt: only the kill after the grace period stops it.
    "stubborn_loop": (
        "import time\nwhile True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass",
        "python",
    ),
    # Leaves its session (setsid, a double fork) before looping: the kill of the session's
    # processes alone would miss them.
    "setsid_escape": (
        "import subprocess\n"
        "subprocess.Popen(['setsid', 'sleep', '4242'])\n"
        "subprocess.Popen(['sh', '-c', 'sleep 4343 &'], start_new_session=True)\n"
        "while True:\n    pass",
        "python",
    ),
}


@pytest.mark.parametrize("how", ["timeout", "interrupt"])
@pytest.mark.parametrize("name", list(HOSTILE))
async def test_hostile_block_is_stopped_and_leaves_nothing(shared_vm: SharedVM, name: str, how: str) -> None:
    code, language = HOSTILE[name]

    async def go(conn: GuestConnection) -> Any:
        before = await guest_processes(conn)
        async with await conn.open_session() as session:
            await session.exec("kept = 42")
            started = time.monotonic()
            if how == "timeout":
                result = await session.exec(code, language, timeout=STOP_AFTER)
            else:
                result = None
                with trio.move_on_after(STOP_AFTER):
                    await session.exec(code, language)
            stopped = time.monotonic() - started - STOP_AFTER
            after_block = await session.exec("print(globals().get('kept'))")
        after = await guest_processes(conn)
        return before, result, stopped, after_block, after

    with trio.fail_after(120):
        before, result, stopped, after_block, after = await shared_vm.run(go)
    print(f"\n[figure] {name} stopped by {how} {stopped:.2f} s after the {STOP_AFTER:g} s mark")
    # Not timed: a block the guest fails to stop leaves the session busy (the next block is
    # refused) or, with a timeout, makes the host declare the guest hung (GuestDiedError).
    if result is not None:
        # The bash fork bomb may end on its own first: its session's cgroup caps processes,
        # so the shell cannot fork `sleep` and exits; then its process group is killed.
        assert result.interrupted or name == "bash_fork_bomb", result
        if result.session_reset:
            assert "session_reset" in observation_message(result)
    # The session runs the next block: with its variables, or told they are gone.
    assert after_block.stdout.text in ("42\n", "None\n"), after_block
    if after_block.stdout.text == "None\n":
        assert result is None or result.session_reset
    leftovers = [row for row in after if row not in before]
    assert leftovers == [], f"still running in the guest: {leftovers}"


async def test_engine_tells_the_model_its_state_was_lost(shared_vm: SharedVM) -> None:
    # A block that does not stop when interrupted: the guest resets the session, and the
    # observation the model sees next says so.
    code, language = HOSTILE["stubborn_loop"]

    async def go(conn: GuestConnection) -> Any:
        async with await conn.open_session() as session:
            return await session.exec(code, language, timeout=STOP_AFTER)

    result = await shared_vm.run(go)
    assert result.interrupted and result.session_reset
    observation = observation_message(result)
    assert '"session_reset": "the REPL was restarted' in observation
    assert "SessionReset" in observation
