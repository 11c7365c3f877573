"""The ``rlm`` command line (typer). Progress goes to stderr; results alone go to stdout.

``app`` is the whole application, built on first use. ``main`` (the ``rlm`` script) builds only
the command it runs when that is ``rlm run``: the other commands' modules and typer's reading of
their parameters are ~0.1 s of a run's start to its first model request (README, Performance).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Optional

import trio
import typer

from .api import DEFAULT_BLOCK_TIMEOUT
from .cli_exit import fail
from .cli_guest import guest_command_argv, warn_unsandboxed
from .errors import RlmError
from .isolation import GuestOptions, Isolation, open_guest

__all__ = ["app", "main"]

def _root() -> None:
    """Recursive Language Model harness: model-written code runs in a QEMU VM."""


def exec_command(
    file: Annotated[
        Optional[Path], typer.Argument(help="File with the block to run ('-' for stdin).")
    ] = None,
    code: Annotated[Optional[str], typer.Option("-c", "--code", help="The block to run.")] = None,
    language: Annotated[
        str, typer.Option("--language", "-l", help="python or bash.")
    ] = "python",
    isolation: Annotated[
        Isolation,
        typer.Option(help="vm: in the QEMU VM. local: a subprocess ON THIS MACHINE (unsafe)."),
    ] = Isolation.vm,
    memory_mb: Annotated[int, typer.Option(help="VM memory in MiB.")] = 1536,
    network: Annotated[bool, typer.Option(help="Give the VM a user-mode NAT network.")] = False,
    guest_command: Annotated[
        Optional[str],
        typer.Option(help="Run this guest instead (any program speaking PROTOCOL.md on stdio); NOT isolated by rlm."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--block-timeout", "--timeout",
            help="Interrupt the block after this many seconds (0: no limit).",
        ),
    ] = DEFAULT_BLOCK_TIMEOUT,
) -> None:
    """Run one block in a fresh session and print its stdout and stderr.

    Exits 1 when the block raised (Python) or exited non-zero (bash).
    """
    if language not in ("python", "bash"):
        raise typer.BadParameter("must be python or bash", param_hint="--language")
    if (code is None) == (file is None):
        raise typer.BadParameter("give exactly one of -c CODE or FILE")
    if code is None:
        assert file is not None
        code = sys.stdin.read() if str(file) == "-" else file.read_text()
    command = None if guest_command is None else guest_command_argv(guest_command)
    options = GuestOptions(isolation=isolation, memory_mb=memory_mb, network=network, command=command)
    warn_unsandboxed(isolation, command)
    try:
        failed = trio.run(_exec, code, language, options, timeout or None)
    except RlmError as error:
        fail(error, cause=error)
    raise typer.Exit(1 if failed else 0)


async def _exec(code: str, language: str, options: GuestOptions, timeout: float | None) -> bool:
    async with open_guest(options) as connection:
        session = await connection.open_session()
        result = await session.exec(code, "bash" if language == "bash" else "python", timeout=timeout)
    sys.stdout.write(result.stdout.text)
    sys.stderr.write(result.stderr.text)
    for name, stream in (("stdout", result.stdout), ("stderr", result.stderr)):
        if stream.cut:
            print(f"rlm: {name} cut to {len(stream.text)} of {stream.chars} characters", file=sys.stderr)
    if result.interrupted:
        print("rlm: the block was interrupted", file=sys.stderr)
    return result.error is not None or bool(result.returncode)


def _whole_app() -> typer.Typer:
    from .cli_batch import batch
    from .cli_bench import bench
    from .cli_chat import chat
    from .cli_conformance import conformance
    from .cli_image import doctor, image_app
    from .cli_run import run
    from .cli_view import view

    whole = typer.Typer(
        name="rlm",
        help="Recursive Language Model harness: model-written code runs in a QEMU VM.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
    )
    whole.callback()(_root)
    whole.command("exec")(exec_command)
    whole.command("run")(run)
    whole.command("view")(view)
    whole.command("chat")(chat)
    whole.add_typer(image_app, name="image")
    whole.command("doctor")(doctor)
    whole.command("bench")(bench)
    whole.command("batch")(batch)
    whole.command(
        "conformance", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
    )(conformance)
    return whole


_built: list[typer.Typer] = []


def __getattr__(name: str) -> typer.Typer:
    """``app``, the whole application, built at its first use."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _built:
        _built.append(_whole_app())
    return _built[0]


def _run_alone(args: list[str]) -> None:
    """``rlm run ARGS``, the command built alone: the same parameters, help and errors (its
    usage line says ``rlm run``) without the rest of the application."""
    from .cli_run import run

    # No completion options: the whole application has them, not its ``run``.
    alone = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    alone.command()(run)
    alone(args=args, prog_name=f"{os.path.basename(sys.argv[0])} run")


def main() -> None:
    """Entry point of the ``rlm`` script.

    SIGTERM (``kill``, a supervisor, a CI timeout) ends a command as Ctrl-C does: trio turns
    the SIGINT into ``KeyboardInterrupt``, so every ``finally`` runs (QEMU is killed, its run
    directory removed, the trajectory closed); the exit status is then 143. (SIGKILL cannot be
    handled: QEMU dies with us through ``PR_SET_PDEATHSIG``.)
    """
    terminated: list[int] = []
    # A command started in the background by a shell without job control (``rlm ... &`` in a
    # script) inherits SIGINT ignored, and the SIGINT below would then do nothing: SIGTERM
    # would be ignored too. SIGINT is how this command stops cleanly, so it is always handled.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        terminated.append(signum)
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        args = sys.argv[1:]
        if args[:1] == ["run"]:
            _run_alone(args[1:])
        else:
            __getattr__("app")()
    except SystemExit:
        if terminated:
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
