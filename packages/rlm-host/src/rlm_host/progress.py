"""Live progress of ``rlm run`` on a terminal: the tree of calls in flight, from trajectory events.

``Progress`` is an ``EventSink``: the engine's recorder calls it with every event, synchronously,
so what it draws is exactly what the trajectory says, with no hook in the engine. It keeps a
small state per RLM id (depth, kind, step, what it is doing, since when) and draws it with a rich
``Live`` as a tree: the root, under it the children in flight, under those theirs. A call leaves
the tree when it ends; notable events (a child that failed, a budget stop, the Final) are logged
above it and stay on the screen. Model and guest text is escaped, never read as rich markup.

On a console that is not a terminal ``Progress`` draws nothing (``rlm run`` does not even create
one then): stderr stays quiet for pipes and logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text
from rich.tree import Tree

from .trajectory import (
    BlockRun,
    BudgetStop,
    ChildEnd,
    ChildStart,
    Compaction,
    ContextOverflow,
    EngineError,
    Event,
    FinalSet,
    ModelReady,
    ModelRequest,
    ModelResponse,
    Observation,
    Question,
    Resumed,
    RunEnd,
    RunStart,
    ToolCall,
)

__all__ = ["Progress", "ProgressState"]

#: Children drawn under one parent; a batch of a hundred leaf calls must not push the root off
#: the screen, so the rest are counted in one line.
MAX_CHILDREN_SHOWN = 8

#: Redraws per second: enough for a seconds counter, cheap on two cores.
REFRESH_PER_SECOND = 4


@dataclass
class _Call:
    """One RLM or leaf call in flight."""

    id: str
    depth: int
    kind: str
    method: str
    started: float
    step: int = 0
    #: ``"starting"``, ``"model"`` (waiting for a reply) or ``"block"`` (code running).
    doing: str = "starting"
    since: float = 0.0


@dataclass
class ProgressState:
    """What the display knows: the calls in flight and the run's running totals."""

    steps: dict[str, int] = field(default_factory=dict)
    calls_in_flight: dict[str, _Call] = field(default_factory=dict)
    in_flight: int = 0
    tokens: int = 0
    calls: int = 0
    max_steps: int | None = None


