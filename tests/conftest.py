"""Shared test setup.

``tests/`` and its folders are packages (each has an ``__init__.py``), so a test module is
imported by its full name (``tests.engine.test_basics``) and imports the shared harnesses the same
way (``from tests.scripted_model import ScriptedModel``): no two modules clash by their short
name, whichever folders one pytest command collects, and mypy checks them like the packages.
This is the layout pytest recommends for its default ``prepend`` import mode.
"""

#: The VM fixtures (one shared VM per test session), for every folder that boots a VM, and the
#: time limit of every test.
pytest_plugins = ["tests.vm_plugin", "tests.time_guard"]
