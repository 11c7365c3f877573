"""Prompts the agent keeps by reference for ``bind_refs`` (PROTOCOL.md 1.1, ``prompt_ref``).

A session's ``rlm_query`` hands the agent a memfd holding the child's prompt (``keep_ref``); the
host learns only its ref and what the child's model is shown, and binds the prompt into the
child's session by ref. The memfd lives as long as the session that made it, or, once bound, the
session that bound it (so that a reset of that session can bind it again).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rlm_protocol import RemoteProtocolError

__all__ = ["KeptPrompts"]


@dataclass(eq=False)
class _Kept:
    fd: int
    owner: str


class KeptPrompts:
    """Kept prompts by ref; every descriptor here is the agent's to close."""

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}

    def keep(self, ref: str, fd: int, owner: str) -> None:
        """Keep ``fd`` under ``ref`` for session ``owner``.

        Raises:
            RemoteProtocolError: ``ref`` is kept already (``fd`` is closed).
        """
        if ref in self._kept:
            # Refs are call ids, unique on the connection: a second one is forged, and must not
            # replace a prompt another session's child is about to bind.
            os.close(fd)
            raise RemoteProtocolError(f"ref {ref!r} is already kept")
        self._kept[ref] = _Kept(fd=fd, owner=owner)

    def missing(self, refs: list[str]) -> list[str]:
        return [ref for ref in refs if ref not in self._kept]

    def open_for(self, session: str, refs: list[str]) -> tuple[int, ...]:
        """New read-only descriptors of ``refs`` (all kept) for ``session``, which keeps them
        alive from now on."""
        fds = []
        for ref in refs:
            kept = self._kept[ref]
            kept.owner = session
            # Read-only, so that the session cannot change what a reset binds again.
            fds.append(os.open(f"/proc/self/fd/{kept.fd}", os.O_RDONLY | os.O_CLOEXEC))
        return tuple(fds)

    def drop(self, session: str | None = None) -> None:
        """Forget the prompts kept for ``session`` (every prompt when None)."""
        for ref, kept in list(self._kept.items()):
            if session is None or kept.owner == session:
                del self._kept[ref]
                os.close(kept.fd)
