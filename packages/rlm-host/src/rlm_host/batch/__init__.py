"""``rlm batch``: many RLM tasks over a pool of guests, on this machine or on a Ray cluster.

- ``tasks``: the task file (one JSON object per line) and per-task options;
- ``results``: the result lines, the append-and-flush results file, the summary;
- ``scoring``: exact and normalised match, or ``module:function``;
- ``worker``: one guest serving several tasks at once, replaced when a task kills it;
- ``local`` and ``ray_engine``: the two engines (``ray_actor``: a Ray actor of the batch);
  ``run``: ``open_batch`` / ``run_batch``.
"""

from __future__ import annotations

from .options import BatchOptions
from .results import ResultsFile, Status, Summary, TaskResult, TokenUsage, read_results
from .run import BatchRun, open_batch, pending, run_batch
from .scoring import BUILTIN_SCORERS, Scorer, exact, load_scorer, normalise, normalised
from .tasks import PER_TASK_OPTIONS, Task, TaskError, parse_task, read_tasks
from .worker import GuestWorker, WorkerError

__all__ = [
    "BUILTIN_SCORERS",
    "BatchOptions",
    "BatchRun",
    "GuestWorker",
    "PER_TASK_OPTIONS",
    "ResultsFile",
    "Scorer",
    "Status",
    "Summary",
    "Task",
    "TaskError",
    "TaskResult",
    "TokenUsage",
    "WorkerError",
    "exact",
    "load_scorer",
    "normalise",
    "normalised",
    "open_batch",
    "parse_task",
    "pending",
    "read_results",
    "read_tasks",
    "run_batch",
]
