"""Sample code for the checks, in each language a guest may run (PROTOCOL.md 1.1, section 3.1).

A check that is not about Python asks for samples in whichever language the guest advertises
(Python first, else bash), so that a bash-only guest is certified for what it claims, as
Jupyter's kernel tests ask each kernel for samples in its own language.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..frames import Language

__all__ = ["BASH", "PYTHON", "Samples", "shell_quote"]


def shell_quote(text: str) -> str:
    """``text`` as one POSIX shell word, taken literally (newlines and non-ASCII included).

    >>> shell_quote("it's")
    "'it'\\\\''s'"
    """
    return "'" + text.replace("'", "'\\''") + "'"


@dataclass(frozen=True)
class Samples:
    """How to say a few things in one language; ``None`` where the language cannot."""

    language: Language

    def write(self, text: str) -> str:
        """Write ``text`` to stdout exactly (no newline added)."""
        if self.language == "python":
            return f"import sys\nsys.stdout.write({text!r})"
        return f"printf '%s' {shell_quote(text)}"

    def write_stderr(self, text: str) -> str:
        if self.language == "python":
            return f"import sys\nsys.stderr.write({text!r})"
        return f"printf '%s' {shell_quote(text)} >&2"

    def write_bytes(self, data: bytes) -> str:
        """Write raw bytes (not necessarily UTF-8) to descriptor 1."""
        if self.language == "python":
            return f"import os\nos.write(1, {data!r})"
        return "printf '" + "".join(f"\\{byte:03o}" for byte in data) + "'"

    def write_many(self, size: int, char: str = "x") -> str:
        """Write ``size`` copies of the one-byte ``char``."""
        if self.language == "python":
            return f"import sys\nsys.stdout.write({char!r} * {size})"
        return f"head -c {size} /dev/zero | tr '\\000' {shell_quote(char)}"

    def sleep_then_write(self, seconds: float, text: str) -> str:
        if self.language == "python":
            return f"import time\ntime.sleep({seconds})\nprint({text!r})"
        return f"sleep {seconds}; echo {shell_quote(text)}"

    def busy(self) -> str:
        """Run until stopped, using the CPU (not a sleep: the stop must land in running code)."""
        if self.language == "python":
            return "while True:\n    pass"
        return "while :; do :; done"

    def write_then_sleep(self, text: str, seconds: float = 30) -> str:
        if self.language == "python":
            return f"import sys, time\nsys.stdout.write({text!r})\nsys.stdout.flush()\ntime.sleep({seconds})"
        return f"printf '%s' {shell_quote(text)}; sleep {seconds}"

    def assign(self, name: str, value: str) -> str:
        """Bind ``name`` to the string ``value`` in the session's state (a REPL language)."""
        if self.language == "python":
            return f"{name} = {value!r}"
        return f"printf '%s' {shell_quote(value)} > \"$RLM_VARS/{name}\""

    def show(self, name: str) -> str:
        """Print the string bound to ``name`` followed by a newline (a REPL language)."""
        if self.language == "python":
            return f"print({name})"
        return f"cat \"$RLM_VARS/{name}\" && echo"

    def alive(self) -> str:
        """A block that prints ``alive`` and a newline."""
        return "print('alive')" if self.language == "python" else "echo alive"

    def host_call(self, method: str) -> str:
        """Call the host with ``method`` and an empty payload, then print the reply's value."""
        if self.language == "python":
            return f"r = host_call({method!r}, {{}})\nprint(r)"
        return f"host_call {shell_quote(method)}; echo"


PYTHON: Final = Samples("python")
BASH: Final = Samples("bash")
