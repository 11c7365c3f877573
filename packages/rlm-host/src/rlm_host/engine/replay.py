"""``--resume``'s replay: the root's host calls answered from a recorded run.

A filter on the stream of the root's host calls: while it is active, a child call or a tool
call gets the answer recorded for it, and nothing runs; after ``finish``, calls reach the
engine's handler as in any run.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict, deque
from typing import Any

from rlm_protocol import (
    HostCall,
    LlmQuery,
    PromptRef,
    RlmQuery,
    ToolCall,
    decode_host_call,
    text_blake2b,
)

from ..host_calls import HostCallHandler
from ..tools import args_sha256

__all__ = ["Replay"]


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
        self._active = True

    @property
    def active(self) -> bool:
        return self._active

    def finish(self) -> list[str]:
        """End the replay: later calls reach the engine. Returns ``problems``."""
        self._active = False
        return list(self.problems)

    def filter(self, handler: HostCallHandler) -> HostCallHandler:
        """``handler`` behind the replay: it sees only the calls made after ``finish`` (and
        calls the original run refused too: unknown methods, malformed payloads)."""

        async def replayed(call: HostCall) -> Any:
            if self._active:
                request = decode_host_call(call)
                if isinstance(request, (RlmQuery, LlmQuery, ToolCall)):
                    return self.answer(request)
            return await handler(call)

        return replayed

    def answer(self, request: RlmQuery | LlmQuery | ToolCall) -> Any:
        """The recorded answer of ``request``; raises what the original call raised, or
        ``LookupError`` when there is none."""
        if isinstance(request, ToolCall):
            key = (request.name, args_sha256(request.name, request.args, request.kwargs))
            queue = self.tools.get(key)
            if not queue:
                problem = f"tool call {request.name}(...) has no recorded result; it failed in the replay"
                self.problems.append(problem)
                raise LookupError(problem)
            result, error = queue.popleft()
            if error is not None:
                raise RuntimeError(f"(recorded) {error}")
            return result
        method = "rlm_query" if isinstance(request, RlmQuery) else "llm_query"
        if isinstance(request.prompt, PromptRef):
            prompt = request.prompt.prefix
            keys = [f"blake2b:{request.prompt.blake2b}"]
        else:
            prompt = request.prompt
            keys = [f"sha256:{_sha256(prompt)}", f"blake2b:{text_blake2b(prompt)}"]
        queue_children = next((self.children[(method, k)] for k in keys if self.children.get((method, k))), None)
        if not queue_children:
            problem = f"{method}({prompt[:60]!r}...) has no recorded answer; it failed in the replay"
            self.problems.append(problem)
            raise LookupError(problem)
        return queue_children.popleft()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="replace")).hexdigest()
