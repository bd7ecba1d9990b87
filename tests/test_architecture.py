"""The package's layers hold: the import-linter contracts (.importlinter) are kept, and no module imports the
package's own modules inside a function (which would hide a circle) except the documented lazy imports that keep
`l2l` starting fast."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "l2l_cli"
# (module, imported module): lazy on purpose, each with a comment saying why
LAZY_IMPORTS = {
    ("l2l_cli/__init__.py", "l2l_cli.api.torch_optimizer"),  # `from l2l_cli import LearnedOptimizer` loads torch
    ("l2l_cli/cli/main.py", "l2l_cli.cli.errors"),  # `l2l --help`, plot, pretrained start without hydra / torch
    ("l2l_cli/cli/main.py", "l2l_cli.cli.config"),
}


def function_level_imports(path: Path) -> list[tuple[str, int]]:
    """(imported l2l_cli module, line) of every import statement inside a function or method of ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("l2l_cli"):
                    found.append((inner.module, inner.lineno))
                elif isinstance(inner, ast.Import):
                    found += [(a.name, inner.lineno) for a in inner.names if a.name.startswith("l2l_cli")]
    return found


def test_no_function_level_imports_of_the_package_but_the_documented_lazy_ones():
    seen = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        for module, line in function_level_imports(path):
            assert (relative, module) in LAZY_IMPORTS, f"{relative}:{line} imports {module} inside a function"
            lines = path.read_text().splitlines()
            assert any("lazy" in text.lower() for text in lines[max(0, line - 4): line]), \
                f"{relative}:{line}: a lazy import needs a comment saying why"
            seen.add((relative, module))
    assert seen == LAZY_IMPORTS  # a lazy import that is gone leaves the list too


def test_import_linter_contracts_are_kept():
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--config",
                             str(ROOT / ".importlinter"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "BROKEN" not in result.stdout
