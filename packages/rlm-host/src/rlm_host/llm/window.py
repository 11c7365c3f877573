"""Choosing the context window of a run from what the user said and what the server reports.

- ``--context-tokens N`` wins: it is the window the host keeps histories under, and Ollama is
  asked for exactly that (``options.num_ctx``).
- Ollama: the model's own maximum (``/api/show``), capped at ``OLLAMA_WINDOW_CAP``, is requested
  with ``options.num_ctx`` on every request. Without ``num_ctx`` Ollama uses its default window
  (4k tokens under 24 GiB of VRAM, docs "Context length") and drops the oldest messages of a
  longer request without a word (``server/prompt.go``, ``chatPrompt``).
- vLLM: ``max_model_len`` from ``/v1/models``; the server's window is fixed when it starts.
- Otherwise (llama.cpp, LM Studio, a proxy): unknown; the host learns it from the first refusal
  ("exceeds the available context size") and compacts then.

>>> choose_window("ollama", ModelInfo("m", context_length=262144), None)
(16384, 16384)
>>> choose_window("ollama", ModelInfo("m", context_length=8192), None)
(8192, 8192)
>>> choose_window("openai", ModelInfo("m", context_length=32768), None)
(32768, None)
>>> choose_window("openai", ModelInfo("m"), None)
(None, None)
>>> choose_window("ollama", ModelInfo("m"), 4096)
(4096, 4096)
"""

from __future__ import annotations

from typing import Final

from .config import Api
from .messages import ModelInfo

__all__ = ["OLLAMA_WINDOW_CAP", "choose_window"]

#: The window asked of Ollama when the user gives none. The KV cache grows with it (about
#: 2.4 GB at 16k tokens for an 8B model with 8 KV heads in f16), while an RLM's history stays
#: small: a step adds a block and an 800-character observation, ~0.7k tokens, so 18 steps fit
#: in ~14k, and a longer history is compacted below the window anyway.
OLLAMA_WINDOW_CAP: Final = 16384


def choose_window(api: Api, info: ModelInfo, context_tokens: int | None) -> tuple[int | None, int | None]:
    """``(window, num_ctx)``: the tokens histories are kept under (``None``: unknown) and the
    ``options.num_ctx`` to send to Ollama (``None`` for other servers)."""
    if context_tokens is not None:
        return context_tokens, context_tokens if api == "ollama" else None
    if api == "ollama":
        window = min(info.context_length or OLLAMA_WINDOW_CAP, OLLAMA_WINDOW_CAP)
        return window, window
    return info.context_length, None
