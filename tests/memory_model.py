"""An in-memory ``ChatModel`` for engine unit tests: the scripted model without HTTP.

It takes the same scripts as ``scripted_model.ScriptedModel`` (a function of a ``ChatRequest``
returning text or an outcome) and answers in the calling task: no server thread, no sockets, no
JSON. What it cannot show is what only HTTP shows (retries, streaming, a server's error
shapes); the tests of those stay on ``ScriptedModel``.

>>> import trio
>>> model = MemoryModel(lambda request: f"seen {len(request.messages)}")
>>> trio.run(model.chat, [{"role": "user", "content": "hi"}]).content
'seen 1'
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from rlm_host.llm import LlmConfig
from rlm_host.llm.errors import ModelResponseError, ModelServerError
from rlm_host.llm.messages import ChatMessage, ChatReply, DeltaCallback, Usage
from rlm_host.llm.model import ChatModel
from tests.scripted_model import ChatRequest, Fail, Hang, Malformed, Reply, Script

__all__ = ["MemoryModel"]

URL = "memory://model"


class MemoryModel:
    """A ``ChatModel`` answering from ``script``; ``requests`` lists what it was asked, in order."""

    def __init__(self, script: Script, *, model: str = "scripted") -> None:
        self.config = LlmConfig(model=model, base_url=URL)
        self.script = script
        self.requests: list[ChatRequest] = []
        #: Requests answered at once at most (how much the engine overlapped them).
        self.peak = 0
        #: When set, every reply waits for this event once it is made (a reply still coming).
        self.hold: trio.Event | None = None
        self._in_flight = 0

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        stream: bool | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> ChatReply:
        wire = [{"role": m["role"], "content": m["content"]} for m in messages]
        request = ChatRequest(
            api="ollama", model=model or self.config.model, messages=wire, stream=bool(stream),
            body_bytes=sum(len(m["content"]) for m in wire),
        )
        self.requests.append(request)
        self._in_flight += 1
        self.peak = max(self.peak, self._in_flight)
        try:
            # A checkpoint, as a real request is: concurrent requests interleave here.
            await trio.lowlevel.checkpoint()
            outcome = self.script(request)
            match outcome:
                case Hang():
                    await trio.sleep_forever()
                    raise AssertionError("unreachable")
                case Fail(status=status, message=message):
                    raise ModelServerError(URL, status, message, attempts=1)
                case Malformed(body=body):
                    raise ModelResponseError(URL, body)
                case str():
                    reply = Reply(outcome)
                case Reply():
                    reply = outcome
            if self.hold is not None:
                await self.hold.wait()
        finally:
            self._in_flight -= 1
        prompt = reply.prompt_tokens if reply.prompt_tokens is not None else request.body_bytes // 4
        completion = reply.completion_tokens if reply.completion_tokens is not None else len(reply.content) // 4
        usage = Usage(prompt, completion, calls=1, reported=reply.report_usage) if reply.report_usage else Usage(calls=1)
        return ChatReply(content=reply.content, model=request.model, usage=usage, duration=0.0)


_: type[ChatModel] = MemoryModel  # the protocol, checked by mypy
