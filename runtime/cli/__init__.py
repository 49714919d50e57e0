"""``edgetl-rt``: the device-side command line.

Run (predict, evaluate), learn (update, history, rollback, adapt, cluster),
measure (bench) and deploy (doctor, build-engine, unpack); one module per
job.  The shared options and output helpers live in :mod:`.options`,
:mod:`.output` and :mod:`.group`, and the host's ``edgetl`` reuses them (and
``predict``, ``evaluate`` and :func:`run_bench`) from here, so both command
lines speak one grammar.

Every user error is an :class:`~edgetl.runtime.errors.EdgetlError`; the group
prints its message and exits with its code (:class:`~edgetl.runtime.errors.ExitCode`),
without a traceback.
"""

from __future__ import annotations

import click

from .deploy import build_engine, doctor, unpack
from .group import ErrorReportingGroup, with_verbosity
from .learn import adapt, cluster, history, rollback, update
from .measure import bench, run_bench, with_bench_options
from .output import print_json, print_table
from .run import evaluate, predict

__all__ = ["main", "ErrorReportingGroup", "with_verbosity", "print_json", "print_table", "with_bench_options",
           "run_bench", "predict", "evaluate"]


@click.group(cls=ErrorReportingGroup)
@with_verbosity
@click.version_option(package_name="edgetl")
def main() -> None:
    """edgetl device runtime: run, evaluate, benchmark, keep learning and build engines (no torch needed)."""


for _command in (predict, evaluate, bench, update, history, rollback, adapt, cluster, doctor, build_engine, unpack):
    main.add_command(_command)


def _moved(name: str, host_line: str) -> click.Command:
    """A hidden command that says where a host-side job went (these ran on the device before edgetl 0.2)."""
    def callback(args) -> None:
        raise click.UsageError(f"'edgetl-rt {name}' moved to the host: {host_line} (pip install \"edgetl[host]\")")

    return click.Command(name, callback=callback, hidden=True, add_help_option=False,
                         params=[click.Argument(["args"], nargs=-1)],
                         context_settings={"ignore_unknown_options": True, "allow_extra_args": True})


main.add_command(_moved("compare", "edgetl compare BUNDLE [DATA]"))
main.add_command(_moved("pack", "edgetl pack BUNDLE [--out FILE]"))
