"""What 0.6 scripts use keeps working for one release: old module paths (the same module objects), old names,
the ``tune=`` keyword and ``--no-tune``, each with a deprecation notice naming the new spelling."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

import pytest
from click.testing import CliRunner
from conftest import TINY_BUNDLE, write_image

from edgetl.runtime.cli import main as rt
from edgetl.runtime.compat import MOVED_MODULES

OLD_PATHS = """
import importlib, json, sys, warnings
from edgetl.runtime.compat import MOVED_MODULES

found = {}
for old, new in MOVED_MODULES.items():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    found[old] = {"same": module is importlib.import_module(new), "spec": module.__spec__.name,
                  "warned": [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]}
print(json.dumps(found))
"""


def test_every_old_module_path_is_its_new_module(child_python):
    """In a fresh interpreter (where nothing was imported yet under either name)."""
    out = subprocess.run([child_python, "-c", OLD_PATHS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert set(found) == set(MOVED_MODULES)
    for old, new in MOVED_MODULES.items():
        assert found[old]["same"] and found[old]["spec"] == new, old          # its own spec: relative imports work
        assert any(new in message and "0.8" in message for message in found[old]["warned"]), old


def test_the_old_names_of_0_6_still_import():
    from edgetl.runtime.engines.measure import MeasureReport, measure_bundle
    from edgetl.runtime.engines.runner import BackboneRunner
    from edgetl.runtime.learning import UpdateSettings, update_bundle

    with pytest.warns(DeprecationWarning, match="BackboneRunner"):
        from edgetl.runtime import Backbone
    assert Backbone is BackboneRunner
    with pytest.warns(DeprecationWarning, match="measure_bundle"):
        from edgetl.runtime.engines.measure import tune_bundle
    assert tune_bundle is measure_bundle
    with pytest.warns(DeprecationWarning, match="MeasureReport"):
        from edgetl.runtime.engines.measure import TuneReport
    assert TuneReport is MeasureReport
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from edgetl.runtime.update import UpdateSettings as Old, update_bundle as old_update
    assert Old is UpdateSettings and old_update is update_bundle
    with pytest.raises(ImportError):
        from edgetl.runtime import NoSuchThing  # noqa: F401


def test_the_tune_keyword_is_measure(tiny_bundle):
    from edgetl.runtime import EdgeModel

    with pytest.warns(DeprecationWarning, match="measure="), EdgeModel(tiny_bundle, tune=False) as model:
        assert model.measured is None and "nothing measured here" in model.choice_reason
    with pytest.raises(TypeError, match="both tune= and measure="):
        EdgeModel(tiny_bundle, tune=False, measure=False)


@pytest.mark.parametrize("spelling", ["--no-tune", "--no-measure", None])
def test_no_tune_is_a_hidden_spelling_of_no_measure(tmp_path, spelling):
    help_text = CliRunner().invoke(rt, ["predict", "--help"]).output
    assert "--no-measure" in help_text and "--no-tune" not in help_text
    bundle = tmp_path / "bundle"
    shutil.copytree(TINY_BUNDLE, bundle)
    image = write_image(tmp_path / "red.png", color=(250, 10, 10))
    result = CliRunner().invoke(rt, ["predict", str(bundle), str(image), "--json"] + ([spelling] if spelling else []))
    assert result.exit_code == 0, result.output
    assert (bundle / "timings").is_dir() == (spelling is None)    # measured (and recorded) only when allowed to
    assert ("--no-tune is now --no-measure" in result.stderr) == (spelling == "--no-tune")


def test_timings_measured_by_0_6_read_as_measured(tiny_bundle):
    """0.6 wrote ``"source": "tune"`` for what the runtime measured itself."""
    from edgetl.runtime.bundle.timings import Timing, machine_key, read_timings, write_timings

    path = write_timings(tiny_bundle, [Timing("onnx", "onnxruntime", 1.0, source="measure")])
    document = json.loads(path.read_text())
    document["rows"][0]["source"] = "tune"
    path.write_text(json.dumps(document))
    assert path.stem == machine_key()[0]
    assert [row.source for row in read_timings(tiny_bundle).rows] == ["measure"]


@pytest.mark.parametrize("package", ["edgetl.runtime", "edgetl.runtime.data", "edgetl.runtime.bundle",
                                     "edgetl.runtime.engines", "edgetl.runtime.inference", "edgetl.runtime.learning"])
def test_every_public_name_resolves(package):
    """``from edgetl.runtime import EdgeModel, Bundle, Learner, ...`` and each group's names: the lazy tables name
    modules that define them."""
    import importlib

    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert module.__all__ and missing == []
    assert set(module.__all__) <= set(dir(module))


SCRIPT = """
import edgetl.runtime.preprocess
from edgetl.runtime.tune import tune_bundle
from edgetl.runtime import Backbone
"""


def test_a_script_sees_the_deprecation_warnings_at_its_own_lines(tmp_path, child_python):
    """Python shows a DeprecationWarning by default only when it is blamed on the script's own code: each warning
    points at the line that used the old name."""
    script = tmp_path / "old_script.py"
    script.write_text(SCRIPT)
    out = subprocess.run([child_python, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for line, new in ((2, "edgetl.runtime.data.preprocess"), (3, "measure_bundle"), (4, "BackboneRunner")):
        assert f"{script}:{line}: DeprecationWarning" in out.stderr and new in out.stderr, out.stderr
