"""``edgetl-rt``: the device-side command line.

Run (predict, evaluate, compare, bench), learn (update, history, rollback, adapt, cluster), deploy
(doctor, build-engine, pack, unpack).

Every user error is an :class:`EdgetlError`; the group prints its message
and exits with its non-zero code, without a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..errors import EdgetlError
from ..evaluate import SPLITS, evaluate_bundle
from ..model import EdgeModel
from ..preprocess import DEFAULT_MAX_PIXELS
from ..progress import terminal_progress


class ErrorReportingGroup(click.Group):
    """A click group that turns :class:`EdgetlError` into a one-line message and exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgetlError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def print_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, default=float))


def print_table(rows: list[tuple[str, object]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        if isinstance(value, float):
            value = f"{value:.4g}"
        click.echo(f"{name.ljust(width)}  {value}")


model_options = [
    click.option("--artifact", default=None, help="Backbone artifact of the bundle to run, by name (e.g. onnx)."),
    click.option("--backend", default=None, help="Runtime backend (default: the artifact's own)."),
    click.option("--threads", type=int, default=None,
                 help="Intra-op threads (default: one per usable physical core, stated to every engine)."),
    click.option("--no-tune", is_flag=True,
                 help="Never measure the artifacts on this machine: with no timings here, the device profile or "
                      "the CPU class's order decides."),
]


def log_err(message: str) -> None:
    click.echo(message, err=True)


def with_model_options(func):
    for option in reversed(model_options):
        func = option(func)
    return func


@click.group(cls=ErrorReportingGroup)
@click.version_option(package_name="edgetl")
def main() -> None:
    """edgetl device runtime: run, evaluate, benchmark, keep learning and build engines (no torch needed)."""


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--top-k", type=int, default=1, show_default=True, help="How many classes to report per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images larger than this many pixels.")
@with_model_options
def predict(bundle, images, top_k, as_json, max_pixels, artifact, backend, threads, no_tune) -> None:
    """Classify IMAGES with BUNDLE."""
    with EdgeModel(bundle, artifact=artifact, backend=backend, threads=threads, images=len(images),
                   tune=not no_tune, log=log_err) as model:
        predictions = model.predict(images, top_k=top_k, max_pixels=max_pixels)
        if as_json:
            print_json({"artifact": model.artifact.name, "backend": model.backend.name,
                        "precision": model.backend.effective_precision, "artifact_choice": model.choice_reason,
                        "predictions": [p.to_dict() for p in predictions]})
            return
        for p in predictions:
            ranked = ", ".join(f"{label} {score:.3f}" for label, score in p.top)
            click.echo(f"{p.source}\t{ranked}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("data")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Which split of DATA (default: val when DATA has one, else all).")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images with a warning instead of failing.")
@click.option("--min-accuracy", type=float, default=None,
              help="Exit with status 6 when the accuracy is below this (a deployment gate).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@with_model_options
def evaluate(bundle, data, split, skip_bad, min_accuracy, as_json, artifact, backend, threads, no_tune) -> None:
    """Accuracy of BUNDLE on labelled DATA (image folder, CSV or builtin:NAME)."""
    with EdgeModel(bundle, artifact=artifact, backend=backend, threads=threads, tune=not no_tune,
                   log=log_err) as model:
        report = evaluate_bundle(model, data, split=split, skip_bad=skip_bad, progress=terminal_progress)
    if report["skipped"]:
        click.echo(f"warning: skipped {len(report['skipped'])} bad file(s), e.g. {report['skipped'][0]}", err=True)
    if as_json:
        print_json(report)
    else:
        rows = [("artifact", f"{report['artifact']} ({report['backend']})"), ("data", f"{data} [{report['split']}]"),
                ("images", report["n"]), ("accuracy", report["accuracy"])]
        rows += [(f"  {name}", f"{v['accuracy']:.4f} (n={v['n']})") for name, v in report["per_class"].items()]
        print_table(rows)
    if min_accuracy is not None and report["accuracy"] < min_accuracy:
        click.echo(f"error: accuracy {report['accuracy']:.4f} is below --min-accuracy {min_accuracy}", err=True)
        raise SystemExit(6)


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
    click.option("--artifacts", "--artifact", "artifacts", default=None, help="Comma-separated artifact names."),
    click.option("--backends", "--backend", "backends", default=None,
                 help="Comma-separated backends (onnxruntime, openvino, tensorrt)."),
    click.option("--precisions", default=None, help="Comma-separated precisions (fp32, fp16, int8)."),
    click.option("--batch", "batches", default="1", show_default=True, help="Comma-separated batch sizes, e.g. 1,8."),
    click.option("--threads", default=None, help="Comma-separated intra-op thread counts (default: the backend's)."),
    click.option("--target", default=None, help="Device profile: its backends, precisions and memory budget."),
    click.option("--data", default=None, help="Measure accuracy again on this labelled data (default: the manifest's)."),
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
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
]


def with_bench_options(func):
    for option in reversed(bench_options):
        func = option(func)
    return func


def run_bench(bundle, artifacts, backends, precisions, batches, threads, target, data, out, min_runs, min_seconds,
              warmup_runs, noise_threshold, in_process, record, as_json, write=None) -> dict:
    """The matrix, recorded, written (``write(result, out)``) and printed as the options say."""
    from ..latency import BenchSettings
    from ..tools.bench import MatrixSettings, run_matrix, table_lines, write_results

    if bundle is None:
        raise click.UsageError("give BUNDLE")
    settings = MatrixSettings(
        batches=_ints(batches, "--batch"), threads=_ints(threads, "--threads"), artifacts=_names(artifacts),
        backends=_names(backends), precisions=_names(precisions), target=target, isolate=not in_process,
        noise_threshold=noise_threshold,
        bench=BenchSettings(warmup_runs=warmup_runs, min_runs=min_runs, min_seconds=min_seconds),
    )
    result = run_matrix(bundle, settings, data=data, log=lambda message: click.echo(message, err=True))
    result["command"] = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    if record:
        from ..timings import record_timings

        click.echo(f"recorded {record_timings(bundle, result)}: the runtime now runs the fastest artifact here",
                   err=True)
    if out:
        written = (write or write_results)(result, out)
        click.echo(f"wrote {', '.join(str(p) for p in written.values())}", err=True)
    if as_json:
        print_json(result)
    else:
        for line in table_lines(result):
            click.echo(line)
    return result


@main.command()
@with_bench_options
def bench(**options) -> None:
    """Latency (p50/p90/p99), throughput, cold start, memory, size and accuracy of every artifact of BUNDLE
    this machine can run, per backend, thread count and batch size."""
    run_bench(**options)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("data")
@click.option("--method", type=click.Choice(["ridge", "sgd", "ncm"]), default="ridge", show_default=True,
              help="ridge: exact streaming ridge; sgd: logistic head with replay; ncm: nearest class mean.")
@click.option("--holdout", "holdout_fraction", type=float, default=0.2, show_default=True,
              help="Share of the new images kept out of training to measure accuracy.")
@click.option("--max-accuracy-drop", type=float, default=2.0, show_default=True,
              help="Refuse to commit when accuracy on the earlier held-out samples falls by more points.")
@click.option("--force", is_flag=True, help="Commit even when the accuracy guard objects.")
@click.option("--reselect-alpha", is_flag=True, help="ridge: search the regularisation again now.")
@click.option("--lock-timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for another update to finish.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images with a warning instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@with_model_options
def update(bundle, data, method, holdout_fraction, max_accuracy_drop, force, reselect_alpha, lock_timeout, skip_bad,
           as_json, artifact, backend, threads, no_tune) -> None:
    """Learn labelled DATA (image folder or CSV; new class names extend the head) into BUNDLE's head."""
    from ..update import UpdateSettings, update_bundle

    settings = UpdateSettings(method=method, holdout_fraction=holdout_fraction, max_accuracy_drop=max_accuracy_drop,
                              force=force, lock_timeout=lock_timeout, skip_bad=skip_bad,
                              reselect_alpha=reselect_alpha)
    report = update_bundle(bundle, data, settings, artifact=artifact, backend=backend, threads=threads,
                           progress=terminal_progress, tune=not no_tune)
    if as_json:
        print_json(report)
        return
    print_table([
        ("version", f"{report['version']} (from {report['parent']}, {report['method']})"),
        ("new images", f"{report['n_new']} ({report['n_train_new']} train, {report['n_holdout_new']} held out; "
                       f"{report['n_duplicate']} already stored)"),
        ("classes", f"{len(report['classes'])}" + (f" (new: {', '.join(report['new_classes'])})"
                                                    if report["new_classes"] else "")),
        ("held-out accuracy", f"{_fmt(report['accuracy'])} on {report['holdout_n']} samples"),
        ("earlier held-out", f"{_fmt(report['accuracy_before'])} -> {_fmt(report['accuracy_after_on_earlier_holdout'])}"),
        ("backbone s", report["timings"]["backbone_s"]), ("head math s", report["timings"]["head_s"]),
        ("evicted", report["evicted"]),
    ])


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history(bundle, as_json) -> None:
    """The head versions kept in BUNDLE's feature store (newest last)."""
    from dataclasses import asdict

    from ..store import FeatureStore

    store = FeatureStore(bundle)
    versions = store.history() if store.exists else []
    current = store.current_number() if store.exists else None
    if as_json:
        print_json({"bundle": str(bundle), "current": current,
                    "versions": [{k: v for k, v in asdict(x).items() if k != "files"} for x in versions]})
        return
    if not versions:
        click.echo(f"{bundle}: no on-device updates yet (the bundle's own head is in use)")
        return
    click.echo(f"{'ver':>4s} {'action':8s} {'method':6s} {'classes':>7s} {'train':>6s} {'held':>5s} {'new':>5s} "
               f"{'held-out acc':>12s}  created")
    for v in versions:
        mark = "*" if v.version == current else " "
        click.echo(f"{v.version:>3d}{mark} {v.action:8s} {v.method or '-':6s} {len(v.classes):>7d} {v.n_train:>6d} "
                   f"{v.n_holdout:>5d} {v.n_new:>5d} {_fmt(v.accuracy.get('holdout')):>12s}  {v.created}"
                   + (f"  {v.note}" if v.note else ""))


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--to", "to_version", type=int, default=None, help="Version to return to (default: the previous one).")
@click.option("--lock-timeout", type=float, default=60.0, show_default=True)
def rollback(bundle, to_version, lock_timeout) -> None:
    """Make an earlier head version current again (recorded as a new version)."""
    from ..update import rollback_bundle

    version = rollback_bundle(bundle, to_version, lock_timeout)
    click.echo(f"version {version.version} is current: {version.note}")


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("data")
@click.option("--check", default=None, help="Labelled images of the target domain to measure the change on.")
@click.option("--max-accuracy-drop", type=float, default=2.0, show_default=True)
@click.option("--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@with_model_options
def adapt(bundle, data, check, max_accuracy_drop, force, as_json, artifact, backend, threads, no_tune) -> None:
    """Re-estimate feature normalisation on unlabelled DATA from the target domain (labels ignored)."""
    from ..update import adapt_bundle

    report = adapt_bundle(bundle, data, check, max_accuracy_drop, force, artifact=artifact, backend=backend,
                          threads=threads, progress=terminal_progress, tune=not no_tune)
    if as_json:
        print_json(report)
        return
    rows = [("version", report["version"]), ("unlabelled images", report["n_unlabeled"]),
            ("feature mean shift", report["mean_shift"])]
    if "accuracy_before" in report:
        rows.append(("check accuracy", f"{report['accuracy_before']:.4f} -> {report['accuracy_after']:.4f} "
                                       f"({report['check_n']} images)"))
    print_table(rows)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.argument("data")
@click.option("--k", type=int, required=True, help="Number of groups.")
@click.option("--out", required=True, type=click.Path(), help="Folder to write the groups to.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@with_model_options
def cluster(bundle, data, k, out, seed, overwrite, as_json, artifact, backend, threads, no_tune) -> None:
    """Group unlabelled images of DATA by feature similarity and write the groups out for labelling."""
    from ..tools.cluster import cluster_images

    summary = cluster_images(bundle, data, k, out, overwrite=overwrite, seed=seed, artifact=artifact,
                             backend=backend, progress=terminal_progress, tune=not no_tune)
    if as_json:
        print_json(summary)
        return
    click.echo(f"wrote {k} groups of {summary['n']} images to {out} (groups.csv, summary.json)")
    for g in summary["groups"]:
        click.echo(f"  {g['group']}: {g['size']:4d} images; head suggests {g['head_suggests']} "
                   f"({g['agreement']:.0%} agree)")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def doctor(as_json) -> None:
    """Report this device: CPU flags, memory, backends and their devices, and the profile that fits."""
    from ..tools.doctor import doctor_report

    report = doctor_report()
    if as_json:
        print_json(report)
        return
    cpu, memory, cuda = report["cpu"], report["memory"], report["cuda"]
    rows = [("cpu", f"{cpu['model']} ({cpu['arch']}, {cpu['cores_usable']}/{cpu['cores']} cores usable)"),
            ("cpu flags", " ".join(cpu["notable_flags"]) or "none of note"),
            ("cpu class", f"{report['cpu_class']['name']}: int8 dot products "
                          f"{'yes' if report['cpu_class']['int8_dot_products'] else 'no (8-bit int8 would saturate)'}, "
                          f"native bf16 {'yes' if report['cpu_class']['native_bf16'] else 'no'}; "
                          f"{report['cpu_class']['default_threads']} threads by default"),
            ("memory MB", f"{memory['total_mb']} total, {memory['available_mb']} available"),
            ("jetson", (f"{report['jetson']['model']} ({report['jetson']['l4t']})" if report["jetson"] else "no")),
            ("cuda", (", ".join(f"GPU {d['index']}: compute capability {d['compute_capability']}"
                                for d in cuda["devices"]) if cuda["available"] else f"no ({cuda['reason']})"))]
    for name, info in report["backends"].items():
        detail = info.get("error") or info.get("version")
        extra = info.get("providers") or list(info.get("devices", {}).values())
        rows.append((f"backend {name}", f"{detail}" + (f" [{', '.join(extra)}]" if extra else "")))
    for fit in report["profiles"]:
        rows.append((f"profile {fit['name']}", "fits" if fit["fits"] else "no: " + "; ".join(fit["missing"])))
    rows.append(("best profile", report["best_profile"] or "none fits; write your own devices/*.toml"))
    print_table(rows)


@main.command("build-engine")
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--precision", type=click.Choice(["fp16", "int8", "fp32"]), default=None,
              help="Engine precision (default: the target profile's, else fp16).")
@click.option("--dla", "dla_core", type=int, default=None, help="Build for this DLA core, with GPU fallback.")
@click.option("--max-batch", type=int, default=None, help="Largest batch the engine accepts (default: profile's, else 8).")
@click.option("--workspace-mb", type=int, default=None, help="Builder workspace limit.")
@click.option("--print-trtexec", is_flag=True, help="Only print the equivalent trtexec command line.")
def build_engine(bundle, precision, dla_core, max_batch, workspace_mb, print_trtexec) -> None:
    """Build the backbone's TensorRT engine on this device, into BUNDLE (needs TensorRT and a GPU)."""
    from ..manifest import read_bundle_manifest
    from ..engines import parse_version
    from ..tools.engine_plan import trtexec_command

    if print_trtexec:
        manifest = read_bundle_manifest(bundle)
        engine = manifest.target.get("tensorrt", {})
        version = engine.get("version")
        click.echo(trtexec_command(precision or engine.get("precision", "fp16"),
                                   manifest.preprocess_config.input_size, max_batch or engine.get("max_batch", 8),
                                   parse_version(version)[0] if version else None, dla_core))
        return
    from ..tools.engine_build import build_engine as build

    result = build(bundle, precision=precision, dla_core=dla_core, max_batch=max_batch, workspace_mb=workspace_mb,
                   log=lambda message: click.echo(message, err=True))
    print_table([("artifact", result.artifact.name), ("engine", result.artifact.file),
                 ("tensorrt", result.metadata.tensorrt_version),
                 ("compute capability", result.metadata.compute_capability),
                 ("typing", "strong" if result.plan.strongly_typed else "builder flags "
                  + ",".join(result.plan.builder_flags))])


@main.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace DEST if it exists (only once the new bundle is verified).")
@click.option("--no-tune", is_flag=True, help="Do not measure the artifacts on this machine now (the first run will).")
def unpack(archive, dest, overwrite, no_tune) -> None:
    """Unpack a bundle ARCHIVE into DEST safely (no paths outside DEST, no links), verify it, and measure which
    of its artifacts runs fastest on this machine."""
    from ..tools.unpack import unpack_bundle

    folder = unpack_bundle(archive, dest, overwrite=overwrite)
    if not no_tune:
        from ..manifest import read_bundle_manifest
        from ..timings import read_timings
        from ..tune import tune_bundle

        manifest = read_bundle_manifest(folder, verify=False)   # verified by unpacking
        tune_bundle(folder, manifest, device=manifest.openvino_device, timings=read_timings(folder), log=log_err)
    click.echo(str(folder))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
