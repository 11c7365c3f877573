"""What asking the server about its model costs at the start of a run (``ChatClient.describe``).

``uv run python bench/model_info.py``: against the emulated Ollama and vLLM servers of the tests
(``tests/model_servers.py``), the median of 50 ``describe`` calls beside the median of 50 chat
requests with no model latency, same client, same run: the ratio is what the look-up adds to the
start of a run, in units of the cheapest possible request.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.model_servers import OllamaServer, OpenAIServer  # noqa: E402
from rlm_host.llm import LlmConfig, open_client  # noqa: E402

REPEATS = 50


async def main() -> None:
    servers = (
        ("ollama /api/show", OllamaServer(lambda r: "ok"), "ollama", "qwen3"),
        ("vllm /v1/models", OpenAIServer(lambda r: "ok"), "openai", "Qwen/Qwen3-8B"),
    )
    for name, server, api, model in servers:
        with server:
            config = LlmConfig.resolve(api=api, url=server.url, model=model, environ={})  # type: ignore[arg-type]
            async with open_client(config) as client:
                await client.chat([{"role": "user", "content": "warm up"}])
                looked_up, chatted = [], []
                for _ in range(REPEATS):
                    started = time.perf_counter()
                    await client.describe()
                    looked_up.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    await client.chat([{"role": "user", "content": "hi"}])
                    chatted.append(time.perf_counter() - started)
        describe, chat = statistics.median(looked_up), statistics.median(chatted)
        print(f"{name}: {describe * 1000:.2f} ms; an empty chat request {chat * 1000:.2f} ms; ratio {describe / chat:.2f}")


if __name__ == "__main__":
    trio.run(main)
