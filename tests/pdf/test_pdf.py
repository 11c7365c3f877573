"""PDF text extraction with pypdfium2, and its typed error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pdf_maker import write_pdf
from rlm_host.pdf import PdfError, is_pdf, pdf_text


def test_text_of_every_page(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "doc.pdf", [["Recursive Language Models", "second line"], ["page two"]])
    assert is_pdf(path)
    text = pdf_text(path)
    first, second = text.split("\f")
    assert "Recursive Language Models" in first and "second line" in first
    assert "page two" in second
    assert "\r" not in text


def test_not_a_pdf_is_a_pdf_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.pdf"
    path.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises(PdfError, match="cannot read PDF"):
        pdf_text(path)
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    assert not is_pdf(plain)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        pdf_text(tmp_path / "absent.pdf")
