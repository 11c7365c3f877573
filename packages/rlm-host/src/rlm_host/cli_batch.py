"""``rlm batch``: run every task of a JSONL file with an RLM, over a pool of VMs or a Ray cluster.

Results go to ``-o RESULTS.jsonl``, one line per task as it finishes (flushed: a killed batch
loses nothing, and ``--resume`` skips the ids already there); each task's trajectory goes to
``RESULTS.trajectories/<id>.jsonl``. At the end the summary (counts by status, accuracy,
tokens, wall time, tasks per minute) is printed to stdout as JSON. Progress goes to stderr as a
bar, only on a terminal.

The model and budget options are those of ``rlm run``: their definitions are taken from
``cli_run.run``'s signature (``SHARED_RUN_OPTIONS``), so both commands always agree.

Exit status: 0 when every task has a result line (whatever its status), 2 when the batch could
not run (bad task file, no guest could start, the results file exists without --resume).
"""

from __future__ import annotations

import enum
import inspect
import json
import time
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import trio
import typer
from rich.console import Console

from . import cli_run
from .api import RunOptions
from .batch import BatchOptions, BatchRun, ResultsFile, Summary, Task, TaskError, TaskResult, open_batch, read_tasks
from .engine import Price, load_prices, parse_price
from .cli_exit import fail
from .cli_guest import guest_command_argv, warn_unsandboxed
from .errors import RlmError
from .tools import load_tool

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["SHARED_RUN_OPTIONS", "EngineChoice", "batch"]

#: The options of ``rlm run`` that ``rlm batch`` takes too (each maps to a ``RunOptions`` field).
SHARED_RUN_OPTIONS = (
    "model", "llm_url", "api", "stream", "llm_retries",
    "max_steps", "max_depth", "max_model_calls", "max_tokens", "max_seconds", "max_cost",
    "concurrency", "context_tokens", "tool", "tool_timeout", "price", "prices",
    "isolation", "guest_command", "memory_mb", "network",
    "think", "think_level", "history_reasoning", "keep_alive", "detect_truncation",
    "sub_model", "sub_llm_url", "sub_api", "allow_model",
)


class EngineChoice(str, enum.Enum):
    """Where the pool runs."""

    local = "local"
    ray = "ray"


def _run_options(shared: dict[str, Any]) -> RunOptions:
    fields = RunOptions.names()
    values = {
        name: value.value if isinstance(value, enum.Enum) else value
        for name, value in shared.items()
        if name in fields
    }
    # The options that ``rlm run`` parses before they become ``RunOptions`` fields.
    values["host_tools"] = [load_tool(spec) for spec in shared.get("tool") or []]
    prices: dict[str, Price] = load_prices(shared["prices"]) if shared.get("prices") else {}
    prices.update(parse_price(item) for item in shared.get("price") or [])
    values["prices"] = prices
    values["think"] = cli_run.think_value(shared.get("think"), shared.get("think_level"))
    values["models"] = tuple(shared.get("allow_model") or ())
    if "keep_alive" in values:
        values["keep_alive"] = values["keep_alive"] or None
    return RunOptions.of(**values)


def _progress_line(run: BatchRun) -> str:
    return f"failed {run.failed} · in flight {run.in_flight} · {run.tokens:,} tokens"


async def _drive(
    tasks: list[Task], options: BatchOptions, results: ResultsFile, progress: Progress | None
) -> list[TaskResult]:
    finished: list[TaskResult] = []
    bar = progress.add_task("tasks", total=len(tasks), status="") if progress is not None else None
    async with open_batch(tasks, options) as run:
        async with trio.open_nursery() as nursery:
            if progress is not None and bar is not None:

                async def redraw() -> None:
                    while True:
                        progress.update(bar, completed=run.done, status=_progress_line(run))
                        await trio.sleep(0.5)

                nursery.start_soon(redraw)
            async for result in run:
                results.write(result)
                finished.append(result)
            nursery.cancel_scope.cancel()
        if progress is not None and bar is not None:
            progress.update(bar, completed=run.done, status=_progress_line(run))
    return finished


