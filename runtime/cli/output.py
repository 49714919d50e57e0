"""What the command lines print, and how loudly.

Results go to stdout (a table, or one JSON object with ``--json``, which
scripts read); notes, warnings and progress go to stderr.  ``-q`` silences
progress and notes, never warnings or errors; ``-v`` adds detail such as why
an artifact was chosen.  The level lives in the click context's ``meta``,
shared by every nested context, so a command defined once reads the level of
whichever group (``edgetl`` or ``edgetl-rt``) started it.
"""

from __future__ import annotations

import json

import click

from ..progress import ProgressBar, silent_progress, terminal_progress

VERBOSITY_KEY = "edgetl.verbosity"
QUIET, NORMAL, VERBOSE = -1, 0, 1


def verbosity(ctx: click.Context | None = None) -> int:
    """QUIET, NORMAL or VERBOSE, as the group's ``-q``/``-v`` set it (NORMAL outside a command)."""
    ctx = ctx or click.get_current_context(silent=True)
    return ctx.meta.get(VERBOSITY_KEY, NORMAL) if ctx else NORMAL


def print_json(data) -> None:
    """One JSON object on stdout: a dict, or a typed report (its ``to_json()``); numpy scalars as numbers."""
    click.echo(json.dumps(data, indent=2, default=_plain))


def _plain(value):
    return value.to_json() if hasattr(value, "to_json") else float(value)


def print_table(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        if isinstance(value, float):
            value = f"{value:.4g}"
        click.echo(f"{name.ljust(width)}  {value}")


def inputs_of(bundle) -> str:
    """What a bundle's model reads, in the plural, for tables: ``texts`` for a text model, else ``images``."""
    from ..bundle.manifest import read_bundle_manifest

    return "texts" if read_bundle_manifest(bundle, verify=False).modality == "text" else "images"


def fmt(value: float | None) -> str:
    """A rate to four places, or ``-`` when there is none."""
    return "-" if value is None else f"{value:.4f}"


def note(message: str) -> None:
    """A line on stderr about what is happening; ``-q`` drops it unless it is a warning."""
    if verbosity() > QUIET or message.startswith("warning:"):
        click.echo(message, err=True)


def warn(message: str) -> None:
    """A warning on stderr, printed even with ``-q``: something the user should act on."""
    click.echo(f"warning: {message}", err=True)


def detail(message: str) -> None:
    """A line on stderr only with ``-v``."""
    if verbosity() >= VERBOSE:
        click.echo(message, err=True)


def progress(label: str, total: int) -> ProgressBar:
    """The ``progress`` factory commands give the library: a bar on stderr, none with ``-q``."""
    return (silent_progress if verbosity() == QUIET else terminal_progress)(label, total)
