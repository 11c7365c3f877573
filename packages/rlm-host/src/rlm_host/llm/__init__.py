"""Model clients: Ollama ``/api/chat`` and OpenAI-compatible ``/v1/chat/completions`` over httpx.

>>> config = LlmConfig.resolve(environ={})
>>> config.api, config.model, config.endpoint
('ollama', 'qwen3.6', 'http://localhost:11434/api/chat')

Use ``open_client(config)`` as an async context manager, then ``await client.chat(messages)``.
"""

from __future__ import annotations

from .client import ChatClient, open_client
from .config import DEFAULT_MODEL, DEFAULT_OLLAMA_URL, DEFAULT_OPENAI_URL, Api, LlmConfig
from .errors import (
    ContextLengthExceeded,
    ModelError,
    ModelNotFound,
    ModelResponseError,
    ModelServerDown,
    ModelServerError,
)
from .model import ChatModel
from .messages import ChatMessage, ChatReply, DeltaCallback, ModelInfo, Role, Think, Usage

__all__ = [
    "Api",
    "ChatClient",
    "ChatModel",
    "ChatMessage",
    "ChatReply",
    "ContextLengthExceeded",
    "DEFAULT_MODEL",
    "DEFAULT_OLLAMA_URL",
    "DEFAULT_OPENAI_URL",
    "DeltaCallback",
    "LlmConfig",
    "ModelError",
    "ModelInfo",
    "ModelNotFound",
    "ModelResponseError",
    "ModelServerDown",
    "ModelServerError",
    "Role",
    "Think",
    "Usage",
    "open_client",
]
