"""``rlm run``: answer a prompt (a file, stdin, a PDF, a question) with an RLM.

The answer alone goes to stdout (or, with ``--json``, one JSON object with the answer, usage and
trajectory path), so that ``rlm run`` composes in pipes. Progress goes to stderr, drawn with rich
only when stderr is a terminal; otherwise stderr stays quiet except for errors.

Exit status: 0 with an answer, 3 when a budget ended the run first, 2 on an error (model
server, guest, unreadable file).

``--tool module:function`` (repeatable) offers a host function to model code; ``--max-cost``
with ``--price model=in,out`` (or ``--prices FILE``) is a cost budget; ``--context-tokens``
compacts histories that approach the model's context; ``--resume TRAJECTORY`` continues an
interrupted run (FILE and the task options are then needed only when the task text was not kept
beside the trajectory).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import msgspec
import trio
import typer
from rich.console import Console

from .api import DEFAULT_BLOCK_TIMEOUT, RunOptions, RunResult, run_rlm
from .engine import Price, load_prices, paper_brief_task, parse_price, query_task, smoke_task
from .cli_exit import EXIT_BUDGET, fail
from .cli_guest import guest_command_argv, warn_unsandboxed
from .errors import RlmError
from .isolation import Isolation
from .llm import Api
from .pdf import is_pdf, pdf_text
from .progress import Progress
from .resume import ResumeError, resume_rlm
from .tools import DEFAULT_TOOL_TIMEOUT, load_tool
from .trajectory import Event, EventSink, Resumed

__all__ = ["build_prompt", "read_input", "run", "think_value"]

#: The seed's ``--smoke`` excerpt size when ``--limit-chars`` is not given.
SMOKE_DEFAULT_CHARS = 4000


def read_input(file: Path, *, stdin: bool = True, param_hint: str | None = "FILE") -> tuple[str, bool]:
    """The text of ``file`` (a PDF's extracted text) and whether it was a PDF.

    ``-`` is stdin when ``stdin`` is true (``rlm chat`` reads its questions there, so it passes
    false). A missing file is a usage error of ``param_hint``; an unreadable PDF raises
    ``PdfError``.
    """
    if stdin and str(file) == "-":
        data = sys.stdin.buffer.read()
        if data.startswith(b"%PDF-"):
            raise typer.BadParameter("a PDF on stdin is not supported: pass its path", param_hint="FILE")
        return data.decode("utf-8", errors="replace"), False
    if not file.exists():
        raise typer.BadParameter(f"{file} does not exist", param_hint=param_hint)
    if is_pdf(file):
        return pdf_text(file), True
    return file.read_text(encoding="utf-8", errors="replace"), False


def build_prompt(
    text: str | None, *, is_pdf: bool, query: str | None, smoke: bool, limit_chars: int | None
) -> str:
    """The task the root model gets, following the seed's rules.

    - ``--smoke``: the seed's smoke task on the first ``limit_chars`` (default 4000) characters;
    - ``--query``: the question, then the text (cut to ``limit_chars``) as a delimited context;
    - a PDF without a query: the seed's paper brief; any other text: the text verbatim.

    >>> build_prompt("body", is_pdf=False, query=None, smoke=False, limit_chars=None)
    'body'
    >>> build_prompt(None, is_pdf=False, query="2+2?", smoke=False, limit_chars=None)
    '2+2?'
    """
    if smoke:
        if text is None:
            raise typer.BadParameter("--smoke needs a FILE")
        return smoke_task(text[: limit_chars or SMOKE_DEFAULT_CHARS])
    if text is not None and limit_chars:
        text = text[:limit_chars]
    if query is not None:
        return query_task(query, text)
    if text is None:
        raise typer.BadParameter("give a FILE (or '-' for stdin), a --query, or both")
    return paper_brief_task(text) if is_pdf else text


def think_value(think: bool | None, level: str | None) -> bool | str | None:
    """The reasoning switch of ``--think/--no-think`` and ``--think-level`` (``None``: neither
    was given, nothing is sent).

    >>> think_value(None, None), think_value(False, None), think_value(None, "High")
    (None, False, 'high')
    """
    if level is not None:
        if think is False:
            raise typer.BadParameter("--no-think and --think-level contradict each other")
        return level.strip().lower()
    return think


def _with_resume_report(progress: Progress | None) -> EventSink:
    """Say on stderr what a resume restored and what it could not, then pass events on."""

    def sink(event: Event) -> None:
        if isinstance(event, Resumed):
            print(
                f"rlm: resumed {event.trajectory}: {event.steps_replayed} blocks replayed, "
                f"{event.history_messages} messages of history",
                file=sys.stderr,
            )
            for problem in event.problems:
                print(f"rlm: not restored: {problem}", file=sys.stderr)
        if progress is not None:
            progress(event)

    return sink


def _result_json(result: RunResult[Any]) -> str:
    return json.dumps(
        {
            "answer": result.answer,
            "cost": result.cost,
            "stop_reason": result.stop_reason,
            "detail": result.detail,
            "usage": msgspec.to_builtins(result.usage),
            "usage_by_model": msgspec.to_builtins(dict(result.usage_by_model)),
            "trajectory": str(result.trajectory_path) if result.trajectory_path else None,
            "duration": round(result.duration, 3),
            "run_id": result.run_id,
        },
        indent=2,
    )


def run(
    file: Annotated[
        Optional[Path], typer.Argument(help="Text or PDF file to work on; '-' reads stdin.")
    ] = None,
    query: Annotated[
        Optional[str], typer.Option("--query", "-q", help="The question; FILE becomes its context.")
    ] = None,
    smoke: Annotated[
        bool, typer.Option(help="The seed's smoke test: 3 bullets on the first --limit-chars.")
    ] = False,
    model: Annotated[Optional[str], typer.Option(help="Model name [env: RLM_MODEL].")] = None,
    llm_url: Annotated[
        Optional[str],
        typer.Option(help="Model server URL [env: RLM_LLM_URL, OLLAMA_HOST, OPENAI_BASE_URL]."),
    ] = None,
    api: Annotated[Optional[Api], typer.Option(help="Chat API of the server.")] = None,
    stream: Annotated[bool, typer.Option(help="Ask the server for streamed replies.")] = False,
    llm_retries: Annotated[
        int, typer.Option(help="Retries of a failed model request (connection, 5xx, 429).")
    ] = 4,
    max_steps: Annotated[int, typer.Option(help="Steps of the root RLM.")] = 18,
    max_depth: Annotated[int, typer.Option(help="Recursion depth; at the limit rlm_query is a plain call.")] = 3,
    max_model_calls: Annotated[Optional[int], typer.Option(help="Model calls in the whole run.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Tokens in the whole run.")] = None,
    max_seconds: Annotated[Optional[float], typer.Option(help="Wall time of the run.")] = None,
    concurrency: Annotated[int, typer.Option(help="Model requests in flight at once.")] = 4,
    memory_mb: Annotated[int, typer.Option(help="VM memory in MiB.")] = 1536,
    limit_chars: Annotated[
        Optional[int], typer.Option(help="Cut the input to this many characters.")
    ] = None,
    isolation: Annotated[
        Isolation,
        typer.Option(help="vm: in the QEMU VM. local: a subprocess ON THIS MACHINE (unsafe)."),
    ] = Isolation.vm,
    network: Annotated[bool, typer.Option(help="Give the VM a user-mode NAT network.")] = False,
    guest_command: Annotated[
        Optional[str],
        typer.Option(help="Run this guest instead (any program speaking PROTOCOL.md on stdio); NOT isolated by rlm."),
    ] = None,
    trajectory: Annotated[
        Optional[Path],
        typer.Option(help="Trajectory file [default: $XDG_STATE_HOME/rlm/trajectories/...]."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON object: answer, usage, trajectory path.")
    ] = False,
    tool: Annotated[
        Optional[list[str]],
        typer.Option(help="A host function model code may call: module:function (repeatable)."),
    ] = None,
    tool_timeout: Annotated[float, typer.Option(help="Seconds each host tool call may take.")] = DEFAULT_TOOL_TIMEOUT,
    max_cost: Annotated[Optional[float], typer.Option(help="Cost of the whole run, at --price.")] = None,
    price: Annotated[
        Optional[list[str]],
        typer.Option(help="model=in_per_1k,out_per_1k (repeatable; '*' for any other model)."),
    ] = None,
    prices: Annotated[
        Optional[Path], typer.Option(help="TOML or JSON file: {model: [in_per_1k, out_per_1k]}.")
    ] = None,
    context_tokens: Annotated[
        Optional[int], typer.Option(help="Model context in tokens: older turns are summarised near it.")
    ] = None,
    resume: Annotated[
        Optional[Path], typer.Option(help="Continue the interrupted run of this trajectory.")
    ] = None,
    block_timeout: Annotated[
        float,
        typer.Option(help="Seconds a block may run before it is interrupted (0: no limit)."),
    ] = DEFAULT_BLOCK_TIMEOUT,
    think: Annotated[
        Optional[bool],
        typer.Option(
            "--think/--no-think",
            help="Switch a reasoning model's thinking on or off (Ollama 'think', vLLM "
            "chat_template_kwargs.enable_thinking); unset: the server's default.",
        ),
    ] = None,
    think_level: Annotated[
        Optional[str], typer.Option(help="Reasoning level: low, medium or high (gpt-oss; OpenAI shape: reasoning_effort).")
    ] = None,
    history_reasoning: Annotated[
        bool, typer.Option(help="Send each reply's reasoning back in the history (fills the window).")
    ] = False,
    keep_alive: Annotated[
        str, typer.Option(help="How long Ollama keeps the model loaded between requests ('' : Ollama's default).")
    ] = "30m",
    sub_model: Annotated[
        Optional[str], typer.Option(help="Model of llm_query and child RLMs (default: --model).")
    ] = None,
    sub_llm_url: Annotated[Optional[str], typer.Option(help="Server of --sub-model (default: --llm-url).")] = None,
    sub_api: Annotated[Optional[Api], typer.Option(help="Chat API of --sub-llm-url.")] = None,
    allow_model: Annotated[
        Optional[list[str]],
        typer.Option(help="Another model code may name in rlm_query(..., model=...) (repeatable)."),
    ] = None,
    detect_truncation: Annotated[
        bool,
        typer.Option(
            "--truncation-check/--no-truncation-check",
            help="Treat a prompt-token count below what was sent as a silently truncated prompt "
            "(compact, send again). Off for servers whose counts leave out cached tokens.",
        ),
    ] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Progress shows each reply's reasoning, collapsed to a line.")
    ] = False,
) -> None:
    """Answer a prompt with a Recursive Language Model; the answer alone goes to stdout."""
    if smoke and query is not None:
        raise typer.BadParameter("--smoke runs the seed's fixed task: drop --query")
    try:
        text, pdf = read_input(file) if file is not None else (None, False)
    except RlmError as error:
        fail(error, cause=error)
    if resume is not None and text is None and query is None:
        prompt: str | None = None
    else:
        prompt = build_prompt(text, is_pdf=pdf, query=query, smoke=smoke, limit_chars=limit_chars)
    try:
        price_table: dict[str, Price] = load_prices(prices) if prices is not None else {}
        price_table.update(parse_price(item) for item in price or [])
        host_tools = [load_tool(spec) for spec in tool or []]
    except (ValueError, OSError) as error:
        raise typer.BadParameter(str(error)) from error

    console = Console(stderr=True)
    tty = console.is_terminal
    warn_unsandboxed(isolation, None if guest_command is None else guest_command_argv(guest_command))
    progress = Progress(console, verbose=verbose) if tty else None
    try:
        options = RunOptions.of(
            model=model,
            llm_url=llm_url,
            api=api,
            stream=stream,
            llm_retries=llm_retries,
            max_steps=max_steps,
            max_depth=max_depth,
            max_model_calls=max_model_calls,
            max_tokens=max_tokens,
            max_seconds=max_seconds,
            concurrency=concurrency,
            isolation=isolation.value,
            guest_command=guest_command,
            memory_mb=memory_mb,
            network=network,
            exec_timeout=block_timeout or None,
            trajectory_path=trajectory,
            on_event=_with_resume_report(progress) if resume is not None else progress,
            host_tools=host_tools,
            tool_timeout=tool_timeout,
            max_cost=max_cost,
            prices=price_table,
            context_tokens=context_tokens,
            think=think_value(think, think_level),
            history_reasoning=history_reasoning,
            detect_truncation=detect_truncation,
            keep_alive=keep_alive or None,
            sub_model=sub_model,
            sub_llm_url=sub_llm_url,
            sub_api=sub_api,
            models=tuple(allow_model or ()),
        )
    except ValueError as error:  # a bad value for the engine's Limits
        fail(error, cause=error)

    async def go() -> RunResult[Any]:
        if resume is not None:
            return await resume_rlm(resume, options=options, prompt=prompt)
        assert prompt is not None
        return await run_rlm(prompt, options=options)

    try:
        if progress is not None:
            with progress:
                result = trio.run(go)
        else:
            result = trio.run(go)
    except ResumeError as error:
        fail(f"cannot resume: {error}", cause=error)
    except (RlmError, ValueError) as error:
        fail(error, cause=error)
    if as_json:
        print(_result_json(result))
    elif result.answer is not None:
        print(result.answer)
    if result.answer is None:
        print(f"rlm: stopped without an answer ({result.stop_reason}): {result.detail}", file=sys.stderr)
        raise typer.Exit(EXIT_BUDGET)
    if tty:
        usage = result.usage
        console.print(
            f"[dim]{usage.calls} model calls, {usage.total_tokens} tokens, "
            f"{result.duration:.1f} s; trajectory {result.trajectory_path}"
        )
        if len(result.usage_by_model) > 1:
            for name, part in sorted(result.usage_by_model.items()):
                console.print(f"[dim]  {name}: {part.calls} calls, {part.total_tokens} tokens", highlight=False)
