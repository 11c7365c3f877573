"""Typed host calls: every method's payload (PROTOCOL.md sections 4, 4.2 and host tools) decodes
to its Struct, the frame stays what the wire carries, and anything else is a refusal value."""

from __future__ import annotations

import pytest

from rlm_protocol import (
    HostCall,
    LlmQuery,
    MalformedHostCall,
    PromptRef,
    RlmQuery,
    ToolCall,
    UnknownHostCall,
    decode_host_call,
    encode,
)
from rlm_protocol.codec import HEADER_BYTES, decode_body
from rlm_protocol.host_calls import host_call

REF = PromptRef(ref="r1", chars=10, lines=1, prefix="0123456789", blake2b="ab" * 32)


@pytest.mark.parametrize(
    ("method", "payload", "expected"),
    [
        # The guest always sends ``model``, nil when not given (PROTOCOL.md, section 4).
        ("rlm_query", {"prompt": "q", "model": None}, RlmQuery("q")),
        ("rlm_query", {"prompt": "q", "model": "small"}, RlmQuery("q", "small")),
        # 1.1 (section 4.2): the prompt travels by reference under ``prompt_ref``.
        ("rlm_query", {"prompt_ref": {"ref": "r1", "chars": 10, "lines": 1, "prefix": "0123456789",
                                      "blake2b": "ab" * 32}, "model": None}, RlmQuery(REF)),
        ("llm_query", {"prompt": "q", "model": None}, LlmQuery("q")),
        # A host reads an absent ``model`` as nil.
        ("llm_query", {"prompt": "q"}, LlmQuery("q")),
        ("tool", {"name": "search", "args": [1], "kwargs": {"k": "v"}}, ToolCall("search", [1], {"k": "v"})),
        # A field a newer minor adds is ignored, not refused.
        ("llm_query", {"prompt": "q", "model": None, "temperature": 0.2}, LlmQuery("q")),
    ],
)
def test_each_method_decodes_to_its_struct(method: str, payload: dict[str, object], expected: object) -> None:
    frame = HostCall(session="s1", call=7, method=method, payload=payload)
    assert decode_host_call(frame) == expected


@pytest.mark.parametrize("request_", [RlmQuery("q", "m"), RlmQuery(REF), LlmQuery("q"), ToolCall("t", [1], {})])
def test_typed_requests_round_trip_through_the_unchanged_wire(request_: RlmQuery | LlmQuery | ToolCall) -> None:
    data = encode(host_call("s2", 3, request_))
    frame = decode_body(data[HEADER_BYTES:])
    assert isinstance(frame, HostCall) and (frame.session, frame.call) == ("s2", 3)
    assert decode_host_call(frame) == request_


def test_a_prompt_by_reference_keeps_the_wire_key_prompt_ref() -> None:
    assert set(host_call("s1", 1, RlmQuery(REF)).payload) == {"prompt_ref", "model"}


def test_an_unknown_method_is_a_value_with_a_typed_reply() -> None:
    decoded = decode_host_call(HostCall(session="s1", call=1, method="launch_rockets", payload={"n": 1}))
    assert decoded == UnknownHostCall("launch_rockets", {"n": 1})
    error = decoded.error()
    assert (error.name, error.message) == ("ValueError", "unknown host call 'launch_rockets'")


@pytest.mark.parametrize(
    ("method", "payload", "detail"),
    [
        ("rlm_query", {"prompt": 5}, "needs a str prompt, got int"),
        ("rlm_query", {"prompt": {"ref": "r"}}, "needs a str prompt, got dict"),
        ("rlm_query", {"prompt_ref": {"ref": "r"}}, "missing required field"),
        ("llm_query", {}, "missing required field `prompt`"),
        ("llm_query", {"prompt": "q", "model": 3}, "Expected `str | null`, got `int`"),
        ("tool", {"name": "t", "args": {"a": 1}}, "Expected `array`, got `object`"),
    ],
)
def test_a_payload_that_does_not_fit_its_method_is_a_typed_refusal(
    method: str, payload: dict[str, object], detail: str
) -> None:
    decoded = decode_host_call(HostCall(session="s1", call=1, method=method, payload=payload))
    assert isinstance(decoded, MalformedHostCall) and decoded.method == method
    assert detail in decoded.detail
    assert decoded.error().name == "TypeError" and decoded.error().message.startswith(f"{method}: ")
