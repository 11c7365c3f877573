"""A 5 MB prompt never reaches the model: a child finds the needle from a snippet."""

from __future__ import annotations

import random
import string
from pathlib import Path

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import run_rlm
from rlm_host.engine import system_prompt
from rlm_host.trajectory import ChildEnd, ChildStart, read_trajectory
from rlm_protocol import PROMPT_PREFIX_CHARS
from tests.scripted_model import ChatRequest, ScriptedModel

SECRET = "KX-4471-ZEBRA"
SNIPPET_RADIUS = 200
#: JSON framing, the metadata message's instructions, the assistant block echoed in history.
OVERHEAD_CHARS = 2_500


def haystack(size: int) -> str:
    """``size`` characters of ASCII filler lines with one needle sentence near the end."""
    rng = random.Random(5)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(500)]
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choices(words, k=12))
        lines.append(line)
        total += len(line) + 1
    needle_at = int(len(lines) * 0.9)
    lines.insert(needle_at, f"By the way, the vault code is {SECRET} and nobody knows it.")
    return "\n".join(lines)[: size + 100]


ROOT_CODE = f"""
at = prompt.find("vault code")
print("needle at", at, "of", len(prompt))
snippet = prompt[at - {SNIPPET_RADIUS}: at + {SNIPPET_RADIUS}]
Final = rlm_query("What is the vault code in this snippet? " + snippet)
"""


def script(request: ChatRequest) -> str:
    prefix = request.prompt_prefix
    if prefix.startswith("What is the vault code"):
        # The child's model sees its whole prompt (question + snippet) in its 1600-char prefix.
        code = prefix.split("vault code is ", 1)[1].split()[0]
        return fence(f"Final = {code!r}")
    return fence(ROOT_CODE)


async def test_needle_in_five_megabytes(trajectory: Path) -> None:
    text = haystack(5_000_000)
    assert len(text) >= 5_000_000 and SECRET in text
    with ScriptedModel(script) as server:
        result = await run_rlm(text, options=local_options(server.url, trajectory))
    assert result.answer == SECRET

    requests = server.requests()
    assert len(requests) == 2  # one root step, one child step
    snippet_chars = 2 * SNIPPET_RADIUS + len("What is the vault code in this snippet? ")
    bound = len(system_prompt()) + PROMPT_PREFIX_CHARS + snippet_chars + OVERHEAD_CHARS
    assert max(record.body_bytes for record in server.log) <= bound
    assert bound < len(text) // 500  # the bound is tiny next to the prompt

    events = read_trajectory(trajectory)
    (start,) = [event for event in events if isinstance(event, ChildStart)]
    (end,) = [event for event in events if isinstance(event, ChildEnd)]
    assert (start.parent, start.rlm, start.depth, start.kind) == ("0", "0.1", 1, "rlm")
    assert end.error is None and end.answer_chars == len(SECRET)
