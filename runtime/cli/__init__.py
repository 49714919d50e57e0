"""``edgetl-rt``: the device-side command line.

Run (predict, evaluate, serve, drift), learn (update, tune, history, rollback, adapt, cluster), fleet (contribute,
pull), benchmark (bench), deploy (doctor, build-engine, unpack) and trust (verify, sign, keys); one module per job,
imported only when one of its commands runs. The shared options and output helpers live in :mod:`.options`,
:mod:`.output` and :mod:`.group`, and the host's ``edgetl`` reuses them (and ``predict``, ``evaluate`` and
:func:`run_bench`) from here, so both command lines speak one grammar.

Every user error is an :class:`~edgetl.runtime.errors.EdgetlError`; the group
prints its message and exits with its code (:class:`~edgetl.runtime.errors.ExitCode`),
without a traceback.
"""

from __future__ import annotations

import importlib

import click

from .group import LazyGroup, with_verbosity

#: command -> where it lives; a command's module is imported only when it runs (or help lists it).
COMMANDS = {
    "predict": ".run:predict", "evaluate": ".run:evaluate", "bench": ".bench:bench",
    "update": ".learn:update", "tune": ".learn:tune", "history": ".learn:history", "rollback": ".learn:rollback",
    "adapt": ".learn:adapt", "cluster": ".learn:cluster", "doctor": ".deploy:doctor",
    "build-engine": ".deploy:build_engine", "unpack": ".deploy:unpack", "serve": ".serve:serve",
    "verify": ".trust:verify", "sign": ".trust:sign", "keys": ".trust:keys",
    "contribute": ".fleet:contribute", "pull": ".fleet:pull",
    "drift": ".drift:drift",
}
#: what the host's ``edgetl`` reuses from here, loaded on first use (PEP 562).
_EXPORTS = {"ErrorReportingGroup": ".group", "print_json": ".output", "print_table": ".output",
            "with_bench_options": ".bench", "run_bench": ".bench", "predict": ".run", "evaluate": ".run"}

__all__ = ["main", "LazyGroup", "with_verbosity", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'edgetl.runtime.cli' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


@click.group(cls=LazyGroup, lazy_commands=COMMANDS)
@with_verbosity
@click.version_option(package_name="edgetl")
def main() -> None:
    """edgetl device runtime: run, evaluate, benchmark, keep learning and build engines (no torch needed)."""


def _moved(name: str, host_line: str) -> click.Command:
    """A hidden command that says where a host-side job went (these ran on the device before edgetl 0.2)."""
    def callback(args) -> None:
        raise click.UsageError(f"'edgetl-rt {name}' moved to the host: {host_line} (pip install \"edgetl[host]\")")

    return click.Command(name, callback=callback, hidden=True, add_help_option=False,
                         params=[click.Argument(["args"], nargs=-1)],
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


main.add_command(_moved("compare", "edgetl compare BUNDLE [DATA]"))
main.add_command(_moved("pack", "edgetl pack BUNDLE [--out FILE]"))
