"""``--resume``: continue an interrupted run from its trajectory.

What a trajectory holds is enough to rebuild the root RLM:

- **the model's history**: every ``model_request`` records the messages added since the previous
  one (``new_messages``; ``rebased`` when the history was replaced by a compaction), so the
  root's history at its last request is their sum. When that step was completed (its block ran
  and its observation was recorded), its reply and observation are added, as the engine would.
- **the REPL**: the root's blocks of the completed steps are run again, in order, in a fresh
  session with the task bound as ``prompt``. Their host calls are answered from the recording
  (``child_end.answer`` by method and prompt, ``tool_call.result`` by name and arguments), so no
  child is run and no tool is called twice; a call with no recorded answer fails in the replay.
- **the task text** is kept beside the trajectory (``<trajectory>.prompt.txt``); without it the
  caller passes the same input again (checked against ``run_start.prompt_sha256``).

What cannot be restored is said in ``Resumed.problems`` (and by ``rlm run``): a replayed block
that fails where the original did not, a call without a recorded answer, state outside Python
(files written by bash blocks are rebuilt only as far as the replayed blocks rewrite them: bash
blocks are replayed too), a compaction's ``history`` variable. The continuation is written to a
new trajectory whose ``run_start.resumed_from`` names the old one; resuming that one again
follows the chain.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

import trio

from .connection import GuestConnection
from .engine import NO_BLOCK_REPROMPT, Replay, first_block
from .errors import RlmError, single_error
from .llm.messages import ChatMessage
from .options import RunOptions
from .run_context import RunResult, open_run_context
from .trajectory import (
    BlockRun,
    ChildEnd,
    ChildStart,
    Compaction,
    Event,
    FinalSet,
    ModelRequest,
    ModelResponse,
    Observation,
    Resumed,
    RunStart,
    ToolCall,
    prompt_path,
)

__all__ = ["ResumeError", "ResumePoint", "load_resume_point", "resume_rlm"]

_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


class ResumeError(RlmError):
    """The trajectory cannot be resumed (not a run, already answered, task text missing)."""


@dataclass
class _Block:
    step: int
    language: str
    code: str
    error: str | None


@dataclass
class ResumePoint:
    """What a trajectory (and the ones it resumed) says about its root RLM."""

    prompt: str
    #: The root's history after its last completed step (``None``: no step was made).
    history: list[ChatMessage] | None
    steps: int
    blocks: list[_Block]
    replay: Replay
    problems: list[str] = field(default_factory=list)


def _read(path: Path, problems: list[str]) -> list[Event]:
    events: list[Event] = []
    with open(path, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                events.append(_decoder.decode(line))
            except msgspec.DecodeError:
                # A crash can cut the last line; anything after it is unusable anyway.
                problems.append(f"{path.name} line {number} is not a complete event: ignored")
    return events


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def load_resume_point(path: Path, prompt: str | None = None) -> ResumePoint:
    """Read ``path`` (and the runs it resumed) into a ``ResumePoint``.

    ``prompt`` is the task text when it is not kept beside the trajectory. Raises
    ``ResumeError`` when the run cannot be resumed.
    """
    problems: list[str] = []
    events = _read(path, problems)
    start = next((event for event in events if isinstance(event, RunStart)), None)
    if start is None:
        raise ResumeError(f"{path} has no run_start: not an rlm trajectory")
    if start.options.get("kind") == "conversation":
        raise ResumeError(f"{path} is a conversation (rlm chat); only runs can be resumed")
    if any(isinstance(event, FinalSet) and event.rlm == "0" for event in events):
        raise ResumeError(f"{path}: the run already reached its Final; there is nothing to resume")

    kept = prompt_path(path)
    if kept.exists():
        text = kept.read_text(encoding="utf-8", errors="surrogatepass")
    elif prompt is not None:
        text = prompt
    else:
        raise ResumeError(f"the task text is not kept beside {path} ({kept.name}): pass the same input again")
    if start.prompt_sha256 and _sha(text) != start.prompt_sha256:
        raise ResumeError(f"the task text differs from the one {path} was run on")

    blocks: list[_Block] = []
    replay = Replay()
    if start.resumed_from is not None:
        older = load_resume_point(Path(start.resumed_from), text)
        blocks, replay = older.blocks, older.replay
        problems = older.problems + problems
    _collect_replay(events, replay)

    history: list[ChatMessage] | None = None
    last: ModelRequest | None = None
    for event in events:
        if isinstance(event, ModelRequest) and event.rlm == "0" and event.purpose == "rlm":
            added: list[ChatMessage] = [{"role": m.role, "content": m.content} for m in event.new_messages]  # type: ignore[typeddict-item]
            history = added if event.rebased or history is None else history + added
            last = event
    root_blocks = {e.step: e for e in events if isinstance(e, BlockRun) and e.rlm == "0"}
    observations = {e.step: e for e in events if isinstance(e, Observation) and e.rlm == "0"}
    responses = {e.call: e for e in events if isinstance(e, ModelResponse) and e.rlm == "0"}
    if any(isinstance(e, Compaction) and e.rlm == "0" for e in events):
        problems.append("the history was compacted: the REPL variable `history` holds the compacted one")
    if history is None or last is None:
        return ResumePoint(text, None, 0, blocks, replay, problems)

    steps = last.step - 1
    response = responses.get(last.call)
    if response is not None and response.error is None:
        block = first_block(response.content)
        if block is None:
            history = history + [
                {"role": "assistant", "content": response.content},
                {"role": "user", "content": NO_BLOCK_REPROMPT},
            ]
            steps = last.step
        elif last.step in observations:
            history = history + [
                {"role": "assistant", "content": block.fenced},
                {"role": "user", "content": observations[last.step].content},
            ]
            steps = last.step
    for step in sorted(root_blocks):
        if step <= steps:
            run = root_blocks[step]
            observed = observations.get(step)
            blocks.append(_Block(step, run.language, run.code, observed.error if observed else None))
    return ResumePoint(text, history, steps, blocks, replay, problems)


def _collect_replay(events: list[Event], replay: Replay) -> None:
    """The answers the root's host calls got, for the replay."""
    started = {e.rlm: e for e in events if isinstance(e, ChildStart) and e.parent == "0"}
    for event in events:
        if isinstance(event, ChildEnd) and event.parent == "0" and event.answer is not None:
            begun = started.get(event.rlm)
            if begun is not None and begun.prompt_sha256:
                replay.children[(begun.method, f"sha256:{begun.prompt_sha256}")].append(event.answer)
            elif begun is not None and begun.prompt_blake2b:
                replay.children[(begun.method, f"blake2b:{begun.prompt_blake2b}")].append(event.answer)
        elif isinstance(event, ToolCall) and event.rlm == "0":
            replay.tools[(event.name, event.args_sha256)].append((event.result, event.error))


