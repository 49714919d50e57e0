"""``edgetl``: the host command line (fine-tune, export, compare, pack, data), plus the runtime's ``predict``,
``evaluate``, ``bench`` and its signature commands (``keys``, ``sign``, ``verify``).

It speaks the runtime's grammar: the same group (``-q``/``-v``, one-line errors, exit codes), the same shared
options (``--json`` on every command, ``--threads``, DATA positional) and output helpers, from
:mod:`edgetl.runtime.cli`; the options its own commands share are declared once in :mod:`edgetl.cli_options`.
Each command parses, calls the library and prints: the work (choosing a backbone for ``--backbone auto``
included) lives in the library, so the Python API does what the command does.
"""

from __future__ import annotations

import click

from edgetl.runtime.bundle.unknown import (
    DEFAULT_KEEP as DEFAULT_UNKNOWN_KEEP,
    DEFAULT_METHOD as DEFAULT_UNKNOWN_METHOD,
)
from edgetl.runtime.cli import (
    ErrorReportingGroup,
    evaluate,
    predict,
    print_json,
    print_table,
    run_bench,
    with_bench_options,
    with_verbosity,
)
from edgetl.runtime.cli.options import (
    json_option,
    max_pixels_option,
    optional_data_argument,
    overwrite_option,
    sign_key_option,
    skip_bad_option,
    split_option,
    threads_option,
    trusted_keys_option,
)
from edgetl.runtime.cli.output import note, progress
from edgetl.runtime.cli.trust import keys, sign, verify
from edgetl.unknown_choice import EXPORT_METHODS as EXPORT_UNKNOWN_METHODS

from .cli_options import (
    budget_option,
    candidates_option,
    image_size_option,
    latency_target_option,
    seed_option,
    target_option,
    val_fraction_option,
    with_pass_options,
)


@click.group(cls=ErrorReportingGroup)
@with_verbosity
@click.version_option(package_name="edgetl")
def main() -> None:
    """edgetl: fine-tune on frozen backbones, export, and run on edge devices."""


@main.command()
@click.argument("data")
@click.option("--out", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="efficientnet_lite0/1/2, timm:<name>, torchvision:<name>, or auto: what 'edgetl select' "
                   "recommends (measured now, or reused when fresh).")
@budget_option(auto=True)
@latency_target_option(auto=True)
@candidates_option(auto=True)
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Local state dict for the backbone.")
@click.option("--head", "head_kind", type=click.Choice(["linear", "mlp", "ridge"]), default="linear", show_default=True,
              help="linear: softmax regression (AdamW, label smoothing, cosine schedule, early stopping on val "
                   "accuracy); mlp: one hidden layer, trained alike; ridge: closed form, alpha chosen on val.")
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True,
              help="Head learning rate (on the scaled inputs, see --scale-inputs).")
@click.option("--scale-inputs/--no-scale-inputs", default=True, show_default=True,
              help="Linear and mlp heads train on the features divided by their root mean square (folded into the "
                   "exported weights), so --lr and --epochs fit unit-length text embeddings as well as image "
                   "features; --no-scale-inputs trains on them as they are (edgetl 0.6).")
@image_size_option
@click.option("--train-last", type=click.IntRange(min=0), default=None,
              help="Also train the last N stages of the backbone (default 0: head only; with --backbone auto, the "
                   "freeze point the selection recommended when it compared some).")
