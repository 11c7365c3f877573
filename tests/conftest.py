"""Shared test setup.

Its presence makes pytest put ``tests/`` on ``sys.path`` (rootdir conftest, prepend import mode),
so test modules in subfolders can ``import scripted_model``.
"""

#: The VM fixtures (one shared VM per test session), for every folder that boots a VM, and the
#: time limit of every test.
pytest_plugins = ["vm_plugin", "time_guard"]
