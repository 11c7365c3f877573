"""Turn a compressed ``bzImage`` into the uncompressed ELF ``vmlinux`` for PVH boot.

Why: under TCG, QEMU emulates the bzImage's own decompressor instruction by instruction,
which costs about 3.9 s before the kernel prints its first line (DESIGN.md, measured).
The ELF ``vmlinux`` inside the bzImage carries a PVH entry note (CONFIG_PVH), so QEMU's
``-kernel vmlinux`` jumps straight into it: first console line at 0.4-0.5 s.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from pathlib import Path

from .errors import ImageBuildError

__all__ = ["extract_vmlinux"]

_ELF_MAGIC = b"\x7fELF"
# Payload formats we can decompress with the standard library, by their magic bytes.
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"


def _decompress_xz_at(data: bytes, offset: int) -> bytes:
    # A decompressor object stops at the end of the xz stream and leaves whatever follows
    # (the bzImage's trailer) in ``unused_data`` instead of failing on it.
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[offset:])


def _decompress_gzip_at(data: bytes, offset: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return decompressor.decompress(data[offset:])


def extract_vmlinux(bzimage: Path, target: Path) -> Path:
    """Write the uncompressed ELF kernel found inside ``bzimage`` to ``target``.

    Tries every xz (then gzip) magic in the file, because the magic bytes can also occur
    by chance; the first candidate that decompresses to an ELF image wins.

    Raises:
        ImageBuildError: no decompressible ELF payload was found.
    """
    data = bzimage.read_bytes()
    if data.startswith(_ELF_MAGIC):
        target.write_bytes(data)
        return target
    for magic, decompress in ((_XZ_MAGIC, _decompress_xz_at), (_GZIP_MAGIC, _decompress_gzip_at)):
        offset = data.find(magic)
        while offset != -1:
            try:
                payload = decompress(data, offset)
            except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, EOFError):
                payload = b""
            if payload.startswith(_ELF_MAGIC):
                tmp = target.with_suffix(".part")
                tmp.write_bytes(payload)
                tmp.replace(target)
                return target
            offset = data.find(magic, offset + 1)
    raise ImageBuildError(
        f"{bzimage}: no xz or gzip compressed ELF kernel inside; "
        "this kernel cannot be booted through PVH (use a Debian linux-image-*-amd64 kernel)"
    )
