"""``edgetl-rt drift``: how far a batch of inputs has moved from what the head learned from."""

from __future__ import annotations

from pathlib import Path

import click

from ..data.sources import SPLITS
from .options import json_option, skip_bad_option, trusted_keys_option, with_model_options
from .output import note, print_json, print_table, progress, warn


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("data")
@click.option("--window", type=click.IntRange(min=2), default=64, show_default=True,
              help="Inputs per scored window, taken in DATA's order (the last one may be shorter).")
@click.option("--false-alarms", type=click.FloatRange(min=0, max=1000, min_open=True, max_open=True), default=1.0,
              show_default=True,
              help="The alarm level: clean windows per 1,000 allowed over it, set on windows drawn from the "
                   "store's held-out rows.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the clean windows drawn to set the "
                                                                     "alarm level.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write the score per window, with the alarm level, to this PNG file.")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Which split of DATA (default: all of it, in its order).")
@skip_bad_option
@trusted_keys_option
@json_option
@with_model_options
def drift(bundle, data, window, false_alarms, seed, plot_path, split, skip_bad, as_json, artifact, backend,
          threads, no_measure) -> None:
    """Drift score of DATA (images or texts; labels ignored) against the training statistics of BUNDLE's head, per
    window of inputs, and the windows over the alarm level."""
    from ..errors import ConfigError
    from ..inference.drift_batch import drift_bundle
    from ..inference.model import EdgeModel

    if plot_path and not Path(plot_path).resolve().parent.is_dir():
        raise ConfigError(f"the folder of {plot_path} does not exist", option="plot")
    with EdgeModel(bundle, artifact=artifact, backend=backend, threads=threads, measure=not no_measure,
                   log=note) as model:
        report = drift_bundle(model, data, window=window, false_alarms=false_alarms, seed=seed, split=split,
                              skip_bad=skip_bad, progress=progress)
    if report.skipped:
        warn(f"skipped {len(report.skipped)} bad input(s), e.g. {report.skipped[0]}")
    if plot_path:
        import io

        from ..fsutil import atomic_write_bytes
        from ..tools.drift_plot import draw_drift

        buffer = io.BytesIO()
        draw_drift(buffer, [w.score for w in report.windows], [w.alarm for w in report.windows], report.threshold,
                   f"drift of {data} against {bundle} (windows of {window}; {report.alarms} alarms)")
        atomic_write_bytes(plot_path, buffer.getvalue())
    if as_json:
        print_json(report)
        return
    rows = [("data", f"{data} [{report.split}]"), ("inputs", report.n), ("window", window),
            ("alarm level", f"{report.threshold:.3f} ({false_alarms:g} false alarms per 1,000 clean windows)"),
            ("alarms", f"{report.alarms} of {len(report.windows)} windows")]
    rows += [(f"  window {w.index} [{w.start}, {w.stop})", f"{w.score:.3f}{'  ALARM' if w.alarm else ''}")
             for w in report.windows]
    print_table(rows)
    if plot_path:
        note(f"plot written to {plot_path}")