@with_pass_options
@seed_option
@val_fraction_option
@skip_bad_option
@max_pixels_option
@overwrite_option("the run directory")
@json_option
def finetune(data, out, backbone, budget_ms, target, candidates, weights, head_kind, epochs, lr, scale_inputs,
             image_size, train_last, cache_dir, device, engine, workers, compile_pass, seed, val_fraction, skip_bad,
             max_pixels, overwrite, as_json) -> None:
    """Fine-tune a head on DATA (image folder, CSV or builtin:NAME) over a frozen backbone."""
    from edgetl.finetune import FinetuneConfig, finetune as run_finetune
    from edgetl.heads import HeadConfig
    from edgetl.selection import parse_backbones
    from edgetl.selection.auto import AutoBackbone

    auto = AutoBackbone(backbones=parse_backbones(candidates) if candidates else None, target=target,
                        budget_ms=budget_ms)
    config = FinetuneConfig(
        backbone=backbone, auto=auto, weights=weights,
        head=HeadConfig(kind=head_kind, epochs=epochs, lr=lr, seed=seed, scale_inputs=scale_inputs),
        image_size=image_size, train_last=train_last, cache_dir=cache_dir, device=device, engine=engine,
        workers=workers, compile=compile_pass, seed=seed, val_fraction=val_fraction, skip_bad=skip_bad,
        max_pixels=max_pixels, overwrite=overwrite,
    )
    result = run_finetune(data, out, config, progress=progress, log=note)
    if result is None:             # a torchrun rank other than 0: its share of the pass is done
        return
    used, timings = result.config, result.manifest.timings
    if as_json:
        print_json({"run": str(result.run_dir), "backbone": used.backbone, "cache_hit": result.cache_hit,
                    "timings": timings, **{k: v for k, v in result.metrics.items() if k != "history"},
                    **({"selection": used.selection} if used.selection else {})})
        return
    noun = "texts" if result.manifest.preprocess.get("kind") == "text" else "images"
    print_table([
        ("run", str(result.run_dir)),
        ("backbone", f"{used.backbone} (train last {used.train_last})"),
        ("head", used.head.kind),
        ("feature cache", "hit (no backbone pass)" if result.cache_hit
         else f"miss (one backbone pass on {result.manifest.compute['engine']})"),
        ("backbone pass s", timings["backbone_pass_s"]),
        ("head training s", timings["train_s"]),
        (f"train {noun}", result.metrics["n_train"]),
        (f"val {noun}", result.metrics["n"]),
        ("val accuracy", result.metrics["accuracy"]),
    ])


@main.command()
@click.argument("data")
@candidates_option()
@latency_target_option()
@budget_option()
@click.option("--train-last", default=None,
              help="Freeze depths to compare for the recommended backbone, e.g. 0,1,2.")
@click.option("--folds", type=int, default=5, show_default=True, help="Folds of the probe on the training split.")
@image_size_option
@with_pass_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for selection.json, selection.md and selection.png.")
@threads_option
@seed_option
@val_fraction_option
@skip_bad_option
@click.option("--fresh", is_flag=True, help="Measure again even when a fresh selection is cached.")
@overwrite_option("--out")
@json_option
def select(data, candidates, target, budget_ms, train_last, folds, image_size, cache_dir, device, engine, workers,
           compile_pass, out, threads, seed, val_fraction, skip_bad, fresh, overwrite, as_json) -> None:
    """Rank backbones for DATA by transferability (LogME, k-fold probe on the training split) and by batch-1
    latency on the target, and recommend one; --train-last 0,1,2 also compares freeze points."""
    from edgetl.selection import SelectConfig, parse_backbones, parse_depths, select_backbones
    from edgetl.selection.report import text_lines

    config = SelectConfig(backbones=parse_backbones(candidates), target=target, budget_ms=budget_ms,
                          cache_dir=cache_dir, image_size=image_size, folds=folds, train_last=parse_depths(train_last),
                          device=device, engine=engine, workers=workers, compile=compile_pass, seed=seed,
                          val_fraction=val_fraction, skip_bad=skip_bad, threads=threads)
    result = select_backbones(data, config, progress=progress, log=note, reuse=not fresh, out=out,
                              overwrite=overwrite)
    if as_json:
        print_json(result)
        return
    for line in text_lines(result):
        click.echo(line)


@main.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@optional_data_argument("Where the run's data is now, if it moved (for the accuracy check).")
@click.option("--out", required=True, type=click.Path(), help="Bundle folder to create.")
@click.option("--format", "formats", default=None,
              help="Comma-separated formats: onnx, onnx-fp16, onnx-int8, onnx-int8-trt, onnx-int8-dynamic, "
                   "openvino, openvino-int8 (default: onnx, or what --target asks for).")
@target_option("Device profile to build for (see 'edgetl devices'), or a profile .toml file.")
@click.option("--pack", "pack_archive", is_flag=True, help="Also write BUNDLE.tar.gz beside the bundle.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
              help="Points of top-1 an artifact may lose against fp32 before its fallbacks, then failure.")
@click.option("--calib", type=int, default=300, show_default=True,
              help="Calibration images or texts (a seeded sample of the training split) for int8 formats.")
@click.option("--fp16", is_flag=True, help="openvino: compress weights to fp16.")
@click.option("--unknown-method", type=click.Choice(EXPORT_UNKNOWN_METHODS), default=DEFAULT_UNKNOWN_METHOD,
              show_default=True, help="How unlike the training data an input is scored (docs: Unknown inputs); "
                                      "auto: chosen by leave-classes-out on the run's own classes.")
