"""Whole runs against emulations of real servers (``model_servers``): reasoning models, windows
that are too small, missing models, and a second model for sub-calls.

The behaviours and their sources are listed in ``model_servers``' docstring: Ollama docs
"Thinking" and "Context length", Ollama ``server/prompt.go`` (``chatPrompt``), vLLM docs
"Reasoning Outputs", llama.cpp's server README.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.engine.engine_harness import fence, local_options
from tests.model_servers import ModelCard, OllamaServer, OpenAIServer, Thought
from rlm_host.api import run_rlm
from rlm_host.engine import NO_BLOCK_REPROMPT
from rlm_host.llm import Api, ModelNotFound
from rlm_host.trajectory import (
    Compaction,
    ContextOverflow,
    ModelReady,
    ModelRequest,
    ModelResponse,
    RunEnd,
    read_trajectory,
)
from rlm_host.viewer.tree import build_view
from tests.scripted_model import ChatRequest, Outcome, Script, ScriptedModel
from tests.engine.test_cli_run import rlm_run

#: A whole local run here takes seconds; a hang fails by name.
GUARD_SECONDS = 120

DECOY = "I could simply write:\n```python\nFinal = 'decoy'\n```\nbut I should compute it."


def two_steps(request: ChatRequest) -> Thought:
    """Step 1 computes the value, step 2 sets Final; each reply thinks first, with a decoy."""
    if request.turn == 0:
        return Thought(fence("value = 'right'\nprint(value)"), reasoning=DECOY)
    return Thought(fence("Final = value"), reasoning="The value is computed; set Final.")


SERVERS: dict[str, Callable[[Script], ScriptedModel]] = {
    "ollama-thinking": lambda script: OllamaServer(script, models=(ModelCard("scripted"),)),
    "vllm-reasoning": lambda script: OpenAIServer(script, models=(ModelCard("scripted"),)),
    "vllm-reasoning_content": lambda script: OpenAIServer(
        script, models=(ModelCard("scripted"),), reasoning_field="reasoning_content"
    ),
    "llama.cpp-reasoning_content": lambda script: OpenAIServer(
        script, flavour="llama.cpp", models=(ModelCard("scripted"),), reasoning_field="reasoning_content"
    ),
    "no-parser-inline-think": lambda script: OpenAIServer(script, models=(ModelCard("scripted"),), reasoning_field=None),
}


@pytest.mark.parametrize("shape", sorted(SERVERS))
@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_is_kept_apart_and_the_decoy_never_runs(shape: str, stream: bool, trajectory: Path) -> None:
    api: Api = "ollama" if shape.startswith("ollama") else "openai"
    with SERVERS[shape](two_steps) as server, trio.fail_after(GUARD_SECONDS):
        result = await run_rlm("task", options=local_options(server.url, trajectory, api=api, stream=stream))
    assert result.answer == "right", result.detail
    events = read_trajectory(trajectory)
    responses = [e for e in events if isinstance(e, ModelResponse)]
    assert [r.reasoning for r in responses] == [DECOY, "The value is computed; set Final."]
    assert all("<think>" not in r.content and "decoy" not in r.content for r in responses)
    # The reasoning is not sent back: the second request has no trace of it.
    second = server.requests()[1]
    assert all("decoy" not in m["content"] for m in second.messages)


async def test_history_reasoning_sends_it_back_when_asked(trajectory: Path) -> None:
    with OpenAIServer(two_steps, models=(ModelCard("scripted"),)) as server, trio.fail_after(GUARD_SECONDS):
        result = await run_rlm(
            "task", options=local_options(server.url, trajectory, api="openai", history_reasoning=True)
        )
    assert result.answer == "right"
    assistant = [m for m in server.requests()[1].messages if m["role"] == "assistant"]
    assert assistant[0]["content"].startswith("<think>\nI could simply write")


@pytest.mark.parametrize("api", ["ollama", "openai"])
async def test_an_answer_that_is_all_reasoning_gets_the_reprompt(api: str, trajectory: Path) -> None:
    def script(request: ChatRequest) -> Any:
        if request.turn == 0:
            return Thought("", reasoning="thinking and thinking, out of tokens")
        assert request.last_user == NO_BLOCK_REPROMPT
        return fence("Final = 'after the reprompt'")

    server = OllamaServer(script, models=(ModelCard("scripted"),)) if api == "ollama" else OpenAIServer(
        script, models=(ModelCard("scripted"),)
    )
    with server, trio.fail_after(GUARD_SECONDS):
        result = await run_rlm("task", options=local_options(server.url, trajectory, api=api))  # type: ignore[arg-type]
    assert result.answer == "after the reprompt"
    first = next(e for e in read_trajectory(trajectory) if isinstance(e, ModelResponse))
    assert first.content == "" and first.reasoning.startswith("thinking")


TASK = "TASK-7731: report the secret word, which is 'heron'."
STEPS = 20


def long_run(requests_seen: list[bool]) -> Any:
    """Twenty steps that each print 4 KB, then a Final taken from the task in the first message
    as this request shows it (``lost`` when the server dropped it)."""
    steps = itertools.count(1)

    def script(request: ChatRequest) -> Outcome:
        if request.is_leaf:  # a compaction's summary request
            return "Steps so far printed 4000 x's each; nothing was found yet."
        step = next(steps)
        visible = "TASK-7731" in request.first_user
        requests_seen.append(visible)
        if step <= STEPS:
            return Thought(fence(f"chunk_{step} = 'x' * 4000\nprint(chunk_{step})"), reasoning=f"thought {step}")
        word = "heron" if visible else "lost"
        return Thought(fence(f"Final = {word!r}"), reasoning="the task is in the first message")

    return script


def assert_reasoning_kept(events: list[Any]) -> None:
    """Every answered step of the root recorded its reasoning, the last one the Final's."""
    requests = {e.call: e for e in events if isinstance(e, ModelRequest)}
    answered = [e for e in events if isinstance(e, ModelResponse) and e.error is None and requests[e.call].purpose == "rlm"]
    assert len(answered) > STEPS and all(e.reasoning.startswith("thought ") for e in answered[:-1])
    assert answered[-1].reasoning == "the task is in the first message"


