"""``BatchOptions``: how a batch runs (pool size, sessions per guest, the shared model bound)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..isolation import GuestOptions
from ..options import RunOptions

__all__ = ["BatchOptions"]


@dataclass(frozen=True)
class BatchOptions:
    """Everything that shapes a batch; ``run`` shapes each task's run (tasks may override parts).

    With the ``local`` engine the pool is ``workers`` guests on this machine; with ``ray`` it is
    ``workers`` Ray actors, each owning one guest, wherever the cluster places them.
    """

    run: RunOptions = field(default_factory=RunOptions)
    #: Guests (VMs) in the pool; each is one worker.
    workers: int = 2
    #: Tasks one guest serves at once, each in its own sessions.
    sessions_per_worker: int = 4
    #: Model requests in flight at once across the whole pool (local engine), or across each
    #: Ray actor's share of it (ray: this divided among the actors, at least 1 each).
    model_requests: int = 8
    #: Retries of a task whose guest died under it (each alone, on a fresh guest of its own).
    retries: int = 1
    engine: Literal["local", "ray"] = "local"
    #: ``None``: start a local Ray instance (``ray.init()``); else the cluster's address.
    ray_address: str | None = None
    #: CPUs a Ray actor asks for (what the scheduler counts when placing it).
    ray_actor_cpus: float = 1.0
    #: New actors started in place of ones that died, in the whole batch (``None``: as many as
    #: ``workers``); once spent, a dead actor is not replaced, and when none is left alive the
    #: tasks not yet run are reported as errors.
    ray_actor_replacements: int | None = None
    #: Where each task's trajectory goes (``<dir>/<id>.jsonl``); ``None``: the default place.
    trajectory_dir: Path | None = None
    #: Where relative ``file`` paths of tasks are found (the tasks file's folder).
    base_dir: Path = Path(".")
    #: The scorer of tasks with ``expected``: ``exact``, ``normalised`` or ``module:function``.
    scorer: str = "normalised"

    def __post_init__(self) -> None:
        if self.workers < 1 or self.sessions_per_worker < 1 or self.model_requests < 1:
            raise ValueError("workers, sessions_per_worker and model_requests must be at least 1")
        if self.retries < 0:
            raise ValueError("retries cannot be negative")
        if self.ray_actor_replacements is not None and self.ray_actor_replacements < 0:
            raise ValueError("ray_actor_replacements cannot be negative")

    def actor_replacements(self) -> int:
        """How many dead Ray actors may be replaced in this batch."""
        return self.workers if self.ray_actor_replacements is None else self.ray_actor_replacements

    def guest_options(self) -> GuestOptions:
        """How each worker starts its guest."""
        return self.run.guest
