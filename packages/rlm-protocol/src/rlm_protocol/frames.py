"""Every frame of the rlm wire protocol, as frozen msgspec Structs in one tagged union.

PROTOCOL.md is the authority; this module is its executable form. Frames are map-encoded (not
``array_like``) so that a newer minor can add optional fields without breaking older peers, and
every field added after 1.0 must have a default.

Direction and pairing (``call`` ids are chosen by the side that sends the request and repeated in
its reply, so replies may come back in any order):

==================  =========  =================================================
request             direction  reply
==================  =========  =================================================
(connect)           g -> h     ``Hello``
``Welcome``         h -> g     none (the guest may now receive requests)
``OpenSession``     h -> g     ``SessionOpened`` or ``ErrorFrame``
``SetVars``         h -> g     ``VarsSet`` or ``ErrorFrame``
``Exec``            h -> g     ``ExecResult`` or ``ErrorFrame``
``Interrupt``       h -> g     none: the running ``Exec`` ends with ``interrupted``
``CloseSession``    h -> g     ``SessionClosed`` or ``ErrorFrame``
``BindRefs``        h -> g     ``VarsSet`` or ``ErrorFrame`` (1.1, capability ``prompt_ref``)
``HostCall``        g -> h     ``HostCallReply``
``Shutdown``        h -> g     ``Bye``
==================  =========  =================================================
"""

from __future__ import annotations

from typing import Any, Literal, Union

import msgspec

__all__ = [
    "AnyFrame",
    "BindRefs",
    "Bye",
    "CAPABILITIES",
    "Captured",
    "CloseSession",
    "ErrorCode",
    "ErrorFrame",
    "Exec",
    "ExecError",
    "ExecResult",
    "FinalValue",
    "Frame",
    "GUEST_FRAMES",
    "HOST_FRAMES",
    "Hello",
    "HostCall",
    "HostCallError",
    "HostCallReply",
    "Interrupt",
    "Language",
    "Limits",
    "OpenSession",
    "PROMPT_REF",
    "PromptRef",
    "SessionClosed",
    "SessionOpened",
    "SetVars",
    "Shutdown",
    "UnknownFrame",
    "VarsSet",
    "VarsState",
    "Welcome",
]

Language = Literal["python", "bash"]

#: 1.1: ``rlm_query`` may pass its prompt by reference (``PromptRef``), bound in the child's
#: session with ``BindRefs``: a piece of a large prompt never leaves the guest.
PROMPT_REF = "prompt_ref"

#: Capabilities a guest may advertise in ``Hello``. Unknown ones must be ignored by a host.
CAPABILITIES: tuple[str, ...] = (
    "exec.python",
    "exec.bash",
    "interrupt",
    "host_call",
    "host_call.batched",
    # 1.1: bash blocks get variables as files and host calls as commands (PROTOCOL.md 4.1).
    "repl.bash",
    PROMPT_REF,
)

#: Codes of ``ErrorFrame``. A peer must accept codes it does not know (treat as ``internal``).
ErrorCode = Literal[
    "unknown_session",
    "session_exists",
    "session_busy",
    "session_lost",
    "bad_request",
    "unsupported",
    "too_large",
    "internal",
    "unknown_ref",
]


class Frame(msgspec.Struct, frozen=True, tag_field="kind", forbid_unknown_fields=False):
    """Base of every frame; ``kind`` on the wire names the concrete type."""


# --- embedded records -----------------------------------------------------------------------


class Limits(msgspec.Struct, frozen=True):
    """Limits a guest enforces, announced in ``Hello`` so the host can respect them."""

    #: Largest frame body either side may send, in bytes (the 4-byte length prefix excluded).
    max_frame_bytes: int
    #: Each of stdout and stderr is cut to this many characters per ``Exec``; the true size is
    #: still reported in ``Captured.chars``.
    max_output_chars: int
    #: Sessions open at once; ``OpenSession`` beyond it fails with ``too_large``.
    max_sessions: int


