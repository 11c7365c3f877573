"""The fold from events to the tree: a real run, every prefix of it, damaged lines."""

from __future__ import annotations

from pathlib import Path

import msgspec

from rlm_host.trajectory import ChildStart, ModelRequest, read_trajectory
from rlm_host.viewer import build_view, decode_lines, embed_json, render_html


def test_real_run_becomes_a_tree(scenario_trajectory: Path) -> None:
    events = read_trajectory(scenario_trajectory)
    run = build_view(events, source="t.jsonl")
    rlms = {rlm.id: rlm for rlm in run.rlms}
    # Depth-first order, every RLM of the run, with depth and parent from the ids.
    # (Which of the two batched RLMs is 0.5 and which 0.6 depends on which host call came first.)
    grandchild = next(rlm for rlm in run.rlms if rlm.depth == 2)
    investigator, looper = (rlms[grandchild.parent or ""], rlms["0.5" if grandchild.parent == "0.6" else "0.6"])
    assert [rlm.id for rlm in run.rlms] == ["0", "0.1", "0.2", "0.3", "0.4", "0.5"] + (
        ["0.5.1", "0.6"] if investigator.id == "0.5" else ["0.6", "0.6.1"]
    )
    assert {e.rlm for e in events if isinstance(e, ChildStart)} | {"0"} == set(rlms)
    assert all(rlm.depth == rlm.id.count(".") for rlm in run.rlms)
    # One step per model request.
    for rlm in run.rlms:
        requests = [e.step for e in events if isinstance(e, ModelRequest) and e.rlm == rlm.id]
        assert [step.step for step in rlm.steps] == requests
    root = rlms["0"]
    assert run.complete and not run.problems and root.status == "final" and root.final is not None
    by_step = {step.step: step for step in root.steps}
    # Step 3 batched four leaf calls, step 4 two child RLMs: each a group run side by side.
    assert [sorted(batch) for batch in by_step[3].batches] == [["0.1", "0.2", "0.3", "0.4"]]
    assert [sorted(batch) for batch in by_step[4].batches] == [["0.5", "0.6"]]
    assert by_step[2].error is not None and "IndexError" in by_step[2].error
    assert by_step[5].code is None and by_step[5].reply is not None  # no block: asked again
    assert investigator.steps[0].batches == [[grandchild.id]] and investigator.status == "final"
    assert looper.status == "max_steps" and looper.notices[0].kind == "budget"
    assert all(rlms[leaf].kind == "leaf" and rlms[leaf].final for leaf in ("0.1", "0.2", "0.3", "0.4"))
    for rlm in run.rlms:
        for step in rlm.steps:
            assert step.model_duration is not None and step.model_duration >= 0
            if step.code is not None:
                assert step.block_duration is not None and step.block_duration >= 0
    assert run.duration is not None and run.duration > 0


def test_every_prefix_of_a_run_is_a_valid_view(scenario_trajectory: Path) -> None:
    lines = scenario_trajectory.read_bytes().splitlines()
    for end in range(len(lines) + 1):
        # The run stopped after ``end`` whole lines, in the middle of the next one.
        partial = lines[:end] + ([lines[end][: len(lines[end]) // 2]] if end < len(lines) else [])
        events, problems = decode_lines(partial)
        assert len(events) == end
        run = build_view(events, problems)
        assert run.complete == (end == len(lines))
        if end < len(lines):
            assert any("cut short" in problem for problem in problems)
        if end and not run.complete:
            assert any("no run_end" in problem for problem in run.problems)
        # Every child is reachable from a step of its parent.
        placed = {child for rlm in run.rlms for step in rlm.steps for batch in step.batches for child in batch}
        assert placed == {rlm.id for rlm in run.rlms if rlm.parent is not None}
        msgspec.json.encode(run)


def test_damaged_and_unknown_lines_are_reported_and_skipped() -> None:
    good = b'{"event":"final","step":1,"answer":"42","ts":5.0,"rlm":"0","depth":0}'
    events, problems = decode_lines(
        [b'{"event":"from_the_future","ts":1,"rlm":"0","depth":0}', b"", b"garbage", good]
    )
    assert len(events) == 1
    assert problems[0].startswith("line 1: skipped") and "from_the_future" in problems[0]
    assert problems[1].startswith("line 3: skipped")
    run = build_view(events, problems)
    assert run.rlms[0].final == "42" and run.rlms[0].status == "final"


def test_children_whose_parent_lines_are_missing_still_show() -> None:
    events, _ = decode_lines(
        [b'{"event":"model_request","call":9,"step":2,"model":"m","messages":3,"request_chars":9,"ts":3.0,"rlm":"0.2.1","depth":2}']
    )
    run = build_view(events)
    assert [rlm.id for rlm in run.rlms] == ["0", "0.2", "0.2.1"]
    assert run.rlms[1].steps[0].batches == [["0.2.1"]]


def test_text_cannot_close_the_data_script() -> None:
    hostile = "</script><script>alert(1)</script><!-- @@DATA@@"
    assert "<" not in embed_json({"x": hostile})
    assert msgspec.json.decode(embed_json({"x": hostile})) == {"x": hostile}
    events, _ = decode_lines(
        [msgspec.json.encode({"event": "final", "step": 1, "answer": hostile, "ts": 0, "rlm": "0", "depth": 0})]
    )
    page = render_html(build_view(events))
    template_scripts = 2  # the data element and the viewer's code
    assert page.count("</script") == template_scripts and "alert(1)</script>" not in page
