"""A fleet of devices learning as one: ``contribute`` (what this device learned, as summed statistics) and
``pull`` (a merged bundle's head taken back).  The host merges with ``edgetl fleet merge``."""

from __future__ import annotations

import click

from .learn import lock_timeout_option
from .options import json_option, overwrite_option, sign_key_option, trusted_keys_option
from .output import fmt, print_json, print_table


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Contribution file to write (.npz with a JSON header and its sha256).")
@click.option("--device-id", default=None,
              help="This device's id in the contribution (default: a stable id kept in the store).")
@click.option("--with-rows", is_flag=True,
              help="Also send the stored per-sample feature rows not sent before (for held-out checks on the host; "
                   "the statistics alone are exact for ridge and NCM).")
@sign_key_option("OUT (a detached OUT.sig)")
@trusted_keys_option
@overwrite_option("OUT")
@lock_timeout_option
@json_option
def contribute(bundle, out, device_id, with_rows, sign_key, overwrite, lock_timeout, as_json) -> None:
    """Write what BUNDLE's device learned since its base or its last contribution (per-class counts and sums, one
    shared Gram matrix: no images), and record it so that nothing is contributed twice."""
    from ..learning.fleet import contribute_bundle

    summary = contribute_bundle(bundle, out, device=device_id, with_rows=with_rows, overwrite=overwrite,
                                lock_timeout=lock_timeout, sign_key=sign_key)
    if as_json:
        print_json(summary.to_json())
        return
    print_table([("contribution", summary.out), ("id", summary.id), ("device", summary.device),
                 ("store versions", f"after {summary.versions['after']} to {summary.versions['to']}"),
                 ("samples", f"{summary.n_samples} ({', '.join(f'{c} {n}' for c, n in summary.samples.items())})"),
                 ("gram", summary.gram_form), ("rows", summary.rows), ("bytes", summary.bytes),
                 ("signature", summary.signature or "unsigned")])


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("merged", type=click.Path(file_okay=False, exists=True))
@trusted_keys_option
@lock_timeout_option
@json_option
def pull(bundle, merged, lock_timeout, as_json) -> None:
    """Take the head of MERGED (made by edgetl fleet merge from BUNDLE's base) into BUNDLE's store as a new
    version: the merge plus what this device learned that the merge lacks, no sample counted twice.  serve picks
    it up like any commit; rollback undoes it."""
    from ..learning.fleet import pull_bundle

    report = pull_bundle(bundle, merged, lock_timeout=lock_timeout)
    if as_json:
        print_json(report)
        return
    print_table([("version", f"{report.version} (from {report.parent})"), ("head", report.head),
                 ("samples", f"{report.samples}: {report.merged_samples} merged + {report.own_samples_kept} own "
                             "not yet contributed"),
                 ("new classes", ", ".join(report.new_classes) or "-"), ("alpha", fmt(report.alpha)),
                 ("held-out accuracy", fmt(report.holdout_accuracy))])