def _batch(
    tasks: Annotated[Path, typer.Argument(help="Tasks file: one JSON object per line (id, text|file, query, expected, options).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Results file (JSONL), appended as tasks finish.")],
    workers: Annotated[int, typer.Option(help="VMs in the pool (local) or Ray actors (ray).")] = 2,
    sessions_per_worker: Annotated[int, typer.Option(help="Tasks one VM runs at once.")] = 4,
    model_requests: Annotated[int, typer.Option(help="Model requests in flight across the pool.")] = 8,
    engine: Annotated[EngineChoice, typer.Option(help="local: VMs on this machine. ray: Ray actors.")] = EngineChoice.local,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start Ray locally).")] = None,
    ray_actor_replacements: Annotated[
        Optional[int], typer.Option(help="Ray actors started in place of dead ones, in all (default: --workers).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Keep RESULTS and skip the ids already in it.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start RESULTS afresh if it exists.")] = False,
    scorer: Annotated[str, typer.Option(help="exact, normalised, or module:function for tasks with 'expected'.")] = "normalised",
    trajectories: Annotated[Optional[Path], typer.Option(help="Folder for the trajectories (default: RESULTS.trajectories).")] = None,
    **shared: Any,
) -> None:
    """Run every task of TASKS with an RLM; results to -o as they finish, the summary to stdout."""
    try:
        run_options = _run_options(shared)
    except (ValueError, ImportError, AttributeError, OSError) as error:
        raise typer.BadParameter(str(error)) from error
    if output.exists() and output.stat().st_size > 0 and not (resume or overwrite):
        fail(f"{output} exists: --resume to continue it, --overwrite to start again")
    try:
        all_tasks = list(read_tasks(tasks))
    except (TaskError, OSError) as error:
        fail(error, cause=error)
    warn_unsandboxed(run_options.guest.isolation.value, run_options.guest.command)
    try:
        options = BatchOptions(
            run=run_options,
            workers=workers,
            sessions_per_worker=sessions_per_worker,
            model_requests=model_requests,
            engine=engine.value,
            ray_address=ray_address,
            ray_actor_replacements=ray_actor_replacements,
            trajectory_dir=(trajectories or output.with_name(output.stem + ".trajectories")).absolute(),
            base_dir=tasks.parent.absolute(),
            scorer=scorer,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    assert options.trajectory_dir is not None
    options.trajectory_dir.mkdir(parents=True, exist_ok=True)

    # rich.progress is imported for this command only: it is off the start of every other one.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    started = time.perf_counter()
    with ResultsFile(output, resume=resume) as results:
        todo = [task for task in all_tasks if task.key not in results.done]
        skipped = len(all_tasks) - len(todo)
        progress = (
            Progress(
                TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"), console=console,
            )
            if console.is_terminal
            else None
        )
        try:
            if progress is not None:
                with progress:
                    finished = trio.run(_drive, todo, options, results, progress)
            else:
                finished = trio.run(_drive, todo, options, results, None)
        except (RlmError, ValueError, ImportError, RuntimeError) as error:
            fail(f"the batch stopped: {error}", cause=error)
    summary = Summary.of(finished, wall_time=time.perf_counter() - started, skipped=skipped)
    print(json.dumps(summary.to_dict()))
    if console.is_terminal:
        counts = ", ".join(f"{count} {status}" for status, count in sorted(summary.by_status.items()))
        accuracy = f", accuracy {summary.accuracy:.1%}" if summary.accuracy is not None else ""
        console.print(
            f"[dim]{summary.tasks} tasks ({counts}){accuracy}, {summary.total_tokens:,} tokens, "
            f"{summary.wall_time:.1f} s, {summary.tasks_per_minute:.1f} tasks/min; results {output}"
        )


def _shared_parameters() -> list[inspect.Parameter]:
    """``rlm run``'s parameters named in ``SHARED_RUN_OPTIONS`` (those it has), resolved."""
    hints = typing.get_type_hints(cli_run.run, include_extras=True)
    parameters = inspect.signature(cli_run.run).parameters
    return [
        parameters[name].replace(annotation=hints[name], kind=inspect.Parameter.KEYWORD_ONLY)
        for name in SHARED_RUN_OPTIONS
        if name in parameters
    ]


def _signature() -> inspect.Signature:
    own = inspect.signature(_batch, eval_str=True).parameters.values()
    return inspect.Signature(
        [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.kind is not p.VAR_KEYWORD]
        + _shared_parameters()
    )


def batch(**params: Any) -> None:
    """Run every task of TASKS with an RLM; results to -o as they finish, the summary to stdout."""
    _batch(**params)


# Typer reads the command's parameters from its signature: ``batch`` shows its own and the model
# and budget options of ``rlm run``, defined once, in ``cli_run``.
batch.__signature__ = _signature()  # type: ignore[attr-defined]
