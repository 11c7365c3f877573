"""The methods of ``HostCall``, typed: one Struct per method, decoded from the frame.

The wire keeps ``HostCall(method: str, payload: dict)`` (PROTOCOL.md, sections 4 and 4.2); this
module reads a frame's payload into the Struct of its method, so a host matches on types
instead of checking dictionaries by hand. A method this version does not know decodes to
``UnknownHostCall``, a payload that does not fit its method to ``MalformedHostCall``: both are
values, not exceptions, and ``HostCallRefusal.error`` is the reply a host sends for them.

>>> from rlm_protocol import HostCall
>>> decode_host_call(HostCall(session="s1", call=1, method="llm_query", payload={"prompt": "hi"}))
LlmQuery(prompt='hi', model=None)
>>> decode_host_call(HostCall(session="s1", call=2, method="launch", payload={}))
UnknownHostCall(method='launch', payload={})
>>> refused = decode_host_call(HostCall(session="s1", call=3, method="tool", payload={"name": 1}))
>>> refused.error().name
'TypeError'

``rlm_query_batched`` and ``llm_query_batched`` are several of these calls in flight at once
(``host_call.batched``), not methods of their own.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from .frames import HostCall, HostCallError, PromptRef

__all__ = [
    "HostCallRequest",
    "LlmQuery",
    "MalformedHostCall",
    "RlmQuery",
    "ToolCall",
    "UnknownHostCall",
    "decode_host_call",
    "host_call",
]


class RlmQuery(msgspec.Struct, frozen=True):
    """``rlm_query``: a child RLM on ``prompt`` (its text, or in 1.1 a ``PromptRef`` the guest
    keeps, sent as the payload's ``prompt_ref``); ``model`` ``None`` or ``""``: the host's choice."""

    prompt: str | PromptRef
    model: str | None = None


class LlmQuery(msgspec.Struct, frozen=True):
    """``llm_query``: one plain chat call on ``prompt``."""

    prompt: str
    model: str | None = None


class ToolCall(msgspec.Struct, frozen=True):
    """``tool``: a host tool by ``name`` (PROTOCOL.md, host tools)."""

    name: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


class UnknownHostCall(msgspec.Struct, frozen=True):
    """A method this version does not know (a newer peer's, or a typo in model code)."""

    method: str
    payload: dict[str, Any]

    def error(self) -> HostCallError:
        return HostCallError("ValueError", f"unknown host call {self.method!r}")


class MalformedHostCall(msgspec.Struct, frozen=True):
    """A known method whose payload does not fit it; ``detail`` says what is wrong."""

    method: str
    detail: str

    def error(self) -> HostCallError:
        return HostCallError("TypeError", f"{self.method}: {self.detail}")


#: What ``decode_host_call`` returns: a method's Struct, or a refusal to reply with.
HostCallRequest = Union[RlmQuery, LlmQuery, ToolCall, UnknownHostCall, MalformedHostCall]

#: Refusals: ``error()`` is the ``HostCallError`` to reply with.
HostCallRefusal = Union[UnknownHostCall, MalformedHostCall]

_METHODS: dict[str, type[RlmQuery | LlmQuery | ToolCall]] = {
    "rlm_query": RlmQuery,
    "llm_query": LlmQuery,
    "tool": ToolCall,
}


def decode_host_call(frame: HostCall) -> HostCallRequest:
    """The typed request of ``frame``; never raises. Fields a newer minor adds are ignored."""
    kind = _METHODS.get(frame.method)
    if kind is None:
        return UnknownHostCall(frame.method, dict(frame.payload))
    payload = frame.payload
    if kind is RlmQuery:
        if "prompt_ref" in payload:
            payload = {**payload, "prompt": payload["prompt_ref"]}
            payload.pop("prompt_ref")
        elif not isinstance(payload.get("prompt"), str):
            # Only ``prompt_ref`` may carry a reference: a mapping as ``prompt`` is a mistake.
            got = type(payload.get("prompt")).__name__
            return MalformedHostCall(frame.method, f"needs a str prompt, got {got}")
    try:
        return msgspec.convert(payload, kind)
    except msgspec.ValidationError as error:
        return MalformedHostCall(frame.method, str(error))


def host_call(session: str, call: int, request: RlmQuery | LlmQuery | ToolCall) -> HostCall:
    """The frame a guest sends for ``request`` (the inverse of ``decode_host_call``).

    >>> host_call("s1", 4, RlmQuery("q")).payload
    {'prompt': 'q', 'model': None}
    """
    method = next(name for name, kind in _METHODS.items() if isinstance(request, kind))
    payload: dict[str, Any] = msgspec.to_builtins(request)
    if isinstance(request, RlmQuery) and isinstance(request.prompt, PromptRef):
        payload["prompt_ref"] = payload.pop("prompt")
    return HostCall(session=session, call=call, method=method, payload=payload)
