"""Which model server to talk to, and how patiently: resolved once from options and environment.

Precedence, highest first: an explicit argument (CLI flag or API option), ``RLM_MODEL`` /
``RLM_LLM_URL`` (they override both APIs), the API's own variable (``OLLAMA_HOST`` for Ollama,
``OPENAI_BASE_URL`` and ``OPENAI_API_KEY`` for OpenAI-compatible servers), then the seed's
defaults (model ``qwen3.6`` on Ollama at ``http://localhost:11434``). ``RLM_API=openai`` picks the
OpenAI-compatible API when no API is given explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "Api",
    "DEFAULT_MODEL",
    "DEFAULT_OLLAMA_URL",
    "DEFAULT_OPENAI_URL",
    "LlmConfig",
]

Api = Literal["ollama", "openai"]

#: The seed's default model and server.
DEFAULT_MODEL: Final = "qwen3.6"
DEFAULT_OLLAMA_URL: Final = "http://localhost:11434"
#: vLLM's and llama.cpp's default port; LM Studio users pass their own URL.
DEFAULT_OPENAI_URL: Final = "http://localhost:8000/v1"


def _with_scheme(url: str) -> str:
    """Add ``http://`` to a bare ``host:port`` (how ``OLLAMA_HOST`` is usually written)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url


@dataclass(frozen=True)
class LlmConfig:
    """Everything a model client needs; immutable so that one config is shared by a whole run.

    The defaults of the timeouts follow the seed, whose single request timeout was 900 s: a big
    local model can think for minutes before its first token. Connecting, though, is fast or
    hopeless, so it fails after 10 s and goes to the retry loop.
    """

    api: Api = "ollama"
    base_url: str = DEFAULT_OLLAMA_URL
    model: str = DEFAULT_MODEL
    api_key: str | None = None
    #: Ask for streamed replies (NDJSON for Ollama, SSE for OpenAI); the result is the same text.
    stream: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 900.0
    #: Retries after the first attempt, on connection errors and HTTP 5xx/429.
    max_retries: int = 4
    #: Backoff before retry n (0-based) is ``min(backoff_max, backoff_base * 2**n)`` seconds.
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    #: Extra fields merged into every request body (e.g. ``{"options": {"temperature": 0}}``).
    extra_body: Mapping[str, object] | None = None
    #: Reasoning on/off or a level ("low", "medium", "high"); ``None``: not sent, the server's
    #: default. Ollama: the ``think`` field; OpenAI shape: ``chat_template_kwargs.enable_thinking``
    #: and, for a level, ``reasoning_effort``.
    think: bool | str | None = None
    #: Ollama ``options.num_ctx``: the window the server allocates for this model. Without it
    #: Ollama uses its own default (4k tokens under 24 GiB of VRAM) and silently drops the
    #: oldest messages that do not fit.
    num_ctx: int | None = None
    #: Ollama ``keep_alive``: how long the model stays loaded after a request. Ollama's default
    #: (5 minutes) is shorter than a long block, after which the next step would reload it.
    keep_alive: str | None = "30m"

    @classmethod
    def resolve(
        cls,
        *,
        api: Api | None = None,
        model: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> LlmConfig:
        """Build a config from explicit values, then the environment, then the defaults.

        >>> LlmConfig.resolve(environ={"OLLAMA_HOST": "gpu-box:11434"}).base_url
        'http://gpu-box:11434'
        >>> LlmConfig.resolve(api="openai", environ={"RLM_LLM_URL": "http://h:1/v1"}).endpoint
        'http://h:1/v1/chat/completions'
        """
        env = os.environ if environ is None else environ
        chosen_api: Api = api or ("openai" if env.get("RLM_API") == "openai" else "ollama")
        if chosen_api == "ollama":
            api_url = env.get("OLLAMA_HOST") or DEFAULT_OLLAMA_URL
            key = api_key
        else:
            api_url = env.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_URL
            key = api_key or env.get("OPENAI_API_KEY") or None
        return cls(
            api=chosen_api,
            base_url=_with_scheme(url or env.get("RLM_LLM_URL") or api_url),
            model=model or env.get("RLM_MODEL") or DEFAULT_MODEL,
            api_key=key,
        )

    @property
    def server_url(self) -> str:
        """The API's root: the base URL, with ``/v1`` for an OpenAI-compatible server.

        >>> LlmConfig(api="openai", base_url="http://h:8000").server_url
        'http://h:8000/v1'
        """
        base = self.base_url.rstrip("/")
        if self.api == "openai" and not base.endswith("/v1"):
            return base + "/v1"
        return base

    @property
    def endpoint(self) -> str:
        """The chat URL of this API.

        OpenAI base URLs conventionally end in ``/v1`` (``OPENAI_BASE_URL``); a bare server URL
        gets ``/v1`` added so that both spellings work.
        """
        base = self.base_url.rstrip("/")
        if self.api == "ollama":
            return base + "/api/chat"
        if base.endswith("/v1"):
            return base + "/chat/completions"
        return base + "/v1/chat/completions"
