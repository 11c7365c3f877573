"""What an image recipe is: the files it writes, what it reports, and how it is called.

Kept apart from :mod:`.image` (the cache that runs recipes) so that a recipe module depends on
this contract only, and the cache can import every recipe without an import circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["INITRAMFS_NAME", "KERNEL_NAME", "ROOTFS_NAME", "BuildReporter", "Recipe", "RecipeOutput"]

ROOTFS_NAME = "rootfs.ext4"
KERNEL_NAME = "vmlinux"
INITRAMFS_NAME = "initramfs.cpio"


class BuildReporter(Protocol):
    """Receives progress while an image builds (the CLI renders it with rich)."""

    def step(self, message: str) -> None:
        """A new build step started."""

    def detail(self, message: str) -> None:
        """A line of output from the current step (e.g. mmdebstrap's log)."""


@dataclass
class RecipeOutput:
    """What :meth:`Recipe.build` reports back besides the files it wrote."""

    distribution: str
    kernel_release: str
    python_version: str
    tools: list[str]
    packages: dict[str, str]
    modules: list[str]


class Recipe(Protocol):
    """A way to build a guest image."""

    name: str

    def inputs(self) -> Mapping[str, object]:
        """Everything that determines the image's content (hashed into its cache key)."""

    def build(self, work: Path, reporter: BuildReporter) -> RecipeOutput:
        """Write ``rootfs.ext4``, ``vmlinux`` and ``initramfs.cpio`` into ``work``.

        Raises:
            ImageBuildError: a step failed; the message says how to fix it.
        """
