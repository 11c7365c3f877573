"""``RunOptions``: everything that shapes a run, composed of the parts each layer takes.

``RunOptions`` *contains* the engine's budgets (``limits``: ``Limits``), the model clients'
settings (``llm``: ``ModelOptions``) and how the guest starts (``guest``: ``GuestOptions``),
beside what belongs to the run itself (trajectory, callbacks, host tools). ``of`` builds one
from flat names, as the CLI, a batch's task lines and tests give them; each name goes to the
part that has a field of that name::

    >>> options = RunOptions.of(model="qwen3.6", max_steps=12, isolation="local")
    >>> options.llm.model, options.limits.max_steps, options.guest.isolation.value
    ('qwen3.6', 12, 'local')
    >>> options.replace(max_steps=3).limits.max_steps
    3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from typing_extensions import Unpack

import trio

from .engine import Limits, Price
from .isolation import GuestOptions, Isolation, guest_argv
from .llm import Api, DeltaCallback, LlmConfig
from .tools import DEFAULT_TOOL_TIMEOUT, HostTool
from .trajectory import EventSink

__all__ = ["DEFAULT_BLOCK_TIMEOUT", "ModelOptions", "RunOptionFields", "RunOptions"]

#: Seconds a block may run before the guest interrupts it (the seed's bash timeout).
DEFAULT_BLOCK_TIMEOUT = 300.0


@dataclass(frozen=True)
class ModelOptions:
    """The model and its server(s).

    ``model``, ``llm_url`` and ``api`` left at ``None`` come from the environment
    (``RLM_MODEL``, ``RLM_LLM_URL``, ``OLLAMA_HOST``, ``OPENAI_BASE_URL``; see ``LlmConfig``).
    """

    model: str | None = None
    llm_url: str | None = None
    api: Api | None = None
    #: Streamed model replies (same result; lets a progress display show text as it comes).
    stream: bool = False
    #: Retries of a failed model request (connection errors, HTTP 5xx/429).
    llm_retries: int = 4
    #: First backoff before a retry, in seconds; it doubles each time (up to 8 s).
    llm_backoff: float = 0.5
    #: Seconds to wait for a model reply (the seed's 900: big local models think long).
    llm_timeout: float = 900.0
    #: Reasoning on (``True``), off (``False``) or a level (``"low"``, ``"medium"``,
    #: ``"high"``); ``None`` sends nothing and leaves the server's default.
    think: bool | str | None = None
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


@dataclass(frozen=True)
class RunOptions:
    """Everything that shapes a run; the defaults are the seed's.

    ``guest``: where model code runs. ``Isolation.local`` runs it on this machine,
    unsandboxed: tests only. ``GuestOptions.command``: a guest started by this command instead
    (any program speaking PROTOCOL.md on stdio; rlm does not isolate it; the model is told what
    that guest's REPL is, Python or the bash REPL, and a guest with neither is refused).
    """

    #: Budgets of the run, and the model's context (``Limits.context_tokens``: older turns are
    #: summarised when a history nears it, and Ollama is asked for this window; ``None``: the
    #: server's word, Ollama ``/api/show`` capped at ``OLLAMA_WINDOW_CAP``, vLLM
    #: ``max_model_len``).
    limits: Limits = field(default_factory=Limits)
    llm: ModelOptions = field(default_factory=ModelOptions)
    guest: GuestOptions = field(default_factory=GuestOptions)
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
    #: A bound on model requests in flight shared by concurrent runs (a batch's pool), on top
    #: of ``limits.concurrency``, this run's own bound; ``None``: no shared bound.
    model_limiter: trio.CapacityLimiter | None = field(default=None, compare=False)
    #: Host functions model code may call (``rlm_host.tools``): plain functions or ``HostTool``.
    host_tools: Sequence[Callable[..., Any] | HostTool] = field(default=(), compare=False)
    #: Timeout of each call of a host tool given as a plain function.
    tool_timeout: float = DEFAULT_TOOL_TIMEOUT
    #: Send each reply's reasoning back in the history (it fills the window; off by default).
    history_reasoning: bool = False
    #: Treat a reply whose prompt-token count shows a truncated prompt as a window overflow
    #: (compact and send again). Off for a server whose counts leave out cached tokens.
    detect_truncation: bool = True
    #: Keep the task text beside the trajectory (``<trajectory>.prompt.txt``) for ``--resume``.
    save_prompt: bool = True

    @classmethod
    def names(cls) -> frozenset[str]:
        """The flat names ``of`` and ``replace`` take."""
        return frozenset().union(*_FIELDS.values(), {"guest_command"}) - {"command"}

    @classmethod
    def of(cls, **values: Unpack[RunOptionFields]) -> RunOptions:
        """Options from flat names (``max_steps``, ``model``, ``isolation``, ``guest_command``,
        ``exec_timeout``...), each given to the part that has it; ``TypeError`` for an unknown
        name, ``ValueError`` for a bad value (``Limits`` checks its own)."""
        return cls().replace(**values)

    def replace(self, **changes: Unpack[RunOptionFields]) -> RunOptions:
        """These options with the flat names in ``changes`` changed (see ``of``)."""
        values: dict[str, Any] = dict(changes)
        if "isolation" in values:
            values["isolation"] = Isolation(values["isolation"])
        if "guest_command" in values:
            command = values.pop("guest_command")
            values["command"] = None if command is None else guest_argv(command)
        if "prices" in values:
            values["prices"] = dict(values["prices"])
        parts: dict[str, dict[str, Any]] = {"limits": {}, "llm": {}, "guest": {}, "": {}}
        for name, value in values.items():
            part = next((p for p in ("limits", "llm", "guest") if name in _FIELDS[p]), "")
            if not part and name not in _FIELDS[""]:
                raise TypeError(f"RunOptions has no option {name!r}")
            parts[part][name] = value
        return dataclasses.replace(
            self,
            limits=dataclasses.replace(self.limits, **parts["limits"]),
            llm=dataclasses.replace(self.llm, **parts["llm"]),
            guest=dataclasses.replace(self.guest, **parts["guest"]),
            **parts[""],
        )


class RunOptionFields(TypedDict, total=False):
    """The flat names ``RunOptions.of`` and ``replace`` take, with their types, so that a type
    checker catches a misspelt or mistyped option (``tests/test_options.py`` keeps this list
    equal to the parts' fields). Where a part keeps a value in another form, the flat name takes
    what a caller has: ``isolation`` a name, ``guest_command`` a shell string or an argv."""

    # Limits
    max_steps: int
    max_depth: int
    max_model_calls: int | None
    max_tokens: int | None
    max_seconds: float | None
    concurrency: int
    max_cost: float | None
    prices: Mapping[str, Price]
    context_tokens: int | None
    # ModelOptions
    model: str | None
    llm_url: str | None
    api: Api | None
    stream: bool
    llm_retries: int
    llm_backoff: float
    llm_timeout: float
    think: bool | str | None
    keep_alive: str | None
    sub_model: str | None
    sub_llm_url: str | None
    sub_api: Api | None
    models: Sequence[str]
    # GuestOptions
    isolation: Isolation | str
    memory_mb: int
    cpus: int | None
    network: bool
    guest_command: str | Sequence[str] | None
    # RunOptions' own
    tools: Sequence[str] | None
    exec_timeout: float | None
    trajectory_path: Path | None
    record_trajectory: bool
    on_event: EventSink | None
    on_delta: DeltaCallback | None
    model_limiter: trio.CapacityLimiter | None
    host_tools: Sequence[Callable[..., Any] | HostTool]
    tool_timeout: float
    history_reasoning: bool
    detect_truncation: bool
    save_prompt: bool


#: The field names of each part (``""``: RunOptions' own), for ``RunOptions.of``.
_FIELDS: dict[str, frozenset[str]] = {
    "limits": frozenset(f.name for f in dataclasses.fields(Limits)),
    "llm": frozenset(f.name for f in dataclasses.fields(ModelOptions)),
    "guest": frozenset(f.name for f in dataclasses.fields(GuestOptions)),
    "": frozenset(f.name for f in dataclasses.fields(RunOptions)) - {"limits", "llm", "guest"},
}
