"""The chat client: one httpx connection pool, retries with backoff, typed errors.

The two wire formats (Ollama's ``/api/chat`` and OpenAI's ``/v1/chat/completions``) differ only
in how a request body is built and how a reply (plain or streamed) is read; those parts live in
``ollama.py`` and ``openai.py`` as ``WireFormat`` objects, and everything else is shared here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from . import _httpx  # noqa: F401  (first: keeps httpx's CLI module out)
import httpx
import trio

from .config import LlmConfig
from .errors import (
    ContextLengthExceeded,
    ModelNotFound,
    ModelResponseError,
    ModelServerDown,
    ModelServerError,
)
from .messages import ChatMessage, ChatReply, DeltaCallback, ModelInfo
from .ollama import OllamaWire
from .openai import OpenAIWire
from .reasoning import separate
from .wire import Parsed

__all__ = ["ChatClient", "WireFormat", "open_client"]

#: Statuses worth another attempt: the server is overloaded or restarting, not refusing us.
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

#: Transport failures that mean "no usable connection", retried and finally ``ModelServerDown``.
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
#: Failures after the request went out (server died mid-reply, read timeout): retried too, since
#: a chat call has no side effects, but reported as a server error when they persist.
_TRANSFER_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout)


class WireFormat(Protocol):
    """How one API encodes a chat request and decodes its reply."""

    def body(self, config: LlmConfig, model: str, messages: Sequence[ChatMessage], stream: bool) -> dict[str, Any]:
        """The JSON body of a request."""
        ...

    def parse(self, url: str, data: Any) -> Parsed:
        """Text, reasoning and usage of a plain reply; ``ModelResponseError`` if malformed."""
        ...

    async def parse_stream(
        self, url: str, lines: AsyncIterator[str], on_delta: DeltaCallback | None
    ) -> Parsed:
        """The same read from a streamed reply's lines; ``ModelResponseError`` if malformed."""
        ...

    def info_request(self, config: LlmConfig, model: str) -> tuple[str, str, dict[str, Any] | None]:
        """Method, URL and JSON body of the request that describes ``model``."""
        ...

    def parse_info(self, model: str, data: Any) -> ModelInfo:
        """What the reply to ``info_request`` says about ``model``."""
        ...

    def list_request(self, config: LlmConfig) -> str:
        """The URL that lists the server's models (GET)."""
        ...

    def parse_list(self, data: Any) -> tuple[str, ...]:
        """The model names of the reply to ``list_request``."""
        ...


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying; ``final`` is raised if none is left."""

    def __init__(self, final: Exception) -> None:
        super().__init__(str(final))
        self.final = final


#: How servers word a request longer than the window: vLLM ("This model's maximum context
#: length is 4096 tokens. However, you requested ..."), llama.cpp ("request (5000 tokens)
#: exceeds the available context size (4096 tokens)"), OpenAI (``context_length_exceeded``).
_CONTEXT_ERROR = re.compile(
    r"maximum context length|context size|context_length_exceeded|context window|exceed_context_size",
    re.IGNORECASE,
)
_WINDOW_NUMBER = re.compile(
    r"(?:maximum context length is|available context size \(|n_ctx\W+)\s*(\d+)", re.IGNORECASE
)


def context_error(status: int, detail: str) -> int | None | bool:
    """For a refused request: ``False`` when it is not about the window, else the window the
    server named (or ``None`` when it named none).

    >>> context_error(400, "This model's maximum context length is 4096 tokens. However, ...")
    4096
    >>> context_error(400, "request (5000 tokens) exceeds the available context size (4096 tokens)")
    4096
    >>> context_error(400, "bad temperature")
    False
    """
    if status not in (400, 413) or not _CONTEXT_ERROR.search(detail):
        return False
    match = _WINDOW_NUMBER.search(detail)
    return int(match.group(1)) if match else None


def _error_detail(response: httpx.Response) -> str:
    """The server's own error text, from ``{"error": ...}`` when it sent one."""
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or response.reason_phrase
    if isinstance(data, dict) and "error" in data:
        error = data["error"]
        if isinstance(error, dict):
            return str(error.get("message") or error)[:300]
        return str(error)[:300]
    return text[:300]


