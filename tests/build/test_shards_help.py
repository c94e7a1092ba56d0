"""Every option of ``shards build|inspect|verify|audit`` has a one-line description and shows its default."""
from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys

import pytest

from shards.cli_args import HelpFormatter, make_parser

pytestmark = pytest.mark.timeout(120)
ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMANDS = ("build", "inspect", "verify", "audit")


def help_entries(text: str) -> dict[str, str]:
    """{option or positional name: its description} from argparse's help output."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if m:  # "  --opt VALUE   description" or "  --opt VALUE" (description on the next lines)
            current = m.group(1).split(",")[0].split()[0]
            entries[current] = m.group(2) or ""
        elif current and line.startswith("      ") and line.strip():
            entries[current] += " " + line.strip()
        elif not line.strip() or not line.startswith(" "):
            current = None
    return entries


def problems(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """What is missing from ``text`` (the parser's --help): a description, or a shown default."""
    entries = help_entries(text)
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else (action.metavar or action.dest)
        desc = entries.get(name)
        if not desc:
            found.append(f"{name}: no description")
        elif action.option_strings and not action.required and "(default: " not in desc:
            found.append(f"{name}: no default shown")
    return found


def subparsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_described_with_its_default(command):
    env = {**os.environ, "COLUMNS": "100"}
    run = subprocess.run([sys.executable, "-m", "shards", command, "--help"], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    parser = subparsers()[command]
    assert problems(parser, run.stdout) == []
    assert "(default: None)" not in run.stdout


def test_build_help_shows_the_values_users_ask_for():
    text = subparsers()["build"].format_help()
    for piece in ("--format {arrow,tar}", "(default: arrow)", "(default: 64MB)", "(default: 1)",
                  "(default: line)", "--label-map", "(default: 8MiB)"):
        assert piece in text


def test_the_check_finds_an_option_without_help_or_default():
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--described", default=3, help="has both")
    p.add_argument("--bare", default=2)
    p.add_argument("--nodefault", default=None, help="says nothing of its default")
    assert problems(p, p.format_help()) == ["--bare: no description", "--nodefault: no default shown"]
