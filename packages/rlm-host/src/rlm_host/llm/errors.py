"""Errors of the model clients.

They subclass ``RlmError``, so one clause catches every rlm failure, and each message says
what to do, because the CLI prints it as it is.
"""

from __future__ import annotations

from ..errors import RlmError

__all__ = [
    "ContextLengthExceeded",
    "ModelError",
    "ModelNotFound",
    "ModelResponseError",
    "ModelServerDown",
    "ModelServerError",
]


class ModelError(RlmError):
    """Base of every error raised by a model client; ``url`` is the endpoint that failed."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class ModelServerDown(ModelError):
    """No connection to the model server after every retry (refused, DNS, connect timeout)."""

    def __init__(self, url: str, reason: str, *, attempts: int) -> None:
        super().__init__(
            f"model server at {url} is not reachable after {attempts} attempt(s): {reason}. "
            "Start it (for Ollama: `ollama serve`), or point rlm at another one with "
            "--llm-url / RLM_LLM_URL (OLLAMA_HOST or OPENAI_BASE_URL for --api openai).",
            url=url,
        )
        self.reason = reason
        self.attempts = attempts


class ModelNotFound(ModelError):
    """The server answered but does not have the model that was asked for."""

    def __init__(self, url: str, model: str, detail: str, *, api: str = "ollama") -> None:
        if api == "ollama":
            fix = f"Pull it: `ollama pull {model}`"
        else:
            fix = (
                f"Serve it (vLLM: `vllm serve {model}`, or --served-model-name {model}; "
                f"llama.cpp: --alias {model})"
            )
        super().__init__(
            f"model {model!r} is not available at {url}: {detail}. "
            f"{fix}, or choose another with --model / RLM_MODEL (`rlm doctor` lists the server's models).",
            url=url,
        )
        self.model = model


class ModelServerError(ModelError):
    """The server kept answering with an HTTP error (5xx/429 after every retry, or another 4xx)."""

    def __init__(
        self,
        url: str,
        status: int,
        detail: str,
        *,
        attempts: int,
        retry_after: float | None = None,
    ) -> None:
        what = f"HTTP {status}" if status else "a broken transfer"
        super().__init__(
            f"model server at {url} answered {what} after {attempts} attempt(s): {detail}",
            url=url,
        )
        #: 0 when no status was received (the connection broke during the transfer).
        self.status = status
        self.attempts = attempts
        #: The server's ``Retry-After``, in seconds, when it sent one.
        self.retry_after = retry_after


class ModelResponseError(ModelError):
    """The server answered 200 with a body that is not the JSON shape of its API."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"malformed response from model server at {url}: {detail}", url=url)



class ContextLengthExceeded(ModelServerError):
    """The server refused the request as longer than the model's window (vLLM, llama.cpp:
    HTTP 400); ``window`` is the size it named, when it named one."""

    def __init__(self, url: str, status: int, detail: str, *, attempts: int, window: int | None) -> None:
        super().__init__(url, status, detail, attempts=attempts)
        self.window = window
