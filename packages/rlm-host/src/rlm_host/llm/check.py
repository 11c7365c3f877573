"""What ``rlm doctor`` says about the model server: is it there, does it have the model, what
window will a run use, does the model reason, and the fix for each problem.

``check_model`` makes at most three small requests (the model list, the model's description)
with short timeouts; it never sends a chat request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .client import open_client
from .config import LlmConfig
from .errors import ModelNotFound, ModelServerDown
from .window import OLLAMA_WINDOW_CAP, choose_window

__all__ = ["ModelCheck", "check_model"]


@dataclass(frozen=True)
class ModelCheck:
    """One line of ``rlm doctor``: a name, ok or not, what was found, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _serve_fix(config: LlmConfig) -> str:
    if config.api == "ollama":
        return "start Ollama (`ollama serve`), or point rlm at it: OLLAMA_HOST=host:port or --llm-url"
    return "start the server (vLLM: `vllm serve MODEL`; llama.cpp: `llama-server -m FILE`), or set OPENAI_BASE_URL / --llm-url"


def _missing_fix(config: LlmConfig) -> str:
    if config.api == "ollama":
        return f"ollama pull {config.model}   (or choose one of the listed models with --model / RLM_MODEL)"
    return (
        f"serve it: `vllm serve {config.model}` (or --served-model-name {config.model}; llama.cpp: "
        "--alias), or choose a listed model with --model / RLM_MODEL"
    )


async def check_model(config: LlmConfig, *, context_tokens: int | None = None) -> list[ModelCheck]:
    """The checks of ``config``'s server and model, in order; never raises for what it checks."""
    quick = replace(config, connect_timeout=3.0, read_timeout=10.0, max_retries=0)
    checks: list[ModelCheck] = []
    async with open_client(quick) as client:
        try:
            listed = await client.list_models(strict=True)
        except ModelServerDown as down:
            return [ModelCheck("model server", False, f"{config.server_url}: {down.reason}", _serve_fix(config))]
        shown = ", ".join(listed[:6]) + (", ..." if len(listed) > 6 else "")
        checks.append(ModelCheck("model server", True, f"{config.server_url} ({config.api}): {len(listed)} models ({shown})"))
        try:
            info = await client.describe()
        except ModelNotFound as missing:
            checks.append(ModelCheck("model", False, f"{config.model!r} is not on the server: {missing}", _missing_fix(config)))
            return checks
    names = {name.removesuffix(":latest") for name in listed} | set(listed)
    if listed and config.model not in names:
        checks.append(ModelCheck("model", False, f"{config.model!r} is not among the served models", _missing_fix(config)))
        return checks
    window, num_ctx = choose_window(config.api, info, context_tokens)
    if info.context_length is not None:
        size = f"its window is {info.context_length} tokens"
    else:
        size = "the server does not say its window"
    if num_ctx is not None:
        size += f"; runs ask Ollama for {num_ctx} (options.num_ctx; at most {OLLAMA_WINDOW_CAP} unless --context-tokens)"
    elif window is not None:
        size += f"; histories are compacted below {window}"
    else:
        size += "; it is learnt from the first refusal, or give --context-tokens"
    checks.append(ModelCheck("model", True, f"{config.model}: {size}"))
    reasons = info.reasons
    if reasons is True:
        levels = f" (levels: {', '.join(info.think_values)})" if info.think_values else ""
        checks.append(ModelCheck(
            "reasoning", True,
            f"{config.model} reasons{levels}: its thinking is kept apart and recorded; "
            "--no-think switches it off, --think-level picks a level",
        ))
    elif reasons is False:
        checks.append(ModelCheck("reasoning", True, f"{config.model} does not reason (no 'thinking' capability)"))
    else:
        checks.append(ModelCheck(
            "reasoning", True,
            "unknown for this server: a reasoning model's thinking is kept apart when it comes in "
            "`reasoning`/`reasoning_content` (vLLM: --reasoning-parser, e.g. qwen3) or inline as <think>",
        ))
    return checks
