"""Finding the code block to run in a model's reply (the seed's pattern and rules)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rlm_protocol import Language

__all__ = ["CODE_BLOCK_PATTERN", "CodeBlock", "first_block"]

#: The seed's pattern: a fence with an optional python/repl/bash/sh tag, up to the next fence.
CODE_BLOCK_PATTERN: Final = re.compile(
    r"```(?P<language>python|repl|bash|sh)?\s*\n(?P<body>.*?)```", re.DOTALL
)

_LANGUAGES: Final[dict[str | None, Language]] = {
    None: "python",
    "python": "python",
    "repl": "python",
    "bash": "bash",
    "sh": "bash",
}


@dataclass(frozen=True)
class CodeBlock:
    """A block to run; ``fenced`` is how it is kept in the history (the reply's prose dropped)."""

    language: Language
    code: str

    @property
    def fenced(self) -> str:
        return f"```{self.language}\n{self.code}\n```"


def first_block(reply: str) -> CodeBlock | None:
    """The first fenced python/repl/bash/sh block of ``reply`` (untagged means python), if any.

    >>> first_block("Let me look.\\n```repl\\nprint(len(prompt))\\n```\\n```bash\\nls\\n```")
    CodeBlock(language='python', code='print(len(prompt))')
    >>> first_block("no code here") is None
    True
    """
    match = CODE_BLOCK_PATTERN.search(reply)
    if match is None:
        return None
    return CodeBlock(language=_LANGUAGES[match.group("language")], code=match.group("body").strip())
