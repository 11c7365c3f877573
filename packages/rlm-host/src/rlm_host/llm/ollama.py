"""Ollama's ``/api/chat``: JSON body, plain reply or NDJSON stream (one JSON object per line).

Reasoning (Ollama docs, "Thinking"): the request's ``think`` (true/false, or a level for models
that list levels under ``/api/show``'s ``thinking``); the reply's ``message.thinking`` beside
``message.content``, in streamed chunks too. The window (docs, "Context length"):
``options.num_ctx``; ``/api/show`` reports the model's own maximum as
``model_info["<arch>.context_length"]`` and its ``capabilities``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .config import LlmConfig
from .errors import ModelResponseError
from .messages import ChatMessage, DeltaCallback, ModelInfo, Usage
from .wire import Parsed

__all__ = ["OllamaWire"]


def _usage(data: dict[str, Any]) -> Usage:
    """Ollama reports tokens as ``prompt_eval_count`` / ``eval_count`` on the final object."""
    prompt = data.get("prompt_eval_count")
    completion = data.get("eval_count")
    if not isinstance(prompt, int) and not isinstance(completion, int):
        return Usage(calls=1)
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        completion_tokens=completion if isinstance(completion, int) else 0,
        calls=1,
        reported=True,
    )


def _message(url: str, data: Any) -> tuple[str, str]:
    """``message.content`` and ``message.thinking`` (empty when absent)."""
    if not isinstance(data, dict):
        raise ModelResponseError(url, f"expected a JSON object, got {type(data).__name__}")
    if "error" in data:
        raise ModelResponseError(url, f"server error in reply: {data['error']}")
    message = data.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content", ""), str):
        raise ModelResponseError(url, f"no message.content in {json.dumps(data)[:200]}")
    content: str = message.get("content", "")
    thinking = message.get("thinking") or ""
    if not isinstance(thinking, str):
        raise ModelResponseError(url, "message.thinking is not a string")
    return content, thinking


class OllamaWire:
    """Request and reply shapes of Ollama's chat API."""

    def body(
        self, config: LlmConfig, model: str, messages: Sequence[ChatMessage], stream: bool
    ) -> dict[str, Any]:
        """``{"model", "messages", "stream"}`` (Ollama streams unless told not to), and the
        reasoning switch, window and keep-alive when set."""
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
        if config.think is not None:
            body["think"] = config.think
        if config.num_ctx is not None:
            body["options"] = {"num_ctx": config.num_ctx}
        if config.keep_alive is not None:
            body["keep_alive"] = config.keep_alive
        return body

    def parse(self, url: str, data: Any) -> Parsed:
        """A plain reply is one object with ``message.content`` (and ``thinking``) and the token
        counts."""
        content, thinking = _message(url, data)
        return Parsed(content, thinking, _usage(data))

    async def parse_stream(
        self, url: str, lines: AsyncIterator[str], on_delta: DeltaCallback | None
    ) -> Parsed:
        """Join ``message.content`` and ``message.thinking`` of each line; the line with
        ``done: true`` has the usage."""
        parts: list[str] = []
        thoughts: list[str] = []
        async for line in lines:
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as error:
                raise ModelResponseError(url, f"stream line is not JSON: {line[:200]!r}") from error
            piece, thought = _message(url, data)
            if thought:
                thoughts.append(thought)
            if piece:
                parts.append(piece)
                if on_delta is not None:
                    on_delta(piece)
            if data.get("done"):
                return Parsed("".join(parts), "".join(thoughts), _usage(data))
        raise ModelResponseError(url, "stream ended without a final object (done: true)")

    def info_request(self, config: LlmConfig, model: str) -> tuple[str, str, dict[str, Any] | None]:
        """``POST /api/show {"model": ...}``."""
        return "POST", config.server_url + "/api/show", {"model": model}

    def parse_info(self, model: str, data: Any) -> ModelInfo:
        """The window from ``model_info["<general.architecture>.context_length"]``, the
        ``capabilities`` and the ``thinking.values`` (levels) of ``/api/show``."""
        if not isinstance(data, dict):
            return ModelInfo(model)
        model_info = data.get("model_info")
        length: int | None = None
        if isinstance(model_info, dict):
            arch = model_info.get("general.architecture")
            value = model_info.get(f"{arch}.context_length")
            if isinstance(value, int) and value > 0:
                length = value
        capabilities = data.get("capabilities")
        thinking = data.get("thinking")
        values = thinking.get("values") if isinstance(thinking, dict) else None
        return ModelInfo(
            model,
            context_length=length,
            capabilities=tuple(str(c) for c in capabilities) if isinstance(capabilities, list) else (),
            think_values=tuple(str(v).lower() for v in values) if isinstance(values, list) else (),
        )

    def list_request(self, config: LlmConfig) -> str:
        """``GET /api/tags``: the models pulled on this server."""
        return config.server_url + "/api/tags"

    def parse_list(self, data: Any) -> tuple[str, ...]:
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, list):
            return ()
        return tuple(str(m.get("name") or m.get("model")) for m in models if isinstance(m, dict))
