"""Emulations of real model servers, from their documentation, over real HTTP.

``ScriptedModel`` answers politely; the servers people run do not. Each class here adds one
server's documented behaviour on top of it (the script still decides the model's words):

- ``OllamaServer``: ``/api/show`` and ``/api/tags``; thinking in ``message.thinking``, plain and
  streamed, unless the request says ``think: false`` (Ollama docs, "Thinking"; blog post
  "Thinking", 2025-05-30); a window of ``default_window`` tokens (4k: docs, "Context length",
  under 24 GiB of VRAM) unless the request sets ``options.num_ctx``; a request longer than the
  window is *not refused*: the system messages and the newest messages that fit are kept, the
  oldest dropped, the last one always kept (``server/prompt.go``, ``chatPrompt``), and
  ``prompt_eval_count`` counts what was kept; a missing model is a 404 on ``/api/show`` and
  ``/api/chat``.
- ``OpenAIServer``: vLLM (``flavour="vllm"``: ``/v1/models`` with ``max_model_len``; reasoning
  in ``reasoning`` or, before v0.10, ``reasoning_content``; docs "Reasoning Outputs") or
  llama.cpp's server (``flavour="llama.cpp"``: ``reasoning_content``, no window in
  ``/v1/models``; server README); a request longer than the window is refused with HTTP 400 in
  the server's own words; a missing model is vLLM's 404 "The model `x` does not exist.".
  ``reasoning_field=None`` is a server without a reasoning parser: the thinking stays inline as
  ``<think>…</think>`` before the answer.

Tokens are counted as the emulated tokenizer does: 4 characters per token plus 4 per message
(the chat template's markers), so that truncation and refusals happen where a real server's
would, give or take the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from tests.scripted_model import ChatRequest, Fail, Outcome, Reply, Script, ScriptedModel

__all__ = ["OLLAMA_DEFAULT_WINDOW", "ModelCard", "OllamaServer", "OpenAIServer", "Thought", "tokens"]

#: Ollama's window when the request has no ``options.num_ctx`` (docs, "Context length": 4k
#: tokens under 24 GiB of VRAM, the usual local machine).
OLLAMA_DEFAULT_WINDOW = 4096


@dataclass(frozen=True)
class Thought(Reply):
    """A reasoning model's reply: ``reasoning`` first, then the answer ``content``."""

    reasoning: str = ""


@dataclass(frozen=True)
class ModelCard:
    """A model as the server describes it."""

    name: str
    #: The model's own maximum context (Ollama ``<arch>.context_length``, vLLM ``max_model_len``).
    context_length: int | None = 40960
    capabilities: tuple[str, ...] = ("completion", "thinking")
    architecture: str = "qwen3"
    #: ``/api/show``'s ``thinking.values``: levels (gpt-oss) or on/off; empty: not listed.
    think_values: tuple[str | bool, ...] = ()


