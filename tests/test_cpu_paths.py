"""Every CPU path, forced on whatever machine runs the suite.

Precision and thread settings are stated to the engines (OpenVINO computes an "fp32" IR in bf16 by itself
where the CPU has bf16: forced here as the core's default); the choice of artifact is a function of a
described machine (flags) and of timings; what the export can measure depends on the CPU.  Where this
machine can run the other path for real (qemu's x86 emulator as an AVX2-only Haswell), a test does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgetl.exporters import EXPORT_FORMATS
from edgetl.exporters.bundle import measurement_plan
from edgetl.runtime.bundle.manifest import Artifact, read_bundle_manifest
from edgetl.runtime.bundle.timings import Timing, TimingRecord
from edgetl.runtime.engines.backends import create_backend
from edgetl.runtime.engines.backends.openvino import benchmark_app_command, compile_config
from edgetl.runtime.engines.choice import Choice, check_named, choose, cpu_order
from edgetl.runtime.errors import BundleError, ConfigError
from edgetl.runtime.machine import cpu_class, cpu_facts, default_threads

AVX2 = {"sse4_2", "avx", "avx2", "fma", "f16c"}                      # Haswell .. Zen 3
VNNI = AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}                  # Cascade Lake, Ice Lake
BF16 = VNNI | {"avx512_bf16"}                                         # Cooper Lake, Zen 4
AMX = VNNI | {"amx_tile", "amx_int8", "amx_bf16"}                     # Sapphire Rapids
MACHINES = {"avx2": AVX2, "vnni": VNNI, "bf16": BF16, "amx": AMX}


def _check_images(bundle) -> np.ndarray:
    from edgetl.runtime.bundle.checkset import load_check_set
    from edgetl.runtime.bundle.folder import Bundle

    return load_check_set(Bundle(bundle)).images


def _reference_features(bundle, images) -> np.ndarray:
    with create_backend("onnxruntime", bundle / "backbone.onnx") as runner:
        return runner.infer(images)


def test_openvino_runs_fp32_even_where_the_core_defaults_to_bf16(digits_bundle, monkeypatch):
    import openvino as ov

    bundle = digits_bundle.bundle
    images = _check_images(bundle)
    reference = _reference_features(bundle, images)

    class Bf16ByDefault(ov.Core):
        """What OpenVINO's CPU plugin does by itself on CPUs with AVX512_BF16 or AMX."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.set_property("CPU", {"INFERENCE_PRECISION_HINT": "bf16"})

    monkeypatch.setattr(ov, "Core", Bf16ByDefault)
    with create_backend("openvino", bundle / "backbone-openvino.xml", precision="fp32") as runner:
        ours = np.concatenate([runner.infer(images[i:i + 1]) for i in range(len(images))])
        assert runner.settings["effective"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert runner.effective_precision == "fp32"
    assert np.abs(ours - reference).max() <= 1e-4

    # the control: left to the core's default, the same IR runs in bf16 wherever OpenVINO can (natively, or
    # emulated on AVX-512) and then misses fp32 by far more than 1e-4; on AVX2 OpenVINO silently keeps f32
    core = Bf16ByDefault()
    model = core.read_model(str(bundle / "backbone-openvino.xml"))
    model.reshape([1] + list(images.shape[1:]))
    compiled = core.compile_model(model, "CPU")
    if compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() != "bf16":
        pytest.skip("this CPU cannot run bf16 even in emulation: the forced default changes nothing here")
    default = np.concatenate([compiled(images[i:i + 1])[0] for i in range(len(images))])
    assert np.abs(default - reference).max() > 1e-3


def test_openvino_settings_are_stated_for_every_precision_and_device():
    for precision, hint in (("fp32", "f32"), ("int8", "f32"), ("bf16", "bf16")):
        config = compile_config(precision, 2, "CPU", physical_cores=2)
        assert config["INFERENCE_PRECISION_HINT"] == hint
        assert config["EXECUTION_MODE_HINT"] == "PERFORMANCE" and config["NUM_STREAMS"] == 1
        assert config["INFERENCE_NUM_THREADS"] == 2 and config["ENABLE_HYPER_THREADING"] is False
        assert config["CPU_DENORMALS_OPTIMIZATION"] is False and config["ENABLE_CPU_PINNING"] is True
    assert compile_config("fp16", 2, "CPU")["INFERENCE_PRECISION_HINT"] == "f32"   # fp16 weights, on every CPU
    gpu = compile_config("fp16", 2, "GPU", cache_dir="/tmp/c")
    assert gpu["INFERENCE_PRECISION_HINT"] == "f16" and "INFERENCE_NUM_THREADS" not in gpu
    assert gpu["CACHE_DIR"] == "/tmp/c"
    assert compile_config("fp32", 4, "CPU", physical_cores=2)["ENABLE_HYPER_THREADING"] is True
    command = benchmark_app_command("m.xml", 224, 1, "fp32", 2, seconds=3)
    for flag, value in (("-infer_precision", "f32"), ("-nthreads", "2"), ("-nstreams", "1"), ("-hint", "none"),
                        ("-shape", "[1,3,224,224]"), ("-t", "3")):
        assert command[command.index(flag) + 1] == value


def test_onnxruntime_settings_are_stated(digits_bundle):
    with create_backend("onnxruntime", digits_bundle.bundle / "backbone.onnx") as runner:
        settings = runner.describe()["settings"]
    assert settings["intra_op_num_threads"] == default_threads() >= 1
    assert settings["inter_op_num_threads"] == 1 and settings["execution_mode"] == "sequential"
    assert settings["mlas.enable_gemm_fastmath_arm64_bfloat16"] == "0"   # read back from the session
    assert settings["session.set_denormal_as_zero"] == "0" and settings["session.x64quantprecision"] == "0"
    assert settings["session.qdqisint8allowed"] == ("1" if cpu_facts()["arch"] == "aarch64" else "0")
    with pytest.raises(ConfigError, match="at least 1"):
        create_backend("onnxruntime", digits_bundle.bundle / "backbone.onnx", threads=0)


def test_cpu_classes_and_their_orders():
    assert cpu_class(AVX2).name == "x86-avx2" and cpu_class(VNNI).name == "x86-vnni"
    assert cpu_class(BF16).name == cpu_class(AMX).name == "x86-bf16"
    assert cpu_class({"asimd", "asimddp"}, "aarch64").name == "aarch64"
    avx2 = cpu_order(cpu_class(AVX2))
    assert avx2[0] == "onnx" and "openvino-bf16" not in avx2 and "onnx-int8-vnni" not in avx2
    vnni = cpu_order(cpu_class(VNNI))
    assert vnni[0] == "openvino-int8-vnni" and vnni.index("openvino") < vnni.index("onnx")
    assert "openvino-bf16" not in vnni
    bf16 = cpu_order(cpu_class(BF16))
    assert bf16.index("openvino-int8") < bf16.index("openvino-bf16") < bf16.index("openvino")
    assert cpu_order(cpu_class(set(), "aarch64"))[0] == "onnx"


def _artifact(name: str, precision: str = "fp32", backend: str = "onnxruntime", requires=(),
              measured: str = "as-deployed") -> Artifact:
    return Artifact(name=name, format=name, precision=precision, backend=backend, role="backbone",
                    file=f"{name}.bin", sha256="0" * 64, size=1, input_name="input", output_name="features",
                    backends=[backend], requires_cpu=list(requires), measured=measured)


def _manifest(*artifacts: Artifact):
    from edgetl.runtime.bundle.manifest import BundleManifest

    return BundleManifest(schema_version=1, edgetl_version="test", created="now", backbone={}, preprocess={},
                          labels=["a", "b"], feature_dim=4, head={}, artifacts=list(artifacts))


INT8_DOT = ["avx512_vnni", "avx_vnni", "amx_int8"]
BF16_FLAGS = ["avx512_bf16", "amx_bf16"]
ARTIFACTS = [
    _artifact("onnx"), _artifact("onnx-int8", "int8"), _artifact("openvino", backend="openvino"),
    _artifact("onnx-int8-vnni", "int8", requires=INT8_DOT),
    _artifact("openvino-int8-vnni", "int8", "openvino", requires=INT8_DOT),
    _artifact("openvino-bf16", "bf16", "openvino", requires=BF16_FLAGS, measured="emulated"),
]


def _choose(flags, timings=None, images=None, named=None) -> Choice:
    manifest = _manifest(*ARTIFACTS)
    return choose(manifest, named, None, timings, cpu_class(flags), flags, images)


def _timings(fast: str, checked=True, load=None) -> TimingRecord:
    rows = [Timing(a.name, a.backend, 0.5 if a.name == fast else 5.0, load_s=(load or {}).get(a.name, 0.05),
                   first_s=0.001, import_s=0.1 if a.backend == "openvino" else 0.05,
                   check={"passed": True} if a.needs_device_check and checked else None)
            for a in ARTIFACTS]
    return TimingRecord({}, rows)


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_choice_follows_timings_that_favour_each_artifact(machine):
    flags = MACHINES[machine]
    for artifact in ARTIFACTS:
        choice = _choose(flags, _timings(artifact.name))
        if artifact.runs_on(flags):
            assert choice.artifact.name == artifact.name, (machine, artifact.name)
            assert "measured on this machine" in choice.reason
        else:   # never chosen where it does not run as stated, however fast its record says it is
            assert choice.artifact.name != artifact.name


def test_without_timings_the_cpu_class_decides_and_unchecked_artifacts_wait():
    assert _choose(AVX2).artifact.name == "onnx"
    assert _choose(VNNI).artifact.name == "openvino-int8-vnni"
    assert "x86-vnni CPU order" in _choose(VNNI).reason
    # bf16 was only emulated at export: without a device check it is not chosen even where it is first
    bf16_only = choose(_manifest(ARTIFACTS[-1], _artifact("onnx")), None, None, None, cpu_class(BF16), BF16)
    assert bf16_only.artifact.name == "onnx"
    unchecked = _timings("openvino-bf16", checked=False)
    assert _choose(BF16, unchecked).artifact.name != "openvino-bf16"
    failed = _timings("openvino-bf16")
    next(r for r in failed.rows if r.artifact == "openvino-bf16").eligible = False
    assert _choose(AMX, failed).artifact.name != "openvino-bf16"
    assert _choose(AMX, _timings("openvino-bf16")).artifact.name == "openvino-bf16"
    with pytest.raises(BundleError, match="device check"):
        choose(_manifest(ARTIFACTS[-1]), None, None, None, cpu_class(BF16), BF16)


def test_one_shot_commands_weigh_time_to_the_result():
    # openvino-int8-vnni has the best p50 but a slow compile: for one image the reference wins
    slow_compile = _timings("openvino-int8-vnni", load={"openvino-int8-vnni": 0.4})
    assert _choose(VNNI, slow_compile).artifact.name == "openvino-int8-vnni"
    one = _choose(VNNI, slow_compile, images=1)
    assert one.artifact.name in ("onnx", "onnx-int8", "onnx-int8-vnni") and "1 result" in one.reason
    assert _choose(VNNI, slow_compile, images=5000).artifact.name == "openvino-int8-vnni"
    # an artifact barely faster to the result than the reference does not displace it (measurement noise)
    rows = [Timing("onnx", "onnxruntime", 1.0, load_s=0.100, first_s=0.002, import_s=0.05),
            Timing("onnx-int8", "onnxruntime", 0.9, load_s=0.095, first_s=0.002, import_s=0.05)]
    near = choose(_manifest(ARTIFACTS[0], ARTIFACTS[1]), None, None, TimingRecord({}, rows), cpu_class(VNNI),
                  VNNI, images=1)
    assert near.artifact.name == "onnx"


def test_the_device_check_compares_like_with_like():
    from edgetl.runtime.bundle.checkset import CheckSet, check_logits

    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(16, 3)).astype(np.float32)
    own = fp32.copy()
    own[:2] = np.roll(own[:2], 1, axis=1)                 # the artifact's exact logits differ from fp32 on 2 images
    check = CheckSet(np.zeros((16, 3, 8, 8), np.float32), fp32.argmax(1), fp32, {"onnx-int8-vnni": own})
    same_as_export = check_logits(own + 1e-4, check, "onnx-int8-vnni", 1.0)
    assert same_as_export.passed and same_as_export.against == "export" and same_as_export.agree == 16
    one_off = own.copy()
    one_off[5] = np.roll(one_off[5], 1)
    assert check_logits(one_off, check, "onnx-int8-vnni", 1.0).passed       # one differing answer of 16
    saturated = own.copy()
    saturated[5:9] = np.roll(saturated[5:9], 1, axis=1)
    failed = check_logits(saturated, check, "onnx-int8-vnni", 1.0)
    assert not failed.passed and failed.agree == 12
    unmeasured = check_logits(own, check, "openvino-bf16", 1.0)            # no export logits: fp32 is the yardstick
    assert unmeasured.against == "fp32" and unmeasured.agree == 14


