"""The architecture page cannot go stale: every file it names exists, every package of l2l_cli is in its table, and
every module of the package is named on it; the README stays a short front door."""

from __future__ import annotations

import re

from conftest import ROOT

PAGE = ROOT / "docs" / "architecture.md"


def named_paths(text: str) -> set[str]:
    """Backticked repository paths (`l2l_cli/...`, `conf/...`, `tests/...`, ...), placeholders like <name> left out."""
    paths = set()
    for quoted in re.findall(r"`([^`\s]+)`", text):
        if re.match(r"(l2l_cli|conf|tests|benchmarks|examples|docs)/", quoted) and "<" not in quoted:
            paths.add(quoted.rstrip("/"))
    return paths


def test_every_path_the_architecture_page_names_exists():
    missing = sorted(p for p in named_paths(PAGE.read_text()) if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_every_package_and_module_is_on_the_architecture_page():
    text = PAGE.read_text()
    table = {row.split("|")[1].strip().strip("`") for row in text.splitlines() if row.startswith("| `l2l_cli")}
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "l2l_cli").rglob("__init__.py")}
    packages -= {"l2l_cli"}
    assert packages == table, f"packages not in the table: {sorted(packages - table)}; " \
                              f"in the table but gone: {sorted(table - packages)}"
    named = named_paths(text)
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "l2l_cli").rglob("*.py")
               if p.name != "__init__.py" and p.parent != ROOT / "l2l_cli"}
    assert not sorted(modules - named), f"modules the page does not name: {sorted(modules - named)}"


def test_the_readme_is_a_short_front_door_linking_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make train" in readme and "make test" in readme
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", readme))
    assert pages <= linked | {"docs/index.md"}, f"docs pages the README does not link: {sorted(pages - linked)}"
