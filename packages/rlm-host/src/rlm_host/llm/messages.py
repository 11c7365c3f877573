"""What goes into and comes out of a chat call, independent of the server's API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypedDict

import msgspec

__all__ = ["ChatMessage", "ChatReply", "DeltaCallback", "ModelInfo", "Role", "Think", "Usage"]

Role = Literal["system", "user", "assistant"]


class ChatMessage(TypedDict):
    """One message of a conversation, in the shape both APIs accept."""

    role: Role
    content: str


class Usage(msgspec.Struct, frozen=True):
    """Token counts of one or more calls, as the server reported them.

    ``reported`` is false when the server said nothing about tokens, so that zero is not
    mistaken for a measurement.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    reported: bool = False
    #: Of ``completion_tokens``, those spent reasoning, where the server says so (OpenAI's
    #: ``completion_tokens_details.reasoning_tokens``; Ollama does not report it).
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            calls=self.calls + other.calls,
            reported=self.reported or other.reported,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


class ChatReply(msgspec.Struct, frozen=True):
    """The assistant's text of one chat call, with how it went.

    ``content`` is the answer only; what a reasoning model thought before it (a separate field
    of the reply, or an inline ``<think>`` block) is ``reasoning``.
    """

    content: str
    model: str
    usage: Usage
    #: Seconds from the first attempt's start to the end of the reply, retries included.
    duration: float
    #: Attempts made (1 when the first one succeeded).
    attempts: int = 1
    reasoning: str = ""


#: Called with each piece of text as a streamed reply arrives (progress display).
DeltaCallback = Callable[[str], None]


#: A reasoning switch as the user gave it: on, off, or a level ("low", "medium", "high").
Think = bool | str


class ModelInfo(msgspec.Struct, frozen=True):
    """What a server says about one model (Ollama ``/api/show``, OpenAI-style ``/v1/models``).

    ``None`` and empty fields mean the server did not say, not that the model lacks them.
    """

    model: str
    #: The model's own maximum context in tokens (Ollama ``model_info["<arch>.context_length"]``,
    #: vLLM ``max_model_len``).
    context_length: int | None = None
    #: Ollama's ``capabilities`` (``completion``, ``thinking``, ``tools``, ...).
    capabilities: tuple[str, ...] = ()
    #: Values the model accepts for ``think`` (Ollama ``/api/show`` ``thinking.values``).
    think_values: tuple[str, ...] = ()
    #: Other models the server offers (listed when the asked one is missing).
    available: tuple[str, ...] = ()

    @property
    def reasons(self) -> bool | None:
        """Whether the model reasons (Ollama's ``thinking`` capability); ``None``: unknown."""
        if not self.capabilities:
            return None
        return "thinking" in self.capabilities
