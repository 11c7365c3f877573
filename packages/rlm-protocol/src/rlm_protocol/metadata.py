"""The metadata of text that a model sees instead of the text itself.

Host and guest both use these functions, so "chars", "lines", "prefix" and "truncated" mean the
same thing on both sides of the wire. Semantics follow the seed (``nano_rlm``): ``lines`` is the
number of newlines plus one for non-empty text, and ``truncated`` says the prefix is not the
whole text.
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from .frames import Captured, PromptRef

__all__ = [
    "OBSERVATION_PREFIX_CHARS",
    "OutputCapture",
    "PROMPT_PREFIX_CHARS",
    "TextMeta",
    "captured_metadata",
    "count_lines",
    "prompt_ref",
    "ref_metadata",
    "text_blake2b",
    "text_metadata",
]

#: Prefix of the prompt shown to the root model (seed: ``PROMPT_PREFIX_CHARS``).
PROMPT_PREFIX_CHARS: Final = 1600
#: Prefix of stdout/stderr shown to the model after each block (seed: ``OBS_PREFIX_CHARS``).
OBSERVATION_PREFIX_CHARS: Final = 800


class TextMeta(msgspec.Struct, frozen=True):
    """What the model is told about a text: its size and its first characters."""

    chars: int
    lines: int
    prefix: str
    truncated: bool


def count_lines(text: str) -> int:
    """Lines as the seed counts them.

    >>> count_lines(""), count_lines("a"), count_lines("a\\n"), count_lines("a\\nb")
    (0, 1, 2, 2)
    """
    return text.count("\n") + 1 if text else 0


def text_metadata(text: str, prefix_chars: int = OBSERVATION_PREFIX_CHARS) -> TextMeta:
    """Metadata of a whole text.

    >>> text_metadata("hello\\nworld", prefix_chars=3)
    TextMeta(chars=11, lines=2, prefix='hel', truncated=True)
    """
    return TextMeta(
        chars=len(text),
        lines=count_lines(text),
        prefix=text[:prefix_chars],
        truncated=len(text) > prefix_chars,
    )


def captured_metadata(captured: Captured, prefix_chars: int = OBSERVATION_PREFIX_CHARS) -> TextMeta:
    """Metadata of a captured stream, using its true size even when the guest cut it.

    >>> captured_metadata(Captured(text="abc", chars=10_000, lines=3), prefix_chars=2)
    TextMeta(chars=10000, lines=3, prefix='ab', truncated=True)
    """
    return TextMeta(
        chars=captured.chars,
        lines=captured.lines,
        prefix=captured.text[:prefix_chars],
        truncated=captured.chars > prefix_chars,
    )


def text_blake2b(data: str | bytes) -> str:
    """The digest a ``PromptRef`` carries: BLAKE2b-256 of the UTF-8 bytes, in hex.

    BLAKE2b rather than SHA-256 because the guest computes it: under TCG (no SHA extensions, the
    vector code emulated) SHA-256 of a 2 MiB piece took 150-360 ms in the guest, BLAKE2b 20-110 ms.

    >>> text_blake2b("abc")[:16]
    'bddd813c63423972'
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    return hashlib.blake2b(raw, digest_size=32).hexdigest()


def prompt_ref(ref: str, text: str, data: bytes) -> PromptRef:
    """The ``PromptRef`` of ``text`` (whose UTF-8 bytes are ``data``), kept under ``ref``.

    >>> r = prompt_ref("7", "hello\\nworld", b"hello\\nworld")
    >>> (r.chars, r.lines, r.prefix)
    (11, 2, 'hello\\nworld')
    """
    return PromptRef(
        ref=ref, chars=len(text), lines=count_lines(text), prefix=text[:PROMPT_PREFIX_CHARS],
        blake2b=text_blake2b(data),
    )


def ref_metadata(ref: PromptRef, prefix_chars: int = PROMPT_PREFIX_CHARS) -> TextMeta:
    """What ``text_metadata`` says of the text behind ``ref`` (its prefix is at most 1,600
    characters: the model sees no more of a prompt).

    >>> ref_metadata(PromptRef(ref="1", chars=5000, lines=9, prefix="x" * 1600, blake2b=""), 4)
    TextMeta(chars=5000, lines=9, prefix='xxxx', truncated=True)
    """
    return TextMeta(
        chars=ref.chars, lines=ref.lines, prefix=ref.prefix[:prefix_chars], truncated=ref.chars > prefix_chars
    )


class OutputCapture:
    """A text sink that keeps at most ``limit`` characters and counts everything written.

    It has the parts of the ``TextIO`` interface that ``print`` and ``sys.stdout.write`` use, so
    a guest can install it as a stream. Memory stays bounded however much a block prints.

    >>> sink = OutputCapture(limit=4)
    >>> sink.write("abc\\n"); sink.write("def\\n")
    4
    4
    >>> sink.captured()
    Captured(text='abc\\n', chars=8, lines=3)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._kept = 0
        self._chars = 0
        self._newlines = 0

    def write(self, text: str) -> int:
        """Record ``text``; return its length like ``TextIO.write``."""
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        size = len(text)
        self._chars += size
        self._newlines += text.count("\n")
        room = self.limit - self._kept
        if room > 0:
            part = text if size <= room else text[:room]
            self._parts.append(part)
            self._kept += len(part)
        return size

    def flush(self) -> None:
        """Nothing to flush: the capture is in memory."""

    @property
    def chars(self) -> int:
        """Characters written so far, including the ones not kept."""
        return self._chars

    def captured(self) -> Captured:
        """The kept text and the true counts, as sent in ``ExecResult``."""
        text = "".join(self._parts)
        lines = self._newlines + 1 if self._chars else 0
        return Captured(text=text, chars=self._chars, lines=lines)
