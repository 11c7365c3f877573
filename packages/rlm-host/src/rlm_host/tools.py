"""Host tools: typed Python functions of the embedder that model code calls as ordinary functions.

An embedder registers functions (sync or async) with annotated parameters; each guest session gets
one stub per tool, defined by a Python block the engine runs when the session opens
(:func:`stub_code`). A stub sends its arguments as the host call ``tool`` with payload
``{"name": ..., "args": [...], "kwargs": {...}}`` (PROTOCOL.md section 4), so the wire protocol
is unchanged. On the host, :meth:`HostTool.call`:

- binds the arguments to the function's signature and converts each with ``msgspec.convert``
  against its annotation (a wrong type or arity raises ``ToolArgumentError``);
- runs the function under the tool's timeout (``ToolTimeout``; a sync function runs in a worker
  thread that is abandoned when the time is up);
- checks the result against the return annotation and sends it back as JSON
  (``ToolResultError`` when it is not).

Any exception reaches the model's code as ``RuntimeError("Name: message")``. Only the registered
functions are reachable: the engine answers any other name with ``UnknownTool``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgspec
import trio

from .errors import RlmError

__all__ = [
    "DEFAULT_TOOL_TIMEOUT",
    "HostTool",
    "ToolArgumentError",
    "ToolResultError",
    "ToolTimeout",
    "UnknownTool",
    "args_sha256",
    "as_tools",
    "load_tool",
    "stub_code",
    "tools_prompt",
]

#: Seconds a tool may take unless it says otherwise: long enough for a search or an HTTP call,
#: short enough that a hung tool does not hold a model's turn for the run's whole budget.
DEFAULT_TOOL_TIMEOUT: Final = 30.0

#: The guest hides the names listed in this namespace variable from ``SHOW_VARS`` and the state
#: summary, as it hides its own REPL functions (PROTOCOL.md section 4).
HIDDEN_NAMES_VARIABLE: Final = "_rlm_functions"


class ToolArgumentError(RlmError, TypeError):
    """A tool was called with arguments that do not fit its signature."""


class ToolResultError(RlmError, TypeError):
    """A tool returned something that is not JSON or not of its declared return type."""


class ToolTimeout(RlmError):
    """A tool did not return within its timeout."""


class UnknownTool(RlmError, LookupError):
    """Model code asked for a tool the host does not offer to this RLM."""


def _first_doc_line(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


class HostTool:
    """One function offered to model code.

    ``name`` defaults to the function's name; ``timeout`` bounds each call; ``children=False``
    keeps the tool from child RLMs (the root alone may call it).

    Raises ``ValueError`` for a name that is not a Python identifier or starts with ``_``.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        timeout: float = DEFAULT_TOOL_TIMEOUT,
        children: bool = True,
    ) -> None:
        self.function = function
        self.name = name or function.__name__
        if not self.name.isidentifier() or self.name.startswith("_"):
            raise ValueError(f"a tool name must be a public Python identifier, not {self.name!r}")
        self.timeout = timeout
        self.children = children
        # eval_str resolves ``from __future__ import annotations`` strings to real types.
        self.signature = inspect.signature(function, eval_str=True)
        self.is_async = inspect.iscoroutinefunction(function)
        self.doc = _first_doc_line(function)

    def __repr__(self) -> str:
        return f"HostTool({self.name}{self.signature})"

    @property
    def display(self) -> str:
        """``name(params) -> result`` as the model sees it."""
        return f"{self.name}{self.signature}"

    def bind(self, args: Sequence[Any], kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """Bind and convert JSON arguments to the annotated types, or raise ``ToolArgumentError``."""
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as error:
            raise ToolArgumentError(f"{self.name}(): {error}; the signature is {self.display}") from None
        for name, value in list(bound.arguments.items()):
            parameter = self.signature.parameters[name]
            annotation: Any = parameter.annotation
            if annotation is inspect.Parameter.empty:
                continue
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                annotation = list[annotation]
                value = list(value)
            elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
                annotation = dict[str, annotation]
            try:
                converted = msgspec.convert(value, annotation)
            except msgspec.ValidationError as error:
                raise ToolArgumentError(
                    f"{self.name}(): argument {name!r}: {error}; the signature is {self.display}"
                ) from None
            except TypeError as error:  # an annotation msgspec cannot check
                raise ToolArgumentError(f"{self.name}(): argument {name!r}: {error}") from None
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                converted = tuple(converted)
            bound.arguments[name] = converted
        return bound

    async def call(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Run the tool on JSON arguments and return its JSON result.

        Raises ``ToolArgumentError``, ``ToolTimeout``, ``ToolResultError`` or whatever the
        function raised. Cancellation abandons a sync function's thread.
        """
        bound = self.bind(args, kwargs)
        with trio.move_on_after(self.timeout) as scope:
            if self.is_async:
                result = await self.function(*bound.args, **bound.kwargs)
            else:
                work = functools.partial(self.function, *bound.args, **bound.kwargs)
                result = await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        if scope.cancelled_caught:
            raise ToolTimeout(f"{self.name}() did not return within {self.timeout:g} s")
        return self.check_result(result)

    def check_result(self, result: Any) -> Any:
        """The result as JSON values, checked against the return annotation."""
        try:
            value = msgspec.json.decode(msgspec.json.encode(result))
        except (TypeError, msgspec.EncodeError) as error:
            raise ToolResultError(f"{self.name}() returned a value that is not JSON: {error}") from None
        expected: Any = self.signature.return_annotation
        if expected is not inspect.Signature.empty:
            try:
                msgspec.convert(value, expected)
            except (msgspec.ValidationError, TypeError) as error:
                raise ToolResultError(
                    f"{self.name}() returned {type(result).__name__}, not its declared "
                    f"{inspect.formatannotation(expected)}: {error}"
                ) from None
        return value


def as_tools(functions: Iterable[Callable[..., Any] | HostTool], *, timeout: float = DEFAULT_TOOL_TIMEOUT) -> tuple[HostTool, ...]:
    """``HostTool``s from functions or tools; raises ``ValueError`` on a duplicate name."""
    tools: dict[str, HostTool] = {}
    for item in functions:
        tool = item if isinstance(item, HostTool) else HostTool(item, timeout=timeout)
        if tool.name in tools:
            raise ValueError(f"two host tools are named {tool.name!r}")
        tools[tool.name] = tool
    return tuple(tools.values())


def args_sha256(name: str, args: Any, kwargs: Any) -> str:
    """A stable key of one call's arguments (a replay answers a call by it)."""
    text = json.dumps([name, args, kwargs], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


_STUB_HELPER = '''
def _rlm_call_tool(_name, _args, _kwargs):
    import json as _json
    try:
        _payload = _json.loads(_json.dumps(
            {"name": _name, "args": list(_args), "kwargs": _kwargs}, allow_nan=False))
    except (TypeError, ValueError) as _error:
        raise TypeError(
            f"{_name}(): arguments must be JSON values (str, int, float, bool, None, "
            f"list, dict with str keys): {_error}") from None
    return host_call("tool", _payload)
'''


def stub_code(tools: Sequence[HostTool]) -> str:
    """The Python block that defines one stub per tool in a guest session."""
    parts = [_STUB_HELPER]
    for tool in tools:
        doc = tool.display + ("\n\n" + tool.doc if tool.doc else "")
        parts.append(
            f"def {tool.name}(*args, **kwargs):\n"
            f"    {doc!r}\n"
            f"    return _rlm_call_tool({tool.name!r}, args, kwargs)\n"
        )
    names = sorted(tool.name for tool in tools)
    parts.append(f"{HIDDEN_NAMES_VARIABLE} = frozenset({names!r})\n")
    return "\n".join(parts)


def tools_prompt(tools: Sequence[HostTool]) -> str:
    """The system prompt's lines about host tools (empty without tools)."""
    if not tools:
        return ""
    lines = [
        "- These host functions are available as globals; call them like ordinary Python "
        "functions with JSON arguments (a failure raises RuntimeError with the host's message):"
    ]
    for tool in tools:
        lines.append(f"  - `{tool.display}`" + (f": {tool.doc}" if tool.doc else ""))
    return "\n".join(lines)


def load_tool(spec: str) -> Callable[..., Any]:
    """``module:function`` → the function; the module is imported from the cwd or PYTHONPATH.

    Raises ``ValueError`` with a message for the command line.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--tool wants module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"--tool {spec}: cannot import {module_name}: {error}") from error
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"--tool {spec}: {module_name} has no {attribute}")
    if not callable(target):
        raise ValueError(f"--tool {spec}: {attribute} is not callable")
    function: Callable[..., Any] = target
    return function