class Captured(msgspec.Struct, frozen=True):
    """One captured output stream of an ``Exec``.

    ``text`` holds at most ``Limits.max_output_chars`` characters; ``chars`` and ``lines`` count
    the whole stream as the code wrote it, so ``chars > len(text)`` means output was cut.
    """

    text: str = ""
    chars: int = 0
    lines: int = 0

    @property
    def cut(self) -> bool:
        """Whether the guest dropped part of this stream (``chars`` exceeds ``len(text)``)."""
        return self.chars > len(self.text)


class ExecError(msgspec.Struct, frozen=True):
    """The exception that ended a Python block (Jupyter's name/value/traceback triple)."""

    name: str
    value: str
    traceback: str = ""


class FinalValue(msgspec.Struct, frozen=True):
    """State of the REPL variable ``Final`` after an ``Exec`` that left it set.

    ``ok`` is false when ``Final`` is not JSON-serializable; then ``value`` is absent and
    ``error`` says why, so the host can tell the model instead of crashing.
    """

    ok: bool
    value: Any = None
    error: str = ""
    type: str = ""
    repr: str = ""


class VarsState(msgspec.Struct, frozen=True):
    """A summary of a session's user-visible variables (names are sorted, at most 20)."""

    names: tuple[str, ...] = ()
    count: int = 0


class PromptRef(msgspec.Struct, frozen=True):
    """A prompt kept by the guest (1.1, ``prompt_ref``): what a model is told about it, and the
    name under which ``BindRefs`` binds it in another session.

    ``chars``, ``lines`` and ``prefix`` (at most 1,600 characters) are ``text_metadata`` of
    the text; ``blake2b`` is the hex BLAKE2b-256 digest of its UTF-8 bytes (``surrogatepass``).
    """

    ref: str
    chars: int
    lines: int
    prefix: str
    blake2b: str


class HostCallError(msgspec.Struct, frozen=True):
    """Why a host call failed; raised in the guest as ``RuntimeError(f"{name}: {message}")``."""

    name: str
    message: str


# --- handshake --------------------------------------------------------------------------------


class Hello(Frame, frozen=True, tag="hello"):
    """First frame on a connection, sent by the guest as soon as its channel is open."""

    protocol: tuple[int, int]
    agent: str
    agent_version: str
    capabilities: tuple[str, ...]
    limits: Limits
    #: Free-form facts about the runtime (``python``, ``kernel``, ...), for diagnosis only.
    runtime: dict[str, str] = {}


class Welcome(Frame, frozen=True, tag="welcome"):
    """The host's answer to ``Hello``: its version and the capabilities it will use."""

    protocol: tuple[int, int]
    host: str
    host_version: str
    capabilities: tuple[str, ...] = ()


class Shutdown(Frame, frozen=True, tag="shutdown"):
    """Ask the guest to stop every session and exit; it answers ``Bye`` and closes."""


class Bye(Frame, frozen=True, tag="bye"):
    """Last frame a guest sends before it exits on ``Shutdown``."""


# --- session requests (host -> guest) ---------------------------------------------------------


class OpenSession(Frame, frozen=True, tag="open_session", omit_defaults=True):
    """Create a session: a fresh namespace with the REPL globals, and a worker to run blocks.

    Fields at their defaults are left out on the wire, so a 1.0 guest never sees a 1.1 field.
    """

    session: str
    call: int
    #: Working directory of bash blocks; the guest picks one per session when absent.
    cwd: str | None = None
    #: 1.1 (``prompt_ref``): ``rlm_query`` in this session sends its prompt as a ``PromptRef``
    #: (payload ``prompt_ref``) instead of the text. The host asks for it only where it runs
    #: the call as a child RLM, which it binds with ``BindRefs``.
    prompt_refs: bool = False


class SetVars(Frame, frozen=True, tag="set_vars"):
    """Bind variables in a session's namespace; also unsets ``Final``."""

    session: str
    call: int
    values: dict[str, Any]


