"""The protocol version: defined here once, negotiated by ``Hello``/``Welcome``.

Rules (PROTOCOL.md, "Versioning"): peers with the same major are compatible. A new minor may add
optional fields (with defaults) to existing frames, new frame kinds and new capabilities, and a
peer uses a new frame kind only after the other side advertised the capability that names it.
A different major is refused by both sides.
"""

from __future__ import annotations

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 1
PROTOCOL_VERSION: tuple[int, int] = (PROTOCOL_MAJOR, PROTOCOL_MINOR)


def is_compatible(theirs: tuple[int, int]) -> bool:
    """Whether a peer speaking ``theirs`` can talk to us (same major).

    >>> is_compatible((1, 7))
    True
    >>> is_compatible((2, 0))
    False
    """
    return theirs[0] == PROTOCOL_MAJOR