class ChatClient:
    """An async chat client for one server; use ``open_client`` or ``async with``.

    ``chat`` may be called from many tasks at once: httpx pools connections, so concurrent calls
    are concurrent requests. Cancellation of a ``chat`` call cancels its HTTP request.

    ``limiter``, shared by several clients (the runs of a batch), bounds their requests in
    flight together: each attempt holds one token, a backoff between attempts holds none.
    """

    def __init__(
        self, config: LlmConfig, wire: WireFormat, *, limiter: trio.CapacityLimiter | None = None
    ) -> None:
        self.config = config
        self._wire = wire
        self._limiter = limiter
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
        # No pool limit below the engine's own bound: the engine's CapacityLimiter decides how
        # many requests are in flight, and a smaller pool here would queue them silently.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
        # Loading the CA bundle costs ~0.1-0.2 s of CPU at every start: only https needs it
        # (redirects are not followed, so a plain-http server never leads to TLS).
        verify = not config.endpoint.startswith("http://")
        self._http = httpx.AsyncClient(
            headers=headers, timeout=timeout, limits=limits, trust_env=False, verify=verify
        )

    @property
    def url(self) -> str:
        """The chat endpoint this client posts to."""
        return self.config.endpoint

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        await self._http.aclose()

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None = None,
        stream: bool | None = None,
        on_delta: DeltaCallback | None = None,
    ) -> ChatReply:
        """Send ``messages`` and return the assistant's reply.

        Retries connection errors, interrupted transfers and HTTP 5xx/429 with exponential
        backoff (honouring ``Retry-After`` up to ``backoff_max``). Raises ``ModelServerDown``
        when no connection could be made, ``ModelNotFound`` when the server lacks the model,
        ``ModelServerError`` for persistent HTTP errors, ``ModelResponseError`` for a body that
        is not the API's JSON.
        """
        chosen_model = model or self.config.model
        use_stream = self.config.stream if stream is None else stream
        body = dict(self._wire.body(self.config, chosen_model, messages, use_stream))
        if self.config.extra_body:
            body.update(self.config.extra_body)
        payload = json.dumps(body).encode("utf-8")
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                if self._limiter is None:
                    parsed = await self._attempt(payload, chosen_model, use_stream, on_delta, attempt)
                else:
                    async with self._limiter:
                        parsed = await self._attempt(payload, chosen_model, use_stream, on_delta, attempt)
            except _Retry as retry:
                if attempt > self.config.max_retries:
                    raise retry.final from retry.final.__cause__
                await trio.sleep(self._backoff(attempt - 1, retry.final))
                continue
            answer, reasoning = separate(parsed.content, parsed.reasoning)
            return ChatReply(
                content=answer,
                model=chosen_model,
                usage=parsed.usage,
                duration=time.perf_counter() - started,
                attempts=attempt,
                reasoning=reasoning,
            )

    async def describe(self, model: str | None = None) -> ModelInfo:
        """What the server says about ``model`` (default: the configured one): its window,
        capabilities and reasoning levels; fields it does not report stay empty.

        One attempt, no retries: it runs at the start of a run, to fail in the first second.
        Raises ``ModelNotFound`` when Ollama does not have the model (the message lists the
        models it has); a server that cannot be reached or does not say gives an empty
        ``ModelInfo`` (the chat request then retries and reports what is wrong).
        """
        return await _describe(self._http, self._wire, self.config, model or self.config.model)

    async def list_models(self, *, strict: bool = False) -> tuple[str, ...]:
        """The names of the models the server offers (empty when it cannot say); with
        ``strict``, ``ModelServerDown`` when the server cannot be reached."""
        return await _list(self._http, self._wire, self.config, strict=strict)

    def _backoff(self, retry_index: int, error: Exception) -> float:
        delay = min(self.config.backoff_max, self.config.backoff_base * 2.0**retry_index)
        if isinstance(error, ModelServerError) and error.retry_after is not None:
            delay = min(self.config.backoff_max, max(delay, error.retry_after))
        return delay

    async def _attempt(
        self,
        payload: bytes,
        model: str,
        stream: bool,
        on_delta: DeltaCallback | None,
        attempt: int,
    ) -> Parsed:
        url = self.url
        request = self._http.build_request("POST", url, content=payload)
        try:
            response = await self._http.send(request, stream=True)
        except _CONNECT_ERRORS as error:
            down = ModelServerDown(url, f"{type(error).__name__}: {error}", attempts=attempt)
            down.__cause__ = error
            raise _Retry(down) from error
        except _TRANSFER_ERRORS as error:
            failed = ModelServerError(url, 0, f"{type(error).__name__}: {error}", attempts=attempt)
            failed.__cause__ = error
            raise _Retry(failed) from error
        try:
            if response.status_code != 200:
                await response.aread()
                self._raise_for_status(response, model, attempt)
            try:
                if stream:
                    return await self._wire.parse_stream(url, response.aiter_lines(), on_delta)
                raw = await response.aread()
            except _TRANSFER_ERRORS as error:
                failed = ModelServerError(url, 0, f"{type(error).__name__}: {error}", attempts=attempt)
                failed.__cause__ = error
                raise _Retry(failed) from error
        finally:
            await response.aclose()
        try:
            data = json.loads(raw)
        except ValueError as error:
            raise ModelResponseError(url, f"body is not JSON ({error}): {raw[:200]!r}") from error
        return self._wire.parse(url, data)

    def _raise_for_status(self, response: httpx.Response, model: str, attempt: int) -> None:
        url = self.url
        detail = _error_detail(response)
        status = response.status_code
        if status == 404 and "model" in detail.lower():
            raise ModelNotFound(url, model, detail, api=self.config.api)
        window = context_error(status, detail)
        if window is not False:
            raise ContextLengthExceeded(url, status, detail, attempts=attempt, window=window or None)
        if status in _RETRY_STATUSES:
            raise _Retry(
                ModelServerError(
                    url, status, detail, attempts=attempt, retry_after=_retry_after(response)
                )
            )
        if status == 404:
            raise ModelServerError(
                url,
                status,
                detail + f" (is {url} a {self.config.api} server? try --api "
                + ("openai" if self.config.api == "ollama" else "ollama") + ")",
                attempts=attempt,
            )
        raise ModelServerError(url, status, detail, attempts=attempt)