class BindRefs(Frame, frozen=True, tag="bind_refs"):
    """1.1 (``prompt_ref``): bind, under each name, the text the guest keeps under that
    ``PromptRef.ref``, as ``str``; like ``SetVars`` it unsets ``Final``. A ref stays usable by
    the session it was bound in (to bind again after a reset) until that session closes."""

    session: str
    call: int
    refs: dict[str, str]


class Exec(Frame, frozen=True, tag="exec"):
    """Run one block. At most one ``Exec`` runs per session; a second one gets ``session_busy``."""

    session: str
    call: int
    code: str
    #: ``"python"`` or ``"bash"`` in 1.0 (``Language``); any other string is a valid frame that
    #: a guest answers with ``unsupported``, so a language added later cannot break a session.
    language: str = "python"
    #: Seconds after which the guest interrupts the block itself (``None``: no limit).
    timeout: float | None = None


class Interrupt(Frame, frozen=True, tag="interrupt"):
    """Stop the block running in ``session``; ignored when none is running."""

    session: str


class CloseSession(Frame, frozen=True, tag="close_session"):
    """Drop a session and its namespace; a block still running is interrupted first."""

    session: str
    call: int


class HostCallReply(Frame, frozen=True, tag="host_call_reply"):
    """The host's answer to ``HostCall`` with the same ``session`` and ``call``."""

    session: str
    call: int
    value: Any = None
    error: HostCallError | None = None


# --- guest -> host ----------------------------------------------------------------------------


class SessionOpened(Frame, frozen=True, tag="session_opened"):
    session: str
    call: int
    state: VarsState = VarsState()


class VarsSet(Frame, frozen=True, tag="vars_set"):
    session: str
    call: int
    state: VarsState = VarsState()


class ExecResult(Frame, frozen=True, tag="exec_result"):
    """How a block ended. A raised exception is a normal result (``error`` set), not a failure."""

    session: str
    call: int
    stdout: Captured
    stderr: Captured
    state: VarsState = VarsState()
    #: Set when ``Final`` exists in the namespace after the block.
    final: FinalValue | None = None
    error: ExecError | None = None
    #: Exit status of a bash block; ``None`` for Python.
    returncode: int | None = None
    #: The block was stopped by ``Interrupt`` or by its ``timeout``.
    interrupted: bool = False
    #: The block could not be stopped and the session's state is gone; the session was reset
    #: to a fresh namespace (the host should tell the model).
    session_reset: bool = False
    #: Wall time of the block in the guest, seconds.
    duration: float = 0.0


class HostCall(Frame, frozen=True, tag="host_call"):
    """A call from code in the guest to the host (``rlm_query``, ``llm_query``, tools).

    ``call`` ids are allocated by the guest, so several calls of one session can be in flight
    together (``rlm_query_batched``) and be answered in any order.
    """

    session: str
    call: int
    method: str
    payload: dict[str, Any] = {}


class SessionClosed(Frame, frozen=True, tag="session_closed"):
    session: str
    call: int


class ErrorFrame(Frame, frozen=True, tag="error"):
    """A request that failed. ``session``/``call`` name the request when it had them."""

    code: str
    message: str
    session: str | None = None
    call: int | None = None


class UnknownFrame(msgspec.Struct, frozen=True):
    """A well-formed frame whose ``kind`` this peer does not know (from a newer minor).

    Not part of the wire union: the decoder produces it so that a peer can ignore it.
    """

    kind: str


HOST_FRAMES = (
    Welcome, OpenSession, SetVars, BindRefs, Exec, Interrupt, CloseSession, HostCallReply, Shutdown,
)
GUEST_FRAMES = (Hello, SessionOpened, VarsSet, ExecResult, HostCall, SessionClosed, ErrorFrame, Bye)

AnyFrame = Union[
    Hello,
    Welcome,
    Shutdown,
    Bye,
    OpenSession,
    SetVars,
    BindRefs,
    Exec,
    Interrupt,
    CloseSession,
    HostCallReply,
    SessionOpened,
    VarsSet,
    ExecResult,
    HostCall,
    SessionClosed,
    ErrorFrame,
]
