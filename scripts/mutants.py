"""Mutation testing of the modules where a silent regression hurts most (``nox -s mutants``).

Each mutant is one small change to one module (a comparison flipped, ``and`` made ``or``, a
constant moved by one, a ``not`` dropped, a call statement removed, a returned value replaced by
``None``). It is written into a scratch copy of the packages' sources, never into the worktree,
and the module's own tests run against it with ``PYTHONPATH`` pointing at the copy (guest
subprocesses inherit it). A mutant is *killed* when those tests fail or exceed their time limit,
and *survives* when they pass: a survivor is a behaviour no test holds, or a change that makes no
difference (an equivalent mutant), which ``docs/testing.md`` judges one by one.

Why not mutmut: it rewrites every function into a trampoline and imports the mutated tree from
its own ``mutants/`` folder, which neither the uv workspace's editable installs nor the guest
agent started as a subprocess (``python -m rlm_guest``) would see; trio tests also run in one
process that mutmut forks per mutant. A copy on ``PYTHONPATH`` works for all of it.

Usage::

    uv run python scripts/mutants.py                       # every module (long: tens of minutes)
    uv run python scripts/mutants.py codec budget          # some modules, by key
    uv run python scripts/mutants.py codec --tests DIR     # against another copy of tests/
    uv run python scripts/mutants.py codec --list          # only print the mutants
    uv run python scripts/mutants.py --sample 25           # at most 25 per module, spread evenly

Results go to ``bench/results/mutants-latest.json`` (``--out``) and a table is printed;
``bench/results/mutants.json`` keeps the before/after figures of ``docs/testing.md``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["rlm-protocol", "rlm-guest", "rlm-host"]


@dataclass(frozen=True)
class Target:
    """A module, the functions of it to mutate (all when empty) and the tests that hold it."""

    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()


#: Keys are what the command line takes. The tests are each module's own, so that a run stays
#: within minutes; the engine's are the files about budgets and recursion only.
TARGETS: dict[str, Target] = {
    "codec": Target(
        "packages/rlm-protocol/src/rlm_protocol/codec.py",
        ("tests/protocol/test_codec.py", "tests/security/test_hostile_frames.py"),
    ),
    "guest_session": Target(
        "packages/rlm-guest/src/rlm_guest/session.py",
        ("tests/host/test_sessions.py", "tests/host/test_hung_guest.py"),
    ),
    "guest_agent": Target(
        "packages/rlm-guest/src/rlm_guest/agent.py",
        (
            "tests/host/test_sessions.py", "tests/host/test_hung_guest.py",
            "tests/host/test_guest_refusals.py",
        ),
        functions=(
            "_from_host", "_refuse", "_unknown_session", "_on_open_session", "_on_exec",
            "_on_interrupt", "_on_close_session",
        ),
    ),
    "guest_supervisor": Target(
        "packages/rlm-guest/src/rlm_guest/supervisor.py",
        (
            "tests/host/test_sessions.py", "tests/host/test_hung_guest.py",
            "tests/host/test_guest_refusals.py",
        ),
        functions=("interrupt", "_signal", "reset"),
    ),
    "budget": Target(
        "packages/rlm-host/src/rlm_host/engine/budget.py",
        ("tests/engine/test_budgets.py", "tests/engine/test_cost_budget.py"),
    ),
    "recursion": Target(
        "packages/rlm-host/src/rlm_host/engine/children.py",
        (
            "tests/engine/test_budgets.py", "tests/engine/test_batched.py",
            "tests/engine/test_loop.py", "tests/engine/test_compaction.py",
            "tests/engine/test_engine_core.py",
        ),
        functions=("handler", "_query", "_child"),
    ),
    "steps": Target(
        "packages/rlm-host/src/rlm_host/engine/steps.py",
        (
            "tests/engine/test_budgets.py", "tests/engine/test_loop.py", "tests/engine/test_steps.py",
            "tests/engine/test_compaction.py", "tests/engine/test_engine_core.py",
            "tests/engine/test_guest_command.py",
        ),
        functions=("_steps",),
    ),
    "batch_results": Target(
        "packages/rlm-host/src/rlm_host/batch/results.py",
        ("tests/batch/test_batch_local.py", "tests/batch/test_batch_cli.py"),
    ),
    "resume": Target(
        "packages/rlm-host/src/rlm_host/resume.py",
        ("tests/engine/test_resume.py", "tests/engine/test_resume_errors.py"),
    ),
}

_FLIP_COMPARE: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
    ast.LtE: ast.Gt, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In,
}
_SWAP_BINOP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult, ast.Mod: ast.Mult,
}


@dataclass
class Mutant:
    target: str
    index: int
    line: int
    what: str
    outcome: str = ""  # killed | survived | timeout | error
    seconds: float = 0.0


def _annotations(tree: ast.AST) -> set[int]:
    """Ids of nodes inside annotations and docstrings: changing them changes no behaviour."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.arg):
            mark(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                mark(body[0])
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            mark(node)
    return skip


def _scopes(tree: ast.Module, functions: tuple[str, ...]) -> list[ast.AST]:
    if not functions:
        return [tree]
    found = [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in functions
    ]
    return found


def _candidates(tree: ast.Module, functions: tuple[str, ...]) -> Iterator[tuple[ast.AST, str, int]]:
    """(node, kind, variant) for every mutation point, in a stable order."""
    skip = _annotations(tree)
    seen: set[int] = set()
    for scope in _scopes(tree, functions):
        for node in ast.walk(scope):
            if id(node) in skip or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, ast.Compare):
                for position, op in enumerate(node.ops):
                    if type(op) in _FLIP_COMPARE:
                        yield node, "compare", position
            elif isinstance(node, ast.BoolOp):
                yield node, "boolop", 0
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
                yield node, "not", 0
            elif isinstance(node, ast.BinOp) and type(node.op) in _SWAP_BINOP:
                yield node, "binop", 0
            elif isinstance(node, ast.Constant) and type(node.value) in (bool, int, float):
                yield node, "constant", 0
            elif isinstance(node, ast.Return) and node.value is not None:
                if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                    yield node, "return", 0
            elif isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
                yield node, "drop", 0
            elif isinstance(node, (ast.Break, ast.Continue)):
                yield node, "loop", 0


