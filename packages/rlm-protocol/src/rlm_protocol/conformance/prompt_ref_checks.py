"""Checks of ``prompt_ref`` (PROTOCOL.md 4.2, 1.1): a prompt handed to a child stays in the guest.

The kit computes what each ``PromptRef`` must say (``chars``, ``lines``, ``prefix``, ``blake2b``)
from the text its own block passed, by the text's rules and with ``hashlib`` directly, so a
guest and the kit agree only when both follow PROTOCOL.md, not because they share code. What a
``bind_refs`` bound is read back in the child's session as its length and digest, so a lone
surrogate or a cut text shows up without printing megabytes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

import msgspec

from ..frames import BindRefs, ExecResult, Frame, HostCall, HostCallReply, PromptRef, VarsSet
from .peer import CheckFailed, describe
from .probe import Probe, fail_unless

__all__ = [
    "REQUIRES",
    "bind_refs_limit",
    "bind_refs_text",
    "bind_refs_unknown_ref",
    "prompt_ref_batched",
    "prompt_ref_lifetime",
    "prompt_ref_opt_in",
    "prompt_ref_payload",
]

#: What every check here needs: Python's ``rlm_query`` (section 4) calling the host, and refs.
REQUIRES: Final = ("exec.python", "host_call", "prompt_ref")

#: PROTOCOL.md 4.2: ``PromptRef.prefix`` is the first 1,600 characters of the text.
PREFIX_CHARS: Final = 1600

#: PROTOCOL.md 3.2 and 6: the most names one ``bind_refs`` may bind.
MAX_BIND_NAMES: Final = 16

#: A text longer than the prefix, with non-ASCII characters inside and beyond it, newlines, and a
#: lone surrogate (which Python text can hold) past the prefix, where the text says it is kept
#: and hashed as it is.
LONG_TEXT: Final = "\u03b1" + "x" * (PREFIX_CHARS + 50) + "\n\u00e9t\u00e9 \u2026 \U0001f600\ud800\nend"

#: A ref no guest makes (the reference guest's refs are call ids).
NEVER_MADE: Final = "rlm-conformance-never-made"

#: Prints the bound ``prompt``'s type, length and digest (of its UTF-8, surrogates as they are).
_SHOW_BOUND = (
    "import hashlib as _h\n"
    "print(type({name}).__name__, len({name}), "
    "_h.blake2b({name}.encode('utf-8', 'surrogatepass'), digest_size=32).hexdigest())"
)


def expected_ref(text: str) -> dict[str, Any]:
    """What a ``PromptRef`` of ``text`` must carry besides ``ref`` (PROTOCOL.md 4.2, 3.3).

    >>> expected_ref("a\\n")["lines"], expected_ref("")["lines"], expected_ref("\\ud800")["chars"]
    (2, 0, 1)
    """
    return {
        "chars": len(text),
        "lines": text.count("\n") + 1 if text else 0,
        "prefix": text[:PREFIX_CHARS],
        "blake2b": hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=32).hexdigest(),
    }


def _shown(text: str) -> str:
    """What ``_SHOW_BOUND`` prints for a bound ``text``."""
    return f"str {len(text)} {expected_ref(text)['blake2b']}\n"


class _Calls:
    """Serves host calls: records each and answers ``ok`` (or ``answers[prompt prefix]``)."""

    def __init__(self, probe: Probe, answers: dict[str, str] | None = None) -> None:
        self.probe = probe
        self.answers = answers or {}
        self.seen: list[HostCall] = []

    def __call__(self, call: HostCall) -> None:
        self.seen.append(call)
        ref = call.payload.get("prompt_ref")
        prefix = ref.get("prefix") if isinstance(ref, dict) else None
        value = self.answers.get(prefix, "ok") if isinstance(prefix, str) else "ok"
        self.probe.send(HostCallReply(session=call.session, call=call.call, value=value))


def _prompt_ref(call: HostCall, text: str | None, what: str) -> PromptRef:
    """The call's ``PromptRef``, checked against the text the block passed (unless None: the
    checks of binding leave the metadata to ``prompt_ref_payload``, so that one defect fails
    one check)."""
    fail_unless(call.method == "rlm_query", f"{what}: the method is {call.method!r}, not 'rlm_query'")
    payload = call.payload
    fail_unless(
        "prompt" not in payload and "prompt_ref" in payload,
        f"{what} in a session opened with prompt_refs must send prompt_ref instead of the text; "
        f"the payload has {sorted(payload)}",
    )
    fail_unless("model" in payload, f"{what}: the payload has no 'model' (nil when not given)")
    try:
        ref = msgspec.convert(payload["prompt_ref"], PromptRef)
    except msgspec.ValidationError as error:
        raise CheckFailed(f"{what}: prompt_ref is not a PromptRef ({error}): {payload['prompt_ref']!r}") from None
    fail_unless(bool(ref.ref), f"{what}: PromptRef.ref is empty")
    if text is None:
        return ref
    got = {"chars": ref.chars, "lines": ref.lines, "prefix": ref.prefix, "blake2b": ref.blake2b}
    for key, value in expected_ref(text).items():
        if got[key] != value:
            shown = repr(got[key]) if key != "prefix" else f"{len(ref.prefix)} characters"
            want = repr(value) if key != "prefix" else f"the first {len(value)} characters"
            raise CheckFailed(f"{what}: PromptRef.{key} is {shown}, not {want} of the text passed")
    return ref


def _make_refs(probe: Probe, session: str, code: str, count: int) -> list[HostCall]:
    """Run ``code`` in ``session`` and return its ``count`` host calls (each answered ``ok``)."""
    calls = _Calls(probe)
    probe.exec_ok(session, code, serve=calls)
    fail_unless(len(calls.seen) == count, f"the block {code[:60]!r}... sent {len(calls.seen)} host calls, not {count}")
    return calls.seen


def _make_ref(probe: Probe, session: str, text: str) -> str:
    """``rlm_query(text)`` in ``session`` (opened with prompt_refs); the ref it sent."""
    (call,) = _make_refs(probe, session, f"rlm_query({text!r})", 1)
    return _prompt_ref(call, None, "rlm_query").ref


def _bind(probe: Probe, session: str, refs: dict[str, str]) -> Frame:
    call = probe.link.new_call()
    probe.send(BindRefs(session=session, call=call, refs=refs))
    return probe.reply_to(call, f"BindRefs {refs!r}"[:120])


def _bind_ok(probe: Probe, session: str, refs: dict[str, str], what: str) -> VarsSet:
    reply = _bind(probe, session, refs)
    if not isinstance(reply, VarsSet):
        raise CheckFailed(f"{what} must be answered with vars_set, got {describe(reply)}")
    return reply


def _expect_bound(probe: Probe, session: str, name: str, text: str, what: str) -> ExecResult:
    result = probe.exec_ok(session, _SHOW_BOUND.format(name=name))
    shown = result.stdout.text
    if shown != _shown(text):
        raise CheckFailed(
            f"{what}: {name!r} is bound to '{shown.strip()}' (type, length, BLAKE2b), "
            f"not the text passed ('{_shown(text).strip()}')"
        )
    return result


# --- the checks --------------------------------------------------------------------------------


def prompt_ref_payload(probe: Probe) -> None:
    """rlm_query in a prompt_refs session sends a PromptRef whose chars/lines/prefix/blake2b match."""
    session = probe.open_session("refs", prompt_refs=True)
    text = LONG_TEXT + "\n\na: 1"
    calls = _make_refs(
        probe, session,
        f"r1 = rlm_query({LONG_TEXT!r}, a=1)\nr2 = rlm_query('short', model='m')\n"
        "r3 = llm_query('plain')\nprint(r1, r2, r3)",
        3,
    )
    first = _prompt_ref(calls[0], text, "rlm_query(text, a=1)")
    fail_unless(calls[0].payload["model"] is None, f"model is {calls[0].payload['model']!r}, not nil")
    second = _prompt_ref(calls[1], "short", "rlm_query('short', model='m')")
    fail_unless(calls[1].payload["model"] == "m", f"model is {calls[1].payload['model']!r}, not 'm'")
    fail_unless(first.ref != second.ref, f"two calls sent the same ref {first.ref!r}")
    plain = calls[2]
    fail_unless(
        plain.method == "llm_query" and plain.payload == {"prompt": "plain", "model": None},
        f"llm_query always sends its text: expected llm_query {{'prompt': 'plain', 'model': None}}, "
        f"got {plain.method} {plain.payload!r}",
    )
    probe.close_session(session)


def prompt_ref_opt_in(probe: Probe) -> None:
    """A session opened without prompt_refs sends rlm_query's text, even to a host that has refs."""
    session = probe.open_session("norefs")
    (call,) = _make_refs(probe, session, "rlm_query('q')", 1)
    expected = {"prompt": "q", "model": None}
    fail_unless(
        call.payload == expected,
        f"a session opened without prompt_refs sent {call.payload!r}, not {expected!r}",
    )
    probe.close_session(session)


