"""The click group both command lines use: ``-q``/``-v``, and every error as one line and its exit code.

An :class:`EdgetlError` is the user's to fix: its message, prefixed by the
flag it concerns (``error: --top-k: ...``), and its code from
:class:`~edgetl.runtime.errors.ExitCode`.  Anything else is a bug or the
machine failing: one line too, exit 1, and the traceback only with ``-v``,
so a script never parses a traceback and a bug report can still have one.
"""

from __future__ import annotations

import importlib
import traceback

import click

from ..errors import EdgetlError, ExitCode
from .output import NORMAL, QUIET, VERBOSE, VERBOSITY_KEY, verbosity

#: click's own control flow and usage errors (exit 2), which click reports itself.
_CLICK_EXCEPTIONS = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)


def flag(name: str) -> str:
    """The command-line flag of an API parameter: ``top_k`` -> ``--top-k``."""
    return "--" + name.replace("_", "-")


def error_line(exc: EdgetlError) -> str:
    """``--flag: message (--remedy)``: the option the error is about, and the one that would get past it."""
    option, remedy = getattr(exc, "option", None), getattr(exc, "remedy", None)
    return (f"{flag(option)}: " if option else "") + str(exc) + (f" ({flag(remedy)})" if remedy else "")


class ErrorReportingGroup(click.Group):
    """A click group that turns every error into a one-line message on stderr and a non-zero exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgetlError as exc:
            click.echo(f"error: {error_line(exc)}", err=True)
            ctx.exit(exc.exit_code)
        except _CLICK_EXCEPTIONS:
            raise
        except Exception as exc:
            if verbosity(ctx) >= VERBOSE:
                click.echo(traceback.format_exc().rstrip(), err=True)
            hint = "" if verbosity(ctx) >= VERBOSE else " (run with -v for the traceback)"
            click.echo(f"error: unexpected {type(exc).__name__}: {exc}{hint}", err=True)
            ctx.exit(ExitCode.ERROR)


def _set_level(level: int):
    def callback(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if not value:
            return
        if ctx.meta.get(VERBOSITY_KEY, NORMAL) not in (NORMAL, level):
            raise click.UsageError("-q/--quiet and -v/--verbose exclude each other", ctx)
        ctx.meta[VERBOSITY_KEY] = level
    return callback


def with_verbosity(func):
    """``-q/--quiet`` and ``-v/--verbose`` on a group; commands read the level from the context."""
    func = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_level(QUIET),
                        help="No progress or notes on stderr (warnings and errors are still printed).")(func)
    return click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_level(VERBOSE),
                        help="More detail on stderr: why an artifact was chosen, the traceback of an "
                             "unexpected error.")(func)


class LazyGroup(ErrorReportingGroup):
    """A group whose commands are named in a table (name -> ``module:function``) and imported when one is run
    or listed, so ``edgetl-rt predict`` loads the module of ``predict`` only (click's documented lazy loading)."""

    def __init__(self, *args, lazy_commands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy_commands and name not in self.commands:
            module, function = self.lazy_commands[name].split(":")
            self.add_command(getattr(importlib.import_module(module, __package__), function), name)
        return super().get_command(ctx, name)
