"""One description of each engine workload, scripted for both harnesses.

The scripted model answers ours with ```python blocks and ``Final``, rlms with ```repl blocks and
``answer["content"]``/``answer["ready"]`` (it recognises rlms by its system prompt, which asks
for ```repl blocks). A block carries a ``# bench-step N`` marker, so the next request's history
says which step comes next, whatever else either harness puts in its messages.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["steps", "children", "leaves", "first_request", "fanout"]

_STEP = re.compile(r"# bench-step (\d+)")


@dataclass(frozen=True)
class Workload:
    kind: Kind
    #: Root steps before the final one (``steps``).
    steps: int = 10
    #: Batched calls (``children``, ``leaves``).
    fanout: int = 8
    #: Seconds each model reply waits.
    latency: float = 0.0


def _block(flavour: str, code: str) -> str:
    fence = "repl" if flavour == "rlms" else "python"
    return f"```{fence}\n{code}\n```"


def _final(flavour: str, value: str) -> str:
    if flavour == "rlms":
        return f'answer["content"] = {value}\nanswer["ready"] = True'
    return f"Final = {value}"


class Script:
    """The model's side of a workload: a function of the request (see tests/scripted_model.py)."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._lock = threading.Lock()
        self._root_seen = False
        #: ``id`` of every root request (for :func:`root_gaps`).
        self.roots: set[int] = set()

    def __call__(self, request: Any) -> str:
        system = request.system
        if system is None:
            return "leaf answer"  # llm_query / a call at the depth limit
        flavour = "rlms" if "```repl" in system else "ours"
        history = "\n".join(m.get("content", "") for m in request.messages if m.get("role") == "assistant")
        done = [int(n) for n in _STEP.findall(history)]
        if "# bench-child" in history:
            return _block(flavour, "# bench-child\n" + _final(flavour, '"child done"'))
        if not done:
            with self._lock:
                is_root, self._root_seen = not self._root_seen, True
            if not is_root:
                return _block(flavour, "# bench-child\n" + _final(flavour, '"child answer"'))
        with self._lock:
            self.roots.add(id(request))
        step = max(done, default=-1) + 1
        w = self.workload
        marker = f"# bench-step {step}\n"
        if w.kind == "steps" and step < w.steps:
            return _block(flavour, marker + f"x_{step} = {step}")
        if w.kind == "children" and step == 0:
            prompts = f"[f'child task {{i}}' for i in range({w.fanout})]"
            return _block(flavour, marker + f"r = rlm_query_batched({prompts})\nprint(len(r))")
        if w.kind == "fanout" and step == 0:
            # A first step, so that the next one (measured) does not include binding the prompt.
            return _block(flavour, marker + "print(len(prompt))")
        if w.kind == "fanout" and step == 1:
            # The RLM's central move: cut the prompt in pieces and hand each to a child.
            code = (f"n = len(prompt) // {w.fanout}\n"
                    f"r = rlm_query_batched([prompt[i * n:(i + 1) * n] for i in range({w.fanout})])\nprint(len(r))")
            return _block(flavour, marker + code)
        if w.kind == "leaves" and step == 0:
            prompts = f"[f'leaf task {{i}}' for i in range({w.fanout})]"
            return _block(flavour, marker + f"r = llm_query_batched({prompts})\nprint(len(r))")
        return _block(flavour, marker + _final(flavour, '"done"'))


def root_gaps(log: list[Any], script: Script) -> list[float]:
    """Seconds between each root reply and the root's next request (host time per step)."""
    roots = sorted((r for r in log if r.request is not None and id(r.request) in script.roots), key=lambda r: r.start)
    return [b.start - a.end for a, b in zip(roots, roots[1:])]
