"""Separating a reasoning model's thinking from its answer.

Servers with a reasoning parser send the thinking in a field of its own (Ollama
``message.thinking``; vLLM ``reasoning``, formerly ``reasoning_content``, which llama.cpp's server
still sends). Without a parser it stays inline, as ``<think>…</think>`` before the answer (vLLM
docs, "Reasoning Outputs"). Two inline shapes need care:

- a reply that starts inside the block: chat templates of DeepSeek-R1 and Qwen3's thinking
  models open ``<think>`` in the prompt, so the reply has only the closing tag;
- a block that never closes: the model ran out of tokens while thinking, and there is no answer.

Code blocks are taken from the answer only: a draft in the thinking is not what the model chose
to run.

>>> split_inline("<think>try ```python\\nFinal = 'draft'\\n```</think>\\nHere:\\n```python\\nFinal = 1\\n```")
('Here:\\n```python\\nFinal = 1\\n```', "try ```python\\nFinal = 'draft'\\n```")
>>> split_inline("<think>still thinking when the tokens ran out")
('', 'still thinking when the tokens ran out')
>>> split_inline("opened by the template</think>\\nanswer")
('answer', 'opened by the template')
>>> split_inline("no reasoning here")
('no reasoning here', '')
"""

from __future__ import annotations

from typing import Final

__all__ = ["THINK_CLOSE", "THINK_OPEN", "separate", "split_inline"]

THINK_OPEN: Final = "<think>"
THINK_CLOSE: Final = "</think>"


def split_inline(text: str) -> tuple[str, str]:
    """``(answer, reasoning)`` of a reply that may carry its thinking inline."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN) :]
        end = body.find(THINK_CLOSE)
        if end < 0:
            return "", body.strip()
        return body[end + len(THINK_CLOSE) :].lstrip(), body[:end].strip()
    end = text.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in text[:end]:
        return text[end + len(THINK_CLOSE) :].lstrip(), text[:end].strip()
    return text, ""


def separate(content: str, reasoning_field: str) -> tuple[str, str]:
    """The answer and all of the reasoning: the server's reasoning field, then any inline block.

    >>> separate("<think>b</think>answer", "a")
    ('answer', 'a\\nb')
    """
    answer, inline = split_inline(content)
    reasoning = "\n".join(part for part in (reasoning_field.strip(), inline) if part)
    return answer, reasoning