def test_a_near_tie_goes_to_the_more_accurate_artifact():
    seven, eight = _artifact("onnx-int8", "int8"), _artifact("onnx-int8-vnni", "int8", requires=INT8_DOT)
    seven.accuracy, eight.accuracy = 0.961, 0.9666
    manifest = _manifest(seven, eight)
    for p50_eight, winner in ((0.53, "onnx-int8-vnni"), (0.60, "onnx-int8")):   # 2% slower: a tie; 13%: not
        rows = TimingRecord({}, [Timing("onnx-int8", "onnxruntime", 0.52), Timing("onnx-int8-vnni", "onnxruntime",
                                                                                 p50_eight)])
        assert choose(manifest, None, None, rows, cpu_class(VNNI), VNNI).artifact.name == winner


def test_naming_an_artifact_the_cpu_cannot_run_as_stated_is_refused():
    with pytest.raises(ConfigError, match="saturate"):
        check_named(ARTIFACTS[3], AVX2)
    with pytest.raises(ConfigError, match="emulate"):
        check_named(ARTIFACTS[-1], VNNI)
    check_named(ARTIFACTS[3], VNNI)
    check_named(ARTIFACTS[-1], AMX)
    assert _choose(VNNI, named="onnx-int8-vnni").reason == "named"


def test_what_the_export_measures_depends_on_the_cpu():
    vnni_onnx, vnni_ov, bf16 = (EXPORT_FORMATS[n] for n in ("onnx-int8-vnni", "openvino-int8-vnni", "openvino-bf16"))
    assert measurement_plan(vnni_onnx, VNNI).measured == "as-deployed"
    on_avx2 = measurement_plan(vnni_onnx, AVX2)
    assert (on_avx2.backend, on_avx2.measured) == ("onnxruntime-reference", "exact")
    assert measurement_plan(vnni_ov, AVX2).measured == "not-measured"
    assert measurement_plan(vnni_ov, AMX).measured == "as-deployed"
    assert measurement_plan(bf16, VNNI).measured == "emulated"
    assert measurement_plan(bf16, BF16).measured == "as-deployed"
    assert measurement_plan(EXPORT_FORMATS["onnx-int8"], AVX2).measured == "as-deployed"
    assert measurement_plan(EXPORT_FORMATS["onnx-int8-trt"], AVX2).measured == "exact"


