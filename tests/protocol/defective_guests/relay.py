"""A man in the middle for defective guests: a real guest, with frames rewritten in transit.

Each defective guest is this relay around a real guest (``python -m rlm_guest --stdio``, or the
command in ``RLM_RELAY_GUEST``) with one rewrite, so a defect is exactly one wire-visible bug and
does not depend on the guest's internals. Frames are handled as plain msgpack maps, so unknown
kinds and fields pass through untouched; a body that is not a map, or a length the guest would
refuse, passes through as bytes.

Run as ``python relay.py DEFECT``; see ``DEFECTS``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from typing import IO, Any

import msgspec

Body = dict[str, Any]

#: Lengths above this are not read by the relay but passed on, so the guest judges them.
RELAY_MAX_BODY = 1 << 27

_PYTHON_GUEST = [sys.executable, "-m", "rlm_guest", "--stdio"]


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


class Relay:
    """Both directions of one relayed connection; defects override the two ``*_frame`` hooks."""

    #: Read oversized bodies in full instead of passing the header on (a guest that waits).
    wait_for_body = False

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        assert guest.stdin is not None and guest.stdout is not None
        self.guest = guest
        self.host_out = os.fdopen(1, "wb", buffering=0)
        self.guest_in: IO[bytes] = guest.stdin
        self._host_lock = threading.Lock()
        self._guest_lock = threading.Lock()
        #: Sessions with a block running: session -> the Exec's call.
        self.running: dict[str, int] = {}
        #: Host calls awaiting a reply, per session.
        self.pending: dict[str, set[int]] = {}
        self.sessions: set[str] = set()
        self.lock = threading.Lock()

    # --- writing ----------------------------------------------------------------------------

    def send_host(self, body: Body) -> None:
        with self._host_lock:
            self.host_out.write(framed(msgspec.msgpack.encode(body)))

    def send_guest(self, body: Body) -> None:
        self.send_guest_bytes(framed(msgspec.msgpack.encode(body)))

    def send_guest_bytes(self, data: bytes) -> None:
        with self._guest_lock:
            try:
                self.guest_in.write(data)
                self.guest_in.flush()
            except (BrokenPipeError, ValueError):
                pass

    # --- bookkeeping shared by defects ------------------------------------------------------

    def _track_to_guest(self, body: Body) -> None:
        with self.lock:
            if body.get("kind") == "exec":
                self.running.setdefault(body["session"], body["call"])
            elif body.get("kind") == "host_call_reply":
                self.pending.get(body.get("session", ""), set()).discard(body.get("call"))

    def _track_to_host(self, body: Body) -> None:
        with self.lock:
            kind, session = body.get("kind"), body.get("session", "")
            if kind == "exec_result" and self.running.get(session) == body.get("call"):
                del self.running[session]
            elif kind == "host_call":
                self.pending.setdefault(session, set()).add(body["call"])
            elif kind == "session_opened":
                self.sessions.add(session)
            elif kind == "session_closed":
                self.sessions.discard(session)
                self.running.pop(session, None)
            elif kind == "error" and session in self.running and self.running[session] == body.get("call"):
                del self.running[session]

    # --- hooks ------------------------------------------------------------------------------

    def guest_frame(self, body: Body) -> Body | None:
        """A frame from the host on its way to the guest; ``None`` drops it."""
        return body

    def host_frame(self, body: Body) -> Body | None:
        """A frame from the guest on its way to the host; ``None`` drops it."""
        return body

    def not_a_map(self, body: bytes) -> bytes | None:
        """A host body that is not a msgpack map (passed on as is)."""
        return body

    def frame_bytes(self, body: bytes) -> bytes:
        """How a body to the host is framed."""
        return framed(body)

    def exit_status(self, status: int) -> int:
        return status

    # --- pumps ------------------------------------------------------------------------------

    def pump_to_guest(self, host_in: IO[bytes]) -> None:
        while (header := _read_exact(host_in, 4)) is not None:
            size = int.from_bytes(header, "big")
            if size > RELAY_MAX_BODY and not self.wait_for_body:
                self.send_guest_bytes(header)
                while chunk := host_in.read(65536):
                    self.send_guest_bytes(chunk)
                break
            raw = _read_exact(host_in, size)
            if raw is None:
                break
            try:
                body = msgspec.msgpack.decode(raw)
            except msgspec.DecodeError:
                body = None
            if not isinstance(body, dict):
                passed = self.not_a_map(raw)
                if passed is not None:
                    self.send_guest_bytes(framed(passed))
                continue
            rewritten = self.guest_frame(body)
            if rewritten is not None:
                self._track_to_guest(rewritten)
                self.send_guest(rewritten)
        with self._guest_lock:
            self.guest_in.close()

    def pump_to_host(self) -> None:
        stdout = self.guest.stdout
        assert stdout is not None
        while (header := _read_exact(stdout, 4)) is not None:
            raw = _read_exact(stdout, int.from_bytes(header, "big"))
            if raw is None:
                break
            body = msgspec.msgpack.decode(raw)
            self._track_to_host(body)
            rewritten = self.host_frame(body)
            if rewritten is not None:
                with self._host_lock:
                    self.host_out.write(self.frame_bytes(msgspec.msgpack.encode(rewritten)))
        self.host_out.close()


# --- defects of 1.0 --------------------------------------------------------------------------


class FifoHostCallRouting(Relay):
    """Routes each host-call reply to the oldest call still waiting, ignoring its id.

    The classic bug of a guest that assumes replies come back in order.
    """

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        self.waiting: list[int] = []

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "host_call":
            with self.lock:
                self.waiting.append(body["call"])
        return body

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "host_call_reply":
            with self.lock:
                body = {**body, "call": self.waiting.pop(0)}
        return body


class DropInterrupts(Relay):
    def guest_frame(self, body: Body) -> Body | None:
        return None if body["kind"] == "interrupt" else body


class CountUtf8Bytes(Relay):
    """Reports ``Captured.chars`` as UTF-8 bytes (a guest that measures bytes, not characters)."""

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "exec_result":
            for name in ("stdout", "stderr"):
                stream = body[name]
                extra = len(stream["text"].encode()) - len(stream["text"])
                body[name] = {**stream, "chars": stream["chars"] + extra}
        return body


class AcceptAnyMajor(Relay):
    """Rewrites the host's Welcome to our own version: the guest never sees another major."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "welcome":
            body = {**body, "protocol": [1, 0]}
        return body


