"""Runs one workload with rlms (the RLM paper's library) in its own venv; called by bench.engine.

    bench/.venv-rlms/bin/python bench/rlms_runner.py JOB.json

JOB: {"url", "prompt_file", "max_depth", "max_iterations", "max_concurrent_subcalls"}.
Prints {"answer", "imported", "done"} (time.monotonic) as JSON on stdout. Nothing of ours is
imported here: this file runs under rlms' own interpreter.
"""

import json
import sys
import time

job = json.load(open(sys.argv[1]))
from rlm import RLM  # type: ignore[import-not-found]  # noqa: E402  (rlms, in its own venv; import time is part of the start-up being measured)

imported = time.monotonic()
prompt = open(job["prompt_file"], encoding="utf-8").read()
rlm = RLM(
    backend="openai",
    backend_kwargs={"model_name": "bench", "base_url": job["url"] + "/v1", "api_key": "bench"},
    environment="local",
    max_depth=job["max_depth"],
    max_iterations=job["max_iterations"],
    max_concurrent_subcalls=job["max_concurrent_subcalls"],
)
result = rlm.completion(prompt)
print(json.dumps({"answer": result.response, "imported": imported, "done": time.monotonic()}))
