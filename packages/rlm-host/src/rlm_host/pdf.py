"""Text of a PDF, with pypdfium2 (PDFium, Chrome's PDF engine).

Chosen by measurement (DESIGN.md): on a 1221-page paper pypdfium2 took 2.6 s, poppler's
``pdftotext`` 10.9 s and pypdf 53 s, for the same text. It needs no binary on the host.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RlmError

__all__ = ["PdfError", "is_pdf", "pdf_text"]

#: Every PDF starts with this (within its first 1024 bytes, per the spec; in practice at 0).
PDF_MAGIC = b"%PDF-"


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


def pdf_text(path: Path, *, password: str | None = None) -> str:
    """The text of every page of ``path``, pages separated by a form feed (as ``pdftotext``).

    Raises ``PdfError`` when the file cannot be opened as a PDF or a page cannot be read, and
    ``FileNotFoundError`` when it does not exist.
    """
    if not path.exists():
        raise FileNotFoundError(path)
    # Imported here, not at module level: ``rlm`` imports this module on every start, and
    # pypdfium2 (a C library behind ctypes) costs ~0.1 s CPU for runs that read no PDF.
    import pypdfium2  # type: ignore[import-untyped]  # no py.typed marker upstream

    try:
        document = pypdfium2.PdfDocument(path, password=password)
    except pypdfium2.PdfiumError as error:
        raise PdfError(path, str(error)) from error
    try:
        pages: list[str] = []
        for index in range(len(document)):
            page = document[index]
            try:
                text_page = page.get_textpage()
                try:
                    pages.append(text_page.get_text_bounded())
                finally:
                    text_page.close()
            except pypdfium2.PdfiumError as error:
                raise PdfError(path, f"page {index + 1}: {error}") from error
            finally:
                page.close()
    finally:
        document.close()
    # PDFium ends lines with CRLF; the model and ``prompt`` work with plain newlines.
    return "\f".join(pages).replace("\r\n", "\n")
