"""A piece of the prompt handed to a child RLM stays in the guest (PROTOCOL.md, 1.1 ``prompt_ref``).

The host gets what the child's model is shown (size, line count, a 1,600-character prefix) and a
digest for the trajectory; the text goes from the parent's session to the child's inside the
guest. The guest's bytes to the host are counted on the stream itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import rlm_host.connection
from tests.engine.engine_harness import fence, local_options
from rlm_host import GuestConnection, open_local_guest
from rlm_host.api import run_rlm
from rlm_host.trajectory import ChildStart, read_trajectory
from rlm_protocol import CAPABILITIES, PROMPT_REF, text_blake2b
from tests.scripted_model import ChatRequest, ScriptedModel

#: 1 MiB of lines cut in 4 pieces; each child reports its piece's size and ends.
PIECES = 4
LINE = "2024-05-01T12:00:00 INFO request 000000 served in 12 ms by worker-7\n"
PROMPT = (LINE * (2**20 // len(LINE) + 1))[: 2**20]

FAN_OUT = f"""
n = len(prompt) // {PIECES}
answers = rlm_query_batched([prompt[i * n:(i + 1) * n] for i in range({PIECES})])
Final = "|".join(answers)
"""

CHILD = 'Final = f"{len(prompt)}:{prompt.count(chr(10))}:{prompt[-3:]!r}"'


def script(request: ChatRequest) -> str:
    # The root's first message says the prompt has 2**20 characters; a child's says less.
    return fence(FAN_OUT if '"chars": 1048576' in request.first_user else CHILD)


class CountingStream(trio.abc.Stream):
    """A stream that counts the bytes it receives (the guest's frames to the host)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def fan_out(trajectory: Path) -> tuple[str | None, int, list[ChildStart], list[str]]:
    with ScriptedModel(script) as server, trio.fail_after(120):
        async with open_local_guest() as stream:
            counting = CountingStream(stream)
            async with GuestConnection.open(counting) as connection:
                result = await run_rlm(
                    PROMPT, options=local_options(server.url, trajectory), connection=connection
                )
        firsts = [r.request.first_user for r in server.log if r.request is not None]
    children = [e for e in read_trajectory(trajectory) if isinstance(e, ChildStart)]
    return result.answer, counting.received, children, firsts


async def test_a_childs_piece_never_leaves_the_guest(trajectory: Path) -> None:
    answer, received, children, firsts = await fan_out(trajectory)
    piece = len(PROMPT) // PIECES
    pieces = [PROMPT[i * piece:(i + 1) * piece] for i in range(PIECES)]
    assert answer == "|".join(f"{len(p)}:{p.count(chr(10))}:{p[-3:]!r}" for p in pieces)
    # 1 MiB went to the guest and stayed there: the guest sent the host a small fraction of it
    # (the four prefixes the children's models are shown, 1,600 characters each, and results).
    assert received < 128 * 1024, received
    assert sorted((c.prompt_chars, c.prompt_blake2b) for c in children) == sorted(
        (len(p), text_blake2b(p)) for p in pieces
    )
    assert all(c.prompt_in_guest and c.prompt_sha256 == "" for c in children)
    # Each child's model is told its piece's size and prefix, as if the host had the text.
    for p in pieces:
        assert any(f'"chars": {len(p)}' in first and f'"lines": {p.count(chr(10)) + 1}' in first for first in firsts)


async def test_a_host_that_does_not_use_prompt_ref_gets_the_text(
    trajectory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the capability in ``welcome`` (an older host or guest) the 1.0 way still works."""
    monkeypatch.setattr(
        rlm_host.connection, "CAPABILITIES", tuple(c for c in CAPABILITIES if c != PROMPT_REF)
    )
    answer, received, children, _ = await fan_out(trajectory)
    piece = len(PROMPT) // PIECES
    assert answer is not None and answer.startswith(f"{piece}:")
    assert received > len(PROMPT)  # every piece crossed the channel
    assert all(not c.prompt_in_guest and c.prompt_sha256 and not c.prompt_blake2b for c in children)


async def test_at_the_depth_limit_rlm_query_sends_its_text(trajectory: Path) -> None:
    """A leaf's model needs the text, so a session whose calls are leaves gets no refs."""
    leaf_prompts: list[str] = []

    def leaf_script(request: ChatRequest) -> str:
        if request.is_leaf:
            leaf_prompts.append(request.last_user)
            return "leaf answer"
        return fence('Final = rlm_query(prompt[:5000])')

    with ScriptedModel(leaf_script) as server, trio.fail_after(60):
        result = await run_rlm(PROMPT, options=local_options(server.url, trajectory, max_depth=1))
    assert result.answer == "leaf answer"
    assert leaf_prompts == [PROMPT[:5000]]
