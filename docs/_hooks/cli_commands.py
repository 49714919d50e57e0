"""MkDocs hook: load every lazily registered click command before mkdocs-click renders the CLI reference.

``edgetl-rt`` (and any group built on ``LazyGroup``) imports a command's module only when the command is run or
listed through ``get_command``.  mkdocs-click reads ``group.commands`` directly when it is not empty, so without
this hook the reference would list only the commands registered eagerly and miss the lazy ones.  Loading them
through the group's own ``list_commands`` / ``get_command`` keeps the reference generated from the code.
"""

from __future__ import annotations

import importlib

import click

#: the command lines the reference documents: module -> attribute of the top-level group
GROUPS = {"edgetl.cli": "main", "edgetl.runtime.cli": "main"}


def load_commands(group: click.Group) -> None:
    """Register every command ``group`` can list (recursively) in ``group.commands``, as click would on use."""
    ctx = click.Context(group, info_name=group.name)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None:
            raise RuntimeError(f"{group.name}: listed command {name!r} cannot be loaded")
        group.commands.setdefault(name, command)
        if isinstance(command, click.Group):
            load_commands(command)


def on_startup(command: str, dirty: bool) -> None:
    for module, attribute in GROUPS.items():
        load_commands(getattr(importlib.import_module(module), attribute))
