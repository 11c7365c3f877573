"""Text of a PDF, with pypdfium2 (PDFium, Chrome's PDF engine), its pages read by several processes.

Chosen by measurement (DESIGN.md): on a 1221-page paper pypdfium2 took 2.6 s, poppler's
``pdftotext`` 10.9 s and pypdf 53 s, for the same text. It needs no binary on the host.

The text of a long PDF is on the path of ``rlm run`` to its first model request, so its pages
are shared among forked processes, one per CPU (README, Performance): PDFium is not thread-safe,
and a page's text is CPU work that holds the GIL. The result, and the error of a page that cannot
be read, are those of reading the pages in order in one process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from .errors import RlmError

__all__ = ["PdfError", "is_pdf", "pdf_text"]

#: Every PDF starts with this (within its first 1024 bytes, per the spec; in practice at 0).
PDF_MAGIC = b"%PDF-"

#: Pages below which one more process does not pay for its fork and its own opening of the file
#: (a fork of the CLI and PDFium's open take ~10-20 ms together; a page takes ~1.5 ms).
PAGES_PER_PROCESS = 48

#: The processes a PDF's pages are shared among, at most: beyond this the pages' hand-over and
#: the CPU's own limits, not the processes, bound the time.
MAX_PROCESSES = 8


class PdfError(RlmError):
    """The file is not a PDF that can be read (corrupt, encrypted, not a PDF at all)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read PDF {path}: {reason}")
        self.path = path
        self.reason = reason


def is_pdf(path: Path) -> bool:
    """Whether ``path`` looks like a PDF: by its first bytes, whatever its name."""
    try:
        with open(path, "rb") as file:
            return PDF_MAGIC in file.read(1024)
    except OSError:
        return False


class _Pages(msgspec.Struct, array_like=True):
    """What one process read: the text of its pages in order, up to the first that failed
    (``failed``: that page's index and PDFium's message)."""

    texts: list[str]
    failed: tuple[int, str] | None = None


def _read_pages(pdfium: Any, document: Any, indices: Sequence[int]) -> _Pages:
    texts: list[str] = []
    for index in indices:
        try:
            page = document[index]  # a page object that is missing or broken fails here
        except pdfium.PdfiumError as error:
            return _Pages(texts, (index, str(error)))
        try:
            text_page = page.get_textpage()
            try:
                texts.append(text_page.get_text_bounded())
            finally:
                text_page.close()
        except pdfium.PdfiumError as error:
            return _Pages(texts, (index, str(error)))
        finally:
            page.close()
    return _Pages(texts)


def _processes(pages: int) -> int:
    """How many processes share ``pages``: one (this one) unless a fork is safe and pays."""
    if not hasattr(os, "fork") or threading.active_count() > 1:
        # A fork copies only the forking thread: a lock another thread holds (in PDFium,
        # malloc, the interpreter) would stay locked in the child for ever.
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_PROCESSES, pages // PAGES_PER_PROCESS))


def _fork_reader(path: Path, password: str | None, indices: Sequence[int]) -> tuple[int, int]:
    """Fork a process that reads ``indices`` with its own PDFium document and writes a
    msgpack ``_Pages`` to a pipe; returns its pid and the pipe's reading end."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's exit handlers or flushes
        status = 1
        try:
            os.close(read_end)
            import pypdfium2  # type: ignore[import-untyped]  # no py.typed marker upstream

            # Its own document: the parent's shares a file offset with it through the fork.
            document = pypdfium2.PdfDocument(path, password=password)
            payload = msgspec.msgpack.encode(_read_pages(pypdfium2, document, indices))
            with open(write_end, "wb") as pipe:
                pipe.write(payload)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    return pid, read_end


def _collect(pid: int, payload: bytes) -> _Pages | None:
    """A reader's pages from all it wrote, or ``None`` when it died without them (the parent
    reads them itself)."""
    _, status = os.waitpid(pid, 0)
    if status != 0:
        return None
    try:
        return msgspec.msgpack.decode(payload, type=_Pages)
    except msgspec.DecodeError:
        return None


def pdf_text(path: Path, *, password: str | None = None) -> str:
    """The text of every page of ``path``, pages separated by a form feed (as ``pdftotext``).

    Raises ``PdfError`` when the file cannot be opened as a PDF or a page cannot be read (the
    first such page), and ``FileNotFoundError`` when it does not exist.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    # Imported here, not at module level: ``rlm`` imports this module on every start, and
    # pypdfium2 (a C library behind ctypes) costs ~0.1 s CPU for runs that read no PDF.
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(path, password=password)
    except pypdfium2.PdfiumError as error:
        raise PdfError(path, str(error)) from error
    readers: list[tuple[int, int]] = []
    try:
        count = len(document)
        processes = _processes(count)
        # Interleaved, not in halves: a PDF's heavy pages (figures, tables) come in runs.
        shares = [range(k, count, processes) for k in range(processes)]
        for share in shares[1:]:
            readers.append(_fork_reader(path, password, share))
        results = [_read_pages(pypdfium2, document, shares[0])]
        while readers:
            pid, read_end = readers[0]
            with open(read_end, "rb", closefd=False) as pipe:
                payload = pipe.read()
            # Out of the list before it is reaped: a pid that was waited for may be reused.
            readers.pop(0)
            os.close(read_end)
            results.append(_collect(pid, payload) or _read_pages(pypdfium2, document, shares[len(results)]))
    finally:
        for pid, read_end in readers:  # only when interrupted: stop the others too
            os.kill(pid, signal.SIGKILL)
            os.close(read_end)
            os.waitpid(pid, 0)
        document.close()
    failures = [result.failed for result in results if result.failed is not None]
    if failures:
        index, reason = min(failures)
        raise PdfError(path, f"page {index + 1}: {reason}")
    pages = [""] * count
    for share, result in zip(shares, results):
        for index, text in zip(share, result.texts):
            pages[index] = text
    # PDFium ends lines with CRLF; the model and ``prompt`` work with plain newlines.
    return "\f".join(pages).replace("\r\n", "\n")