def tokens(messages: list[dict[str, str]]) -> int:
    """The emulated tokenizer's count of a prompt."""
    return sum(len(m.get("content", "")) // 4 + 4 for m in messages)


def _with_usage(outcome: Outcome, prompt_tokens: int) -> Outcome:
    """The script's reply with the prompt tokens the server really evaluated."""
    if isinstance(outcome, str):
        outcome = Reply(outcome)
    if isinstance(outcome, Reply) and outcome.prompt_tokens is None:
        return replace(outcome, prompt_tokens=prompt_tokens)
    return outcome


def _reasoning(reply: Reply) -> str:
    return reply.reasoning if isinstance(reply, Thought) else ""


def _chunks(text: str, size: int = 11) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class OllamaServer(ScriptedModel):
    """Ollama's documented behaviour (see the module docstring); ``seen`` holds the requests
    as the model saw them, after truncation."""

    def __init__(
        self,
        script: Script,
        *,
        models: tuple[ModelCard, ...] = (ModelCard("qwen3"),),
        default_window: int = OLLAMA_DEFAULT_WINDOW,
        honour_num_ctx: bool = True,
        latency: float = 0.0,
    ) -> None:
        super().__init__(script, latency=latency)
        self.cards = {card.name: card for card in models}
        self.default_window = default_window
        #: False: the window stays ``default_window`` whatever ``num_ctx`` says (a proxy that
        #: drops ``options``, or a server whose memory cannot hold more).
        self.honour_num_ctx = honour_num_ctx
        self.seen: list[ChatRequest] = []
        #: For each chat request: (tokens sent, tokens kept) as the server counted them.
        self.truncations: list[tuple[int, int]] = []

    def other_route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/api/tags":
            return 200, {"models": [{"name": f"{name}:latest", "model": f"{name}:latest"} for name in self.cards]}
        if method == "POST" and path == "/api/show":
            name = body.get("model") if isinstance(body, dict) else None
            card = self.cards.get(str(name).removesuffix(":latest"))
            if card is None:
                return 404, {"error": f"model '{name}' not found"}
            info: dict[str, Any] = {"general.architecture": card.architecture}
            if card.context_length is not None:
                info[f"{card.architecture}.context_length"] = card.context_length
            shown: dict[str, Any] = {"model_info": info, "capabilities": list(card.capabilities), "details": {"format": "gguf"}}
            if card.think_values:
                shown["thinking"] = {"values": list(card.think_values), "default": card.think_values[0]}
            return 200, shown
        return super().other_route(method, path, body)

    def window(self, request: ChatRequest) -> int:
        options = request.body.get("options")
        num_ctx = options.get("num_ctx") if isinstance(options, dict) else None
        if self.honour_num_ctx and isinstance(num_ctx, int):
            return num_ctx
        return self.default_window

    def _next_outcome(self, request: ChatRequest) -> Outcome:
        if request.model.removesuffix(":latest") not in self.cards:
            # /api/chat's own words for a model that was never pulled.
            return Fail(404, f'model "{request.model}" not found, try pulling it first')
        messages = request.messages
        window = self.window(request)
        kept = messages
        if tokens(messages) > window:
            # chatPrompt: walk back from the newest message; keep it always, and each older one
            # while the system messages plus messages[i:] still fit.
            start = len(messages) - 1
            for i in range(len(messages) - 2, -1, -1):
                systems = [m for m in messages[:i] if m.get("role") == "system"]
                if tokens(systems + messages[i:]) > window:
                    break
                start = i
            kept = [m for m in messages[:start] if m.get("role") == "system"] + messages[start:]
        with self._lock:
            self.truncations.append((tokens(messages), tokens(kept)))
        seen = replace(request, messages=kept)
        with self._lock:
            self.seen.append(seen)
        return _with_usage(super()._next_outcome(seen), tokens(kept))

    def _handler_class(self) -> type[Any]:
        base = super()._handler_class()
        server = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def _plain(self, request: ChatRequest, reply: Reply) -> dict[str, Any]:
                data: dict[str, Any] = super()._plain(request, reply)
                thinking = server._thinking(request, reply)
                if thinking:
                    data["message"]["thinking"] = thinking
                data["done_reason"] = "stop"
                return data

            def _stream(self, record: Any, request: ChatRequest, reply: Reply) -> None:
                thinking = server._thinking(request, reply)
                record.status = 200
                self.send_response(200)
                self.send_header("Connection", "close")
                self.close_connection = True
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                # Thinking streams first, in chunks whose content is empty, then the answer.
                lines = [{"message": {"role": "assistant", "content": "", "thinking": piece}, "done": False}
                         for piece in _chunks(thinking)]
                lines += [{"message": {"role": "assistant", "content": piece}, "done": False}
                          for piece in _chunks(reply.content)]
                for line in lines:
                    self.wfile.write(json.dumps(line).encode() + b"\n")
                    self.wfile.flush()
                last = {"message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
                        "prompt_eval_count": reply.prompt_tokens, "eval_count": len(reply.content) // 4}
                self.wfile.write(json.dumps(last).encode() + b"\n")

        return Handler

    def _thinking(self, request: ChatRequest, reply: Reply) -> str:
        """The thinking Ollama returns: none when the request switched it off."""
        if request.body.get("think") is False:
            return ""
        return _reasoning(reply)


class OpenAIServer(ScriptedModel):
    """vLLM or llama.cpp's server (see the module docstring)."""

    def __init__(
        self,
        script: Script,
        *,
        flavour: Literal["vllm", "llama.cpp"] = "vllm",
        models: tuple[ModelCard, ...] = (ModelCard("Qwen/Qwen3-8B", context_length=32768),),
        reasoning_field: Literal["reasoning", "reasoning_content"] | None = "reasoning",
        latency: float = 0.0,
    ) -> None:
        super().__init__(script, latency=latency)
        self.flavour = flavour
        self.cards = {card.name: card for card in models}
        self.reasoning_field = reasoning_field
        self.refusals: list[tuple[int, int]] = []

    def other_route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/v1/models":
            data = []
            for card in self.cards.values():
                entry: dict[str, Any] = {"id": card.name, "object": "model", "owned_by": self.flavour}
                if self.flavour == "vllm" and card.context_length is not None:
                    entry["max_model_len"] = card.context_length  # vLLM's ModelCard
                data.append(entry)
            return 200, {"object": "list", "data": data}
        return super().other_route(method, path, body)

    def _next_outcome(self, request: ChatRequest) -> Outcome:
        card = self.cards.get(request.model)
        if card is None:
            if self.flavour == "vllm":
                return Fail(404, f"The model `{request.model}` does not exist.")
            card = next(iter(self.cards.values()))  # llama.cpp serves its one model under any name
        sent = tokens(request.messages)
        window = card.context_length
        if window is not None and sent > window:
            with self._lock:
                self.refusals.append((sent, window))
            if self.flavour == "vllm":
                return Fail(400, (
                    f"This model's maximum context length is {window} tokens. However, you requested "
                    f"{sent} tokens ({sent} in the messages, 0 in the completion). Please reduce the "
                    "length of the messages or completion."
                ))
            return Fail(400, f"request ({sent} tokens) exceeds the available context size ({window} tokens), try increasing it")
        return _with_usage(super()._next_outcome(request), sent)

    def _handler_class(self) -> type[Any]:
        base = super()._handler_class()
        server = self

        class Handler(base):  # type: ignore[misc, valid-type]
            def _send_json(self, record: Any, status: int, data: dict[str, Any]) -> None:
                if status >= 400 and isinstance(data.get("error"), str):
                    data = server._error_body(status, data["error"])
                super()._send_json(record, status, data)

            def _plain(self, request: ChatRequest, reply: Reply) -> dict[str, Any]:
                data: dict[str, Any] = super()._plain(request, reply)
                message = data["choices"][0]["message"]
                reasoning = _reasoning(reply)
                if server.reasoning_field is None:
                    if reasoning:
                        message["content"] = f"<think>\n{reasoning}\n</think>\n\n{reply.content}"
                else:
                    message[server.reasoning_field] = reasoning or None
                if "usage" in data:
                    data["usage"]["completion_tokens_details"] = {"reasoning_tokens": len(reasoning) // 4}
                return data

            def _stream(self, record: Any, request: ChatRequest, reply: Reply) -> None:
                reasoning = _reasoning(reply)
                record.status = 200
                self.send_response(200)
                self.send_header("Connection", "close")
                self.close_connection = True
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
                if server.reasoning_field is None:
                    text = f"<think>\n{reasoning}\n</think>\n\n{reply.content}" if reasoning else reply.content
                    deltas += [{"content": piece} for piece in _chunks(text)]
                else:
                    deltas += [{server.reasoning_field: piece} for piece in _chunks(reasoning)]
                    deltas += [{"content": piece} for piece in _chunks(reply.content)]
                for delta in deltas:
                    chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": len(reply.content) // 4,
                         "completion_tokens_details": {"reasoning_tokens": len(reasoning) // 4}}
                self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        """An error in the server's own shape."""
        if self.flavour == "vllm":
            kind = "NotFoundError" if status == 404 else "BadRequestError"
            return {"object": "error", "message": message, "type": kind, "param": None, "code": status}
        error: dict[str, Any] = {"code": status, "message": message, "type": "invalid_request_error"}
        if "context size" in message:
            error["type"] = "exceed_context_size_error"
        return {"error": error}

