"""The trajectory of a run: one JSON line per event, flushed as it happens.

Events are frozen msgspec Structs in one tagged union (``event`` names the type), so the same
objects can feed a live event API later. Every event carries ``ts`` (Unix time, seconds) and the
``rlm`` id of the RLM it belongs to: the root is ``"0"``, its children ``"0.1"``, ``"0.2"``, ...,
so a trajectory can be read back as a tree. A crash loses nothing already written, because
each line is flushed before the engine goes on.

>>> import io
>>> sink = io.BytesIO()
>>> recorder = TrajectoryRecorder(sink)
>>> recorder.emit(FinalSet(ts=0.0, rlm="0", depth=0, step=1, answer="42"))
>>> sink.getvalue()
b'{"event":"final","step":1,"answer":"42","ts":0.0,"rlm":"0","depth":0}\\n'
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Union

import msgspec

from .llm.messages import Usage

__all__ = [
    "BlockRun",
    "BudgetStop",
    "ChildEnd",
    "ChildStart",
    "Compaction",
    "ContextOverflow",
    "ModelReady",
    "EngineError",
    "Event",
    "EventSink",
    "FinalSet",
    "Message",
    "ModelRequest",
    "ModelResponse",
    "Observation",
    "Question",
    "Resumed",
    "RunEnd",
    "RunStart",
    "ToolCall",
    "TrajectoryRecorder",
    "default_trajectory_path",
    "prompt_path",
    "read_trajectory",
]


class _Event(msgspec.Struct, frozen=True, tag_field="event", kw_only=True):
    """Base of every event: when, and which RLM of the tree."""

    ts: float
    rlm: str
    depth: int


class RunStart(_Event, frozen=True, tag="run_start"):
    """The run began: the prompt's size and the options that shape it."""

    run_id: str
    prompt_chars: int
    model: str
    api: str
    url: str
    options: dict[str, Any] = {}
    #: SHA-256 of the task text; the text itself is kept beside the trajectory
    #: (``prompt_path``) so that ``--resume`` can rebuild the REPL.
    prompt_sha256: str = ""
    #: The trajectory this run resumes, if it is a resumed run.
    resumed_from: str | None = None


class Message(msgspec.Struct, frozen=True):
    """One chat message as it was sent to the model."""

    role: str
    content: str


class ModelRequest(_Event, frozen=True, tag="model_request"):
    """A chat request is about to be sent (``call`` pairs it with its response)."""

    call: int
    step: int
    model: str
    messages: int
    #: Characters of all message contents: what the model is shown.
    request_chars: int
    #: ``"rlm"`` for a step of an RLM, ``"leaf"`` for a plain ``llm_query``/depth-limit call,
    #: ``"compact"`` for a summary of older turns.
    purpose: str = "rlm"
    #: The messages added to this RLM's history since its previous request (all of them for the
    #: first request), so that the history can be rebuilt from the trajectory (``--resume``).
    new_messages: tuple[Message, ...] = ()
    #: The history was replaced (compaction, resume): ``new_messages`` is the whole of it.
    rebased: bool = False


class ModelResponse(_Event, frozen=True, tag="model_response"):
    """The reply to ``ModelRequest`` with the same ``call``, or why it failed (``error``)."""

    call: int
    step: int
    duration: float
    content: str = ""
    usage: Usage = Usage()
    attempts: int = 1
    error: str | None = None
    #: What a reasoning model thought before ``content`` (its reasoning field, or an inline
    #: ``<think>`` block); not part of the history sent back.
    reasoning: str = ""


class BlockRun(_Event, frozen=True, tag="block"):
    """The code block that the model's reply asked to run."""

    step: int
    language: str
    code: str


class Observation(_Event, frozen=True, tag="observation"):
    """What went back to the model after a block (the message text) and how the block ended."""

    step: int
    content: str
    duration: float
    returncode: int | None = None
    error: str | None = None


class ChildStart(_Event, frozen=True, tag="child_start"):
    """A host call from ``parent`` started: a child RLM (``kind="rlm"``) or a leaf chat call."""

    parent: str
    kind: str
    method: str
    prompt_chars: int
    #: SHA-256 of the child's prompt: a replay (``--resume``) matches host calls by it.
    prompt_sha256: str = ""
    #: BLAKE2b-256 of a prompt that stayed in the guest (``prompt_in_guest``; the guest hashed
    #: it, and the host never had its text): a replay matches by it instead.
    prompt_blake2b: str = ""
    #: The prompt never left the guest (passed by reference, PROTOCOL.md 1.1 ``prompt_ref``).
    prompt_in_guest: bool = False


class ChildEnd(_Event, frozen=True, tag="child_end"):
    """A child ended; ``error`` is set when it failed (its parent's code got an error string)."""

    parent: str
    kind: str
    duration: float
    answer_chars: int = 0
    stop_reason: str = "final"
    error: str | None = None
    #: What the parent's code got back.
    answer: str | None = None


class ToolCall(_Event, frozen=True, tag="tool_call"):
    """Model code called a host tool; ``error`` is set when the call raised in the guest."""

    name: str
    duration: float
    #: SHA-256 of the call's JSON arguments (a replay matches calls by it).
    args_sha256: str = ""
    args_chars: int = 0
    result: Any = None
    error: str | None = None