@pytest.mark.parametrize("honour_num_ctx", [True, False], ids=["num_ctx-honoured", "window-fixed-at-4k"])
async def test_a_long_run_at_ollamas_default_window_keeps_its_task(honour_num_ctx: bool, trajectory: Path) -> None:
    seen: list[bool] = []
    server = OllamaServer(long_run(seen), models=(ModelCard("scripted", context_length=40960),),
                          honour_num_ctx=honour_num_ctx)
    with server, trio.fail_after(4 * GUARD_SECONDS):
        result = await run_rlm(TASK, options=local_options(server.url, trajectory, max_steps=STEPS + 4))
    assert result.answer == "heron", result.detail
    events = read_trajectory(trajectory)
    assert_reasoning_kept(events)
    (ready,) = [e for e in events if isinstance(e, ModelReady)]
    assert ready.num_ctx == 16384 and ready.window == 16384 and ready.context_length == 40960
    assert all(r.body["options"]["num_ctx"] == 16384 for r in server.requests())
    sent_tokens = max(sent for sent, _ in server.truncations)
    assert sent_tokens > 4096  # the history outgrew Ollama's default window
    overflows = [e for e in events if isinstance(e, ContextOverflow)]
    if honour_num_ctx:
        assert not overflows and all(seen)
        assert all(sent == kept for sent, kept in server.truncations)
    else:
        # The server still truncated: detected from its prompt count, compacted, sent again.
        assert overflows and all(o.kind == "truncated" and o.retry for o in overflows)
        assert overflows[0].window is not None and overflows[0].window <= 4096
        assert any(isinstance(e, Compaction) for e in events)
        assert seen[-1] and not all(seen)


async def test_vllm_window_from_models_compacts_before_a_refusal(trajectory: Path) -> None:
    seen: list[bool] = []
    card = ModelCard("scripted", context_length=4096)
    with OpenAIServer(long_run(seen), models=(card,)) as server, trio.fail_after(4 * GUARD_SECONDS):
        result = await run_rlm(TASK, options=local_options(server.url, trajectory, api="openai", max_steps=STEPS + 4))
    assert result.answer == "heron", result.detail
    events = read_trajectory(trajectory)
    assert_reasoning_kept(events)
    assert not server.refusals and all(seen)
    assert any(isinstance(e, Compaction) for e in events)
    assert not any(isinstance(e, ContextOverflow) for e in events)


