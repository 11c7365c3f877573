"""The texts the model sees: system prompt tools, metadata and observation messages."""

from __future__ import annotations

import json

from rlm_host.engine import child_steps, metadata_message, observation_message, system_prompt
from rlm_protocol import Captured, ExecResult, FinalValue


def test_system_prompt_lists_the_image_tools() -> None:
    text = system_prompt(["rg", "jq", "GNU coreutils"])
    assert "Useful installed tools include `rg`, `jq`, GNU coreutils." in text
    assert "pdftotext" not in text
    assert "pdftotext" in system_prompt()  # the seed's list by default
    assert "rlm_query_batched" in text and "llm_query" in text


def test_metadata_message_shows_a_1600_char_prefix_only() -> None:
    prompt = "x" * 5000 + "\n" + "y" * 10
    data = json.loads(metadata_message(prompt))
    meta = data["state_metadata"]["prompt"]
    assert meta == {"chars": 5011, "lines": 2, "prefix": "x" * 1600, "truncated": True}
    assert data["state_metadata"]["prompt_type"] == "str"


def test_observation_message_cuts_at_800_and_keeps_true_sizes() -> None:
    result = ExecResult(
        session="s",
        call=1,
        stdout=Captured(text="a" * 900, chars=2_000_000, lines=7),
        stderr=Captured(),
        final=FinalValue(ok=False, error="not serializable", type="set", repr="{1}"),
    )
    text = observation_message(result)
    data = json.loads(text.split("\n", 1)[1])
    assert data["stdout"] == {"chars": 2_000_000, "lines": 7, "prefix": "a" * 800, "truncated": True}
    assert "returncode" not in data and "error" not in data
    assert "type set" in data["final_error"]


def test_child_steps_follow_the_seed() -> None:
    assert [child_steps(n) for n in (1, 12, 13, 18, 40)] == [6, 6, 6, 9, 20]
