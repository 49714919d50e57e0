"""Running a bundle: ``predict`` and ``evaluate`` (the host's ``edgetl`` exposes both too).

The predict path imports no tools module and no host code: it is the
command a device runs most, and its start-up time is the user's latency.
"""

from __future__ import annotations

import click

from .options import (
    json_option,
    max_pixels_option,
    reject_option,
    skip_bad_option,
    split_option,
    trusted_keys_option,
    with_model_options,
)
from .output import detail, note, print_json, print_table, progress, warn


def _explain_choice(model) -> None:
    detail(f"artifact {model.artifact.name} on {model.backend.name}: {model.choice_reason}")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, metavar="INPUTS...")
@click.option("--top-k", type=int, default=1, show_default=True, help="How many classes to report per input.")
@reject_option
@max_pixels_option
@trusted_keys_option
@json_option
@with_model_options
def predict(bundle, images, top_k, reject, max_pixels, as_json, artifact, backend, threads, no_measure) -> None:
    """Classify INPUTS with BUNDLE: image files, or a text model's texts (each argument one text; '-' reads one
    text per line from stdin).  Each answer carries its unknown score (higher: less like the training data);
    --reject labels the inputs above the bundle's threshold 'unknown'."""
    from ..inference.model import EdgeModel

    if images == ("-",):
        images = tuple(line.rstrip("\n") for line in click.get_text_stream("stdin") if line.strip())

    with EdgeModel(bundle, artifact=artifact, backend=backend, threads=threads, images=len(images),
                   measure=not no_measure, log=note) as model:
        _explain_choice(model)
        predictions = model.predict(images, top_k=top_k, max_pixels=max_pixels, reject=reject)
        if as_json:
            print_json({"artifact": model.artifact.name, "backend": model.backend.name,
                        "precision": model.backend.effective_precision, "artifact_choice": model.choice_reason,
                        "unknown": _unknown_block(model), "predictions": [p.to_dict() for p in predictions]})
            return
        for p in predictions:
            ranked = ", ".join(f"{label} {score:.3f}" for label, score in p.top)
            if p.rejected:
                ranked = f"unknown ({ranked})"
            if p.unknown_score is not None:
                ranked += f"\tunknown score {p.unknown_score:.4g}{' (unknown)' if p.unknown else ''}"
            click.echo(f"{p.source}\t{ranked}")


def _unknown_block(model) -> dict | None:
    """The scorer's method and threshold, as predict's JSON names them (None: the bundle has none)."""
    if model.unknown is None:
        return None
    return {"method": model.unknown.settings.method, "threshold": model.unknown.threshold,
            "keep": model.unknown.settings.keep}


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("data")
@split_option
@skip_bad_option
@click.option("--min-accuracy", type=float, default=None,
              help="Exit with status 11 when the accuracy is below this (a deployment gate); the report is "
                   "printed first.")
@reject_option
@click.option("--unknown", "unknown", default=None, metavar="DATA",
              help="Inputs of classes the model does not know (labels ignored): report the AUROC of the unknown "
                   "score and the share of them the threshold accepts.")
@trusted_keys_option
@json_option
@with_model_options
def evaluate(bundle, data, split, skip_bad, min_accuracy, reject, unknown, as_json, artifact, backend, threads,
             no_measure) -> None:
    """Accuracy of BUNDLE on labelled DATA (image folder, CSV or builtin:NAME), and how its unknown-input threshold
    does (--unknown).  Every file of BUNDLE is checked against its manifest first (edgetl-rt verify checks the
    rest)."""
    from ..bundle.folder import Bundle
    from ..inference.evaluate import evaluate_bundle, require_accuracy
    from ..inference.model import EdgeModel

    opened = Bundle(bundle)
    opened.verify_listed()          # before anything of it runs, measuring included
    with EdgeModel(opened, artifact=artifact, backend=backend, threads=threads, measure=not no_measure,
                   log=note) as model:
        _explain_choice(model)
        report = evaluate_bundle(model, data, split=split, skip_bad=skip_bad, progress=progress, reject=reject,
                                 unknown=unknown)
    if report["skipped"]:
        warn(f"skipped {len(report['skipped'])} bad file(s), e.g. {report['skipped'][0]}")
    if as_json:
        print_json(report)
    else:
        rows = [("artifact", f"{report['artifact']} ({report['backend']})"), ("data", f"{data} [{report['split']}]"),
                ("texts" if model.preprocess.kind == "text" else "images", report["n"]),
                ("accuracy", report["accuracy"])]
        if reject:
            rows += [("rejected as unknown", report["rejected"]),
                     ("accuracy without --reject", report["accuracy_without_reject"])]
        rows += [(f"  {name}", f"{v['accuracy']:.4f} (n={v['n']})") for name, v in report["per_class"].items()]
        block = report.get("unknown")
        if block:
            rows += [("unknown method", block["method"]), ("unknown threshold", f"{block['threshold']:.6g}"),
                     ("known kept", block["kept"])]
            if "auroc" in block:
                rows += [("unknown data", f"{block['data']} ({block['n_unknown']})"), ("unknown auroc", block["auroc"]),
                         ("unknowns accepted", block["accepted"])]
        print_table(rows)
    if min_accuracy is not None:
        require_accuracy(report, min_accuracy)
