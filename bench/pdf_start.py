"""A long PDF from ``rlm run``'s start to its first model request, beside ``pdftotext`` alone.

The PDF is LaTeX2e's ``source2e.pdf`` (1221 pages, ~2.9 MB of text), from Debian's
``texlive-latex-base-doc``; ``pdftotext`` is poppler's, from ``poppler-utils``. Neither is a
dependency of the project: when either is missing, the row is skipped with the reason, and the
bench goes on. ``RLM_BENCH_PDF`` names another PDF.

``ratio`` is ours over ``pdftotext`` from the same run: the start includes the CLI's imports, the
text of every page (``rlm_host.pdf``), the trajectory's start and the request itself.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

#: Where Debian's ``texlive-latex-base-doc`` installs the PDF.
DEBIAN_SOURCE2E = Path("/usr/share/doc/texlive-doc/latex/base/source2e.pdf")


def find_pdf() -> Path | None:
    named = os.environ.get("RLM_BENCH_PDF")
    if named:
        return Path(named) if Path(named).is_file() else None
    return DEBIAN_SOURCE2E if DEBIAN_SOURCE2E.is_file() else None


def _pdftotext(pdftotext: str, pdf: Path, out: Path) -> float:
    t = time.monotonic()
    subprocess.run([pdftotext, str(pdf), str(out)], check=True, capture_output=True, timeout=600)
    return time.monotonic() - t


def pdf_start_row(repeats: int) -> dict[str, Any]:
    """``{"skipped": why}``, or the medians of ours and of ``pdftotext`` and their ratio; the two
    alternate, so that both see the same load."""
    from .engine import _first_request_ours

    pdf = find_pdf()
    if pdf is None:
        return {"skipped": f"no PDF: install texlive-latex-base-doc ({DEBIAN_SOURCE2E}) or set RLM_BENCH_PDF"}
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:
        return {"skipped": "no pdftotext: install poppler-utils"}
    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-pdf-"))
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        theirs.append(_pdftotext(pdftotext, pdf, tmp / "out.txt"))
        ours.append(_first_request_ours(pdf, tmp)["to_first_request"])
    shutil.rmtree(tmp, ignore_errors=True)
    mine, base = statistics.median(ours), statistics.median(theirs)
    return {
        "pdf": str(pdf), "bytes": pdf.stat().st_size,
        "start_to_first_request": round(mine, 4), "pdftotext": round(base, 4),
        "ratio": round(mine / base, 3), "runs": {"ours": ours, "pdftotext": theirs},
    }
