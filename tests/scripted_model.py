"""A scripted model server for tests: real HTTP, both chat APIs, plain and streamed.

It runs ``http.server.ThreadingHTTPServer`` in a thread on 127.0.0.1 (one thread per request, so
concurrent requests really overlap) and answers each request from a *script*: a function of the
request (its messages, model, API) that returns the assistant's text or an outcome such as
``Fail(500)``. Failures can also be queued with ``inject`` to hit the next requests whatever the
script says. Every request is logged with its body size and start/end times, so a test can assert
what the model was shown (sizes) and what ran together (overlap), without sleeping or timing.

>>> with ScriptedModel(lambda request: "hi") as server:
...     server.url.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

__all__ = [
    "ChatRequest",
    "Fail",
    "Hang",
    "Malformed",
    "Reply",
    "RequestRecord",
    "ScriptedModel",
    "Outcome",
    "Script",
]


@dataclass(frozen=True)
class Reply:
    """A successful reply; token counts default to a size-based estimate (bytes / 4)."""

    content: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: Leave usage out of the reply (servers that do not report tokens).
    report_usage: bool = True


@dataclass(frozen=True)
class Fail:
    """An HTTP error status with an ``{"error": message}`` body."""

    status: int = 500
    message: str = "scripted failure"


@dataclass(frozen=True)
class Malformed:
    """A 200 reply whose body is not the API's JSON."""

    body: str = "this is not json {"


@dataclass(frozen=True)
class Hang:
    """Never answer (until the server closes): for wall-time budgets and cancellation."""


Outcome = str | Reply | Fail | Malformed | Hang


@dataclass(frozen=True)
class ChatRequest:
    """One chat request as the server received it."""

    api: Literal["ollama", "openai"]
    model: str
    messages: list[dict[str, str]]
    stream: bool
    body_bytes: int
    #: The whole JSON body (options, think, keep_alive, chat_template_kwargs, ...).
    body: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: OpenAI's ``stream_options.include_usage``: only then does a stream end with a usage chunk.
    include_usage: bool = False
    #: The ``Authorization`` header as sent (``None`` when absent).
    authorization: str | None = None

    @property
    def system(self) -> str | None:
        """The system message, if any (RLM turns have one; plain leaf calls do not)."""
        for message in self.messages:
            if message.get("role") == "system":
                return message.get("content", "")
        return None

    @property
    def is_leaf(self) -> bool:
        """A plain chat call (``llm_query`` or ``rlm_query`` at the depth limit)."""
        return self.system is None

    @property
    def first_user(self) -> str:
        return next((m["content"] for m in self.messages if m.get("role") == "user"), "")

    @property
    def last_user(self) -> str:
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""

    @property
    def turn(self) -> int:
        """How many assistant replies came before this request (0 for the first step)."""
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    @property
    def prompt_prefix(self) -> str:
        """For an RLM turn, the prompt prefix from the metadata message; else the user text."""
        try:
            data = json.loads(self.first_user)
            prefix: str = data["state_metadata"]["prompt"]["prefix"]
            return prefix
        except (ValueError, KeyError, TypeError):
            return self.first_user


Script = Callable[[ChatRequest], Outcome]

#: The chat routes; every other path goes to ``ScriptedModel.other_route``.
CHAT_PATHS = frozenset({"/api/chat", "/v1/chat/completions"})


@dataclass
class RequestRecord:
    """What the server saw and did for one request (times from ``time.monotonic``)."""

    path: str
    body_bytes: int
    start: float
    end: float = 0.0
    status: int = 0
    request: ChatRequest | None = None

    def finish(self) -> None:
        """Mark the request served, before its last bytes go out: once the client has them it
        may send its next request, which must not count as overlapping this one."""
        if not self.end:
            self.end = time.monotonic()


def _usage_numbers(request: ChatRequest, reply: Reply) -> tuple[int, int]:
    prompt = reply.prompt_tokens if reply.prompt_tokens is not None else request.body_bytes // 4
    completion = (
        reply.completion_tokens if reply.completion_tokens is not None else len(reply.content) // 4
    )
    return prompt, completion