class Compaction(_Event, frozen=True, tag="compaction"):
    """Older turns of an RLM were replaced by a model-written summary (``--context-tokens``)."""

    step: int
    messages_before: int
    messages_after: int
    #: The estimated tokens of the history that triggered it.
    tokens_before: int
    summary: str


class ModelReady(_Event, frozen=True, tag="model_ready"):
    """What the server said about a model at the start of a run, and the window chosen."""

    model: str
    #: The model's own maximum context, as the server reported it (``None``: not reported).
    context_length: int | None = None
    capabilities: tuple[str, ...] = ()
    #: The tokens histories are kept under (``None``: unknown until the server refuses).
    window: int | None = None
    #: Ollama ``options.num_ctx`` sent with every request.
    num_ctx: int | None = None
    think: bool | str | None = None


class ContextOverflow(_Event, frozen=True, tag="context_overflow"):
    """A request did not fit the model's window: the server refused it (``refused``, HTTP 400)
    or dropped its oldest messages (``truncated``: it counted ``reported_tokens`` prompt tokens
    for about ``sent_tokens`` sent). The history is compacted and the request sent again, up to
    the window learnt here; ``retry`` is false when nothing was left to compact."""

    step: int
    call: int
    kind: str
    sent_tokens: int
    reported_tokens: int | None = None
    #: The window the host works with from now on (the server's word, else its count).
    window: int | None = None
    detail: str = ""
    retry: bool = True


class Question(_Event, frozen=True, tag="question"):
    """A new question of a conversation (``Conversation.ask``, ``rlm chat``)."""

    turn: int
    question: str
    #: The REPL variable that holds this question's context, if it came with one.
    variable: str | None = None


class Resumed(_Event, frozen=True, tag="resumed"):
    """The REPL and history of an earlier run were restored; ``problems`` says what was not."""

    trajectory: str
    steps_replayed: int
    history_messages: int
    problems: tuple[str, ...] = ()


class FinalSet(_Event, frozen=True, tag="final"):
    """An RLM set a JSON-serializable ``Final``; ``answer`` is what it returns."""

    step: int
    answer: str


class BudgetStop(_Event, frozen=True, tag="budget_stop"):
    """A budget ended an RLM (``max_steps``) or the whole run (calls, tokens, wall time)."""

    reason: str
    detail: str


class EngineError(_Event, frozen=True, tag="error"):
    """An error that ended an RLM: model server down, guest died, ..."""

    error_type: str
    message: str


class RunEnd(_Event, frozen=True, tag="run_end"):
    """The run is over: how it stopped, what it cost."""

    stop_reason: str
    duration: float
    usage: Usage
    answer_chars: int = 0
    #: Cost from the user's prices (``--price``), when given.
    cost: float | None = None
    #: ``usage`` split by model (the root's, ``--sub-model``, models picked by code).
    usage_by_model: dict[str, Usage] = {}


Event = Union[
    RunStart,
    ModelRequest,
    ModelResponse,
    BlockRun,
    Observation,
    ChildStart,
    ChildEnd,
    FinalSet,
    BudgetStop,
    EngineError,
    RunEnd,
    ToolCall,
    Compaction,
    Question,
    Resumed,
    ContextOverflow,
    ModelReady,
]

#: Receives every event as it is recorded (live progress display, an event API).
EventSink = Callable[[Event], None]

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def prompt_path(trajectory: Path) -> Path:
    """Where the task text of the run recorded in ``trajectory`` is kept (``--resume``)."""
    return trajectory.with_name(trajectory.name + ".prompt.txt")


def default_trajectory_path(run_id: str, now: float | None = None) -> Path:
    """``${XDG_STATE_HOME:-~/.local/state}/rlm/trajectories/<timestamp>-<id>.jsonl``."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    return Path(state_home) / "rlm" / "trajectories" / f"{stamp}-{run_id}.jsonl"


def new_run_id() -> str:
    """A short random id, unique enough to name a run's files."""
    return secrets.token_hex(4)


class TrajectoryRecorder:
    """Writes events to a binary file, one JSON line each, and forwards them to ``sinks``.

    Writes are synchronous and small (one line): flushing each one is the point, so that the file
    is complete up to the moment of a crash. The recorder does not close a file it was given.
    """

    def __init__(self, file: IO[bytes] | None, sinks: Sequence[EventSink] = ()) -> None:
        self._file = file
        self._sinks = tuple(sinks)
        self.path: Path | None = None

    @classmethod
    def open(cls, path: Path, sinks: Sequence[EventSink] = ()) -> TrajectoryRecorder:
        """Create ``path`` (and its folders) and record into it; call ``close`` when done."""
        path.parent.mkdir(parents=True, exist_ok=True)
        recorder = cls(open(path, "wb"), sinks)
        recorder.path = path
        return recorder

    def emit(self, event: Event) -> None:
        """Record one event: write and flush its line, then tell each sink."""
        if self._file is not None:
            self._file.write(_encoder.encode(event) + b"\n")
            self._file.flush()
        for sink in self._sinks:
            sink(event)

    def close(self) -> None:
        """Close the file if this recorder opened it; idempotent."""
        if self.path is not None and self._file is not None:
            self._file.close()
            self._file = None


def read_trajectory(path: Path) -> list[Event]:
    """Decode a trajectory file back into events (tests, ``rlm`` tooling)."""
    with open(path, "rb") as file:
        return [_decoder.decode(line) for line in file if line.strip()]
