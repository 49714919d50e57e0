"""int8 on both x86 CPU classes, in one run: the same files on this CPU and on an emulated AVX2-only CPU.

Without VNNI (AVX2 only), ONNX Runtime's and OpenVINO's int8 kernels multiply u8 x s8 with VPMADDUBSW,
which saturates a pair of products at int16; VNNI and AMX accumulate in int32.  This script exports the
7-bit (``onnx-int8``, ``openvino-int8``) and 8-bit (``*-int8-vnni``) variants of a digits model, then
evaluates each on the 539 validation images natively (this CPU must have VNNI) and under qemu's x86
user-mode emulator as a Haswell (AVX2, FMA; no AVX-512, no VNNI), which runs the engines' AVX2 kernels
for real (slowly: speed is not measured there).  It prints accuracy on both paths and the top-1 agreement
between them: the evidence for shipping 7-bit int8 to every x86 CPU and 8-bit only to VNNI/AMX ones.
Needs qemu-user (apt-get install qemu-user).  Run: python benchmarks/int8_cpu_paths.py
"""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
from _common import save_result

from edgetl.runtime.machine import INT8_DOT_FLAGS, cpu_facts

VARIANTS = ("onnx-int8", "onnx-int8-vnni", "openvino-int8", "openvino-int8-vnni")
EVAL = textwrap.dedent("""
    import json, sys
    import numpy as np
    images = np.load(sys.argv[1])
    out = {}
    for spec in sys.argv[2:]:
        backend, path = spec.split("=", 1)
        out[spec] = run(backend, path, images).tolist()
    print(json.dumps(out))
""")


def run(backend, path, images):
    """Features of ``images`` from one int8 file: through the runtime's backend with its stated settings, or
    (``onnxruntime-exact-products``) through ONNX Runtime with its switch to exact U8U8 products on CPUs without
    VNNI, which the runtime does not state (it costs 2.4x on a VNNI Xeon): shown as the alternative to 7-bit."""
    import numpy as np

    from edgetl.runtime.engines.backends import create_backend

    if backend == "onnxruntime-exact-products":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.add_session_config_entry("session.x64quantprecision", "1")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"input": images[i:i + 64]})[0] for i in range(0, len(images), 64)])
    with create_backend(backend, path, threads=2, precision="int8") as runner:
        return np.concatenate([runner.infer(images[i:i + 64]) for i in range(0, len(images), 64)])


def main() -> None:
    qemu = shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")
    if qemu is None:
        sys.exit("qemu's x86 user-mode emulator is needed: apt-get install qemu-user")
    if not set(cpu_facts()["flags"]) & set(INT8_DOT_FLAGS):
        sys.exit("run this on a CPU with VNNI or AMX: the 8-bit variants are the reference there")
    from edgetl.exporters.bundle import export_run
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.runtime.bundle.heads import load_head
    from edgetl.runtime.bundle.manifest import read_bundle_manifest
    from edgetl.runtime.data.reader import read_batches
    from edgetl.runtime.data.sources import open_data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trained = finetune("builtin:digits", tmp / "run", FinetuneConfig())
        bundle = export_run(trained.run_dir, tmp / "bundle", formats=",".join(VARIANTS), max_accuracy_drop=100.0).bundle
        manifest = read_bundle_manifest(bundle)
        head = load_head(bundle / manifest.head["file"])
        data = open_data("builtin:digits").remap_to(manifest.labels)
        records = data.split("val")
        images = np.concatenate([b.images for b in read_batches(records, manifest.preprocess_config, 64)])
        labels = np.array([r.label for r in records])
        np.save(tmp / "images.npy", images)
        specs = {name: f"{manifest.artifact(name).backend}={bundle / manifest.artifact(name).file}"
                 for name in VARIANTS}
        specs["onnx-int8-vnni, x64quantprecision=1"] = \
            f"onnxruntime-exact-products={bundle / manifest.artifact('onnx-int8-vnni').file}"
        native = {name: run(*spec.split("=", 1), images) for name, spec in specs.items()}
        out = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", inspect.getsource(run) + EVAL,
                              str(tmp / "images.npy"),
                              *specs.values()], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"the emulated run failed: {out.stderr[-2000:]}")
        emulated = {name: np.array(json.loads(out.stdout.strip().splitlines()[-1])[spec], np.float32)
                    for name, spec in specs.items()}
        rows = []
        for name in specs:
            a, b = head.logits(native[name]).argmax(1), head.logits(emulated[name]).argmax(1)
            rows.append({"artifact": name, "weights": "8-bit" if "vnni" in name else "7-bit",
                         "accuracy_vnni": float((a == labels).mean()), "accuracy_avx2": float((b == labels).mean()),
                         "top1_agreement": float((a == b).mean()),
                         "max_feature_diff": float(np.abs(native[name] - emulated[name]).max()),
                         "export_accuracy": manifest.artifact(name.split(",")[0]).accuracy})
    print(f"digits val ({len(labels)} images), this CPU: {cpu_facts()['model']} (VNNI) vs qemu -cpu Haswell (AVX2)")
    print(f"{'artifact':36s} {'weights':7s} {'acc VNNI':>9s} {'acc AVX2':>9s} {'agree':>7s} {'max|dfeat|':>11s}")
    for r in rows:
        print(f"{r['artifact']:36s} {r['weights']:7s} {r['accuracy_vnni']:9.4f} {r['accuracy_avx2']:9.4f} "
              f"{r['top1_agreement']:7.3f} {r['max_feature_diff']:11.3g}")
    path = save_result("int8_cpu_paths", {"command": "python benchmarks/int8_cpu_paths.py", "emulator": qemu,
                                          "emulated_cpu": "Haswell", "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
