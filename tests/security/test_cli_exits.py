"""Every way the CLI can end leaves no QEMU behind; a killed ``rlm run`` leaves a readable
trajectory. The CLI runs as a user runs it: a subprocess of ``rlm_host.cli:main``, with the VM.

QEMU is found as the CLI process's child (``/proc/<pid>/task/*/children``), so the test knows
exactly which QEMU belongs to the command it started, even with other VMs on the machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlm_host.trajectory import read_trajectory
from rlm_host.vm import VMConfig

from tests.scripted_model import ChatRequest, ScriptedModel

pytestmark = pytest.mark.vm

CLI = "from rlm_host.cli import main; main()"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )


def _wait_for_qemu(cli: subprocess.Popen[bytes], timeout: float = 600) -> tuple[int, Path]:
    """QEMU's pid and run directory once the command's VM is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert cli.poll() is None, cli.communicate()
        for child in _children(cli.pid):
            if _comm(child).startswith("qemu-system"):
                # Only the VM has an agent socket: the command also runs short-lived QEMUs of
                # its own (the accelerator probe, version queries), which are not the VM.
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                sock = next((a for a in cmdline if b"agent.sock" in a), None)
                if sock is None:
                    continue
                run_dir = Path(sock.decode().split("path=")[1].split(",")[0]).parent
                return child, run_dir
        time.sleep(0.05)
    raise AssertionError("the command started no QEMU")


def _wait_for_console(cli: subprocess.Popen[bytes], console: Path, marker: str) -> None:
    """Until ``marker`` is on the guest's console (the test's time limit bounds a hang)."""
    while not (console.exists() and marker.encode() in console.read_bytes()):
        assert cli.poll() is None, cli.communicate()
        time.sleep(0.05)


def _assert_no_qemu_left(qemu: int, run_dir: Path, *, run_dir_removed: bool = True) -> None:
    deadline = time.monotonic() + 10
    while _alive(qemu) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(qemu), f"QEMU {qemu} outlived its CLI"
    if run_dir_removed:
        assert not run_dir.exists(), f"{run_dir} was left behind"


def test_normal_and_error_exits_leave_no_qemu(vm_config: VMConfig) -> None:
    for code, status in (("print('done')", 0), ("raise ValueError('x')", 1)):
        cli = _start("exec", "-c", f"import time; time.sleep(3); {code}")
        qemu, run_dir = _wait_for_qemu(cli)
        out, err = cli.communicate(timeout=600)
        assert cli.returncode == status, err
        _assert_no_qemu_left(qemu, run_dir)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_signals_mid_block_leave_no_qemu(vm_config: VMConfig, signum: signal.Signals) -> None:
    # The block announces itself on the guest's console (QEMU writes it to the run directory's
    # console.log), so the signal is sent once the block runs, not after a guessed delay.
    marker = f"rlm-block-running-{signum.name}"
    cli = _start("exec", "-c", f"open('/dev/console', 'w').write('{marker}\\n')\nwhile True: pass")
    qemu, run_dir = _wait_for_qemu(cli)
    _wait_for_console(cli, run_dir / "console.log", marker)
    sent = time.monotonic()
    cli.send_signal(signum)
    out, err = cli.communicate(timeout=60)
    ended = time.monotonic() - sent
    print(f"\n[figure] rlm exec ended {ended:.2f} s after {signum.name}, status {cli.returncode}")
    expected = {signal.SIGINT: 130, signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGKILL: -signal.SIGKILL}
    assert cli.returncode == expected[signum], err
    # SIGKILL cannot clean up: QEMU dies through PDEATHSIG, the run directory is swept by the
    # next VM start.
    _assert_no_qemu_left(qemu, run_dir, run_dir_removed=signum is not signal.SIGKILL)
    if signum is signal.SIGKILL:
        assert run_dir.exists()
        next_exec = [sys.executable, "-c", CLI, "exec", "-c", "print('next')"]
        after = subprocess.run(next_exec, capture_output=True, timeout=600)
        assert (after.returncode, after.stdout) == (0, b"next\n"), after.stderr
        assert not run_dir.exists(), f"the next VM start left {run_dir} behind"


def _slow_model(request: ChatRequest) -> str:
    return "Next step.\n```python\nimport time\nprint('working')\ntime.sleep(1000)\n```\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_killed_run_leaves_a_readable_trajectory_and_no_qemu(
    vm_config: VMConfig, tmp_path: Path, signum: signal.Signals
) -> None:
    trajectory = tmp_path / "run.jsonl"
    (tmp_path / "task.txt").write_text("a task\n")
    with ScriptedModel(_slow_model) as server:
        cli = _start(
            "run", str(tmp_path / "task.txt"), "--llm-url", server.url, "--model", "m",
            "--trajectory", str(trajectory), "--block-timeout", "600",
        )
        qemu, run_dir = _wait_for_qemu(cli)
        deadline = time.monotonic() + 300
        while b'"event":"block"' not in (trajectory.read_bytes() if trajectory.exists() else b""):
            assert time.monotonic() < deadline and cli.poll() is None, cli.communicate()
            time.sleep(0.1)
        # The block event is written when the block has started: it is running now.
        cli.send_signal(signum)
        cli.communicate(timeout=60)
    _assert_no_qemu_left(qemu, run_dir, run_dir_removed=signum is not signal.SIGKILL)
    events = read_trajectory(trajectory)
    kinds = [type(e).__name__ for e in events]
    print(f"\n[figure] trajectory after {signum.name}: {kinds}")
    assert kinds[0] == "RunStart" and "BlockRun" in kinds
