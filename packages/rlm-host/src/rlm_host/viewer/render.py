"""The page: one HTML file with the run as JSON and the viewer's CSS and JavaScript inline.

The page's parts live next to this module as ``page.html``, ``page.css`` and ``page.js`` (real
files, so that editors and linters see real CSS and JS) and are joined here. The run goes in a
``<script type="application/json">`` element, which the browser never executes; the one way out
of it is the text ``</script``, so every ``<`` in the JSON is written as ``\\u003c`` (still the
same JSON string to ``JSON.parse``). Text reaches the page only through ``textContent``.
"""

from __future__ import annotations

import html
import re
from importlib import resources
from pathlib import Path

import msgspec

from .load import load_trajectory
from .tree import RunView, build_view

__all__ = ["embed_json", "render_html", "render_trajectory"]

_MARKER = re.compile(r"@@(TITLE|CSS|JS|DATA)@@")


def embed_json(value: object) -> str:
    """``value`` as JSON that is safe inside a ``<script>`` element of an HTML page.

    >>> embed_json({"code": "</script><b>"})
    '{"code":"\\\\u003c/script>\\\\u003cb>"}'
    """
    return msgspec.json.encode(value).decode().replace("<", "\\u003c")


def _part(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def render_html(run: RunView) -> str:
    """The whole page for ``run``: no external resource, openable from ``file://``."""
    title = f"rlm run {run.run_id or ''}".strip()
    parts = {
        "TITLE": html.escape(title),
        "CSS": _part("page.css"),
        "JS": _part("page.js"),
        "DATA": embed_json(run),
    }
    # One pass over the template only: a marker inside the run's own text is never replaced.
    return _MARKER.sub(lambda match: parts[match.group(1)], _part("page.html"))


def render_trajectory(path: Path, output: Path) -> RunView:
    """Read the trajectory at ``path`` (partial ones too) and write its page to ``output``.

    Returns the view that was drawn (callers report its problems). Raises ``OSError`` when a
    file cannot be read or written.
    """
    events, problems = load_trajectory(path)
    run = build_view(events, problems, source=str(path))
    output.write_text(render_html(run), encoding="utf-8")
    return run
