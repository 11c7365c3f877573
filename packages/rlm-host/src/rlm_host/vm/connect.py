"""From options to a handshaken :class:`~rlm_host.connection.GuestConnection` in a VM."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from ..connection import GuestConnection
from .cache import share_dir
from .errors import VMError
from .image import GuestImage, find_image
from .provision import ensure_agent_disk
from .qemu import VMConfig, default_cpus, open_vm
from .snapshot import ensure_snapshot
from .wheelhouse import ensure_wheelhouse

__all__ = ["open_vm_guest", "prepare_vm_config"]

logger = logging.getLogger(__name__)


def prepare_vm_config(
    *,
    memory_mb: int = 1536,
    cpus: int | None = None,
    network: bool = False,
    image: GuestImage | None = None,
    snapshot: bool | None = None,
) -> VMConfig:
    """Find the image, build the wheelhouse, agent disk and snapshot if needed; return a config.

    Blocking: the first call after a guest-code change provisions the agent (~30 s under
    TCG) and boots once more to save a snapshot (~10 s); later calls are cache hits.
    ``snapshot`` (default: on unless ``RLM_VM_SNAPSHOT=0``) makes VMs resume from the saved
    state instead of booting; if the snapshot cannot be made, VMs cold-boot (logged).

    Raises:
        ImageNotFoundError: no image is built (``rlm image build``).
        ImageBuildError: the wheelhouse or the agent disk could not be made.
    """
    image = image or find_image()
    wheelhouse = ensure_wheelhouse()
    disk = ensure_agent_disk(image, wheelhouse)
    config = VMConfig(
        kernel=image.kernel, initramfs=image.initramfs, disk=disk, memory_mb=memory_mb,
        cpus=cpus or default_cpus(), network=network, share=share_dir(),
    )
    if snapshot is None:
        snapshot = os.environ.get("RLM_VM_SNAPSHOT", "1") != "0"
    if not snapshot:
        return config
    try:
        state = ensure_snapshot(config)
    except VMError as exc:
        logger.warning("cannot snapshot the VM, it will cold-boot: %s", exc)
        return config
    return replace(config, snapshot_compatible=True, restore_from=state)


@asynccontextmanager
async def open_vm_guest(*, memory_mb: int = 1536, cpus: int | None = None, network: bool = False) -> AsyncIterator[GuestConnection]:
    """Boot a VM with these resources and yield the handshaken connection to its agent.

    (``rlm_host.isolation.open_guest`` calls this for ``Isolation.vm``; the VM layer does not
    import the isolation options, so that the two modules do not import each other.)

    Raises:
        VMError: (and subclasses) the VM could not be built, booted, or died.
    """
    config = await trio.to_thread.run_sync(
        lambda: prepare_vm_config(memory_mb=memory_mb, cpus=cpus, network=network)
    )
    async with open_vm(config) as vm, GuestConnection.open(vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits) as connection:
        yield connection
