"""The marketplace tests share the fixtures of tests/conftest.py (digits model, inline tasks)."""
