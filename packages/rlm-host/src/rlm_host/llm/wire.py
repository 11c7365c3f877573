"""What a wire format gives back for one reply, whatever the API."""

from __future__ import annotations

from typing import NamedTuple

from .messages import Usage

__all__ = ["Parsed"]


class Parsed(NamedTuple):
    """One reply as read from the wire: its text, its reasoning field (``""`` if none), usage."""

    content: str
    reasoning: str
    usage: Usage
