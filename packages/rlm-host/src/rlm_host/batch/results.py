"""Results of a batch: one JSON line per task, appended and flushed as each task finishes.

A result line::

    {"id": "q1", "status": "ok", "answer": "green", "reason": null, "stop_reason": "final",
     "usage": {"prompt_tokens": 812, "completion_tokens": 40, "total_tokens": 852, "calls": 2,
               "cost": null},
     "usage_by_model": {"qwen3.6": {"prompt_tokens": 812, ...}},
     "wall_time": 3.1, "trajectory": ".../q1.jsonl", "attempts": 1, "worker": "w0",
     "score": 1.0, "scores": {"exact": 1.0, "normalised": 1.0}}

``status`` is ``ok`` (the run set ``Final``), ``budget_stop`` (a budget ended it first;
``stop_reason`` says which and ``reason`` why) or ``error`` (``reason`` says what failed).

The file is the batch's state: a killed batch has lost at most the lines being written, and
``--resume`` skips every id already in it (``ResultsFile.done``). A last line cut off by a kill
is dropped when the file is reopened, so the file stays one JSON object per line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import msgspec

__all__ = ["ResultsFile", "Status", "Summary", "TaskResult", "TokenUsage", "read_results"]

Status = Literal["ok", "budget_stop", "error"]


class TokenUsage(msgspec.Struct, frozen=True):
    """Model usage of one task: every attempt's, a retried task's failed ones included.

    >>> TokenUsage(1, 2, 3, 1) + TokenUsage(10, 20, 30, 1, cost=0.5)
    TokenUsage(prompt_tokens=11, completion_tokens=22, total_tokens=33, calls=2, cost=0.5)
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    calls: int = 0
    #: What the calls cost at the run's prices (``None`` when no price was given).
    cost: float | None = None

    def __add__(self, other: TokenUsage) -> TokenUsage:
        costs = [cost for cost in (self.cost, other.cost) if cost is not None]
        return TokenUsage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            calls=self.calls + other.calls,
            cost=sum(costs) if costs else None,
        )


class TaskResult(msgspec.Struct, frozen=True):
    """What one task came to; see the module docstring for the line it becomes."""

    id: str | int
    status: Status
    answer: str | None = None
    reason: str | None = None
    stop_reason: str | None = None
    usage: TokenUsage = TokenUsage()
    #: ``usage`` split by model (the root's, ``sub_model``, models picked by code).
    usage_by_model: dict[str, TokenUsage] = {}
    wall_time: float = 0.0
    trajectory: str | None = None
    attempts: int = 1
    worker: str | None = None
    #: The batch scorer's score (``None`` without ``expected``), and every built-in score.
    score: float | None = None
    scores: dict[str, float] = {}

    @property
    def key(self) -> str:
        return str(self.id)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskResult)


def read_results(path: Path) -> list[TaskResult]:
    """The complete result lines of ``path`` (a cut-off or malformed line is skipped)."""
    results: list[TaskResult] = []
    if not path.exists():
        return results
    for line in path.read_bytes().splitlines():
        try:
            results.append(_decoder.decode(line))
        except msgspec.DecodeError:
            continue
    return results


class ResultsFile:
    """The results file, opened for appending; each ``write`` is one flushed line.

    ``resume=False`` starts the file afresh; ``resume=True`` keeps its lines (``done`` lists
    their ids) and first cuts a last line that a kill left without its newline.
    """

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.done: set[str] = set()
        if resume and path.exists():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                with path.open("r+b") as cut:
                    cut.truncate(end)
            self.done = {result.key for result in read_results(path)}
        self._file = path.open("ab" if resume else "wb")

    def write(self, result: TaskResult) -> None:
        """Append ``result`` as one line and push it to the disk: a kill after this loses nothing."""
        self._file.write(_encoder.encode(result) + b"\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(result.key)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Summary(msgspec.Struct):
    """Totals of a batch run: counts by status, accuracy over scored tasks, tokens, speed."""

    tasks: int = 0
    by_status: dict[str, int] = {}
    scored: int = 0
    #: Mean score of the scored tasks (``None`` when none had ``expected``).
    accuracy: float | None = None
    total_tokens: int = 0
    model_calls: int = 0
    #: What the tasks cost at the given prices (``None`` when no price was given).
    cost: float | None = None
    retried: int = 0
    wall_time: float = 0.0
    tasks_per_minute: float = 0.0
    skipped: int = 0

    @classmethod
    def of(cls, results: Iterable[TaskResult], *, wall_time: float, skipped: int = 0) -> Summary:
        """The summary of ``results`` finished in ``wall_time`` seconds (``skipped``: resumed)."""
        listed = list(results)
        scores = [r.score for r in listed if r.score is not None]
        costs = [r.usage.cost for r in listed if r.usage.cost is not None]
        return cls(
            tasks=len(listed),
            by_status=dict(Counter(r.status for r in listed)),
            scored=len(scores),
            accuracy=round(sum(scores) / len(scores), 4) if scores else None,
            total_tokens=sum(r.usage.total_tokens for r in listed),
            model_calls=sum(r.usage.calls for r in listed),
            cost=round(sum(costs), 6) if costs else None,
            retried=sum(1 for r in listed if r.attempts > 1),
            wall_time=round(wall_time, 3),
            tasks_per_minute=round(60 * len(listed) / wall_time, 2) if wall_time > 0 else 0.0,
            skipped=skipped,
        )

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result
