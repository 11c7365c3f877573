"""PDF text extraction with pypdfium2, and its typed error."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.pdf_maker import write_pdf
from rlm_host import pdf
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


def _many_pages(path: Path, count: int) -> Path:
    return write_pdf(path, [[f"page {index + 1} of {count}", "x" * (index % 7)] for index in range(count)])


def _break_pages(path: Path, *numbers: int) -> None:
    """Point the page tree's entries of ``numbers`` (1-based) at objects that do not exist."""
    data = path.read_bytes()
    for number in numbers:
        object_id = 4 + 2 * (number - 1)
        data = data.replace(f" {object_id} 0 R".encode(), f" {9000 + number} 0 R".encode(), 1)
    path.write_bytes(data)


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages shared among three processes whatever the machine's CPUs."""
    monkeypatch.setattr(pdf, "_processes", lambda pages: 3)


def test_pages_read_by_several_processes_give_the_same_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _many_pages(tmp_path / "long.pdf", 50)
    monkeypatch.setattr(pdf, "_processes", lambda pages: 1)
    alone = pdf_text(path)
    monkeypatch.setattr(pdf, "_processes", lambda pages: 3)
    forks: list[int] = []
    real_fork = os.fork

    def counted_fork() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", counted_fork)
    assert pdf_text(path) == alone
    assert len(forks) == 2
    assert alone.split("\f")[41].startswith("page 42 of 50")


def test_the_first_broken_page_is_the_error(tmp_path: Path, forked: None) -> None:
    path = _many_pages(tmp_path / "broken.pdf", 30)
    # Page 14 (index 13) is in the first forked process's share, page 21 in the second's,
    # page 25 in this process's own, which is read first.
    _break_pages(path, 14, 21, 25)
    with pytest.raises(PdfError, match=r"page 14: Failed to load page"):
        pdf_text(path)


def test_a_reader_that_dies_has_its_pages_read_here(tmp_path: Path, forked: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _many_pages(tmp_path / "long.pdf", 20)
    parent = os.getpid()
    real = pdf._read_pages

    def dies_in_a_child(pdfium: Any, document: Any, indices: Sequence[int]) -> Any:
        if os.getpid() != parent:
            os._exit(7)
        return real(pdfium, document, indices)

    monkeypatch.setattr(pdf, "_read_pages", dies_in_a_child)
    pages = pdf_text(path).split("\f")
    assert [page.split("\n")[0] for page in pages] == [f"page {index + 1} of 20" for index in range(20)]


def test_fork_only_with_one_thread_and_enough_pages() -> None:
    assert pdf._processes(3) == 1
    many = pdf._processes(100_000)
    assert 1 <= many <= pdf.MAX_PROCESSES
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert pdf._processes(100_000) == 1
    finally:
        stop.set()
        thread.join()


class _Interrupted(BaseException):
    """Stands for Ctrl-C (``KeyboardInterrupt``) while this process reads its own pages."""


def test_an_interrupt_stops_every_reader(tmp_path: Path, forked: None, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _many_pages(tmp_path / "long.pdf", 20)
    parent = os.getpid()
    forks: list[int] = []
    real_fork = os.fork

    def recorded_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    def slow_readers(pdfium: Any, document: Any, indices: Sequence[int]) -> Any:
        if os.getpid() != parent:
            time.sleep(60)  # a reader still at work; the parent must not wait for it
        raise _Interrupted

    monkeypatch.setattr(os, "fork", recorded_fork)
    monkeypatch.setattr(pdf, "_read_pages", slow_readers)
    with pytest.raises(_Interrupted):
        pdf_text(path)
    assert len(forks) == 2
    for pid in forks:  # killed and reaped: not even a zombie is left
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
