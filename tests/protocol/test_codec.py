"""The sans-IO codec: framing, limits, malformed input, unknown kinds."""

from __future__ import annotations

import typing

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlm_protocol import (
    Captured,
    ExecResult,
    FinalValue,
    FrameDecoder,
    FrameEncoder,
    Hello,
    HostCall,
    Limits,
    LocalProtocolError,
    OpenSession,
    ProtocolError,
    RemoteProtocolError,
    SetVars,
    UnknownFrame,
    VarsState,
    encode,
)
from rlm_protocol.codec import HEADER_BYTES, decode_body
from rlm_protocol.frames import AnyFrame

SAMPLES = [
    Hello(
        protocol=(1, 0),
        agent="x",
        agent_version="0",
        capabilities=("exec.python",),
        limits=Limits(max_frame_bytes=100, max_output_chars=10, max_sessions=2),
    ),
    OpenSession(session="s1", call=1),
    SetVars(session="s1", call=2, values={"prompt": "é" * 1000, "n": [1, 2, {"a": None}]}),
    HostCall(session="s1", call=3, method="rlm_query", payload={"prompt": "p", "model": None}),
    ExecResult(
        session="s1",
        call=4,
        stdout=Captured(text="42\n", chars=3, lines=2),
        stderr=Captured(),
        state=VarsState(names=("x",), count=1),
        final=FinalValue(ok=True, value={"a": [1]}, type="dict", repr="{'a': [1]}"),
    ),
]


def test_every_frame_kind_has_a_unique_tag() -> None:
    tags = [t.__struct_config__.tag for t in typing.get_args(AnyFrame)]
    assert len(tags) == len(set(tags)) == 17


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip_split_at_every_offset(frame: object) -> None:
    data = encode(frame) * 2  # type: ignore[arg-type]
    for cut in range(len(data) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert frames == [frame, frame]
        assert decoder.buffered == 0


def test_one_byte_at_a_time() -> None:
    data = b"".join(encode(f) for f in SAMPLES)
    decoder = FrameDecoder()
    out = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == SAMPLES


def test_oversized_length_is_refused_before_buffering() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decoder.feed((10**6).to_bytes(4, "big"))


def test_decoder_fails_closed() -> None:
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"\x00\x00\x00\x01\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode(OpenSession(session="s", call=1)))


def test_known_kind_with_wrong_field_type_names_the_kind() -> None:
    body = msgspec.msgpack.encode({"kind": "exec", "session": "s", "call": "one", "code": ""})
    with pytest.raises(RemoteProtocolError, match="'exec'"):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


def test_unknown_kind_is_an_event_not_an_error() -> None:
    body = msgspec.msgpack.encode({"kind": "from_the_future", "x": 1})
    frames = FrameDecoder().feed(len(body).to_bytes(4, "big") + body)
    assert frames == [UnknownFrame(kind="from_the_future")]


def test_extra_fields_from_a_newer_minor_are_ignored() -> None:
    body = msgspec.msgpack.encode({"kind": "open_session", "session": "s", "call": 1, "new": 2})
    assert FrameDecoder().feed(len(body).to_bytes(4, "big") + body) == [
        OpenSession(session="s", call=1)
    ]


def test_truncated_stream_is_reported_at_eof() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode(OpenSession(session="s", call=1))[:-1])
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        decoder.eof()


def test_encoder_refuses_frames_over_its_limit() -> None:
    encoder = FrameEncoder(max_frame_bytes=100)
    with pytest.raises(LocalProtocolError):
        encoder.encode(SetVars(session="s", call=1, values={"p": "x" * 200}))
    assert encoder.encode(OpenSession(session="s", call=1)) == encode(
        OpenSession(session="s", call=1)
    )


def test_large_frame_in_small_chunks() -> None:
    frame = SetVars(session="s", call=1, values={"prompt": "x" * (4 << 20)})
    data = encode(frame)
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(data), 65536):
        got += decoder.feed(data[i : i + 65536])
    assert got == [frame]


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    decoder = FrameDecoder(max_frame_bytes=1 << 16)
    try:
        decoder.feed(data)
        decoder.eof()
    except ProtocolError:
        pass


@settings(max_examples=1000, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["kind", "session", "call", "code", "values", "method", "payload"]),
        st.one_of(
            st.none(),
            st.integers(min_value=-(2**63), max_value=2**64 - 1),
            st.text(max_size=20),
            st.sampled_from(["exec", "set_vars", "host_call", "hello", "bye", "nope"]),
            st.lists(st.integers(min_value=0, max_value=2**32), max_size=3),
            st.dictionaries(st.text(max_size=5), st.booleans(), max_size=3),
        ),
    )
)
def test_fuzz_wrong_shapes_only_raise_protocol_error(fields: dict[str, object]) -> None:
    body = msgspec.msgpack.encode(fields)
    try:
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)
    except ProtocolError:
        pass


def test_feed_raw_returns_each_frame_whole_split_at_every_offset() -> None:
    # The guest's relay forwards frames it has not decoded: each must come out byte for byte,
    # length prefix included, in order, however the stream was cut.
    framed = [encode(frame) for frame in SAMPLES]
    stream = b"".join(framed)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = decoder.feed_raw(stream[:cut]) + decoder.feed_raw(stream[cut:])
        assert got == framed, cut
        assert decoder.buffered == 0
    assert [decode_body(raw[HEADER_BYTES:]) for raw in framed] == SAMPLES


def test_missing_counts_the_bytes_still_to_come() -> None:
    # The host's reader uses it to fetch the rest of a large frame in one loop.
    data = encode(SetVars(session="s", call=1, values={"prompt": "y" * 1000}))
    decoder = FrameDecoder()
    assert decoder.missing == 0
    decoder.feed(data[:2])
    assert decoder.missing == 0  # the length is not known yet
    decoder.feed(data[2:10])
    assert decoder.missing == len(data) - 10
    assert decoder.feed(data[10:]) != [] and decoder.missing == 0


def test_a_view_kept_by_the_caller_does_not_break_the_next_encode() -> None:
    encoder = FrameEncoder()
    kept = encoder.encode_view(OpenSession(session="s1", call=1))
    before = bytes(kept)
    # A longer frame must grow the buffer, which an exported view forbids (BufferError).
    encoder.encode_view(SetVars(session="s1", call=2, values={"prompt": "x" * 10_000}))
    assert bytes(kept) == before  # the kept view still shows its own frame


def test_detach_head_hands_over_the_start_and_the_whole_size() -> None:
    # The guest agent completes a large frame in a buffer it keeps: the decoder hands over only
    # what it received, however the first read was cut, and nothing is lost or doubled.
    data = encode(SetVars(session="s", call=1, values={"prompt": "y" * 5000}))
    for cut in range(HEADER_BYTES, len(data)):
        decoder = FrameDecoder()
        assert decoder.feed(data[:cut]) == []
        head, size = decoder.detach_head()
        assert (head, size) == (data[:cut], len(data)), cut
        assert decoder.buffered == 0 and decoder.missing == 0
        assert decode_body((head + data[cut:])[HEADER_BYTES:]) == decode_body(data[HEADER_BYTES:])
    with pytest.raises(LocalProtocolError):
        FrameDecoder().detach_head()