@click.option("--unknown-keep", type=click.FloatRange(0.5, 1.0, max_open=True), default=DEFAULT_UNKNOWN_KEEP,
              show_default=True,
              help="Share of the val split's known inputs the unknown threshold keeps (the rest would be rejected).")
@sign_key_option("the bundle (manifest.sig)")
@overwrite_option("the bundle")
@json_option
def export(run, data, out, formats, target, pack_archive, max_accuracy_drop, calib, fp16, unknown_method,
           unknown_keep, sign_key, overwrite, as_json) -> None:
    """Export RUN to a bundle; every artifact is checked against torch and gated on accuracy.

    DATA is where the run's data is now, if it moved since fine-tuning (for the accuracy check); the JSON
    output is the bundle manifest.
    """
    from edgetl.exporters.bundle import export_run
    from edgetl.exporters.pack import pack_bundle

    result = export_run(run, out, formats=formats, data_address=data, overwrite=overwrite,
                        max_accuracy_drop=max_accuracy_drop, calibration_size=calib, options={"fp16": fp16},
                        progress=progress, log=note, target=target, unknown_method=unknown_method,
                        unknown_keep=unknown_keep, sign_key=sign_key)
    archive = pack_bundle(result.bundle, overwrite=True) if pack_archive else None
    if as_json:
        click.echo(result.manifest.to_json())
        return
    rows = [("bundle", str(result.bundle)), ("reference accuracy", result.manifest.reference_accuracy)]
    if result.manifest.target:
        rows.append(("target", result.manifest.target["name"]))
    unknown = result.manifest.unknown
    if unknown:
        rows.append(("unknown threshold", f"{unknown['method']} {unknown['threshold']:.4g} (keeps {unknown['keep']:g} "
                                          f"of {unknown['n']} {unknown['on']} inputs)"))
    if archive:
        rows.append(("archive", str(archive)))
    for a in result.manifest.artifacts:
        size = a.size + sum(c["size"] for c in a.companions)
        measured = (f"acc {a.accuracy:.4f}  drop {a.accuracy_drop:+.2f} pt  max|diff| {a.max_abs_diff:.2e}"
                    if a.accuracy is not None else "not measured here; the device checks it before use")
        how = "" if a.measured == "as-deployed" else f" ({a.measured}: {a.measurement_note})"
        rows.append((f"{a.name} ({a.file})", f"{measured}  {size / 1e6:.1f} MB  [{a.evaluated_with or '-'}]{how}"))
    print_table(rows)


@main.group()
def data() -> None:
    """Inspect and export data sources."""


@data.command("export")
@click.argument("source")
@click.argument("out", type=click.Path())
@click.option("--classes", default=None, help="Comma-separated subset of class names to write.")
@overwrite_option("OUT")
@json_option
def data_export(source, out, classes, overwrite, as_json) -> None:
    """Write SOURCE (e.g. builtin:digits) as an image folder OUT with train/ and val/ (labelled texts: as
    OUT/texts.csv with a split column)."""
    from edgetl.data_export import export_data

    subset = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    written = export_data(source, out, classes=subset, overwrite=overwrite)
    if as_json:
        print_json({"source": source, "out": str(out), "images": dict(written.counts)})
        return
    noun = "texts" if written.modality == "text" else "images"
    click.echo(f"wrote {out}: " + ", ".join(f"{split} {n} {noun}" for split, n in written.counts.items()))


@data.command("list")
@json_option
def data_list(as_json) -> None:
    """List the built-in data sets."""
    from edgetl.runtime.data.builtin import BUILTIN_DATASETS

    if as_json:
        print_json({f"builtin:{name}": spec.description for name, spec in BUILTIN_DATASETS.items()})
        return
    for name, spec in BUILTIN_DATASETS.items():
        click.echo(f"builtin:{name}\t{spec.description}")


@main.command()
@json_option
def devices(as_json) -> None:
    """List the device profiles that --target accepts."""
    from edgetl.devices import load_profiles
    from edgetl.exporters.targets import formats_for_target

    profiles = load_profiles()
    if as_json:
        print_json({name: {**p.to_dict(), "formats": formats_for_target(p)[0]} for name, p in profiles.items()})
        return
    click.echo(f"{'name':18s} {'arch':8s} {'backends':24s} {'precisions':16s} {'TensorRT':9s} description")
    for name, p in profiles.items():
        click.echo(f"{name:18s} {p.hardware.arch:8s} {','.join(p.deploy.backends):24s} "
                   f"{','.join(p.deploy.precisions):16s} {p.software.tensorrt or '-':9s} {p.description}")


