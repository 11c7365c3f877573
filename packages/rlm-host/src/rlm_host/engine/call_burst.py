"""A parent's burst of host calls: its children's sessions open once it has gone quiet.

``rlm_query_batched`` sends its calls one after another from the parent's session, through the
guest's agent. A child's session used to open the moment its call arrived; opening is guest
work (the agent hands over a spare process and makes the next, the prompt is bound), and eight
of them under TCG held up the parent's remaining calls: the eighth child's model request went
out 0.25-0.45 s after the first. A child's first model request needs no session (the model sees
metadata only, ``engine.start``), so its session opens when the parent has sent no call for
``QUIET_SECONDS``, or at once when the child's first block arrives before that (its model was
faster).
"""

from __future__ import annotations

import math
from typing import Final

import trio

__all__ = ["QUIET_SECONDS", "CallBurst"]

#: Seconds without a host call from the parent after which its burst is over. The calls of a
#: batch of 8 came 2-6 ms apart under TCG when nothing else ran in the guest.
QUIET_SECONDS: Final = 0.025


class CallBurst:
    """When one RLM's session last made a host call (trio's clock).

    >>> CallBurst().last
    -inf
    """

    def __init__(self) -> None:
        self.last = -math.inf

    def touch(self) -> None:
        self.last = trio.current_time()

    async def quiet(self, seconds: float | None = None) -> None:
        """Return once no call came for ``seconds`` (``QUIET_SECONDS``)."""
        seconds = QUIET_SECONDS if seconds is None else seconds
        while (wait := self.last + seconds - trio.current_time()) > 0:
            await trio.sleep(wait)
