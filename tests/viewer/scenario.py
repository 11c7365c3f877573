"""A real run with something of everything the viewer draws, for its tests and its screenshot.

The root (depth 0) explores with bash, fails once with a traceback, sends four leaf questions in
one batch and two child RLMs in another batch (one of which recurses again and one of which runs
out of steps), writes hostile text (``</script>``, HTML, rich markup), replies once without a
block, then sets ``Final``. It runs through ``rlm_host.api.run_rlm`` against the scripted model
server over HTTP, with the guest as a local subprocess: every event is the engine's own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import RunResult, run_rlm
from tests.scripted_model import ChatRequest, ScriptedModel

__all__ = ["HOSTILE", "PROMPT", "run_scenario"]

#: Text that breaks a page that does not escape: it must show up literally, as text.
HOSTILE = "</script><script>window.__pwned = 1</script><img src=x onerror=alert(1)> [bold]not markup[/]"

PROMPT = "\n".join(
    ["Quarterly incident log"] + [f"2026-0{1 + i % 9}-1{i % 10} INFO service-{i % 4} ok" for i in range(300)]
    + ["2026-03-14 ERROR service-2 disk full on /var", "2026-03-15 ERROR service-1 timeout to db"]
)

ROOT_STEPS = [
    ("bash", "# how big is the log, and how many errors?\necho \"lines: $(printf '%s\\n' \"$PWD\" | wc -l)\"\nls / | head -n 3"),
    ("python", "errors = [l for l in prompt.splitlines() if 'ERROR' in l]\nprint(errors[10])  # IndexError"),
    (
        "python",
        "errors = [l for l in prompt.splitlines() if 'ERROR' in l]\n"
        "summaries = llm_query_batched([f'Summarize in 5 words: {e}' for e in errors] + "
        "['What is a disk?', 'What is a db?'])\n"
        "print(summaries)",
    ),
    (
        "python",
        "# Two sub-investigations, each with its own REPL holding its prompt\n"
        "reports = rlm_query_batched([\n"
        "    'Investigate: ' + errors[0],\n"
        "    'Loop forever on: ' + errors[1],\n"
        "])\n"
        f"print(reports, {HOSTILE!r})",
    ),
    None,  # a reply without a block: the engine asks again
    ("python", "Final = {'incidents': len(errors), 'first': errors[0], 'summaries': summaries}"),
]


def _script(request: ChatRequest) -> str:
    if request.is_leaf:
        question = request.last_user
        return f"Short answer to: {question[:60]}"
    prefix = request.prompt_prefix
    if prefix.startswith("Investigate:"):
        if request.turn == 0:
            return fence("detail = rlm_query('Which disk? ' + prompt)\nprint(detail)")
        if request.turn == 1:
            return fence("Final = 'disk /var on service-2 is full'")
    if prefix.startswith("Which disk?"):
        if request.turn == 0:
            return fence("print(prompt.split()[-3:])")
        return fence("Final = prompt.split(' on ')[-1]")
    if prefix.startswith("Loop forever"):
        return fence(f"print('still looking', {request.turn})")
    step = ROOT_STEPS[min(request.turn, len(ROOT_STEPS) - 1)]
    if step is None:
        return "I think I know the answer, " + HOSTILE
    language, code = step
    return fence(code, language)


async def run_scenario(trajectory: Path) -> RunResult[Any]:
    """Run the scenario, writing its trajectory to ``trajectory``; returns the run's result."""
    with ScriptedModel(_script, latency=0.05) as server:
        result = await run_rlm(
            PROMPT,
            options=local_options(server.url, trajectory, max_steps=12, concurrency=4),
        )
    assert result.answer is not None, result
    assert json.loads(result.answer)["incidents"] == 2
    return result
