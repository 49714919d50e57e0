"""``edgetl``: the host command line (fine-tune, export, compare, pack, data), plus the runtime's ``predict``,
``evaluate`` and ``bench``.

It speaks the runtime's grammar: the same group (``-q``/``-v``, one-line errors, exit codes), the same shared
options (``--json`` on every command, ``--threads``, DATA positional) and output helpers, from
:mod:`edgetl.runtime.cli`.
"""

from __future__ import annotations

import os


import click

from edgetl.runtime.cli import (ErrorReportingGroup, evaluate, predict, print_json, print_table, run_bench,
                                with_bench_options, with_verbosity)
from edgetl.runtime.cli.options import THREADS_HELP, json_option, option_group, optional_data_argument
from edgetl.runtime.cli.output import note, progress
from edgetl.runtime.data import SPLITS
from edgetl.runtime.preprocess import DEFAULT_MAX_PIXELS


#: Where the backbone pass runs and where its features are kept: finetune and select share the cache.
pass_options = [
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Feature cache folder, shared by finetune and select (default: $EDGETL_CACHE_DIR or "
                      "~/.cache/edgetl/features)."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
    click.option("--engine", type=click.Choice(["auto", "torch", "openvino", "onnxruntime"]), default="auto",
                 show_default=True,
                 help="What runs the frozen backbone on a CPU: auto picks OpenVINO/ONNX Runtime when the pass is "
                      "long enough to repay a one-off export (features checked against torch within 1e-4)."),
    click.option("--workers", type=click.IntRange(min=0), default=None,
                 help="Processes decoding images during the backbone pass (default: one per usable core for 256 "
                      "images or more on hosts of 4+ cores; 0: threads of this process)."),
    click.option("--compile", "compile_pass", is_flag=True,
                 help="torch.compile the frozen backbone for the pass (pays on a GPU for long passes; eager torch "
                      "only)."),
]


with_pass_options = option_group(pass_options)


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
@click.option("--budget-ms", type=float, default=None, help="With --backbone auto: batch-1 p50 latency budget.")
@click.option("--target", default=None, help="With --backbone auto: device profile whose latency counts.")
@click.option("--backbones", "candidates", default=None,
              help="With --backbone auto: the candidates (as for 'edgetl select'; default: the offline ones).")
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
@click.option("--image-size", type=int, default=None,
              help="Input size (default: the data set's recommendation, else the backbone's).")
@click.option("--train-last", type=click.IntRange(min=0), default=None,
              help="Also train the last N stages of the backbone (default 0: head only; with --backbone auto, the "
                   "freeze point the selection recommended when it compared some).")
@with_pass_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Held-out fraction when DATA has no val split.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images with a warning instead of failing.")
@click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images larger than this many pixels (decompression bombs).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@json_option
def finetune(data, out, backbone, budget_ms, target, candidates, weights, head_kind, epochs, lr, scale_inputs,
             image_size, train_last, cache_dir, device, engine, workers, compile_pass, seed, val_fraction, skip_bad,
             max_pixels, overwrite, as_json) -> None:
    """Fine-tune a head on DATA (image folder, CSV or builtin:NAME) over a frozen backbone."""
    from edgetl.finetune import FinetuneConfig, finetune as run_finetune
    from edgetl.heads import HeadConfig
    from edgetl.runtime.errors import ConfigError

    from pathlib import Path

    selection = None
    if backbone == "auto" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--backbone auto does not run under torchrun; run edgetl select first (one process), "
                          "then finetune --backbone NAME under torchrun", option="backbone")
    if backbone == "auto":
        from edgetl.selection import SelectConfig, parse_backbones, select_backbones, selection_summary

        if weights:
            raise ConfigError("names one backbone's weights; --backbone auto chooses among several", option="weights")
        if Path(out).exists() and not overwrite:     # before minutes of measuring, not after
            raise ConfigError(f"{out} already exists; choose another path, or overwrite it", remedy="overwrite")
        chosen = select_backbones(data, SelectConfig(backbones=parse_backbones(candidates), target=target,
                                                     budget_ms=budget_ms, cache_dir=cache_dir, image_size=image_size,
                                                     device=device, engine=engine, workers=workers,
                                                     compile=compile_pass, seed=seed,
                                                     val_fraction=val_fraction, skip_bad=skip_bad,
                                                     max_pixels=max_pixels),
                                  progress=progress, log=note)
        backbone, selection = chosen["recommendation"]["backbone"], selection_summary(chosen)
        note(f"--backbone auto: {backbone} ({chosen['recommendation']['reason']})")
        freeze = chosen.get("freeze")
        if train_last is None and freeze and freeze["backbone"] == backbone:
            train_last = freeze["recommended"]
            note(f"--backbone auto: --train-last {train_last} ({freeze['reason']})")
    else:
        unused = [o for o, v in (("budget-ms", budget_ms), ("target", target), ("backbones", candidates)) if v]
        if unused:
            raise ConfigError("applies to --backbone auto only", option=unused[0])
    train_last = train_last or 0
    config = FinetuneConfig(
        selection=selection, backbone=backbone, weights=weights,
        head=HeadConfig(kind=head_kind, epochs=epochs, lr=lr, seed=seed, scale_inputs=scale_inputs),
        image_size=image_size, train_last=train_last, cache_dir=cache_dir, device=device, engine=engine,
        workers=workers, compile=compile_pass, seed=seed, val_fraction=val_fraction, skip_bad=skip_bad, max_pixels=max_pixels,
        overwrite=overwrite,
    )
    result = run_finetune(data, out, config, progress=progress, log=note)
    if result is None:             # a torchrun rank other than 0: its share of the pass is done
        return
    timings = result.manifest.timings
    if as_json:
        print_json({"run": str(result.run_dir), "backbone": backbone, "cache_hit": result.cache_hit,
                    "timings": timings, **{k: v for k, v in result.metrics.items() if k != "history"},
                    **({"selection": selection} if selection else {})})
        return
    noun = "texts" if result.manifest.preprocess.get("kind") == "text" else "images"
    print_table([
        ("run", str(result.run_dir)),
        ("backbone", f"{backbone} (train last {train_last})"),
        ("head", head_kind),
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
@click.option("--backbones", default=None,
              help="Comma-separated candidates (default: every offline backbone; 'offline' stands for them "
                   "beside timm:<name> / torchvision:<name>).")
@click.option("--target", default=None, help="Device profile whose artifact is timed (see 'edgetl devices').")
@click.option("--budget-ms", type=float, default=None, help="Batch-1 p50 latency budget, milliseconds.")
@click.option("--train-last", "train_last", default=None,
              help="Freeze depths to compare for the recommended backbone, e.g. 0,1,2.")
@click.option("--folds", type=int, default=5, show_default=True, help="Folds of the probe on the training split.")
@click.option("--image-size", type=int, default=None,
              help="Input size (default: the data set's recommendation, else each backbone's own).")
@with_pass_options
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for selection.json, selection.md and selection.png.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help=THREADS_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Held-out fraction when DATA has no val split (the same split finetune makes).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images with a warning instead of failing.")
@click.option("--fresh", is_flag=True, help="Measure again even when a fresh selection is cached.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@json_option
def select(data, backbones, target, budget_ms, train_last, folds, image_size, cache_dir, out, device, engine,
           workers, compile_pass, threads, seed, val_fraction, skip_bad, fresh, overwrite, as_json) -> None:
    """Rank backbones for DATA by transferability (LogME, k-fold probe on the training split) and by batch-1
    latency on the target, and recommend one; --train-last 0,1,2 also compares freeze points."""
    from pathlib import Path

    from edgetl.runtime.errors import ConfigError
    from edgetl.selection import SelectConfig, parse_backbones, parse_depths, select_backbones
    from edgetl.selection.report import (COLUMNS, FREEZE_COLUMNS, freeze_rows, latency_note, table_rows, text_table,
                                         write_reports)

    if out and Path(out).exists() and not overwrite:     # before minutes of measuring, not after
        raise ConfigError(f"{out} already exists; choose another path, or overwrite it", option="out",
                          remedy="overwrite")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("select does not run under torchrun: run it as one process")

    config = SelectConfig(backbones=parse_backbones(backbones), target=target, budget_ms=budget_ms,
                          cache_dir=cache_dir, image_size=image_size, folds=folds, train_last=parse_depths(train_last),
                          device=device, engine=engine, workers=workers, compile=compile_pass, seed=seed,
                          val_fraction=val_fraction,
                          skip_bad=skip_bad, threads=threads)
    result = select_backbones(data, config, progress=progress, log=note, reuse=not fresh)
    files = write_reports(result, out, overwrite=overwrite) if out else {}
    if as_json:
        print_json({**result, **({"files": {k: str(v) for k, v in files.items()}} if files else {})})
        return
    for line in text_table(COLUMNS, table_rows(result)):
        click.echo(line)
    click.echo(latency_note(result))
    click.echo(f"scored on the {result['scored_on']}")
    click.echo(f"recommended: {result['recommendation']['backbone']} - {result['recommendation']['reason']}")
    if result.get("freeze"):
        freeze = result["freeze"]
        click.echo(f"freeze depth of {freeze['backbone']} ({freeze['evaluated_on']}):")
        for line in text_table(FREEZE_COLUMNS, freeze_rows(freeze)):
            click.echo("  " + line)
        click.echo(f"recommended: {freeze['reason']}")
    t = result["timings"]
    click.echo(("reused the selection measured " + result["created"]) if result.get("reused") else
               f"select took {t['total_s']:.1f} s: backbone passes {t['backbone_passes_s']:.1f} s, scores "
               f"{t['scoring_s']:.1f} s, latency {t['latency_s']:.1f} s"
               + (f" (of these, one-off ONNX exports {t['exports_s']:.1f} s)" if t.get("exports_s") else ""))
    for name, path in files.items():
        click.echo(f"wrote {path}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@optional_data_argument("Where the run's data is now, if it moved (for the accuracy check).")
@click.option("--out", required=True, type=click.Path(), help="Bundle folder to create.")
@click.option("--format", "formats", default=None,
              help="Comma-separated formats: onnx, onnx-fp16, onnx-int8, onnx-int8-trt, onnx-int8-dynamic, "
                   "openvino, openvino-int8 (default: onnx, or what --target asks for).")
@click.option("--target", default=None,
              help="Device profile to build for (see 'edgetl devices'), or a profile .toml file.")
@click.option("--pack", "pack_archive", is_flag=True, help="Also write BUNDLE.tar.gz beside the bundle.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
              help="Points of top-1 an artifact may lose against fp32 before its fallbacks, then failure.")
@click.option("--calib", type=int, default=300, show_default=True,
              help="Calibration images (a seeded sample of the training split) for int8 formats.")
@click.option("--fp16", is_flag=True, help="openvino: compress weights to fp16.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@json_option
def export(run, data, out, formats, target, pack_archive, max_accuracy_drop, calib, fp16, overwrite,
           as_json) -> None:
    """Export RUN to a bundle; every artifact is checked against torch and gated on accuracy.

    DATA is where the run's data is now, if it moved since fine-tuning (for the accuracy check); the JSON
    output is the bundle manifest.
    """
    from edgetl.exporters.bundle import export_run
    from edgetl.exporters.pack import pack_bundle

    result = export_run(run, out, formats=formats, data_address=data, overwrite=overwrite,
                        max_accuracy_drop=max_accuracy_drop, calibration_size=calib, options={"fp16": fp16},
                        progress=progress, log=note, target=target)
    archive = pack_bundle(result.bundle, overwrite=True) if pack_archive else None
    if as_json:
        click.echo(result.manifest.to_json())
        return
    rows = [("bundle", str(result.bundle)), ("reference accuracy", result.manifest.reference_accuracy)]
    if result.manifest.target:
        rows.append(("target", result.manifest.target["name"]))
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
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@json_option
def data_export(source, out, classes, overwrite, as_json) -> None:
    """Write SOURCE (e.g. builtin:digits) as an image folder OUT with train/ and val/."""
    from edgetl.data_export import export_image_folder

    subset = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    counts = export_image_folder(source, out, classes=subset, overwrite=overwrite)
    if as_json:
        print_json({"source": source, "out": str(out), "images": dict(counts)})
        return
    click.echo(f"wrote {out}: " + ", ".join(f"{split} {n} images" for split, n in counts.items()))


@data.command("list")
@json_option
def data_list(as_json) -> None:
    """List the built-in data sets."""
    from edgetl.runtime.builtin import BUILTIN_DATASETS

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
    from edgetl.bench_report import compare_results, write_reports
    from edgetl.runtime.documents import Origin, read_document
    from edgetl.runtime.errors import ConfigError
    from edgetl.runtime.tools.bench import RESULT_SCHEMA

    if compare:
        a, b = (read_document(path, Origin(path, ConfigError), (RESULT_SCHEMA,),
                              what="an edgetl bench result (written by 'edgetl bench --out')") for path in compare)
        rows = compare_results(a, b)
        if options["as_json"]:
            print_json({"a": compare[0], "b": compare[1], "rows": rows})
            return
        click.echo(f"B/A for each shared row (below 1: B is faster); A={compare[0]} B={compare[1]}")
        click.echo(f"{'artifact':16s} {'backend':22s} {'thr':>4s} {'batch':>5s} {'A p50 ms':>9s} {'B p50 ms':>9s} "
                   f"{'p50':>6s} {'p90':>6s} {'thrpt':>6s} {'RSS':>6s} {'acc +/-':>8s}")
        for r in rows:
            change = "-" if r["accuracy_change"] is None else f"{r['accuracy_change']:+.4f}"
            click.echo(f"{r['artifact']:16s} {r['backend']:22s} {str(r['threads'] or '-'):>4s} {r['batch']:>5d} "
                       f"{r['a_p50_ms']:9.3f} {r['b_p50_ms']:9.3f} {r['p50_ratio']:6.2f} {r['p90_ratio']:6.2f} "
                       f"{r['throughput_ratio']:6.2f} {r['rss_ratio']:6.2f} {change:>8s}")
        machines = [x["machine"].get("cpu_model") for x in (a, b)]
        if machines[0] != machines[1]:
            click.echo(f"note: different machines: A {machines[0]}, B {machines[1]}")
        return
    if options["bundle"] is None:
        raise click.UsageError("give BUNDLE, or --compare A.json B.json")
    run_bench(**options, write=write_reports)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("data", required=False)
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Which split of DATA (default: val when DATA has one, else all).")
@click.option("--limit", type=int, default=64, show_default=True, help="Compare on at most this many images.")
@json_option
def compare(bundle, data, split, limit, as_json) -> None:
    """Logit parity of every artifact of BUNDLE against fp32 on the same images of DATA.

    DATA defaults to the data the bundle was exported from, when it is reachable.
    """
    from edgetl.exporters.compare import compare_bundle, rows_to_dicts
    from edgetl.runtime.data import open_data
    from edgetl.runtime.machine import cpu_facts
    from edgetl.runtime.manifest import read_bundle_manifest

    manifest = read_bundle_manifest(bundle)
    address = data or manifest.source_run.get("data")
    if not address:
        raise click.UsageError("give DATA: the bundle does not name the data it came from")
    source = open_data(address).remap_to(manifest.labels)
    records = source.split(split or ("val" if source.has_val else "all"))
    step = max(1, len(records) // limit)
    rows = compare_bundle(bundle, records[::step][:limit])
    compared = {(r.artifact, r.backend) for r in rows}
    not_run = [{"artifact": a.name, "backend": b, "needs": a.requires_cpu} for a in manifest.artifacts
               if not a.runs_on(cpu_facts()["flags"]) for b in a.backends if (a.name, b) not in compared]
    if as_json:
        print_json({"bundle": str(bundle), "data": address, "reference": "onnx (onnxruntime, fp32)",
                    "rows": rows_to_dicts(rows), "not_run": not_run})
        return
    click.echo(f"reference: onnx fp32 on onnxruntime; {rows[0].images if rows else 0} images of {address}")
    click.echo(f"{'artifact':22s} {'backend':21s} {'prec':5s} {'ran':5s} {'max|diff|':>10s} {'mean|diff|':>10s} "
               f"{'top-1 agree':>11s}")
    for r in rows:
        click.echo(f"{r.artifact:22s} {r.backend:21s} {r.precision:5s} {r.effective_precision:5s} "
                   f"{r.max_abs_diff:10.3g} {r.mean_abs_diff:10.3g} {r.top1_agreement:11.3f}"
                   + (f"  ({r.note})" if r.note else ""))
    for skipped in not_run:
        click.echo(f"{skipped['artifact']:22s} {skipped['backend']:21s} not run: its kernels need one of "
                   f"{', '.join(skipped['needs'])}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Archive path (default: BUNDLE.tar.gz).")
@click.option("--overwrite", is_flag=True, help="Replace the archive if it exists.")
@json_option
def pack(bundle, out, overwrite, as_json) -> None:
    """Verify BUNDLE and pack it as one .tar.gz file to copy to devices."""
    from edgetl.exporters.pack import pack_bundle

    archive = pack_bundle(bundle, out, overwrite=overwrite)
    if as_json:
        print_json({"bundle": str(bundle), "archive": str(archive)})
        return
    click.echo(str(archive))


for _command in (predict, evaluate):
    main.add_command(_command)