class HideCapability(Relay):
    """Leaves one capability out of Hello (and, if ``refuse``, refuses its blocks itself)."""

    capability = "exec.bash"
    refuse = False

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "hello":
            body = {**body, "capabilities": [c for c in body["capabilities"] if c != self.capability]}
        return body

    def guest_frame(self, body: Body) -> Body | None:
        language = self.capability.removeprefix("exec.")
        if (
            self.refuse
            and body["kind"] == "exec"
            and body.get("language", "python") == language
            and body["session"] in self.sessions
            and isinstance(body["call"], int)
        ):
            self.send_host(
                {
                    "kind": "error",
                    "code": "unsupported",
                    "message": f"no {language} here",
                    "session": body["session"],
                    "call": body["call"],
                }
            )
            return None
        return body


class HideBash(HideCapability):
    capability = "exec.bash"


class HidePromptRef(HideCapability):
    """A 1.0-style guest: ``prompt_ref`` is not advertised, so the host never asks for refs."""

    capability = "prompt_ref"


class PythonHidden(HideCapability):
    """A correct bash-only guest: Python is neither advertised nor run."""

    capability = "exec.python"
    refuse = True


class PythonHiddenButRun(HideCapability):
    """Python is not advertised, but Python blocks still run."""

    capability = "exec.python"


class ShortLength(Relay):
    """A length prefix one less than the body: the peer's framing desynchronises."""

    def frame_bytes(self, body: bytes) -> bytes:
        return (len(body) - 1).to_bytes(4, "big") + body


# --- defects of 1.1 --------------------------------------------------------------------------