def _describe(node: ast.AST, kind: str, variant: int) -> str:
    text = ast.unparse(node).splitlines()[0][:70]
    match kind:
        case "compare":
            assert isinstance(node, ast.Compare)
            op = node.ops[variant]
            return f"{type(op).__name__} -> {_FLIP_COMPARE[type(op)].__name__} in `{text}`"
        case "boolop":
            assert isinstance(node, ast.BoolOp)
            return f"{type(node.op).__name__} -> {'Or' if isinstance(node.op, ast.And) else 'And'} in `{text}`"
        case "not":
            return f"drop `not` in `{text}`"
        case "binop":
            assert isinstance(node, ast.BinOp)
            return f"{type(node.op).__name__} -> {_SWAP_BINOP[type(node.op)].__name__} in `{text}`"
        case "constant":
            return f"constant `{text}` changed"
        case "return":
            return f"`{text}` -> `return None`"
        case "drop":
            return f"statement `{text}` removed"
        case _:
            return f"`{text}` swapped (break/continue)"


def _apply(node: ast.AST, kind: str, variant: int) -> None:
    if isinstance(node, ast.Compare):
        node.ops[variant] = _FLIP_COMPARE[type(node.ops[variant])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.UnaryOp):
        node.op = ast.UAdd()  # `+x` of a bool is its int: truthiness as without the `not`
    elif isinstance(node, ast.BinOp):
        node.op = _SWAP_BINOP[type(node.op)]()
    elif isinstance(node, ast.Constant):
        value = node.value
        node.value = (not value) if isinstance(value, bool) else (value + 1 if value != 1 else 0)
    elif isinstance(node, ast.Return):
        node.value = None
    elif isinstance(node, ast.Expr):
        node.value = ast.Constant(value=None)
    elif isinstance(node, ast.Break):
        node.__class__ = ast.Continue
    elif isinstance(node, ast.Continue):
        node.__class__ = ast.Break


def mutants(key: str, source: str) -> Iterator[tuple[Mutant, str]]:
    """Every mutant of one target, with the module's mutated source."""
    target = TARGETS[key]
    tree = ast.parse(source)
    points = list(_candidates(tree, target.functions))
    for index, (node, kind, variant) in enumerate(points):
        mutant = Mutant(key, index, getattr(node, "lineno", 0), _describe(node, kind, variant))
        copied = copy.deepcopy(tree)
        # The same walk over the copy finds the same node at the same position.
        twin = list(_candidates(copied, target.functions))[index][0]
        _apply(twin, kind, variant)
        yield mutant, ast.unparse(ast.fix_missing_locations(copied))


@dataclass
class Report:
    """Per target: killed, survived, and the survivors' lines (for docs/testing.md)."""

    tests: str
    targets: dict[str, dict[str, object]] = field(default_factory=dict)


