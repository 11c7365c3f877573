"""Every text the engine shows a model, in one place, worded as in the seed.

The seed's system prompt is kept line for line, with two changes: the tool list comes from the
guest image (a parameter, not a hard-coded list), and the REPL functions that the seed lacked
(``rlm_query_batched``, ``llm_query``, ``llm_query_batched``) are described.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from rlm_protocol import (
    OBSERVATION_PREFIX_CHARS,
    PROMPT_PREFIX_CHARS,
    ExecResult,
    FinalValue,
    TextMeta,
    captured_metadata,
    text_metadata,
)

__all__ = [
    "DEFAULT_TOOLS",
    "NO_BLOCK_REPROMPT",
    "answer_mismatch_message",
    "answer_type_note",
    "compaction_prompt",
    "compacted_message",
    "metadata_message",
    "models_prompt",
    "observation_message",
    "paper_brief_task",
    "query_task",
    "question_message",
    "smoke_task",
    "system_prompt",
]

#: The tools the seed's Alpine image installed; used until the image manifest says otherwise.
DEFAULT_TOOLS: Final[tuple[str, ...]] = (
    "rg",
    "jq",
    "fd",
    "file",
    "tree",
    "tar",
    "unzip",
    "gzip",
    "sqlite3",
    "git",
    "diff",
    "pdftotext",
    "GNU find",
    "GNU coreutils",
)

#: The seed's re-prompt for a reply without a code block.
NO_BLOCK_REPROMPT: Final = (
    "Reply with exactly one fenced python or bash block that advances the REPL state."
)

_SYSTEM_PROMPT_TEMPLATE = """You are the root LM inside a Recursive Language Model (RLM).
You answer by writing Python or Bash that runs inside an isolated VM.
Important environment:
- `prompt` is the full user prompt as a plain Python `str`, not a dict.
Inspect it with `len(prompt)`, `prompt[:1000]`, regex, split, and slicing.
- `rlm_query(f"question plus relevant snippet")` recursively asks a child RLM to
solve a focused subtask. It is already available as a global function.
- `rlm_query_batched([prompt1, prompt2, ...])` runs several child RLMs at once and
returns their answers as a list, in order. Prefer it to a loop of `rlm_query`.
- `llm_query(prompt)` and `llm_query_batched(prompts)` are plain model calls
(no REPL) for simple questions about a snippet.
- `SHOW_VARS()` prints current REPL variables.
{host_tools}- `bash` blocks run as shell scripts in the session's working directory. Heredocs work.
{tools_sentence}
- Set JSON-serializable `Final` when the answer is ready.
Use Python for persistent state, parsing, aggregation, `rlm_query`, and `Final`.
Use Bash for filesystem inspection, text search, archives, JSON, SQLite, Git,
PDF text extraction, and shell-native commands. Bash does not persist variables
into Python. Do not dump the whole prompt. Each response must be one fenced
`python` or `bash` block."""


def _tools_sentence(tools: Sequence[str]) -> str:
    if not tools:
        return "Only the base system's shell tools are installed."
    listed = ", ".join(f"`{tool}`" if " " not in tool else tool for tool in tools)
    return f"Useful installed tools include {listed}."


def system_prompt(tools: Sequence[str] = DEFAULT_TOOLS, host_tools: str = "") -> str:
    """The system message of every RLM step, listing ``tools`` as installed in the guest.

    ``host_tools`` is the text of ``rlm_host.tools.tools_prompt`` (lines ending in a newline are
    not needed: it is inserted after the ``SHOW_VARS`` line).
    """
    return _SYSTEM_PROMPT_TEMPLATE.format(
        tools_sentence=_tools_sentence(tools), host_tools=host_tools + "\n" if host_tools else ""
    )


def models_prompt(models: Sequence[str], default: str) -> str:
    """The system prompt's line about the models code may pick (empty with only one model).

    >>> models_prompt(["big", "small"], "small")
    "- `rlm_query`, `llm_query` and their batched forms take `model=...`: one of 'big', 'small' (default 'small')."
    """
    if len(models) < 2:
        return ""
    listed = ", ".join(repr(name) for name in sorted(models))
    return (
        "- `rlm_query`, `llm_query` and their batched forms take `model=...`: "
        f"one of {listed} (default {default!r})."
    )


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


def metadata_message(prompt: str | TextMeta, answer_schema: Any = None) -> str:
    """The first user message: metadata of ``prompt`` (1600-char prefix), never the prompt.
    ``prompt`` may be that metadata already (a prompt that stayed in the guest).

    With ``answer_schema`` (the JSON Schema of a typed answer), the message says what shape
    ``Final`` must have.
    """
    data: dict[str, Any] = {
        "state_metadata": {
            "prompt_type": "str",
            "prompt": _plain(prompt if isinstance(prompt, TextMeta) else text_metadata(prompt, PROMPT_PREFIX_CHARS)),
        },
        "instructions": (
            "The full prompt is in the isolated REPL variable `prompt`, as a Python str. "
            "Write Python to inspect it, recurse with rlm_query when useful, "
            "build intermediate variables, and set `Final`."
        ),
    }
    if answer_schema is not None:
        data["answer_schema"] = answer_schema
        data["answer_instructions"] = answer_type_note()
    return json.dumps(data, indent=2)


def _final_problem(final: FinalValue) -> str:
    shown = final.repr[:200]
    return (
        f"`Final` is set but is not JSON-serializable ({final.error or 'not serializable'}; "
        f"type {final.type or '?'}, repr {shown!r}). The run goes on: set `Final` to a str, "
        "number, bool, None, or a list/dict of those."
    )


def observation_message(result: ExecResult) -> str:
    """What the model sees after a block: metadata of stdout and stderr (800-char prefixes).

    As in the seed, plus what the seed could not say: the exception of a failed block (its
    traceback is in stderr, but the last line may be past the prefix), an interruption, a reset
    session, and a ``Final`` that could not be returned.
    """
    metadata: dict[str, Any] = {
        "stdout": _plain(captured_metadata(result.stdout, OBSERVATION_PREFIX_CHARS)),
        "stderr": _plain(captured_metadata(result.stderr, OBSERVATION_PREFIX_CHARS)),
    }
    for name, stream in (("stdout", result.stdout), ("stderr", result.stderr)):
        if stream.cut:  # the guest kept a prefix only; the counts above are still the true ones
            metadata[f"{name}_cut"] = f"the guest kept {len(stream.text)} of {stream.chars} characters"
    if result.returncode is not None:
        metadata["returncode"] = result.returncode
    if result.error is not None:
        metadata["error"] = f"{result.error.name}: {result.error.value}"[:OBSERVATION_PREFIX_CHARS]
    if result.interrupted:
        metadata["interrupted"] = "the block was stopped before it finished"
    if result.session_reset:
        metadata["session_reset"] = "the REPL was restarted: every variable is gone except `prompt`"
    if result.final is not None and not result.final.ok:
        metadata["final_error"] = _final_problem(result.final)
    return "REPL observation metadata:\n" + json.dumps(metadata, indent=2)


def paper_brief_task(text: str) -> str:
    """The seed's task for a PDF given without ``--query``: a structured brief of a paper."""
    return f"""Analyze the paper text below and produce a clear structured brief.
Focus on:
- the central claim and motivation
- the RLM algorithm and what makes it different from ordinary agents
- the experiments and strongest evidence
- limitations, costs, and failure modes
- what a minimal implementation must preserve
Use recursive calls over meaningful chunks when helpful. Do not quote long
passages. The final answer should be concise but substantive.
[BEGIN PAPER TEXT]
{text}
[END PAPER TEXT]
"""


