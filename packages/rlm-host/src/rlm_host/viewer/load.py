"""Reading a trajectory that may be incomplete: a run that crashed, or one still being written.

``rlm_host.trajectory.read_trajectory`` is strict (a bad line raises), which is right for tests of
the engine. The viewer must show whatever a run left behind instead: the last line of a crashed
run may be cut in the middle, ``run_end`` may be missing, and a trajectory written by a newer rlm
may hold event types this one does not know. Each such line is skipped and reported as a
*problem*, which the page shows in a banner, so nothing is hidden silently.

>>> events, problems = decode_lines([b'{"event":"final","step":1,"answer":"42","ts":0,"rlm":"0","depth":0}', b'{"event":"fin'])
>>> [type(event).__name__ for event in events], problems
(['FinalSet'], ['line 2: cut short (the run stopped while writing it)'])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from ..trajectory import Event

__all__ = ["decode_lines", "load_trajectory"]

_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)

#: A problem's text quotes at most this much of the bad line: enough to recognise it, and a
#: corrupt multi-megabyte line must not end up in the page twice.
_QUOTE_CHARS = 120


def decode_lines(lines: Iterable[bytes]) -> tuple[list[Event], list[str]]:
    """Decode trajectory lines, skipping the ones that are not events; see the module docstring.

    Returns the events in file order and one human-readable problem per skipped line.
    """
    events: list[Event] = []
    problems: list[str] = []
    numbered = [(number, line.strip()) for number, line in enumerate(lines, start=1)]
    numbered = [(number, line) for number, line in numbered if line]
    last = numbered[-1][0] if numbered else 0
    for number, line in numbered:
        try:
            events.append(_decoder.decode(line))
        except msgspec.DecodeError as error:
            if number == last and not _is_json(line):
                # The usual crash: the process died between two writes of the same line.
                problems.append(f"line {number}: cut short (the run stopped while writing it)")
            else:
                quoted = line[:_QUOTE_CHARS].decode("utf-8", errors="replace")
                problems.append(f"line {number}: skipped ({error}): {quoted}")
    return events, problems


def _is_json(line: bytes) -> bool:
    try:
        msgspec.json.decode(line)
    except msgspec.DecodeError:
        return False
    return True


def load_trajectory(path: Path) -> tuple[list[Event], list[str]]:
    """``decode_lines`` over the lines of the file at ``path``.

    Raises ``OSError`` when the file cannot be read.
    """
    with open(path, "rb") as file:
        return decode_lines(file)
