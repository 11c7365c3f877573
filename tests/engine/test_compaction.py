"""History compaction: older turns summarised near the context limit, full history in `history`."""

from __future__ import annotations

from pathlib import Path

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.trajectory import Compaction, ModelRequest, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel

SUMMARY = "x1..x4 hold 2000 'y's each; nothing failed."


def script(request: ChatRequest) -> str:
    if request.is_leaf:
        assert request.last_user.startswith("You are compacting")
        return SUMMARY
    if "summary_of_earlier_turns" in request.first_user:
        assert SUMMARY in request.first_user
        return fence('Final = {"history": len(history), "x1": len(x1), "first": history[1]["role"]}')
    step = request.turn + 1
    return fence(f'x{step} = "y" * 2000\nprint(x{step})')


async def test_compaction_under_a_small_limit_still_reaches_final(trajectory: Path) -> None:
    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory, context_tokens=2000))
    assert result.stop_reason == "final", result.detail
    assert result.value is not None and result.value["x1"] == 2000 and result.value["first"] == "user"
    events = read_trajectory(trajectory)
    (compaction,) = [e for e in events if isinstance(e, Compaction)]
    assert compaction.summary == SUMMARY and compaction.messages_after == 6
    assert compaction.messages_before > compaction.messages_after and compaction.tokens_before >= 1500
    # `history` holds every message up to the compaction, system prompt included.
    assert result.value["history"] == compaction.messages_before
    purposes = [e.purpose for e in events if isinstance(e, ModelRequest)]
    assert purposes.count("compact") == 1
    # The request after the compaction records the whole new history (rebased).
    after = next(e for e in events if isinstance(e, ModelRequest) and e.purpose == "rlm" and e.ts >= compaction.ts)
    assert after.rebased and len(after.new_messages) == 6
    # What the model was shown after the compaction is smaller than before it.
    sizes = [r.body_bytes for r in server.log]
    assert sizes[-1] < max(sizes)
