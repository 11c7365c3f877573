"""``--guest-command``: ``rlm run``/``exec``/``batch`` with any guest speaking the protocol on stdio.

Both guests of this repository: the Python reference guest, and the JavaScript one
(``guests/node``) that has no Python, so the model gets the bash REPL of PROTOCOL.md 4.1 (the
prompt and ``Final`` as files, ``rlm_query`` as a command). The model is the scripted server.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.engine.engine_harness import fence
from tests.scripted_model import ChatRequest, ScriptedModel

ROOT = Path(__file__).resolve().parents[2]
RELAY = ROOT / "tests" / "protocol" / "defective_guests" / "relay.py"
PYTHON_GUEST = shlex.join([sys.executable, "-m", "rlm_guest", "--stdio"])

#: Seconds any one command of these tests may take (a hang fails here, by name).
COMMAND_SECONDS = 120


def node_guest() -> str:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed: scripts/setup-system.sh installs Debian's nodejs")
        pytest.skip("node is not installed (scripts/setup-system.sh installs it)")
    return shlex.join([node, str(ROOT / "guests" / "node" / "agent.js")])


def app(module: str, command: str) -> str:
    if module == "rlm_host.cli":  # the real application, where ``exec`` lives
        return "from rlm_host.cli import app; app()"
    return f"import typer; from {module} import {command}; app = typer.Typer(); app.command()({command}); app.command('x')(lambda: None); app()"


async def rlm(module: str, command: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(COMMAND_SECONDS):
        return await trio.run_process(
            [sys.executable, "-c", app(module, command), command, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")},
        )


def python_script(request: ChatRequest) -> str:
    return fence("Final = prompt.splitlines()[0] + '|' + rlm_query('child')") if request.prompt_prefix != "child" else fence("Final = 'hi'")


def bash_script(request: ChatRequest) -> str:
    assert request.system is not None and "There is no Python here" in request.system
    if request.prompt_prefix == "child":
        return fence("printf hi > \"$RLM_VARS/Final\"", "bash")
    if request.turn == 0:
        # A Python block in a guest without Python is answered by the host, not run.
        return fence("print(prompt[:10])")
    assert "this sandbox has no Python" in request.last_user
    return fence(
        'rlm_query child > "$RLM_VARS/child"\n'
        'printf \'%s|%s\' "$(head -n1 "$RLM_VARS/prompt")" "$(cat "$RLM_VARS/child")" > "$RLM_VARS/Final"',
        "bash",
    )


@pytest.mark.parametrize("guest", ["python", "node"])
async def test_rlm_run_completes_with_each_guest(guest: str, tmp_path: Path) -> None:
    command, script = (PYTHON_GUEST, python_script) if guest == "python" else (node_guest(), bash_script)
    source = tmp_path / "notes.txt"
    source.write_text("first line of the notes\nsecond\n")
    with ScriptedModel(script) as server:
        done = await rlm(
            "rlm_host.cli_run", "run", str(source), "--llm-url", server.url, "--model", "m",
            "--guest-command", command, "--json", tmp_path=tmp_path,
        )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["answer"] == "first line of the notes|hi"
    assert b"rlm does not isolate it" in done.stderr
    # The root and the child RLM each asked the model (the node root twice: its Python block).
    roots = [r for r in server.requests() if r.prompt_prefix != "child"]
    assert len(roots) == (1 if guest == "python" else 2)
    assert any(r.prompt_prefix == "child" for r in server.requests())


async def test_a_guest_without_a_repl_is_refused_before_any_model_call(tmp_path: Path) -> None:
    # The reference guest behind a relay that hides Python: bash blocks, but no REPL at all.
    command = shlex.join([sys.executable, str(RELAY), "python_hidden"])
    with ScriptedModel(python_script) as server:
        done = await rlm(
            "rlm_host.cli_run", "run", "-q", "2+2?", "--llm-url", server.url, "--model", "m",
            "--guest-command", command, tmp_path=tmp_path,
        )
    assert done.returncode == 2
    assert b"cannot run an RLM: it has no REPL (neither exec.python nor exec.bash with repl.bash)" in done.stderr
    assert server.requests() == []


async def test_host_tools_are_refused_for_a_bash_repl(tmp_path: Path) -> None:
    with ScriptedModel(bash_script) as server:
        done = await rlm(
            "rlm_host.cli_run", "run", "-q", "2+2?", "--llm-url", server.url, "--model", "m",
            "--guest-command", node_guest(), "--tool", "json:dumps", tmp_path=tmp_path,
        )
    assert done.returncode == 2
    assert b"host tools (--tool) are Python functions" in done.stderr
    assert server.requests() == []


async def test_rlm_exec_with_a_guest_command(tmp_path: Path) -> None:
    done = await rlm(
        "rlm_host.cli", "exec", "-l", "bash", "-c", "echo from node", "--guest-command", node_guest(),
        tmp_path=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == b"from node\n" and b"rlm does not isolate it" in done.stderr
    refused = await rlm(
        "rlm_host.cli", "exec", "-c", "print(1)", "--guest-command", node_guest(), tmp_path=tmp_path,
    )
    assert refused.returncode == 2 and b"unsupported" in refused.stderr


async def test_rlm_batch_with_a_guest_command(tmp_path: Path) -> None:
    tasks, results = tmp_path / "tasks.jsonl", tmp_path / "results.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"t{i}", "text": f"answer {i}"}) + "\n" for i in range(3)))

    def script(request: ChatRequest) -> str:
        return fence('head -n1 "$RLM_VARS/prompt" | tr -d "\\n" > "$RLM_VARS/Final"', "bash")

    with ScriptedModel(script) as server:
        done = await rlm(
            "rlm_host.cli_batch", "batch", str(tasks), "-o", str(results), "--llm-url", server.url,
            "--model", "m", "--workers", "1", "--guest-command", node_guest(), tmp_path=tmp_path,
        )
    assert done.returncode == 0, done.stderr.decode()
    answers = {line["id"]: line["answer"] for line in map(json.loads, results.read_text().splitlines())}
    assert answers == {f"t{i}": f"answer {i}" for i in range(3)}
    assert b"rlm does not isolate it" in done.stderr