class SurviveMalformed(Relay):
    """Drops a body that is not a map instead of refusing the stream."""

    def not_a_map(self, body: bytes) -> bytes | None:
        return None


class IntFromFloat(Relay):
    """Reads a float ``call`` as an integer."""

    def guest_frame(self, body: Body) -> Body | None:
        if isinstance(body.get("call"), float):
            body = {**body, "call": int(body["call"])}
        return body


class WaitForBody(Relay):
    """Waits for the whole body of an oversized frame instead of refusing its length."""

    wait_for_body = True


class ExitOneAtEof(Relay):
    def exit_status(self, status: int) -> int:
        return 1


class ExitOnWrongDirection(Relay):
    """Treats a guest-to-host frame from the host as fatal and goes away."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] in ("hello", "session_opened", "vars_set", "exec_result", "host_call", "session_closed", "bye"):
            os._exit(0)
        return body


class ErrorForUnknownInterrupt(Relay):
    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "interrupt" and body["session"] not in self.sessions:
            self.send_host(
                {"kind": "error", "code": "unknown_session", "message": "no such session", "session": body["session"]}
            )
            return None
        return body


class ErrorForLateReply(Relay):
    """Answers a host-call reply for a closed session with unknown_session."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "host_call_reply" and body["session"] not in self.sessions:
            self.send_host(
                {"kind": "error", "code": "unknown_session", "message": "no such session", "session": body["session"]}
            )
            return None
        return body


class NoSessionLimit(Relay):
    """Announces three sessions at most, but opens as many as asked."""

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "hello":
            body = {**body, "limits": {**body["limits"], "max_sessions": 3}}
        return body


class IgnoreMissingCwd(Relay):
    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "open_session" and body.get("cwd") and not os.path.isdir(body["cwd"]):
            body = {**body, "cwd": None}
        return body


class DropReplacement(Relay):
    """Drops U+FFFD from output (a guest that skips undecodable bytes), counting what is left."""

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "exec_result":
            for name in ("stdout", "stderr"):
                text = body[name]["text"].replace("\ufffd", "")
                body[name] = {**body[name], "text": text, "chars": len(text)}
        return body


def _python_exec(body: Body) -> bool:
    return bool(body["kind"] == "exec" and body.get("language", "python") == "python")


class Fd1ToDevnull(Relay):
    """Output written to descriptor 1 below Python is lost (only ``sys.stdout`` is captured)."""

    def guest_frame(self, body: Body) -> Body | None:
        if _python_exec(body):
            prefix = "import os as _o\n_o.dup2(_o.open(_o.devnull, _o.O_WRONLY), 1)\n"
            body = {**body, "code": prefix + body["code"]}
        return body


_ECHO = """\
import ast as _ast
_tree = _ast.parse({code!r})
_last = _tree.body.pop() if _tree.body and isinstance(_tree.body[-1], _ast.Expr) else None
exec(compile(_tree, '<rlm-repl>', 'exec'))
if _last is not None:
    _value = eval(compile(_ast.Expression(_last.value), '<rlm-repl>', 'eval'))
    if _value is not None:
        print(repr(_value))
"""


class EchoLastExpression(Relay):
    """Blocks run like interactive lines: the last expression's value is printed."""

    def guest_frame(self, body: Body) -> Body | None:
        if _python_exec(body):
            body = {**body, "code": _ECHO.format(code=body["code"])}
        return body


class ShowVarsSilentWhenEmpty(Relay):
    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "exec_result" and body["stdout"]["text"] == "(no variables)\n":
            body = {**body, "stdout": {"text": "", "chars": 0, "lines": 0}}
        return body


class HideFinalFromState(Relay):
    def host_frame(self, body: Body) -> Body | None:
        state = body.get("state")
        if isinstance(state, dict) and "Final" in state.get("names", ()):
            names = [n for n in state["names"] if n != "Final"]
            body = {**body, "state": {"names": names, "count": state["count"] - 1}}
        return body


