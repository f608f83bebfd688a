"""The README's layout table matches the tree (every Python module is named in its folder's row),
and every test the README and docs/ cite as evidence exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\| `(?P<path>[^`]+)` \| (?P<what>.*) \|$")


def _layout_rows() -> dict[str, str]:
    """``path -> description`` of each row of the README's "Layout" table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return {m["path"]: m["what"] for line in section.splitlines() if (m := ROW.match(line))}


def test_every_python_module_is_named_in_the_layout_table():
    rows = _layout_rows()
    missing = []
    for path in sorted((ROOT / "veilface").rglob("*.py")) + sorted((ROOT / "services").rglob("*.py")):
        relative = path.relative_to(ROOT)
        folder = f"{relative.parent.as_posix()}/"
        if path.stem == "__init__":
            named = folder in rows
        else:
            stem = path.name if folder.startswith("services/") else path.stem
            named = f"`{stem}`" in rows.get(folder, "")
        if not named:
            missing.append(relative.as_posix())
    assert not missing, f"README's layout table does not name: {missing}"


def test_every_row_of_the_layout_table_exists():
    stale = [path for path in _layout_rows() if not (ROOT / path).exists()]
    assert not stale, f"README's layout table names paths that do not exist: {stale}"


#: ``tests/test_x.py`` or ``tests/test_x.py::test_name``, as the README and docs/ cite tests.
CITED_TEST = re.compile(r"tests/(?P<file>[a-z0-9_]+\.py)(?:::(?P<name>[A-Za-z0-9_]+))?")


def test_every_test_the_docs_cite_exists():
    missing = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for cited in CITED_TEST.finditer(doc.read_text(encoding="utf-8")):
            path = ROOT / "tests" / cited["file"]
            source = path.read_text(encoding="utf-8") if path.is_file() else None
            named = cited["name"] is None or re.search(rf"\bdef {cited['name']}\b", source or "")
            if source is None or not named:
                missing.add(f"{doc.relative_to(ROOT)}: {cited[0]}")
    assert sorted(missing) == []
