"""The real ``rlm`` app as a user types it: its command wiring, ``rlm exec``, ``rlm run``'s flags,
``rlm doctor``, and the accelerator probe behind them.

Every command runs as a subprocess of ``rlm_host.cli.main`` (the ``rlm`` script's entry point)
against the scripted model server, with the guest as a local subprocess; the commands that need
the VM use the session's image (``vm_config``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlm_host.cli import app
from rlm_host.cli_exit import EXIT_ERROR
from rlm_host.cli_guest import LOCAL_WARNING
from rlm_host.isolation import Isolation
from rlm_host.llm import Api
from rlm_host.trajectory import ChildStart, RunStart, read_trajectory
from rlm_host.vm import VMConfig
from rlm_host.vm.accel import probe_accel
from tests.scripted_model import ChatRequest, Hang, Outcome, ScriptedModel

RLM = [sys.executable, "-c", "from rlm_host.cli import main; main()"]
COMMANDS = ["exec", "run", "view", "chat", "image", "doctor", "bench", "batch", "conformance"]


def fence(code: str) -> str:
    """A model reply with one fenced python block."""
    return f"Next step.\n```python\n{code}\n```\n"


def rlm(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*RLM, *args], input=stdin, capture_output=True, env={**os.environ, **(env or {})},
        cwd=cwd, timeout=600,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_wired_into_the_app(command: str) -> None:
    listing = CliRunner().invoke(app, ["--help"])
    assert listing.exit_code == 0 and command in listing.output
    done = CliRunner().invoke(app, [command, "--help"])
    assert done.exit_code == 0, done.output


def _choices(command: str, option: str) -> list[str]:
    """The values ``rlm <command> --help`` lists for ``option`` (as ``<a|b>``)."""
    done = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    found = re.search(rf"{option}\s+<([^>]+)>", done.output)
    assert found is not None, done.output
    return found.group(1).split("|")


@pytest.mark.parametrize(
    ("command", "option"),
    [("exec", "--isolation"), ("run", "--isolation"), ("chat", "--isolation"), ("batch", "--isolation"),
     ("run", "--api"), ("run", "--sub-api"), ("chat", "--api"), ("batch", "--api"), ("batch", "--sub-api")],
)
def test_guest_and_api_choices_are_the_library_types(command: str, option: str) -> None:
    # Each command once had its own copy of these choices, free to drift from what the library takes.
    expected = [member.value for member in Isolation] if option == "--isolation" else list(typing.get_args(Api))
    assert _choices(command, option) == expected


def test_every_command_that_runs_code_outside_the_vm_says_so_in_the_same_words(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("")
    local = ["--isolation", "local", "--llm-url", "http://127.0.0.1:9", "--model", "m"]
    runs = {
        "exec": rlm("exec", "--isolation", "local", "-c", "pass"),
        "run": rlm("run", *local, "--query", "q", "--llm-retries", "0"),
        "chat": rlm("chat", *local),
        "batch": rlm("batch", str(tasks), "-o", str(tmp_path / "out.jsonl"), *local),
    }
    for command, done in runs.items():
        assert LOCAL_WARNING.encode() in done.stderr.splitlines(), (command, done.stderr)
    # An error of rlm itself is exit status 2 and one ``rlm:`` line, whichever command met it.
    assert runs["run"].returncode == EXIT_ERROR and b"rlm: " in runs["run"].stderr
    failed = {
        "view": rlm("view", str(tmp_path / "missing.jsonl")),
        "batch": rlm("batch", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out2.jsonl")),
    }
    for command, done in failed.items():
        assert done.returncode == EXIT_ERROR and done.stderr.startswith(b"rlm: "), (command, done.stderr)


# --- rlm exec --------------------------------------------------------------------------------


def test_exec_local_python_bash_file_and_stdin(tmp_path: Path) -> None:
    local = ["--isolation", "local"]
    python = rlm("exec", *local, "-c", "print(6 * 7)")
    assert (python.returncode, python.stdout) == (0, b"42\n"), python.stderr
    assert b"unsandboxed" in python.stderr
    bash = rlm("exec", *local, "-l", "bash", "-c", "echo $((6 * 7)) from $0")
    assert (bash.returncode, bash.stdout) == (0, b"42 from /bin/sh\n"), bash.stderr
    block = tmp_path / "block.py"
    block.write_text("import sys\nprint('from a file', file=sys.stderr)\n")
    from_file = rlm("exec", *local, str(block))
    assert from_file.returncode == 0 and b"from a file\n" in from_file.stderr
    from_stdin = rlm("exec", *local, "-", stdin=b"print('from stdin')\n")
    assert (from_stdin.returncode, from_stdin.stdout) == (0, b"from stdin\n"), from_stdin.stderr


def test_exec_failures_and_timeout_are_exit_statuses(tmp_path: Path) -> None:
    local = ["--isolation", "local"]
    raised = rlm("exec", *local, "-c", "raise ValueError('no')")
    assert raised.returncode == 1 and b"ValueError: no" in raised.stderr
    status = rlm("exec", *local, "-l", "bash", "-c", "exit 3")
    assert status.returncode == 1
    stopped = rlm("exec", *local, "--timeout", "1", "-c", "import time; time.sleep(3600)")
    assert stopped.returncode == 1 and b"the block was interrupted" in stopped.stderr
    neither = rlm("exec", *local)
    assert neither.returncode == 2 and b"exactly one of -c CODE or FILE" in neither.stderr
    language = rlm("exec", *local, "-l", "ruby", "-c", "puts 1")
    assert language.returncode == 2 and b"python or bash" in language.stderr


def test_exec_in_the_vm_takes_memory_and_network(vm_config: VMConfig) -> None:
    code = (
        "import os\n"
        "kib = int(open('/proc/meminfo').readline().split()[1])\n"
        "print(kib // 1024, sorted(os.listdir('/sys/class/net')))\n"
    )
    plain = rlm("exec", "--memory-mb", "700", "-c", code)
    assert plain.returncode == 0, plain.stderr
    mib, interfaces = plain.stdout.decode().split(" ", 1)
    assert 500 < int(mib) <= 700 and interfaces.strip() == "['lo']"
    networked = rlm("exec", "--network", "-c", code)
    assert networked.returncode == 0, networked.stderr
    assert networked.stdout.decode().split(" ", 1)[1].strip() == "['eth0', 'lo']"


# --- rlm run: the flags as typed ---------------------------------------------------------------


def test_run_flags_reach_the_run(tmp_path: Path) -> None:
    task = tmp_path / "task.txt"
    task.write_text("the task\n")
    trajectory = tmp_path / "run.jsonl"
    together = threading.Barrier(2, timeout=60)  # --concurrency 2: two leaf calls at once

    def script(request: ChatRequest) -> str:
        if request.is_leaf:
            if request.last_user != "e":
                together.wait()
            return "leaf " + request.last_user
        return fence("Final = ' '.join(llm_query_batched(['a', 'b', 'c', 'd']) + [rlm_query('e')])")

    with ScriptedModel(script) as server:
        done = rlm(
            "run", str(task), "--isolation", "local", "--llm-url", server.url, "--model", "m",
            "--stream", "--max-depth", "1", "--max-model-calls", "9", "--max-seconds", "300",
            "--concurrency", "2", "--context-tokens", "50000",
            "--trajectory", str(trajectory),
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"leaf a leaf b leaf c leaf d leaf e\n"
    assert all(request.stream for request in server.requests())  # --stream
    assert server.max_in_flight() == 2  # --concurrency
    events = read_trajectory(trajectory)
    start = events[0]
    assert isinstance(start, RunStart)
    assert {k: start.options[k] for k in ("max_depth", "max_model_calls", "max_seconds", "concurrency", "context_tokens", "stream")} == {
        "max_depth": 1, "max_model_calls": 9, "max_seconds": 300.0, "concurrency": 2,
        "context_tokens": 50000, "stream": True,
    }
    # --max-depth 1: rlm_query is a plain call.
    assert [c.kind for c in events if isinstance(c, ChildStart) and c.method == "rlm_query"] == ["leaf"]


SLOW_TOOL = '''
import time

def slow() -> str:
    """Take far longer than --tool-timeout allows."""
    time.sleep(3600)
    return "never"
'''


def test_tool_timeout_is_what_model_code_sees(tmp_path: Path) -> None:
    (tmp_path / "slowtools.py").write_text(SLOW_TOOL)
    task = tmp_path / "task.txt"
    task.write_text("the task\n")
    code = "try:\n    slow()\nexcept Exception as error:\n    Final = str(error)"
    with ScriptedModel(lambda request: fence(code)) as server:
        done = rlm(
            "run", str(task), "--isolation", "local", "--llm-url", server.url, "--model", "m",
            "--tool", "slowtools:slow", "--tool-timeout", "0.5", "--trajectory", str(tmp_path / "run.jsonl"),
            env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
        )
    assert done.returncode == 0, done.stderr
    assert b"slow() did not return within 0.5 s" in done.stdout


def _never_final(request: ChatRequest) -> Outcome:
    return fence("print('still looking')")


def _hang(request: ChatRequest) -> Outcome:
    return Hang()


@pytest.mark.parametrize(
    ("flags", "script", "reason"),
    [
        (["--max-model-calls", "2"], _never_final, "max_model_calls"),
        (["--max-seconds", "1"], _hang, "wall_time"),
        (["--max-steps", "2"], _never_final, "max_steps"),
    ],
    ids=["max-model-calls", "max-seconds", "max-steps"],
)
def test_run_budget_flags_stop_the_run(tmp_path: Path, flags: list[str], script: object, reason: str) -> None:
    task = tmp_path / "task.txt"
    task.write_text("the task\n")
    with ScriptedModel(script) as server:  # type: ignore[arg-type]
        done = rlm("run", str(task), "--isolation", "local", "--llm-url", server.url, "--model", "m",
                   "--trajectory", str(tmp_path / "run.jsonl"), *flags)
    assert done.returncode == 3, done.stderr
    assert f"stopped without an answer ({reason})".encode() in done.stderr
    assert done.stdout == b""


def test_the_block_timeout_is_an_observation_and_the_run_goes_on(tmp_path: Path) -> None:
    task = tmp_path / "task.txt"
    task.write_text("the task\n")

    def script(request: ChatRequest) -> str:
        if request.turn == 0:
            return fence("import time\ntime.sleep(3600)")
        assert "interrupted" in request.last_user, request.last_user
        return fence("Final = 'after the timeout'")

    with ScriptedModel(script) as server:
        done = rlm("run", str(task), "--isolation", "local", "--llm-url", server.url, "--model", "m",
                   "--trajectory", str(tmp_path / "run.jsonl"), "--block-timeout", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"after the timeout\n"
    assert len(server.requests()) == 2


# --- rlm doctor and the accelerator probe ------------------------------------------------------


def test_doctor_names_what_is_missing_and_the_fix(tmp_path: Path) -> None:
    # A port nothing listens on: the model-server check fails, with its fix.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    done = rlm("doctor", "--json", env={"OLLAMA_HOST": closed, "RLM_ACCEL": "tcg"})
    checks = {check["name"]: check for check in json.loads(done.stdout)}
    assert {"qemu", "accelerator", "cache", "image", "model server"} <= set(checks)
    assert checks["accelerator"]["ok"] and "forced by RLM_ACCEL" in checks["accelerator"]["detail"]
    assert not checks["model server"]["ok"] and "ollama serve" in checks["model server"]["fix"]
    assert done.returncode == 1
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    missing = rlm("doctor", "--json", env={"XDG_CACHE_HOME": str(empty), "RLM_ACCEL": "tcg"})
    image = next(c for c in json.loads(missing.stdout) if c["name"] == "image")
    assert not image["ok"] and image["fix"] == "uv run rlm image build"


def _fake_qemu(tmp_path: Path, body: str) -> Path:
    """A stand-in for qemu-system-x86_64 that counts its runs in ``runs``."""
    script = tmp_path / "qemu-system-x86_64"
    script.write_text(f"#!/bin/sh\necho run >> {tmp_path / 'runs'}\n{body}\n")
    script.chmod(0o755)
    return script


def _runs(tmp_path: Path) -> int:
    runs = tmp_path / "runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_accel_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    qemu = _fake_qemu(tmp_path, "exit 1")
    for name in ("tcg", "kvm"):
        monkeypatch.setenv("RLM_ACCEL", name)
        choice = probe_accel(qemu=str(qemu))
        assert (choice.name, choice.reason) == (name, "forced by RLM_ACCEL")
    assert _runs(tmp_path) == 0  # no probe ran


def test_accel_probe_failure_is_tcg_and_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLM_ACCEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    qemu = _fake_qemu(tmp_path, "echo 'failed to set MSR 0x10a' >&2; exit 1")
    first = probe_accel(qemu=str(qemu))
    assert first.name == "tcg" and first.reason.startswith("KVM unusable")
    assert first.qemu_args[:2] == ["-accel", "tcg,thread=multi"]
    probes = _runs(tmp_path)  # 0 where /dev/kvm is missing: then no guest is even tried
    again = probe_accel(qemu=str(qemu))
    assert (again.name, again.reason) == ("tcg", first.reason + " (cached)")
    assert _runs(tmp_path) == probes and (tmp_path / "cache" / "rlm" / "accel.json").exists()
    refreshed = probe_accel(qemu=str(qemu), refresh=True)
    assert (refreshed.name, refreshed.reason) == ("tcg", first.reason)
    assert _runs(tmp_path) == 2 * probes


@pytest.mark.timeout(120)
def test_accel_probe_of_a_hanging_qemu_is_tcg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLM_ACCEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    qemu = _fake_qemu(tmp_path, "exec sleep 3600")
    assert probe_accel(qemu=str(qemu)).name == "tcg"


def test_accel_without_qemu_is_tcg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RLM_ACCEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    choice = probe_accel()
    assert choice.name == "tcg" and "not found" in choice.reason


# --- rlm batch: the flags of a re-run -----------------------------------------------------------

SCORER = '''
def half(answer, expected, task=None):
    """Half a point for any answer (to see that this scorer, not a built-in one, scored)."""
    return 0.5
'''


def test_batch_overwrite_scorer_and_trajectories(tmp_path: Path) -> None:
    tasks, results, folder = tmp_path / "tasks.jsonl", tmp_path / "results.jsonl", tmp_path / "runs"
    tasks.write_text("".join(json.dumps({"id": key, "text": "What is 6 * 7?", "expected": "42"}) + "\n" for key in ("a", "b")))
    (tmp_path / "myscoring.py").write_text(SCORER)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with ScriptedModel(lambda request: fence("Final = '42'")) as server:
        command = ["batch", str(tasks), "-o", str(results), "--isolation", "local", "--llm-url", server.url, "--model", "m"]
        first = rlm(*command, "--scorer", "exact", env=env)
        assert first.returncode == 0, first.stderr
        assert {line["id"]: line["score"] for line in map(json.loads, results.read_text().splitlines())} == {"a": 1.0, "b": 1.0}
        refused = rlm(*command, env=env)
        assert refused.returncode == 2 and b"--overwrite" in refused.stderr
        again = rlm(*command, "--overwrite", "--scorer", "myscoring:half", "--trajectories", str(folder), env=env)
    assert again.returncode == 0, again.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == ["a", "b"]  # started afresh, not appended
    assert {line["score"] for line in lines} == {0.5}
    assert all(Path(line["trajectory"]).parent == folder for line in lines)
    assert sorted(path.name for path in folder.glob("*.jsonl")) == ["a.jsonl", "b.jsonl"]


# --- rlm image ---------------------------------------------------------------------------------


def test_image_info_and_a_build_that_finds_the_cache(vm_config: VMConfig) -> None:
    from rlm_host.vm import find_image

    manifest = find_image().manifest
    info = rlm("image", "info", "--json")
    assert info.returncode == 0, info.stderr
    shown = json.loads(info.stdout)
    assert (shown["hash"], shown["kernel_release"]) == (manifest.hash, manifest.kernel_release)
    # The session's image is built: a build finds it in the cache instead of building again.
    build = rlm("image", "build")
    assert build.returncode == 0, build.stderr
    assert find_image().manifest.hash == manifest.hash
    missing = rlm("image", "info", env={"XDG_CACHE_HOME": "/nonexistent-rlm-cache"})
    assert missing.returncode != 0 and b"rlm image build" in missing.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_command_started_with_sigint_ignored_still_stops_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    # As a shell script's `rlm ... &` starts it: SIGINT ignored, inherited across exec.
    started = tmp_path / "started"
    block = f"open({str(started)!r}, 'w').close()\nimport time\ntime.sleep(3600)"
    cli = subprocess.Popen(
        [*RLM, "exec", "--isolation", "local", "-c", block], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    while not started.exists():  # the block runs (the test's time limit bounds a hang)
        assert cli.poll() is None, cli.communicate()
        time.sleep(0.05)
    cli.send_signal(signum)
    try:
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum], err


# --- rlm bench -------------------------------------------------------------------------------


@pytest.mark.timeout(900)
def test_bench_runs_the_engine_workloads_and_writes_its_results(vm_config: VMConfig, tmp_path: Path) -> None:
    """``rlm bench`` as typed: the engine part, quick, into a file of the test's own (never the
    committed bench/results/latest.json). Its figures are not judged, only that they are there."""
    out = tmp_path / "bench.json"
    done = rlm("bench", "--quick", "--only", "engine", "--json", "--output", str(out))
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    printed = json.loads(done.stdout)
    assert json.loads(out.read_text()) == printed
    ours = printed["engine"]["ours"]
    assert printed["machine"]["accel"] in ("kvm", "tcg") and printed["quick"] is True
    for row in ("step_overhead", "children_8", "leaves_8", "fanout_16mib", "fanout_64kib"):
        assert isinstance(ours[row], float) and ours[row] > 0, (row, ours)
    assert "vm" not in printed and "boot" not in printed