class FieldsOneNewline(Relay):
    """Joins rlm_query fields after one newline instead of a blank line."""

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "host_call" and body.get("method") == "rlm_query":
            payload = body["payload"]
            body = {**body, "payload": {**payload, "prompt": payload["prompt"].replace("\n\n", "\n")}}
        return body


class LlmQueryTakesFields(Relay):
    """``llm_query`` accepts keyword fields and drops them."""

    def guest_frame(self, body: Body) -> Body | None:
        if _python_exec(body):
            prefix = "llm_query = (lambda _f: lambda prompt, model=None, **_kw: _f(prompt, model))(llm_query)\n"
            body = {**body, "code": prefix + body["code"]}
        return body


class PartialBatch(Relay):
    """In a batch, an error reply becomes a nil value: the batch returns a partial list."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "host_call_reply" and body.get("error"):
            with self.lock:
                in_flight = len(self.pending.get(body["session"], ()))
            if in_flight > 1 or getattr(self, "batch", None) == body["session"]:
                self.batch = body["session"]
                body = {**body, "error": None, "value": None}
        return body


class SetVarsBusyInternal(Relay):
    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "set_vars" and body["session"] in self.running:
            self.send_host(
                {"kind": "error", "code": "internal", "message": "busy", "session": body["session"], "call": body["call"]}
            )
            return None
        return body


class StrictFloatFields(Relay):
    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "exec" and isinstance(body.get("timeout"), int):
            self.send_host(
                {
                    "kind": "error",
                    "code": "bad_request",
                    "message": "timeout must be a float",
                    "session": body["session"],
                    "call": body["call"],
                }
            )
            return None
        return body


class TimeoutPausesForHostCalls(Relay):
    """Runs ``Exec.timeout`` itself, with the clock stopped while a host call waits."""

    TICK = 0.05

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "exec" and body.get("timeout") is not None:
            timeout = float(body["timeout"])
            body = {**body, "timeout": None}
            threading.Thread(target=self._clock, args=(body["session"], body["call"], timeout), daemon=True).start()
        return body

    def _clock(self, session: str, call: int, remaining: float) -> None:
        time.sleep(self.TICK)  # the Exec is tracked as running once passed on
        while remaining > 0:
            time.sleep(self.TICK)
            with self.lock:
                if self.running.get(session) != call:
                    return
                if not self.pending.get(session):
                    remaining -= self.TICK
        self.send_guest({"kind": "interrupt", "session": session})


class _ErrorWithoutReset(Relay):
    error_name = ""

    def host_frame(self, body: Body) -> Body | None:
        error = body.get("error") if body["kind"] == "exec_result" else None
        if error and error.get("name") == self.error_name:
            body = {**body, "session_reset": False}
        return body


class ResetWithoutFlag(_ErrorWithoutReset):
    error_name = "SessionReset"


class DiedWithoutFlag(_ErrorWithoutReset):
    error_name = "SessionDied"


class ResultAfterClose(Relay):
    """Sends the running block's result after ``session_closed``."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "close_session":
            with self.lock:
                self.closing = (body["session"], self.running.get(body["session"]))
        return body

    def host_frame(self, body: Body) -> Body | None:
        closing = getattr(self, "closing", (None, None))
        if body["kind"] == "session_closed" and closing[0] == body["session"] and closing[1] is not None:
            self.send_host(body)
            empty = {"text": "", "chars": 0, "lines": 0}
            return {
                "kind": "exec_result",
                "session": body["session"],
                "call": closing[1],
                "stdout": empty,
                "stderr": empty,
                "interrupted": True,
            }
        return body


class FrameAfterBye(Relay):
    """A block running at shutdown reports after ``bye``."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "shutdown":
            with self.lock:
                self.late = dict(self.running)
        return body

    def host_frame(self, body: Body) -> Body | None:
        late = getattr(self, "late", {})
        if body["kind"] == "bye" and late:
            self.send_host(body)
            session, call = next(iter(late.items()))
            return {"kind": "error", "code": "internal", "message": "late", "session": session, "call": call}
        return body


class SilentRefusal(Relay):
    """Refuses another major by closing, without the error frame."""

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "error" and body.get("call") is None:
            return None
        return body


class ValueWhenNotOk(Relay):
    def host_frame(self, body: Body) -> Body | None:
        final = body.get("final") if body["kind"] == "exec_result" else None
        if final and not final.get("ok"):
            body = {**body, "final": {**final, "value": "unsendable"}}
        return body


class FinalFileIgnored(Relay):
    """The bash REPL's ``Final`` file is never reported."""

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "exec_result" and body.get("final"):
            body = {**body, "final": None}
        return body