def bind_refs_text(probe: Probe) -> None:
    """bind_refs binds the exact text as str (non-ASCII, a lone surrogate) and unsets Final."""
    parent = probe.open_session("maker", prompt_refs=True)
    ref = _make_ref(probe, parent, LONG_TEXT)
    child = probe.open_session("child")
    probe.exec_ok(child, "Final = 'the previous answer'")
    bound = _bind_ok(probe, child, {"prompt": ref, "copy": ref}, "BindRefs of a kept ref")
    fail_unless(
        {"prompt", "copy"} <= set(bound.state.names),
        f"after BindRefs of 'prompt' and 'copy' the VarsState lists {list(bound.state.names)}",
    )
    result = _expect_bound(probe, child, "prompt", LONG_TEXT, "after BindRefs")
    fail_unless(result.final is None, f"BindRefs must unset Final; the next block reports {result.final}")
    _expect_bound(probe, child, "copy", LONG_TEXT, "a second name for the same ref")
    # The prefix travels as a wire str, which cannot hold a lone surrogate (PROTOCOL.md 4.2).
    calls = _Calls(probe)
    failed = probe.exec(parent, "rlm_query('\\ud800 at the start')", serve=calls)
    fail_unless(
        failed.error is not None and not calls.seen,
        "rlm_query of a text with a lone surrogate in its prefix must fail in the block and send "
        f"nothing; it sent {len(calls.seen)} host calls, error {failed.error}",
    )
    probe.close_session(child)
    probe.close_session(parent)


