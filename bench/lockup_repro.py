"""Reproduce the restore lockup: a start right after an ``rlm exec`` that was SIGKILLed.

    uv run python bench/lockup_repro.py [--rounds 30] [--mode spin-kill|idle-kill|spin-int|none]

Each round does what ``tests/security/test_cli_exits.py::test_signals_mid_block_leave_no_qemu``
does: ``rlm exec`` of a block that announces itself on the guest console and then runs
(``spin``: ``while True: pass``; ``idle``: ``time.sleep``), a signal to the CLI once the block
runs (``kill``: SIGKILL, QEMU dies by PDEATHSIG; ``int``: SIGINT, a clean end; ``none``: no
first command at all), then ``rlm exec -c "print('next')"``. One line per round: ``ok`` with
the second command's seconds, or ``LOCKUP`` with the host's error (report, vCPU registers,
console tail) written to ``--out``/round-<n>.txt.

Found with it (docs/decisions.md, bench/results/restore_lockup.txt): the kill does not matter, a
plain start (``--mode none``) locked up too, on a loaded host; the cause was the kernel rewriting
its memory-cgroup static keys right after the restore.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CLI = "from rlm_host.cli import main; main()"


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _qemu_of(cli: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cli.poll() is not None:
            raise RuntimeError(f"the first command ended: {cli.communicate()}")
        for child in _children(cli.pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            sock = next((a for a in cmdline if b"agent.sock" in a), None)
            if sock is not None:
                return child, Path(sock.decode().split("path=")[1].split(",")[0]).parent
        time.sleep(0.05)
    raise RuntimeError("the first command started no QEMU")


def first_command(mode: str, round_no: int) -> None:
    block, how = mode.split("-")
    marker = f"rlm-repro-running-{round_no}"
    body = "while True: pass" if block == "spin" else "import time; time.sleep(1000)"
    cli = subprocess.Popen(
        [sys.executable, "-c", CLI, "exec", "-c", f"open('/dev/console', 'w').write('{marker}\\n')\n{body}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    qemu, run_dir = _qemu_of(cli)
    console = run_dir / "console.log"
    deadline = time.monotonic() + 300
    while not (console.exists() and marker.encode() in console.read_bytes()):
        if cli.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the block did not start: {cli.communicate()}")
        time.sleep(0.05)
    cli.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    cli.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while _alive(qemu) and time.monotonic() < deadline:
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--mode", default="spin-kill", choices=["spin-kill", "idle-kill", "spin-int", "none"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/lockup-repro"))
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)
    lockups = 0
    for round_no in range(options.rounds):
        if options.mode != "none":
            first_command(options.mode, round_no)
        started = time.monotonic()
        after = subprocess.run([sys.executable, "-c", CLI, "exec", "-c", "print('next')"], capture_output=True, timeout=600)
        took = time.monotonic() - started
        if (after.returncode, after.stdout) == (0, b"next\n"):
            print(round_no, "ok", f"{took:.2f}", flush=True)
            continue
        locked = b"locked up" in after.stderr
        lockups += locked
        (options.out / f"round-{round_no}.txt").write_bytes(after.stderr)
        print(round_no, "LOCKUP" if locked else f"FAILED {after.returncode}", f"{took:.2f}",
              after.stderr.decode(errors="replace").splitlines()[-1:] if not locked else "", flush=True)
    print(f"{options.mode}: {lockups} lockups in {options.rounds} rounds (load {os.getloadavg()[0]:.1f})", flush=True)
    return 1 if lockups else 0


if __name__ == "__main__":
    sys.exit(main())
