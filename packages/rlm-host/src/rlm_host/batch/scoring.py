"""Scoring an answer against a task's ``expected``: exact and normalised match, or your own.

A scorer is ``f(answer, expected, task) -> float | bool`` (``answer`` is ``None`` when the run
stopped without one). ``--scorer exact`` and ``--scorer normalised`` (the default) are built in;
``--scorer module:function`` imports another (it runs on the driver, never in the VM).

An answer is compared as the run gives it: ``Final`` as a string, or the JSON of another value,
so an ``expected`` that is not a string is compared to the answer parsed as JSON.

>>> exact("Paris", "Paris"), exact("paris.", "Paris")
(1.0, 0.0)
>>> normalised("  The  Paris. ", "paris"), normalised("[1, 2]", [1, 2])
(1.0, 1.0)
"""

from __future__ import annotations

import importlib
import json
import re
import string
import unicodedata
from collections.abc import Callable
from typing import Any

from .tasks import Task

__all__ = ["BUILTIN_SCORERS", "Scorer", "exact", "load_scorer", "normalise", "normalised", "score_all"]

Scorer = Callable[[str | None, Any, Task | None], "float | bool"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower case, NFKC, no punctuation, no articles, single spaces (SQuAD's normalisation).

    >>> normalise("The  Answer: 42!")
    'answer 42'
    """
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_json(answer: str) -> Any:
    try:
        return json.loads(answer)
    except ValueError:
        return answer


def exact(answer: str | None, expected: Any, task: Task | None = None) -> float:
    """1.0 when the answer is exactly ``expected`` (a non-string: equal as JSON), else 0.0."""
    if answer is None:
        return 0.0
    if isinstance(expected, str):
        return float(answer == expected)
    return float(_as_json(answer) == expected)


def normalised(answer: str | None, expected: Any, task: Task | None = None) -> float:
    """1.0 when the answers match after ``normalise`` (non-strings: as JSON, or as text)."""
    if answer is None:
        return 0.0
    if not isinstance(expected, str):
        if _as_json(answer) == expected:
            return 1.0
        expected = json.dumps(expected)
    return float(normalise(answer) == normalise(expected))


BUILTIN_SCORERS: dict[str, Scorer] = {"exact": exact, "normalised": normalised}


def load_scorer(spec: str) -> Scorer:
    """A built-in scorer by name, or ``module:function``; ``ValueError`` when it cannot be loaded."""
    if spec in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[spec]
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"a scorer is 'exact', 'normalised' or module:function, not {spec!r}")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load scorer {spec!r}: {error}") from error
    if not callable(function):
        raise ValueError(f"scorer {spec!r} is not callable")
    scorer: Scorer = function
    return scorer


def score_all(scorer: Scorer, answer: str | None, task: Task) -> tuple[float, dict[str, float]]:
    """The batch scorer's score of ``answer`` and every built-in score, by name."""
    scores = {name: builtin(answer, task.expected, task) for name, builtin in BUILTIN_SCORERS.items()}
    return float(scorer(answer, task.expected, task)), {k: float(v) for k, v in scores.items()}
