"""What goes into and comes out of a chat call, independent of the server's API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypedDict

import msgspec

__all__ = ["ChatMessage", "ChatReply", "DeltaCallback", "Role", "Usage"]

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
        )


class ChatReply(msgspec.Struct, frozen=True):
    """The assistant's text of one chat call, with how it went."""

    content: str
    model: str
    usage: Usage
    #: Seconds from the first attempt's start to the end of the reply, retries included.
    duration: float
    #: Attempts made (1 when the first one succeeded).
    attempts: int = 1


#: Called with each piece of text as a streamed reply arrives (progress display).
DeltaCallback = Callable[[str], None]
