"""The VM fixtures (``vm_config``, ``shared_vm``) live in ``tests/vm_plugin.py``, a plugin that
``tests/conftest.py`` registers, so that every folder shares one VM per test session."""
