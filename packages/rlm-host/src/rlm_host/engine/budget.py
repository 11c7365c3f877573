"""The limits of a run and the meter that enforces the run-wide ones.

Steps and depth are per RLM, as in the seed: the root gets ``max_steps``, a child
``max(6, parent_steps // 2)``, and an ``rlm_query`` at ``depth + 1 >= max_depth`` becomes a plain
chat call. Model calls, tokens and wall time are shared by the whole tree: the meter is checked
before every model request, so the first request past a limit raises ``BudgetExhausted`` and the
run ends with that reason (a child that hits it returns an error string to its parent, whose own
next request then stops the run).

Cost is counted from prices the user gives per model (``Price``: per 1,000 prompt and completion
tokens; ``*`` is the price of any model not named). With ``max_cost`` set, a request to a model
without a price stops the run: a budget that cannot be measured is not enforced silently.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import RlmError
from ..llm.messages import Usage

__all__ = [
    "BudgetExhausted",
    "Limits",
    "Price",
    "RunMeter",
    "StopReason",
    "child_steps",
    "load_prices",
    "parse_price",
]

#: ``context_window``: the history no longer fits the model's window, even compacted.
StopReason = Literal[
    "final", "max_steps", "max_model_calls", "max_tokens", "max_cost", "wall_time", "context_window"
]


@dataclass(frozen=True)
class Price:
    """What a model costs, per 1,000 prompt (input) and completion (output) tokens."""

    input_per_1k: float
    output_per_1k: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1k + completion_tokens * self.output_per_1k) / 1000


def parse_price(text: str) -> tuple[str, Price]:
    """``model=in_per_1k,out_per_1k`` (the ``--price`` syntax); raises ``ValueError``.

    >>> parse_price("qwen3.6=0.1,0.4")
    ('qwen3.6', Price(input_per_1k=0.1, output_per_1k=0.4))
    """
    model, sep, numbers = text.rpartition("=")
    parts = numbers.split(",")
    if not sep or not model or len(parts) != 2:
        raise ValueError(f"a price is model=in_per_1k,out_per_1k, not {text!r}")
    try:
        price = Price(float(parts[0]), float(parts[1]))
    except ValueError:
        raise ValueError(f"a price is model=in_per_1k,out_per_1k, not {text!r}") from None
    if price.input_per_1k < 0 or price.output_per_1k < 0:
        raise ValueError(f"a price cannot be negative: {text!r}")
    return model, price


def load_prices(path: Path) -> dict[str, Price]:
    """Prices from a TOML or JSON file: ``{model: [in_per_1k, out_per_1k]}`` or
    ``{model: {input_per_1k = .., output_per_1k = ..}}``; raises ``ValueError``."""
    text = path.read_text()
    data: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a table of model prices")
    prices: dict[str, Price] = {}
    for model, value in data.items():
        if isinstance(value, list) and len(value) == 2:
            prices[model] = Price(float(value[0]), float(value[1]))
        elif isinstance(value, dict) and {"input_per_1k", "output_per_1k"} <= value.keys():
            prices[model] = Price(float(value["input_per_1k"]), float(value["output_per_1k"]))
        else:
            raise ValueError(f"{path}: the price of {model!r} must be [in_per_1k, out_per_1k]")
    return prices


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
    #: Cost of the whole run, in the unit of ``prices``.
    max_cost: float | None = None
    #: Price per model name (``*``: any other model).
    prices: Mapping[str, Price] = field(default_factory=dict)
    #: The model's context in tokens: an RLM whose history approaches it has its older turns
    #: summarised (``None``: never).
    context_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.max_depth < 1:
            raise ValueError("max_depth must be at least 1 (1: every rlm_query is a plain call)")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.context_tokens is not None and self.context_tokens < 64:
            raise ValueError("context_tokens must be at least 64")

    def price(self, model: str) -> Price | None:
        """The price of ``model``, or of ``*``, or ``None``."""
        return self.prices.get(model) or self.prices.get("*")


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
        #: Usage and cost split by model name (``--sub-model``, ``rlm_query(model=...)``).
        self.usage_by_model: dict[str, Usage] = {}
        self.cost_by_model: dict[str, float] = {}
        self.calls_started = 0
        self.tokens = 0
        self.cost = 0.0

    def start_call(self, model: str = "") -> None:
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
        limit_cost = self.limits.max_cost
        if limit_cost is not None:
            if self.limits.price(model) is None:
                raise BudgetExhausted(
                    "max_cost", f"no price for model {model!r}: give one with --price {model}=IN,OUT"
                )
            if self.cost >= limit_cost:
                raise BudgetExhausted("max_cost", f"cost budget spent: {self.cost:.4g} of {limit_cost:g}")
        self.calls_started += 1

    def record(self, usage: Usage, *, request_chars: int, reply_chars: int, model: str = "") -> float:
        """Add a finished call's usage (estimated from sizes when the server reported none);
        return its cost (0 without a price)."""
        self.usage = self.usage + usage
        self.usage_by_model[model] = self.usage_by_model.get(model, Usage()) + usage
        if usage.reported:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        else:
            prompt, completion = request_chars // 4, reply_chars // 4
        self.tokens += prompt + completion
        price = self.limits.price(model)
        cost = price.cost(prompt, completion) if price is not None else 0.0
        self.cost += cost
        self.cost_by_model[model] = self.cost_by_model.get(model, 0.0) + cost
        return cost