def _pieces(text: str, size: int = 7) -> list[str]:
    """Split a reply into small chunks so streamed parsing really joins several events."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) drops the SYNs of a burst of concurrent requests, which
    # then arrive a second later and look like a lack of concurrency on the client's side.
    request_queue_size = 128


class ScriptedModel:
    """The server; use as a context manager (``url``, ``log``, ``inject``, ``max_in_flight``)."""

    def __init__(
        self,
        script: Script,
        *,
        latency: float = 0.0,
        known_models: set[str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.script = script
        #: When set, a request without ``Authorization: Bearer <api_key>`` gets 401, as OpenAI's
        #: API answers (https://platform.openai.com/docs/api-reference/authentication).
        self.api_key = api_key
        #: Seconds every reply waits before it is sent (a slow model, to make overlap visible).
        self.latency = latency
        #: When set, a request for another model gets Ollama's/OpenAI's 404 "model not found".
        self.known_models = known_models
        self.log: list[RequestRecord] = []
        #: Requests to other routes than chat: (method, path, JSON body or None).
        self.other_requests: list[tuple[str, str, Any]] = []
        #: Exceptions raised by the script (re-raised by ``close`` so that the test fails).
        self.script_errors: list[Exception] = []
        self._injected: collections.deque[Outcome] = collections.deque()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval: ``shutdown`` waits for the serving loop to notice, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
        if self.script_errors and exc_info[0] is None:
            raise AssertionError(f"the model script failed: {self.script_errors[0]!r}") from (
                self.script_errors[0]
            )

    def close(self) -> None:
        """Release hanging requests, stop serving and free the port."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # --- test controls --------------------------------------------------------------------

    def inject(self, *outcomes: Outcome) -> None:
        """Answer the next requests with these outcomes, in order, before the script resumes."""
        with self._lock:
            self._injected.extend(outcomes)

    def requests(self) -> list[ChatRequest]:
        """The chat requests received so far, in arrival order."""
        with self._lock:
            return [record.request for record in self.log if record.request is not None]

    def max_in_flight(self) -> int:
        """The largest number of requests that were being served at the same moment."""
        with self._lock:
            events = [(r.start, 1) for r in self.log] + [(r.end, -1) for r in self.log]
        # Ends sort before starts at equal times, so back-to-back requests do not count as overlap.
        events.sort(key=lambda event: (event[0], event[1]))
        current = peak = 0
        for _, step in events:
            current += step
            peak = max(peak, current)
        return peak

    # --- routes other than chat -----------------------------------------------------------

    def other_route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """Status and JSON of a request to ``path`` that is not a chat call; emulations of real
        servers (``model_servers``) answer model listings and ``/api/show`` here."""
        return 404, {"error": f"no route {path}"}

    # --- serving --------------------------------------------------------------------------

    def _next_outcome(self, request: ChatRequest) -> Outcome:
        with self._lock:
            if self._injected:
                return self._injected.popleft()
        if self.known_models is not None and request.model not in self.known_models:
            return Fail(404, f"model '{request.model}' not found")
        try:
            return self.script(request)
        except Exception as error:
            # A failed assertion in a script is the test's failure: keep it for the test to
            # re-raise, and answer 400 so the client gives up at once instead of retrying.
            with self._lock:
                self.script_errors.append(error)
            return Fail(400, f"script raised {type(error).__name__}: {error}")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.1 with keep-alive, as Ollama and OpenAI-compatible servers answer: a new
            # connection per request would count in every measured gap between requests. A
            # stream is the one response without a length; it closes its connection.
            protocol_version = "HTTP/1.1"
            # Headers and body are separate writes: without this, Nagle's algorithm holds the
            # body back until the client's delayed ACK of the headers (up to 40 ms).
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test log is ``server.log``."""

            def do_POST(self) -> None:
                if self.path not in CHAT_PATHS:
                    self._serve_other("POST")
                    return
                record = RequestRecord(path=self.path, body_bytes=0, start=time.monotonic())
                with server._lock:
                    server.log.append(record)
                try:
                    self._serve(record)
                finally:
                    record.finish()

            def do_GET(self) -> None:
                self._serve_other("GET")

            def _serve_other(self, method: str) -> None:
                """A request that is not a chat call (model listing, ``/api/show``): answered by
                ``ScriptedModel.other_route``, kept apart from ``log``."""
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                with server._lock:
                    server.other_requests.append((method, self.path, body))
                status, data = server.other_route(method, self.path, body)
                self._send_raw(RequestRecord(self.path, len(raw), 0.0), status, json.dumps(data).encode(), "application/json")

            def _serve(self, record: RequestRecord) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                record.body_bytes = len(raw)
                if self.path == "/api/chat":
                    api: Literal["ollama", "openai"] = "ollama"
                elif self.path == "/v1/chat/completions":
                    api = "openai"
                else:
                    self._send_json(record, 404, {"error": f"no route {self.path}"})
                    return
                body = json.loads(raw)
                stream_options = body.get("stream_options") or {}
                request = ChatRequest(
                    api=api,
                    model=body.get("model", ""),
                    messages=body.get("messages", []),
                    stream=bool(body.get("stream", api == "ollama")),
                    body_bytes=len(raw),
                    body=body,
                    include_usage=bool(stream_options.get("include_usage", False)),
                    authorization=self.headers.get("Authorization"),
                )
                record.request = request
                if server.api_key is not None and request.authorization != f"Bearer {server.api_key}":
                    error = {"message": "Incorrect API key provided", "type": "invalid_request_error",
                             "code": "invalid_api_key"}
                    self._send_json(record, 401, {"error": error})
                    return
                outcome = server._next_outcome(request)
                if isinstance(outcome, str):
                    outcome = Reply(outcome)
                if isinstance(outcome, Hang):
                    server._closing.wait()
                    self._send_json(record, 503, {"error": "server closing"})
                    return
                if server.latency:
                    # The server plays a slow model; the test itself never sleeps.
                    server._closing.wait(server.latency)
                if isinstance(outcome, Fail):
                    self._send_json(record, outcome.status, {"error": outcome.message})
                elif isinstance(outcome, Malformed):
                    self._send_raw(record, 200, outcome.body.encode(), "application/json")
                elif request.stream:
                    self._stream(record, request, outcome)
                else:
                    self._send_json(record, 200, self._plain(request, outcome))

            def _plain(self, request: ChatRequest, reply: Reply) -> dict[str, Any]:
                prompt, completion = _usage_numbers(request, reply)
                if request.api == "ollama":
                    data: dict[str, Any] = {
                        "model": request.model,
                        "message": {"role": "assistant", "content": reply.content},
                        "done": True,
                    }
                    if reply.report_usage:
                        data.update(prompt_eval_count=prompt, eval_count=completion)
                    return data
                data = {
                    "object": "chat.completion",
                    "model": request.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.content},
                            "finish_reason": "stop",
                        }
                    ],
                }
                if reply.report_usage:
                    data["usage"] = {
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    }
                return data

            def _stream(self, record: RequestRecord, request: ChatRequest, reply: Reply) -> None:
                prompt, completion = _usage_numbers(request, reply)
                record.status = 200
                self.send_response(200)
                self.send_header("Connection", "close")
                self.close_connection = True
                if request.api == "ollama":
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.end_headers()
                    for piece in _pieces(reply.content):
                        line = {"message": {"role": "assistant", "content": piece}, "done": False}
                        self.wfile.write(json.dumps(line).encode() + b"\n")
                        self.wfile.flush()
                    last: dict[str, Any] = {
                        "message": {"role": "assistant", "content": ""},
                        "done": True,
                    }
                    if reply.report_usage:
                        last.update(prompt_eval_count=prompt, eval_count=completion)
                    record.finish()
                    self.wfile.write(json.dumps(last).encode() + b"\n")
                    return
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for piece in _pieces(reply.content):
                    chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
                # OpenAI streams usage only when asked, as a last chunk with empty ``choices``
                # (API reference, "Create chat completion", ``stream_options.include_usage``).
                if reply.report_usage and request.include_usage:
                    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
                    self.wfile.write(
                        b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n"
                    )
                record.finish()
                self.wfile.write(b"data: [DONE]\n\n")

            def _send_json(self, record: RequestRecord, status: int, data: dict[str, Any]) -> None:
                self._send_raw(record, status, json.dumps(data).encode(), "application/json")

            def _send_raw(self, record: RequestRecord, status: int, body: bytes, kind: str) -> None:
                record.status = status
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                record.finish()
                self.wfile.write(body)

        return Handler
