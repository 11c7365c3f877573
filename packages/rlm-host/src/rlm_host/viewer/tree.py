"""From a flat list of trajectory events to the tree of RLM calls that the page draws.

The engine writes events as they happen, interleaved across concurrent RLMs; this module folds
them, in one pass, into one ``RlmView`` per RLM id (``"0"``, ``"0.1"``, ``"0.1.2"``...) with its
steps, and a ``RunView`` over all of them. Times are seconds since the run began, so the page
needs no clock arithmetic. It is pure (no I/O) and total: any prefix of a valid trajectory gives
a valid view, because a crashed run is exactly such a prefix. What never happened stays ``None``
(a model call with no reply is *in flight*, not *zero seconds long*).

Which step spawned a child is not in the child's events; it is the parent's step whose block was
running when the child started (host calls only come from running code). Children of one step
whose lifetimes overlap were batched (``rlm_query_batched``) or otherwise concurrent; the page
draws each such group side by side.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from ..llm.messages import Usage
from ..trajectory import (
    BlockRun,
    BudgetStop,
    ChildEnd,
    ChildStart,
    Compaction,
    ContextOverflow,
    EngineError,
    Event,
    FinalSet,
    ModelRequest,
    ModelResponse,
    Observation,
    RunEnd,
    RunStart,
)

__all__ = ["Notice", "RlmView", "RunView", "StepView", "build_view"]


class Notice(msgspec.Struct, kw_only=True):
    """A budget stop or an error of one RLM, when it happened."""

    kind: str
    title: str
    detail: str
    at: float


class StepView(msgspec.Struct, kw_only=True):
    """One step of an RLM: a model call, then (usually) a block and what came of it."""

    step: int
    model_start: float | None = None
    model_end: float | None = None
    model_duration: float | None = None
    request_chars: int | None = None
    messages: int | None = None
    attempts: int = 1
    usage: Usage | None = None
    #: The model's whole reply (prose and the fenced block), its answer only.
    reply: str | None = None
    #: What a reasoning model thought before the reply (shown collapsed).
    reasoning: str | None = None
    #: The model the request named.
    model: str | None = None
    model_error: str | None = None
    language: str | None = None
    code: str | None = None
    block_start: float | None = None
    block_end: float | None = None
    block_duration: float | None = None
    #: The observation message the model got back (its metadata, as JSON text).
    observation: str | None = None
    returncode: int | None = None
    error: str | None = None
    final: str | None = None
    #: Children started by this step's block, in groups that ran concurrently.
    batches: list[list[str]] = []


class RlmView(msgspec.Struct, kw_only=True):
    """One RLM (or leaf chat call) of the tree and everything that happened in it."""

    id: str
    parent: str | None
    depth: int
    #: ``"root"``, ``"rlm"`` (a child RLM) or ``"leaf"`` (a plain chat call).
    kind: str
    method: str | None = None
    prompt_chars: int | None = None
    start: float | None = None
    end: float | None = None
    #: ``"final"``, a budget's name, ``"error"``, or ``"running"`` when the trajectory stops first.
    status: str = "running"
    answer_chars: int | None = None
    final: str | None = None
    steps: list[StepView] = []
    notices: list[Notice] = []
    children: list[str] = []
    usage: Usage = Usage()
    #: The model of this RLM's requests (the last one, if it changed).
    model: str | None = None
    model_seconds: float = 0.0
    block_seconds: float = 0.0


class RunView(msgspec.Struct, kw_only=True):
    """The whole run as the page shows it; ``rlms`` is in depth-first tree order."""

    run_id: str | None = None
    model: str | None = None
    api: str | None = None
    url: str | None = None
    options: dict[str, object] = {}
    prompt_chars: int | None = None
    #: Unix time of the first event (the page shows it as a date).
    started_at: float | None = None
    duration: float | None = None
    stop_reason: str | None = None
    usage: Usage | None = None
    #: Usage per model (from the requests, summed as the page loads; ``run_end``'s when given).
    usage_by_model: dict[str, Usage] = {}
    answer_chars: int | None = None
    #: False when ``run_end`` is missing: the run crashed or is still going.
    complete: bool = False
    problems: list[str] = []
    rlms: list[RlmView] = []
    source: str = ""


class _Builder:
    """The one-pass fold of ``build_view``; state kept per RLM id."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.rlms: dict[str, RlmView] = {}
        self.steps: dict[tuple[str, int], StepView] = {}
        self.run = RunView()
        #: The model of each request, by (rlm, call), for its response's usage.
        self.models: dict[tuple[str, int], str] = {}

    def at(self, ts: float) -> float:
        return round(ts - self.origin, 6)

    def rlm(self, event: Event) -> RlmView:
        view = self.rlms.get(event.rlm)
        if view is None:
            # An RLM seen before its start event: the root (whose start is ``run_start``), or
            # a trajectory whose first lines are missing.
            parent = event.rlm.rpartition(".")[0] or None
            view = RlmView(
                id=event.rlm,
                parent=parent,
                depth=event.depth,
                kind="root" if parent is None else "rlm",
                start=self.at(event.ts),
            )
            self.rlms[event.rlm] = view
            if parent is not None:
                self.parent_of(view).children.append(view.id)
        return view

    def parent_of(self, view: RlmView) -> RlmView:
        assert view.parent is not None
        parent = self.rlms.get(view.parent)
        if parent is None:
            parent = RlmView(
                id=view.parent,
                parent=view.parent.rpartition(".")[0] or None,
                depth=max(view.depth - 1, 0),
                kind="root" if "." not in view.parent else "rlm",
            )
            self.rlms[parent.id] = parent
            if parent.parent is not None:
                self.parent_of(parent).children.append(parent.id)
        return parent

    def step(self, view: RlmView, number: int) -> StepView:
        key = (view.id, number)
        step = self.steps.get(key)
        if step is None:
            step = StepView(step=number)
            self.steps[key] = step
            view.steps.append(step)
        return step

    def fold(self, event: Event) -> None:
        """Apply one event; dispatch is by event type, one case each."""
        match event:
            case RunStart():
                run = self.run
                run.run_id, run.model, run.api, run.url = event.run_id, event.model, event.api, event.url
                run.options, run.prompt_chars = dict(event.options), event.prompt_chars
                root = self.rlm(event)
                root.prompt_chars = event.prompt_chars
            case ChildStart():
                view = self.rlm(event)
                view.kind, view.method, view.prompt_chars = event.kind, event.method, event.prompt_chars
                view.start = self.at(event.ts)
            case ModelRequest():
                view = self.rlm(event)
                step = self.step(view, event.step)
                step.model_start, step.request_chars, step.messages = (
                    self.at(event.ts), event.request_chars, event.messages
                )
                step.model = view.model = event.model
                self.models[(event.rlm, event.call)] = event.model
            case ModelResponse():
                view = self.rlm(event)
                step = self.step(view, event.step)
                step.model_end, step.model_duration = self.at(event.ts), event.duration
                step.attempts, step.model_error = event.attempts, event.error
                if event.error is None:
                    step.reply, step.usage = event.content, event.usage
                    step.reasoning = event.reasoning or None
                    view.usage = view.usage + event.usage
                    model = self.models.get((event.rlm, event.call), "?")
                    by_model = self.run.usage_by_model
                    by_model[model] = by_model.get(model, Usage()) + event.usage
                view.model_seconds += event.duration
                if step.model_start is None:
                    step.model_start = round(step.model_end - event.duration, 6)
                if view.kind == "leaf" and event.error is None:
                    # A leaf's answer is its one reply.
                    view.final = event.content
            case BlockRun():
                step = self.step(self.rlm(event), event.step)
                step.language, step.code, step.block_start = event.language, event.code, self.at(event.ts)
            case Observation():
                view = self.rlm(event)
                step = self.step(view, event.step)
                step.observation, step.returncode, step.error = event.content, event.returncode, event.error
                step.block_end, step.block_duration = self.at(event.ts), event.duration
                view.block_seconds += event.duration
            case FinalSet():
                view = self.rlm(event)
                step = self.step(view, event.step)
                step.final, view.final, view.status = event.answer, event.answer, "final"
                step.block_end = self.at(event.ts)
                if step.block_start is not None:
                    # The guest reports no duration with a Final: the wall time is as good.
                    step.block_duration = round(step.block_end - step.block_start, 6)
                    view.block_seconds += step.block_duration
            case ChildEnd():
                view = self.rlm(event)
                view.end, view.answer_chars = self.at(event.ts), event.answer_chars
                view.status = "error" if event.error else event.stop_reason
                if event.error:
                    view.notices.append(
                        Notice(kind="error", title="child failed", detail=event.error, at=view.end)
                    )
            case BudgetStop():
                view = self.rlm(event)
                view.status = event.reason
                view.notices.append(
                    Notice(kind="budget", title=event.reason, detail=event.detail, at=self.at(event.ts))
                )
            case EngineError():
                view = self.rlm(event)
                view.status = "error"
                view.notices.append(
                    Notice(kind="error", title=event.error_type, detail=event.message, at=self.at(event.ts))
                )
            case ContextOverflow():
                view = self.rlm(event)
                action = "history compacted, request sent again" if event.retry else "nothing left to compact"
                view.notices.append(
                    Notice(
                        kind="context", title=f"window exceeded ({event.kind})",
                        detail=f"~{event.sent_tokens} tokens sent, window {event.window}: {action}. {event.detail}",
                        at=self.at(event.ts),
                    )
                )
            case Compaction():
                view = self.rlm(event)
                view.notices.append(
                    Notice(
                        kind="context", title="history compacted",
                        detail=f"{event.messages_before} -> {event.messages_after} messages, ~{event.tokens_before} tokens before",
                        at=self.at(event.ts),
                    )
                )
            case RunEnd():
                run = self.run
                run.complete, run.stop_reason, run.duration = True, event.stop_reason, event.duration
                run.usage, run.answer_chars = event.usage, event.answer_chars
                if event.usage_by_model:
                    run.usage_by_model = dict(event.usage_by_model)
                root = self.rlm(event)
                root.end = self.at(event.ts)
                if root.status == "running":
                    root.status = event.stop_reason

    def finish(self) -> RunView:
        """Attach children to the steps that spawned them and order the RLMs as a tree."""
        for view in self.rlms.values():
            self._attach_children(view)
        ordered: list[RlmView] = []
        roots = sorted((v for v in self.rlms.values() if v.parent is None), key=lambda v: _id_key(v.id))
        stack = list(reversed(roots))
        while stack:
            view = stack.pop()
            ordered.append(view)
            view.children.sort(key=_id_key)
            stack.extend(self.rlms[child] for child in reversed(view.children))
        self.run.rlms = ordered
        if self.run.duration is None and ordered:
            # No run_end: the run lasted at least until its last recorded event.
            self.run.duration = max(
                (t for v in ordered for t in _times(v) if t is not None), default=0.0
            )
        return self.run

    def _attach_children(self, view: RlmView) -> None:
        steps = sorted(view.steps, key=lambda s: s.step)
        view.steps = steps
        by_step: dict[int, list[RlmView]] = {}
        for child_id in view.children:
            child = self.rlms[child_id]
            owner = _spawning_step(steps, child.start)
            by_step.setdefault(owner.step if owner else 0, []).append(child)
        for number, children in by_step.items():
            batches = _concurrent_groups(children)
            step = next((s for s in steps if s.step == number), None)
            if step is None:
                # The trajectory lost the parent's step (its first lines are missing): keep the
                # children visible under a step 0.
                step = self.step(view, 0)
                view.steps.sort(key=lambda s: s.step)
            step.batches = batches


