"""What a check holds while it runs: a handshaken guest, a deadline and request helpers.

A :class:`Link` is one handshaken guest; it outlives a check when the check passes, so the suite
does not pay a process start per check. A :class:`Probe` is one check's view of the link with the
check's deadline: every wait inside the check draws on the same budget.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..frames import (
    CAPABILITIES,
    CloseSession,
    ErrorFrame,
    Exec,
    ExecResult,
    Frame,
    Hello,
    HostCall,
    Language,
    Limits,
    OpenSession,
    SessionClosed,
    SessionOpened,
    VarsSet,
    Welcome,
)
from ..version import PROTOCOL_VERSION, is_compatible
from .peer import CheckFailed, GuestPeer, describe
from .samples import BASH, PYTHON, Samples

__all__ = ["HostCallServer", "Link", "Probe", "Skip", "expect_exit", "fail_unless", "handshake", "welcome_for"]

#: Answers a ``HostCall`` seen while waiting for a reply (it must send the ``HostCallReply``).
HostCallServer = Callable[[HostCall], None]

_REPLIES = (SessionOpened, VarsSet, ExecResult, SessionClosed, ErrorFrame)


class Skip(Exception):
    """The check does not apply to this guest (the message says why)."""


def fail_unless(condition: bool, message: str) -> None:
    """Raise ``CheckFailed(message)`` unless ``condition``."""
    if not condition:
        raise CheckFailed(message)


def welcome_for(hello: Hello, protocol: tuple[int, int] = PROTOCOL_VERSION) -> Welcome:
    """The kit's ``Welcome``: it uses every capability both sides know."""
    return Welcome(
        protocol=protocol,
        host="rlm-conformance",
        host_version="1",
        capabilities=tuple(c for c in hello.capabilities if c in CAPABILITIES),
    )


def expect_exit(peer: GuestPeer, deadline: float, when: str, *, zero: bool) -> None:
    """The guest sends nothing more, closes its output and exits (with status 0 or not)."""
    try:
        frame = peer.receive(max(deadline - time.monotonic(), 0.0))
    except CheckFailed as error:
        fail_unless(
            "closed its stdout" in str(error), f"{when} the guest did not close its output: {error}"
        )
    else:
        raise CheckFailed(f"{when} the guest sent {describe(frame)}; nothing may follow")
    status = peer.wait_exit(max(deadline - time.monotonic(), 0.0))
    fail_unless(status is not None, f"{when} the guest closed its output but did not exit")
    if zero:
        fail_unless(status == 0, f"{when} the guest exited with status {status}, not 0")
    else:
        fail_unless(status != 0, f"{when} the guest exited with status 0; a refusal is a failure")


def receive_hello(peer: GuestPeer, timeout: float) -> Hello:
    """The guest's first frame, which must be a ``Hello``."""
    try:
        frame = peer.receive(timeout)
    except CheckFailed as error:
        raise CheckFailed(f"no Hello: {error}") from None
    if not isinstance(frame, Hello):
        raise CheckFailed(f"the first frame must be Hello, got {describe(frame)}")
    return frame


def handshake(peer: GuestPeer, timeout: float) -> Hello:
    """Receive ``Hello``, refuse another major, answer ``Welcome``; return the ``Hello``."""
    hello = receive_hello(peer, timeout)
    if not is_compatible(hello.protocol):
        raise CheckFailed(
            f"the guest speaks protocol {hello.protocol[0]}.{hello.protocol[1]}, the kit "
            f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: the majors differ"
        )
    peer.send(welcome_for(hello))
    return hello


class Link:
    """A handshaken guest and the ids the host side allocates on it."""

    def __init__(self, peer: GuestPeer, hello: Hello) -> None:
        self.peer = peer
        self.hello = hello
        self._calls = itertools.count(1)
        self._sessions = itertools.count(1)
        #: Set by a check after which the guest cannot be trusted to serve another check.
        self.spent = False

    def new_call(self) -> int:
        return next(self._calls)

    def new_session_id(self, hint: str) -> str:
        return f"{hint}-{next(self._sessions)}"