async def test_a_refusal_for_length_compacts_and_retries(trajectory: Path) -> None:
    # llama.cpp's /v1/models does not say the window: the first refusal teaches it.
    seen: list[bool] = []
    card = ModelCard("scripted", context_length=4096)
    server = OpenAIServer(long_run(seen), flavour="llama.cpp", models=(card,), reasoning_field="reasoning_content")
    with server, trio.fail_after(4 * GUARD_SECONDS):
        result = await run_rlm(TASK, options=local_options(server.url, trajectory, api="openai", max_steps=STEPS + 4))
    assert result.answer == "heron", result.detail
    events = read_trajectory(trajectory)
    assert_reasoning_kept(events)
    overflows = [e for e in events if isinstance(e, ContextOverflow)]
    assert server.refusals and overflows[0].kind == "refused" and overflows[0].window == 4096
    assert "exceeds the available context size" in overflows[0].detail
    assert all(seen)  # a refused request is never answered from a truncated prompt
    # The request after the refusal is a rebased (compacted) history that fits.
    refused = overflows[0].call
    after = next(e for e in events if isinstance(e, ModelRequest) and e.call > refused and e.purpose == "rlm")
    assert after.rebased


async def test_a_window_too_small_for_anything_stops_with_a_reason(trajectory: Path) -> None:
    card = ModelCard("scripted", context_length=300)
    with OpenAIServer(lambda r: fence("Final = 1"), models=(card,)) as server, trio.fail_after(GUARD_SECONDS):
        result = await run_rlm("task", options=local_options(server.url, trajectory, api="openai"))
    assert result.answer is None and result.stop_reason == "context_window"
    assert "300 tokens" in result.detail and "--context-tokens" in result.detail
    end = read_trajectory(trajectory)[-1]
    assert isinstance(end, RunEnd) and end.stop_reason == "context_window"


async def test_a_missing_ollama_model_fails_before_any_chat(trajectory: Path) -> None:
    with OllamaServer(lambda r: "x", models=(ModelCard("llama3.2"),)) as server, trio.fail_after(10):
        with pytest.raises(ModelNotFound) as caught:
            await run_rlm("task", options=local_options(server.url, trajectory, model="qwen3"))
    assert not server.log  # refused at /api/show, before the first chat request
    assert "ollama pull qwen3" in str(caught.value) and "llama3.2:latest" in str(caught.value)
    assert trajectory.exists()  # nothing lost: the trajectory says what happened


async def test_a_missing_vllm_model_fails_at_the_first_request(trajectory: Path) -> None:
    with OpenAIServer(lambda r: "x") as server, trio.fail_after(10):
        with pytest.raises(ModelNotFound) as caught:
            await run_rlm("task", options=local_options(server.url, trajectory, api="openai", model="qwen3"))
    assert len(server.log) == 1 and server.log[0].status == 404
    assert "vllm serve qwen3" in str(caught.value)


