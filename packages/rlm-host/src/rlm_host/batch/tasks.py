"""The tasks of a batch: one JSON object per line of a ``.jsonl`` file.

A task line has an ``id`` (a string or an integer, unique in the file), the prompt as ``text``
or as ``file`` (a text file or a PDF, relative to the tasks file), an optional ``query`` (then
the prompt is its context), an optional ``expected`` answer (then the result is scored) and
optional ``options`` that override the batch's run options for this task (``PER_TASK_OPTIONS``)::

    {"id": "q1", "text": "The sky is green.", "query": "What colour is the sky?", "expected": "green"}
    {"id": "paper-7", "file": "papers/7.pdf", "options": {"max_steps": 30}}

>>> task = parse_task('{"id": 1, "text": "hello", "options": {"max_steps": 3}}')
>>> task.key, task.run_options(RunOptions()).limits.max_steps
('1', 3)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec

from ..options import RunOptions
from ..engine import paper_brief_task
from ..pdf import is_pdf, pdf_text

__all__ = ["PER_TASK_OPTIONS", "Task", "TaskError", "parse_task", "read_tasks"]

#: The ``RunOptions`` a task line may set for itself: what shapes one run's model and budgets.
#: Where the run executes (isolation, VM size, network) is the pool's, the same for every task.
PER_TASK_OPTIONS = frozenset({
    "model", "api", "llm_url", "stream", "llm_timeout", "llm_retries",
    "max_steps", "max_depth", "max_model_calls", "max_tokens", "max_seconds", "max_cost",
    "concurrency", "exec_timeout", "context_tokens",
    "think", "history_reasoning", "keep_alive", "sub_model", "sub_llm_url", "sub_api", "models",
})


class TaskError(ValueError):
    """A task line is malformed; the message names the line and what is wrong."""


class Task(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of a tasks file."""

    id: str | int
    text: str | None = None
    file: str | None = None
    query: str | None = None
    #: The expected answer (any JSON value); ``None``: the result is not scored.
    expected: Any = None
    options: dict[str, Any] = {}

    @property
    def key(self) -> str:
        """The id as a string: what results and ``--resume`` match on."""
        return str(self.id)

    def validate(self) -> None:
        """Raise ``TaskError`` unless exactly one of text/file is given and the options are known."""
        if (self.text is None) == (self.file is None):
            raise TaskError(f"task {self.key!r}: give exactly one of 'text' and 'file'")
        unknown = set(self.options) - PER_TASK_OPTIONS
        if unknown:
            raise TaskError(
                f"task {self.key!r}: unknown options {sorted(unknown)} (allowed: {sorted(PER_TASK_OPTIONS)})"
            )

    def run_options(self, base: RunOptions) -> RunOptions:
        """``base`` with this task's own options applied; ``TaskError`` if a value is invalid."""
        if not self.options:
            return base
        try:
            options = base.replace(**self.options)  # Limits checks the values (steps >= 1, ...)
        except (TypeError, ValueError) as error:
            raise TaskError(f"task {self.key!r}: bad options: {error}") from error
        return options

    def prompt(self, base_dir: Path) -> str:
        """The prompt text: ``text``, or ``file`` read (PDFs as text, relative to ``base_dir``).

        A PDF without a ``query`` becomes the seed's paper brief, as with ``rlm run``.
        Raises ``OSError`` when the file cannot be read, ``RlmError`` for a broken PDF.
        """
        if self.text is not None:
            return self.text
        assert self.file is not None
        path = Path(self.file).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if is_pdf(path):
            text = pdf_text(path)
            return paper_brief_task(text) if self.query is None else text
        return path.read_text(encoding="utf-8", errors="replace")


_decoder = msgspec.json.Decoder(Task)


def parse_task(line: str, where: str = "task") -> Task:
    """One task from its JSON line; ``TaskError`` when malformed."""
    try:
        task = _decoder.decode(line)
    except msgspec.DecodeError as error:
        raise TaskError(f"{where}: {error}") from error
    task.validate()
    return task


def read_tasks(path: Path) -> Iterator[Task]:
    """The tasks of ``path`` in order, checked whole first: every line valid and every id unique.

    Blank lines are skipped. Raises ``TaskError`` (with the line number) or ``OSError``.
    """
    tasks: list[Task] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            task = parse_task(line, f"{path}:{number}")
            if task.key in seen:
                raise TaskError(f"{path}:{number}: duplicate id {task.key!r}")
            seen.add(task.key)
            tasks.append(task)
    return iter(tasks)
