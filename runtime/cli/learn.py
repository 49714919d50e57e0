"""Learning on the device: ``update``, ``tune``, ``history``, ``rollback``, ``adapt`` and ``cluster``.

The library does the work (:mod:`edgetl.runtime.learning`, :mod:`edgetl.runtime.bundle.store`,
:mod:`edgetl.runtime.tools.cluster`), imported inside each command so that
``edgetl-rt predict`` does not pay for them.
"""

from __future__ import annotations

from dataclasses import asdict

import click

from ..learning.settings import ADAPT_METHODS, METHODS, UpdateSettings
from .options import json_option, overwrite_option, skip_bad_option, trusted_keys_option, with_model_options
from .output import fmt, inputs_of, print_json, print_table, progress


def _version_dict(version) -> dict:
    """A store version as users script against it (file hashes left out)."""
    return {k: v for k, v in asdict(version).items() if k != "files"}


def lock_timeout_option(func):
    """``--lock-timeout``: how long a writer of the feature store waits for another."""
    return click.option("--lock-timeout", type=float, default=UpdateSettings.lock_timeout, show_default=True,
                        help="Seconds to wait for another update of the bundle to finish.")(func)


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("data")
@click.option("--method", type=click.Choice(METHODS), default=UpdateSettings.method, show_default=True,
              help="ridge: exact streaming ridge; sgd: logistic head with replay; ncm: nearest class mean.")
@click.option("--holdout", "holdout_fraction", type=float, default=UpdateSettings.holdout_fraction, show_default=True,
              help="Share of the new samples (images or texts) kept out of training to measure accuracy.")
@click.option("--max-accuracy-drop", type=float, default=UpdateSettings.max_accuracy_drop, show_default=True,
              help="Refuse to commit (exit 6) when accuracy on the earlier held-out samples falls by more points.")
@click.option("--force", is_flag=True, help="Commit even when the accuracy guard objects.")
@click.option("--reselect-alpha", is_flag=True, help="ridge: search the regularisation again now.")
@click.option("--alpha-search-min", type=click.IntRange(min=1), default=UpdateSettings.alpha_search_min,
              show_default=True,
              help="A due regularisation search (the samples grew by a quarter) runs only on an update with at least "
                   "this many new training samples; smaller updates keep alpha (edgetl-rt tune runs it on demand).")
@lock_timeout_option
@skip_bad_option
@trusted_keys_option
@json_option
@with_model_options
def update(bundle, data, method, holdout_fraction, max_accuracy_drop, force, reselect_alpha, alpha_search_min,
           lock_timeout, skip_bad, as_json, artifact, backend, threads, no_measure) -> None:
    """Learn labelled DATA (image folder or CSV; new class names extend the head) into BUNDLE's head."""
    from ..learning.update import update_bundle

    settings = UpdateSettings(method=method, holdout_fraction=holdout_fraction, max_accuracy_drop=max_accuracy_drop,
                              force=force, lock_timeout=lock_timeout, skip_bad=skip_bad,
                              reselect_alpha=reselect_alpha, alpha_search_min=alpha_search_min)
    report = update_bundle(bundle, data, settings, artifact=artifact, backend=backend, threads=threads,
                           progress=progress, measure=not no_measure)
    if as_json:
        print_json(report)
        return
    print_table([
        ("version", f"{report.version} (from {report.parent}, {report.method})"),
        (f"new {inputs_of(bundle)}", f"{report.n_new} ({report.n_train_new} train, {report.n_holdout_new} "
                                     f"held out; {report.n_duplicate} already stored)"),
        ("classes", f"{len(report.classes)}" + (f" (new: {', '.join(report.new_classes)})"
                                                 if report.new_classes else "")),
        ("held-out accuracy", f"{fmt(report.accuracy)} on {report.holdout_n} samples"),
        ("earlier held-out", f"{fmt(report.accuracy_before)} -> {fmt(report.accuracy_after_on_earlier_holdout)}"),
        ("backbone s", report.timings.backbone_s), ("head math s", report.timings.head_s),
        ("commit s", report.timings.commit_s), ("alpha", _alpha_line(report)),
        ("evicted", report.evicted),
    ])


def _alpha_line(report) -> str:
    """The regularisation of an :class:`~edgetl.runtime.learning.reports.UpdateReport`'s head, in words."""
    if report.alpha is None:
        return "-"
    if report.alpha_searched:
        return f"{report.alpha:.4g} (searched in {report.timings.alpha_s:.2f} s)"
    return f"{report.alpha:.4g} (kept" + ("; a search is due: edgetl-rt tune)" if report.alpha_due else ")")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@lock_timeout_option
