"""Batched host calls run concurrently, up to the run's bound, and come back in order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.trajectory import ChildEnd, ChildStart, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel

#: With a bound of one, each leaf reply takes this long, so that overlap would show. With a
#: bound of eight, overlap is not left to timing: every leaf reply waits until all eight
#: requests are in flight together (a barrier), and fails if they never are.
LATENCY = 0.5
#: Seconds a barrier waits for the other requests before it fails the test.
BARRIER_SECONDS = 60.0

BATCH_CODE = """
answers = llm_query_batched([f"echo {i}" for i in range(8)])
Final = answers
"""


def leaf_script(together: threading.Barrier | None) -> Callable[[ChatRequest], str]:
    def script(request: ChatRequest) -> str:
        if request.is_leaf:
            if together is not None:
                together.wait()
            return request.last_user.replace("echo", "answer")
        return fence(BATCH_CODE)

    return script


@pytest.mark.parametrize("concurrency", [8, 1])
async def test_eight_batched_leaf_calls(trajectory: Path, concurrency: int) -> None:
    together = threading.Barrier(8, timeout=BARRIER_SECONDS) if concurrency == 8 else None
    latency = LATENCY if concurrency == 1 else 0.0
    with ScriptedModel(leaf_script(together), latency=latency) as server:
        started = time.perf_counter()
        result = await run_rlm(
            "batch", options=local_options(server.url, trajectory, concurrency=concurrency)
        )
        elapsed = time.perf_counter() - started
    assert result.answer is not None
    assert [line.strip(' ",') for line in result.answer.splitlines()[1:-1]] == [
        f"answer {i}" for i in range(8)
    ]
    leaf_records = [r for r in server.log if r.request is not None and r.request.is_leaf]
    assert len(leaf_records) == 8
    # The server saw all eight in flight together, or strictly one at a time.
    assert server.max_in_flight() == concurrency
    children = [e for e in read_trajectory(trajectory) if isinstance(e, ChildStart)]
    assert {(c.kind, c.method, c.parent) for c in children} == {("leaf", "llm_query", "0")}
    print(f"\n8 leaf calls at {LATENCY}s latency, concurrency {concurrency}: {elapsed:.2f}s")


RLM_BATCH_CODE = """
answers = rlm_query_batched([f"child {i}" for i in range(4)])
Final = "|".join(answers)
"""


async def test_batched_children_are_rlms_in_their_own_sessions(trajectory: Path) -> None:
    together = threading.Barrier(4, timeout=BARRIER_SECONDS)  # the four children at once

    def rlm_batch_script(request: ChatRequest) -> str:
        prefix = request.prompt_prefix
        if prefix.startswith("child "):
            together.wait()
            return fence(f"Final = {prefix.upper()!r}")
        return fence(RLM_BATCH_CODE)

    with ScriptedModel(rlm_batch_script) as server:
        result = await run_rlm("batch", options=local_options(server.url, trajectory, concurrency=4))
    assert result.answer == "CHILD 0|CHILD 1|CHILD 2|CHILD 3"
    assert server.max_in_flight() == 4
    children = [e for e in read_trajectory(trajectory) if isinstance(e, ChildStart)]
    assert sorted(c.rlm for c in children) == ["0.1", "0.2", "0.3", "0.4"]
    assert {c.kind for c in children} == {"rlm"}
    # Each child's recorded duration is a real one: within the run's.
    ends = [e for e in read_trajectory(trajectory) if isinstance(e, ChildEnd)]
    assert len(ends) == 4 and all(0 < e.duration <= result.duration for e in ends)