def bind_refs_unknown_ref(probe: Probe) -> None:
    """bind_refs of a ref never made fails with unknown_ref, into a session never opened with unknown_session."""
    session = probe.open_session("unknownref")
    probe.exec_ok(session, "kept = 'yes'")
    call = probe.link.new_call()
    probe.expect_error(
        BindRefs(session=session, call=call, refs={"prompt": NEVER_MADE}), call, ("unknown_ref",),
        f"BindRefs of the ref {NEVER_MADE!r}, which was never made",
    )
    shown = probe.exec_ok(session, "print(kept)").stdout.text
    fail_unless(shown == "yes\n", f"after a refused BindRefs the session printed {shown!r}")
    # A kept ref into a session that does not exist: the session is what is unknown (3.4).
    maker = probe.open_session("maker", prompt_refs=True)
    ref = _make_ref(probe, maker, "kept")
    call = probe.link.new_call()
    probe.expect_error(
        BindRefs(session="never-opened", call=call, refs={"prompt": ref}), call, ("unknown_session",),
        "BindRefs of a kept ref into a session never opened",
    )
    probe.close_session(maker)
    probe.close_session(session)


def prompt_ref_lifetime(probe: Probe) -> None:
    """A ref dies with its maker unless bound; the binding session keeps it, across a reset, until closed."""
    child = probe.open_session("binder")
    # Never bound: it lives as long as the session that made it.
    maker = probe.open_session("maker", prompt_refs=True)
    unbound = _make_ref(probe, maker, "never bound")
    probe.close_session(maker)
    call = probe.link.new_call()
    probe.expect_error(
        BindRefs(session=child, call=call, refs={"prompt": unbound}), call, ("unknown_ref",),
        "BindRefs of a ref whose session closed before it was bound",
    )
    # Bound: the binding session keeps it after its maker closed, to bind it again after a reset.
    maker = probe.open_session("maker", prompt_refs=True)
    ref = _make_ref(probe, maker, LONG_TEXT)
    _bind_ok(probe, child, {"prompt": ref}, "BindRefs of a fresh ref")
    probe.close_session(maker)
    died = probe.exec(child, "import os\nos._exit(3)")
    fail_unless(died.session_reset, f"a block that exited its process must report session_reset: {describe(died)}")
    # A reset empties the session (4.4); binding again is the host's move, not the guest's.
    empty = probe.exec_ok(child, "print('prompt' in globals())").stdout.text
    fail_unless(empty == "False\n", f"after a reset 'prompt' in globals() printed {empty!r}; the session must be empty")
    reply = _bind(probe, child, {"prompt": ref})
    if not isinstance(reply, VarsSet):
        raise CheckFailed(
            "a ref bound in a session must outlive the session that made it, so that the host can "
            f"bind it again after a reset; BindRefs after the maker closed and a reset got {describe(reply)}"
        )
    _expect_bound(probe, child, "prompt", LONG_TEXT, "bound again after a reset")
    # The binding session closed: the ref is gone.
    probe.close_session(child)
    other = probe.open_session("late")
    call = probe.link.new_call()
    probe.expect_error(
        BindRefs(session=other, call=call, refs={"prompt": ref}), call, ("unknown_ref",),
        "BindRefs of a ref whose binding session (and maker) closed",
    )
    probe.close_session(other)


