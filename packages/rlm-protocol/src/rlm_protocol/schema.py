"""The JSON Schema of every frame, generated from the msgspec Structs, and its version lock.

The schema is never written by hand (STYLE.md): ``frames.schema.json`` next to this module is the
output of :func:`render` and ships in the wheel, so a guest written in another language can
validate frames without reading Python. Regenerate it with::

    uv run python -m rlm_protocol.schema --write

The document carries its protocol version (``$id``, ``title``, ``x-protocol-version``) and a lock,
``x-schema-lock``: one entry per protocol version ever committed, each with the SHA-256 of the
*normative* schema of that version. The lock is append-only and is what ties the types to the
version: a version's schema is frozen once committed, so changing a frame without bumping
``PROTOCOL_MINOR`` (or ``PROTOCOL_MAJOR``) in ``version.py`` makes ``--write`` refuse and the test
suite fail, instead of silently re-describing version 1.0.

"Normative" means the schema without ``title`` and ``description``: those come from docstrings,
and rewording a docstring must not force a protocol release.

>>> doc = schema_document()
>>> doc["x-protocol-version"], doc["discriminator"]["propertyName"]
([1, 1], 'kind')
>>> doc["$defs"]["Exec"]["x-direction"]
'host_to_guest'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from importlib import resources
from typing import Any, Final

import msgspec

from .frames import CAPABILITIES, GUEST_FRAMES, HOST_FRAMES, AnyFrame
from .version import PROTOCOL_VERSION

__all__ = [
    "SCHEMA_FILE",
    "WRITE_COMMAND",
    "LockEntry",
    "SchemaVersionError",
    "advance_lock",
    "committed_lock",
    "frame_schema",
    "load_committed",
    "normative_sha256",
    "render",
    "schema_document",
]

#: Name of the committed schema, a package resource of ``rlm_protocol``.
SCHEMA_FILE: Final = "frames.schema.json"

#: The command that regenerates the committed schema; error messages quote it.
WRITE_COMMAND: Final = "uv run python -m rlm_protocol.schema --write"

_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"

#: Keys that only document (from docstrings): excluded from the fingerprint.
_INFORMATIVE_KEYS: Final = frozenset({"title", "description"})


class SchemaVersionError(Exception):
    """The frame types changed but the protocol version did not (or it went backwards)."""


class LockEntry(msgspec.Struct, frozen=True):
    """One committed protocol version and the fingerprint of its normative schema."""

    protocol_version: tuple[int, int]
    schema_sha256: str


def _version_text(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def frame_schema() -> dict[str, Any]:
    """The schema of ``AnyFrame`` as msgspec generates it, plus the direction of every frame.

    ``x-direction`` is derived from ``HOST_FRAMES``/``GUEST_FRAMES`` so that a peer in another
    language knows which frames it may send and which it must only accept.
    """
    schema: dict[str, Any] = msgspec.json.schema(AnyFrame)
    defs = schema["$defs"]
    directions: list[tuple[tuple[type, ...], str]] = [
        (HOST_FRAMES, "host_to_guest"),
        (GUEST_FRAMES, "guest_to_host"),
    ]
    for frame_types, direction in directions:
        for frame_type in frame_types:
            defs[frame_type.__name__]["x-direction"] = direction
    schema["x-capabilities"] = list(CAPABILITIES)
    schema["x-framing"] = (
        "Each frame is a 4-byte big-endian unsigned length followed by that many bytes of a "
        "MessagePack map; the map's 'kind' names the frame. A peer ignores frames whose kind it "
        "does not know and map keys it does not know."
    )
    return schema


def _strip_informative(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_informative(v) for k, v in node.items() if k not in _INFORMATIVE_KEYS}
    if isinstance(node, list):
        return [_strip_informative(item) for item in node]
    return node


def normative_sha256(schema: dict[str, Any]) -> str:
    """SHA-256 of ``schema`` without titles and descriptions, over canonical JSON.

    >>> a = {"type": "object", "description": "old words"}
    >>> normative_sha256(a) == normative_sha256({**a, "description": "new words"})
    True
    >>> normative_sha256(a) == normative_sha256({**a, "type": "array"})
    False
    """
    canonical = json.dumps(
        _strip_informative(schema), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def advance_lock(
    previous: tuple[LockEntry, ...], version: tuple[int, int], sha256: str
) -> tuple[LockEntry, ...]:
    """The lock after committing the schema with fingerprint ``sha256`` as ``version``.

    Unchanged when ``version`` is the last entry with the same fingerprint; one entry appended when
    ``version`` is newer than the last one.

    >>> v10 = (LockEntry((1, 0), "aa"),)
    >>> advance_lock(v10, (1, 0), "aa") == v10
    True
    >>> advance_lock(v10, (1, 1), "bb")[-1]
    LockEntry(protocol_version=(1, 1), schema_sha256='bb')
    >>> advance_lock(v10, (1, 0), "bb")
    Traceback (most recent call last):
    ...
    rlm_protocol.schema.SchemaVersionError: the frame types changed but the protocol version is still 1.0, whose schema is already committed: bump PROTOCOL_MINOR (compatible additions) or PROTOCOL_MAJOR in rlm_protocol/version.py, then run `uv run python -m rlm_protocol.schema --write`

    Raises:
        SchemaVersionError: the fingerprint changed while the version stayed, or the version is
            older than the last committed one.
    """
    if not previous:
        return (LockEntry(version, sha256),)
    last = previous[-1]
    if version == last.protocol_version:
        if sha256 != last.schema_sha256:
            raise SchemaVersionError(
                "the frame types changed but the protocol version is still "
                f"{_version_text(version)}, whose schema is already committed: bump "
                "PROTOCOL_MINOR (compatible additions) or PROTOCOL_MAJOR in "
                f"rlm_protocol/version.py, then run `{WRITE_COMMAND}`"
            )
        return previous
    if version < last.protocol_version:
        raise SchemaVersionError(
            f"protocol version {_version_text(version)} is older than the last committed "
            f"schema's {_version_text(last.protocol_version)}"
        )
    return (*previous, LockEntry(version, sha256))


def schema_document(previous_lock: tuple[LockEntry, ...] = ()) -> dict[str, Any]:
    """The whole committed document for the current types and ``PROTOCOL_VERSION``.

    ``previous_lock`` is the lock of the committed file (see :func:`load_committed`); without it
    the lock starts at the current version, which is only right for the first commit.

    Raises:
        SchemaVersionError: see :func:`advance_lock`.
    """
    body = frame_schema()
    lock = advance_lock(previous_lock, PROTOCOL_VERSION, normative_sha256(body))
    text = _version_text(PROTOCOL_VERSION)
    return {
        "$schema": _DRAFT,
        "$id": f"urn:rlm:protocol:{text}:frames",
        "title": f"rlm wire protocol {text}: frames",
        "description": (
            "Generated from rlm_protocol.frames; do not edit. PROTOCOL.md is the authority. "
            f"Regenerate with `{WRITE_COMMAND}`."
        ),
        "x-protocol-version": list(PROTOCOL_VERSION),
        "x-schema-lock": msgspec.to_builtins(lock),
        **body,
    }


def render(document: dict[str, Any]) -> str:
    """The file's text: stable key order and indentation, so diffs review well."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def load_committed() -> dict[str, Any] | None:
    """The schema document shipped with this package, or ``None`` when there is none yet."""
    resource = resources.files("rlm_protocol").joinpath(SCHEMA_FILE)
    if not resource.is_file():
        return None
    document: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return document


def committed_lock(document: dict[str, Any] | None) -> tuple[LockEntry, ...]:
    """The lock recorded in a committed document (empty when there is none)."""
    if document is None:
        return ()
    return msgspec.convert(document.get("x-schema-lock", []), tuple[LockEntry, ...])


def main(argv: list[str] | None = None) -> int:
    """``python -m rlm_protocol.schema [--write | --check]``; prints the schema by default."""
    parser = argparse.ArgumentParser(prog="python -m rlm_protocol.schema", description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {SCHEMA_FILE} in place")
    mode.add_argument("--check", action="store_true", help=f"exit 1 if {SCHEMA_FILE} is stale")
    options = parser.parse_args(argv)
    committed = load_committed()
    try:
        text = render(schema_document(committed_lock(committed)))
    except SchemaVersionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if options.write:
        target = resources.files("rlm_protocol").joinpath(SCHEMA_FILE)
        with resources.as_file(target) as path:
            path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)
        return 0
    if options.check:
        if committed is None or render(committed) != text:
            print(f"error: {SCHEMA_FILE} is stale; run `{WRITE_COMMAND}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
