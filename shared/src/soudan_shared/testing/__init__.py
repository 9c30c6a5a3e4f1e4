"""Test support shared by every package's tests: fixtures (``plugin``) and fault tools.

Loaded by pytest through ``-p soudan_shared.testing.plugin`` (root ``pyproject.toml``).
"""
