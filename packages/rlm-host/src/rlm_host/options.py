"""``RunOptions``: everything that shapes a run, and the configurations made from it.

``limits()`` gives the engine's budgets, ``llm_config()``/``sub_llm_config()`` the model
clients', ``guest_options()`` how the guest starts (for a run, and for each guest of a batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import trio

from .engine import Limits, Price
from .isolation import GuestOptions, Isolation, guest_argv
from .llm import Api, DeltaCallback, LlmConfig
from .tools import DEFAULT_TOOL_TIMEOUT, HostTool
from .trajectory import EventSink

__all__ = ["DEFAULT_BLOCK_TIMEOUT", "RunOptions"]

#: Seconds a block may run before the guest interrupts it (the seed's bash timeout).
DEFAULT_BLOCK_TIMEOUT = 300.0


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run; the defaults are the seed's.

    ``model``, ``llm_url`` and ``api`` left at ``None`` come from the environment
    (``RLM_MODEL``, ``RLM_LLM_URL``, ``OLLAMA_HOST``, ``OPENAI_BASE_URL``; see ``LlmConfig``).
    """

    model: str | None = None
    llm_url: str | None = None
    api: Api | None = None
    #: Streamed model replies (same result; lets a progress display show text as it comes).
    stream: bool = False
    max_steps: int = 18
    max_depth: int = 3
    max_model_calls: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    #: Model requests in flight at once across the whole run.
    concurrency: int = 4
    #: Where model code runs. ``local`` runs it on this machine, unsandboxed: tests only.
    isolation: Literal["vm", "local"] = "vm"
    #: A guest started by this command instead (a string is split as a shell would): any
    #: program speaking PROTOCOL.md on stdio. rlm does not isolate it. The model is told what
    #: that guest's REPL is (Python, or the bash REPL); a guest with neither is refused.
    guest_command: str | Sequence[str] | None = None
    memory_mb: int = 1536
    network: bool = False
    #: Tools installed in the guest, named in the system prompt; ``None``: for ``vm``, the
    #: tools the image's manifest lists, for ``local`` the seed's list.
    tools: Sequence[str] | None = None
    #: Seconds after which the guest interrupts a block (``None``: no limit). The default is the
    #: seed's bash timeout: a block that loops forever costs five minutes, not the run.
    exec_timeout: float | None = DEFAULT_BLOCK_TIMEOUT
    #: Where to write the trajectory; ``None`` for the default location (see ``trajectory``).
    trajectory_path: Path | None = None
    #: ``False``: write no trajectory file (events still reach ``on_event``).
    record_trajectory: bool = True
    #: Called with every trajectory event as it happens (progress display, event API).
    on_event: EventSink | None = field(default=None, compare=False)
    #: Called with each piece of a streamed reply.
    on_delta: DeltaCallback | None = field(default=None, compare=False)
    #: Retries of a failed model request (connection errors, HTTP 5xx/429).
    llm_retries: int = 4
    #: First backoff before a retry, in seconds; it doubles each time (up to 8 s).
    llm_backoff: float = 0.5
    #: Seconds to wait for a model reply (the seed's 900: big local models think long).
    llm_timeout: float = 900.0
    #: A bound on model requests in flight shared by concurrent runs (a batch's pool), on top
    #: of ``concurrency``, this run's own bound; ``None``: no shared bound.
    model_limiter: trio.CapacityLimiter | None = field(default=None, compare=False)
    #: Host functions model code may call (``rlm_host.tools``): plain functions or ``HostTool``.
    host_tools: Sequence[Callable[..., Any] | HostTool] = field(default=(), compare=False)
    #: Timeout of each call of a host tool given as a plain function.
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT
    #: Cost budget of the run, priced with ``prices`` (per model; ``*`` for any other).
    max_cost: float | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    #: The model's context in tokens: older turns are summarised when a history nears it, and
    #: Ollama is asked for this window (``options.num_ctx``). ``None``: the server's word
    #: (Ollama ``/api/show``, capped at ``OLLAMA_WINDOW_CAP``; vLLM ``max_model_len``).
    context_tokens: int | None = None
    #: Reasoning on (``True``), off (``False``) or a level (``"low"``, ``"medium"``,
    #: ``"high"``); ``None`` sends nothing and leaves the server's default.
    think: bool | str | None = None
    #: Send each reply's reasoning back in the history (it fills the window; off by default).
    history_reasoning: bool = False
    #: Treat a reply whose prompt-token count shows a truncated prompt as a window overflow
    #: (compact and send again). Off for a server whose counts leave out cached tokens.
    detect_truncation: bool = True
    #: How long Ollama keeps the model loaded after a request (its ``keep_alive``);
    #: ``None`` leaves Ollama's default (5 minutes).
    keep_alive: str | None = "30m"
    #: The model of ``llm_query`` and of child RLMs (``None``: the root's model).
    sub_model: str | None = None
    #: The sub-model's server and API when it is not the root's.
    sub_llm_url: str | None = None
    sub_api: Api | None = None
    #: More models that code may name in ``rlm_query(..., model=...)`` (served by the root's
    #: server); the root's model and ``sub_model`` are always allowed.
    models: Sequence[str] = ()
    #: Keep the task text beside the trajectory (``<trajectory>.prompt.txt``) for ``--resume``.
    save_prompt: bool = True

    def limits(self) -> Limits:
        """The budgets of a run with these options."""
        return Limits(
            max_steps=self.max_steps,
            max_depth=self.max_depth,
            max_model_calls=self.max_model_calls,
            max_tokens=self.max_tokens,
            max_seconds=self.max_seconds,
            concurrency=self.concurrency,
            max_cost=self.max_cost,
            prices=dict(self.prices),
            context_tokens=self.context_tokens,
        )

    def guest_options(self) -> GuestOptions:
        """How to start the guest of a run (or each guest of a batch's pool) with these options."""
        return GuestOptions(
            isolation=Isolation(self.isolation), memory_mb=self.memory_mb, network=self.network,
            command=None if self.guest_command is None else guest_argv(self.guest_command),
        )

    def sub_llm_config(self) -> LlmConfig | None:
        """The sub-model's client configuration (its own server, or the root's), or ``None``."""
        if self.sub_model is None:
            return None
        root = self.llm_config()
        if self.sub_llm_url is None and self.sub_api is None:
            return replace(root, model=self.sub_model)
        api = self.sub_api or root.api
        config = LlmConfig.resolve(api=api, model=self.sub_model, url=self.sub_llm_url or (root.base_url if api == root.api else None))
        return replace(
            config,
            stream=root.stream, max_retries=root.max_retries, backoff_base=root.backoff_base,
            read_timeout=root.read_timeout, think=root.think, keep_alive=root.keep_alive,
        )

    def llm_config(self) -> LlmConfig:
        """The model client's configuration: options first, then the environment."""
        config = LlmConfig.resolve(api=self.api, model=self.model, url=self.llm_url)
        return replace(
            config,
            stream=self.stream,
            max_retries=self.llm_retries,
            backoff_base=self.llm_backoff,
            read_timeout=self.llm_timeout,
            think=self.think,
            keep_alive=self.keep_alive,
        )
