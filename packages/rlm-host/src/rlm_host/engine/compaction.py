"""Keeping a history under the model's window: pure functions, no I/O.

The engine (``rlm_host.engine.steps``) asks these when to compact and what to send; it makes
the model request and binds the full transcript in the REPL itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from ..llm.messages import ChatMessage, Usage
from .prompts import compacted_message, compaction_prompt
from .state import RlmState

__all__ = [
    "COMPACT_AT",
    "KEEP_MESSAGES",
    "TRUNCATED_BELOW",
    "TRUNCATION_MIN_TOKENS",
    "CompactionPlan",
    "chars",
    "compacted_history",
    "history_tokens",
    "plan_compaction",
    "truncated",
]

#: Compact when the history reaches this share of ``context_tokens``: the rest is room for the
#: reply and the next observation.
COMPACT_AT: Final = 0.75

#: Messages kept verbatim at the end of a compacted history: the last two turns (assistant
#: block, observation), which the model needs word for word to go on.
KEEP_MESSAGES: Final = 4

#: Ollama drops the oldest messages that do not fit its window without saying so
#: (``server/prompt.go``, ``chatPrompt``); its ``prompt_eval_count`` is the only trace. A reply
#: was made from a truncated prompt when that count is below this share of the estimate of what
#: was sent (characters / 4: real text runs 3-4 characters per token, so a correct count is
#: above the estimate, not at half of it), or when it did not grow although the history did
#: since the previous request (the first drop of the oldest messages, where the count is still
#: close to what was sent).
TRUNCATED_BELOW: Final = 0.5

#: Estimates below this many tokens are never judged truncated: a chat template's own tokens
#: dominate small prompts, and no server's window is that small.
TRUNCATION_MIN_TOKENS: Final = 1024


def chars(messages: Sequence[ChatMessage]) -> int:
    return sum(len(message["content"]) for message in messages)


def history_tokens(state: RlmState) -> int:
    """The history's size in tokens: the server's last count plus an estimate (chars / 4) of
    what came after, or an estimate of all of it."""
    if state.reported_tokens is not None and state.reported_len <= len(state.history):
        return state.reported_tokens + chars(state.history[state.reported_len :]) // 4
    return chars(state.history) // 4


@dataclass(frozen=True)
class CompactionPlan:
    """A compaction to make: ``request`` asks the model for the summary."""

    request: list[ChatMessage]
    tokens_before: int


def plan_compaction(state: RlmState, window: int | None, *, force: bool = False) -> CompactionPlan | None:
    """The summary request when the history nears ``window`` (or ``force``), else ``None``.

    The system prompt and the first message (task and prompt metadata) stay verbatim, and so do
    the last ``KEEP_MESSAGES``; with less than two messages between, there is nothing old
    enough to summarise.
    """
    tokens = history_tokens(state)
    if window is None:
        if not force:
            return None
        window = max(64, tokens)
    if not force and tokens < COMPACT_AT * window:
        return None
    middle = state.history[2:-KEEP_MESSAGES]
    if len(middle) < 2:
        return None
    # The request itself must fit: half the context, in characters (4 per token).
    request = compaction_prompt(
        state.summary, [{"role": m["role"], "content": m["content"]} for m in middle], max_chars=window * 2
    )
    return CompactionPlan([{"role": "user", "content": request}], tokens)


def compacted_history(state: RlmState, summary: str) -> list[ChatMessage]:
    """The history after a compaction with ``summary``: system, first message with the summary,
    the kept tail."""
    first: ChatMessage = {
        "role": "user",
        "content": compacted_message(state.first_message, summary, len(state.transcript)),
    }
    return [state.history[0], first, *state.history[-KEEP_MESSAGES:]]


def truncated(state: RlmState, usage: Usage, sent: int, history_len: int) -> bool:
    """Whether the server answered a truncated prompt (see ``TRUNCATED_BELOW``): ``sent`` is
    the estimate of the request's tokens, ``history_len`` its messages."""
    if not (usage.reported and usage.prompt_tokens > 0) or sent < TRUNCATION_MIN_TOKENS:
        return False
    if usage.prompt_tokens < TRUNCATED_BELOW * sent:
        return True
    previous = state.prompt_count
    return previous is not None and history_len > previous[1] and usage.prompt_tokens <= previous[0]
