"""Host tools: typed host functions called from model code as ordinary functions."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import trio

from tests.engine.engine_harness import fence, local_options
from rlm_host.api import HostTool, run_rlm
from rlm_host.trajectory import ChildStart, ToolCall, read_trajectory
from tests.scripted_model import ChatRequest, ScriptedModel


class Doc(msgspec.Struct):
    title: str
    score: float


def search_docs(query: str, k: int = 2) -> list[Doc]:
    """Search the documentation; return the best k hits.

    More text that the prompt leaves out.
    """
    return [Doc(title=f"{query} #{i}", score=1.0 / (i + 1)) for i in range(k)]


def explode(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"no luck with {reason}")


def hang_forever() -> None:
    """Never returns (its thread is abandoned at the timeout)."""
    threading.Event().wait()


def secret() -> str:
    """Only for the root."""
    return "root only"


ROOT_CODE = """
hits = search_docs("trio", k=3)
SHOW_VARS()
errors = []
for attempt in (lambda: explode("x"), lambda: search_docs({1, 2}), lambda: search_docs(7),
                lambda: search_docs(), lambda: hang_forever(), lambda: host_call("os_system", {"cmd": "id"}),
                lambda: host_call("tool", {"name": "open", "args": ["/etc/passwd"], "kwargs": {}})):
    try:
        attempt()
        errors.append("no error")
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
Final = {"hits": hits, "errors": errors, "after": search_docs("still works", k=1)[0]["title"]}
"""


async def test_tool_results_and_failures_in_the_guest(trajectory: Path) -> None:
    tools: list[Callable[..., Any] | HostTool] = [search_docs, explode, HostTool(hang_forever, timeout=0.5)]
    with ScriptedModel(lambda request: fence(ROOT_CODE)) as server:
        result = await run_rlm("task", options=local_options(server.url, trajectory, host_tools=tools))
    assert result.value is not None, result.detail
    assert result.value["hits"] == [{"title": f"trio #{i}", "score": 1.0 / (i + 1)} for i in range(3)]
    raised, non_json, wrong_type, missing, timed_out, unknown_method, unknown_tool = result.value["errors"]
    assert raised == "HostCallFailed: ValueError: no luck with x"
    assert non_json.startswith("TypeError: search_docs(): arguments must be JSON values")
    assert wrong_type.startswith("HostCallFailed: ToolArgumentError: search_docs(): argument 'query': Expected `str`, got `int`")
    assert "missing a required argument: 'query'" in missing
    assert timed_out == "HostCallFailed: ToolTimeout: hang_forever() did not return within 0.5 s"
    assert unknown_method == "HostCallFailed: ValueError: unknown host call 'os_system'"
    assert unknown_tool.startswith("HostCallFailed: UnknownTool: no host tool named 'open'")
    assert result.value["after"] == "still works #0"

    (request,) = server.requests()
    assert request.system is not None
    assert f"`search_docs(query: str, k: int = 2) -> list[{__name__}.Doc]`: Search the documentation" in request.system
    assert "More text" not in request.system
    events = read_trajectory(trajectory)
    calls = [e for e in events if isinstance(e, ToolCall)]
    # The non-JSON argument never left the guest; the ill-typed ones were refused on the host.
    assert [c.name for c in calls] == ["search_docs", "explode", "search_docs", "search_docs", "hang_forever", "search_docs"]
    assert calls[0].result == result.value["hits"] and calls[1].error == "ValueError: no luck with x"
    assert calls[2].error is not None and calls[2].error.startswith("ToolArgumentError")


SHOW_CODE = "SHOW_VARS()"


async def test_tools_are_hidden_from_show_vars(trajectory: Path) -> None:
    def script(request: ChatRequest) -> str:
        return fence("x = 1\nSHOW_VARS()") if request.turn == 0 else fence("Final = 'done'")

    with ScriptedModel(script) as server:
        await run_rlm("task", options=local_options(server.url, trajectory, host_tools=[search_docs]))
    observation = server.requests()[1].last_user
    assert "x: int" in observation and "search_docs" not in observation


CHILD_CODE = 'Final = rlm_query("child: go deeper")'
GRANDCHILD_CODE = 'Final = rlm_query("grandchild: use the tool")'
LEAF_CODE = """
try:
    hidden = secret()
