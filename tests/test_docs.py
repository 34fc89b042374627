"""The documentation stays true to the code: the README's shape and example, and every
``dynbn ...`` command that a page or a report tells a reader to run parses with today's CLI."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

import dynbn
from dynbn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["method.md", "benchmarks.md", "service.md", "development.md"]


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_readme_is_short_and_starts_with_the_two_commands():
    text = _readme()
    assert len(text.splitlines()) <= 200
    head = "\n".join(text.splitlines()[:15])
    assert "dynbn scenario run" in head and "python -m pytest" in head


def test_readme_example_uses_only_the_public_api():
    block = re.search(r"```python\n(.*?)```", _readme(), re.S).group(1)
    used = {node.attr for node in ast.walk(ast.parse(block))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "dynbn"}
    assert used and used <= set(dynbn.__all__), f"not exported by dynbn: {sorted(used - set(dynbn.__all__))}"


def test_docs_pages_exist_and_link_back():
    for page in PAGES:
        assert (ROOT / "docs" / page).is_file(), page
        assert f"docs/{page}" in _readme()


def _commands() -> list[tuple[str, str]]:
    """(where, command) for every runnable ``dynbn`` command in the pages and reports: lines of code
    blocks, and inline commands that write a result (``--out``); a bare mention is not a command."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        text = path.read_text()
        blocks = "\n".join(re.findall(r"```[a-z]*\n(.*?)```", text, re.S))
        inline = [c for c in re.findall(r"`(dynbn [^`\n]+)`", text) if " --out " in c]
        lines = [line.split("#")[0].strip() for line in blocks.splitlines()]
        for cmd in inline + [line for line in lines if line.startswith("dynbn ")]:
            if re.search(r"[A-Z]{3,}|\.\.\.|\[|<", cmd):  # a placeholder (FILE, NAME.key=...), not a command
                continue
            found.append((str(path.relative_to(ROOT)), cmd))
    return found


def test_every_report_names_its_regenerate_command():
    reports = sorted((ROOT / "docs" / "results").rglob("*.md"))
    assert reports
    for path in reports:
        assert re.search(r"^Regenerate: `dynbn [^`]+`$", path.read_text(), re.M), path


@pytest.mark.parametrize("where,command", _commands())
def test_documented_command_parses(where, command):
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: `{command}` does not parse with the current CLI (exit {exc.code})")