def smoke_task(text: str) -> str:
    """The seed's ``--smoke`` task: three bullets about an excerpt, no recursion."""
    return f"""Smoke test: summarize this excerpt from rlm.pdf in three bullets.
Inspect `prompt` briefly if useful, then set `Final` to the answer as a string.
Do not use recursive calls for this smoke test.
[BEGIN EXCERPT]
{text}
[END EXCERPT]
"""


def query_task(query: str, context: str | None) -> str:
    """``--query``: the question first (so it is in the prefix the model sees), then the context."""
    if context is None:
        return query
    return f"""{query}

[BEGIN CONTEXT]
{context}
[END CONTEXT]
"""


def answer_type_note() -> str:
    """What a message with an ``answer_schema`` says about it."""
    return (
        "`Final` must be JSON matching `answer_schema` (a JSON Schema); it is checked on the "
        "host, and a mismatch comes back as an observation."
    )


def answer_mismatch_message(error: str, final: FinalValue) -> str:
    """The observation after a ``Final`` that is JSON but not of the requested answer type."""
    return "REPL observation metadata:\n" + json.dumps(
        {
            "final_error": (
                f"`Final` does not match the requested answer type: {error}. "
                f"`Final` was {final.repr[:200]}; it has been unset. Fix it and set `Final` again."
            )
        },
        indent=2,
    )


#: What a summary of older turns should keep (the model that continues only sees the summary).
_COMPACTION_INSTRUCTIONS = """You are compacting the history of a Python REPL session driven by a
model. Summarise the turns below for the model that continues it: what the code found, which REPL
variables hold what, what failed, and what remains to do. Be brief and factual; plain text."""


def compaction_prompt(previous_summary: str, turns: Sequence[dict[str, str]], max_chars: int) -> str:
    """The request that summarises ``turns`` (and an earlier summary) in a few lines.

    ``max_chars`` bounds the request: the oldest text is cut first, the newest is kept.
    """
    rendered = "\n\n".join(f"[{turn['role']}]\n{turn['content']}" for turn in turns)
    if previous_summary:
        rendered = f"[summary of even earlier turns]\n{previous_summary}\n\n{rendered}"
    if len(rendered) > max_chars:
        rendered = "(older text cut)\n" + rendered[-max_chars:]
    return f"{_COMPACTION_INSTRUCTIONS}\n[BEGIN TURNS]\n{rendered}\n[END TURNS]"


def compacted_message(first_message: str, summary: str, messages: int) -> str:
    """The first user message after a compaction: the original one, with the summary added.

    The first message is JSON (``metadata_message``), so the summary is added as two keys and
    the message stays JSON.
    """
    note = (
        "Earlier turns were summarised to fit the model's context; the full history "
        f"({messages} messages, as dicts with `role` and `content`) is in the REPL variable "
        "`history`."
    )
    try:
        data = json.loads(first_message)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return f"{first_message}\n\n{note}\n[SUMMARY OF EARLIER TURNS]\n{summary}\n[END SUMMARY]"
    data["earlier_turns"] = note
    data["summary_of_earlier_turns"] = summary
    return json.dumps(data, indent=2)


def question_message(
    question: str, variable: str | None, context: str | None, answer_schema: Any = None
) -> str:
    """A new question of a conversation, with the metadata of its context variable."""
    data: dict[str, Any] = {"question": question}
    if answer_schema is not None:
        data["answer_schema"] = answer_schema
        data["answer_instructions"] = answer_type_note()
    if variable is not None and context is not None:
        data["new_variable"] = {
            "name": variable,
            "type": "str",
            "metadata": _plain(text_metadata(context, PROMPT_PREFIX_CHARS)),
        }
    data["instructions"] = (
        "A new question in the same REPL session: every variable of the earlier turns is still "
        "there. Answer this question by setting `Final` again."
    )
    return json.dumps(data, indent=2)
