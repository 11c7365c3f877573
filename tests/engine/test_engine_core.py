"""The engine on its own: ``RlmEngine`` with an in-memory ``ChatModel`` (no HTTP) and a local
guest. The whole path (options, HTTP clients, trajectory file) is covered by the other engine
tests through ``run_rlm``; these show the engine's own contracts without a server thread."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from tests.engine.engine_harness import fence
from tests.memory_model import MemoryModel
from rlm_host import GuestConnection, GuestDiedError, open_local_guest
from rlm_host.engine import Limits, RlmEngine, Soon
from rlm_host.trajectory import ChildEnd, ChildStart, EngineError, Event, ModelRequest, TrajectoryRecorder
from tests.scripted_model import ChatRequest


@pytest.fixture
async def connection() -> AsyncIterator[GuestConnection]:
    async with open_local_guest() as stream, GuestConnection.open(stream) as opened:
        yield opened


def engine(connection: GuestConnection | Soon[GuestConnection], model: MemoryModel, events: list[Event], **limits: int) -> RlmEngine:
    return RlmEngine(
        connection=connection, client=model, recorder=TrajectoryRecorder(None, [events.append]),
        limits=Limits(**limits),  # type: ignore[arg-type]
    )


async def test_a_root_sets_final_in_two_steps(connection: GuestConnection) -> None:
    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return fence("n = len(prompt)\nprint(n)")
        return fence("Final = n * 2")

    model = MemoryModel(script)
    events: list[Event] = []
    prompt = "x" * 3000 + "NEEDLE"
    outcome = await engine(connection, model, events).run(prompt)
    assert (outcome.answer, outcome.stop_reason, outcome.value) == ("6012", "final", 6012)
    # The second request carried the first block's observation; the prompt only as metadata.
    assert len(model.requests) == 2 and "3006" in model.requests[1].last_user
    assert all("NEEDLE" not in m["content"] for r in model.requests for m in r.messages)
    assert [e.step for e in events if isinstance(e, ModelRequest)] == [1, 2]


async def test_children_are_served_by_their_parent_rlm(connection: GuestConnection) -> None:
    """``rlm_query`` becomes a child RLM with its own session; its ``llm_query`` a leaf."""

    def script(request: ChatRequest) -> str:
        if request.is_leaf:
            return "leaf:" + request.last_user
        if "child task" in request.first_user:
            return fence("Final = llm_query('from the child')")
        return fence("Final = rlm_query('child task')")

    events: list[Event] = []
    outcome = await engine(connection, MemoryModel(script), events).run("root task")
    assert outcome.answer == "leaf:from the child"
    starts = [(e.rlm, e.parent, e.kind) for e in events if isinstance(e, ChildStart)]
    assert starts == [("0.1", "0", "rlm"), ("0.1.1", "0.1", "leaf")]
    ends = {e.rlm: e.answer for e in events if isinstance(e, ChildEnd)}
    assert ends == {"0.1.1": "leaf:from the child", "0.1": "leaf:from the child"}


async def test_unknown_and_malformed_host_calls_get_typed_errors(connection: GuestConnection) -> None:
    code = (
        "out = []\n"
        "for method, payload in (('launch_rockets', {}), ('llm_query', {'prompt': 5}), ('tool', {'name': 'x'})):\n"
        "    try:\n"
        "        host_call(method, payload)\n"
        "    except RuntimeError as error:\n"
        "        out.append(str(error))\n"
        "Final = out"
    )
    model = MemoryModel(lambda request: fence(code))
    outcome = await engine(connection, model, []).run("task")
    unknown, malformed, no_tool = outcome.value
    assert unknown == "ValueError: unknown host call 'launch_rockets'"
    assert malformed.startswith("TypeError: llm_query: Expected `str`, got `int`")
    assert no_tool.startswith("UnknownTool: no host tool named 'x' here")
    assert len(model.requests) == 1  # nothing of this reached the model


async def test_the_first_request_goes_out_before_the_guest_and_a_failed_start_stops_it() -> None:
    """The start overlap: the model is asked while the guest is still starting (a ``Soon``);
    when the guest fails to start, the run ends with that error, recorded, without waiting
    for the model's reply."""
    guest: Soon[GuestConnection] = Soon()
    asked = trio.Event()

    def script(request: ChatRequest) -> str:
        asked.set()
        return fence("Final = 1")

    model = MemoryModel(script)
    model.hold = model_gate = trio.Event()  # the reply is still being written until set
    events: list[Event] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:

            async def start_fails() -> None:
                await asked.wait()  # the request went out with no guest at all
                guest.fail(GuestDiedError("the VM did not boot"))

            nursery.start_soon(start_fails)
            with pytest.raises(GuestDiedError, match="did not boot"):
                await engine(guest, model, events).run("task")
    assert not model_gate.is_set()  # the reply was not waited for
    assert [e.error_type for e in events if isinstance(e, EngineError)] == ["GuestDiedError"]