def _run_tests(scratch: Path, tests: list[str], limit: float) -> tuple[str, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(scratch / package / "src") for package in PACKAGES] + [env.get("PYTHONPATH", "")]
    )
    # CI=true: a skip that hides a missing part would count as a pass, i.e. a survivor.
    env["CI"] = "true"
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
               "-p", "no:randomly", "--no-header", "-m", "not vm", *tests]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=Path(tests[0]).parents[1], env=env, capture_output=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - started
    seconds = time.monotonic() - started
    if done.returncode == 0:
        return "survived", seconds
    if done.returncode == 1:
        return "killed", seconds
    # 2-4: interrupted, internal or usage error; 5: nothing collected. A mutant that breaks
    # the import of the module is killed too (the tests cannot even start).
    return "killed", seconds


def _sample(found: list[tuple[Mutant, str]], size: int) -> list[tuple[Mutant, str]]:
    """At most ``size`` mutants, evenly spread over the module (the same ones at every run)."""
    if size <= 0 or len(found) <= size:
        return found
    step = len(found) / size
    return [found[int(i * step)] for i in range(size)]


def run(keys: list[str], tests_dir: Path, out: Path, only_list: bool, sample: int = 0) -> Report:
    report = Report(tests=str(tests_dir))
    with tempfile.TemporaryDirectory(prefix="rlm-mutants-") as temp:
        scratch = Path(temp)
        for package in PACKAGES:
            shutil.copytree(ROOT / "packages" / package / "src", scratch / package / "src")
        for key in keys:
            target = TARGETS[key]
            original = (ROOT / target.path).read_text()
            relative = Path(target.path).relative_to("packages")
            destination = scratch / relative.parts[0] / Path(*relative.parts[1:])
            # An older copy of the tests may lack a file (it was added since): leave it out.
            tests = [
                str(tests_dir / Path(t).relative_to("tests"))
                for t in target.tests
                if (tests_dir / Path(t).relative_to("tests")).exists()
            ]
            every = list(mutants(key, original))
            found = _sample(every, sample)
            print(f"== {key}: {len(found)} of {len(every)} mutants of {target.path}, tests {' '.join(tests)}", flush=True)
            if only_list:
                for mutant, _ in found:
                    print(f"  #{mutant.index} line {mutant.line}: {mutant.what}")
                continue
            status, clean = _run_tests(scratch, tests, limit=1800)
            if status != "survived":
                raise SystemExit(f"{key}: the tests fail without any mutant ({status}); fix that first")
            limit = max(30.0, 3 * clean)
            results = []
            for mutant, text in found:
                destination.write_text(text)
                mutant.outcome, mutant.seconds = _run_tests(scratch, tests, limit)
                results.append(mutant)
                mark = "." if mutant.outcome != "survived" else "S"
                print(mark, end="", flush=True)
            destination.write_text(original)
            killed = sum(1 for m in results if m.outcome != "survived")
            survivors = [asdict(m) for m in results if m.outcome == "survived"]
            print(f"\n   killed {killed} of {len(results)}; survivors:", flush=True)
            for s in survivors:
                print(f"   line {s['line']}: {s['what']}")
            report.targets[key] = {
                "module": target.path,
                "tests": list(target.tests),
                "mutants": len(results),
                "mutation_points": len(every),
                "killed": killed,
                "survived": len(survivors),
                "clean_run_seconds": round(clean, 1),
                "survivors": survivors,
            }
    if not only_list:
        out.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(out.read_text()) if out.exists() else {}
        previous.update({key: value for key, value in report.targets.items()})
        out.write_text(json.dumps(previous, indent=1) + "\n")
        print(f"{'target':16} {'killed':>7} {'survived':>9} {'score':>6}")
        for key, value in report.targets.items():
            total = int(value["mutants"])  # type: ignore[call-overload]
            killed = int(value["killed"])  # type: ignore[call-overload]
            print(f"{key:16} {killed:7} {total - killed:9} {killed / max(total, 1):6.0%}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", choices=[*TARGETS, []], help="modules (default: all)")
    parser.add_argument("--tests", type=Path, default=ROOT / "tests", help="the tests folder")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mutants-latest.json")
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    parser.add_argument(
        "--sample", type=int, default=0, metavar="N",
        help="at most N mutants per module, evenly spread (0: all)",
    )
    args = parser.parse_args()
    run(args.targets or list(TARGETS), args.tests.resolve(), args.out, args.list, args.sample)


if __name__ == "__main__":
    main()
