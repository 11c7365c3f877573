"""Issue 12 in the real VM: host tools, a conversation and a resumed run, with a scripted model.

The engine runs in the shared VM's trio loop (``SharedVM.run``), so the guest is the VM's agent
and every host call crosses the virtio-serial channel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from typing_extensions import Unpack
from typing import Any

import pytest
import trio

from rlm_host.api import Conversation, HostTool, RunOptionFields, RunOptions, resume_rlm, run_rlm
from rlm_host.connection import GuestConnection
from rlm_host.trajectory import Resumed, ToolCall, read_trajectory
from tests.scripted_model import ChatRequest, Outcome, ScriptedModel
from tests.vm_harness import SharedVM

pytestmark = pytest.mark.vm


def fence(code: str) -> str:
    return f"```python\n{code}\n```"


def options(url: str, trajectory: Path, **changes: Unpack[RunOptionFields]) -> RunOptions:
    base = RunOptions.of(model="scripted", llm_url=url, api="ollama", trajectory_path=trajectory, llm_backoff=0.001)
    return base.replace(**changes)


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def fail(message: str) -> None:
    """Raise on the host."""
    raise KeyError(message)


def stall() -> None:
    """Never return."""
    threading.Event().wait()


ROOT = """
import os
parts = rlm_query_batched([f"batch {i}" for i in range(8)])
deep = rlm_query("child: go deeper")
errors = []
for attempt in (lambda: fail("boom"), lambda: add(object(), 1), lambda: add("1", 2), lambda: stall()):
    try:
        attempt()
    except Exception as error:
        errors.append(str(error))
SHOW_VARS()
Final = {"parts": parts, "deep": deep, "errors": errors, "kernel": os.uname().release}
"""


def tools_script(request: ChatRequest) -> str:
    prefix = request.prompt_prefix
    if prefix.startswith("batch "):
        return fence(f"Final = str(meet({int(prefix.split()[1])}))")
    if prefix.startswith("child:"):
        return fence('Final = rlm_query("grandchild: add")')
    if prefix.startswith("grandchild:"):
        return fence("Final = str(add(40, 2))")
    return fence(ROOT)


async def test_host_tools_in_the_vm(shared_vm: SharedVM, tmp_path: Path) -> None:
    trajectory = tmp_path / "t.jsonl"

    async def go(connection: GuestConnection) -> Any:
        arrived = 0
        everyone = trio.Event()

        async def meet(i: int) -> int:
            """Return once eight calls wait together."""
            nonlocal arrived
            arrived += 1
            if arrived == 8:
                everyone.set()
            await everyone.wait()
            return i * i

        tools: list[Callable[..., Any] | HostTool] = [add, fail, HostTool(stall, timeout=1.0), HostTool(meet, timeout=120)]
        with ScriptedModel(tools_script) as server, trio.fail_after(300):
            return await run_rlm("task", options=options(server.url, trajectory, host_tools=tools), connection=connection)

    result = await shared_vm.run(go)
    assert result.value is not None, result.detail
    assert result.value["parts"] == [str(i * i) for i in range(8)]
    assert result.value["deep"] == "42"
    raised, non_json, wrong_type, timed_out = result.value["errors"]
    assert raised == "KeyError: 'boom'"
    assert non_json.startswith("add(): arguments must be JSON values")
    assert wrong_type.startswith("ToolArgumentError: add(): argument 'a': Expected `int`, got `str`")
    assert timed_out == "ToolTimeout: stall() did not return within 1 s"
    assert result.value["kernel"] != __import__("os").uname().release
    calls = [e for e in read_trajectory(trajectory) if isinstance(e, ToolCall)]
    assert {e.rlm for e in calls if e.name == "add" and e.error is None} == {"0.9.1"}
    assert sum(e.name == "meet" for e in calls) == 8


CONVERSATION = {
    "How many words?": 'words = prompt.split("[BEGIN CONTEXT]")[1].split("[END CONTEXT]")[0].split()\nFinal = len(words)',
    "Longest?": "Final = max(words, key=len)",
    "Shared with the new one?": "Final = sorted(set(words) & set(context_3.split()))",
}


def conversation_script(request: ChatRequest) -> str:
    import json

    try:
        question = str(json.loads(request.last_user)["question"])
    except (ValueError, KeyError, TypeError):
        question = request.prompt_prefix.splitlines()[0]
    return fence(CONVERSATION[question])


async def test_a_conversation_in_the_vm(shared_vm: SharedVM, tmp_path: Path) -> None:
    async def go(connection: GuestConnection) -> list[Any]:
        with ScriptedModel(conversation_script) as server:
            async with Conversation.open(options(server.url, tmp_path / "c.jsonl"), connection=connection) as chat:
                first = await chat.ask("How many words?", context="alpha beta gamma")
                second = await chat.ask("Longest?")
                third = await chat.ask("Shared with the new one?", context="gamma beta zeta")
        return [first.value, second.value, third.value]

    assert await shared_vm.run(go) == [3, "alpha", ["beta", "gamma"]]


RESUME_STEPS = {0: "a = 20", 1: 'b = int(llm_query("two"))', 2: "Final = a + b"}


async def test_a_stopped_run_resumed_in_the_vm(shared_vm: SharedVM, tmp_path: Path) -> None:
    def script(request: ChatRequest) -> Outcome:
        return "2" if request.is_leaf else fence(RESUME_STEPS[request.turn])

    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"

    async def go(connection: GuestConnection) -> Any:
        with ScriptedModel(script) as server:
            stopped = await run_rlm("task", options=options(server.url, first, max_steps=2), connection=connection)
            assert stopped.stop_reason == "max_steps"
            return await resume_rlm(first, options=options(server.url, second), connection=connection)

    result = await shared_vm.run(go)
    assert result.answer == "22"
    (resumed,) = [e for e in read_trajectory(second) if isinstance(e, Resumed)]
    assert resumed.steps_replayed == 2 and resumed.problems == ()