async def _describe(http: httpx.AsyncClient, wire: WireFormat, config: LlmConfig, model: str) -> ModelInfo:
    method, url, body = wire.info_request(config, model)
    try:
        response = await http.request(method, url, json=body)
    except httpx.HTTPError:
        # Not reachable (yet): the chat request retries with backoff and reports it.
        return ModelInfo(model)
    if response.status_code == 404 and config.api == "ollama" and "model" in _error_detail(response).lower():
        available = await _list(http, wire, config)
        listed = f"; the server has: {', '.join(available)}" if available else "; the server has no models"
        raise ModelNotFound(url, model, _error_detail(response) + listed, api=config.api)
    if response.status_code != 200:
        return ModelInfo(model)  # an older or other server: nothing known, nothing refused
    try:
        data = response.json()
    except ValueError:
        return ModelInfo(model)
    return wire.parse_info(model, data)


async def _list(
    http: httpx.AsyncClient, wire: WireFormat, config: LlmConfig, *, strict: bool = False
) -> tuple[str, ...]:
    url = wire.list_request(config)
    try:
        response = await http.get(url)
        return wire.parse_list(response.json()) if response.status_code == 200 else ()
    except (httpx.HTTPError, ValueError) as error:
        if strict and isinstance(error, httpx.TransportError):
            raise ModelServerDown(url, f"{type(error).__name__}: {error}", attempts=1) from error
        return ()


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds when the server sent it as a number (dates are ignored)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def open_client(config: LlmConfig, *, limiter: trio.CapacityLimiter | None = None) -> ChatClient:
    """A client for ``config.api``; close it with ``aclose`` or use it as ``async with``.

    ``limiter``: a bound on requests in flight shared with other clients (see ``ChatClient``).
    """
    wire: WireFormat = OllamaWire() if config.api == "ollama" else OpenAIWire()
    return ChatClient(config, wire, limiter=limiter)
