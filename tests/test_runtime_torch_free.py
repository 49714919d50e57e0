"""The device runtime must work with torch and onnx absent: prove it in a fresh interpreter."""

import json
import subprocess
import sys
import textwrap

from conftest import import_blocker

SCRIPT = import_blocker("torch", "onnx", "onnxscript", "torchvision", "timm", "sklearn") + textwrap.dedent(
    """
    import json
    from edgetl.runtime import EdgeModel
    from edgetl.runtime.inference.evaluate import evaluate_bundle

    bundle, folder, image = sys.argv[1:4]
    with EdgeModel(bundle) as model:
        predictions = model.predict([image], top_k=2)
        report = evaluate_bundle(model, folder)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"label": predictions[0].top[0][0], "accuracy": report["accuracy"],
                      "n": report["n"], "leaked": leaked}))
    """
)


def test_predict_and_evaluate_without_torch_or_onnx(digits_bundle, digits_folder):
    image = sorted((digits_folder / "val" / "4").glob("*.png"))[0]
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(digits_bundle.bundle), str(digits_folder), str(image)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []
    assert result["n"] == 539 and result["accuracy"] >= 0.95
    assert result["label"] == "4"


def test_runtime_cli_runs_without_torch(digits_bundle, digits_folder):
    code = SCRIPT.split("from edgetl.runtime import EdgeModel")[0] + textwrap.dedent(
        """
        from edgetl.runtime.cli import main
        main()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "evaluate", str(digits_bundle.bundle), str(digits_folder), "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["accuracy"] >= 0.95


def test_update_and_predict_without_torch_or_onnx(digits_bundle, digits_folder, tmp_path):
    """On-device learning end to end in an interpreter where torch and onnx cannot be imported."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, bundle)
    new_data = tmp_path / "new"
    for digit in ("3", "8"):
        shutil.copytree(digits_folder / "val" / digit, new_data / f"digit-{digit}")   # renamed: new classes
    code = SCRIPT.split("from edgetl.runtime import EdgeModel")[0] + textwrap.dedent(
        """
        from edgetl.runtime import EdgeModel
        from edgetl.runtime.learning import update_bundle

        bundle, data, image = sys.argv[1:4]
        report = update_bundle(bundle, data)
        with EdgeModel(bundle) as model:
            top = model.predict([image])[0].top[0][0]
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({"version": report["version"], "classes": report["classes"], "top": top,
                          "leaked": leaked}))
        """
    )
    image = sorted((new_data / "digit-8").glob("*.png"))[0]
    out = subprocess.run([sys.executable, "-c", code, str(bundle), str(new_data), str(image)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["leaked"] == [] and result["version"] == 1
    assert result["classes"][-2:] == ["digit-3", "digit-8"]
    assert result["top"] == "digit-8"         # the image was learned under its new name, which now wins over "8"


def test_builtin_digits_open_without_scikit_learn():
    """The digits ship with the package: a device with only ``pip install edgetl`` reads them."""
    code = SCRIPT.split("from edgetl.runtime import EdgeModel")[0] + textwrap.dedent(
        """
        from edgetl.runtime.data.sources import open_data

        data = open_data("builtin:digits")
        train, val = data.split("train"), data.split("val")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        print(json.dumps({"classes": data.class_names, "train": len(train), "val": len(val),
                          "first": [val[0].source, val[0].label, val[0].pixels.tolist()], "leaked": leaked}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["leaked"] == [] and result["classes"] == [str(i) for i in range(10)]
    assert (result["train"], result["val"]) == (1258, 539)
    from edgetl.runtime.data.sources import open_data

    record = open_data("builtin:digits").split("val")[0]          # the same record as in this interpreter
    assert result["first"] == [record.source, record.label, record.pixels.tolist()]
