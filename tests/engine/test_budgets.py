"""Every budget ends the run (or the child) with a clear reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.engine import MAX_STEPS_ANSWER
from rlm_host.engine.budget import Limits, Price, load_prices, parse_price
from rlm_host.trajectory import BudgetStop, ChildStart, RunEnd, read_trajectory
from tests.scripted_model import ChatRequest, Hang, Outcome, Reply, ScriptedModel


def never_final(request: ChatRequest) -> str:
    return fence("print('still looking')")


def stops(trajectory: Path) -> list[tuple[str, str]]:
    return [(e.rlm, e.reason) for e in read_trajectory(trajectory) if isinstance(e, BudgetStop)]


async def test_max_steps(trajectory: Path) -> None:
    with ScriptedModel(never_final) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory, max_steps=3))
    assert (result.answer, result.stop_reason) == (None, "max_steps")
    assert result.detail == "no Final after 3 steps"
    assert len(server.requests()) == 3
    assert stops(trajectory) == [("0", "max_steps")]
    end = read_trajectory(trajectory)[-1]
    assert isinstance(end, RunEnd) and end.stop_reason == "max_steps"


async def test_child_gets_half_the_steps_and_returns_the_seed_message(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.prompt_prefix == "sub task":
            return fence("print('child still looking')")
        return fence("Final = rlm_query('sub task')")

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory, max_steps=16))
    assert result.answer == MAX_STEPS_ANSWER
    child_requests = [r for r in server.requests() if r.prompt_prefix == "sub task"]
    assert len(child_requests) == 8  # max(6, 16 // 2)
    assert stops(trajectory) == [("0.1", "max_steps")]


async def test_depth_limit_turns_rlm_query_into_a_plain_call(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.is_leaf:
            return "leaf says " + request.last_user
        if request.prompt_prefix == "level 1":
            return fence("Final = rlm_query('level 2')")
        return fence("Final = rlm_query('level 1')")

    with ScriptedModel(script) as server:
        result = await run_rlm("root", options=local_options(server.url, trajectory, max_depth=2))
    assert result.answer == "leaf says level 2"
    children = [(c.rlm, c.depth, c.kind) for c in read_trajectory(trajectory) if isinstance(c, ChildStart)]
    assert children == [("0.1", 1, "rlm"), ("0.1.1", 2, "leaf")]
    assert [r.is_leaf for r in server.requests()] == [False, False, True]


async def test_max_depth_one_makes_every_rlm_query_a_leaf(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.is_leaf:
            return "plain"
        return fence("Final = rlm_query('question')")

    with ScriptedModel(script) as server:
        result = await run_rlm("root", options=local_options(server.url, trajectory, max_depth=1))
    assert result.answer == "plain"
    # The child is a plain chat call: no RLM turn of its own (with a depth of 3 it would be one).
    children = [(c.rlm, c.depth, c.kind) for c in read_trajectory(trajectory) if isinstance(c, ChildStart)]
    assert children == [("0.1", 1, "leaf")]
    assert [r.is_leaf for r in server.requests()] == [False, True]


async def test_max_model_calls(trajectory: Path) -> None:
    with ScriptedModel(never_final) as server:
        result = await run_rlm(
            "task", options=local_options(server.url, trajectory, max_model_calls=2)
        )
    assert (result.answer, result.stop_reason) == (None, "max_model_calls")
    assert "2 of 2 calls" in result.detail
    assert len(server.requests()) == 2
    assert stops(trajectory) == [("0", "max_model_calls")]


async def test_max_tokens(trajectory: Path) -> None:
    def script(request: ChatRequest) -> Outcome:
        return Reply(fence("print(1)"), prompt_tokens=100, completion_tokens=100)

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory, max_tokens=300))
    assert (result.answer, result.stop_reason) == (None, "max_tokens")
    assert "400 of 300 tokens" in result.detail
    assert len(server.requests()) == 2
    assert result.usage.total_tokens == 400


async def test_wall_time_while_the_model_hangs(trajectory: Path) -> None:
    with ScriptedModel(lambda request: Hang()) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory, max_seconds=0.3))
    assert (result.answer, result.stop_reason) == (None, "wall_time")
    assert stops(trajectory) == [("0", "wall_time")]


@pytest.mark.timeout(60)
async def test_wall_time_while_code_runs(trajectory: Path) -> None:
    # The block's own timeout is an hour: only the wall-time budget can stop it, and if the
    # budget cannot reach a running block this test fails by its time limit (a minute).
    block = fence("import time\ntime.sleep(3600)\nprint('the block ran to its end')")
    with ScriptedModel(lambda request: block) as server:
        options = local_options(server.url, trajectory, max_seconds=1.0, exec_timeout=3600.0)
        result = await run_rlm("task", options=options)
    assert (result.answer, result.stop_reason) == (None, "wall_time")
    assert stops(trajectory) == [("0", "wall_time")]
    assert len(server.requests()) == 1


async def test_run_wide_budget_hit_in_a_child_stops_the_run(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.prompt_prefix == "sub task":
            return fence("print('child step')")
        if request.turn == 0:
            return fence("answer = rlm_query('sub task')\nprint(answer)")
        return fence("Final = 'unreachable'")

    with ScriptedModel(script) as server:
        result = await run_rlm(
            "task", options=local_options(server.url, trajectory, max_model_calls=3)
        )
    assert result.stop_reason == "max_model_calls"
    assert len(server.requests()) == 3
    # The child stopped first, its parent's code printed the explanation, then the root stopped.
    assert stops(trajectory) == [("0.1", "max_model_calls"), ("0", "max_model_calls")]


async def test_max_tokens_estimated_when_the_server_reports_no_usage(trajectory: Path) -> None:
    reply = fence("print(1)")

    def script(request: ChatRequest) -> Outcome:
        return Reply(reply, report_usage=False)

    with ScriptedModel(script) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory, max_tokens=1))
    # A server without usage is charged chars / 4 of the request's messages and of the reply.
    (request,) = server.requests()
    estimate = sum(len(m["content"]) for m in request.messages) // 4 + len(reply) // 4
    assert result.stop_reason == "max_tokens"
    assert result.detail == f"token budget spent: {estimate} of 1 tokens"


def test_limits_defaults_are_the_seeds_and_bad_limits_are_refused() -> None:
    assert (Limits().max_steps, Limits().max_depth, Limits().concurrency) == (18, 3, 4)
    for bad in ({"max_steps": 0}, {"max_depth": 0}, {"concurrency": 0}, {"context_tokens": 63}):
        with pytest.raises(ValueError, match="must be at least"):
            Limits(**bad)  # type: ignore[arg-type]
    Limits(max_steps=1, max_depth=1, concurrency=1, context_tokens=64)  # the smallest allowed


def test_prices_are_checked(tmp_path: Path) -> None:
    assert parse_price("m=0.5,0") == ("m", Price(0.5, 0.0))  # below 1, and free, are prices
    for bad in ("m=-1,0", "m=0,-0.1", "m=1", "=1,2", "m=a,b"):
        with pytest.raises(ValueError):
            parse_price(bad)
    good = tmp_path / "prices.toml"
    good.write_text('m = [0.5, 1]\nn = {input_per_1k = 2, output_per_1k = 3}\n')
    assert load_prices(good) == {"m": Price(0.5, 1.0), "n": Price(2.0, 3.0)}
    for text in ('m = [1, 2, 3]', 'm = [1]', 'm = {input_per_1k = 2}', 'm = 3'):
        bad_file = tmp_path / "bad.toml"
        bad_file.write_text(text + "\n")
        with pytest.raises(ValueError, match="must be"):
            load_prices(bad_file)