def _id_key(rlm: str) -> tuple[int, ...]:
    """``"0.10"`` sorts after ``"0.9"``."""
    return tuple(int(part) if part.isdigit() else 0 for part in rlm.split("."))


def _times(view: RlmView) -> list[float | None]:
    times: list[float | None] = [view.start, view.end]
    for step in view.steps:
        times += [step.model_start, step.model_end, step.block_start, step.block_end]
    return times


def _spawning_step(steps: list[StepView], start: float | None) -> StepView | None:
    """The last step whose block had started when the child did."""
    owner: StepView | None = None
    for step in steps:
        if step.block_start is not None and start is not None and step.block_start <= start:
            owner = step
    return owner


def _concurrent_groups(children: list[RlmView]) -> list[list[str]]:
    """Children in start order, grouped where their lifetimes overlap (unfinished: open-ended)."""
    groups: list[list[str]] = []
    group_end = float("-inf")
    for child in sorted(children, key=lambda c: (c.start or 0.0, _id_key(c.id))):
        start = child.start if child.start is not None else float("inf")
        end = child.end if child.end is not None else float("inf")
        if groups and start < group_end:
            groups[-1].append(child.id)
            group_end = max(group_end, end)
        else:
            groups.append([child.id])
            group_end = end
    return groups


def build_view(events: Sequence[Event], problems: Sequence[str] = (), source: str = "") -> RunView:
    """Fold ``events`` (in file order) into the run's tree; see the module docstring.

    ``problems`` (from ``load.decode_lines``) and ``source`` (the file's name) are passed through
    to the page.
    """
    origin = events[0].ts if events else 0.0
    builder = _Builder(origin)
    for event in events:
        builder.fold(event)
    run = builder.finish()
    run.started_at = origin if events else None
    run.problems = list(problems)
    if events and not run.complete:
        run.problems.append("no run_end event: the run crashed, was killed, or is still running")
    run.source = source
    return run