def test_unsigned_activations_is_an_exact_rewrite():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetl.exporters.onnx_variants import unsigned_activations

    weight = np.random.default_rng(0).integers(-60, 60, (4, 3, 3, 3)).astype(np.int8)
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
         helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wf"]),
         helper.make_node("Conv", ["dq", "wf"], ["y"], pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(-7, np.int8), "z"),
         numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
         numpy_helper.from_array(np.array(0, np.int8), "wz")],
        value_info=[helper.make_tensor_value_info("q", TensorProto.INT8, [1, 3, 8, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(1).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)   # beyond the int8 range too

    def run(m):
        import onnxruntime as ort

        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    before = run(model)
    assert unsigned_activations(model) == 1
    zero_points = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert zero_points["z"].dtype == np.uint8 and int(zero_points["z"]) == 121
    assert zero_points["wz"].dtype == np.int8                     # weights stay signed
    onnx.checker.check_model(model)
    np.testing.assert_array_equal(run(model), before)


AVX2_EVAL = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edgetl.runtime.engines.backends import create_backend
    from edgetl.runtime.bundle.manifest import read_bundle_manifest
    bundle, names = sys.argv[1], sys.argv[2:]
    manifest = read_bundle_manifest(bundle)
    images = np.load(sys.argv[1] + "/avx2-inputs.npy")
    out = {}
    for name in names:
        with create_backend("onnxruntime", f"{bundle}/{manifest.artifact(name).file}", threads=1) as runner:
            out[name] = runner.infer(images).tolist()
    import onnxruntime as ort                  # ONNX Runtime's own switch to exact (slower) products on AVX2
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(f"{bundle}/{manifest.artifact(names[-1]).file}", options,
                                   providers=["CPUExecutionProvider"])
    out["exact-products"] = session.run(None, {"input": images})[0].tolist()
    print(json.dumps(out))
""")


def test_int8_variants_on_an_emulated_avx2_cpu(digits_run, digits_folder, tmp_path):
    """The same files on ONNX Runtime's AVX2 kernels (qemu as a Haswell: no AVX-512, no VNNI): 7-bit weights
    compute what they compute on this CPU; 8-bit weights saturate there, which is why they need VNNI."""
    qemu = shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")
    if qemu is None:
        pytest.skip("qemu's x86 user-mode emulator is not installed (apt-get install qemu-user)")
    if not set(cpu_facts()["flags"]) & set(INT8_DOT):
        pytest.skip("this CPU has no VNNI: the 8-bit artifact cannot be run natively to compare with")
    from edgetl.exporters.bundle import export_run
    from edgetl.runtime.data.reader import read_batches
    from edgetl.runtime.data.sources import open_data

    bundle = tmp_path / "bundle"
    export_run(digits_run.run_dir, bundle, formats="onnx-int8,onnx-int8-vnni", calibration_size=100,
               max_accuracy_drop=100.0)
    manifest = read_bundle_manifest(bundle)
    records = open_data(str(digits_folder)).remap_to(manifest.labels).split("val")[::8]
    images = np.concatenate([b.images for b in read_batches(records, manifest.preprocess_config, 64)])
    np.save(bundle / "avx2-inputs.npy", images)
    names = ["onnx-int8", "onnx-int8-vnni"]
    native = {}
    for name in names:
        with create_backend("onnxruntime", bundle / manifest.artifact(name).file, threads=1) as runner:
            native[name] = runner.infer(images)
    out = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", AVX2_EVAL, str(bundle), *names],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    emulated = {k: np.array(v, np.float32) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}
    seven_bit = np.abs(emulated["onnx-int8"] - native["onnx-int8"]).max()
    eight_bit = np.abs(emulated["onnx-int8-vnni"] - native["onnx-int8-vnni"]).max()
    assert seven_bit <= 1e-3, seven_bit          # the same int32 sums: only float rounding differs
    assert eight_bit > 100 * max(seven_bit, 1e-4), eight_bit   # saturated int16 pair sums
    exact = np.abs(emulated["exact-products"] - native["onnx-int8-vnni"]).max()
    assert exact <= 1e-3, exact                  # what session.x64quantprecision=1 would buy, at 2.4x on VNNI


def test_bf16_is_checked_on_the_device_before_it_is_chosen(digits_run, tmp_path, monkeypatch):
    """On a (described) CPU with native bf16, an openvino-bf16 the export could not measure as deployed is
    run on the check set first; it is eligible only if it agrees with fp32 and really computed in bf16."""
    import edgetl.runtime.engines.measure as measure_module
    import edgetl.runtime.engines.runner as runner_module
    from edgetl.exporters.bundle import export_run
    from edgetl.runtime import EdgeModel
    from edgetl.runtime.bundle.timings import read_timings

    bundle = export_run(digits_run.run_dir, tmp_path / "b", formats="openvino,openvino-bf16").bundle
    bf16 = read_bundle_manifest(bundle).artifact("openvino-bf16")
    if not bf16.needs_device_check:
        pytest.skip("this CPU has native bf16: the export measured openvino-bf16 as deployed")
    described = dict(cpu_facts(), flags=sorted(set(cpu_facts()["flags"]) | {"avx512_bf16"}))
    for module in (runner_module, measure_module):
        monkeypatch.setattr(module, "cpu_facts", lambda: described)
    with EdgeModel(bundle) as model:
        row = read_timings(bundle).get("openvino-bf16", "openvino")
        assert row.check is not None and row.check["n"] == 16
        ran_bf16 = row.check["effective_precision"] == "bf16"     # emulated on AVX-512, f32 on AVX2
        # compared with its own export-time logits where the export could compute it (emulation), else fp32
        assert row.check["against"] == ("export" if bf16.measured == "emulated" else "fp32")
        assert row.eligible == (ran_bf16 and row.check["passed"])
        if not row.eligible:
            assert model.artifact.name != "openvino-bf16"
    with EdgeModel(bundle) as again:                              # measured once: the check is not repeated
        assert again.measured is None


def test_unpack_measures_and_pack_leaves_local_state_behind(digits_bundle, tmp_path):
    import tarfile

    from click.testing import CliRunner

    from edgetl.exporters.pack import pack_bundle
    from edgetl.runtime.bundle.timings import read_timings
    from edgetl.runtime.cli import main as rt

    (digits_bundle.bundle / "timings").mkdir(exist_ok=True)        # this machine's state, if not there yet
    archive = pack_bundle(digits_bundle.bundle, tmp_path / "b.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "check.npz" in names and not [n for n in names if n.split("/")[0] in ("timings", "cache")]
    measured = CliRunner().invoke(rt, ["unpack", str(archive), str(tmp_path / "device")])
    assert measured.exit_code == 0, measured.output
    assert "measuring 3 artifact(s)" in measured.output
    assert {r.artifact for r in read_timings(tmp_path / "device").rows} == {"onnx", "onnx-int8", "openvino"}
    skipped = CliRunner().invoke(rt, ["unpack", str(archive), str(tmp_path / "later"), "--no-measure"])
    assert skipped.exit_code == 0 and read_timings(tmp_path / "later") is None


def test_a_candidate_that_cannot_load_is_skipped_not_fatal(digits_bundle, tmp_path, monkeypatch):
    from edgetl.runtime import EdgeModel
    from edgetl.runtime.bundle.timings import read_timings
    from edgetl.runtime.engines.backends.openvino import OpenVINOBackend

    def broken(self):
        raise RuntimeError("Exception from src/inference/src/core.cpp: plugin CPU failed to load")

    bundle = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, bundle, ignore=shutil.ignore_patterns("timings"))
    monkeypatch.setattr(OpenVINOBackend, "_open_impl", broken)
    lines = []
    with EdgeModel(bundle, log=lines.append) as model:
        assert model.backend.name == "onnxruntime"
    row = read_timings(bundle).get("openvino", "openvino")
    assert not row.eligible and "plugin CPU failed" in row.error
    assert any(line.startswith("warning: could not measure openvino on openvino") for line in lines)
