"""The one thing the engine needs from a model server: a chat call.

``ChatClient`` (Ollama, OpenAI-compatible servers over httpx) is the implementation; a server's
quirks (reasoning fields, inline ``<think>``, windows, retries, error shapes) stay inside it,
so the engine sees an answer, its reasoning and usage, whatever the server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .config import LlmConfig
from .messages import ChatMessage, ChatReply, DeltaCallback

__all__ = ["ChatModel"]


class ChatModel(Protocol):
    """A chat endpoint for one configured model (``config.model``) or others it serves."""

    config: LlmConfig

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        stream: bool | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> ChatReply:
        """The reply to ``messages``: ``content`` is the answer only, ``reasoning`` the model's
        thinking; raises ``ModelError`` subclasses (``ContextLengthExceeded`` for a request
        longer than the window)."""
        ...
