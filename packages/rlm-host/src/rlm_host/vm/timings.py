"""Boot timings: where a VM's start went, from host clocks and the guest's ``rlm-init`` lines.

    >>> lines = [(2.0, "modules", 1.5), (2.5, "modules loaded", 2.0), (2.6, "stage2", 2.1),
    ...          (2.7, "agent", 2.2), (4.9, "agent waiting", 4.4)]
    >>> t = boot_timings(lines, total=5.0, socket_at=0.1, restored=False, resumed_after=None)
    >>> (t.firmware, t.kernel, t.modules, t.agent_import)
    (0.5, 1.5, 0.5, 2.2)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["BootTimings", "InitLine", "boot_timings"]

#: One ``rlm-init:`` console line: (host seconds since QEMU was spawned, label, guest uptime).
InitLine = tuple[float, str, float]


@dataclass
class BootTimings:
    """Boot-to-ready breakdown in seconds.

    Host-measured: ``total`` (QEMU spawn to the agent's first bytes) and ``qemu_socket``
    (spawn until the agent socket accepted us). Guest-measured from console lines, mapped to
    host time via the moment the first ``rlm-init`` line appeared: ``firmware`` (QEMU start to
    kernel entry, estimated), ``kernel`` (kernel entry to /init), ``modules`` (initramfs module
    loading), ``switch_root`` (mounts and switch_root), ``userspace`` (stage-2 init up to the
    agent exec), ``agent_import`` (python start and the agent's imports), ``agent`` (from
    then to its first bytes: host-connect check, 9p mount, Hello). A restored VM
    (``restored``) has host-measured figures instead: ``restore_load`` (spawn until the
    state is loaded and the VM continues), ``restore_resume`` (until the guest noticed the
    host and printed ``agent start``, after mounting the share) and ``agent`` (from then to
    the Hello).
    """

    total: float = 0.0
    qemu_socket: float = 0.0
    restored: bool = False
    firmware: float | None = None
    kernel: float | None = None
    modules: float | None = None
    switch_root: float | None = None
    userspace: float | None = None
    agent_import: float | None = None
    agent: float | None = None
    restore_load: float | None = None
    restore_resume: float | None = None

    def as_dict(self) -> dict[str, float | bool | None]:
        """Rounded values for JSON output."""
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def boot_timings(
    init_lines: Sequence[InitLine], *, total: float, socket_at: float, restored: bool, resumed_after: float | None
) -> BootTimings:
    """The breakdown of one start: ``total`` and ``socket_at`` as :class:`BootTimings` says,
    ``resumed_after`` the seconds from spawn until a restored VM was continued (None if not)."""
    t = BootTimings(total=total, qemu_socket=socket_at, restored=restored)
    uptime = {label: up for _host, label, up in init_lines}
    if restored:
        # A restored guest's uptime continues from the snapshot: host times only.
        if resumed_after is not None:
            t.restore_load = resumed_after
            started = next((host for host, label, _up in init_lines if label == "agent start"), None)
            if started is not None:
                t.restore_resume = started - resumed_after
                t.agent = total - started
        return t
    first = next(((host, up) for host, label, up in init_lines if label == "modules"), None)
    if first is None:
        return t
    # The first line appeared (host time) at most ~10 ms after the guest printed it.
    kernel_entry = first[0] - first[1]
    t.firmware = max(0.0, kernel_entry)
    t.kernel = first[1]

    def span(start: str, end: str) -> float | None:
        return round(uptime[end] - uptime[start], 6) if start in uptime and end in uptime else None

    t.modules = span("modules", "modules loaded")
    t.switch_root = span("modules loaded", "stage2")
    t.userspace = span("stage2", "agent")
    t.agent_import = span("agent", "agent waiting")
    if "agent waiting" in uptime:
        t.agent = total - (kernel_entry + uptime["agent waiting"])
    return t
