"""Build the digits bundle for every device profile and run each CPU-runnable artifact here.

For each target: the formats the profile asks for, export time, every artifact's accuracy as recorded
in the manifest and as measured again by the runtime on the device copy of the data (they must agree),
and which artifact the runtime picks on this machine.  Run: python benchmarks/targets.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import save_result

from edgetl.data_export import export_image_folder
from edgetl.devices import load_profiles
from edgetl.exporters.bundle import export_run
from edgetl.finetune import FinetuneConfig, finetune
from edgetl.runtime import EdgeModel
from edgetl.runtime.engines.choice import runnable_backends
from edgetl.runtime.inference.evaluate import evaluate_bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default=None, help="Comma-separated profile names (default: all).")
    args = parser.parse_args()
    profiles = load_profiles()
    names = args.targets.split(",") if args.targets else list(profiles)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = finetune("builtin:digits", tmp / "run", FinetuneConfig())
        folder = tmp / "digits"
        export_image_folder("builtin:digits", folder)
        for name in names:
            t0 = time.perf_counter()
            manifest = export_run(run.run_dir, tmp / name, target=name).manifest
            export_s = time.perf_counter() - t0
            with EdgeModel(tmp / name) as default:
                chosen = default.artifact.name
            artifacts = []
            for artifact in manifest.artifacts:
                entry = {"artifact": artifact.name, "precision": artifact.precision, "recorded": artifact.accuracy,
                         "drop_points": artifact.accuracy_drop, "size_mb": round(artifact.size / 1e6, 2)}
                if artifact.role == "backbone" and runnable_backends(artifact):
                    with EdgeModel(tmp / name, artifact=artifact.name) as model:
                        report = evaluate_bundle(model, str(folder))
                    entry.update(runtime=report["accuracy"], backend=report["backend"])
                artifacts.append(entry)
            rows.append({"target": name, "export_s": round(export_s, 1), "default_artifact_here": chosen,
                         "artifacts": artifacts})
            print(f"{name:18s} export {export_s:6.1f} s  default here: {chosen}")
            for a in artifacts:
                ran = f"runtime {a['runtime']:.4f} on {a['backend']}" if "runtime" in a else "not runnable here"
                print(f"    {a['artifact']:16s} {a['precision']:5s} recorded {a['recorded']:.4f} ({ran})")
    path = save_result("targets_digits", {"command": "python benchmarks/targets.py", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
