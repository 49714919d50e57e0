"""Regenerate ``tests/data/tiny-bundle``: the small committed bundle the torch-free tests (``tests/runtime``) use.

The tiny seeded CNN of ``tests/conftest.py`` (16 features) with a ridge head, trained on 3 classes x 10 synthetic
36 px images (the seeded ``make_folder_dataset``), exported to ``onnx`` and ``onnx-int8`` with its learning data
and check set: about 100 kB.  The runtime tests must run where only the runtime is installed (an emulated arm64
userland, a device), so they cannot build bundles; this script is the host side, run by hand when the bundle
format changes:

    python tests/data/make_tiny_bundle.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from conftest import _register_tiny_backbone, make_folder_dataset  # noqa: E402


def main() -> None:
    from edgetl.exporters.bundle import export_run
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.heads import HeadConfig

    _register_tiny_backbone()
    out = HERE / "tiny-bundle"
    with tempfile.TemporaryDirectory() as tmp:
        data = make_folder_dataset(Path(tmp) / "data", classes=("red", "green", "blue"), per_class=10, size=(36, 36))
        run = finetune(str(data), Path(tmp) / "run", FinetuneConfig(backbone="tiny_cnn_test",
                                                                       head=HeadConfig(kind="ridge")))
        bundle = export_run(run.run_dir, Path(tmp) / "bundle", formats="onnx,onnx-int8").bundle
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("timings", "cache", "store"))
    print(f"wrote {out} ({sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
