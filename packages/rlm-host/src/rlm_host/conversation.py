"""Several questions in one REPL session: the embedding API's ``Conversation`` and ``rlm chat``.

The first question works like ``run_rlm(context, query=question)``: the task (question, then the
context) is bound as ``prompt``. Each later question is added to the same root history, and its
context, if any, is bound as a new variable ``context_<turn>``; every variable the code made in
earlier turns is still there. One trajectory records the whole conversation (a ``question`` event
starts each turn). Budgets are the run's: calls, tokens and cost add up over the turns; steps and
wall time count per question.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec

import trio

from .connection import GuestConnection
from .engine import RlmState, query_task
from .engine.prompts import question_message
from .errors import single_error
from .options import RunOptions
from .run_context import RunContext, RunResult, open_run_context
from .trajectory import Question

__all__ = ["Conversation"]

T = TypeVar("T")


class Conversation:
    """Questions answered one after another by one root RLM in one REPL session.

    Open it with ``Conversation.open`` (an async context manager); ``ask`` each question::

        async with Conversation.open(options=RunOptions.of(isolation="local")) as chat:
            first = await chat.ask("How many lines?", context=log_text)
            second = await chat.ask("And how many of them are errors?")
    """

    def __init__(self, run: RunContext, nursery: trio.Nursery) -> None:
        self._run = run
        #: Where the root's host calls are served (the conversation's own nursery).
        self._nursery = nursery
        self._root: RlmState | None = None
        self.turns = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, options: RunOptions = RunOptions(), *, connection: GuestConnection | None = None
    ) -> AsyncIterator[Conversation]:
        """Start the model client and the guest; the session opens with the first question."""
        try:
            async with open_run_context("", options, connection, kind="conversation") as run, trio.open_nursery() as nursery:
                conversation = cls(run, nursery)
                try:
                    yield conversation
                finally:
                    if conversation._root is not None:
                        await run.engine.close(conversation._root)
        except BaseExceptionGroup as group:
            raise single_error(group) from None

    @property
    def trajectory_path(self) -> Path | None:
        return self._run.path

    @overload
    async def ask(self, question: str, context: str | None = None, *, answer_type: None = None) -> RunResult[Any]: ...

    @overload
    async def ask(self, question: str, context: str | None = None, *, answer_type: type[T]) -> RunResult[T]: ...

    async def ask(self, question: str, context: str | None = None, *, answer_type: Any = None) -> RunResult[Any]:
        """Answer ``question`` (with ``context`` bound as a new variable) in the same session.

        Returns as ``run_rlm`` does; ``usage`` and ``cost`` are the conversation's so far.
        Raises what ``run_rlm`` raises; after such an error the conversation cannot go on.
        """
        engine = self._run.engine
        self.turns += 1
        turn = self.turns
        if self._root is None:
            task = query_task(question, context) if context is not None else question
            self._run.recorder.emit(Question(ts=time.time(), rlm="0", depth=0, turn=turn, question=question, variable="prompt"))
            self._root = await engine.open_root(task, self._nursery, answer_type=answer_type)
            outcome = await engine.ask(self._root, answer_type=answer_type)
        else:
            variable = f"context_{turn}" if context is not None else None
            # Binding also unsets the previous turn's Final (PROTOCOL.md, set_vars).
            await engine.bind(self._root, {variable: context} if variable is not None else {})
            self._run.recorder.emit(
                Question(ts=time.time(), rlm="0", depth=0, turn=turn, question=question, variable=variable)
            )
            schema = None if answer_type is None else msgspec.json.schema(answer_type)
            message = question_message(question, variable, context, schema)
            outcome = await engine.ask(self._root, message, answer_type=answer_type)
        return self._run.result(outcome)
