"""The map stays true: docs/architecture.md names every module and only existing paths, its
family table is the code's, and no function grows past one screen."""

import ast
import re
from pathlib import Path

from icdistill.config import FAMILIES as CONFIG_FAMILIES
from icdistill.detectors.families import FAMILIES, family_table_markdown

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "icdistill"
PAGE = ROOT / "docs" / "architecture.md"
MAX_FUNCTION_LINES = 80


def modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def test_every_module_is_on_the_map():
    page = PAGE.read_text()
    missing = [m for m in modules() if f"`{m}`" not in page]
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_every_path_on_the_map_exists():
    page = PAGE.read_text()
    named = set(re.findall(r"`([\w./]+\.py)(?:::\w+)?`", page))
    assert len(named) >= len(modules())
    absent = [p for p in named if not ((PACKAGE / p).is_file() or (ROOT / p).is_file())]
    assert not absent, f"docs/architecture.md names paths that do not exist: {absent}"


def test_the_family_table_on_the_map_is_the_code_table():
    page = PAGE.read_text()
    table = page.split("<!-- family table: begin -->\n")[1].split("\n<!-- family table: end -->")[0]
    assert table == family_table_markdown()


def test_config_choices_follow_the_tables():
    assert tuple(CONFIG_FAMILIES) == FAMILIES


def test_no_function_is_longer_than_one_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}::{node.name} ({lines} lines)")
    assert not long, long


def test_the_engine_and_cli_never_name_a_method():
    """The engine and CLI see a method only through the slot (`grep -rniw icd` finds nothing)."""
    hits = []
    for path in [*sorted((PACKAGE / "engine").glob("*.py")), PACKAGE / "cli.py"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?<![\w])icd(?![\w])", line, flags=re.IGNORECASE):
                hits.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not hits, hits