class Progress:
    """The live display; use as a context manager around the run and pass it as ``on_event``.

    ``clock`` gives the seconds shown as elapsed (monotonic; events' own ``ts`` are wall-clock
    and only used in the trajectory).
    """

    def __init__(
        self, console: Console, *, clock: Callable[[], float] = time.monotonic, verbose: bool = False
    ) -> None:
        self.console = console
        #: Log each reply's reasoning, collapsed to one line (``rlm run --verbose``).
        self.verbose = verbose
        self.state = ProgressState()
        self._clock = clock
        self._started = clock()
        # Events arrive on the trio thread, redraws happen on rich's refresh thread.
        self._lock = threading.Lock()
        self._live: Live | None = None
        if console.is_terminal:
            self._live = Live(
                console=console,
                get_renderable=self.renderable,
                refresh_per_second=REFRESH_PER_SECOND,
                transient=True,
                # stdout carries the answer alone: never capture it into the display.
                redirect_stdout=False,
                redirect_stderr=False,
            )

    def __enter__(self) -> Progress:
        self._started = self._clock()
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.stop()

    # --- events ---------------------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        """Take one trajectory event (the ``EventSink`` signature)."""
        with self._lock:
            message = self._fold(event)
        if message is not None and self._live is not None:
            self.console.log(message)

    def _fold(self, event: Event) -> str | None:
        """Update the state; return a line to log (rich markup, text escaped) or ``None``."""
        state = self.state
        now = self._clock()
        match event:
            case RunStart():
                steps = event.options.get("max_steps")
                state.max_steps = steps if isinstance(steps, int) else None
                state.calls_in_flight["0"] = _Call("0", 0, "root", "", now, since=now)
                return escape(f"model {event.model} via {event.api} at {event.url}")
            case ChildStart():
                state.in_flight += 1
                state.calls_in_flight[event.rlm] = _Call(
                    event.rlm, event.depth, event.kind, event.method, now, since=now
                )
                return None
            case ModelRequest():
                state.steps[event.rlm] = event.step
                state.calls += 1
                self._doing(event.rlm, "model", now, step=event.step)
                return None
            case ModelResponse():
                state.tokens += event.usage.total_tokens
                if self.verbose and event.reasoning:
                    return f"[dim]{escape(event.rlm)} step {event.step} reasoning ({len(event.reasoning)} chars):[/] " + escape(
                        _collapsed(event.reasoning)
                    )
                return None
            case BlockRun():
                self._doing(event.rlm, "block", now, step=event.step)
                return None
            case Observation():
                return None
            case ChildEnd():
                state.in_flight -= 1
                state.calls_in_flight.pop(event.rlm, None)
                if event.error:
                    return f"[red]child {escape(event.rlm)} failed:[/] {escape(event.error)}"
                return None
            case BudgetStop():
                return f"[yellow]{escape(event.rlm)}: {escape(event.reason)}:[/] {escape(event.detail)}"
            case EngineError():
                return f"[red]{escape(event.rlm)}: {escape(event.error_type)}:[/] {escape(event.message)}"
            case FinalSet():
                return "[green]Final set" if event.depth == 0 else None
            case RunEnd():
                state.calls_in_flight.clear()
                return None
            case ToolCall():
                if event.error:
                    return f"[red]{escape(event.rlm)}: tool {escape(event.name)} failed:[/] {escape(event.error)}"
                return None
            case Compaction():
                return escape(
                    f"{event.rlm}: history compacted ({event.messages_before} -> "
                    f"{event.messages_after} messages, ~{event.tokens_before} tokens)"
                )
            case Question():
                state.calls_in_flight.setdefault("0", _Call("0", 0, "root", "", now, since=now))
                return escape(f"question {event.turn}: {event.question[:80]}")
            case Resumed():
                problems = f", {len(event.problems)} not restored" if event.problems else ""
                return escape(f"resumed {event.trajectory}: {event.steps_replayed} blocks replayed{problems}")
            case ModelReady():
                window = f"window {event.window} tokens" if event.window else "window unknown"
                sent = f" (num_ctx {event.num_ctx})" if event.num_ctx else ""
                reasons = ", reasons" if "thinking" in event.capabilities else ""
                return escape(f"{event.model}: {window}{sent}{reasons}")
            case ContextOverflow():
                action = "history compacted, request sent again" if event.retry else "cannot compact further"
                return "[yellow]" + escape(
                    f"{event.rlm}: request did not fit the window ({event.kind}, ~{event.sent_tokens} tokens "
                    f"sent, window {event.window}): {action}"
                ) + "[/]"
        return None

    def _doing(self, rlm: str, doing: str, now: float, *, step: int) -> None:
        call = self.state.calls_in_flight.get(rlm)
        if call is not None:
            call.doing, call.since, call.step = doing, now, step

    # --- drawing --------------------------------------------------------------------------

    def renderable(self) -> RenderableType:
        """The tree of calls in flight and a line of totals, as of now."""
        with self._lock:
            now = self._clock()
            state = self.state
            calls = sorted(state.calls_in_flight.values(), key=lambda call: _id_key(call.id))
            nodes: dict[str, Tree] = {}
            roots: list[Tree] = []
            hidden: dict[str, int] = {}
            for call in calls:
                parent_id = call.id.rpartition(".")[0]
                parent = nodes.get(parent_id)
                if parent is not None and len(parent.children) >= MAX_CHILDREN_SHOWN:
                    hidden[parent_id] = hidden.get(parent_id, 0) + 1
                    continue
                label = self._label(call, now)
                node = parent.add(label) if parent is not None else Tree(label)
                if parent is None:
                    roots.append(node)
                nodes[call.id] = node
            for parent_id, more in hidden.items():
                nodes[parent_id].add(Text(f"… and {more} more", style="dim"))
            totals = Text(
                f"{secs(now - self._started)} · model calls {state.calls} · tokens {state.tokens} · "
                f"children in flight {state.in_flight}",
                style="dim",
            )
        return Group(*roots, totals)

    def _label(self, call: _Call, now: float) -> Text:
        label = Text()
        label.append(call.id, style="bold")
        if call.kind == "root":
            label.append(" root")
        else:
            label.append(f" {call.method}" + (" (leaf)" if call.kind == "leaf" else ""), style="cyan")
        label.append(f" · depth {call.depth}")
        if call.kind != "leaf":
            of = f"/{self.state.max_steps}" if call.kind == "root" and self.state.max_steps else ""
            label.append(f" · step {call.step}{of}")
        doing = {"model": "waiting for the model", "block": "running its block"}.get(call.doing, "starting")
        label.append(f" · {doing} {secs(now - call.since)}", style="magenta" if call.doing == "model" else "yellow")
        label.append(f" · {secs(now - call.started)}", style="dim")
        return label


#: Characters of a reasoning shown in one progress line (``--verbose``).
REASONING_SHOWN = 160


def _collapsed(text: str) -> str:
    """A reasoning on one line, its start only.

    >>> _collapsed("First,\\n  look at the prompt.  Then...")
    'First, look at the prompt. Then...'
    """
    flat = " ".join(text.split())
    return flat if len(flat) <= REASONING_SHOWN else flat[: REASONING_SHOWN - 1] + "…"


def secs(seconds: float) -> str:
    """Elapsed time as the display shows it.

    >>> secs(3.14159), secs(125)
    ('3.1 s', '2 m 05 s')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} m {rest:02d} s"


def _id_key(rlm: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else 0 for part in rlm.split("."))
