"""``rlm chat FILE``: several questions about FILE in one REPL session, in the terminal.

Each line read from stdin is a question; the first one gets FILE as its context (bound as
``prompt``, as ``rlm run FILE --query`` does), and every variable the model's code makes stays for
the next questions. ``/file PATH`` attaches PATH as the context of the next question (bound as
``context_<turn>``); ``/quit`` or end of input ends the chat. Answers go to stdout, one per
question; the trajectory of the whole conversation is written once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import trio
import typer

from .api import RunOptions
from .cli_exit import fail
from .cli_guest import warn_unsandboxed
from .cli_run import read_input, think_value
from .conversation import Conversation
from .errors import RlmError
from .isolation import Isolation
from .llm import Api
from .tools import load_tool

__all__ = ["chat"]


def _read_line(prompt: str) -> str | None:
    if sys.stdin.isatty():
        print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    return None if line == "" else line.rstrip("\n")


async def _converse(options: RunOptions, first_context: str | None) -> None:
    async with Conversation.open(options) as conversation:
        context = first_context
        while True:
            line = await trio.to_thread.run_sync(_read_line, "? ")
            if line is None or line.strip() == "/quit":
                break
            question = line.strip()
            if not question:
                continue
            if question.startswith("/file "):
                context, _ = read_input(Path(question[len("/file ") :].strip()), stdin=False, param_hint=None)
                print(f"rlm: the next question gets {len(context)} characters of context", file=sys.stderr)
                continue
            result = await conversation.ask(question, context=context)
            context = None
            if result.answer is not None:
                print(result.answer, flush=True)
            else:
                print(f"(stopped: {result.stop_reason}: {result.detail})", flush=True)
        if sys.stdin.isatty():
            print(f"rlm: trajectory {conversation.trajectory_path}", file=sys.stderr)


def chat(
    file: Annotated[Optional[Path], typer.Argument(help="Context of the first question.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name [env: RLM_MODEL].")] = None,
    llm_url: Annotated[Optional[str], typer.Option(help="Model server URL [env: RLM_LLM_URL, ...].")] = None,
    api: Annotated[Optional[Api], typer.Option(help="Chat API of the server.")] = None,
    max_steps: Annotated[int, typer.Option(help="Steps of the root RLM per question.")] = 18,
    max_depth: Annotated[int, typer.Option(help="Recursion depth.")] = 3,
    context_tokens: Annotated[
        Optional[int], typer.Option(help="Model context in tokens: older turns are summarised near it.")
    ] = None,
    tool: Annotated[
        Optional[list[str]], typer.Option(help="A host function model code may call: module:function.")
    ] = None,
    isolation: Annotated[
        Isolation,
        typer.Option(help="vm: in the QEMU VM. local: a subprocess ON THIS MACHINE (unsafe)."),
    ] = Isolation.vm,
    memory_mb: Annotated[int, typer.Option(help="VM memory in MiB.")] = 1536,
    trajectory: Annotated[Optional[Path], typer.Option(help="Trajectory file of the conversation.")] = None,
    sub_model: Annotated[Optional[str], typer.Option(help="Model of llm_query and child RLMs (default: --model).")] = None,
    think: Annotated[
        Optional[bool], typer.Option("--think/--no-think", help="Switch a reasoning model's thinking on or off.")
    ] = None,
    think_level: Annotated[Optional[str], typer.Option(help="Reasoning level: low, medium or high.")] = None,
) -> None:
    """Ask questions about FILE one after another in one REPL session (one question per line)."""
    first_context = read_input(file, stdin=False, param_hint=None)[0] if file is not None else None
    try:
        host_tools = [load_tool(spec) for spec in tool or []]
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    warn_unsandboxed(isolation, None)
    try:
        options = RunOptions.of(
            model=model,
            llm_url=llm_url,
            api=api,
            max_steps=max_steps,
            max_depth=max_depth,
            context_tokens=context_tokens,
            host_tools=host_tools,
            isolation=isolation.value,
            memory_mb=memory_mb,
            trajectory_path=trajectory,
            sub_model=sub_model,
            think=think_value(think, think_level),
        )
    except ValueError as error:  # a bad value for the engine's Limits
        fail(error, cause=error)
    try:
        trio.run(_converse, options, first_context)
    except (RlmError, ValueError) as error:
        fail(error, cause=error)
