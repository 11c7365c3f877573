"""One RLM's state (its session and conversation) and how an RLM ends."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ..llm.messages import ChatMessage
from ..session import Session
from ..tools import HostTool
from .budget import StopReason
from .call_burst import CallBurst
from .held_closes import HeldCloses
from .start import Soon

__all__ = ["MAX_STEPS_ANSWER", "RlmOutcome", "RlmState"]

#: What a child that ran out of steps returns to its parent's code (the seed's words).
MAX_STEPS_ANSWER: Final = "(max_steps reached before Final was set)"


@dataclass(frozen=True)
class RlmOutcome:
    """How one RLM ended: ``answer`` when ``stop_reason == "final"``, else ``detail`` says why.

    ``value`` is ``Final`` itself: the JSON value, or the typed value when an answer type was
    asked for.
    """

    answer: str | None
    stop_reason: StopReason
    detail: str = ""
    value: Any = None


@dataclass
class RlmState:
    """One RLM's session and conversation: the root's, or a child's, each its own.

    The engine keeps none of them: the task that runs an RLM holds its state (a conversation's
    root outlives a question).
    """

    id: str
    depth: int
    model: str | None
    tools: tuple[HostTool, ...]
    history: list[ChatMessage]
    #: Every message ever added, never compacted: the REPL's ``history`` after a compaction.
    transcript: list[ChatMessage]
    #: The first user message as first written (a compaction appends its summary to it).
    first_message: str
    #: The session, which may still be opening while the first model request is out.
    opening: Soon[Session] = field(default_factory=Soon)
    #: What the host bound in the namespace; bound again after the guest reset the session.
    bound: dict[str, Any] = field(default_factory=dict)
    #: Names bound to prompts the guest keeps (``PromptRef.ref``), likewise.
    bound_refs: dict[str, str] = field(default_factory=dict)
    #: Whether its ``rlm_query`` calls send prompts by reference (its children are RLMs).
    prompt_refs: bool = False
    step: int = 0
    summary: str = ""
    #: Messages of ``history`` already recorded in a ``ModelRequest``; ``None``: record all.
    recorded: int | None = None
    #: Tokens of the history as the server last counted them, and the history length then.
    reported_tokens: int | None = None
    reported_len: int = 0
    #: The call id of the RLM's latest model request.
    last_call: int = 0
    #: Prompt tokens the server counted for the last answered request, and the history length
    #: then (``None`` after the history was replaced).
    prompt_count: tuple[int, int] | None = None
    #: Its finished children's sessions, closed when its block ends (``engine.held_closes``).
    held_closes: HeldCloses = field(default_factory=HeldCloses)
    #: When its session last made a host call (``engine.call_burst``).
    burst: CallBurst = field(default_factory=CallBurst)
    #: A child's session waits in it for its parent's burst of calls to end; cancelled when
    #: the session is needed first (``session_now``).
    open_delay: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def session(self) -> Session:
        """The opened session (``await rlm.opening.wait()`` first when it may still be opening)."""
        session = self.opening.value
        if session is None:
            raise RuntimeError(f"RLM {self.id}'s session has not opened yet")
        return session

    async def session_now(self) -> Session:
        """The session, opened at once if it was waiting (``engine.call_burst``)."""
        self.open_delay.cancel()
        return await self.opening.wait()

    def append(self, message: ChatMessage) -> None:
        self.history.append(message)
        self.transcript.append(message)

    def restore(self, history: list[ChatMessage], steps: int) -> None:
        """Continue from ``history`` after ``steps`` steps (a resumed run): it is recorded
        anew with the next model request."""
        self.history = list(history)
        self.transcript = list(history)
        self.step = steps
        self.recorded = None
