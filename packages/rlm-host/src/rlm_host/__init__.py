"""rlm-host: drive rlm guest agents from trio, run the RLM engine, and the ``rlm`` CLI.

>>> import trio
>>> from rlm_host import GuestConnection, open_local_guest
>>> async def main() -> str:
...     async with open_local_guest() as stream, GuestConnection.open(stream) as connection:
...         session = await connection.open_session()
...         result = await session.exec("print(6 * 7)")
...         return result.stdout.text
>>> trio.run(main)
'42\\n'
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlm-host")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"

from .connection import GuestConnection
from .host_calls import HostCallHandler, serve_host_calls, serving
from .errors import (
    GuestDiedError,
    GuestError,
    GuestProtocolError,
    HandshakeError,
    RlmError,
    SessionClosedError,
    SessionError,
)
from .session import Session
from .transport import open_local_guest

__all__ = [
    "GuestConnection",
    "GuestDiedError",
    "GuestError",
    "GuestProtocolError",
    "HandshakeError",
    "HostCallHandler",
    "RlmError",
    "Session",
    "SessionClosedError",
    "SessionError",
    "__version__",
    "open_local_guest",
    "serve_host_calls",
    "serving",
]
