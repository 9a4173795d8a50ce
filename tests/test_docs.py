"""The README is an entry point and every link in it and in docs/ leads somewhere."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_short_and_gives_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    assert "pip install torch==2.13.0" in text and "fedrec simulate" in text
    assert "python -m pytest -q" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci  # CI runs the README's test command


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_every_fedrec_command_the_docs_name_exists():
    from fedrec.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"^\s*fedrec ([a-z][a-z-]+)", page.read_text(), flags=re.M))
        named |= set(re.findall(r"`fedrec ([a-z][a-z-]+)", page.read_text()))
    assert named and named <= commands, named - commands