class HostCallErrorAsValue(Relay):
    """An error reply reaches the code as a value: the command succeeds."""

    def guest_frame(self, body: Body) -> Body | None:
        error = body.get("error") if body["kind"] == "host_call_reply" else None
        if error:
            body = {**body, "error": None, "value": f"{error['name']}: {error['message']}"}
        return body



# --- defects of prompt_ref (1.1, PROTOCOL.md 4.2) ---------------------------------------------


def _prompt_ref(body: Body) -> dict[str, Any] | None:
    """The ``PromptRef`` of an ``rlm_query`` host call, if it carries one."""
    if body["kind"] == "host_call" and body.get("method") == "rlm_query":
        ref = body.get("payload", {}).get("prompt_ref")
        return ref if isinstance(ref, dict) else None
    return None


def _error(body: Body, code: str, message: str) -> Body:
    return {"kind": "error", "code": code, "message": message, "session": body["session"], "call": body["call"]}


class RefPrefixOfAnObservation(Relay):
    """``PromptRef.prefix`` is cut to 800 characters (the observation prefix, not the prompt's)."""

    def host_frame(self, body: Body) -> Body | None:
        ref = _prompt_ref(body)
        if ref is not None:
            payload = {**body["payload"], "prompt_ref": {**ref, "prefix": ref["prefix"][:800]}}
            body = {**body, "payload": payload}
        return body


class RefsWithoutOptIn(Relay):
    """Every session passes prompts by reference, whether the host asked for it or not."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "open_session":
            body = {**body, "prompt_refs": True}
        return body


class BindRefsKeepsFinal(Relay):
    """``bind_refs`` leaves ``Final`` as it was (``set_vars`` unsets it, ``bind_refs`` forgets to)."""

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        #: The last ``Final`` each session reported, and sessions where a bind_refs kept it.
        self.final: dict[str, Any] = {}
        self.restore: set[str] = set()

    def host_frame(self, body: Body) -> Body | None:
        final = body.get("final") if body["kind"] == "exec_result" else None
        if final and final.get("ok"):
            with self.lock:
                self.final[body["session"]] = final["value"]
        return body

    def guest_frame(self, body: Body) -> Body | None:
        session = body.get("session")
        with self.lock:
            if body["kind"] == "bind_refs" and session in self.final:
                self.restore.add(session)
            elif _python_exec(body) and session in self.restore:
                self.restore.discard(session)
                body = {**body, "code": f"Final = {self.final[session]!r}\n" + body["code"]}
        return body


class BindRefsLossy(Relay):
    """Names bound by ``bind_refs`` hold the text with lone surrogates replaced by ``?``."""

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        self.bound: dict[str, set[str]] = {}

    def guest_frame(self, body: Body) -> Body | None:
        session = body.get("session", "")
        if body["kind"] == "bind_refs":
            with self.lock:
                self.bound.setdefault(session, set()).update(body["refs"])
        elif _python_exec(body) and self.bound.get(session):
            fix = "".join(
                f"if {name!r} in globals(): {name} = {name}.encode('utf-8', 'replace').decode('utf-8')\n"
                for name in sorted(self.bound[session])
            )
            body = {**body, "code": fix + body["code"]}
        return body


class UnknownRefBindsNothing(Relay):
    """``bind_refs`` of a ref never made is answered ``vars_set`` (nothing bound), not ``unknown_ref``."""

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        self.made: set[str] = set()

    def host_frame(self, body: Body) -> Body | None:
        ref = _prompt_ref(body)
        if ref is not None:
            with self.lock:
                self.made.add(ref["ref"])
        return body

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "bind_refs":
            with self.lock:
                unknown = any(ref not in self.made for ref in body["refs"].values())
            if unknown:
                self.send_host({"kind": "vars_set", "session": body["session"], "call": body["call"]})
                return None
        return body


class BindRefsChecksRefsFirst(Relay):
    """``bind_refs`` into a session that does not exist is answered ``unknown_ref``."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "bind_refs" and body["session"] not in self.sessions:
            self.send_host(_error(body, "unknown_ref", "no such ref in that session"))
            return None
        return body


