"""The RLM loop of the seed, on trio: one engine per run, one RLM per guest session.

An RLM is a conversation with the model whose replies run as code in a guest session holding
``prompt``. Host calls from that code (``rlm_query``, ``llm_query`` and their batched forms)
arrive as concurrent ``HostCall``s; each becomes a child RLM in a new session of the same guest
(depth + 1) or a plain chat call. Every model request of the run passes one
``trio.CapacityLimiter``, so batched calls run concurrently up to ``Limits.concurrency``. The
limiter guards model requests only, never a whole child: a parent waiting for its children holds
no token, so nesting cannot deadlock.

Beyond the seed: host tools (``rlm_host.tools``) are defined in every session and served by the
host call ``tool``; the root may be asked several questions in one session (``open_root`` /
``ask``, the conversation API); a history that approaches ``Limits.context_tokens`` has its older
turns summarised; a typed ``Final`` is checked on the host; and a root can be rebuilt from a
trajectory (``restore_root``, for ``--resume``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import trio

from rlm_protocol import HostCall, PromptRef, ref_metadata, text_blake2b

from ..connection import GuestConnection, HostCallHandler
from ..errors import RlmError, single_error
from ..llm.model import ChatModel
from ..llm.errors import ContextLengthExceeded
from ..llm.messages import ChatMessage, ChatReply, DeltaCallback, Usage
from ..session import Session
from ..tools import HostTool, ToolArgumentError, UnknownTool, args_sha256, stub_code, tools_prompt
from ..trajectory import (
    BlockRun,
    BudgetStop,
    ChildEnd,
    ChildStart,
    Compaction,
    ContextOverflow,
    EngineError,
    FinalSet,
    Message,
    ModelRequest,
    ModelResponse,
    Observation,
    ToolCall,
    TrajectoryRecorder,
)
from .blocks import first_block
from .budget import BudgetExhausted, Limits, RunMeter, StopReason, child_steps
from .opening import PendingGuest, SessionOpening
from .repl import PYTHON_BLOCK_IN_BASH_REPL, Repl, bash_metadata_message, bash_system_prompt
from .prompts import (
    DEFAULT_TOOLS,
    NO_BLOCK_REPROMPT,
    answer_mismatch_message,
    compacted_message,
    compaction_prompt,
    metadata_message,
    models_prompt,
    observation_message,
    system_prompt,
)

__all__ = ["MAX_STEPS_ANSWER", "Replay", "RlmEngine", "RlmOutcome", "RootRlm"]

#: What a child that ran out of steps returns to its parent's code (the seed's words).
MAX_STEPS_ANSWER: Final = "(max_steps reached before Final was set)"

#: Closing a session after a cancelled run must not hang the shutdown on a stuck guest.
_CLOSE_GRACE_SECONDS: Final = 5.0

#: Compact when the history reaches this share of ``context_tokens``: the rest is room for the
#: reply and the next observation.
COMPACT_AT: Final = 0.75

#: Messages kept verbatim at the end of a compacted history: the last two turns (assistant
#: block, observation), which the model needs word for word to go on.
KEEP_MESSAGES: Final = 4

#: Ollama drops the oldest messages that do not fit its window without saying so
#: (``server/prompt.go``, ``chatPrompt``); its ``prompt_eval_count`` is the only trace. A reply
#: was made from a truncated prompt when that count is below this share of the estimate of what
#: was sent (characters / 4: real text runs 3-4 characters per token, so a correct count is
#: above the estimate, not at half of it), or when it did not grow although the history did
#: since the previous request (the first drop of the oldest messages, where the count is still
#: close to what was sent).
TRUNCATED_BELOW: Final = 0.5

#: Estimates below this many tokens are never judged truncated: a chat template's own tokens
#: dominate small prompts, and no server's window is that small.
TRUNCATION_MIN_TOKENS: Final = 1024

#: Requests of one step that may be sent again after the window was exceeded.
OVERFLOW_RETRIES: Final = 2


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


def _final_answer(value: Any) -> str:
    """Strings are returned as they are, other JSON values as indented JSON (the seed's rule)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()


def _chars(messages: Sequence[ChatMessage]) -> int:
    return sum(len(message["content"]) for message in messages)


@dataclass
class RootRlm:
    """One RLM's session and conversation (the root's outlives a question in a conversation)."""

    id: str
    depth: int
    #: The session, which may still be opening while the first model request is out.
    opening: SessionOpening
    model: str | None
    tools: tuple[HostTool, ...]
    history: list[ChatMessage]
    #: Every message ever added, never compacted: the REPL's ``history`` after a compaction.
    transcript: list[ChatMessage]
    #: The first user message as first written (a compaction appends its summary to it).
    first_message: str
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

    @property
    def session(self) -> Session:
        """The opened session (``await rlm.opening.wait()`` first when it may still be opening)."""
        if self.opening.session is None:
            raise RuntimeError(f"RLM {self.id}'s session has not opened yet")
        return self.opening.session

    def append(self, message: ChatMessage) -> None:
        self.history.append(message)
        self.transcript.append(message)


class Replay:
    """Answers of a recorded run, for the host calls of its blocks replayed by ``--resume``.

    Child calls are matched by method and prompt, tool calls by name and arguments, each in the
    order they were recorded; a call with no recorded answer fails in the guest and is listed in
    ``problems``.
    """

    def __init__(self) -> None:
        #: Recorded answers by (method, digest), the digest as ``sha256:<hex>`` or ``blake2b:<hex>``.
        self.children: defaultdict[tuple[str, str], deque[str]] = defaultdict(deque)
        self.tools: defaultdict[tuple[str, str], deque[tuple[Any, str | None]]] = defaultdict(deque)
        self.problems: list[str] = []
        self.active = True

    def answer(self, call: HostCall) -> Any:
        """The recorded answer of ``call``; raises what the original call raised, or
        ``LookupError`` when there is none."""
        if call.method == "tool":
            name = str(call.payload.get("name"))
            key = (name, args_sha256(name, call.payload.get("args", []), call.payload.get("kwargs", {})))
            queue = self.tools.get(key)
            if not queue:
                problem = f"tool call {name}(...) has no recorded result; it failed in the replay"
                self.problems.append(problem)
                raise LookupError(problem)
            result, error = queue.popleft()
            if error is not None:
                raise RuntimeError(f"(recorded) {error}")
            return result
        ref = call.payload.get("prompt_ref")
        if isinstance(ref, dict):
            prompt = str(ref.get("prefix", ""))
            keys = [f"blake2b:{ref.get('blake2b')}"]
        else:
            prompt = str(call.payload.get("prompt"))
            keys = [f"sha256:{_sha256(prompt)}", f"blake2b:{text_blake2b(prompt)}"]
        queue_children = next((self.children[key] for key in ((call.method, k) for k in keys) if self.children.get(key)), None)
        if not queue_children:
            problem = f"{call.method}({prompt[:60]!r}...) has no recorded answer; it failed in the replay"
            self.problems.append(problem)
            raise LookupError(problem)
        return queue_children.popleft()


class RlmEngine:
    """Runs RLMs for one run against one guest connection and a ``ChatModel`` (``clients``:
    more, for sub-models on other servers).

    ``run`` is the root; children are started by host calls. The engine owns neither the
    connection nor the client: the caller opens and closes them (``rlm_host.api`` does).
    """

    def __init__(
        self,
        *,
        connection: GuestConnection | PendingGuest,
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
    ) -> None:
        self.connection = connection
        #: The guest's REPL (``engine.repl``): bash only for a guest without Python.
        self.repl: Repl = repl
        self.client = client
        #: Send a reply's reasoning back in the history (``<think>…</think>`` before the
        #: answer); off by default: it would fill the window and models are trained without it.
        self.history_reasoning = history_reasoning
        #: The window the host keeps histories under, per model; learnt from the server at the
        #: start (``rlm_host.api``) and again when a request did not fit.
        self.windows: dict[str, int] = {}
        if limits.context_tokens is not None:
            self.windows[client.config.model] = limits.context_tokens
        #: Judge replies truncated from the server's prompt counts (``_truncated``).
        self.detect_truncation = detect_truncation
        #: False once the server's prompt counts proved unreliable (see ``_truncated``).
        self._check_truncation = True
        #: The model of ``llm_query`` and of children that name none (``None``: the root's).
        self.sub_model = sub_model
        #: Clients of models served elsewhere than the root's (``--sub-llm-url``).
        self.clients: dict[str, ChatModel] = dict(clients or {})
        #: The models ``rlm_query(..., model=...)`` may name: the root's, the sub-model, and
        #: the ones the user allowed.
        self.allowed_models = frozenset(
            {client.config.model, *([sub_model] if sub_model else []), *models, *self.clients}
        )
        self.recorder = recorder
        self.limits = limits
        self.meter = RunMeter(limits)
        self.exec_timeout = exec_timeout
        self.host_tools = tuple(host_tools)
        self._guest_tools = tuple(tools)
        self._system_prompts: dict[tuple[str, ...], str] = {}
        self._limiter = trio.CapacityLimiter(limits.concurrency)
        self._calls: Iterator[int] = itertools.count(1)
        self._children: defaultdict[str, Iterator[int]] = defaultdict(lambda: itertools.count(1))
        self._on_delta = on_delta

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

    async def run(self, prompt: str, *, answer_type: Any = None) -> RlmOutcome:
        """Run the root RLM on ``prompt`` until ``Final`` or a budget; see ``RlmOutcome``.

        With ``answer_type``, ``Final`` must convert to it (``msgspec.convert``); a mismatch is
        an observation and the run goes on. Raises what ends the run without an answer
        (``ModelError``, ``GuestError``), after recording it in the trajectory.

        The first model request goes out while the guest starts and the prompt is bound
        (``rlm_host.engine.opening``); the wall-time budget counts from the start.
        """
        root = self._new_rlm(
            prompt, rlm="0", depth=0, model=None, tools=self.host_tools, answer_type=answer_type
        )
        return await self._overlapped(
            root, self.root_handler(), lambda: self.ask(root, answer_type=answer_type), close_later=False
        )

    async def open_root(
        self,
        prompt: str,
        *,
        answer_type: Any = None,
        handler: HostCallHandler | None = None,
        prompt_refs: bool = True,
    ) -> RootRlm:
        """Open the root's session with ``prompt`` bound; ``ask`` runs its steps.

        ``prompt_refs=False``: the root's ``rlm_query`` calls send their text (a replay matches
        them with answers recorded by either digest)."""
        root = self._new_rlm(
            prompt, rlm="0", depth=0, model=None, tools=self.host_tools, answer_type=answer_type
        )
        root.prompt_refs = root.prompt_refs and prompt_refs
        await self._open_session(root, handler or self.root_handler())
        try:
            await root.opening.wait()
        except BaseException:
            await self.close(root)
            raise
        return root

    async def ask(self, root: RootRlm, message: str | None = None, *, answer_type: Any = None) -> RlmOutcome:
        """Run the root's steps until ``Final`` or a budget, after adding ``message`` (a new
        question) to its history. The wall-time budget counts from here."""
        if message is not None:
            root.append({"role": "user", "content": message})
        with trio.move_on_after(self.limits.max_seconds or float("inf")) as deadline:
            return await self._guarded(root, self.limits.max_steps, answer_type)
        detail = f"wall-time budget spent: {self.limits.max_seconds} s"
        assert deadline.cancelled_caught
        self._emit_stop(root.id, root.depth, "wall_time", detail)
        return RlmOutcome(None, "wall_time", detail)

    async def bind(self, rlm: RootRlm, values: dict[str, Any]) -> None:
        """Bind ``values`` in the RLM's namespace (and again after a session reset)."""
        rlm.bound.update(values)
        await rlm.session.set_vars(values)

    async def close(self, rlm: RootRlm) -> None:
        """Close the RLM's session (shielded and bounded: it runs after cancellations too).

        A session still opening is cancelled first; what the guest had opened is closed.
        """
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE_SECONDS):
            opening = rlm.opening
            if not opening.done:
                opening.scope.cancel()
                with trio.CancelScope(shield=True):
                    await opening.settled()
            if opening.session is not None:
                await opening.session.close()

    def _close_later(self, rlm: RootRlm) -> bool:
        """Close an opened session without waiting for the guest (a child's answer need not
        wait for its teardown); ``False`` when that is not possible and ``close`` must be awaited."""
        opening = rlm.opening
        if not opening.done or opening.session is None:
            return False
        return opening.session.close_later()

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
    ) -> RootRlm:
        """An RLM whose history is ready for its first model request; its session is not open."""
        shown = ref_metadata(prompt) if isinstance(prompt, PromptRef) else prompt
        first = (bash_metadata_message if self.repl == "bash" else metadata_message)(
            shown, None if answer_type is None else msgspec.json.schema(answer_type)
        )
        state = RootRlm(
            id=rlm,
            depth=depth,
            opening=SessionOpening(),
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

    async def _connection(self) -> GuestConnection:
        if isinstance(self.connection, PendingGuest):
            return await self.connection.wait()
        return self.connection

    async def _open_session(self, state: RootRlm, handler: HostCallHandler) -> None:
        """Open the RLM's session and bind its variables; the outcome goes to ``state.opening``.

        Never raises (but ``Cancelled``): whoever waits for the session gets the error.
        """
        opening = state.opening
        try:
            with opening.scope:
                try:
                    connection = await self._connection()
                    opening.session = await connection.open_session(handler=handler, prompt_refs=state.prompt_refs)
                    await self.prepare(state)
                except Exception as error:
                    opening.fail(error)
                    return
                opening.succeed()
        finally:
            # Also when a cancellation from outside (the run's own) ends this task: ``close``
            # waits, shielded, for the opening to settle.
            if not opening.done:
                opening.fail(RlmError(f"RLM {state.id} ended before its session had opened"))

    async def _overlapped(
        self,
        state: RootRlm,
        handler: HostCallHandler,
        steps: Callable[[], Awaitable[RlmOutcome]],
        *,
        close_later: bool,
    ) -> RlmOutcome:
        """Run ``steps`` while the session opens beside it; close it at the end.

        A failed opening stops the steps at once (the model's reply is not worth waiting for)
        and is what this raises.
        """
        opening = state.opening
        outcome: RlmOutcome | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._open_session, state, handler)
                try:
                    with trio.CancelScope() as steps_scope:
                        nursery.start_soon(_cancel_on_failure, opening, steps_scope)
                        outcome = await steps()
                finally:
                    if not (close_later and self._close_later(state)):
                        await self.close(state)
                    nursery.cancel_scope.cancel()  # the failure watcher
        except BaseExceptionGroup as group:
            raise single_error(group) from None
        if outcome is None:
            assert opening.error is not None
            self.recorder.emit(
                EngineError(
                    ts=time.time(), rlm=state.id, depth=state.depth,
                    error_type=type(opening.error).__name__, message=str(opening.error),
                )
            )
            raise opening.error
        return outcome

    async def prepare(self, state: RootRlm) -> None:
        """Bind the host's variables and define the tools (at start and after a reset)."""
        if state.bound or not state.bound_refs:
            await state.session.set_vars(state.bound)
        if state.bound_refs:
            await state.session.bind_refs(state.bound_refs)
        if state.tools:
            result = await state.session.exec(stub_code(state.tools))
            if result.error is not None:
                raise RlmError(f"could not define the host tools in the guest: {result.error.value}")

    async def _solve(
        self,
        prompt: str | PromptRef,
        *,
        rlm: str,
        depth: int,
        max_steps: int,
        model: str | None,
        tools: tuple[HostTool, ...],
    ) -> RlmOutcome:
        state = self._new_rlm(prompt, rlm=rlm, depth=depth, model=model, tools=tools)
        handler = self._host_call_handler(rlm, depth, max_steps, model, tools)
        return await self._overlapped(
            state, handler, lambda: self._guarded(state, max_steps, None), close_later=True
        )

    async def _guarded(self, state: RootRlm, max_steps: int, answer_type: Any) -> RlmOutcome:
        """``_steps``, with a budget stop as an outcome and an error recorded before it is raised."""
        try:
            return await self._steps(state, max_steps, answer_type)
        except BudgetExhausted as spent:
            self._emit_stop(state.id, state.depth, spent.reason, spent.detail)
            return RlmOutcome(None, spent.reason, spent.detail)
        except Exception as error:
            self.recorder.emit(
                EngineError(
                    ts=time.time(), rlm=state.id, depth=state.depth, error_type=type(error).__name__,
                    message=str(error),
                )
            )
            raise

    async def _steps(self, state: RootRlm, max_steps: int, answer_type: Any) -> RlmOutcome:
        rlm, depth = state.id, state.depth
        for _ in range(max_steps):
            state.step += 1
            step = state.step
            await self._maybe_compact(state)
            reply = await self._step_request(state)
            # Blocks come from the answer only: a draft in the reasoning is not what the model
            # chose to run. An answer left empty by reasoning gets the re-prompt.
            block = first_block(reply.content)
            if block is None:
                # Unlike the seed, the reply stays in the history: roles keep alternating (some
                # chat templates require it) and the model sees what it is being corrected for.
                state.append({"role": "assistant", "content": self._assistant_text(reply, reply.content)})
                state.append({"role": "user", "content": NO_BLOCK_REPROMPT})
                continue
            state.append({"role": "assistant", "content": self._assistant_text(reply, block.fenced)})
            if self.repl == "bash" and block.language == "python":
                # The guest would refuse it (unsupported): the model hears why instead.
                state.append({"role": "user", "content": PYTHON_BLOCK_IN_BASH_REPL})
                continue
            self.recorder.emit(
                BlockRun(ts=time.time(), rlm=rlm, depth=depth, step=step, language=block.language, code=block.code)
            )
            # The first block may come before the session has opened (see ``opening``).
            session = await state.opening.wait()
            result = await session.exec(block.code, block.language, timeout=self.exec_timeout)
            if result.session_reset:
                await self.prepare(state)
            final = result.final
            if final is not None and final.ok:
                value = final.value
                mismatch: str | None = None
                if answer_type is not None:
                    try:
                        value = msgspec.convert(final.value, answer_type)
                    except msgspec.ValidationError as error:
                        mismatch = str(error)
                if mismatch is None:
                    answer = _final_answer(final.value)
                    self.recorder.emit(FinalSet(ts=time.time(), rlm=rlm, depth=depth, step=step, answer=answer))
                    return RlmOutcome(answer, "final", value=value)
                # Unset, or the next block would be judged by the same rejected Final.
                await session.set_vars({})
                observation = answer_mismatch_message(mismatch, final)
                error_text: str | None = f"AnswerTypeError: {mismatch}"
            else:
                observation = observation_message(result)
                error_text = None if result.error is None else f"{result.error.name}: {result.error.value}"
            self.recorder.emit(
                Observation(
                    ts=time.time(),
                    rlm=rlm,
                    depth=depth,
                    step=step,
                    content=observation,
                    duration=result.duration,
                    returncode=result.returncode,
                    error=error_text,
                )
            )
            state.append({"role": "user", "content": observation})
        detail = f"no Final after {max_steps} steps"
        self._emit_stop(rlm, depth, "max_steps", detail)
        return RlmOutcome(None, "max_steps", detail)

    def _assistant_text(self, reply: ChatReply, answer: str) -> str:
        if self.history_reasoning and reply.reasoning:
            return f"<think>\n{reply.reasoning}\n</think>\n{answer}"
        return answer

    def _model(self, state: RootRlm) -> str:
        return state.model or self.client.config.model

    async def _step_request(self, state: RootRlm) -> ChatReply:
        """The model's reply to the RLM's history, recording what the history gained.

        A request that did not fit the window (refused, or silently truncated by the server)
        compacts the history and is sent again; ``BudgetExhausted("context_window")`` when
        compaction cannot help.
        """
        for retry in itertools.count():
            history = state.history
            if state.recorded is None:
                new, rebased = history, True
            else:
                new, rebased = history[state.recorded :], False
            sent = _chars(history) // 4
            try:
                reply = await self._chat(
                    list(history), rlm=state.id, depth=state.depth, step=state.step, model=state.model,
                    new_messages=new, rebased=rebased, track=state,
                )
            except ContextLengthExceeded as refused:
                state.recorded = len(history)
                window = refused.window or max(64, int(sent * COMPACT_AT))
                await self._overflow(state, retry, "refused", sent, None, window, str(refused))
                continue
            state.recorded = len(history)
            if self._truncated(state, reply.usage, sent, len(history)):
                if retry > 0:
                    # Even a compacted history was "truncated": the counts are not to be trusted
                    # (some Ollama versions left cached prompt tokens out of them).
                    self._check_truncation = False
                else:
                    window = reply.usage.prompt_tokens
                    detail = (
                        f"the server counted {window} prompt tokens for about {sent} sent: it dropped "
                        "the oldest messages (a window smaller than the history)"
                    )
                    await self._overflow(state, retry, "truncated", sent, window, window, detail)
                    continue
            if reply.usage.reported:
                state.reported_tokens = reply.usage.prompt_tokens + reply.usage.completion_tokens
                # The reply is the next message; the server counted it as completion tokens.
                state.reported_len = len(history) + 1
                state.prompt_count = (reply.usage.prompt_tokens, len(history))
            return reply
        raise AssertionError("unreachable")

    def _truncated(self, state: RootRlm, usage: Usage, sent: int, history_len: int) -> bool:
        """Whether the server answered a truncated prompt (see ``TRUNCATED_BELOW``)."""
        if not (self.detect_truncation and self._check_truncation and usage.reported and usage.prompt_tokens > 0):
            return False
        if sent < TRUNCATION_MIN_TOKENS:
            return False
        if usage.prompt_tokens < TRUNCATED_BELOW * sent:
            return True
        previous = state.prompt_count
        return previous is not None and history_len > previous[1] and usage.prompt_tokens <= previous[0]

    async def _overflow(
        self, state: RootRlm, retry: int, kind: str, sent: int, reported: int | None, window: int, detail: str
    ) -> None:
        """Learn the smaller window, compact, and let the request go again; or stop."""
        model = self._model(state)
        known = self.windows.get(model)
        self.windows[model] = window if known is None else min(known, window)
        compacted = retry < OVERFLOW_RETRIES and await self._maybe_compact(state, force=True)
        self.recorder.emit(
            ContextOverflow(
                ts=time.time(), rlm=state.id, depth=state.depth, step=state.step, call=state.last_call,
                kind=kind, sent_tokens=sent, reported_tokens=reported, window=self.windows[model],
                detail=detail[:500], retry=compacted,
            )
        )
        if not compacted:
            raise BudgetExhausted(
                "context_window",
                f"the history no longer fits the model's window ({self.windows[model]} tokens) even "
                f"compacted ({kind}: {detail[:300]}); give the model a larger window "
                "(--context-tokens, or the server's own setting)",
            )

    # --- compaction -------------------------------------------------------------------------

    def _history_tokens(self, state: RootRlm) -> int:
        """The history's size in tokens: the server's last count plus an estimate (chars / 4)
        of what came after, or an estimate of all of it."""
        if state.reported_tokens is not None and state.reported_len <= len(state.history):
            return state.reported_tokens + _chars(state.history[state.reported_len :]) // 4
        return _chars(state.history) // 4

    async def _maybe_compact(self, state: RootRlm, *, force: bool = False) -> bool:
        """Summarise the older turns when the history nears the window (or ``force``); whether
        it did. The system prompt and the first message (task and prompt metadata) stay
        verbatim."""
        limit = self.windows.get(self._model(state))
        if limit is None:
            if not force:
                return False
            limit = max(64, self._history_tokens(state))
        tokens = self._history_tokens(state)
        if not force and tokens < COMPACT_AT * limit:
            return False
        system, middle, tail = state.history[0], state.history[2:-KEEP_MESSAGES], state.history[-KEEP_MESSAGES:]
        if len(middle) < 2:
            return False  # nothing old enough to summarise: the model gets what it gets
        # The request itself must fit: half the context, in characters (4 per token).
        request = compaction_prompt(state.summary, [{"role": m["role"], "content": m["content"]} for m in middle], max_chars=limit * 2)
        messages: list[ChatMessage] = [{"role": "user", "content": request}]
        reply = await self._chat(
            messages, rlm=state.id, depth=state.depth, step=state.step, model=state.model,
            purpose="compact", new_messages=messages, rebased=True,
        )
        state.summary = reply.content.strip()
        before = len(state.history)
        first: ChatMessage = {
            "role": "user",
            "content": compacted_message(state.first_message, state.summary, len(state.transcript)),
        }
        state.history = [system, first, *tail]
        state.recorded = None
        state.reported_tokens = None
        state.prompt_count = None
        # The full history stays reachable from code; binding it also unsets Final, which is
        # harmless here: a Final that was accepted ended the RLM before this point.
        session = await state.opening.wait()
        await session.set_vars({"history": [{"role": m["role"], "content": m["content"]} for m in state.transcript]})
        self.recorder.emit(
            Compaction(
                ts=time.time(), rlm=state.id, depth=state.depth, step=state.step,
                messages_before=before, messages_after=len(state.history), tokens_before=tokens,
                summary=state.summary,
            )
        )
        return True

    # --- model calls ------------------------------------------------------------------------

    async def _chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        rlm: str,
        depth: int,
        step: int,
        model: str | None,
        purpose: str = "rlm",
        new_messages: Sequence[ChatMessage] = (),
        rebased: bool = False,
        track: RootRlm | None = None,
    ) -> ChatReply:
        """One model request through the run's limiter and meter, recorded as two events
        (``track.last_call`` gets the request's call id)."""
        async with self._limiter:
            chosen = model or self.client.config.model
            # Checked once a slot is ours: the budget is judged at the moment of sending.
            self.meter.start_call(chosen)
            call = next(self._calls)
            if track is not None:
                track.last_call = call
            request_chars = _chars(messages)
            self.recorder.emit(
                ModelRequest(
                    ts=time.time(),
                    rlm=rlm,
                    depth=depth,
                    call=call,
                    step=step,
                    model=chosen,
                    messages=len(messages),
                    request_chars=request_chars,
                    purpose=purpose,
                    new_messages=tuple(Message(m["role"], m["content"]) for m in new_messages),
                    rebased=rebased,
                )
            )
            started = time.perf_counter()
            try:
                reply = await self.clients.get(chosen, self.client).chat(messages, model=chosen, on_delta=self._on_delta)
            except Exception as error:
                self.recorder.emit(
                    ModelResponse(
                        ts=time.time(),
                        rlm=rlm,
                        depth=depth,
                        call=call,
                        step=step,
                        duration=time.perf_counter() - started,
                        error=f"{type(error).__name__}: {error}",
                    )
                )
                raise
        self.meter.record(reply.usage, request_chars=request_chars, reply_chars=len(reply.content), model=chosen)
        self.recorder.emit(
            ModelResponse(
                ts=time.time(),
                rlm=rlm,
                depth=depth,
                call=call,
                step=step,
                duration=reply.duration,
                content=reply.content,
                usage=reply.usage,
                attempts=reply.attempts,
                reasoning=reply.reasoning,
            )
        )
        return reply

    # --- host calls from model code ---------------------------------------------------------

    def _host_call_handler(
        self,
        parent: str,
        depth: int,
        parent_steps: int,
        parent_model: str | None,
        tools: tuple[HostTool, ...],
        replay: Replay | None = None,
    ) -> HostCallHandler:
        """The handler of one session's host calls; each call runs in its own task.

        Only ``rlm_query``, ``llm_query`` and the session's own tools are served: nothing else
        on the host is reachable from the guest.
        """
        child_tools = tuple(tool for tool in tools if tool.children)

        async def handle(call: HostCall) -> Any:
            if replay is not None and replay.active:
                return replay.answer(call)
            if call.method == "tool":
                return await self._tool_call(call, parent, depth, tools)
            if call.method not in ("rlm_query", "llm_query"):
                raise ValueError(f"unknown host call {call.method!r}")
            prompt: str | PromptRef
            if call.method == "rlm_query" and "prompt_ref" in call.payload:
                prompt = msgspec.convert(call.payload["prompt_ref"], PromptRef)
            else:
                text = call.payload.get("prompt")
                if not isinstance(text, str):
                    raise TypeError(f"{call.method} needs a str prompt, got {type(text).__name__}")
                prompt = text
            requested = call.payload.get("model")
            if requested is not None and requested != "":
                if not isinstance(requested, str) or requested not in self.allowed_models:
                    allowed = ", ".join(sorted(self.allowed_models))
                    raise ValueError(f"model {requested!r} is not allowed in this run (allowed: {allowed})")
                model: str | None = requested
            else:
                # A child of the root gets the sub-model; deeper ones inherit their parent's.
                model = parent_model if parent_model is not None else self.sub_model
            leaf = call.method == "llm_query" or depth + 1 >= self.limits.max_depth
            if leaf and isinstance(prompt, PromptRef):
                # Never asked for (the session was opened without prompt_refs): a leaf's model
                # needs the text itself.
                raise TypeError(f"{call.method} at the depth limit needs the prompt's text, not a reference")
            child = f"{parent}.{next(self._children[parent])}"
            return await self._child(
                prompt,
                rlm=child,
                parent=parent,
                depth=depth + 1,
                method=call.method,
                leaf=leaf,
                max_steps=child_steps(parent_steps),
                model=model,
                tools=child_tools,
            )

        return handle

    def root_handler(self, replay: Replay | None = None) -> HostCallHandler:
        """The root's handler; with ``replay``, it answers from it while it is active
        (``--resume``)."""
        return self._host_call_handler("0", 0, self.limits.max_steps, None, self.host_tools, replay)

    async def _tool_call(self, call: HostCall, rlm: str, depth: int, tools: tuple[HostTool, ...]) -> Any:
        name = call.payload.get("name")
        args = call.payload.get("args", [])
        kwargs = call.payload.get("kwargs", {})
        by_name = {tool.name: tool for tool in tools}
        tool = by_name.get(name) if isinstance(name, str) else None
        if tool is None:
            offered = ", ".join(sorted(by_name)) or "none"
            raise UnknownTool(f"no host tool named {name!r} here (offered: {offered})")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ToolArgumentError(f"{tool.name}(): malformed call (args must be a list, kwargs a dict)")
        started = time.perf_counter()
        key = args_sha256(tool.name, args, kwargs)
        try:
            result = await tool.call(args, kwargs)
        except Exception as error:
            self.recorder.emit(
                ToolCall(
                    ts=time.time(), rlm=rlm, depth=depth, name=tool.name, duration=time.perf_counter() - started,
                    args_sha256=key, args_chars=len(json.dumps([args, kwargs], default=str)),
                    error=f"{type(error).__name__}: {error}",
                )
            )
            raise
        self.recorder.emit(
            ToolCall(
                ts=time.time(), rlm=rlm, depth=depth, name=tool.name, duration=time.perf_counter() - started,
                args_sha256=key, args_chars=len(json.dumps([args, kwargs], default=str)), result=result,
            )
        )
        return result

    async def _child(
        self,
        prompt: str | PromptRef,
        *,
        rlm: str,
        parent: str,
        depth: int,
        method: str,
        leaf: bool,
        max_steps: int,
        model: str | None,
        tools: tuple[HostTool, ...],
    ) -> str:
        """Run a child and always return a string to the parent's code.

        A child that fails or runs out of budget answers with an explanation in parentheses
        instead of raising: the parent's code goes on and its model decides what to do. A
        run-wide budget is still enforced, by the parent's own next model request.
        """
        kind = "leaf" if leaf else "rlm"
        by_ref = isinstance(prompt, PromptRef)
        self.recorder.emit(
            ChildStart(
                ts=time.time(), rlm=rlm, depth=depth, parent=parent, kind=kind, method=method,
                prompt_chars=prompt.chars if isinstance(prompt, PromptRef) else len(prompt),
                prompt_sha256="" if isinstance(prompt, PromptRef) else _sha256(prompt),
                prompt_blake2b=prompt.blake2b if isinstance(prompt, PromptRef) else "",
                prompt_in_guest=by_ref,
            )
        )
        started = time.perf_counter()
        stop_reason: str = "final"
        error: str | None = None
        try:
            if leaf:
                assert isinstance(prompt, str)  # refused above
                messages: list[ChatMessage] = [{"role": "user", "content": prompt}]
                reply = await self._chat(
                    messages, rlm=rlm, depth=depth, step=1, model=model, purpose="leaf",
                    new_messages=messages, rebased=True,
                )
                answer = reply.content
            else:
                outcome = await self._solve(prompt, rlm=rlm, depth=depth, max_steps=max_steps, model=model, tools=tools)
                stop_reason = outcome.stop_reason
                if outcome.answer is not None:
                    answer = outcome.answer
                elif outcome.stop_reason == "max_steps":
                    answer = MAX_STEPS_ANSWER
                else:
                    answer = f"({method} stopped: {outcome.detail})"
        except BudgetExhausted as spent:
            stop_reason = spent.reason
            answer = f"({method} stopped: {spent.detail})"
        except Exception as failure:
            # Any failure of the child (model server, guest session) is the parent's to handle.
            stop_reason = "error"
            error = f"{type(failure).__name__}: {failure}"
            answer = f"({method} failed: {error})"
        self.recorder.emit(
            ChildEnd(
                ts=time.time(),
                rlm=rlm,
                depth=depth,
                parent=parent,
                kind=kind,
                duration=time.perf_counter() - started,
                answer_chars=len(answer),
                stop_reason=stop_reason,
                error=error,
                answer=answer,
            )
        )
        return answer

    def _emit_stop(self, rlm: str, depth: int, reason: str, detail: str) -> None:
        self.recorder.emit(BudgetStop(ts=time.time(), rlm=rlm, depth=depth, reason=reason, detail=detail))


async def _cancel_on_failure(opening: SessionOpening, scope: trio.CancelScope) -> None:
    """Stop an RLM's steps as soon as its session has failed to open."""
    await opening.settled()
    if opening.error is not None:
        scope.cancel()