class Probe:
    """One check's access to the guest; every wait ends by the check's deadline."""

    def __init__(self, link: Link, timeout: float, scale: float = 1.0) -> None:
        self.link = link
        self.peer = link.peer
        self.hello = link.hello
        self.deadline = time.monotonic() + timeout
        #: Factor applied to the check's fixed waits (``--timeout-factor``), for slow guests.
        self.scale = scale

    @property
    def limits(self) -> Limits:
        return self.hello.limits

    def remaining(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def require(self, capability: str) -> None:
        """Skip the check unless the guest advertised ``capability``."""
        if capability not in self.hello.capabilities:
            raise Skip(f"the guest does not advertise {capability!r}")

    def has(self, capability: str) -> bool:
        return capability in self.hello.capabilities

    @property
    def samples(self) -> Samples:
        """Samples in a language the guest runs (Python first), for checks about any block."""
        if self.has("exec.python"):
            return PYTHON
        if self.has("exec.bash"):
            return BASH
        raise Skip("the guest advertises neither exec.python nor exec.bash")

    @property
    def repl_samples(self) -> Samples:
        """Samples in a language whose blocks share state (Python, or bash with repl.bash)."""
        if self.has("exec.python"):
            return PYTHON
        if self.has("exec.bash") and self.has("repl.bash"):
            return BASH
        raise Skip("the guest has no REPL: neither exec.python nor exec.bash with repl.bash")

    def all_samples(self) -> list[Samples]:
        """Samples for every language the guest runs."""
        return [s for s in (PYTHON, BASH) if self.has(f"exec.{s.language}")]

    # --- raw traffic -------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        self.peer.send(frame)

    def send_map(self, body: dict[str, Any]) -> None:
        """Send a hand-made frame body (unknown kinds, extra fields, invalid values)."""
        data = msgspec.msgpack.encode(body)
        self.peer.send_bytes(len(data).to_bytes(4, "big") + data)

    def receive(self, waiting_for: str, within: float | None = None) -> Frame:
        """The next frame; ``within`` bounds this wait more tightly than the check's deadline."""
        timeout = self.remaining() if within is None else min(within, self.remaining())
        try:
            return self.peer.receive(timeout)
        except CheckFailed as error:
            raise CheckFailed(f"while waiting for {waiting_for}: {error}") from None

    # --- requests ----------------------------------------------------------------------------

    def reply_to(
        self,
        call: int,
        what: str,
        *,
        serve: HostCallServer | None = None,
        within: float | None = None,
    ) -> Frame:
        """The reply (or ``ErrorFrame``) repeating ``call``; host calls go to ``serve``.

        Raises:
            CheckFailed: a frame that is neither, an ``ErrorFrame`` naming no call, or no reply
                by the deadline.
        """
        waiting_for = f"the reply to {what} (call {call})"
        while True:
            frame = self.receive(waiting_for, within)
            if isinstance(frame, HostCall) and serve is not None:
                serve(frame)
                continue
            if isinstance(frame, _REPLIES) and frame.call == call:
                return frame
            raise CheckFailed(f"expected {waiting_for}, got {describe(frame)}")

    def expect(self, reply_type: type[Any], call: int, what: str, **kw: Any) -> Any:
        """The reply to ``call``, which must be a ``reply_type`` (not an ``ErrorFrame``)."""
        frame = self.reply_to(call, what, **kw)
        if not isinstance(frame, reply_type):
            raise CheckFailed(f"{what} (call {call}) got {describe(frame)}")
        return frame

    def expect_error(self, frame: Frame, call: int, codes: tuple[str, ...], what: str) -> ErrorFrame:
        """Send ``frame`` and demand an ``ErrorFrame`` for ``call`` with one of ``codes``."""
        self.send(frame)
        reply = self.reply_to(call, what)
        if not isinstance(reply, ErrorFrame):
            raise CheckFailed(f"{what} must fail with {' or '.join(codes)}, got {describe(reply)}")
        if reply.code not in codes:
            raise CheckFailed(
                f"{what} must fail with {' or '.join(codes)}, got code {reply.code!r} "
                f"({reply.message})"
            )
        session = getattr(frame, "session", None)
        if reply.session != session:
            raise CheckFailed(f"{what}: the ErrorFrame names session {reply.session!r}, not {session!r}")
        return reply

    def open_session(self, hint: str = "s", cwd: str | None = None, *, prompt_refs: bool = False) -> str:
        session = self.link.new_session_id(hint)
        call = self.link.new_call()
        self.send(OpenSession(session=session, call=call, cwd=cwd, prompt_refs=prompt_refs))
        opened = self.expect(SessionOpened, call, f"OpenSession {session!r}")
        if opened.session != session:
            raise CheckFailed(f"SessionOpened names session {opened.session!r}, not {session!r}")
        return session

    def exec(
        self,
        session: str,
        code: str,
        *,
        language: Language = "python",
        timeout: float | None = None,
        serve: HostCallServer | None = None,
    ) -> ExecResult:
        """Run a block and return its ``ExecResult`` (host calls go to ``serve``)."""
        call = self.link.new_call()
        self.send(Exec(session=session, call=call, code=code, language=language, timeout=timeout))
        result: ExecResult = self.expect(
            ExecResult, call, f"Exec in {session!r}", serve=serve
        )
        if result.session != session:
            raise CheckFailed(f"ExecResult names session {result.session!r}, not {session!r}")
        return result

    def exec_ok(self, session: str, code: str, **kw: Any) -> ExecResult:
        """:meth:`exec` that must end without an error (Python) or with status 0 (bash)."""
        result = self.exec(session, code, **kw)
        if result.error is not None:
            raise CheckFailed(
                f"the block {code!r} raised {result.error.name}: {result.error.value}"
            )
        if result.returncode:
            raise CheckFailed(f"the block {code!r} exited with {result.returncode}")
        return result

    def close_session(self, session: str) -> None:
        call = self.link.new_call()
        self.send(CloseSession(session=session, call=call))
        self.expect(SessionClosed, call, f"CloseSession {session!r}")
