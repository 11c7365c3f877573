"""One REPL session: a namespace, a worker thread that runs its blocks, and its host calls."""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rlm_protocol import (
    ExecError,
    ExecResult,
    FinalValue,
    Frame,
    HostCall,
    HostCallError,
    Language,
    OutputCapture,
    VarsState,
)

from .bash import run_bash
from .capture import StreamRouter

__all__ = ["HostCallFailed", "HostCalls", "Session", "SessionInterrupted"]

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

#: How long an interrupted Python block may take to unwind before its session is reset.
#: An async exception only lands between bytecodes, so a thread blocked inside C (a long
#: ``time.sleep``) never sees it; two seconds separates "slow to unwind" from "stuck".
INTERRUPT_GRACE_SECONDS = 2.0

#: Waits for host-call replies wake this often so that an interrupt can land.
_WAIT_SLICE_SECONDS = 0.05


class SessionInterrupted(KeyboardInterrupt):
    """Raised inside a block's thread to stop it (``Interrupt`` frame or timeout)."""


class HostCallFailed(RuntimeError):
    """A host call the host answered with an error."""


class _Waiter:
    __slots__ = ("event", "value", "error")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None
        self.error: HostCallError | None = None


class HostCalls:
    """Call ids and reply waiters for every session of one connection.

    Ids are unique per connection, so replies are routed by id alone and may arrive in any order.
    """

    def __init__(self, send: Callable[[Frame], None]) -> None:
        self._send = send
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._lock = threading.Lock()

    def start(self, session: str, method: str, payload: dict[str, Any]) -> tuple[int, _Waiter]:
        waiter = _Waiter()
        with self._lock:
            call = next(self._ids)
            # Registered before the frame goes out: the reply may beat us back.
            self._waiters[call] = waiter
        try:
            self._send(HostCall(session=session, call=call, method=method, payload=payload))
        except BaseException:
            self.forget(call)
            raise
        return call, waiter

    def resolve(self, call: int, value: Any, error: HostCallError | None) -> bool:
        """Deliver a reply; False when nobody waits for it (a late reply is dropped)."""
        with self._lock:
            waiter = self._waiters.pop(call, None)
        if waiter is None:
            return False
        waiter.value, waiter.error = value, error
        waiter.event.set()
        return True

    def forget(self, call: int) -> None:
        with self._lock:
            self._waiters.pop(call, None)

    def fail_all(self, reason: str) -> None:
        """Wake every waiter with an error (the host went away)."""
        with self._lock:
            waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.error = HostCallError(name="ConnectionLost", message=reason)
            waiter.event.set()

    def wait(self, calls: Sequence[tuple[int, _Waiter]]) -> list[Any]:
        """Wait for every reply, in the order of ``calls``; raise the first error."""
        try:
            for _, waiter in calls:
                while not waiter.event.wait(_WAIT_SLICE_SECONDS):
                    pass
        finally:
            for call, waiter in calls:
                if not waiter.event.is_set():
                    self.forget(call)
        values = []
        for _, waiter in calls:
            if waiter.error is not None:
                raise HostCallFailed(f"{waiter.error.name}: {waiter.error.message}")
            values.append(waiter.value)
        return values


def _prompt_with_fields(prompt: object, fields: dict[str, Any]) -> str:
    # The seed appends extra keyword fields as "name: value" lines after a blank line.
    text = str(prompt)
    if fields:
        text += "\n\n" + "\n".join(f"{name}: {value}" for name, value in fields.items())
    return text


def _final_value(value: Any) -> FinalValue:
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
    return FinalValue(ok=True, value=normalised, type=type_name, repr=shown)


def _exec_error(exc: BaseException) -> ExecError:
    """The error record of a block, with the agent's own frames cut from the traceback."""
    tb = exc.__traceback__
    # Frames before the first one in "<rlm-repl>" belong to the agent, not to the model's code.
    while tb is not None and tb.tb_frame.f_code.co_filename != "<rlm-repl>":
        tb = tb.tb_next
    if isinstance(exc, SessionInterrupted):
        lines = traceback.format_list(traceback.extract_tb(tb))
        text = "Traceback (most recent call last):\n" + "".join(lines)
        return ExecError(
            name="KeyboardInterrupt",
            value="interrupted",
            traceback=text + "KeyboardInterrupt: the block was interrupted\n",
        )
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return ExecError(name=type(exc).__name__, value=str(exc), traceback=text)


