"""The trajectory viewer: a run's JSONL trajectory as one self-contained HTML page.

``render_trajectory(path, output)`` is what ``rlm view`` calls. The work is split by concept:
``load`` reads lines that may be damaged, ``tree`` folds events into the tree of RLM calls,
``render`` writes the page (``page.html``, ``page.css``, ``page.js`` joined, the run as JSON).
"""

from __future__ import annotations

from .load import decode_lines, load_trajectory
from .render import embed_json, render_html, render_trajectory
from .tree import Notice, RlmView, RunView, StepView, build_view

__all__ = [
    "Notice",
    "RlmView",
    "RunView",
    "StepView",
    "build_view",
    "decode_lines",
    "embed_json",
    "load_trajectory",
    "render_html",
    "render_trajectory",
]
