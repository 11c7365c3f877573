"""A finished child's session is closed when its parent's block ends, at most 16 held at once.

The closes are watched where they leave the host (``Session.close_later``), in one order with
the run's events (``on_event``): the local-subprocess guest, the scripted model over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from rlm_host.api import run_rlm
from rlm_host.engine.held_closes import HELD_CLOSES, HeldCloses
from rlm_host.session import Session
from rlm_host.trajectory import ChildEnd, Event, Observation
from tests.engine.engine_harness import fence, local_options
from tests.scripted_model import ChatRequest, ScriptedModel

BATCH = """
answers = rlm_query_batched([f"child {i}" for i in range(4)])
print("|".join(answers))
"""

#: One child after another: more than are held, so the oldest are closed during the block.
LOOP = f"""
answers = [rlm_query(f"child {{i}}") for i in range({HELD_CLOSES + 4})]
print(len(answers))
"""


def script(code: str) -> Callable[[ChatRequest], str]:
    def reply(request: ChatRequest) -> str:
        if request.prompt_prefix.startswith("child "):
            return fence(f"Final = {request.prompt_prefix.upper()!r}")
        if request.turn == 0:
            return fence(code)
        return fence('Final = "done"')

    return reply


@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each session closed in the background (``close``), children's ends and the root's
    observations, in the order they happen."""
    seen: list[str] = []
    close_later = Session.close_later

    def watched(self: Session) -> bool:
        seen.append("close")
        return close_later(self)

    monkeypatch.setattr(Session, "close_later", watched)
    return seen


def _on_event(order: list[str]) -> Callable[[Event], None]:
    def record(event: Event) -> None:
        if isinstance(event, ChildEnd):
            order.append("child_end")
        elif isinstance(event, Observation) and event.rlm == "0":
            order.append("root_observation")

    return record


async def test_a_batch_closes_its_children_after_the_block(trajectory: Path, order: list[str]) -> None:
    with ScriptedModel(script(BATCH)) as server:
        result = await run_rlm(
            "root", options=local_options(server.url, trajectory, concurrency=4, on_event=_on_event(order))
        )
    assert result.answer == "done", result
    # Every child ended before any of their sessions was closed; all four closed before the
    # root saw its observation (the root's own session is closed, awaited, at the run's end).
    batch = order[: order.index("root_observation")]
    assert batch == ["child_end"] * 4 + ["close"] * 4, order


async def test_no_more_than_held_closes_wait(trajectory: Path, order: list[str]) -> None:
    with ScriptedModel(script(LOOP)) as server:
        result = await run_rlm("root", options=local_options(server.url, trajectory, on_event=_on_event(order)))
    assert result.answer == "done", result
    block = order[: order.index("root_observation")]
    assert block.count("child_end") == HELD_CLOSES + 4
    last_end = len(block) - 1 - block[::-1].index("child_end")
    # Four oldest closed while the block ran (the 17th to 20th child pushed them out), the
    # 16 held ones when it ended.
    assert block[:last_end].count("close") == 4
    assert block[last_end + 1 :] == ["close"] * HELD_CLOSES


class _Session:
    """What ``HeldCloses`` uses of a session: ``close_later``."""

    def __init__(self, name: str, closed: list[str]) -> None:
        self.name, self.closed = name, closed

    def close_later(self) -> bool:
        self.closed.append(self.name)
        return True


async def test_after_its_parent_ended_a_child_is_closed_at_once() -> None:
    # A child cancelled with its parent ends after the parent's own close: nobody would
    # release it later.
    closed: list[str] = []
    held = HeldCloses()
    await held.hold(_Session("a", closed))  # type: ignore[arg-type]
    assert closed == []
    await held.end()
    assert closed == ["a"]
    await held.hold(_Session("b", closed))  # type: ignore[arg-type]
    assert closed == ["a", "b"] and held.held == 0
