"""The engine against the scripted model over real HTTP, ours and rlms side by side.

Workloads (bench.workload): host time per step with no model latency (the gap between a reply
and the next request, from the server's log), ``rlm run`` start to the first model request with a
16 MiB prompt (the real CLI as a subprocess, its VM included; rlms likewise as a subprocess),
8 batched children / 8 batched leaf calls with 1 s model latency (the root's gap around the
block that makes them), and a 1221-page PDF's start beside ``pdftotext`` (bench.pdf_start).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from rlm_host.api import RunOptions, run_rlm
from rlm_host.connection import GuestConnection
from rlm_host.trajectory import read_trajectory

from .pdf_start import pdf_start_row
from .vm_bench import MIB, prompt_text
from .workload import Script, Workload, root_gaps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.scripted_model import ScriptedModel  # noqa: E402

RLMS_VENV = ROOT / "bench" / ".venv-rlms"
RLMS_PYTHON = RLMS_VENV / "bin" / "python"


def ensure_rlms() -> str | None:
    """Install rlms into its own venv (never a dependency of ours); return an error or None."""
    if RLMS_PYTHON.exists():
        return None
    try:
        subprocess.run(["uv", "venv", "-q", str(RLMS_VENV)], check=True)
        subprocess.run(["uv", "pip", "install", "-q", "--python", str(RLMS_PYTHON), "rlms"], check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        return f"cannot install rlms: {error}"
    return None


def rlms_version() -> str | None:
    try:
        out = subprocess.run([str(RLMS_PYTHON), "-c", "import importlib.metadata as m; print(m.version('rlms'))"],
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _options(url: str, tmp: Path, **kw: Any) -> RunOptions:
    return RunOptions.of(model="bench", llm_url=url, api="openai", concurrency=8, llm_retries=0,
                      trajectory_path=tmp / f"traj-{time.monotonic_ns()}.jsonl", **kw)


async def _ours(conn: GuestConnection, workload: Workload, prompt: str, tmp: Path, *, max_steps: int = 18) -> dict[str, Any]:
    script = Script(workload)
    with ScriptedModel(script, latency=workload.latency) as server:
        t = time.monotonic()
        options = _options(server.url, tmp, max_steps=max_steps, max_depth=2)
        result = await run_rlm(prompt, options=options, connection=conn)
        wall = time.monotonic() - t
        assert result.answer == "done", (result.stop_reason, result.detail)
        assert options.trajectory_path is not None
        return {"gaps": root_gaps(server.log, script), "wall": wall, "requests": len(server.log),
                "parts": _step_parts(options.trajectory_path)}


def _step_parts(trajectory: Path) -> dict[str, list[float]]:
    """Where each root step's host time went, from the trajectory's timestamps: ``engine`` (reply
    parsed to block sent, and observation to next request), ``exec`` (the block's round trip
    through the guest); the rest of a gap is the HTTP client and the server."""
    events = [e for e in read_trajectory(trajectory) if getattr(e, "rlm", None) == "0"]
    by_kind: dict[str, list[float]] = {}
    for e in events:
        by_kind.setdefault(type(e).__name__, []).append(e.ts)
    responses, blocks = by_kind.get("ModelResponse", []), by_kind.get("BlockRun", [])
    observations, requests = by_kind.get("Observation", []), by_kind.get("ModelRequest", [])
    parts: dict[str, list[float]] = {"engine": [], "exec": []}
    for i in range(min(len(observations), len(blocks), len(responses), len(requests) - 1)):
        parts["engine"].append((blocks[i] - responses[i]) + (requests[i + 1] - observations[i]))
        parts["exec"].append(observations[i] - blocks[i])
    return parts


def _rlms(workload: Workload, prompt_file: Path, tmp: Path, *, max_iterations: int = 18) -> dict[str, Any]:
    script = Script(workload)
    with ScriptedModel(script, latency=workload.latency) as server:
        job = tmp / "job.json"
        job.write_text(json.dumps({"url": server.url, "prompt_file": str(prompt_file), "max_depth": 2,
                                   "max_iterations": max_iterations, "max_concurrent_subcalls": 8}))
        t = time.monotonic()
        out = subprocess.run([str(RLMS_PYTHON), str(ROOT / "bench" / "rlms_runner.py"), str(job)],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"rlms failed: {out.stderr[-2000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        assert data["answer"] == "done", data
        first = min(r.start for r in server.log)
        return {"gaps": root_gaps(server.log, script), "wall": data["done"] - t, "requests": len(server.log),
                "to_first_request": first - t, "import": data["imported"] - t}


def _first_request_ours(prompt_file: Path, tmp: Path) -> dict[str, Any]:
    script = Script(Workload("first_request"))
    rlm = Path(sys.executable).parent / "rlm"
    with ScriptedModel(script) as server:
        t = time.monotonic()
        out = subprocess.run(
            [str(rlm), "run", str(prompt_file), "--llm-url", server.url, "--api", "openai", "--model", "bench",
             "--max-steps", "2", "--trajectory", str(tmp / "cli-traj.jsonl")],
            capture_output=True, text=True, timeout=600,
        )
        done = time.monotonic()
        if out.returncode != 0:
            raise RuntimeError(f"rlm run failed: {out.stderr[-2000:]}")
        first = min(r.start for r in server.log)
        return {"to_first_request": first - t, "wall": done - t}


def _median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4) if xs else float("nan")


async def run_engine_workloads(conn: GuestConnection, *, quick: bool) -> dict[str, Any]:
    error = ensure_rlms()
    tmp = Path(tempfile.mkdtemp(prefix="rlm-bench-"))
    small = prompt_text(64 * 1024)
    small_file = tmp / "small.txt"
    small_file.write_text(small)
    big_file = tmp / "big.txt"
    big_file.write_text(prompt_text(16 * MIB))
    repeats = 1 if quick else 3
    out: dict[str, Any] = {"ours": {}, "rlms": {}, "rlms_version": None if error else rlms_version(), "rlms_error": error}

    steps = Workload("steps", steps=10 if quick else 20)
    children = Workload("children", fanout=8, latency=1.0)
    leaves = Workload("leaves", fanout=8, latency=1.0)
    ours_gaps: list[float] = []
    parts: dict[str, list[float]] = {"engine": [], "exec": []}
    for _ in range(repeats):
        run = await _ours(conn, steps, small, tmp, max_steps=steps.steps + 2)
        ours_gaps += run["gaps"]
        for key in parts:
            parts[key] += run["parts"][key]
    out["ours"]["step_overhead"] = _median(ours_gaps)
    # Medians of each part; what is left of the gap is the HTTP client and the scripted server.
    out["ours"]["step_parts"] = {key: _median(values) for key, values in parts.items()}
    out["ours"]["children_8"] = _median([(await _ours(conn, children, small, tmp))["gaps"][0] for _ in range(repeats)])
    out["ours"]["leaves_8"] = _median([(await _ours(conn, leaves, small, tmp))["gaps"][0] for _ in range(repeats)])
    # 8 children over a 16 MiB prompt cut in 8 pieces, against the same over 64 KiB: what the
    # pieces' size costs (no model latency; the step after the prompt is bound).
    fanout = Workload("fanout", fanout=8)
    big = prompt_text(16 * MIB)
    out["ours"]["fanout_16mib"] = _median([(await _ours(conn, fanout, big, tmp))["gaps"][1] for _ in range(repeats)])
    out["ours"]["fanout_64kib"] = _median([(await _ours(conn, fanout, small, tmp))["gaps"][1] for _ in range(repeats)])
    del big
    firsts = [await trio.to_thread.run_sync(_first_request_ours, big_file, tmp) for _ in range(repeats)]
    out["ours"]["start_to_first_request"] = _median([f["to_first_request"] for f in firsts])
    out["pdf"] = await trio.to_thread.run_sync(pdf_start_row, repeats)
    if error is None:
        rg: list[float] = []
        for _ in range(repeats):
            rg += (await trio.to_thread.run_sync(lambda: _rlms(steps, small_file, tmp, max_iterations=steps.steps + 2)))["gaps"]
        out["rlms"]["step_overhead"] = _median(rg)
        out["rlms"]["children_8"] = _median([(await trio.to_thread.run_sync(_rlms, children, small_file, tmp))["gaps"][0] for _ in range(repeats)])
        out["rlms"]["leaves_8"] = _median([(await trio.to_thread.run_sync(_rlms, leaves, small_file, tmp))["gaps"][0] for _ in range(repeats)])
        starts = [await trio.to_thread.run_sync(_rlms, Workload("first_request"), big_file, tmp) for _ in range(repeats)]
        out["rlms"]["start_to_first_request"] = _median([s["to_first_request"] for s in starts])
        out["ratio_ours_over_rlms"] = {k: round(out["ours"][k] / out["rlms"][k], 3) for k in out["ours"] if out["rlms"].get(k)}
    return out
