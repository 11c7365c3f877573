"""The committed JSON Schema: current, version-locked, shipped, and true of the guest's frames.

When a test here fails because the frame types changed, bump ``PROTOCOL_MINOR`` (or
``PROTOCOL_MAJOR``) in ``rlm_protocol/version.py`` and run
``uv run python -m rlm_protocol.schema --write``.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from rlm_protocol import (
    PROTOCOL_VERSION,
    Captured,
    CloseSession,
    ErrorFrame,
    Exec,
    ExecResult,
    Frame,
    GUEST_FRAMES,
    HOST_FRAMES,
    Hello,
    Limits,
    UnknownFrame,
)
from tests.missing_part import require
from rlm_protocol.conformance import run_conformance
from rlm_protocol.schema import (
    WRITE_COMMAND,
    LockEntry,
    SchemaVersionError,
    advance_lock,
    committed_lock,
    frame_schema,
    load_committed,
    normative_sha256,
    render,
    schema_document,
)

ROOT = Path(__file__).resolve().parents[2]
GUEST = [sys.executable, "-m", "rlm_guest", "--stdio", "--max-output-chars", "2000"]


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    document = load_committed()
    assert document is not None, f"frames.schema.json is missing; run `{WRITE_COMMAND}`"
    return document


@pytest.fixture(scope="module")
def validator(committed: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(committed)
    cls.check_schema(committed)
    return cls(committed)


def on_the_wire(frame: Frame) -> Any:
    """The frame as a peer decodes it: plain maps, lists and scalars (what the schema describes).

    A msgpack round trip rather than ``msgspec.to_builtins`` alone, which keeps tuples as tuples
    and so would not be JSON Schema arrays.
    """
    return msgspec.msgpack.decode(msgspec.msgpack.encode(frame))


def test_committed_schema_is_the_generated_one(committed: dict[str, Any]) -> None:
    try:
        expected = render(schema_document(committed_lock(committed)))
    except SchemaVersionError as error:
        pytest.fail(str(error))
    assert render(committed) == expected, (
        f"frames.schema.json is stale: run `{WRITE_COMMAND}` and commit it"
    )


def test_lock_ends_with_the_current_version_and_fingerprint(committed: dict[str, Any]) -> None:
    lock = committed_lock(committed)
    assert lock[-1] == LockEntry(PROTOCOL_VERSION, normative_sha256(frame_schema())), (
        "the frame types changed without the protocol version: bump version.py, then run "
        f"`{WRITE_COMMAND}`"
    )
    assert committed["x-protocol-version"] == list(PROTOCOL_VERSION)
    assert f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}" in committed["$id"]


def test_lock_is_append_only_with_increasing_versions(committed: dict[str, Any]) -> None:
    versions = [entry.protocol_version for entry in committed_lock(committed)]
    assert versions == sorted(set(versions)), versions


def _with_new_exec_field() -> dict[str, Any]:
    # What adding ``Exec.priority: int = 0`` would do to the schema.
    schema = copy.deepcopy(frame_schema())
    schema["$defs"]["Exec"]["properties"]["priority"] = {"type": "integer", "default": 0}
    return schema


def test_a_type_change_without_a_version_bump_is_refused(committed: dict[str, Any]) -> None:
    lock = committed_lock(committed)
    changed = normative_sha256(_with_new_exec_field())
    with pytest.raises(SchemaVersionError, match=r"bump PROTOCOL_MINOR .*--write"):
        advance_lock(lock, PROTOCOL_VERSION, changed)
    major, minor = PROTOCOL_VERSION
    bumped = advance_lock(lock, (major, minor + 1), changed)
    assert bumped[:-1] == lock and bumped[-1] == LockEntry((major, minor + 1), changed)
    with pytest.raises(SchemaVersionError, match="older than"):
        advance_lock(bumped, PROTOCOL_VERSION, changed)


def test_rewording_a_docstring_needs_no_version_bump() -> None:
    schema = copy.deepcopy(frame_schema())
    schema["$defs"]["Exec"]["description"] = "Reworded."
    assert normative_sha256(schema) == normative_sha256(frame_schema())


def test_check_command_agrees() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rlm_protocol.schema", "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_wheel_ships_the_schema(tmp_path: Path) -> None:
    # Only a missing uv is a reason to skip; a build that fails is a broken package.
    require(shutil.which("uv") is not None, "uv", "pip install uv (scripts/setup.sh does it)")
    done = subprocess.run(
        ["uv", "build", "--package", "rlm-protocol", "--wheel", "-o", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"uv build failed: {done.stderr[-1000:]}"
    (wheel,) = tmp_path.glob("*.whl")
    assert "rlm_protocol/frames.schema.json" in zipfile.ZipFile(wheel).namelist()


def test_direction_of_every_frame_is_in_the_schema(committed: dict[str, Any]) -> None:
    defs = committed["$defs"]
    assert {name for name, d in defs.items() if d.get("x-direction") == "host_to_guest"} == {
        t.__name__ for t in HOST_FRAMES
    }
    assert {name for name, d in defs.items() if d.get("x-direction") == "guest_to_host"} == {
        t.__name__ for t in GUEST_FRAMES
    }


def test_schema_rejects_what_the_decoder_rejects(validator: jsonschema.protocols.Validator) -> None:
    good = on_the_wire(Exec(session="s", call=1, code="1"))
    validator.validate(good)
    for bad in (
        {**good, "call": "one"},
        {k: v for k, v in good.items() if k != "code"},
        {**good, "language": 3},
    ):
        assert not validator.is_valid(bad), bad
    # Unknown languages are valid frames (the guest answers "unsupported"), and unknown keys
    # are allowed: a newer minor may add optional fields.
    validator.validate({**good, "language": "cobol"})
    validator.validate({**good, "priority": 3})


def test_every_frame_the_reference_guest_sends_validates(
    validator: jsonschema.protocols.Validator,
) -> None:
    seen: list[tuple[str, Frame | UnknownFrame]] = []
    report = run_conformance(GUEST, trace=lambda direction, frame: seen.append((direction, frame)))
    assert report.ok, report.format()
    kinds: set[str] = set()
    for direction, frame in seen:
        if isinstance(frame, UnknownFrame):
            continue  # the kit's deliberately unknown frame; not part of the 1.0 schema
        builtins = on_the_wire(frame)
        errors = sorted(validator.iter_errors(builtins), key=lambda e: list(e.path))
        assert not errors, f"{direction} {type(frame).__name__}: {errors[0].message}"
        if direction == "guest":
            kinds.add(builtins["kind"])
    # The session exercised every frame a guest can send.
    assert kinds == {t.__struct_config__.tag for t in GUEST_FRAMES}


def test_sample_frames_validate(validator: jsonschema.protocols.Validator) -> None:
    limits = Limits(max_frame_bytes=1 << 20, max_output_chars=10, max_sessions=2)
    samples: list[Frame] = [
        Hello(protocol=(1, 0), agent="x", agent_version="0", capabilities=(), limits=limits),
        ExecResult(session="s", call=1, stdout=Captured("a", 1, 1), stderr=Captured()),
        ErrorFrame(code="unknown_session", message="no", session="s", call=2),
        CloseSession(session="s", call=3),
    ]
    for frame in samples:
        validator.validate(on_the_wire(frame))
