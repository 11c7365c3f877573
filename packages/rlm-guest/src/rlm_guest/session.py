"""One REPL session: its namespace, its host calls, and how one block runs in it.

A session lives in a process of its own (see :mod:`rlm_guest.worker`), and its blocks run on that
process's main thread. That is what makes interrupts reliable: ``SIGINT`` raises
``KeyboardInterrupt`` in the main thread even inside ``time.sleep``, and when a block ignores it
the agent kills the process group and starts the session afresh.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import msgspec

from rlm_protocol import (
    ExecError,
    ExecResult,
    FinalValue,
    Frame,
    Language,
    OutputCapture,
    PromptRef,
    VarsState,
)

from .bash import kill_group, run_bash
from .capture import Capture
from .host_calls import HostCallFailed, HostCalls, Waiter
from .interrupt_slot import InterruptSlot
from .prompt_refs import keep_text, keep_texts

#: ``keep(ref, fd)``: hand a memfd holding a prompt to the agent, to be kept under ``ref``.
KeepPrompt = Callable[[str, int], None]

__all__ = ["HostCallFailed", "HostCalls", "Session"]  # the first two re-exported from .host_calls

#: Names the REPL provides; hidden from ``SHOW_VARS`` and the state summary.
REPL_NAMES = frozenset(
    {
        "host_call",
        "rlm_query",
        "rlm_query_batched",
        "llm_query",
        "llm_query_batched",
        "SHOW_VARS",
    }
)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _prompt_with_fields(prompt: object, fields: dict[str, Any]) -> str:
    # The seed appends extra keyword fields as "name: value" lines after a blank line.
    text = str(prompt)
    if fields:
        text += "\n\n" + "\n".join(f"{name}: {value}" for name, value in fields.items())
    return text


def final_value(value: Any) -> FinalValue:
    """Check ``Final`` and normalise it to what ``json.dumps`` would produce."""
    type_name = type(value).__name__
    try:
        shown = repr(value)[:200]
    except Exception as error:  # a user type whose __repr__ raises must not break the result
        shown = f"<repr failed: {error!r}>"
    try:
        # A JSON round trip both checks the value and normalises it (tuples to lists, keys to
        # strings), so the host receives exactly what json.dumps would have produced.
        normalised = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError, RecursionError) as error:
        return FinalValue(
            ok=False,
            error=f"Final must be JSON-serializable: {type(error).__name__}: {error}",
            type=type_name,
            repr=shown,
        )
    try:
        # JSON allows any integer, msgpack only 64 bits (PROTOCOL.md 3.3): a bigger one would
        # break the result frame and with it the session.
        msgspec.msgpack.encode(normalised)
    except OverflowError as error:
        return FinalValue(
            ok=False,
            error=f"Final cannot be sent: an integer beyond 64 bits ({error})",
            type=type_name,
            repr=shown,
        )
    return FinalValue(ok=True, value=normalised, type=type_name, repr=shown)


def exec_error(exc: BaseException) -> ExecError:
    """The error record of a block, with the agent's own frames cut from the traceback."""
    tb = exc.__traceback__
    # Frames before the first one in "<rlm-repl>" belong to the agent, not to the model's code.
    while tb is not None and tb.tb_frame.f_code.co_filename != "<rlm-repl>":
        tb = tb.tb_next
    if isinstance(exc, KeyboardInterrupt):
        # The innermost frame is our SIGINT handler: the model's code ends where it was stopped.
        frames = [f for f in traceback.extract_tb(tb) if not f.filename.startswith(_PACKAGE_DIR)]
        text = (
            "Traceback (most recent call last):\n"
            + "".join(traceback.format_list(frames))
            + "KeyboardInterrupt: the block was interrupted\n"
        )
        return ExecError(name="KeyboardInterrupt", value="the block was interrupted", traceback=text)
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return ExecError(name=type(exc).__name__, value=str(exc), traceback=text)


