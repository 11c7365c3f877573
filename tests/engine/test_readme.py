"""The embedding example of rlm-host's README runs as written."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import trio

from engine_harness import fence
from scripted_model import ScriptedModel

README = Path(__file__).parents[2] / "packages" / "rlm-host" / "README.md"


def embedding_example() -> str:
    section = README.read_text().split("## Embedding", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the README lost its embedding example"
    return match.group(1)


async def test_readme_embedding_example(tmp_path: Path) -> None:
    with ScriptedModel(lambda request: fence("Final = 6 * 7")) as server:
        done = await trio.run_process(
            [sys.executable, "-c", embedding_example()],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "RLM_LLM_URL": server.url, "XDG_STATE_HOME": str(tmp_path)},
        )
    assert done.returncode == 0, done.stderr
    answer, tokens, trajectory = done.stdout.decode().split()
    assert answer == "42" and int(tokens) > 0 and Path(trajectory).exists()
