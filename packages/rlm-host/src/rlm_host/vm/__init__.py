"""The QEMU VM that runs model code: image recipes and cache, agent provisioning, launcher.

Entry points: :func:`open_vm` (boot one VM, yield it with its agent stream),
:func:`prepare_vm_config` (image + wheelhouse + agent disk -> :class:`VMConfig`),
:func:`open_vm_guest` (all of it, yielding a handshaken ``GuestConnection``),
:func:`build_image` / :func:`find_image`, :func:`probe_accel`.

Modules: ``qemu`` (a running VM's life: start, restore, watch, end), ``command`` (its config
and QEMU command line, pure), ``qmp`` (the one QMP client), ``console`` and ``timings`` (what the
serial console says: kernel reports, boot phases), ``lockup`` (a lockup report against QEMU's
CPU waits, pure), ``run_dir``, ``snapshot``, ``provision`` (the agent disk), ``connect``; the
image: ``image``, ``debian``/``alpine`` recipes over ``build_steps``, ``kernel``,
``initramfs``, ``guest_scripts``, ``wheelhouse``, ``cache``, ``accel``.
"""

from __future__ import annotations

from .accel import AccelChoice, find_qemu, probe_accel
from .errors import BootTimeoutError, ImageBuildError, ImageNotFoundError, VMDiedError, VMError, VMLockupError
from .image import BuildReporter, GuestImage, ImageManifest, build_image, find_image, list_images
from .qemu import VM, BootTimings, VMConfig, open_vm
from .wheelhouse import Wheelhouse, ensure_wheelhouse

__all__ = [
    "VM",
    "AccelChoice",
    "BootTimeoutError",
    "BootTimings",
    "BuildReporter",
    "GuestImage",
    "ImageBuildError",
    "ImageManifest",
    "ImageNotFoundError",
    "VMConfig",
    "VMDiedError",
    "VMError",
    "VMLockupError",
    "Wheelhouse",
    "build_image",
    "ensure_wheelhouse",
    "find_image",
    "find_qemu",
    "list_images",
    "open_vm",
    "probe_accel",
]
