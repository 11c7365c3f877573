"""Batch throughput: tasks per minute with 1 and 2 workers, local and Ray; prints JSON on stdout.

    uv run python bench/batch.py [--tasks 40] [--latency 0.2] [--isolation vm] [--engines local,ray]

Each task is two model turns against the scripted model server of the tests (real HTTP, every
reply delayed by ``--latency`` seconds): one block that prints, one that sets ``Final``; so a
task costs two model round trips and two blocks in the guest. ``wall`` counts from the start
of the batch (guests, and Ray's start-up, included); ``steady`` is the rate between the first
and the last result, what a long batch approaches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlm_host.api import RunOptions  # noqa: E402
from rlm_host.batch import BatchOptions, Task, run_batch  # noqa: E402
from rlm_host.vm import probe_accel  # noqa: E402
from tests.scripted_model import ChatRequest, ScriptedModel  # noqa: E402


def script(request: ChatRequest) -> str:
    if request.turn == 0:
        return "Looking first.\n```python\nprint(len(prompt))\n```\n"
    return "Done.\n```python\nFinal = prompt.split('=', 1)[1]\n```\n"


async def measure(engine: str, workers: int, args: argparse.Namespace, url: str, folder: Path) -> dict[str, Any]:
    tasks = [Task(id=i, text=f"answer={i}", expected=str(i)) for i in range(args.tasks)]
    options = BatchOptions(
        run=RunOptions.of(model="m", llm_url=url, api="ollama", isolation=args.isolation, memory_mb=1024),
        workers=workers,
        sessions_per_worker=args.sessions,
        model_requests=args.model_requests,
        engine=engine,  # type: ignore[arg-type]
        ray_actor_cpus=0.5,
        trajectory_dir=folder / f"{engine}-{workers}",
    )
    started = time.perf_counter()
    times: list[float] = []
    ok = 0
    async for result in run_batch(tasks, options):
        times.append(time.perf_counter() - started)
        ok += result.status == "ok" and result.score == 1.0
    wall = time.perf_counter() - started
    if not times:
        return {"engine": engine, "workers": workers, "tasks": 0, "error": "no result came back"}
    steady = 60 * (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
    return {
        "engine": engine, "workers": workers, "tasks": len(times), "correct": ok,
        "wall_s": round(wall, 2), "first_result_s": round(times[0], 2),
        "tasks_per_minute_wall": round(60 * len(times) / wall, 1),
        "tasks_per_minute_steady": round(steady, 1),
    }


async def main(args: argparse.Namespace) -> None:
    figures: list[dict[str, Any]] = []
    with ScriptedModel(script, latency=args.latency) as server, TemporaryDirectory() as folder:
        for engine in args.engines.split(","):
            for workers in (1, 2):
                figure = await measure(engine, workers, args, server.url, Path(folder))
                print(json.dumps(figure), file=sys.stderr, flush=True)
                figures.append(figure)
    print(json.dumps({
        "benchmark": "batch",
        "machine": {"cpus": os.cpu_count(), "accel": probe_accel().name, "python": platform.python_version()},
        "latency_s": args.latency, "sessions_per_worker": args.sessions,
        "model_requests": args.model_requests, "isolation": args.isolation,
        "results": figures,
    }, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--sessions", type=int, default=4, help="tasks per worker at once")
    parser.add_argument("--model-requests", type=int, default=8)
    parser.add_argument("--isolation", choices=["vm", "local"], default="vm")
    parser.add_argument("--engines", default="local,ray")
    trio.run(main, parser.parse_args())
