"""Helpers of the batch tests: a task file whose tasks say what the scripted model does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from scripted_model import ChatRequest

#: The id of the task whose code kills its guest (the agent, so the VM powers off).
KILLER = "t-kill"
#: The id of the task that never sets Final and has a budget of one step.
LOOPER = "t-loop"

KILL_CODE = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"


def fence(code: str) -> str:
    """A model reply with one fenced Python block."""
    return f"My step.\n```python\n{code}\n```\n"


def script(request: ChatRequest) -> str:
    """What the model does for a task: the prompt is ``answer=<value>``, ``KILL`` or ``LOOP``."""
    prefix = request.prompt_prefix
    if prefix.startswith("KILL"):
        return fence(KILL_CODE)
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
