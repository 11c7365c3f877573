"""Which REPL an RLM gets in a guest, and what the model is told about a bash-only one.

PROTOCOL.md 3.1: an RLM needs ``exec.python`` (the namespace of section 4) or ``exec.bash`` with
``repl.bash`` (section 4.1: the prompt and ``Final`` are files, ``rlm_query`` is a command), and
``host_call`` for the recursion. Python is used when the guest has it; a guest with neither REPL
is refused before any model call, with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec

from rlm_protocol import PROMPT_PREFIX_CHARS, Hello, TextMeta, text_metadata

from ..errors import GuestError
from .prompts import _tools_sentence, answer_type_note

__all__ = [
    "GuestCapabilityError",
    "PYTHON_BLOCK_IN_BASH_REPL",
    "Repl",
    "bash_metadata_message",
    "bash_system_prompt",
    "repl_for",
]

Repl = Literal["python", "bash"]


class GuestCapabilityError(GuestError):
    """The guest lacks what an RLM needs (a REPL, host calls); the message says what."""


def repl_for(hello: Hello, *, host_tools: bool = False) -> Repl:
    """The REPL an RLM uses in the guest that sent ``hello``.

    >>> from rlm_protocol import Limits
    >>> limits = Limits(max_frame_bytes=1 << 20, max_output_chars=1000, max_sessions=8)
    >>> hello = Hello(protocol=(1, 1), agent="g", agent_version="1", limits=limits,
    ...               capabilities=("exec.bash", "repl.bash", "host_call"))
    >>> repl_for(hello)
    'bash'
    >>> repl_for(msgspec.structs.replace(hello, capabilities=("exec.bash",)))
    Traceback (most recent call last):
    ...
    rlm_host.engine.repl.GuestCapabilityError: guest g 1 cannot run an RLM: it has no REPL (neither exec.python nor exec.bash with repl.bash) and no host_call (PROTOCOL.md 3.1)

    Raises:
        GuestCapabilityError: no REPL, no ``host_call``, or host tools asked of a bash REPL.
    """
    capabilities = set(hello.capabilities)
    missing = []
    repl: Repl | None = None
    if "exec.python" in capabilities:
        repl = "python"
    elif {"exec.bash", "repl.bash"} <= capabilities:
        repl = "bash"
    else:
        missing.append("no REPL (neither exec.python nor exec.bash with repl.bash)")
    if "host_call" not in capabilities:
        missing.append("no host_call")
    if missing:
        raise GuestCapabilityError(
            f"guest {hello.agent} {hello.agent_version} cannot run an RLM: it has "
            f"{' and '.join(missing)} (PROTOCOL.md 3.1)"
        )
    assert repl is not None
    if repl == "bash" and host_tools:
        raise GuestCapabilityError(
            f"guest {hello.agent} {hello.agent_version} has no Python: host tools (--tool) are "
            "Python functions in the guest and cannot be offered to its bash REPL"
        )
    return repl


_BASH_SYSTEM_PROMPT = """You are the root LM inside a Recursive Language Model (RLM).
You answer by writing Bash that runs inside an isolated sandbox. There is no Python here.
Important environment:
- The full user prompt is the file "$RLM_VARS/prompt". Inspect it with `wc`, `head -c`,
`grep`, `sed -n`, `awk` and the like. Never print the whole file.
- `rlm_query "question plus relevant snippet"` recursively asks a child RLM to solve a
focused subtask and prints its answer. `rlm_query -` reads the question from stdin.
- Run several child RLMs at once with `&` and `wait`, each writing its answer to a file:
`rlm_query "q1" > "$RLM_VARS/a1" & rlm_query "q2" > "$RLM_VARS/a2" & wait`.
- `llm_query "prompt"` is a plain model call (no REPL) for a simple question about a snippet.
- Keep intermediate results as files in "$RLM_VARS"; `ls -l "$RLM_VARS"` lists them.
Each block runs as a new shell: only files persist between blocks.
{tools_sentence}
- When the answer is ready, write it to the file "$RLM_VARS/Final", e.g.
`printf '%s' "the answer" > "$RLM_VARS/Final"`.
Each response must be one fenced `bash` block."""


def bash_system_prompt(tools: Sequence[str]) -> str:
    """The system message of an RLM whose REPL is bash (PROTOCOL.md 4.1)."""
    return _BASH_SYSTEM_PROMPT.format(tools_sentence=_tools_sentence(tools))


def bash_metadata_message(prompt: str | TextMeta, answer_schema: Any = None) -> str:
    """The first user message of a bash REPL: the prompt's metadata, never the prompt (``prompt``
    may be that metadata already, as for :func:`~rlm_host.engine.prompts.metadata_message`)."""
    data: dict[str, Any] = {
        "state_metadata": {
            "prompt_type": "file",
            "prompt": msgspec.to_builtins(
                prompt if isinstance(prompt, TextMeta) else text_metadata(prompt, PROMPT_PREFIX_CHARS)
            ),
        },
        "instructions": (
            'The full prompt is the file "$RLM_VARS/prompt". Write Bash to inspect it, recurse '
            'with rlm_query when useful, keep intermediate files, and write "$RLM_VARS/Final".'
        ),
    }
    if answer_schema is not None:
        data["answer_schema"] = answer_schema
        data["answer_instructions"] = answer_type_note() + ' Write it as JSON text to "$RLM_VARS/Final".'
    return json.dumps(data, indent=2)


#: The observation for a Python block in a guest without Python (it is not sent to the guest).
PYTHON_BLOCK_IN_BASH_REPL: Final = json.dumps(
    {
        "error": "this sandbox has no Python: the block was not run",
        "instructions": "Reply with one fenced bash block.",
    },
    indent=2,
)
