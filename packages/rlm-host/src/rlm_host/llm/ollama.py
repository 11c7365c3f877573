"""Ollama's ``/api/chat``: JSON body, plain reply or NDJSON stream (one JSON object per line)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .config import LlmConfig
from .errors import ModelResponseError
from .messages import ChatMessage, DeltaCallback, Usage

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


def _content(url: str, data: Any) -> str:
    if not isinstance(data, dict):
        raise ModelResponseError(url, f"expected a JSON object, got {type(data).__name__}")
    if "error" in data:
        raise ModelResponseError(url, f"server error in reply: {data['error']}")
    message = data.get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content", ""), str):
        raise ModelResponseError(url, f"no message.content in {json.dumps(data)[:200]}")
    content: str = message.get("content", "")
    return content


class OllamaWire:
    """Request and reply shapes of Ollama's chat API."""

    def body(
        self, config: LlmConfig, model: str, messages: Sequence[ChatMessage], stream: bool
    ) -> dict[str, Any]:
        """``{"model", "messages", "stream"}``: Ollama streams unless told not to."""
        return {"model": model, "messages": list(messages), "stream": stream}

    def parse(self, url: str, data: Any) -> tuple[str, Usage]:
        """A plain reply is one object with ``message.content`` and the token counts."""
        return _content(url, data), _usage(data)

    async def parse_stream(
        self, url: str, lines: AsyncIterator[str], on_delta: DeltaCallback | None
    ) -> tuple[str, Usage]:
        """Join ``message.content`` of each line; the line with ``done: true`` has the usage."""
        parts: list[str] = []
        async for line in lines:
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as error:
                raise ModelResponseError(url, f"stream line is not JSON: {line[:200]!r}") from error
            piece = _content(url, data)
            if piece:
                parts.append(piece)
                if on_delta is not None:
                    on_delta(piece)
            if data.get("done"):
                return "".join(parts), _usage(data)
        raise ModelResponseError(url, "stream ended without a final object (done: true)")
