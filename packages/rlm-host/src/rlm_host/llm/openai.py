"""OpenAI-compatible ``/v1/chat/completions`` (vLLM, llama.cpp, LM Studio): JSON or SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .config import LlmConfig
from .errors import ModelResponseError
from .messages import ChatMessage, DeltaCallback, Usage

__all__ = ["OpenAIWire"]


def _usage(data: dict[str, Any]) -> Usage:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return Usage(calls=1)
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return Usage(
        prompt_tokens=prompt if isinstance(prompt, int) else 0,
        completion_tokens=completion if isinstance(completion, int) else 0,
        calls=1,
        reported=True,
    )


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
        """Streamed requests ask for a final usage chunk (``stream_options.include_usage``)."""
        body: dict[str, Any] = {"model": model, "messages": list(messages), "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def parse(self, url: str, data: Any) -> tuple[str, Usage]:
        """``choices[0].message.content`` (``null`` content counts as empty) and ``usage``."""
        choice = _first_choice(url, data)
        message = None if choice is None else choice.get("message")
        if not isinstance(message, dict):
            raise ModelResponseError(url, f"no choices[0].message in {json.dumps(data)[:200]}")
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ModelResponseError(url, "choices[0].message.content is not a string")
        return content, _usage(data)

    async def parse_stream(
        self, url: str, lines: AsyncIterator[str], on_delta: DeltaCallback | None
    ) -> tuple[str, Usage]:
        """Server-sent events: ``data: {chunk}`` lines until ``data: [DONE]``."""
        parts: list[str] = []
        usage = Usage(calls=1)
        async for line in lines:
            if not line.startswith("data:"):
                continue  # blank separators, comments (":"), "event:" lines
            data_text = line[len("data:") :].strip()
            if data_text == "[DONE]":
                return "".join(parts), usage
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
            piece = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(piece, str) and piece:
                parts.append(piece)
                if on_delta is not None:
                    on_delta(piece)
        raise ModelResponseError(url, "stream ended without data: [DONE]")
