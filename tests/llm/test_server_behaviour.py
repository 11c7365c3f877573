"""The model clients against emulations of real servers (``model_servers``), over real HTTP.

Each behaviour is the server's documented one:
- Ollama docs, "Thinking": ``think`` in the request, ``message.thinking`` in the reply, plain and
  streamed; ``/api/show`` lists ``capabilities``.
- Ollama docs, "Context length", and ``server/prompt.go`` (``chatPrompt``): 4k tokens without
  ``options.num_ctx``; the oldest messages that do not fit are dropped, not refused.
- vLLM docs, "Reasoning Outputs": ``reasoning`` (formerly ``reasoning_content``) in the message
  and in streamed deltas; inline ``<think>`` without a reasoning parser; ``/v1/models`` has
  ``max_model_len``; Qwen3's thinking is switched by ``chat_template_kwargs.enable_thinking``.
- llama.cpp server README: ``reasoning_content``; HTTP 400 "exceeds the available context size".
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import pytest
import trio

from tests.model_servers import ModelCard, OllamaServer, OpenAIServer, Thought
from rlm_host.llm import ContextLengthExceeded, LlmConfig, ModelNotFound, open_client
from rlm_host.llm.check import check_model

#: No client call here may take long: a hang fails by name.
GUARD_SECONDS = 30

DECOY = "Let me draft it:\n```python\nFinal = 'decoy'\n```\nNo, better not."
ANSWER = "```python\nFinal = 'right'\n```"


def config(api: str, url: str, model: str, **changes: object) -> LlmConfig:
    base = LlmConfig.resolve(api=api, url=url, model=model, environ={})  # type: ignore[arg-type]
    return replace(base, backoff_base=0.001, backoff_max=0.01, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [False, True])
async def test_ollama_thinking_is_reasoning_not_content(stream: bool) -> None:
    with OllamaServer(lambda r: Thought(ANSWER, reasoning=DECOY)) as server, trio.fail_after(GUARD_SECONDS):
        async with open_client(config("ollama", server.url, "qwen3", stream=stream)) as client:
            reply = await client.chat([{"role": "user", "content": "hi"}])
    assert reply.content == ANSWER
    assert reply.reasoning == DECOY
    # Nothing about thinking is sent unless asked; keep_alive is.
    (request,) = server.requests()
    assert "think" not in request.body and request.body["keep_alive"] == "30m"


@pytest.mark.parametrize("think", [True, False, "high"])
async def test_ollama_think_reaches_the_request(think: bool | str) -> None:
    with OllamaServer(lambda r: Thought(ANSWER, reasoning="hmm")) as server, trio.fail_after(GUARD_SECONDS):
        async with open_client(config("ollama", server.url, "qwen3", think=think)) as client:
            reply = await client.chat([{"role": "user", "content": "hi"}])
    (request,) = server.requests()
    assert request.body["think"] == think
    # think: false switches Ollama's thinking off: nothing comes back.
    assert reply.reasoning == ("" if think is False else "hmm")


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", None])
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_reasoning_fields_and_inline(field: str | None, stream: bool) -> None:
    with OpenAIServer(lambda r: Thought(ANSWER, reasoning=DECOY), reasoning_field=field) as server:  # type: ignore[arg-type]
        with trio.fail_after(GUARD_SECONDS):
            async with open_client(config("openai", server.url, "Qwen/Qwen3-8B", stream=stream)) as client:
                reply = await client.chat([{"role": "user", "content": "hi"}])
    assert reply.content == ANSWER
    assert reply.reasoning == DECOY
    (request,) = server.requests()
    assert "chat_template_kwargs" not in request.body and "reasoning_effort" not in request.body
    if stream:
        assert reply.usage.reasoning_tokens == len(DECOY) // 4


async def test_openai_think_switch_uses_the_chat_template() -> None:
    with OpenAIServer(lambda r: ANSWER) as server, trio.fail_after(GUARD_SECONDS):
        for think, effort in ((False, None), (True, None), ("low", "low")):
            async with open_client(config("openai", server.url, "Qwen/Qwen3-8B", think=think)) as client:
                await client.chat([{"role": "user", "content": "hi"}])
            body = server.requests()[-1].body
            assert body["chat_template_kwargs"] == {"enable_thinking": think is not False}
            assert body.get("reasoning_effort") == effort


@pytest.mark.parametrize("stream", [False, True])
async def test_unclosed_think_is_all_reasoning(stream: bool) -> None:
    # A model that ran out of tokens while thinking: no answer at all.
    with OpenAIServer(lambda r: "<think>\nstill going ```python\nFinal = 1\n```", reasoning_field=None) as server:
        with trio.fail_after(GUARD_SECONDS):
            async with open_client(config("openai", server.url, "Qwen/Qwen3-8B", stream=stream)) as client:
                reply = await client.chat([{"role": "user", "content": "hi"}])
    assert reply.content == ""
    assert reply.reasoning.startswith("still going")


async def test_ollama_describes_window_and_capabilities() -> None:
    card = ModelCard("qwen3", context_length=40960, capabilities=("completion", "tools", "thinking"))
    with OllamaServer(lambda r: "x", models=(card,)) as server, trio.fail_after(GUARD_SECONDS):
        async with open_client(config("ollama", server.url, "qwen3")) as client:
            info = await client.describe()
            listed = await client.list_models()
    assert info.context_length == 40960 and info.reasons is True
    assert listed == ("qwen3:latest",)
    assert server.other_requests[0] == ("POST", "/api/show", {"model": "qwen3"})


async def test_ollama_missing_model_lists_what_is_there() -> None:
    with OllamaServer(lambda r: "x", models=(ModelCard("llama3.2"),)) as server, trio.fail_after(GUARD_SECONDS):
        async with open_client(config("ollama", server.url, "qwen3")) as client:
            with pytest.raises(ModelNotFound) as caught:
                await client.describe()
            # The chat route says the same in its own words.
            with pytest.raises(ModelNotFound):
                await client.chat([{"role": "user", "content": "hi"}])
    message = str(caught.value)
    assert "ollama pull qwen3" in message and "llama3.2:latest" in message


async def test_vllm_models_give_the_window_and_a_missing_model_is_404() -> None:
    with OpenAIServer(lambda r: "x") as server, trio.fail_after(GUARD_SECONDS):
        async with open_client(config("openai", server.url, "Qwen/Qwen3-8B")) as client:
            info = await client.describe()
        async with open_client(config("openai", server.url, "missing")) as client:
            assert (await client.describe()).context_length is None
            with pytest.raises(ModelNotFound) as caught:
                await client.chat([{"role": "user", "content": "hi"}])
    assert info.context_length == 32768
    assert "vllm serve missing" in str(caught.value)
    assert [record.status for record in server.log] == [404]  # not retried


@pytest.mark.parametrize("flavour", ["vllm", "llama.cpp"])
async def test_too_long_a_request_is_refused_with_the_window(flavour: str) -> None:
    card = ModelCard("Qwen/Qwen3-8B", context_length=512)
    with OpenAIServer(lambda r: "x", flavour=flavour, models=(card,)) as server, trio.fail_after(GUARD_SECONDS):  # type: ignore[arg-type]
        async with open_client(config("openai", server.url, "Qwen/Qwen3-8B")) as client:
            with pytest.raises(ContextLengthExceeded) as caught:
                await client.chat([{"role": "user", "content": "y" * 4000}])
    assert caught.value.window == 512 and caught.value.status == 400
    assert len(server.log) == 1  # a refusal for length is not retried as it is


async def test_ollama_without_num_ctx_drops_the_oldest_messages() -> None:
    """What happens to a client that does not set num_ctx: the task is silently lost."""
    task = "TASK: count the apples"
    messages = [{"role": "system", "content": "sys"}, {"role": "user", "content": task}]
    for turn in range(30):
        messages += [{"role": "assistant", "content": f"step {turn} " + "x" * 300},
                     {"role": "user", "content": f"observation {turn} " + "z" * 400}]
    with OllamaServer(lambda r: "ok") as server, trio.fail_after(GUARD_SECONDS):
        async with open_client(config("ollama", server.url, "qwen3")) as client:
            reply = await client.chat(messages)  # type: ignore[arg-type]
            kept_all = await client.chat(messages[:6])  # type: ignore[arg-type]
        async with open_client(config("ollama", server.url, "qwen3", num_ctx=16384)) as client:
            await client.chat(messages)  # type: ignore[arg-type]
    truncated, small, with_window = server.seen
    assert reply.content == "ok"  # not refused
    assert truncated.messages[0]["content"] == "sys" and truncated.messages[-1] == messages[-1]
    assert all(task not in m["content"] for m in truncated.messages)
    # The only trace: fewer prompt tokens than were sent.
    assert reply.usage.prompt_tokens < 4096 < server.truncations[0][0]
    assert kept_all.usage.prompt_tokens == server.truncations[1][0]
    assert small.messages == messages[:6]
    assert with_window.messages == messages


async def test_doctor_checks_an_ollama_model() -> None:
    card = ModelCard("qwen3", context_length=40960, capabilities=("completion", "thinking"))
    with OllamaServer(lambda r: "x", models=(card,)) as server, trio.fail_after(GUARD_SECONDS):
        present = await check_model(config("ollama", server.url, "qwen3"))
        missing = await check_model(config("ollama", server.url, "deepseek-r1:8b"))
    assert [(c.name, c.ok) for c in present] == [("model server", True), ("model", True), ("reasoning", True)]
    assert "40960" in present[1].detail and "16384" in present[1].detail
    assert "reasons" in present[2].detail and "--no-think" in present[2].detail
    assert [(c.name, c.ok) for c in missing] == [("model server", True), ("model", False)]
    assert missing[1].fix.startswith("ollama pull deepseek-r1:8b")
    assert not server.log  # no chat request


async def test_doctor_checks_a_vllm_model_and_a_dead_server() -> None:
    with OpenAIServer(lambda r: "x") as server, trio.fail_after(GUARD_SECONDS):
        present = await check_model(config("openai", server.url, "Qwen/Qwen3-8B"))
        missing = await check_model(config("openai", server.url, "qwen3"))
        url = server.url
    down = await check_model(config("openai", url, "qwen3"))
    assert [c.ok for c in present] == [True, True, True] and "32768" in present[1].detail
    assert "--reasoning-parser" in present[2].detail
    assert [c.ok for c in missing] == [True, False] and "vllm serve qwen3" in missing[1].fix
    assert [(c.name, c.ok) for c in down] == [("model server", False)] and "vllm serve" in down[0].fix


async def test_rlm_doctor_command_reports_the_model() -> None:
    card = ModelCard("qwen3", context_length=40960)
    with OllamaServer(lambda r: "x", models=(card,)) as server, trio.fail_after(120):
        done = await trio.run_process(
            [sys.executable, "-c", "from rlm_host.cli import app; app()", "doctor", "--json",
             "--model", "missing-model", "--llm-url", server.url],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert done.returncode == 1  # the missing model fails the doctor
    assert checks["model server"]["ok"] and "qwen3:latest" in checks["model server"]["detail"]
    assert not checks["model"]["ok"] and checks["model"]["fix"].startswith("ollama pull missing-model")
