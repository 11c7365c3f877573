from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rlm_protocol import OutputCapture, captured_metadata, text_metadata


@given(st.lists(st.text(max_size=50), max_size=20), st.integers(min_value=0, max_value=100))
def test_capture_reports_the_true_size_of_what_was_written(parts: list[str], limit: int) -> None:
    sink = OutputCapture(limit)
    for part in parts:
        sink.write(part)
    whole = "".join(parts)
    captured = sink.captured()
    assert captured.text == whole[:limit]
    # Host and guest agree: metadata of the capture equals metadata of the whole text.
    assert captured_metadata(captured, 10).chars == text_metadata(whole, 10).chars
    assert captured_metadata(captured, 10).lines == text_metadata(whole, 10).lines
    assert captured.cut == (len(whole) > limit)
