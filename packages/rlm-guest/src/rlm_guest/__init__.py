"""rlm-guest: the agent that runs model-written code for the rlm host.

It speaks rlm-protocol over stdio (``python -m rlm_guest --stdio``) or over a virtio-serial port
inside the VM (``python -m rlm_guest --device /dev/virtio-ports/rlm.agent``). Each session is a
persistent Python namespace with the REPL functions of PROTOCOL.md (``rlm_query``,
``llm_query``, their batched forms, ``SHOW_VARS``) and runs Python or bash blocks.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlm-guest")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
