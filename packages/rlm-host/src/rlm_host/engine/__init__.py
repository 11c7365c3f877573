"""The RLM engine: the seed's loop with recursion, concurrency, budgets and a trajectory."""

from __future__ import annotations

from .blocks import CODE_BLOCK_PATTERN, CodeBlock, first_block
from .budget import BudgetExhausted, Limits, Price, RunMeter, StopReason, child_steps, load_prices, parse_price
from .prompts import (
    DEFAULT_TOOLS,
    NO_BLOCK_REPROMPT,
    metadata_message,
    observation_message,
    paper_brief_task,
    query_task,
    smoke_task,
    system_prompt,
)
from .replay import Replay
from .rlm import RlmEngine
from .start import Soon
from .state import MAX_STEPS_ANSWER, RlmOutcome, RlmState

__all__ = [
    "BudgetExhausted",
    "CODE_BLOCK_PATTERN",
    "CodeBlock",
    "DEFAULT_TOOLS",
    "Limits",
    "MAX_STEPS_ANSWER",
    "NO_BLOCK_REPROMPT",
    "Price",
    "Replay",
    "RlmEngine",
    "RlmOutcome",
    "RlmState",
    "RunMeter",
    "Soon",
    "StopReason",
    "child_steps",
    "first_block",
    "load_prices",
    "parse_price",
    "metadata_message",
    "observation_message",
    "paper_brief_task",
    "query_task",
    "smoke_task",
    "system_prompt",
]
