"""How the code's parts may depend on each other, beside the import-linter contracts that `make lint` checks
([tool.importlinter] in pyproject.toml)."""

from tests.import_contracts import private_imports


def test_the_check_finds_a_private_name_imported_inside_a_function():
    source = "def f():\n    from .dispatch import _release\n    from . import storage, _cache\nimport os\n"
    assert private_imports(source) == [(2, ".dispatch", "_release"), (3, ".", "_cache")]
