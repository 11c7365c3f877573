"""A/B of the engine's host-side changes on one warm VM, the arms alternated in one process.

``python -m bench.engine_ab [ROUNDS]``: each round runs, in turn for arms A (before), B and C
(after), the bench's 8 batched children at 1 s model latency (the root's gap around the block
that makes them), 20 root steps with no model latency (host time per step, with its parts
from the trajectory and the scripted server's log on one clock), and 8 children over the 64 KiB
prompt cut in 8 pieces with no model latency (the bench's fan-out row). Arm A closes each finished
child's session at once (``HELD_CLOSES = 0``, the code before); arm B holds the closes until the
parent's block has ended (``rlm_host.engine.held_closes``); arm C also opens each child's session
once its parent's burst of host calls has gone quiet (``rlm_host.engine.call_burst``).
Alternating on one VM puts the arms under the same load, which on a shared 2-core TCG machine
moves absolute times 2-3x.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from rlm_host.api import run_rlm
from rlm_host.connection import GuestConnection
from rlm_host.engine import call_burst, held_closes
from rlm_host.trajectory import read_trajectory
from rlm_host.vm.connect import prepare_vm_config
from rlm_host.vm.qemu import open_vm

from .engine import _options
from .vm_bench import prompt_text
from .workload import Script, Workload, root_gaps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.scripted_model import ScriptedModel  # noqa: E402

#: Per arm: (sessions held per parent, seconds a child's open waits for its parent to go quiet).
ARMS = {
    "A": (0, 0.0),
    "B": (held_closes.HELD_CLOSES, 0.0),
    "C": (held_closes.HELD_CLOSES, call_burst.QUIET_SECONDS),
}


def _arm(arm: str) -> None:
    held_closes.HELD_CLOSES, call_burst.QUIET_SECONDS = ARMS[arm]  # type: ignore[misc]


async def _children(conn: GuestConnection, prompt: str, tmp: Path) -> float:
    script = Script(Workload("children", fanout=8, latency=1.0))
    with ScriptedModel(script, latency=1.0) as server:
        result = await run_rlm(prompt, options=_options(server.url, tmp, max_steps=18, max_depth=2), connection=conn)
        assert result.answer == "done", (result.stop_reason, result.detail)
        return root_gaps(server.log, script)[0]


async def _fanout(conn: GuestConnection, prompt: str, tmp: Path) -> float:
    """8 children over ``prompt`` cut in 8 pieces, no model latency: where a child's session
    cannot open beside a slow first request (the step after the prompt was bound)."""
    script = Script(Workload("fanout", fanout=8))
    with ScriptedModel(script) as server:
        result = await run_rlm(prompt, options=_options(server.url, tmp, max_steps=18, max_depth=2), connection=conn)
        assert result.answer == "done", (result.stop_reason, result.detail)
        return root_gaps(server.log, script)[1]


async def _steps(conn: GuestConnection, prompt: str, tmp: Path) -> list[tuple[float, float, float, float]]:
    """Per step: (gap, server's reply end to ModelResponse, BlockRun to Observation, ModelRequest
    to the server's start), seconds."""
    offset = time.time() - time.monotonic()  # the server logs monotonic time, the trajectory Unix time
    script = Script(Workload("steps", steps=20))
    with ScriptedModel(script) as server:
        options = _options(server.url, tmp, max_steps=22, max_depth=2)
        result = await run_rlm(prompt, options=options, connection=conn)
        assert result.answer == "done", (result.stop_reason, result.detail)
        roots = sorted((r for r in server.log if r.request is not None and id(r.request) in script.roots),
                       key=lambda r: r.start)
    assert options.trajectory_path is not None
    ts: dict[str, list[float]] = {}
    for event in read_trajectory(options.trajectory_path):
        if event.rlm == "0":
            ts.setdefault(type(event).__name__, []).append(event.ts - offset)
    rows = []
    for i in range(len(ts["Observation"])):
        before, after = roots[i], roots[i + 1]
        rows.append((after.start - before.end, ts["ModelResponse"][i] - before.end,
                     ts["Observation"][i] - ts["BlockRun"][i], after.start - ts["ModelRequest"][i + 1]))
    return rows


def _ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 2)


async def main(rounds: int) -> dict[str, Any]:
    config = prepare_vm_config(snapshot=True)
    tmp = Path(tempfile.mkdtemp(prefix="rlm-engine-ab-"))
    prompt = prompt_text(64 * 1024)
    children: dict[str, list[float]] = {arm: [] for arm in ARMS}
    steps: dict[str, list[tuple[float, float, float, float]]] = {arm: [] for arm in ARMS}
    fanout: dict[str, list[float]] = {arm: [] for arm in ARMS}
    async with open_vm(config) as vm, GuestConnection.open(
        vm.stream, death_detail=vm.death_detail, cpu_waits=vm.cpu_waits
    ) as conn:
        for i in range(rounds):
            # Both orders, so that neither arm always runs right after the other's closes.
            for arm in ("ABC" if i % 2 == 0 else "CBA"):
                _arm(arm)
                children[arm].append(await _children(conn, prompt, tmp))
                steps[arm] += await _steps(conn, prompt, tmp)
                fanout[arm].append(await _fanout(conn, prompt, tmp))
            print(f"round {i}: children " + " ".join(f"{a} {children[a][-1]:.3f}" for a in ARMS), flush=True)
    _arm("C")
    out: dict[str, Any] = {}
    for arm in ARMS:
        gap, receive, exec_, send = (list(column) for column in zip(*steps[arm]))
        out[arm] = {
            "children_8_median_s": round(statistics.median(children[arm]), 3),
            "children_8_runs_s": [round(x, 3) for x in children[arm]],
            "step_gap_ms": _ms(gap), "step_receive_ms": _ms(receive), "step_exec_ms": _ms(exec_),
            "step_send_ms": _ms(send), "step_n": len(gap),
            "fanout_64kib_median_s": round(statistics.median(fanout[arm]), 3),
        }
    for arm in ("B", "C"):
        out[f"{arm}_over_A"] = {
            "children_8": round(out[arm]["children_8_median_s"] / out["A"]["children_8_median_s"], 3),
            "step_gap": round(out[arm]["step_gap_ms"] / out["A"]["step_gap_ms"], 3),
            "fanout_64kib": round(out[arm]["fanout_64kib_median_s"] / out["A"]["fanout_64kib_median_s"], 3),
        }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 6), indent=1))