def bind_refs_limit(probe: Probe) -> None:
    """bind_refs takes 16 names; 17 are refused with too_large."""
    maker = probe.open_session("maker", prompt_refs=True)
    ref = _make_ref(probe, maker, "sixteen times")
    child = probe.open_session("many")
    names = {f"p{i:02d}": ref for i in range(MAX_BIND_NAMES)}
    bound = _bind_ok(probe, child, names, f"BindRefs of {MAX_BIND_NAMES} names")
    fail_unless(
        bound.state.count == MAX_BIND_NAMES,
        f"BindRefs of {MAX_BIND_NAMES} names reports {bound.state.count} variables",
    )
    call = probe.link.new_call()
    too_many = {f"q{i:02d}": ref for i in range(MAX_BIND_NAMES + 1)}
    probe.expect_error(
        BindRefs(session=child, call=call, refs=too_many), call, ("too_large",),
        f"BindRefs of {MAX_BIND_NAMES + 1} names",
    )
    probe.close_session(child)
    probe.close_session(maker)


def prompt_ref_batched(probe: Probe) -> None:
    """rlm_query_batched sends one PromptRef per prompt, refs unique on the connection, each bindable."""
    texts = ["one", "two\n", "thr\u00e9e \u2026"]
    answers = {text: f"answer {i}" for i, text in enumerate(texts)}
    session = probe.open_session("batch", prompt_refs=True)
    calls = _Calls(probe, answers)
    result = probe.exec_ok(session, f"print(rlm_query_batched({texts!r}))", serve=calls)
    fail_unless(len(calls.seen) == len(texts), f"a batch of {len(texts)} sent {len(calls.seen)} host calls")
    by_prefix = {c.payload.get("prompt_ref", {}).get("prefix"): c for c in calls.seen if isinstance(c.payload.get("prompt_ref"), dict)}
    refs = []
    for i, text in enumerate(texts):
        call = by_prefix.get(text)
        if call is None:
            raise CheckFailed(
                f"no host call of the batch carries a PromptRef of prompt {i} ({text!r}); "
                f"payloads: {[c.payload for c in calls.seen]!r}"[:400]
            )
        refs.append(_prompt_ref(call, text, f"prompt {i} of rlm_query_batched").ref)
    fail_unless(len(set(refs)) == len(refs), f"the batch's prompts share refs: {refs}")
    expected = repr(list(answers.values())) + "\n"
    fail_unless(result.stdout.text == expected, f"the batch returned {result.stdout.text!r}, not {expected!r}")
    other = probe.open_session("batch", prompt_refs=True)
    another = _make_ref(probe, other, "one")
    fail_unless(another not in refs, f"two sessions sent the same ref {another!r}: refs are unique on the connection")
    child = probe.open_session("children")
    _bind_ok(probe, child, {f"p{i}": ref for i, ref in enumerate(refs)}, "BindRefs of a batch's refs")
    for i, text in enumerate(texts):
        _expect_bound(probe, child, f"p{i}", text, f"the ref of prompt {i}")
    for s in (child, other, session):
        probe.close_session(s)