class RefDiesWithItsMaker(Relay):
    """A ref is dropped when the session that made it closes, even when another session bound it."""

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        self.maker: dict[str, str] = {}
        self.dead: set[str] = set()

    def host_frame(self, body: Body) -> Body | None:
        ref = _prompt_ref(body)
        if ref is not None:
            with self.lock:
                self.maker[ref["ref"]] = body["session"]
        return body

    def guest_frame(self, body: Body) -> Body | None:
        with self.lock:
            if body["kind"] == "close_session":
                self.dead |= {ref for ref, maker in self.maker.items() if maker == body["session"]}
            elif body["kind"] == "bind_refs" and self.dead & set(body["refs"].values()):
                self.send_host(_error(body, "unknown_ref", "the session that made it closed"))
                return None
        return body


class RefsNeverFreed(Relay):
    """Sessions that made refs are never closed (their refs live on); the close is answered anyway."""

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        self.makers: set[str] = set()

    def host_frame(self, body: Body) -> Body | None:
        if _prompt_ref(body) is not None:
            with self.lock:
                self.makers.add(body["session"])
        return body

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "close_session" and body["session"] in self.makers:
            self.send_host({"kind": "session_closed", "session": body["session"], "call": body["call"]})
            return None
        return body


class RebindsAfterReset(Relay):
    """After a reset the guest binds the session's refs again by itself (the host is not asked)."""

    #: Calls of the relay's own ``bind_refs``, far above the kit's; their replies are dropped.
    OWN_CALLS = 1 << 40

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        self.bound: dict[str, dict[str, str]] = {}
        self.own = self.OWN_CALLS

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "bind_refs":
            with self.lock:
                self.bound.setdefault(body["session"], {}).update(body["refs"])
        return body

    def host_frame(self, body: Body) -> Body | None:
        if body["kind"] == "vars_set" and body["call"] >= self.OWN_CALLS:
            return None
        if body["kind"] == "exec_result" and body.get("session_reset"):
            with self.lock:
                refs = self.bound.get(body["session"])
                self.own += 1
            if refs:
                self.send_guest({"kind": "bind_refs", "session": body["session"], "call": self.own, "refs": refs})
        return body


class BindRefsLimitBadRequest(Relay):
    """More than 16 names in a ``bind_refs`` are refused with ``bad_request``, not ``too_large``."""

    def guest_frame(self, body: Body) -> Body | None:
        if body["kind"] == "bind_refs" and len(body["refs"]) > 16:
            self.send_host(_error(body, "bad_request", "too many names"))
            return None
        return body


class _InBatch(Relay):
    """Knows which sessions run a block calling ``rlm_query_batched`` (the defect's scope)."""

    def __init__(self, guest: subprocess.Popen[bytes]) -> None:
        super().__init__(guest)
        self.batching: set[str] = set()
        self.first_ref: dict[str, Any] = {}

    def guest_frame(self, body: Body) -> Body | None:
        if _python_exec(body):
            with self.lock:
                if "rlm_query_batched" in body["code"]:
                    self.batching.add(body["session"])
                else:
                    self.batching.discard(body["session"])
                self.first_ref.pop(body["session"], None)
        return body


class BatchSendsText(_InBatch):
    """``rlm_query_batched`` sends each prompt's text, as in 1.0, in a session opened with prompt_refs."""

    def host_frame(self, body: Body) -> Body | None:
        ref = _prompt_ref(body)
        if ref is not None and body["session"] in self.batching:
            body = {**body, "payload": {"prompt": ref["prefix"], "model": body["payload"].get("model")}}
        return body


