"""The README's map of the tree matches the tree: every module of `genqueue/` is named in
it, and every file it names exists (issue 13: "The README's map matches the tree")."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _map_names() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```\ngenqueue/\n")
    block = readme[start : readme.index("```", start + 3)]
    return set(re.findall(r"[A-Za-z_*][\w*]*\.py", block))  # names and globs (openapi*.py)


def test_every_module_is_in_the_readme_map() -> None:
    names = _map_names()
    modules = sorted((ROOT / "genqueue").rglob("*.py"))
    assert len(modules) > 50
    unnamed = [
        str(path.relative_to(ROOT))
        for path in modules
        if path.name != "__init__.py" and not any(fnmatch.fnmatch(path.name, n) for n in names)
    ]
    assert unnamed == [], f"modules the README's map does not name: {unnamed}"


def test_every_file_the_map_names_exists() -> None:
    files = [
        p.name
        for folder in ("genqueue", "tools", "bench", "tests")
        for p in (ROOT / folder).rglob("*.py")
    ] + ["main.py"]
    gone = [n for n in sorted(_map_names()) if not any(fnmatch.fnmatch(f, n) for f in files)]
    assert gone == [], f"files the README's map names but the tree lacks: {gone}"
