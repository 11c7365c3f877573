"""The model clients against the scripted server, over real HTTP, for both APIs."""

from __future__ import annotations

import socket
import threading
from dataclasses import replace

import pytest
import trio

from rlm_host.llm import (
    Api,
    ChatMessage,
    LlmConfig,
    ModelNotFound,
    ModelResponseError,
    ModelServerDown,
    ModelServerError,
    open_client,
)
from tests.scripted_model import ChatRequest, Fail, Malformed, Reply, ScriptedModel

APIS: list[Api] = ["ollama", "openai"]


def fast_config(api: Api, url: str, **changes: object) -> LlmConfig:
    """A config that retries quickly: backoff in milliseconds, so tests stay fast."""
    config = LlmConfig.resolve(api=api, url=url, model="m", environ={})
    return replace(config, backoff_base=0.001, backoff_max=0.01, **changes)  # type: ignore[arg-type]


def echo(request: ChatRequest) -> str:
    return "you said: " + request.last_user


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True])
async def test_chat_plain_and_streamed(api: Api, stream: bool) -> None:
    with ScriptedModel(echo) as server:
        deltas: list[str] = []
        async with open_client(fast_config(api, server.url, stream=stream)) as client:
            reply = await client.chat(
                [{"role": "user", "content": "hello there, a longer text to split"}],
                on_delta=deltas.append,
            )
    assert reply.content == "you said: hello there, a longer text to split"
    assert reply.usage.reported and reply.usage.calls == 1
    assert reply.usage.completion_tokens == len(reply.content) // 4
    assert reply.attempts == 1
    (request,) = server.requests()
    assert request.api == api and request.stream is stream and request.model == "m"
    if stream:
        assert len(deltas) > 1 and "".join(deltas) == reply.content
    # An OpenAI stream reports usage only when asked (the server above sends none otherwise).
    assert request.include_usage is (api == "openai" and stream)


@pytest.mark.parametrize("api", APIS)
async def test_usage_absent_is_not_reported(api: Api) -> None:
    with ScriptedModel(lambda r: Reply("ok", report_usage=False)) as server:
        async with open_client(fast_config(api, server.url)) as client:
            reply = await client.chat([{"role": "user", "content": "x"}])
    assert reply.content == "ok"
    assert not reply.usage.reported and reply.usage.total_tokens == 0


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", [500, 503, 429])
async def test_retries_server_errors_then_succeeds(api: Api, status: int) -> None:
    with ScriptedModel(echo) as server:
        server.inject(Fail(status), Fail(status))
        async with open_client(fast_config(api, server.url)) as client:
            reply = await client.chat([{"role": "user", "content": "again"}])
    assert reply.content == "you said: again"
    assert reply.attempts == 3
    assert [record.status for record in server.log] == [status, status, 200]


@pytest.mark.parametrize("api", APIS)
async def test_persistent_500_is_a_server_error(api: Api) -> None:
    with ScriptedModel(lambda r: Fail(500, "kaput")) as server:
        async with open_client(fast_config(api, server.url, max_retries=2)) as client:
            with pytest.raises(ModelServerError, match="kaput") as caught:
                await client.chat([{"role": "user", "content": "x"}])
    assert caught.value.status == 500 and caught.value.attempts == 3
    assert len(server.log) == 3


@pytest.mark.parametrize("api", APIS)
async def test_bad_request_is_not_retried(api: Api) -> None:
    with ScriptedModel(lambda r: Fail(400, "bad input")) as server:
        async with open_client(fast_config(api, server.url)) as client:
            with pytest.raises(ModelServerError, match="bad input"):
                await client.chat([{"role": "user", "content": "x"}])
    assert len(server.log) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_the_api_key_is_sent_as_a_bearer_token(stream: bool) -> None:
    with ScriptedModel(echo, api_key="sk-test") as server:
        config = fast_config("openai", server.url, api_key="sk-test", stream=stream)
        async with open_client(config) as client:
            reply = await client.chat([{"role": "user", "content": "x"}])
        assert reply.content == "you said: x"
        async with open_client(replace(config, api_key=None)) as client:
            with pytest.raises(ModelServerError, match="HTTP 401") as caught:
                await client.chat([{"role": "user", "content": "x"}])
    assert caught.value.status == 401 and caught.value.attempts == 1
    assert [r.authorization for r in server.requests()] == ["Bearer sk-test", None]


@pytest.mark.parametrize("api", APIS)
async def test_missing_model(api: Api) -> None:
    with ScriptedModel(echo, known_models={"other"}) as server:
        async with open_client(fast_config(api, server.url)) as client:
            with pytest.raises(ModelNotFound, match="'m' is not available") as caught:
                await client.chat([{"role": "user", "content": "x"}])
    assert server.url in str(caught.value)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True])
async def test_malformed_reply(api: Api, stream: bool) -> None:
    with ScriptedModel(lambda r: Malformed("{not json")) as server:
        async with open_client(fast_config(api, server.url, stream=stream)) as client:
            with pytest.raises(ModelResponseError, match="malformed response"):
                await client.chat([{"role": "user", "content": "x"}])


def unused_port() -> int:
    """A port with nothing listening: bind, read the number, close."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("api", APIS)
async def test_server_down_names_the_url(api: Api) -> None:
    url = f"http://127.0.0.1:{unused_port()}"
    async with open_client(fast_config(api, url, max_retries=2)) as client:
        with pytest.raises(ModelServerDown) as caught:
            await client.chat([{"role": "user", "content": "x"}])
    assert caught.value.attempts == 3
    assert url in str(caught.value) and "--llm-url" in str(caught.value)


async def test_wrong_api_hint() -> None:
    """An Ollama client pointed at an OpenAI-only server says which flag to try."""
    with ScriptedModel(echo) as server:
        config = fast_config("ollama", server.url + "/v1/chat/completions-nowhere")
        async with open_client(config) as client:
            with pytest.raises(ModelServerError, match="--api openai"):
                await client.chat([{"role": "user", "content": "x"}])


async def test_concurrent_requests_overlap() -> None:
    together = threading.Barrier(4, timeout=60)  # each reply waits until all four are in flight

    def script(request: ChatRequest) -> str:
        together.wait()
        return echo(request)

    with ScriptedModel(script) as server:
        async with open_client(fast_config("ollama", server.url)) as client:
            async with trio.open_nursery() as nursery:
                for index in range(4):
                    messages: list[ChatMessage] = [{"role": "user", "content": str(index)}]
                    nursery.start_soon(client.chat, messages)
    assert server.max_in_flight() == 4


def test_config_precedence() -> None:
    env = {
        "OLLAMA_HOST": "0.0.0.0:9999",
        "OPENAI_BASE_URL": "https://api.example/v1",
        "OPENAI_API_KEY": "k",
    }
    assert LlmConfig.resolve(environ=env).endpoint == "http://0.0.0.0:9999/api/chat"
    openai = LlmConfig.resolve(api="openai", environ=env)
    assert openai.endpoint == "https://api.example/v1/chat/completions" and openai.api_key == "k"
    assert LlmConfig.resolve(api="openai", url="http://h:8080", environ=env).endpoint == (
        "http://h:8080/v1/chat/completions"
    )
    overridden = LlmConfig.resolve(environ=env | {"RLM_LLM_URL": "http://x:1", "RLM_MODEL": "q"})
    assert (overridden.base_url, overridden.model) == ("http://x:1", "q")
    assert LlmConfig.resolve(model="explicit", environ={"RLM_MODEL": "q"}).model == "explicit"
