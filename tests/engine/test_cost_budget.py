"""The cost budget: user prices per model, checked before every model request."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import Price, run_rlm
from rlm_host.trajectory import BudgetStop, RunEnd, read_trajectory
from tests.scripted_model import Reply, ScriptedModel

RUN_APP = (
    "import typer; from rlm_host.cli_run import run; "
    "app = typer.Typer(); app.command()(run); app()"
)


def never_final(request: object) -> Reply:
    # 1000 prompt + 500 completion tokens a call: 1.0 * 1 + 2.0 * 0.5 = 2.0 per call.
    return Reply(fence("x = 1"), prompt_tokens=1000, completion_tokens=500)


async def test_max_cost_stops_the_run(trajectory: Path) -> None:
    with ScriptedModel(never_final) as server:
        result = await run_rlm(
            "task",
            options=local_options(server.url, trajectory, max_cost=5.0, prices={"scripted": Price(1.0, 2.0)}),
        )
    # 2.0 after one call, 4.0 after two, 6.0 after three: the fourth request is refused.
    assert result.stop_reason == "max_cost" and result.cost == pytest.approx(6.0)
    assert len(server.requests()) == 3
    events = read_trajectory(trajectory)
    assert [e.reason for e in events if isinstance(e, BudgetStop)] == ["max_cost"]
    end = events[-1]
    assert isinstance(end, RunEnd) and end.cost == pytest.approx(6.0)


async def test_max_cost_without_a_price_is_refused(trajectory: Path) -> None:
    with ScriptedModel(never_final) as server, pytest.raises(ValueError, match="needs a price for model 'scripted'"):
        await run_rlm("task", options=local_options(server.url, trajectory, max_cost=1.0))


async def test_cli_prices_from_options_and_a_file(tmp_path: Path) -> None:
    prices = tmp_path / "prices.toml"
    prices.write_text('"*" = [1.0, 2.0]\n')
    with ScriptedModel(never_final) as server:
        done = await trio.run_process(
            [sys.executable, "-c", RUN_APP, "--query", "q", "--isolation", "local", "--llm-url", server.url,
             "--model", "m", "--max-cost", "3", "--prices", str(prices), "--json",
             "--trajectory", str(tmp_path / "t.jsonl")],
            capture_stdout=True, capture_stderr=True, check=False, env=dict(os.environ),
        )
        with_option = await trio.run_process(
            [sys.executable, "-c", RUN_APP, "--query", "q", "--isolation", "local", "--llm-url", server.url,
             "--model", "m", "--max-cost", "3", "--price", "m=0.5,1", "--json",
             "--trajectory", str(tmp_path / "t2.jsonl")],
            capture_stdout=True, capture_stderr=True, check=False, env=dict(os.environ),
        )
    assert done.returncode == 3, done.stderr
    data = json.loads(done.stdout)
    assert data["stop_reason"] == "max_cost" and data["cost"] == pytest.approx(4.0)
    assert with_option.returncode == 3 and json.loads(with_option.stdout)["cost"] == pytest.approx(3.0)
