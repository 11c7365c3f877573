"""rlm-guest: the agent that runs model-written code for the rlm host.

It speaks rlm-protocol over stdio (``python -m rlm_guest --stdio``) or over a virtio-serial port
inside the VM (``python -m rlm_guest --device /dev/virtio-ports/rlm.agent``). Each session is a
persistent Python namespace with the REPL functions of PROTOCOL.md (``rlm_query``,
``llm_query``, their batched forms, ``SHOW_VARS``) and runs Python or bash blocks.
"""

from __future__ import annotations

#: The distribution's version, written out: ``importlib.metadata`` costs 0.6 s of the agent's
#: 2.1 s of imports in a cold-booted VM (TCG). ``tests/protocol/test_versions.py`` keeps it
#: equal to ``pyproject.toml``.
__version__ = "0.1.0"

__all__ = ["__version__"]
