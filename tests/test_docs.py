"""The documentation site builds with ``mkdocs build --strict`` (what ``make docs`` runs), and its CLI reference,
generated from the click commands, lists every visible command of both command lines with its options."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_PACKAGES = ("mkdocs", "material", "mkdocs_click")
MISSING = [name for name in DOCS_PACKAGES if importlib.util.find_spec(name) is None]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f'{", ".join(MISSING)} not installed: '
                                                      'pip install "edgetl[docs]"')


def visible_commands(group: click.Group, prefix: str) -> list[str]:
    """``prefix name`` of every command ``group`` lists and does not hide, sub-groups included."""
    ctx = click.Context(group, info_name=prefix)
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command.hidden:
            continue
        found.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            found += visible_commands(command, f"{prefix} {name}")
    return found


def anchor(command_path: str) -> str:
    return 'id="' + command_path.replace(" ", "-") + '"'


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("module, prog, page", [("edgetl.cli", "edgetl", "edgetl"),
                                                ("edgetl.runtime.cli", "edgetl-rt", "edgetl-rt")])
def test_cli_reference_lists_every_command(site, module, prog, page):
    html = (site / "cli" / page / "index.html").read_text()
    commands = visible_commands(importlib.import_module(module).main, prog)
    assert len(commands) >= 10
    missing = [command for command in commands if anchor(command) not in html]
    assert not missing, f"commands missing from the generated reference: {missing}"
    assert "Sentinel" not in html            # no click internals leaking into the rendered defaults


@pytest.mark.parametrize("page, command, option", [
    ("edgetl-rt", "edgetl-rt update", "--holdout"),
    ("edgetl-rt", "edgetl-rt serve", "--max-batch"),
    ("edgetl", "edgetl finetune", "--head"),
    ("edgetl", "edgetl data export", "--classes"),
])
def test_cli_reference_shows_options(site, page, command, option):
    html = (site / "cli" / page / "index.html").read_text()
    start = html.index(anchor(command))
    following = html.find('id="' + command.split()[0], start + len(anchor(command)))
    section = html[start:following if following != -1 else len(html)]
    assert option in section

