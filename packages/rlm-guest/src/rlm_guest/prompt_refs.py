"""Texts a block hands to child RLMs, kept in memfds (PROTOCOL.md 4.2, ``prompt_ref``).

The text stays in the guest: the agent keeps the memfd under a ref, and the host sees only the
``PromptRef`` (size, lines, prefix, digest).
"""

from __future__ import annotations

import os
import threading

from rlm_protocol import PromptRef, prompt_ref

from .interrupt_slot import start_without_sigint
from .shared import write_kept

__all__ = ["keep_text", "keep_texts"]


def keep_text(text: str) -> tuple[int, PromptRef]:
    """A memfd holding ``text`` (UTF-8) and its ``PromptRef`` (``ref`` still to be set)."""
    data = text.encode("utf-8", "surrogatepass")
    fd = write_kept(data)
    try:
        return fd, prompt_ref("", text, data)
    except BaseException:
        os.close(fd)
        raise


def keep_texts(texts: list[str]) -> list[tuple[int, PromptRef]]:
    """``keep_text`` of each text, on two threads (a thread, not a pool: the agent imports this
    module before every fork, and ``concurrent.futures`` would add to its start)."""
    results: list[tuple[int, PromptRef] | BaseException | None] = [None] * len(texts)

    def work(indexes: range) -> None:
        for i in indexes:
            try:
                results[i] = keep_text(texts[i])
            except BaseException as error:  # re-raised below, on the calling thread
                results[i] = error

    helper = threading.Thread(target=work, args=(range(1, len(texts), 2),), daemon=True)
    start_without_sigint(helper)
    try:
        work(range(0, len(texts), 2))
    finally:
        helper.join()
    kept = [r for r in results if isinstance(r, tuple)]
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is not None:
        for fd, _ in kept:
            os.close(fd)
        raise failed
    return kept