async def test_sub_model_serves_llm_query_and_children(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        if request.is_leaf:
            return f"leaf answer from {request.model}"
        if "child task" in request.first_user:
            return fence(f"Final = 'child ran on {request.model}'")
        return fence(
            "a = llm_query('leaf task')\n"
            "b = rlm_query('child task')\n"
            "try:\n    rlm_query('x', model='not-allowed')\nexcept Exception as e:\n    c = str(e)\n"
            "Final = [a, b, c]"
        )

    models = (ModelCard("root-model"), ModelCard("small-model"))
    with OllamaServer(script, models=models) as server, trio.fail_after(GUARD_SECONDS):
        result = await run_rlm(
            "task", options=local_options(server.url, trajectory, model="root-model", sub_model="small-model")
        )
    assert result.value is not None, result.detail
    leaf, child, refused = result.value
    assert leaf == "leaf answer from small-model" and child == "child ran on small-model"
    assert "not allowed" in refused and "small-model" in refused
    by_model = {r.model: 0 for r in server.requests()}
    roots = [r for r in server.requests() if not r.is_leaf and "child task" not in r.first_user]
    assert {r.model for r in roots} == {"root-model"}
    assert {r.model for r in server.requests() if r not in roots} == {"small-model"}
    assert set(by_model) == {"root-model", "small-model"}
    assert set(result.usage_by_model) == {"root-model", "small-model"}
    assert result.usage_by_model["root-model"].calls == 1 and result.usage_by_model["small-model"].calls == 2
    events = read_trajectory(trajectory)
    end = events[-1]
    assert isinstance(end, RunEnd) and end.usage_by_model == result.usage_by_model
    assert {e.model for e in events if isinstance(e, ModelReady)} == {"root-model", "small-model"}
    view = build_view(events)
    assert set(view.usage_by_model) == {"root-model", "small-model"}
    assert {r.model for r in view.rlms} == {"root-model", "small-model"}


async def test_sub_model_on_a_second_server(trajectory: Path) -> None:
    def root(request: ChatRequest) -> str:
        return fence("Final = llm_query('hello')")

    def second(request: ChatRequest) -> str:
        return f"from the second server, {request.model}"

    with ScriptedModel(root) as first, OpenAIServer(second, models=(ModelCard("helper-model"),)) as other:
        with trio.fail_after(GUARD_SECONDS):
            result = await run_rlm("task", options=local_options(
                first.url, trajectory, sub_model="helper-model", sub_llm_url=other.url, sub_api="openai",
            ))
    assert result.answer == "from the second server, helper-model"
    assert [r.model for r in first.requests()] == ["scripted"]
    assert [r.model for r in other.requests()] == ["helper-model"]
    assert json.loads(json.dumps(sorted(result.usage_by_model))) == ["helper-model", "scripted"]


async def test_rlm_run_flags_reach_the_servers(tmp_path: Path) -> None:
    def script(request: ChatRequest) -> Any:
        if request.is_leaf:
            return Thought("leaf says hi", reasoning="short thought")
        return Thought(fence("Final = llm_query('hi')"), reasoning="root thought")

    models = (ModelCard("root-model"), ModelCard("small-model"))
    with OllamaServer(script, models=models) as server, trio.fail_after(GUARD_SECONDS):
        done = await rlm_run(
            "--query", "say hi", "--llm-url", server.url, "--model", "root-model", "--sub-model", "small-model",
            "--think-level", "High", "--keep-alive", "2h", "--json",
            env={"XDG_STATE_HOME": str(tmp_path / "state")},
        )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["answer"] == "leaf says hi"
    assert set(printed["usage_by_model"]) == {"root-model", "small-model"}
    bodies = [r.body for r in server.requests()]
    assert all(b["think"] == "high" and b["keep_alive"] == "2h" for b in bodies)
    assert [b["model"] for b in bodies] == ["root-model", "small-model"]
    (written,) = (tmp_path / "state" / "rlm" / "trajectories").glob("*.jsonl")
    reasons = [e.reasoning for e in read_trajectory(written) if isinstance(e, ModelResponse)]
    assert reasons == ["root thought", "short thought"]


async def test_a_think_switch_the_model_cannot_take_fails_at_once(trajectory: Path) -> None:
    plain = ModelCard("llama3.2", capabilities=("completion", "tools"))
    levels = ModelCard("gpt-oss", architecture="gptoss", think_values=("low", "medium", "high"))
    switch = ModelCard("qwen3", think_values=(True, False))
    with OllamaServer(lambda r: fence("Final = 'ok'"), models=(plain, levels, switch)) as server, trio.fail_after(GUARD_SECONDS):
        for model, think, refused in (
            ("llama3.2", True, "does not reason"),
            ("gpt-oss", "max", "takes --think-level low or medium or high"),
            ("qwen3", "high", "only --think / --no-think"),
        ):
            with pytest.raises(ValueError, match=refused):
                await run_rlm("task", options=local_options(server.url, trajectory, model=model, think=think))
        assert not server.log  # refused before any chat request
        result = await run_rlm("task", options=local_options(server.url, trajectory, model="gpt-oss", think="high"))
        no_think = await run_rlm("task", options=local_options(server.url, trajectory, model="llama3.2", think=False))
    assert result.answer == "ok" and no_think.answer == "ok"
    assert [r.body["think"] for r in server.requests()] == ["high", False]


async def test_the_system_prompt_names_the_models_code_may_pick(trajectory: Path) -> None:
    with ScriptedModel(lambda r: fence("Final = 1")) as server, trio.fail_after(GUARD_SECONDS):
        await run_rlm("task", options=local_options(server.url, trajectory))
        await run_rlm("task", options=local_options(server.url, trajectory, sub_model="small", models=("big",)))
    alone, offered = (r.system or "" for r in server.requests())
    assert "model=..." not in alone
    assert "one of 'big', 'scripted', 'small' (default 'small')" in offered