except Exception as error:
    hidden = str(error)
Final = search_docs("deep", k=1)[0]["title"] + " / " + hidden
"""


def depth_script(request: ChatRequest) -> str:
    prefix = request.prompt_prefix
    if prefix.startswith("grandchild"):
        return fence(LEAF_CODE)
    if prefix.startswith("child"):
        return fence(GRANDCHILD_CODE)
    return fence(CHILD_CODE)


async def test_a_tool_called_at_depth_two(trajectory: Path) -> None:
    tools: list[Callable[..., Any] | HostTool] = [search_docs, HostTool(secret, children=False)]
    with ScriptedModel(depth_script) as server:
        result = await run_rlm("root", options=local_options(server.url, trajectory, host_tools=tools, max_depth=3))
    assert result.answer == "deep #0 / name 'secret' is not defined"
    events = read_trajectory(trajectory)
    assert [e.rlm for e in events if isinstance(e, ToolCall)] == ["0.1.1"]
    assert {e.rlm for e in events if isinstance(e, ChildStart)} == {"0.1", "0.1.1"}
    grandchild = next(r for r in server.requests() if r.prompt_prefix.startswith("grandchild"))
    assert grandchild.system is not None
    assert "search_docs(" in grandchild.system and "secret(" not in grandchild.system


BATCH_CODE = 'Final = rlm_query_batched([f"child {i}" for i in range(8)])'


async def test_eight_batched_children_call_a_tool_at_once(trajectory: Path) -> None:
    arrived = 0
    all_here = trio.Event()

    async def rendezvous(name: str) -> int:
        """Returns once eight callers are waiting: proof that the calls overlap."""
        nonlocal arrived
        arrived += 1
        if arrived == 8:
            all_here.set()
        await all_here.wait()
        return int(name.split()[-1])

    def script(request: ChatRequest) -> str:
        prefix = request.prompt_prefix
        if prefix.startswith("child"):
            return fence(f"Final = str(rendezvous({prefix!r}) * 10)")
        return fence(BATCH_CODE)

    with ScriptedModel(script) as server, trio.fail_after(120):
        result = await run_rlm(
            "root", options=local_options(server.url, trajectory, host_tools=[HostTool(rendezvous, timeout=100)])
        )
    assert result.value == [str(i * 10) for i in range(8)]
    calls = [e for e in read_trajectory(trajectory) if isinstance(e, ToolCall)]
    assert len(calls) == 8 and all(c.error is None for c in calls)


TOOL_MODULE = '''
def word_count(text: str) -> int:
    """Count the words of text."""
    return len(text.split())
'''

RUN_APP = (
    "import typer; from rlm_host.cli_run import run; "
    "app = typer.Typer(); app.command()(run); app()"
)


async def test_cli_tool_option_imports_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "mytools.py").write_text(TOOL_MODULE)

    def script(request: ChatRequest) -> str:
        assert request.system is not None and "`word_count(text: str) -> int`: Count the words" in request.system
        return fence('Final = word_count("one two three")')

    with ScriptedModel(script) as server:
        done = await trio.run_process(
            [sys.executable, "-c", RUN_APP, "--query", "count", "--tool", "mytools:word_count",
             "--isolation", "local", "--llm-url", server.url, "--json",
             "--trajectory", str(tmp_path / "t.jsonl")],
            capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": ""},
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answer"] == "3"
    bad = await trio.run_process(
        [sys.executable, "-c", RUN_APP, "--query", "q", "--tool", "nosuchmodule:f", "--isolation", "local"],
        capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path,
    )
    assert bad.returncode == 2 and b"cannot import nosuchmodule" in bad.stderr