async def resume_rlm(
    trajectory: Path,
    *,
    options: RunOptions = RunOptions(),
    prompt: str | None = None,
    connection: GuestConnection | None = None,
) -> RunResult[Any]:
    """Continue the run recorded in ``trajectory`` with ``options`` (fresh budgets).

    ``options.trajectory_path`` is where the continuation is written (by default a new file);
    it must not be ``trajectory`` itself. ``prompt`` is the task text when it is not kept beside
    the trajectory. Raises ``ResumeError``, and what ``run_rlm`` raises.
    """
    point = load_resume_point(trajectory, prompt)
    if options.trajectory_path is not None and options.trajectory_path.resolve() == trajectory.resolve():
        raise ResumeError("write the resumed run to a new trajectory, not over the one it resumes")
    try:
        async with (
            open_run_context(point.prompt, options, connection, resumed_from=trajectory) as run,
            trio.open_nursery() as nursery,
        ):
            engine = run.engine
            replay = point.replay
            root = await engine.open_root(point.prompt, nursery, replay=replay, prompt_refs=False)
            try:
                problems = list(point.problems)
                for block in point.blocks:
                    result = await root.session.exec(
                        block.code, "bash" if block.language == "bash" else "python", timeout=options.exec_timeout
                    )
                    if result.session_reset:
                        problems.append(f"step {block.step}: the session was reset in the replay; earlier state is lost")
                        await engine.rebind(root)
                    error = None if result.error is None else f"{result.error.name}: {result.error.value}"
                    if block.language == "bash" and result.returncode:
                        error = error or f"exit status {result.returncode}"
                    if error is not None and block.error is None:
                        problems.append(f"step {block.step}: the block failed in the replay ({error}); it did not originally")
                problems.extend(replay.finish())
                # A replayed block may have set Final (a rejected typed answer): the model decides anew.
                await root.session.set_vars({})
                if point.history is not None:
                    root.restore(point.history, point.steps)
                run.recorder.emit(
                    Resumed(
                        ts=time.time(), rlm="0", depth=0, trajectory=str(trajectory),
                        steps_replayed=len(point.blocks),
                        history_messages=len(root.history), problems=tuple(problems),
                    )
                )
                outcome = await engine.ask(root)
            finally:
                await engine.close(root)
            return run.result(outcome)
    except BaseExceptionGroup as group:
        raise single_error(group) from None
