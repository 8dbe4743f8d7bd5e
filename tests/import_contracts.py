"""import-linter contracts of our own, registered in pyproject.toml ([tool.importlinter] contract_types) and so
checked by `make lint` beside the built-in ones.

`private_names`: no module imports another module's private name (`from .dispatch import _release`): a private name is
its module's own business, and a caller that needs it gets a public function instead. import-linter's built-in
`private_modules` contract covers private *modules* (`_name.py`) only, and grimp records the first line of each import
statement, so the names are read from each module's syntax tree, imports inside functions included.
"""

from __future__ import annotations

import ast
import importlib.util

from importlinter import Contract, ContractCheck, fields, output


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


class PrivateNamesContract(Contract):
    """Configuration: `packages`, the packages whose modules are checked (their migrations are left out: Django
    writes those)."""

    type_name = "private_names"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        offences = []
        for module in sorted(graph.modules):
            if module.split(".")[0] not in self.packages or ".migrations" in module:
                continue
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                continue
            with open(spec.origin, encoding="utf-8") as source:
                for line, imported, name in private_imports(source.read()):
                    offences.append(f"{module}:{line}: from {imported} import {name}")
        return ContractCheck(kept=not offences, metadata={"offences": offences})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for offence in check.metadata["offences"]:
            output.print_error(offence)
        output.new_line()
        output.print("Give the caller a public function instead of importing a private name.")
