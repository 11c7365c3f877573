"""Command line of the guest agent."""

from __future__ import annotations

import argparse
import sys

from rlm_protocol import DEFAULT_MAX_FRAME_BYTES, Limits

from .agent import DEFAULT_LIMITS, Agent
from .cgroups import prepare_cgroups
from .channel import Channel, DeviceChannel, StdioChannel
from .shared import SharedBuffer

#: The shared buffer for large frames of the agent in a VM: a 16 MiB prompt (the largest frame
#: in practice) with its envelope, rounded up.
SHARED_BYTES_IN_A_VM = 17 << 20

#: What ``prepare_vm`` made ahead of the host, for ``main``.
_prepared_pool: SharedBuffer | None = None


def prepare_vm() -> None:
    """Do ahead what the VM agent can do before a host connects.

    ``rlm-agent-start`` (the image's start script) calls it before it waits for the host, which
    is where the VM snapshot is taken: every VM restored from the snapshot starts with the
    shared buffer's 17 MiB already paged in (~0.3 s of page faults under TCG, which the first
    16 MiB prompt would pay otherwise). Its pages are zeros: the snapshot does not grow. The
    cgroup tree is set up here too: its first memory cgroup makes the kernel rewrite its own
    code, which must not happen in a restored VM (:func:`.cgroups.prepare_cgroups`).
    """
    global _prepared_pool
    if _prepared_pool is None:
        _prepared_pool = SharedBuffer(SHARED_BYTES_IN_A_VM, populate=True)
    prepare_cgroups()
    _full_lockup_reports()


def _full_lockup_reports() -> None:
    # A soft-lockup report names the stuck task; with ``quiet`` (console level 4) its registers
    # and call trace are printed below the console's level. Level 5 prints them (warnings too,
    # which a healthy VM does not print after its boot), and every CPU's backtrace is taken, so
    # that one report says where each vCPU is stuck. In the snapshot: no cost to a restore.
    for knob, value in (("kernel/printk", "5"), ("kernel/softlockup_all_cpu_backtrace", "1")):
        try:
            with open("/proc/sys/" + knob, "w") as f:
                f.write(value)
        except OSError:
            pass


def _protect_from_oom() -> None:
    # In a VM the agent is the guest: if the OOM killer took it, the VM would power off. A
    # block that eats the memory is killed instead (its session process resets the session).
    try:
        with open("/proc/self/oom_score_adj", "w") as adj:
            adj.write("-1000")
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlm-guest", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--stdio", action="store_true", help="speak the protocol on stdin/stdout")
    where.add_argument("--device", metavar="PATH", help="speak the protocol on a character device")
    parser.add_argument(
        "--max-output-chars",
        type=int,
        default=DEFAULT_LIMITS.max_output_chars,
        help="characters kept per stream and block (the true size is still reported)",
    )
    parser.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_LIMITS.max_sessions,
        help="sessions open at once (more are refused with too_large)",
    )
    options = parser.parse_args(argv)
    diagnostic = StdioChannel.diagnostic_stream()
    if options.device:
        _protect_from_oom()
    channel: Channel = DeviceChannel(options.device) if options.device else StdioChannel()
    limits = Limits(
        max_frame_bytes=options.max_frame_bytes,
        max_output_chars=options.max_output_chars,
        max_sessions=options.max_sessions,
    )
    # In a VM the agent is root and alone: a cgroup per session (caps, atomic kill).
    return Agent(
        channel,
        diagnostic,
        limits,
        cgroups=bool(options.device),
        shared_bytes=SHARED_BYTES_IN_A_VM if options.device else 0,
        pool=_prepared_pool if options.device else None,
    ).serve()


if __name__ == "__main__":
    sys.exit(main())
