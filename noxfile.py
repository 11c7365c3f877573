"""Project tasks. ``uv run nox`` runs the default sessions: type checks and the whole test suite.

Sessions reuse the uv workspace environment (``uv run``) instead of building their own: the
workspace is already locked and installed by ``scripts/setup.sh``, and CI has no time to spare.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["mypy", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """pytest over tests/ and the doctests of the packages (VM tests included)."""
    session.run("uv", "run", "--frozen", "pytest", *session.posargs, external=True)


@nox.session(venv_backend="none")
def mypy(session: nox.Session) -> None:
    """mypy --strict over the three packages and tests/ (configured in pyproject.toml)."""
    session.run("uv", "run", "--frozen", "mypy", external=True)


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks; figures are printed and written to bench/results/latest.json."""
    session.run("uv", "run", "--frozen", "python", "-m", "bench", *session.posargs, external=True)


@nox.session(venv_backend="none")
def mutants(session: nox.Session) -> None:
    """Mutation testing (scripts/mutants.py) of the codec, the guest's sessions and interrupts, the
    engine's budgets and recursion, batch results and resume; not a default session (it takes
    tens of minutes). ``nox -s mutants -- budget --sample 20`` runs a part."""
    session.run(
        "uv", "run", "--frozen", "python", "scripts/mutants.py", *session.posargs, external=True
    )
