"""How the code's parts may depend on each other, beside the import-linter contracts that `make lint` checks
([tool.importlinter] in pyproject.toml)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accounts", "billing", "config", "core", "fleet", "marketplace", "ops")


def private_imports(source: str) -> list[tuple[int, str, str]]:
    """(line, module, name) of each `from module import _name` in `source`: a private name taken from another module
    (dunder names, such as __version__, are public)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append((node.lineno, module, alias.name))
    return found


def test_the_check_finds_a_private_name_imported_inside_a_function():
    source = "def f():\n    from .dispatch import _release\n    from . import storage, _cache\nimport os\n"
    assert private_imports(source) == [(2, ".dispatch", "_release"), (3, ".", "_cache")]


def test_no_module_imports_another_modules_private_name():
    """A private name is its module's own business: a caller that needs it gets a public function instead."""
    offences = [
        f"{path.relative_to(ROOT)}:{line}: from {module} import {name}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
        for line, module, name in private_imports(path.read_text())
    ]
    assert offences == []