class Session:
    """A persistent namespace whose blocks run on the calling thread."""

    def __init__(
        self,
        session_id: str,
        *,
        send: Callable[[Frame], None],
        host_calls: HostCalls,
        capture: Capture,
        max_output_chars: int,
        cwd: str | None,
        interrupts: InterruptSlot,
        keep: KeepPrompt | None = None,
    ) -> None:
        self.id = session_id
        #: Set when the host asked for ``rlm_query`` prompts by reference (``prompt_refs``).
        self._keep = keep
        #: Which block the agent's SIGINT is for (``interrupt_slot.py``).
        self._interrupts = interrupts
        self._send = send
        self.host_calls = host_calls
        self._capture = capture
        self._max_output_chars = max_output_chars
        self.cwd = cwd or "/tmp"
        self.namespace: dict[str, Any] = {
            "__name__": "__rlm_repl__",
            "__builtins__": __builtins__,
            "host_call": self.host_call,
            "rlm_query": self.rlm_query,
            "rlm_query_batched": self.rlm_query_batched,
            "llm_query": self.llm_query,
            "llm_query_batched": self.llm_query_batched,
            "SHOW_VARS": self.show_vars,
        }
        self._running: Language | None = None
        #: ``call`` of the running block (meaningful while ``_running`` is set).
        self._call = 0
        self._bash_pid: int | None = None
        self._interrupted = False

    # --- namespace -------------------------------------------------------------------------

    def visible_names(self) -> list[str]:
        # Functions the host defined in the session (its tools) are listed in _rlm_functions
        # and hidden like the REPL's own (PROTOCOL.md section 4).
        hidden = self.namespace.get("_rlm_functions", ())
        if not isinstance(hidden, (frozenset, set, tuple, list)):
            hidden = ()
        return sorted(
            name
            for name in self.namespace
            if not name.startswith("_") and name not in REPL_NAMES and name not in hidden
        )

    def state(self) -> VarsState:
        names = self.visible_names()
        return VarsState(names=tuple(names[:20]), count=len(names))

    def set_vars(self, values: dict[str, Any]) -> VarsState:
        self.namespace.update(values)
        self.namespace.pop("Final", None)
        return self.state()

    def show_vars(self) -> None:
        """Print the session's variables with their types and sizes (the REPL's ``SHOW_VARS``)."""
        rows = []
        for name in self.visible_names():
            value = self.namespace[name]
            try:
                rows.append(f"{name}: {type(value).__name__}(len={len(value)})")
            except Exception:
                rows.append(f"{name}: {type(value).__name__}")
        print("\n".join(rows) if rows else "(no variables)")

    # --- host calls (from model code) ------------------------------------------------------

    def host_call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        """Call the host and wait for its reply (the seed's ``host_call``)."""
        return self.host_calls.wait([self.host_calls.start(self.id, method, payload or {})])[0]

    def _batched(self, method: str, prompts: Sequence[object], model: str | None) -> list[Any]:
        if isinstance(prompts, (str, bytes)):
            raise TypeError(f"{method}_batched expects a list of prompts, not a single string")
        # Every call is sent before any reply is awaited: the host runs them concurrently.
        if method == "rlm_query" and self._keep is not None and len(prompts) > 1:
            # Copying, hashing and counting the pieces is most of a large fan-out's cost in the
            # guest; the copy and the hash release the GIL, so two threads use both vCPUs.
            calls = [self._start_kept(k, model) for k in keep_texts([str(p) for p in prompts])]
        elif method == "rlm_query":
            calls = [self._start_rlm_query(str(prompt), model) for prompt in prompts]
        else:
            calls = [
                self.host_calls.start(self.id, method, {"prompt": str(prompt), "model": model})
                for prompt in prompts
            ]
        return self.host_calls.wait(calls)

    def _start_rlm_query(self, text: str, model: str | None) -> tuple[int, Waiter]:
        if self._keep is None:
            return self.host_calls.start(self.id, "rlm_query", {"prompt": text, "model": model})
        # By reference (PROTOCOL.md, 1.1 ``prompt_ref``): the text goes to the agent in a memfd
        # and the host gets what the child's model is shown, so a 16 MiB fan-out no longer
        # crosses the channel twice (to the host in the call, back in the child's set_vars).
        return self._start_kept(keep_text(text), model)

    def _start_kept(self, kept: tuple[int, PromptRef], model: str | None) -> tuple[int, Waiter]:
        keep = self._keep
        assert keep is not None
        fd, meta = kept

        def by_ref(call: int) -> dict[str, Any]:
            ref = str(call)  # call ids are unique on the connection, so refs are too
            keep(ref, fd)
            return {"prompt_ref": msgspec.to_builtins(msgspec.structs.replace(meta, ref=ref)), "model": model}

        try:
            return self.host_calls.start(self.id, "rlm_query", by_ref)
        finally:
            os.close(fd)

    def rlm_query(self, prompt: object, model: str | None = None, **fields: Any) -> Any:
        """Ask a child RLM (its own session, depth + 1); at the depth limit, a plain chat call."""
        return self.host_calls.wait([self._start_rlm_query(_prompt_with_fields(prompt, fields), model)])[0]

    def rlm_query_batched(self, prompts: Sequence[object], model: str | None = None) -> list[Any]:
        """Ask one child RLM per prompt, all at once; answers come back in prompt order."""
        return self._batched("rlm_query", prompts, model)

    def llm_query(self, prompt: object, model: str | None = None) -> Any:
        """A plain chat call (no REPL) with ``prompt`` as the user message."""
        return self.host_call("llm_query", {"prompt": str(prompt), "model": model})

    def llm_query_batched(self, prompts: Sequence[object], model: str | None = None) -> list[Any]:
        """Plain chat calls for every prompt, all at once; answers in prompt order."""
        return self._batched("llm_query", prompts, model)

    # --- exec (main thread) ----------------------------------------------------------------

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        """SIGINT from the agent: stop the running block, whatever it is doing."""
        if self._running is None or not self._interrupts.requested(self._call):
            # For a block that has not started (its start sees the slot) or that has ended.
            return
        if self._interrupted:
            # Already stopping: the block's start found the slot before this signal came, and a
            # second KeyboardInterrupt, raised while the first is handled, would escape ``run``
            # and end the process (the session reset instead of an interrupted block).
            return
        self._interrupted = True
        if self._running == "bash":
            if self._bash_pid is not None:
                kill_group(self._bash_pid)
            return
        raise KeyboardInterrupt

    def run(self, call: int, code: str, language: Language) -> ExecResult:
        """Run one block to its end and return the result frame."""
        started = time.perf_counter()
        out = OutputCapture(self._max_output_chars)
        err = OutputCapture(self._max_output_chars)
        error: ExecError | None = None
        returncode: int | None = None
        self._interrupted = False
        try:
            self._call, self._running = call, language
            if self._interrupts.requested(call):
                # The SIGINT came while the block was on its way here (and was ignored then).
                self._interrupted = True
                raise KeyboardInterrupt
            if language == "bash":
                returncode = self._run_bash(code, out, err)
            else:
                error = self._run_python(code, out, err)
        except KeyboardInterrupt as exc:
            # Landed outside the model's frames (while entering or leaving the block).
            error = exec_error(exc)
        finally:
            self._running = None
        final: FinalValue | None = None
        if "Final" in self.namespace:
            final = final_value(self.namespace["Final"])
        return ExecResult(
            session=self.id,
            call=call,
            stdout=out.captured(),
            stderr=err.captured(),
            state=self.state(),
            final=final,
            error=error,
            returncode=returncode,
            interrupted=self._interrupted,
            duration=time.perf_counter() - started,
        )

    def _run_python(self, code: str, out: OutputCapture, err: OutputCapture) -> ExecError | None:
        with self._capture.into(out, err):
            try:
                exec(compile(code, "<rlm-repl>", "exec"), self.namespace)
            except BaseException as exc:  # model code may raise anything, SystemExit too
                error = exec_error(exc)
                err.write(error.traceback)
                return error
        return None

    def _run_bash(self, code: str, out: OutputCapture, err: OutputCapture) -> int:
        def started(pid: int) -> None:
            self._bash_pid = pid
            if self._interrupted:  # SIGINT came between the fork and this line
                kill_group(pid)

        try:
            return run_bash(code, cwd=self.cwd, stdout=out, stderr=err, on_start=started)
        finally:
            self._bash_pid = None


def install_sigint(session: Session) -> None:
    """Route SIGINT to the session (the worker's main thread runs its blocks)."""
    signal.signal(signal.SIGINT, session.on_sigint)
