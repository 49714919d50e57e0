"""Deploying on a device: ``doctor``, ``build-engine`` and ``unpack``.

The library does the work (:mod:`edgetl.runtime.tools`), imported inside each
command so that ``edgetl-rt predict`` does not pay for it.
"""

from __future__ import annotations

import click

from .options import json_option, no_measure_options, option_group, overwrite_option, trusted_keys_option
from .output import note, print_json, print_table


@click.command()
@json_option
def doctor(as_json) -> None:
    """Report this device: CPU flags, memory, backends and their devices, and the profile that fits."""
    from ..tools.doctor import doctor_report

    report = doctor_report()
    if as_json:
        print_json(report)
        return
    cpu, memory, cuda = report["cpu"], report["memory"], report["cuda"]
    rows = [("cpu", f"{cpu['model']} ({cpu['arch']}, {cpu['cores_usable']}/{cpu['cores']} cores usable)"),
            ("cpu flags", " ".join(cpu["notable_flags"]) or ("none of note" if cpu["flags_read"] else "not readable")),
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
        verdict = "fits" if fit["fits"] else "no: " + "; ".join(fit["missing"]) if fit["missing"] else \
            "cannot tell: " + "; ".join(fit["unknown"])
        rows.append((f"profile {fit['name']}", verdict))
    rows += [("could not read", line) for line in report["unread"]]
    rows.append(("best profile", report["best_profile"] or (
        "none confirmed (see 'could not read'); name one with --target" if report["unread"]
        else "none fits; write your own devices/*.toml")))
    print_table(rows)


@click.command("build-engine")
@click.argument("bundle", type=click.Path(file_okay=False, exists=True))
@click.option("--precision", type=click.Choice(["fp16", "int8", "fp32"]), default=None,
              help="Engine precision (default: the target profile's, else fp16).")
@click.option("--dla", "dla_core", type=int, default=None, help="Build for this DLA core, with GPU fallback.")
@click.option("--max-batch", type=int, default=None,
              help="Largest batch the engine accepts (default: profile's, else 8).")
@click.option("--workspace-mb", type=int, default=None, help="Builder workspace limit.")
@click.option("--print-trtexec", is_flag=True, help="Only print the equivalent trtexec command line.")
@trusted_keys_option
@json_option
def build_engine(bundle, precision, dla_core, max_batch, workspace_mb, print_trtexec, as_json) -> None:
    """Build the backbone's TensorRT engine on this device, into BUNDLE (needs TensorRT and a GPU)."""
    if print_trtexec:
        from ..bundle.manifest import read_bundle_manifest
        from ..engines.sidecar import parse_version
        from ..tools.engine_plan import image_size, trtexec_command

        manifest = read_bundle_manifest(bundle)
        engine = manifest.target.get("tensorrt", {})
        version = engine.get("version")
        command = trtexec_command(precision or engine.get("precision", "fp16"), image_size(manifest),
                                  max_batch or engine.get("max_batch", 8),
                                  parse_version(version)[0] if version else None, dla_core)
        if as_json:
            print_json({"trtexec": command})
        else:
            click.echo(command)
        return
    from ..tools.engine_build import build_engine as build

    result = build(bundle, precision=precision, dla_core=dla_core, max_batch=max_batch, workspace_mb=workspace_mb,
                   log=note)
    built = {"artifact": result.artifact.name, "engine": result.artifact.file,
             "tensorrt": result.metadata.tensorrt_version, "compute_capability": result.metadata.compute_capability,
             "strongly_typed": result.plan.strongly_typed, "builder_flags": list(result.plan.builder_flags)}
    if as_json:
        print_json(built)
        return
    print_table([("artifact", built["artifact"]), ("engine", built["engine"]), ("tensorrt", built["tensorrt"]),
                 ("compute capability", built["compute_capability"]),
                 ("typing",
                  "strong" if built["strongly_typed"] else "builder flags " + ",".join(built["builder_flags"]))])


@click.command()
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@overwrite_option("DEST", " (only once the new bundle is verified)")
@option_group(no_measure_options("Do not measure the artifacts on this machine now (the first run will)."))
@trusted_keys_option
@json_option
def unpack(archive, dest, overwrite, no_measure, as_json) -> None:
    """Unpack a bundle ARCHIVE into DEST safely (no paths outside DEST, no links), verify it, and measure which
    of its artifacts runs fastest on this machine."""
    from ..tools.unpack import unpack_bundle

    folder = unpack_bundle(archive, dest, overwrite=overwrite)
    measured = None
    if not no_measure:
        from ..bundle.folder import Bundle
        from ..engines.measure import measure_bundle

        opened = Bundle(folder, verify=False)   # verified by unpacking
        measured = measure_bundle(opened, device=opened.manifest.openvino_device, timings=opened.timings(), log=note)
    if as_json:
        rows = measured.rows if measured else []
        print_json({"bundle": str(folder), "measured": [{"artifact": r.artifact, "backend": r.backend} for r in rows],
                    "timings": str(measured.path) if measured and measured.path else None})
        return
    click.echo(str(folder))
