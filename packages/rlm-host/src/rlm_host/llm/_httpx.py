"""Import httpx without its command-line client, which ``rlm`` never uses.

``import httpx`` also imports ``httpx._main`` (the ``httpx`` CLI: click, pygments, rich syntax)
whenever those are installed, as they are here: ~0.3 s of CPU on every ``rlm`` start (bench:
``python -X importtime``). Import this module before ``httpx``: a placeholder without ``main``
makes httpx take its own fallback, then the placeholder goes.
"""

from __future__ import annotations

import sys
import types

if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
    sys.modules["httpx._main"] = types.ModuleType("httpx._main")
    try:
        import httpx  # noqa: F401
    finally:
        del sys.modules["httpx._main"]
