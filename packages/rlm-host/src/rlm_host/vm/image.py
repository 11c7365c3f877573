"""Guest images: recipes, the content-addressed cache and the manifest.

An image is a directory ``images/<hash>/`` holding

- ``rootfs.ext4``   the root filesystem (mounted read-only, with a tmpfs overlay on top),
- ``vmlinux``       the uncompressed kernel (PVH boot, see :mod:`.kernel`),
- ``initramfs.cpio`` the tiny initramfs (see :mod:`.initramfs`),
- ``manifest.json`` what is in it (:class:`ImageManifest`).

``<hash>`` is a digest of the recipe's inputs (:meth:`Recipe.inputs`), so building the
same recipe again is a cache hit, and changing a package list or the init scripts makes
a new image. A build happens in ``images/<hash>.build-<pid>`` and is renamed into place
only when complete, so a crash never leaves a half image that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .cache import images_dir
from .errors import ImageBuildError, ImageNotFoundError
from .recipe import INITRAMFS_NAME, KERNEL_NAME, ROOTFS_NAME, BuildReporter, Recipe

__all__ = [
    "BuildReporter",
    "GuestImage",
    "ImageManifest",
    "Recipe",
    "build_image",
    "find_image",
    "get_recipe",
    "list_images",
    "recipe_hash",
]

MANIFEST_NAME = "manifest.json"


@dataclass
class ImageManifest:
    """What an image holds; stored as ``manifest.json`` next to the image files.

    ``tools`` lists only the commands actually found in the built root filesystem: the
    engine's system prompt is generated from it, so it never promises a missing tool.
    """

    hash: str
    recipe: str
    distribution: str
    kernel_release: str
    python_version: str
    tools: list[str]
    packages: dict[str, str]
    modules: list[str]
    sizes: dict[str, int]
    build_seconds: float
    built_at: str
    inputs: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize as pretty JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ImageManifest:
        """Parse the JSON written by :meth:`to_json`."""
        data = json.loads(text)
        return cls(**data)


@dataclass(frozen=True)
class GuestImage:
    """A built image in the cache."""

    path: Path
    manifest: ImageManifest

    @property
    def rootfs(self) -> Path:
        """The ext4 root filesystem image."""
        return self.path / ROOTFS_NAME

    @property
    def kernel(self) -> Path:
        """The uncompressed ``vmlinux`` for PVH boot."""
        return self.path / KERNEL_NAME

    @property
    def initramfs(self) -> Path:
        """The tiny uncompressed initramfs."""
        return self.path / INITRAMFS_NAME


def _summarize(inputs: Mapping[str, object]) -> dict[str, object]:
    # Scripts are recorded by digest: the manifest stays readable and still identifies them.
    return {
        key: ("sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]) if isinstance(value, str) and len(value) > 200 else value
        for key, value in inputs.items()
    }


def get_recipe(name: str) -> Recipe:
    """Return the recipe called ``name`` (``debian`` or ``alpine``).

    Raises:
        ImageBuildError: unknown recipe name.
    """
    # Imported here because each recipe module pulls in its own helpers.
    if name == "debian":
        from .debian import DebianRecipe

        return DebianRecipe()
    if name == "alpine":
        from .alpine import AlpineRecipe

        return AlpineRecipe()
    raise ImageBuildError(f"unknown image recipe {name!r}; choose 'debian' or 'alpine'")


def recipe_hash(recipe: Recipe) -> str:
    """The cache key of ``recipe``: a short sha256 of its canonical JSON inputs."""
    canonical = json.dumps({"recipe": recipe.name, **recipe.inputs()}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _load(path: Path) -> GuestImage | None:
    manifest_path = path / MANIFEST_NAME
    try:
        manifest = ImageManifest.from_json(manifest_path.read_text())
    except (OSError, ValueError, TypeError):
        return None
    return GuestImage(path=path, manifest=manifest)


def list_images() -> list[GuestImage]:
    """Every complete image in the cache, newest first."""
    root = images_dir()
    if not root.is_dir():
        return []
    found = [img for p in root.iterdir() if p.is_dir() and (img := _load(p)) is not None]
    return sorted(found, key=lambda img: img.manifest.built_at, reverse=True)


def find_image(recipe: str | None = "debian") -> GuestImage:
    """Return the cached image of the *current* ``recipe`` (any recipe when ``None``).

    "Current" means built from today's recipe inputs: an image from an older recipe
    version is not used silently, because its init scripts may not match this host code.

    Raises:
        ImageNotFoundError: nothing suitable is built; the message gives the command.
    """
    if recipe is None:
        images = list_images()
        if images:
            return images[0]
        raise ImageNotFoundError("no guest image is built; run: rlm image build")
    image = _load(images_dir() / recipe_hash(get_recipe(recipe)))
    if image is None:
        raise ImageNotFoundError(f"the {recipe} guest image is not built; run: rlm image build --recipe {recipe}")
    return image


def _remove_abandoned_builds() -> None:
    # A build killed half-way leaves images/<hash>.build-<pid>; remove those whose process
    # is gone (never another live build's directory).
    root = images_dir()
    if not root.is_dir():
        return
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        return
    for path in root.glob("*.build-*"):
        pid = path.name.rsplit("-", 1)[-1]
        # Never delete through a mount that an interrupted mmdebstrap left behind.
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and f" {path}/" not in mounts:
            shutil.rmtree(path, ignore_errors=True)


def build_image(recipe_name: str = "debian", *, reporter: BuildReporter, force: bool = False) -> GuestImage:
    """Build (or find in the cache) the image of ``recipe_name``.

    Raises:
        ImageBuildError: the build failed; nothing is left in the cache.
    """
    recipe = get_recipe(recipe_name)
    key = recipe_hash(recipe)
    final = images_dir() / key
    if not force and (cached := _load(final)) is not None:
        reporter.step(f"cache hit: {final}")
        return cached
    _remove_abandoned_builds()
    work = images_dir() / f"{key}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.monotonic()
    try:
        out = recipe.build(work, reporter)
        sizes = {name: (work / name).stat().st_size for name in (ROOTFS_NAME, KERNEL_NAME, INITRAMFS_NAME)}
        # The ext4 file is sparse: record the blocks really used too.
        sizes["rootfs.ext4.allocated"] = (work / ROOTFS_NAME).stat().st_blocks * 512
        manifest = ImageManifest(
            hash=key,
            recipe=recipe.name,
            distribution=out.distribution,
            kernel_release=out.kernel_release,
            python_version=out.python_version,
            tools=out.tools,
            packages=out.packages,
            modules=out.modules,
            sizes=sizes,
            build_seconds=round(time.monotonic() - started, 1),
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            inputs=_summarize(recipe.inputs()),
        )
        (work / MANIFEST_NAME).write_text(manifest.to_json())
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    reporter.step(f"image ready: {final} ({manifest.build_seconds} s)")
    return GuestImage(path=final, manifest=manifest)
