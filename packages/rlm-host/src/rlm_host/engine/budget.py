"""The limits of a run and the meter that enforces the run-wide ones.

Steps and depth are per RLM, as in the seed: the root gets ``max_steps``, a child
``max(6, parent_steps // 2)``, and an ``rlm_query`` at ``depth + 1 >= max_depth`` becomes a plain
chat call. Model calls, tokens and wall time are shared by the whole tree: the meter is checked
before every model request, so the first request past a limit raises ``BudgetExhausted`` and the
run ends with that reason (a child that hits it returns an error string to its parent, whose own
next request then stops the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import RlmError
from ..llm.messages import Usage

__all__ = ["BudgetExhausted", "Limits", "RunMeter", "StopReason", "child_steps"]

StopReason = Literal["final", "max_steps", "max_model_calls", "max_tokens", "wall_time"]


@dataclass(frozen=True)
class Limits:
    """Budgets of a run; ``None`` means unlimited. Defaults are the seed's."""

    max_steps: int = 18
    max_depth: int = 3
    max_model_calls: int | None = None
    #: Prompt plus completion tokens over the whole run (estimated as chars / 4 for a server
    #: that does not report usage).
    max_tokens: int | None = None
    max_seconds: float | None = None
    #: Model requests in flight at once, across the whole tree (batched calls, children).
    concurrency: int = 4

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1 (1: every rlm_query is a plain call)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


def child_steps(parent_steps: int) -> int:
    """The seed's step budget of a child RLM."""
    return max(6, parent_steps // 2)


class BudgetExhausted(RlmError):
    """A run-wide budget forbids another model request; ``reason`` is the run's stop reason."""

    def __init__(self, reason: StopReason, detail: str) -> None:
        super().__init__(detail)
        self.reason: StopReason = reason
        self.detail = detail


class RunMeter:
    """Counts model calls and tokens of a run and says when a budget is spent.

    Only touched from trio tasks of one run, so it needs no lock.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.usage = Usage()
        self.calls_started = 0
        self.tokens = 0

    def start_call(self) -> None:
        """Account for a request about to be sent, or raise ``BudgetExhausted``."""
        limit = self.limits.max_model_calls
        if limit is not None and self.calls_started >= limit:
            raise BudgetExhausted(
                "max_model_calls", f"model-call budget spent: {self.calls_started} of {limit} calls"
            )
        limit_tokens = self.limits.max_tokens
        if limit_tokens is not None and self.tokens >= limit_tokens:
            raise BudgetExhausted(
                "max_tokens", f"token budget spent: {self.tokens} of {limit_tokens} tokens"
            )
        self.calls_started += 1

    def record(self, usage: Usage, *, request_chars: int, reply_chars: int) -> None:
        """Add a finished call's usage (estimated from sizes when the server reported none)."""
        self.usage = self.usage + usage
        if usage.reported:
            self.tokens += usage.total_tokens
        else:
            self.tokens += (request_chars + reply_chars) // 4
