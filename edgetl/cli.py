"""``edgetl``: the host command line (fine-tune, export, data), plus the runtime commands."""

from __future__ import annotations

import click

from edgetl.runtime import cli as runtime_cli
from edgetl.runtime.cli import ErrorReportingGroup, print_json, print_table
from edgetl.runtime.preprocess import DEFAULT_MAX_PIXELS
from edgetl.runtime.progress import terminal_progress


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=ErrorReportingGroup)
@click.version_option(package_name="edgetl")
def main() -> None:
    """edgetl: fine-tune on frozen backbones, export, and run on edge devices."""


@main.command()
@click.argument("data")
@click.option("--out", required=True, type=click.Path(), help="Run directory to create.")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="efficientnet_lite0, timm:<name> or torchvision:<name>.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None, help="Local state dict for the backbone.")
@click.option("--head", "head_kind", type=click.Choice(["linear", "mlp", "ridge"]), default="linear", show_default=True)
@click.option("--epochs", type=int, default=30, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True, help="Head learning rate.")
@click.option("--image-size", type=int, default=None,
              help="Input size (default: the data set's recommendation, else the backbone's).")
@click.option("--train-last", type=int, default=0, show_default=True,
              help="Also train the last N stages of the backbone (0: head only).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature cache folder (default: $EDGETL_CACHE_DIR or ~/.cache/edgetl/features).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--engine", type=click.Choice(["auto", "torch", "openvino", "onnxruntime"]), default="auto",
              show_default=True,
              help="What runs the frozen backbone on a CPU: auto picks OpenVINO/ONNX Runtime when the pass is "
                   "long enough to repay a one-off export (features checked against torch within 1e-4).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Held-out fraction when DATA has no val split.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images with a warning instead of failing.")
@click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images larger than this many pixels (decompression bombs).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def finetune(data, out, backbone, weights, head_kind, epochs, lr, image_size, train_last, cache_dir, device,
             engine, seed, val_fraction, skip_bad, max_pixels, overwrite, as_json) -> None:
    """Fine-tune a head on DATA (image folder, CSV or builtin:NAME) over a frozen backbone."""
    from edgetl.finetune import FinetuneConfig, finetune as run_finetune
    from edgetl.heads import HeadConfig

    config = FinetuneConfig(
        backbone=backbone, weights=weights, head=HeadConfig(kind=head_kind, epochs=epochs, lr=lr, seed=seed),
        image_size=image_size, train_last=train_last, cache_dir=cache_dir, device=device, engine=engine, seed=seed,
        val_fraction=val_fraction, skip_bad=skip_bad, max_pixels=max_pixels, overwrite=overwrite,
    )
    result = run_finetune(data, out, config, progress=terminal_progress, log=_log)
    timings = result.manifest.timings
    if as_json:
        print_json({"run": str(result.run_dir), "cache_hit": result.cache_hit, "timings": timings,
                    **{k: v for k, v in result.metrics.items() if k != "history"}})
        return
    print_table([
        ("run", str(result.run_dir)),
        ("backbone", f"{backbone} (train last {train_last})"),
        ("head", head_kind),
        ("feature cache", "hit (no backbone pass)" if result.cache_hit
         else f"miss (one backbone pass on {result.manifest.compute['engine']})"),
        ("backbone pass s", timings["backbone_pass_s"]),
        ("head training s", timings["train_s"]),
        ("train images", result.metrics["n_train"]),
        ("val images", result.metrics["n"]),
        ("val accuracy", result.metrics["accuracy"]),
    ])


@main.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True))
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
@click.option("--data", default=None, help="Where the run's data is now, if it moved (for the accuracy check).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print the bundle manifest as JSON.")
def export(run, out, formats, target, pack_archive, max_accuracy_drop, calib, fp16, data, overwrite,
           as_json) -> None:
    """Export RUN to a bundle; every artifact is checked against torch and gated on accuracy."""
    from edgetl.exporters.bundle import export_run
    from edgetl.runtime.archive import pack_bundle

    result = export_run(run, out, formats=formats, data_address=data, overwrite=overwrite,
                        max_accuracy_drop=max_accuracy_drop, calibration_size=calib, options={"fp16": fp16},
                        progress=terminal_progress, log=_log, target=target)
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
@click.option("--overwrite", is_flag=True)
def data_export(source, out, classes, overwrite) -> None:
    """Write SOURCE (e.g. builtin:digits) as an image folder OUT with train/ and val/."""
    from edgetl.data_export import export_image_folder

    subset = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    counts = export_image_folder(source, out, classes=subset, overwrite=overwrite)
    click.echo(f"wrote {out}: " + ", ".join(f"{split} {n} images" for split, n in counts.items()))


@data.command("list")
def data_list() -> None:
    """List the built-in data sets."""
    from edgetl.runtime.builtin import BUILTIN_DATASETS

    for name, spec in BUILTIN_DATASETS.items():
        click.echo(f"builtin:{name}\t{spec.description}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
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
def backbones() -> None:
    """List the available backbones."""
    from edgetl.backbones import list_backbones

    for name in list_backbones():
        click.echo(name)


for _command in (runtime_cli.predict, runtime_cli.evaluate, runtime_cli.bench, runtime_cli.compare,
                 runtime_cli.pack):
    main.add_command(_command)