@trusted_keys_option
@json_option
def tune(bundle, lock_timeout, as_json) -> None:
    """Search BUNDLE's ridge regularisation on the store's held-out samples now (recorded as a tune version)."""
    from ..learning.alpha import tune_alpha

    report = tune_alpha(bundle, lock_timeout=lock_timeout)
    if as_json:
        print_json(report)
        return
    before = "-" if report.alpha_before is None else f"{report.alpha_before:.4g}"
    print_table([("version", f"{report.version} (from {report.parent})"),
                 ("alpha", f"{before} -> {report.alpha:.4g} ({report.holdout_n} held-out samples)"),
                 ("held-out accuracy", fmt(report.accuracy)), ("search s", report.timings.alpha_s)])


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@json_option
def history(bundle, as_json) -> None:
    """The head versions kept in BUNDLE's feature store (newest last)."""
    from ..bundle.store import FeatureStore

    store = FeatureStore(bundle)
    versions = store.history() if store.exists else []
    current = store.current_number() if store.exists else None
    if as_json:
        print_json({"bundle": str(bundle), "current": current, "versions": [_version_dict(x) for x in versions]})
        return
    if not versions:
        click.echo(f"{bundle}: no on-device updates yet (the bundle's own head is in use)")
        return
    click.echo(f"{'ver':>4s} {'action':8s} {'method':6s} {'classes':>7s} {'train':>6s} {'held':>5s} {'new':>5s} "
               f"{'held-out acc':>12s}  created")
    for v in versions:
        mark = "*" if v.version == current else " "
        click.echo(f"{v.version:>3d}{mark} {v.action:8s} {v.method or '-':6s} {len(v.classes):>7d} {v.n_train:>6d} "
                   f"{v.n_holdout:>5d} {v.n_new:>5d} {fmt(v.accuracy.get('holdout')):>12s}  {v.created}"
                   + (f"  {v.note}" if v.note else ""))


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--to", "to_version", type=int, default=None, help="Version to return to (default: the previous one).")
@lock_timeout_option
@trusted_keys_option
@json_option
def rollback(bundle, to_version, lock_timeout, as_json) -> None:
    """Make an earlier head version current again (recorded as a new version)."""
    from ..bundle.folder import Bundle
    from ..learning.rollback import rollback_bundle

    Bundle(bundle)          # with --trusted-keys, the bundle is checked whole before its store changes
    version = rollback_bundle(bundle, to_version, lock_timeout)
    if as_json:
        print_json({"bundle": str(bundle), **_version_dict(version)})
        return
    click.echo(f"version {version.version} is current: {version.note}")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("data")
@click.option("--check", default=None,
              help="Labelled data (images or texts) of the target domain to measure the change on.")
@click.option("--max-accuracy-drop", type=float, default=UpdateSettings.max_accuracy_drop, show_default=True,
              help="Refuse to commit (exit 6) when accuracy on the --check data falls by more points.")
@click.option("--method", type=click.Choice(["auto", *ADAPT_METHODS]), default="auto", show_default=True,
              help="auto: for images normalise+prototypes (the head's class prototypes moved towards confident "
                   "target inputs after per-feature normalisation), else normalise alone, the first the label-free "
                   "guard accepts; for texts normalise; "
                   "or one method: normalise (per-feature mean and spread), coral (full covariance alignment), "
                   "prototypes, normalise+prototypes.")
@click.option("--force", is_flag=True, help="Commit even when the accuracy guard or the label-free guard objects.")
@lock_timeout_option
@trusted_keys_option
@json_option
@with_model_options
def adapt(bundle, data, check, max_accuracy_drop, method, force, lock_timeout, as_json, artifact, backend, threads,
          no_measure) -> None:
    """Adapt the model to unlabelled DATA from the target domain (labels ignored), without backpropagation.

    The adaptation is committed only when its label-free guard says it helped: the drift score of DATA is above
    the alarm level, and the adapted model keeps at least half of the current answers, uses the classes as evenly
    and brings the features no further from the source. A refusal commits nothing (exit 0; "committed": false
    and "guard_reason" in --json).
    """
    from ..learning.adapt import adapt_bundle

    report = adapt_bundle(bundle, data, check=check, max_accuracy_drop=max_accuracy_drop, force=force,
                          lock_timeout=lock_timeout, artifact=artifact, backend=backend, threads=threads,
                          progress=progress, measure=not no_measure, method=method)
    if as_json:
        print_json(report)
        return
    noun = inputs_of(bundle)
    rows = [("version", report.version if report.committed else "- (nothing committed)"),
            (f"unlabelled {noun}", report.n_unlabeled), ("feature mean shift", report.mean_shift),
            ("drift score", f"{report.drift_before:.4f} (alarm {report.alarm:.4f})"
                            + (f" -> {report.drift_after:.4f}" if report.drift_after is not None else "")),
            ("method", report.method or "-"), ("guard", f"{report.guard}: {report.guard_reason}")]
    if report.check is not None:
        rows.append(("check accuracy", f"{report.accuracy_before:.4f} -> {report.accuracy_after:.4f} "
                                       f"({report.check_n} {noun})"))
    print_table(rows)


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("data")
@click.option("--k", type=int, required=True, help="Number of groups.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the groups to.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the k-means restarts.")
@click.option("--rejected-only", is_flag=True,
              help="Group only the inputs the bundle's unknown threshold rejects (of classes it does not know yet).")
@overwrite_option("OUT")
@trusted_keys_option
@json_option
@with_model_options
def cluster(bundle, data, k, out, seed, rejected_only, overwrite, as_json, artifact, backend, threads,
            no_measure) -> None:
    """Group unlabelled images (or texts) of DATA by feature similarity and write the groups out for labelling."""
    from ..tools.cluster import cluster_images

    summary = cluster_images(bundle, data, k, out, overwrite=overwrite, seed=seed, artifact=artifact,
                             backend=backend, threads=threads, progress=progress, measure=not no_measure,
                             rejected_only=rejected_only)
    if as_json:
        print_json(summary)
        return
    noun = inputs_of(bundle)
    click.echo(f"wrote {k} groups of {summary['n']} {noun} to {out} (groups.csv, summary.json)"
               + (f"; {summary['accepted_left_out']} accepted as known left out" if rejected_only else ""))
    for g in summary["groups"]:
        click.echo(f"  {g['group']}: {g['size']:4d} {noun}; head suggests {g['head_suggests']} "
                   f"({g['agreement']:.0%} agree)")