class BatchSharesOneRef(_InBatch):
    """Every prompt of a batch is sent under the ref of the batch's first prompt."""

    def host_frame(self, body: Body) -> Body | None:
        ref = _prompt_ref(body)
        if ref is not None and body["session"] in self.batching:
            with self.lock:
                first = self.first_ref.setdefault(body["session"], ref["ref"])
            body = {**body, "payload": {**body["payload"], "prompt_ref": {**ref, "ref": first}}}
        return body


DEFECTS: dict[str, type[Relay]] = {
    "keep": Relay,
    "fifo_host_calls": FifoHostCallRouting,
    "ignore_interrupt": DropInterrupts,
    "utf8_chars": CountUtf8Bytes,
    "accept_any_major": AcceptAnyMajor,
    "no_bash": HideBash,
    "no_prompt_ref": HidePromptRef,
    "python_hidden": PythonHidden,
    "python_hidden_but_run": PythonHiddenButRun,
    "bad_length": ShortLength,
    "survive_malformed": SurviveMalformed,
    "int_from_float": IntFromFloat,
    "wait_for_body": WaitForBody,
    "exit_1_at_eof": ExitOneAtEof,
    "exit_on_wrong_direction": ExitOnWrongDirection,
    "error_for_unknown_interrupt": ErrorForUnknownInterrupt,
    "error_for_late_reply": ErrorForLateReply,
    "no_session_limit": NoSessionLimit,
    "ignore_missing_cwd": IgnoreMissingCwd,
    "drop_replacement": DropReplacement,
    "fd1_to_devnull": Fd1ToDevnull,
    "echo_last_expression": EchoLastExpression,
    "show_vars_silent_when_empty": ShowVarsSilentWhenEmpty,
    "hide_final_from_state": HideFinalFromState,
    "fields_one_newline": FieldsOneNewline,
    "llm_query_takes_fields": LlmQueryTakesFields,
    "partial_batch": PartialBatch,
    "set_vars_busy_internal": SetVarsBusyInternal,
    "strict_float_fields": StrictFloatFields,
    "timeout_pauses_for_host_calls": TimeoutPausesForHostCalls,
    "reset_without_flag": ResetWithoutFlag,
    "died_without_flag": DiedWithoutFlag,
    "result_after_close": ResultAfterClose,
    "frame_after_bye": FrameAfterBye,
    "silent_refusal": SilentRefusal,
    "value_when_not_ok": ValueWhenNotOk,
    "final_file_ignored": FinalFileIgnored,
    "host_call_error_as_value": HostCallErrorAsValue,
    "ref_prefix_800": RefPrefixOfAnObservation,
    "refs_without_opt_in": RefsWithoutOptIn,
    "bind_refs_keeps_final": BindRefsKeepsFinal,
    "bind_refs_lossy": BindRefsLossy,
    "unknown_ref_binds_nothing": UnknownRefBindsNothing,
    "ref_dies_with_its_maker": RefDiesWithItsMaker,
    "bind_refs_checks_refs_first": BindRefsChecksRefsFirst,
    "bind_refs_limit_bad_request": BindRefsLimitBadRequest,
    "refs_never_freed": RefsNeverFreed,
    "rebinds_after_reset": RebindsAfterReset,
    "batch_sends_text": BatchSendsText,
    "batch_shares_one_ref": BatchSharesOneRef,
}


def main(defect: str) -> int:
    relay_type = DEFECTS.get(defect)
    if relay_type is None:
        print(f"unknown defect {defect!r}", file=sys.stderr)
        return 2
    command = os.environ.get("RLM_RELAY_GUEST")
    guest = subprocess.Popen(
        shlex.split(command) if command else _PYTHON_GUEST,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    relay = relay_type(guest)
    host_in = os.fdopen(0, "rb", buffering=0)
    upstream = threading.Thread(target=relay.pump_to_guest, args=(host_in,), daemon=True)
    upstream.start()
    relay.pump_to_host()
    return relay.exit_status(guest.wait())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
