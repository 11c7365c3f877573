"""The RLM loop of the seed, on trio: one engine per run, one RLM per guest session.

An RLM is a conversation with the model whose replies run as code in a guest session holding
``prompt``. Host calls from that code (``rlm_query``, ``llm_query`` and their batched forms)
arrive through the session (``Session.host_calls``) and each RLM serves its own, in a nursery
it owns; each becomes a child RLM in a new session of the same guest (depth + 1) or a plain
chat call (``engine.children``). Every model request of the run passes one
``trio.CapacityLimiter`` (``engine.recording``), so batched calls run concurrently up to
``Limits.concurrency``.

The pieces: ``engine.steps`` (the step loop), ``engine.compaction`` (pure), ``engine.children``
(host calls and children), ``engine.start`` (the first model request overlapping the start of
the guest and session), ``engine.recording`` (model calls), ``engine.replay`` (``--resume``).
This module puts them together.

Beyond the seed: host tools (``rlm_host.tools``) are defined in every session and served by the
host call ``tool``; the root may be asked several questions in one session (``open_root`` /
``ask``, the conversation API); a history that approaches ``Limits.context_tokens`` has its older
turns summarised; a typed ``Final`` is checked on the host; and a resumed run continues a root
rebuilt from its trajectory (``open_root`` with a ``Replay`` filter, then ``RlmState.restore``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import msgspec
import trio

from rlm_protocol import PromptRef, ref_metadata

from ..connection import GuestConnection
from ..errors import RlmError
from ..host_calls import HostCallHandler, serve_host_calls
from ..llm.messages import DeltaCallback
from ..llm.model import ChatModel
from ..session import Session
from ..tools import HostTool, stub_code, tools_prompt
from ..trajectory import EngineError, TrajectoryRecorder
from .budget import Limits, RunMeter
from .call_burst import CallBurst
from .children import Children, Parent
from .held_closes import HeldCloses
from .prompts import DEFAULT_TOOLS, metadata_message, models_prompt, system_prompt
from .recording import ModelCalls
from .replay import Replay
from .repl import Repl, bash_metadata_message, bash_system_prompt
from .start import Soon, make, overlapped
from .state import RlmOutcome, RlmState
from .steps import StepLoop

__all__ = ["RlmEngine"]

#: Closing a session after a cancelled run must not hang the shutdown on a stuck guest.
_CLOSE_GRACE_SECONDS: Final = 5.0


class RlmEngine:
    """Runs RLMs for one run against one guest connection and a ``ChatModel`` (``clients``:
    more, for sub-models on other servers).

    ``run`` is the root; children are started by host calls. The engine owns neither the
    connection nor the client: the caller opens and closes them (``rlm_host.api`` does).
    ``connection`` may still be starting (a ``Soon``): the first model request does not wait.
    """

    def __init__(
        self,
        *,
        connection: GuestConnection | Soon[GuestConnection],
        client: ChatModel,
        recorder: TrajectoryRecorder,
        limits: Limits = Limits(),
        tools: Sequence[str] = DEFAULT_TOOLS,
        host_tools: Sequence[HostTool] = (),
        exec_timeout: float | None = None,
        on_delta: DeltaCallback | None = None,
        history_reasoning: bool = False,
        detect_truncation: bool = True,
        sub_model: str | None = None,
        clients: Mapping[str, ChatModel] | None = None,
        models: Sequence[str] = (),
        repl: Repl = "python",
        windows: Mapping[str, int] | None = None,
    ) -> None:
        self.connection = connection
        #: The guest's REPL (``engine.repl``): bash only for a guest without Python.
        self.repl: Repl = repl
        self.client = client
        #: The model of ``llm_query`` and of children that name none (``None``: the root's).
        self.sub_model = sub_model
        extra = dict(clients or {})
        #: The models ``rlm_query(..., model=...)`` may name: the root's, the sub-model, and
        #: the ones the user allowed.
        self.allowed_models = frozenset(
            {client.config.model, *([sub_model] if sub_model else []), *models, *extra}
        )
        self.recorder = recorder
        self.limits = limits
        self.meter = RunMeter(limits)
        self.host_tools = tuple(host_tools)
        self._guest_tools = tuple(tools)
        self._system_prompts: dict[tuple[str, ...], str] = {}
        self.calls = ModelCalls(client, extra, recorder, self.meter, limits.concurrency, on_delta)
        self.steps = StepLoop(
            self.calls, recorder, repl=repl, exec_timeout=exec_timeout, history_reasoning=history_reasoning,
            detect_truncation=detect_truncation, prepare=self._prepare,
        )
        if limits.context_tokens is not None:
            self.steps.windows[client.config.model] = limits.context_tokens
        self.steps.windows.update(windows or {})
        self.children = Children(self.calls, recorder, limits, self.allowed_models, sub_model, self._solve)

    @property
    def windows(self) -> dict[str, int]:
        """The window the host keeps histories under, per model (learnt as the run goes)."""
        return self.steps.windows

    def _system_prompt(self, tools: Sequence[HostTool]) -> str:
        key = tuple(tool.name for tool in tools)
        if key not in self._system_prompts:
            if self.repl == "bash":
                self._system_prompts[key] = bash_system_prompt(self._guest_tools)
            else:
                extra = "\n".join(
                    part
                    for part in (
                        tools_prompt(tools),
                        models_prompt(sorted(self.allowed_models), self.sub_model or self.client.config.model),
                    )
                    if part
                )
                self._system_prompts[key] = system_prompt(self._guest_tools, extra)
        return self._system_prompts[key]

    # --- the root ---------------------------------------------------------------------------

    def _root(self, prompt: str, answer_type: Any) -> tuple[RlmState, Parent]:
        root = self._new_rlm(prompt, rlm="0", depth=0, model=None, tools=self.host_tools, answer_type=answer_type)
        return root, Parent("0", 0, self.limits.max_steps, None, self.host_tools, root.held_closes, root.burst)

    async def run(self, prompt: str, *, answer_type: Any = None) -> RlmOutcome:
        """Run the root RLM on ``prompt`` until ``Final`` or a budget; see ``RlmOutcome``.

        With ``answer_type``, ``Final`` must convert to it (``msgspec.convert``); a mismatch is
        an observation and the run goes on. Raises what ends the run without an answer
        (``ModelError``, ``GuestError``), after recording it in the trajectory.

        The first model request goes out while the guest starts and the prompt is bound
        (``rlm_host.engine.start``); the wall-time budget counts from the start.
        """
        root, parent = self._root(prompt, answer_type)
        return await self._overlapped(
            root, self.children.handler(parent), lambda: self.ask(root, answer_type=answer_type), held=None,
            after=None,
        )

    async def open_root(
        self,
        prompt: str,
        nursery: trio.Nursery,
        *,
        answer_type: Any = None,
        replay: Replay | None = None,
        prompt_refs: bool = True,
    ) -> RlmState:
        """Open the root's session with ``prompt`` bound; ``ask`` runs its steps, ``close``
        closes it.

        The root's host calls are served in ``nursery`` (the caller's: the caller owns that
        task, which ends when the session closes). ``replay`` (an ``engine.replay.Replay``)
        answers them from a recording while it is active. ``prompt_refs=False``: the root's
        ``rlm_query`` calls send their text (a replay matches them with answers recorded by
        either digest)."""
        root, parent = self._root(prompt, answer_type)
        root.prompt_refs = root.prompt_refs and prompt_refs
        handler = self.children.handler(parent)
        if replay is not None:
            handler = replay.filter(handler)
        await make(root.opening, lambda: self._open_session(root, handler, nursery), f"RLM {root.id}")
        try:
            await root.opening.wait()
        except BaseException:
            await self.close(root)
            raise
        return root

    async def ask(self, root: RlmState, message: str | None = None, *, answer_type: Any = None) -> RlmOutcome:
        """Run the root's steps until ``Final`` or a budget, after adding ``message`` (a new
        question) to its history. The wall-time budget counts from here."""
        if message is not None:
            root.append({"role": "user", "content": message})
        with trio.move_on_after(self.limits.max_seconds or float("inf")) as deadline:
            return await self.steps.guarded(root, self.limits.max_steps, answer_type)
        detail = f"wall-time budget spent: {self.limits.max_seconds} s"
        assert deadline.cancelled_caught
        self.steps.emit_stop(root.id, root.depth, "wall_time", detail)
        return RlmOutcome(None, "wall_time", detail)

    async def bind(self, rlm: RlmState, values: dict[str, Any]) -> None:
        """Bind ``values`` in the RLM's namespace (and again after a session reset)."""
        rlm.bound.update(values)
        await rlm.session.set_vars(values)

    async def rebind(self, rlm: RlmState) -> None:
        """Bind the host's variables and define the tools again (after a session reset)."""
        await self._prepare(rlm, rlm.session)

    async def close(self, rlm: RlmState) -> None:
        """Close the RLM's session (shielded and bounded: it runs after cancellations too).

        A session still opening is cancelled first; what the guest had opened is closed, and
        so are its children's sessions still held.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE_SECONDS):
            await rlm.held_closes.end()
            opening = rlm.opening
            if not opening.done:
                opening.scope.cancel()
                await opening.settled()
            if opening.value is not None:
                await opening.value.close()

    # --- one RLM ----------------------------------------------------------------------------

    def _new_rlm(
        self,
        prompt: str | PromptRef,
        *,
        rlm: str,
        depth: int,
        model: str | None,
        tools: tuple[HostTool, ...],
        answer_type: Any = None,
    ) -> RlmState:
        """An RLM whose history is ready for its first model request; its session is not open."""
        shown = ref_metadata(prompt) if isinstance(prompt, PromptRef) else prompt
        first = (bash_metadata_message if self.repl == "bash" else metadata_message)(
            shown, None if answer_type is None else msgspec.json.schema(answer_type)
        )
        state = RlmState(
            id=rlm,
            depth=depth,
            model=model,
            tools=tools,
            history=[],
            transcript=[],
            first_message=first,
            bound={} if isinstance(prompt, PromptRef) else {"prompt": prompt},
            bound_refs={"prompt": prompt.ref} if isinstance(prompt, PromptRef) else {},
            # Only where its rlm_query calls become child RLMs: a leaf call needs the text here.
            prompt_refs=depth + 1 < self.limits.max_depth,
        )
        state.append({"role": "system", "content": self._system_prompt(tools)})
        state.append({"role": "user", "content": first})
        return state

    async def _open_session(
        self, state: RlmState, handler: HostCallHandler, nursery: trio.Nursery, after: CallBurst | None = None
    ) -> Session:
        """Open the RLM's session (once ``after`` went quiet, or its steps need it), serve its
        host calls in ``nursery`` and bind its variables."""
        if after is not None:
            with state.open_delay:
                await after.quiet()
        connection = self.connection
        if isinstance(connection, Soon):
            connection = await connection.wait()
        session = await connection.open_session(host_calls=True, prompt_refs=state.prompt_refs)
        nursery.start_soon(serve_host_calls, session, handler)
        try:
            await self._prepare(state, session)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE_SECONDS):
                await session.close()
            raise
        return session

    async def _prepare(self, state: RlmState, session: Session) -> None:
        """Bind the host's variables and define the tools (at start and after a reset)."""
        if state.bound or not state.bound_refs:
            await session.set_vars(state.bound)
        if state.bound_refs:
            await session.bind_refs(state.bound_refs)
        if state.tools:
            result = await session.exec(stub_code(state.tools))
            if result.error is not None:
                raise RlmError(f"could not define the host tools in the guest: {result.error.value}")

    async def _overlapped(
        self,
        state: RlmState,
        handler: HostCallHandler,
        steps: Callable[[], Awaitable[RlmOutcome]],
        *,
        held: HeldCloses | None,
        after: CallBurst | None,
    ) -> RlmOutcome:
        """Run ``steps`` while the session opens beside it (``after`` the parent's burst of
        calls, for a child), in the RLM's own nursery; close it
        at the end (a child's when its parent's block ends, in ``held``, without waiting for
        the guest: its answer need not wait for the teardown). A failed opening is recorded
        and raised."""

        async def close() -> None:
            await state.held_closes.end()
            session = state.opening.value
            if held is not None and session is not None:
                await held.hold(session)
            else:
                await self.close(state)

        try:
            return await overlapped(
                state.opening, lambda nursery: self._open_session(state, handler, nursery, after), steps, close,
                f"RLM {state.id}",
            )
        except Exception as error:
            if error is state.opening.error:
                self.recorder.emit(
                    EngineError(
                        ts=time.time(), rlm=state.id, depth=state.depth,
                        error_type=type(error).__name__, message=str(error),
                    )
                )
            raise

    async def _solve(
        self,
        prompt: str | PromptRef,
        rlm: str,
        depth: int,
        max_steps: int,
        model: str | None,
        tools: tuple[HostTool, ...],
        parent: Parent,
    ) -> RlmOutcome:
        """A child RLM, from its first model request to its end; its state lives here only.
        Its session opens after ``parent``'s burst of calls and is closed when ``parent``'s
        block ends."""
        state = self._new_rlm(prompt, rlm=rlm, depth=depth, model=model, tools=tools)
        handler = self.children.handler(
            Parent(rlm, depth, max_steps, model, tools, state.held_closes, state.burst)
        )
        return await self._overlapped(
            state, handler, lambda: self.steps.guarded(state, max_steps, None),
            held=parent.held or HeldCloses(limit=0), after=parent.burst,
        )
