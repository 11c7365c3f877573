"""Model calls of a run: through its limiter and meter, each recorded as two events."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Mapping, Sequence

import trio

from ..llm.messages import ChatMessage, ChatReply, DeltaCallback
from ..llm.model import ChatModel
from ..trajectory import Message, ModelRequest, ModelResponse, TrajectoryRecorder
from .budget import RunMeter
from .compaction import chars
from .state import RlmState

__all__ = ["ModelCalls"]


class ModelCalls:
    """Every model request of one run goes through ``chat``.

    ``client`` serves the root's model and any model without a client of its own in ``clients``.
    The limiter guards model requests only, never a whole child: a parent waiting for its
    children holds no token, so nesting cannot deadlock.
    """

    def __init__(
        self,
        client: ChatModel,
        clients: Mapping[str, ChatModel],
        recorder: TrajectoryRecorder,
        meter: RunMeter,
        concurrency: int,
        on_delta: DeltaCallback | None,
    ) -> None:
        self.client = client
        self.clients = dict(clients)
        self.recorder = recorder
        self.meter = meter
        self._limiter = trio.CapacityLimiter(concurrency)
        self._ids: Iterator[int] = itertools.count(1)
        self._on_delta = on_delta

    @property
    def default_model(self) -> str:
        return self.client.config.model

    async def chat(
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
        track: RlmState | None = None,
    ) -> ChatReply:
        """One model request (``track.last_call`` gets the request's call id)."""
        async with self._limiter:
            chosen = model or self.default_model
            # Checked once a slot is ours: the budget is judged at the moment of sending.
            self.meter.start_call(chosen)
            call = next(self._ids)
            if track is not None:
                track.last_call = call
            request_chars = chars(messages)
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