class _Job:
    __slots__ = ("call", "code", "language", "timeout", "thread_id", "done", "interrupted")

    def __init__(self, call: int, code: str, language: Language, timeout: float | None) -> None:
        self.call = call
        self.code = code
        self.language = language
        self.timeout = timeout
        self.thread_id: int | None = None
        self.done = threading.Event()
        self.interrupted = False


class Session:
    """A persistent namespace plus one worker thread; at most one block runs at a time."""

    def __init__(
        self,
        session_id: str,
        *,
        send: Callable[[Frame], None],
        host_calls: HostCalls,
        stdout: StreamRouter,
        stderr: StreamRouter,
        max_output_chars: int,
        cwd: str | None,
    ) -> None:
        self.id = session_id
        self._send = send
        self._host_calls = host_calls
        self._stdout = stdout
        self._stderr = stderr
        self._max_output_chars = max_output_chars
        self.cwd = cwd or "/tmp"
        self._lock = threading.Lock()
        self._job: _Job | None = None
        self._generation = 0
        self._closed = False
        self.namespace: dict[str, Any] = {}
        self._reset_namespace()
        self._bash_process: Any = None

    # --- namespace -------------------------------------------------------------------------

    def _reset_namespace(self) -> None:
        self.namespace.clear()
        self.namespace.update(
            {
                "__name__": "__rlm_repl__",
                "__builtins__": __builtins__,
                "host_call": self.host_call,
                "rlm_query": self.rlm_query,
                "rlm_query_batched": self.rlm_query_batched,
                "llm_query": self.llm_query,
                "llm_query_batched": self.llm_query_batched,
                "SHOW_VARS": self.show_vars,
            }
        )

    def visible_names(self) -> list[str]:
        return sorted(
            name for name in self.namespace if not name.startswith("_") and name not in REPL_NAMES
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

    # --- host calls (run on the worker thread, from model code) ----------------------------

    def host_call(self, method: str, payload: dict[str, Any] | None = None) -> Any:
        """Call the host and wait for its reply (the seed's ``host_call``)."""
        return self._host_calls.wait([self._host_calls.start(self.id, method, payload or {})])[0]

    def _batched(self, method: str, prompts: Sequence[object], model: str | None) -> list[Any]:
        if isinstance(prompts, (str, bytes)):
            raise TypeError(f"{method}_batched expects a list of prompts, not a single string")
        # Every call is sent before any reply is awaited: the host runs them concurrently.
        calls = [
            self._host_calls.start(self.id, method, {"prompt": str(prompt), "model": model})
            for prompt in prompts
        ]
        return self._host_calls.wait(calls)

    def rlm_query(self, prompt: object, model: str | None = None, **fields: Any) -> Any:
        """Ask a child RLM (its own session, depth + 1); at the depth limit, a plain chat call."""
        return self.host_call(
            "rlm_query", {"prompt": _prompt_with_fields(prompt, fields), "model": model}
        )

    def rlm_query_batched(self, prompts: Sequence[object], model: str | None = None) -> list[Any]:
        """Ask one child RLM per prompt, all at once; answers come back in prompt order."""
        return self._batched("rlm_query", prompts, model)

    def llm_query(self, prompt: object, model: str | None = None) -> Any:
        """A plain chat call (no REPL) with ``prompt`` as the user message."""
        return self.host_call("llm_query", {"prompt": str(prompt), "model": model})

    def llm_query_batched(self, prompts: Sequence[object], model: str | None = None) -> list[Any]:
        """Plain chat calls for every prompt, all at once; answers in prompt order."""
        return self._batched("llm_query", prompts, model)

    # --- exec ------------------------------------------------------------------------------

    def busy(self) -> bool:
        return self._job is not None

    def start_exec(self, call: int, code: str, language: Language, timeout: float | None) -> bool:
        """Start a block on a fresh worker thread; False if one is already running."""
        with self._lock:
            if self._job is not None or self._closed:
                return False
            job = _Job(call, code, language, timeout)
            self._job = job
            generation = self._generation
        thread = threading.Thread(
            target=self._run_job, args=(job, generation), name=f"rlm-session-{self.id}", daemon=True
        )
        thread.start()
        if timeout is not None:
            timer = threading.Timer(timeout, self._timeout, args=(job,))
            timer.daemon = True
            timer.start()
        return True

    def _timeout(self, job: _Job) -> None:
        if not job.done.is_set():
            self._interrupt_job(job)

    def interrupt(self) -> None:
        """Stop the running block, if any (the ``Interrupt`` frame)."""
        job = self._job
        if job is not None:
            self._interrupt_job(job)

    def _interrupt_job(self, job: _Job) -> None:
        job.interrupted = True
        if job.language == "bash":
            process = self._bash_process
            if process is not None:
                _kill_group(process.pid)
            return
        if job.thread_id is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(job.thread_id), ctypes.py_object(SessionInterrupted)
            )
        watchdog = threading.Thread(target=self._reset_if_stuck, args=(job,), daemon=True)
        watchdog.start()

    def _reset_if_stuck(self, job: _Job) -> None:
        if job.done.wait(INTERRUPT_GRACE_SECONDS):
            return
        # The thread is stuck in C code. Abandon it: a new generation gets a fresh namespace,
        # and whatever the old thread produces later is dropped.
        with self._lock:
            if self._job is not job:
                return
            self._generation += 1
            self._job = None
            self._reset_namespace()
        self._send(
            ExecResult(
                session=self.id,
                call=job.call,
                stdout=OutputCapture(0).captured(),
                stderr=OutputCapture(0).captured(),
                state=self.state(),
                error=ExecError(
                    name="SessionReset",
                    value="the block did not stop when interrupted; the session was reset "
                    "and its variables are lost",
                ),
                interrupted=True,
                session_reset=True,
            )
        )

    def _run_job(self, job: _Job, generation: int) -> None:
        job.thread_id = threading.get_ident()
        started = time.perf_counter()
        out = OutputCapture(self._max_output_chars)
        err = OutputCapture(self._max_output_chars)
        error: ExecError | None = None
        returncode: int | None = None
        try:
            if job.language == "bash":
                returncode = self._run_bash(job, out, err)
            else:
                error = self._run_python(job, out, err)
        except SessionInterrupted:
            # The interrupt landed after the block's own handler: still an interrupted block.
            error = ExecError(name="KeyboardInterrupt", value="interrupted")
        final: FinalValue | None = None
        if "Final" in self.namespace:
            final = _final_value(self.namespace["Final"])
        result = ExecResult(
            session=self.id,
            call=job.call,
            stdout=out.captured(),
            stderr=err.captured(),
            state=self.state(),
            final=final,
            error=error,
            returncode=returncode,
            interrupted=job.interrupted,
            duration=time.perf_counter() - started,
        )
        with self._lock:
            current = generation == self._generation and self._job is job
            if current:
                self._job = None
        job.done.set()
        if current:
            self._send(result)

    def _run_python(self, job: _Job, out: OutputCapture, err: OutputCapture) -> ExecError | None:
        try:
            with self._stdout.capturing(out), self._stderr.capturing(err):
                try:
                    code = compile(job.code, "<rlm-repl>", "exec")
                    exec(code, self.namespace)
                except BaseException as exc:  # model code may raise anything, SystemExit too
                    error = _exec_error(exc)
                    err.write(error.traceback)
                    return error
        except SessionInterrupted:
            return ExecError(name="KeyboardInterrupt", value="interrupted")
        return None

    def _run_bash(self, job: _Job, out: OutputCapture, err: OutputCapture) -> int:
        def started(process: Any) -> None:
            self._bash_process = process
            if job.interrupted:
                _kill_group(process.pid)

        try:
            return run_bash(job.code, cwd=self.cwd, stdout=out, stderr=err, on_start=started)
        finally:
            self._bash_process = None

    def close(self) -> None:
        """Interrupt any running block and drop the namespace."""
        with self._lock:
            self._closed = True
            job = self._job
        if job is not None:
            self._interrupt_job(job)
        self.namespace.clear()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, 9)
    except ProcessLookupError:
        pass
