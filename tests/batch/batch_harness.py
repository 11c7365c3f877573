"""Helpers of the batch tests: a task file whose tasks say what the scripted model does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.scripted_model import ChatRequest

#: The id of the task whose code kills its guest (the agent, so the VM powers off).
KILLER = "t-kill"
#: The id of the task that never sets Final and has a budget of one step.
LOOPER = "t-loop"

KILL_CODE = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"

#: Kills the Ray actor that runs the task (the first ``ray::`` process above the guest), as a
#: lost node would; with a local guest that process is an ancestor of the session.
KILL_ACTOR_CODE = """import os, signal
pid = os.getpid()
while pid > 1:
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    if open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::"):
        os.kill(pid, signal.SIGKILL)
        break
"""


def meet_code(directory: str, mine: str, other: str) -> str:
    """Code that says it is here (a file) and waits until ``other`` is too."""
    return (
        f"import os, time\nopen(os.path.join({directory!r}, {mine!r}), 'w').close()\n"
        f"while not os.path.exists(os.path.join({directory!r}, {other!r})):\n    time.sleep(0.02)\n"
        "Final = 'met'"
    )


def fence(code: str) -> str:
    """A model reply with one fenced Python block."""
    return f"My step.\n```python\n{code}\n```\n"


def script(request: ChatRequest) -> str:
    """What the model does for a task: the prompt is ``answer=<value>``, ``KILL``, ``LOOP``,
    ``DIE`` (kill the Ray actor) or ``MEET <dir> <mine> <other>`` (wait for another task)."""
    prefix = request.prompt_prefix
    if prefix.startswith("KILL"):
        return fence(KILL_CODE)
    if prefix.startswith("DIE"):
        return fence(KILL_ACTOR_CODE)
    if prefix.startswith("MEET"):
        if request.turn > 0:
            return fence("Final = 'alone'")  # the first block timed out waiting
        _, directory, mine, other = prefix.split()[:4]
        return fence(meet_code(directory, mine, other))
    if prefix.startswith("LOOP"):
        return fence("print('still thinking')")
    return fence("Final = prompt.split('=', 1)[1].strip()")


def write_tasks(path: Path, count: int = 50) -> dict[str, Any]:
    """``count`` tasks (one killer, one looper, the rest answerable); returns expected answers."""
    lines: list[dict[str, Any]] = []
    expected: dict[str, Any] = {}
    for index in range(count - 2):
        answer = f"Answer {index}"
        task_id = f"t{index:03d}"
        # Every fifth task is scored with a differently-cased expected: normalised match.
        want = answer.upper() if index % 5 == 0 else answer
        lines.append({"id": task_id, "text": f"answer={answer}", "expected": want})
        expected[task_id] = answer
    lines.insert(7, {"id": KILLER, "text": "KILL the guest", "expected": "never"})
    lines.insert(20, {"id": LOOPER, "text": "LOOP forever", "options": {"max_steps": 1}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return expected


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]