@main.command()
@json_option
def backbones(as_json) -> None:
    """List the available backbones."""
    from edgetl.backbones import list_backbones

    names = list(list_backbones())
    if as_json:
        print_json({"backbones": names})
        return
    for name in names:
        click.echo(name)


@main.command()
@click.option("--compare", nargs=2, type=click.Path(dir_okay=False, exists=True), default=None,
              help="Compare two results.json files (A B): ratios B/A of every shared row.")
@with_bench_options
def bench(compare, **options) -> None:
    """Latency (p50/p90/p99), throughput, cold start, memory, size and accuracy of every artifact of BUNDLE
    this machine can run, per backend, thread count and batch size; --out adds report.md and pareto.png."""
    from edgetl.bench_report import compare_files, write_reports

    if compare:
        comparison = compare_files(*compare)
        if options["as_json"]:
            print_json(comparison.to_json())
            return
        for line in comparison.lines():
            click.echo(line)
        return
    if options["bundle"] is None:
        raise click.UsageError("give BUNDLE, or --compare A.json B.json")
    run_bench(**options, write=write_reports)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("data", required=False)
@split_option
@click.option("--limit", type=int, default=64, show_default=True,
              help="Compare on at most this many inputs (images or texts).")
@json_option
def compare(bundle, data, split, limit, as_json) -> None:
    """Logit parity of every artifact of BUNDLE against fp32 on the same inputs of DATA (images or texts).

    DATA defaults to the data the bundle was exported from, when it is reachable.
    """
    from edgetl.exporters.compare import compare_on_data, source_data

    address = data or source_data(bundle)
    if not address:
        raise click.UsageError("give DATA: the bundle does not name the data it came from")
    comparison = compare_on_data(bundle, address, split=split, limit=limit)
    if as_json:
        print_json(comparison.to_json())
        return
    for line in comparison.lines():
        click.echo(line)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Archive path (default: BUNDLE.tar.gz).")
@overwrite_option("the archive")
@json_option
def pack(bundle, out, overwrite, as_json) -> None:
    """Verify BUNDLE and pack it as one .tar.gz file to copy to devices."""
    from edgetl.exporters.pack import pack_bundle

    archive = pack_bundle(bundle, out, overwrite=overwrite)
    if as_json:
        print_json({"bundle": str(bundle), "archive": str(archive)})
        return
    click.echo(str(archive))


@main.group()
def fleet() -> None:
    """Merge what a fleet of devices learned (edgetl-rt contribute) into one bundle."""


@fleet.command("merge")
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("contributions", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(), help="Merged bundle folder to create.")
@click.option("--head", "head_kind", type=click.Choice(["ridge", "ncm"]), default=None,
              help="Head to fit on the merged statistics (default: the base bundle's; required when it is a linear "
                   "or mlp head, which statistics cannot merge).")
@click.option("--skip-bad", is_flag=True,
              help="Leave out (and report) a refused contribution instead of writing nothing.")
@sign_key_option("the merged bundle (manifest.sig)")
@trusted_keys_option
@overwrite_option("OUT")
@json_option
def fleet_merge(bundle, contributions, out, head_kind, skip_bad, sign_key, overwrite, as_json) -> None:
    """Merge CONTRIBUTIONS (files, folders, or fsspec URLs such as s3://bucket/prefix/) made on BUNDLE's devices
    into a new bundle OUT whose head is the exact fit over every sample they cover; a contribution from another
    base bundle, a duplicate, another feature dimension or a broken checksum is refused by name."""
    from edgetl.fleet import merge_bundles

    report = merge_bundles(bundle, list(contributions), out, head=head_kind, skip_bad=skip_bad, overwrite=overwrite,
                           sign_key=sign_key)
    if as_json:
        print_json(report)
        return
    rows = [("bundle", report.out), ("head", report.head), ("contributions", len(report.contributions)),
            ("devices", ", ".join(report.devices)), ("samples", report.samples),
            ("new classes", ", ".join(report.new_classes) or "-")]
    if report.alpha is not None:
        rows.append(("alpha", f"{report.alpha:.6g} (searched on {report.alpha_holdout_n} held-out rows)"))
    rows += [(f"skipped {s['source']}", s["reason"]) for s in report.skipped]
    print_table(rows)


for _command in (predict, evaluate, verify, sign, keys):
    main.add_command(_command)
