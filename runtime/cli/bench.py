"""Benchmarking: ``bench``, the benchmark matrix of a bundle on this machine.

``edgetl bench`` on the host takes the same options (:func:`with_bench_options`)
and runs the same :func:`run_bench`, adding ``--compare`` and the report files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..data.text import DEFAULT_SEQ_LEN
from .options import THREADS_LIST_HELP, json_option, optional_data_argument, trusted_keys_option
from .output import note, print_json

#: Printed at the top level of ``--json`` too when the matrix has one row (one artifact, backend, thread count
#: and batch), as scripts read them before the matrix existed.
SINGLE_CELL_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput_per_s", "load_s", "peak_rss_mb")


def _ints(text: str | None, name: str) -> tuple:
    if not text:
        return (None,)
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint=name) from None


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in text.split(",") if v.strip()) if text else None


bench_options = [
    click.argument("bundle", type=click.Path(file_okay=False), required=False),
    optional_data_argument("Measure accuracy again on this labelled data (default: the manifest's figures)."),
    click.option("--artifacts", "--artifact", "artifacts", default=None, help="Comma-separated artifact names."),
    click.option("--backends", "--backend", "backends", default=None,
                 help="Comma-separated backends (onnxruntime, openvino, tensorrt)."),
    click.option("--precisions", default=None, help="Comma-separated precisions (fp32, fp16, int8)."),
    click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8."),
    click.option("--seq-len", "seq_lens", default=str(DEFAULT_SEQ_LEN), show_default=True,
                 help="A text model's tokens per text, comma-separated, e.g. 16,64,256 (ignored for images)."),
    click.option("--threads", default=None, help=THREADS_LIST_HELP),
    click.option("--target", default=None, help="Device profile: its backends, precisions and memory budget."),
    click.option("--out", type=click.Path(file_okay=False), default=None,
                 help="Write results.json and results.csv here (the host's 'edgetl bench' adds report.md and "
                      "pareto.png)."),
    click.option("--min-runs", type=int, default=100, show_default=True),
    click.option("--min-seconds", type=float, default=3.0, show_default=True),
    click.option("--warmup-runs", type=int, default=10, show_default=True),
    click.option("--noise-threshold", type=float, default=1.5, show_default=True,
                 help="Flag rows whose p99/p50 exceeds this."),
    click.option("--in-process", is_flag=True, help="Measure every cell in this process (faster; RSS accumulates)."),
    click.option("--record", is_flag=True,
                 help="Keep the batch-1 figures in BUNDLE/timings/ so the runtime runs the fastest artifact here."),
    trusted_keys_option,
    json_option,
]


def with_bench_options(func):
    """BUNDLE [DATA] and the matrix options, for ``edgetl-rt bench`` and ``edgetl bench``."""
    for option in reversed(bench_options):
        func = option(func)
    return func


def single_cell_figures(result: dict) -> dict:
    """The headline figures of a one-row matrix, for the top level of the result; nothing for a larger one."""
    rows = result["rows"]
    return {key: rows[0][key] for key in SINGLE_CELL_KEYS} if len(rows) == 1 else {}


def run_bench(bundle, artifacts, backends, precisions, batches, seq_lens, threads, target, data, out, min_runs,
              min_seconds, warmup_runs, noise_threshold, in_process, record, as_json, write=None) -> dict:
    """The matrix, recorded, written (``write(result, out)``) and printed as the options say."""
    from ..engines.latency import BenchSettings
    from ..tools.bench import MatrixSettings, run_matrix, table_lines, write_results

    if bundle is None:
        raise click.UsageError("give BUNDLE")
    settings = MatrixSettings(
        batches=_ints(batches, "--batch"), seq_lens=_ints(seq_lens, "--seq-len"), threads=_ints(threads, "--threads"),
        artifacts=_names(artifacts),
        backends=_names(backends), precisions=_names(precisions), target=target, isolate=not in_process,
        noise_threshold=noise_threshold,
        bench=BenchSettings(warmup_runs=warmup_runs, min_runs=min_runs, min_seconds=min_seconds),
    )
    result = run_matrix(bundle, settings, data=data, log=note)
    result.update(single_cell_figures(result))
    result["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    if record:
        from ..bundle.timings import record_timings

        note(f"recorded {record_timings(bundle, result)}: the runtime now runs the fastest artifact here")
    if out:
        written = (write or write_results)(result, out)
        note(f"wrote {', '.join(str(p) for p in written.values())}")
    if as_json:
        print_json(result)
    else:
        for line in table_lines(result):
            click.echo(line)
    return result


@click.command()
@with_bench_options
@click.option("--compare", nargs=2, hidden=True, default=None,
              help="Moved to the host: edgetl bench --compare A.json B.json.")
def bench(compare, **options) -> None:
    """Latency (p50/p90/p99), throughput, cold start, memory, size and accuracy of every artifact of BUNDLE
    this machine can run, per backend, thread count and batch size; with DATA, accuracy measured on it."""
    if compare:
        raise click.UsageError("comparing results moved to the host: edgetl bench --compare A.json B.json")
    run_bench(**options)
