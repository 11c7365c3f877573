"""OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp, LM Studio): JSON or SSE.

Reasoning (vLLM docs, "Reasoning Outputs"): with a reasoning parser, ``reasoning`` (formerly
``reasoning_content``, still sent by llama.cpp's server) beside ``content``, in the message and in
streamed deltas. Qwen3's thinking is switched with ``chat_template_kwargs.enable_thinking``;
``reasoning_effort`` carries a level. The window: vLLM's ``/v1/models`` lists ``max_model_len``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .config import LlmConfig
from .errors import ModelResponseError
from .messages import ChatMessage, DeltaCallback, ModelInfo, Usage
from .wire import Parsed

__all__ = ["OpenAIWire"]

#: The reasoning fields of a message or delta, newest name first.
_REASONING_FIELDS = ("reasoning", "reasoning_content")


def _usage(data: dict[str, Any]) -> Usage:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return Usage(calls=1)
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    details = usage.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        completion_tokens=completion if isinstance(completion, int) else 0,
        calls=1,
        reported=True,
        reasoning_tokens=reasoning if isinstance(reasoning, int) else 0,
    )


def _reasoning(url: str, message: dict[str, Any]) -> str:
    for name in _REASONING_FIELDS:
        value = message.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ModelResponseError(url, f"{name} is not a string")
        if value:
            return value
    return ""


def _first_choice(url: str, data: Any) -> dict[str, Any] | None:
    """The first choice, or None for a chunk without choices (the usage chunk of a stream)."""
    if not isinstance(data, dict):
        raise ModelResponseError(url, f"expected a JSON object, got {type(data).__name__}")
    if "error" in data:
        raise ModelResponseError(url, f"server error in reply: {data['error']}")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ModelResponseError(url, f"no choices in {json.dumps(data)[:200]}")
    if not choices:
        return None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ModelResponseError(url, f"choice is not an object: {json.dumps(choice)[:200]}")
    return choice


class OpenAIWire:
    """Request and reply shapes of the OpenAI chat completions API."""

    def body(
        self, config: LlmConfig, model: str, messages: Sequence[ChatMessage], stream: bool
    ) -> dict[str, Any]:
        """Streamed requests ask for a final usage chunk (``stream_options.include_usage``);
        a reasoning switch goes to the chat template, a level to ``reasoning_effort``."""
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if config.think is not None:
            body["chat_template_kwargs"] = {"enable_thinking": config.think is not False}
            if isinstance(config.think, str):
                body["reasoning_effort"] = config.think
        return body

    def parse(self, url: str, data: Any) -> Parsed:
        """``choices[0].message.content`` (``null`` content counts as empty), its reasoning
        field, and ``usage``."""
        choice = _first_choice(url, data)
        message = None if choice is None else choice.get("message")
        if not isinstance(message, dict):
            raise ModelResponseError(url, f"no choices[0].message in {json.dumps(data)[:200]}")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ModelResponseError(url, "choices[0].message.content is not a string")
        return Parsed(content, _reasoning(url, message), _usage(data))

    async def parse_stream(
        self, url: str, lines: AsyncIterator[str], on_delta: DeltaCallback | None
    ) -> Parsed:
        """Server-sent events: ``data: {chunk}`` lines until ``data: [DONE]``."""
        parts: list[str] = []
        thoughts: list[str] = []
        usage = Usage(calls=1)
        async for line in lines:
            if not line.startswith("data:"):
                continue  # blank separators, comments (":"), "event:" lines
            data_text = line[len("data:") :].strip()
            if data_text == "[DONE]":
                return Parsed("".join(parts), "".join(thoughts), usage)
            try:
                data = json.loads(data_text)
            except ValueError as error:
                raise ModelResponseError(url, f"SSE data is not JSON: {data_text[:200]!r}") from error
            if isinstance(data, dict) and isinstance(data.get("usage"), dict):
                usage = _usage(data)
            choice = _first_choice(url, data)
            if choice is None:
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            thought = _reasoning(url, delta)
            if thought:
                thoughts.append(thought)
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                parts.append(piece)
                if on_delta is not None:
                    on_delta(piece)
        raise ModelResponseError(url, "stream ended without data: [DONE]")

    def info_request(self, config: LlmConfig, model: str) -> tuple[str, str, dict[str, Any] | None]:
        """``GET /v1/models``: the served models, with ``max_model_len`` on vLLM."""
        return "GET", config.server_url + "/models", None

    def parse_info(self, model: str, data: Any) -> ModelInfo:
        """The entry of ``model`` in the list, or ``available`` only when it is not there."""
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return ModelInfo(model)
        names = tuple(str(e.get("id")) for e in entries if isinstance(e, dict))
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == model:
                length = entry.get("max_model_len")
                return ModelInfo(
                    model, context_length=length if isinstance(length, int) and length > 0 else None,
                    available=names,
                )
        return ModelInfo(model, available=names)

    def list_request(self, config: LlmConfig) -> str:
        return config.server_url + "/models"

    def parse_list(self, data: Any) -> tuple[str, ...]:
        entries = data.get("data") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            return ()
        return tuple(str(e.get("id")) for e in entries if isinstance(e, dict))
