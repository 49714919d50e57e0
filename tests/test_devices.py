"""Device profiles, building for a target, TensorRT planning, safe archives and doctor."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.cli import main as host
from edgetl.devices import PROFILE_DIR, get_profile, load_profiles, parse_profile
from edgetl.exporters import EXPORT_FORMATS
from edgetl.exporters.bundle import export_run, run_records
from edgetl.exporters.pack import pack_bundle
from edgetl.exporters.targets import formats_for_target
from edgetl.runtime import EdgeModel, read_bundle_manifest
from edgetl.runtime.bundle.manifest import Artifact, BundleManifest
from edgetl.runtime.cli import main as rt
from edgetl.runtime.engines.backends import BACKENDS, create_backend, installed
from edgetl.runtime.engines.choice import choose, runnable_backends
from edgetl.runtime.engines.sidecar import check_engine_compatible, read_sidecar, sidecar_path
from edgetl.runtime.errors import BundleError, ConfigError, MissingDependencyError
from edgetl.runtime.machine import cpu_facts, this_cpu_class
from edgetl.runtime.tools.engine_plan import engine_metadata, plan_build, trtexec_command
from edgetl.runtime.tools.unpack import unpack_bundle


def choose_artifact(manifest, artifact, backend):
    """The artifact the runtime picks on this machine with nothing measured here."""
    return choose(manifest, artifact, backend, None, this_cpu_class(), cpu_facts()["flags"]).artifact


PROFILES = load_profiles()
REQUIRED = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "x86-avx2", "x86-avx512-bf16",
            "x86-avx512-vnni", "x86-nvidia-gpu", "intel-igpu"}


# --- profiles -------------------------------------------------------------------------------------------------

def test_every_required_target_has_a_valid_profile():
    assert REQUIRED <= set(PROFILES)
    for name, profile in PROFILES.items():
        assert (PROFILE_DIR / f"{name}.toml").is_file()
        formats, _ = formats_for_target(profile)
        assert formats.split(",")[0] == "onnx" and all(f in EXPORT_FORMATS for f in formats.split(","))
        assert all(b in BACKENDS for b in profile.deploy.backends)
        if "tensorrt" in profile.deploy.backends:
            assert profile.software.tensorrt and profile.deploy.engine_precision in ("fp16", "int8")
    jetsons = [p for p in PROFILES.values() if p.hardware.is_jetson]
    assert len(jetsons) == 4 and all(p.hardware.arch == "aarch64" for p in jetsons)
    assert {p.software.tensorrt_major for p in jetsons if p.software.jetpack.startswith("6")} == {10}
    assert PROFILES["x86-nvidia-gpu"].software.tensorrt_major == 11
    assert PROFILES["jetson-orin-nano"].hardware.dla_cores == 0 and PROFILES["jetson-agx-orin"].hardware.dla_cores == 2


def test_format_choice_per_target():
    jetson, _ = formats_for_target(PROFILES["jetson-orin-nano"])
    assert set(jetson.split(",")) == {"onnx", "onnx-fp16", "onnx-int8-trt"}   # engine sources + CPU fallback
    assert formats_for_target(PROFILES["x86-avx512-vnni"])[0] == "onnx,openvino-int8-vnni,openvino"
    assert formats_for_target(PROFILES["x86-avx2"])[0] == "onnx,onnx-int8,openvino"    # 7-bit: no saturation
    assert formats_for_target(PROFILES["x86-avx512-bf16"])[0] == "onnx,openvino-int8-vnni,openvino-bf16,openvino"
    igpu, options = formats_for_target(PROFILES["intel-igpu"])
    assert "openvino" in igpu.split(",") and options == {"fp16": True}


PROFILE = ("name = 'x'\n[hardware]\narch='x86_64'\n[deploy]\nbackends=['onnxruntime']\nprecisions=['fp32']\n"
           "memory_budget_mb=1\n")


@pytest.mark.parametrize("text, message", [
    (PROFILE.replace("['onnxruntime']", "['tflite']"),
     'mine.toml: \\[deploy\\] backends\\[0\\] must be one of onnxruntime, openvino, tensorrt, got "tflite"'),
    (PROFILE.replace("'x86_64'", "'riscv'"), "mine.toml: \\[hardware\\] arch must be one of x86_64, aarch64"),
    (PROFILE.replace("'x86_64'", "'aarch64'").replace("['onnxruntime']", "['tensorrt']"),
     "must state \\[software\\] tensorrt"),
    (PROFILE.replace("arch='x86_64'", "arch='x86_64'\ncolour='red'"),
     "mine.toml: \\[hardware\\] unknown key\\(s\\) colour \\(valid: arch, "),
    ("name = 'x'\n[hardware\n", "mine.toml: not valid TOML"),
    # wrong types and missing keys: one line naming the key, never a TypeError or a string read letter by letter
    (PROFILE + "max_batch = \"8\"\n", '^device profile mine.toml: \\[deploy\\] max_batch must be an integer, '
                                      'got the string "8"$'),
    (PROFILE.replace("memory_budget_mb=1\n", ""),
     "^device profile mine.toml: missing key \\[deploy\\] memory_budget_mb$"),
    (PROFILE.replace("['onnxruntime']", '"tensorrt"'),
     '^device profile mine.toml: \\[deploy\\] backends must be a list of strings, got the string "tensorrt"$'),
    (PROFILE + "max_batch = true\n", "\\[deploy\\] max_batch must be an integer, got true"),
    (PROFILE + "max_batch = 0\n", "\\[deploy\\] max_batch must be >= 1, got 0"),
    (PROFILE.replace("arch='x86_64'", "arch='x86_64'\ncpu_flags='avx2'"),
     '\\[hardware\\] cpu_flags must be a list of strings, got the string "avx2"'),
    (PROFILE.replace("[deploy]", "[software]\ntensorrt='ten'\n[deploy]"),
     '\\[software\\] tensorrt must be a version number such as "10.3", got "ten"'),
    (PROFILE.replace("name = 'x'", "name = 3"), "mine.toml: name must be a string, got the integer 3"),
    (PROFILE.replace("name = 'x'\n", ""), "mine.toml: missing key name"),
])
def test_bad_profiles_name_file_and_key(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_profile(text, "mine.toml")
    assert "\n" not in str(info.value)


def test_a_wrong_type_in_a_profile_file_is_a_cli_error_not_a_traceback(tmp_path):
    own = tmp_path / "my-board.toml"
    own.write_text((PROFILE_DIR / "x86-avx2.toml").read_text().replace('"x86-avx2"', '"my-board"')
                   .replace("[deploy]", '[deploy]\nmax_batch = "8"'))
    result = CliRunner().invoke(host, ["export", str(tmp_path), "--target", str(own), "--out", str(tmp_path / "b")])
    assert result.exit_code == ConfigError.exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "my-board.toml: [deploy] max_batch must be an integer, got the string \"8\"" in result.output


def test_unknown_target_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'jetson-orin-nano'"):
        get_profile("jetson-orin-nan")
    own = tmp_path / "my-board.toml"
    own.write_text((PROFILE_DIR / "x86-avx2.toml").read_text().replace('"x86-avx2"', '"my-board"'))
    assert get_profile(str(own)).name == "my-board"


def test_devices_command_lists_every_profile():
    result = CliRunner().invoke(host, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert REQUIRED <= set(listed)
    assert listed["jetson-agx-orin"]["software"]["tensorrt"] == "10.3"
    assert listed["jetson-agx-orin"]["formats"] == formats_for_target(PROFILES["jetson-agx-orin"])[0]
    table = CliRunner().invoke(host, ["devices"])
    assert table.exit_code == 0 and all(name in table.output for name in REQUIRED)


# --- TensorRT planning (no TensorRT needed) -----------------------------------------------------------------------

def _artifact(name, fmt, precision, backends, role="backbone"):
    return Artifact(name=name, format=fmt, precision=precision, backend=backends[0], role=role, file=f"{name}.onnx",
                    sha256="ab" * 32, size=1, input_name="input", output_name="features", backends=list(backends))


def _manifest(artifacts, target=None):
    return BundleManifest(
        schema_version=1, edgetl_version="0", created="", labels=["a", "b"], feature_dim=4,
        backbone={"name": "tiny", "weights_sha256": "cd" * 32, "feature_dim": 4, "train_last": 0},
        preprocess={"input_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "resize_size": 64,
                    "interpolation": "bilinear"},
        head={}, artifacts=artifacts, target=target or {})


TRT_BUNDLE = _manifest([
    _artifact("onnx", "onnx", "fp32", ["onnxruntime"]),
    _artifact("onnx-fp16", "onnx-fp16", "fp16", ["tensorrt", "onnxruntime"]),
    _artifact("onnx-int8-trt", "onnx-int8-trt", "int8", ["tensorrt", "onnxruntime-reference"]),
])


def test_tensorrt10_uses_builder_flags_and_tensorrt11_strong_typing():
    ten = plan_build(TRT_BUNDLE, "int8", "10.3.0.30", max_batch=8)
    assert not ten.strongly_typed and ten.builder_flags == ("INT8", "FP16")
    assert ten.source_artifact == "onnx-int8-trt" and ten.max_shape == (8, 3, 64, 64) and ten.min_shape[0] == 1
    eleven = plan_build(TRT_BUNDLE, "int8", "11.4.0", max_batch=8)
    assert eleven.strongly_typed and eleven.builder_flags == ()
    assert eleven.source_artifact == "onnx-int8-trt"          # same Q/DQ file on both versions
    fp16 = plan_build(TRT_BUNDLE, "fp16", "8.5.2")
    assert fp16.builder_flags == ("FP16",) and fp16.source_artifact == "onnx-fp16"
    dla = plan_build(TRT_BUNDLE, "fp16", "10.3", dla_core=1, dla_cores_available=2)
    assert dla.builder_flags == ("FP16", "GPU_FALLBACK") and dla.engine_file.endswith("-dla1.engine")


@pytest.mark.parametrize("kwargs, message", [
    (dict(precision="fp16", tensorrt_version="11.4", dla_core=0), "does not support DLA"),
    (dict(precision="fp32", tensorrt_version="10.3", dla_core=0), "fp16 or int8 only"),
    (dict(precision="int8", tensorrt_version="10.3", dla_core=2, dla_cores_available=2),
     "does not exist on this device"),
    (dict(precision="int8", tensorrt_version="10.3", max_batch=0), "at least 1"),
    (dict(precision="int4", tensorrt_version="10.3"), "unknown engine precision"),
])
def test_build_requests_that_cannot_work_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan_build(TRT_BUNDLE, **kwargs)


def test_missing_source_artifact_says_how_to_export():
    with pytest.raises(BundleError, match="--format onnx,onnx-int8-trt"):
        plan_build(_manifest([_artifact("onnx", "onnx", "fp32", ["onnxruntime"])]), "int8", "10.3")


def test_trtexec_lines_for_both_major_versions():
    ten = trtexec_command("int8", 224, 16, 10)
    assert ten.startswith("trtexec --onnx=backbone-onnx-int8-trt.onnx --saveEngine=engines/backbone-int8.engine")
    assert "--minShapes=input:1x3x224x224" in ten and "--maxShapes=input:16x3x224x224" in ten
    assert "--int8 --fp16" in ten and "--timingCacheFile=engines/timing.cache" in ten
    eleven = trtexec_command("fp16", 224, 16, 11)
    assert "--fp16" not in eleven and "--int8" not in eleven and "backbone-onnx-fp16.onnx" in eleven
    assert trtexec_command("fp16", 64, 4, 10, dla_core=0).endswith("--fp16 --useDLACore=0 --allowGPUFallback")


def _sidecar(tmp_path, version="10.3.0.30", cc="8.7"):
    plan = plan_build(TRT_BUNDLE, "fp16", version)
    engine = tmp_path / "backbone-fp16.engine"
    engine.write_bytes(b"engine")
    sidecar_path(engine).write_text(engine_metadata(plan, cc, "Orin", "00").to_json())
    return engine


def test_engine_from_another_tensorrt_or_gpu_is_refused_with_the_rebuild_command(tmp_path):
    meta = read_sidecar(_sidecar(tmp_path))
    check_engine_compatible(meta, "10.3.0.30", "8.7")
    check_engine_compatible(meta, "10.3.0.26", "8.7")          # build number differs only
    with pytest.raises(BundleError, match="TensorRT 10.3.0.30 built it, this device has TensorRT 10.7.0.*"
                                          "edgetl-rt build-engine"):
        check_engine_compatible(meta, "10.7.0.23", "8.7")
    with pytest.raises(BundleError, match="compute capability 8.7 .*this GPU has 7.2"):
        check_engine_compatible(meta, "10.3.0.30", "7.2")


def test_engine_without_or_with_foreign_sidecar_is_refused(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"x")
    with pytest.raises(BundleError, match="no metadata file"):
        read_sidecar(engine)
    sidecar_path(engine).write_text(json.dumps({"schema": "other"}))
    with pytest.raises(BundleError, match="not an edgetl engine sidecar"):
        read_sidecar(engine)
    good = json.loads(_sidecar(tmp_path).with_name("backbone-fp16.engine.json").read_text())
    sidecar_path(engine).write_text(json.dumps({**good, "strongly_typed": "no"}))
    with pytest.raises(BundleError, match="x.engine.json: strongly_typed must be true or false, got the string "
                                          '"no"; rebuild the engine'):
        read_sidecar(engine)


def test_tensorrt_backend_without_tensorrt_gives_the_install_line(tmp_path):
    if "tensorrt" in installed(["tensorrt"]):
        pytest.skip("TensorRT is installed here; the missing-package path cannot be shown")
    with pytest.raises(MissingDependencyError, match=r'pip install "edgetl\[tensorrt\]"'):
        create_backend("tensorrt", _sidecar(tmp_path)).open()
    result = CliRunner().invoke(rt, ["build-engine", str(tmp_path)])
    assert result.exit_code != 0


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (NVIDIA's index is unreachable here); this runs on a Jetson "
                           "or a CUDA host with TensorRT")
def test_engine_build_and_run_on_real_tensorrt(digits_run, tmp_path):
    from edgetl.runtime.tools.engine_build import build_engine

    bundle = export_run(digits_run.run_dir, tmp_path / "b", target="x86-nvidia-gpu").bundle
    build = build_engine(bundle, precision="fp16")
    with EdgeModel(bundle, artifact=build.artifact.name) as engine, EdgeModel(bundle, artifact="onnx") as ort:
        x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
        assert np.argmax(engine.logits(x), 1).tolist() == np.argmax(ort.logits(x), 1).tolist()


# --- artifact choice from the target ------------------------------------------------------------------------------

def test_target_preference_picks_what_runs_on_its_intended_backend():
    jetson = {"backends": ["tensorrt", "onnxruntime"], "precisions": ["fp16", "int8", "fp32"]}
    chosen = choose_artifact(_manifest(TRT_BUNDLE.artifacts, jetson), None, None)
    assert chosen.name == "onnx"   # no TensorRT here: the fp16/Q-DQ files are engine sources, not CPU models
    vnni = {"backends": ["openvino", "onnxruntime"], "precisions": ["int8", "fp32"]}
    cpu = _manifest([_artifact("onnx", "onnx", "fp32", ["onnxruntime"]),
                     _artifact("openvino", "openvino", "fp32", ["openvino"]),
                     _artifact("openvino-int8", "openvino-int8", "int8", ["openvino"])], vnni)
    if "openvino" in installed(["openvino"]):
        assert choose_artifact(cpu, None, None).name == "openvino-int8"
    avx2 = dict(vnni, backends=["onnxruntime", "openvino"], precisions=["fp32", "int8"])
    assert choose_artifact(_manifest(cpu.artifacts, avx2), None, None).name == "onnx"


# --- safe archives ------------------------------------------------------------------------------------------------

@pytest.fixture
def small_bundle(tmp_path):
    """A real (tiny) bundle: manifest + files with their sha256, built without a model."""
    from edgetl.runtime.bundle.manifest import FileEntry

    folder = tmp_path / "bundle"
    (folder / "engines").mkdir(parents=True)
    np.savez(folder / "head.npz", weight=np.zeros((2, 4), np.float32))
    (folder / "backbone.onnx").write_bytes(b"not really onnx, but hashed")
    (folder / "engines" / "notes.txt").write_text("nested file")
    head, backbone = FileEntry.of(folder, "head.npz"), FileEntry.of(folder, "backbone.onnx")
    artifact = _artifact("onnx", "onnx", "fp32", ["onnxruntime"])
    artifact.sha256, artifact.size, artifact.file = backbone.sha256, backbone.size, backbone.file
    artifact.companions = [FileEntry.of(folder, "engines/notes.txt").__dict__]
    manifest = _manifest([artifact])
    manifest.head = {"kind": "linear", "file": head.file, "sha256": head.sha256, "size": head.size}
    manifest.write(folder)
    return folder


def test_pack_and_unpack_round_trip(small_bundle, tmp_path):
    archive = pack_bundle(small_bundle)
    assert archive.name == "bundle.tar.gz"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["backbone.onnx", "engines/notes.txt", "head.npz", "manifest.json"]
    out = unpack_bundle(archive, tmp_path / "device" / "bundle")
    assert read_bundle_manifest(out).artifact("onnx").size == (small_bundle / "backbone.onnx").stat().st_size
    # an archive made with plain tar, one folder on top, works too
    plain = tmp_path / "plain.tgz"
    with tarfile.open(plain, "w:gz") as tar:
        tar.add(small_bundle, arcname="bundle")
    assert read_bundle_manifest(unpack_bundle(plain, tmp_path / "second")).labels == ["a", "b"]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(feature_dim="1280"), 'manifest.json: feature_dim must be an integer, got the string "1280"'),
    (lambda m: m["artifacts"][0].update(backends="onnxruntime"),
     'manifest.json: [artifacts[0]] backends must be a list of strings, got the string "onnxruntime"'),
    (lambda m: m["head"].pop("sha256"), "manifest.json: missing key [head] sha256"),
    (lambda m: m["preprocess"].update(input_size=True), "manifest.json: [preprocess] input_size must be an integer, "
                                                        "got true"),
])
def test_a_manifest_with_a_wrong_type_names_the_file_and_key(small_bundle, edit, message):
    manifest = json.loads((small_bundle / "manifest.json").read_text())
    edit(manifest)
    (small_bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as info:
        read_bundle_manifest(small_bundle)
    assert message in str(info.value) and "\n" not in str(info.value)
    result = CliRunner().invoke(rt, ["predict", str(small_bundle), str(small_bundle / "head.npz")])
    assert result.exit_code == BundleError.exit_code and message in result.output


def _evil_archive(path, small_bundle, add):
    with tarfile.open(path, "w:gz") as tar:
        for name in ("manifest.json", "head.npz", "backbone.onnx"):
            tar.add(small_bundle / name, arcname=name)
        add(tar)
    return path


def _member(tar, name, kind=tarfile.REGTYPE, data=b"x", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name, kind, linkname, message", [
    ("../escape.txt", tarfile.REGTYPE, "", "points outside"),
    ("engines/../../escape.txt", tarfile.REGTYPE, "", "points outside"),
    ("/tmp/edgetl-absolute.txt", tarfile.REGTYPE, "", "absolute path"),
    ("engines/link", tarfile.SYMTYPE, "/etc/passwd", "is a link"),
    ("engines/hard", tarfile.LNKTYPE, "manifest.json", "is a link"),
    ("engines/fifo", tarfile.FIFOTYPE, "", "not a regular file"),
])
def test_crafted_archives_are_refused_and_write_nothing(small_bundle, tmp_path, name, kind, linkname, message):
    archive = _evil_archive(tmp_path / "evil.tar.gz", small_bundle,
                            lambda tar: _member(tar, name, kind, linkname=linkname))
    dest = tmp_path / "work" / "dest"
    result = CliRunner().invoke(rt, ["unpack", str(archive), str(dest)])
    assert result.exit_code == BundleError.exit_code and message in result.output
    assert not dest.exists() and not (tmp_path / "work" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "work").exists()   # refused before any folder, staging included, was made


def test_tampered_archive_fails_verification_and_keeps_the_old_bundle(small_bundle, tmp_path):
    dest = unpack_bundle(pack_bundle(small_bundle), tmp_path / "dest")
    (small_bundle / "backbone.onnx").write_bytes(b"tampered")
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tampered, "w:gz") as tar:
        for path in sorted(small_bundle.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(small_bundle).as_posix())
    with pytest.raises(BundleError, match="backbone.onnx fails its sha256"):
        unpack_bundle(tampered, dest, overwrite=True)
    assert (dest / "backbone.onnx").read_bytes() == b"not really onnx, but hashed"


def test_runtime_commands_point_a_packed_bundle_to_unpack(small_bundle):
    archive = pack_bundle(small_bundle)
    with pytest.raises(BundleError, match="edgetl-rt unpack"):
        EdgeModel(archive)


# --- doctor -------------------------------------------------------------------------------------------------------

# --- building for every target ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_flowers_run(flowers_dir, tmp_path_factory):
    from edgetl.finetune import FinetuneConfig, finetune
    from edgetl.heads import HeadConfig

    return finetune(str(flowers_dir), tmp_path_factory.mktemp("tiny-flowers") / "run",
                    FinetuneConfig(backbone="tiny_cnn_test", head=HeadConfig(epochs=20, lr=0.05)))


def _check_cpu_artifacts_match_manifest(bundle, run):
    manifest = read_bundle_manifest(bundle)
    _, val = run_records(run.manifest, None)
    checked = []
    for artifact in manifest.artifacts:
        if artifact.role != "backbone" or not runnable_backends(artifact) or artifact.accuracy is None \
                or not artifact.runs_on(cpu_facts()["flags"]):
            continue
        with EdgeModel(bundle, artifact=artifact.name) as model:
            report = model.evaluate(val)
        assert report["accuracy"] == pytest.approx(artifact.accuracy), artifact.name
        checked.append(artifact.name)
    return manifest, checked


@pytest.mark.parametrize("target", sorted(REQUIRED))
def test_export_for_every_target_runs_here_at_the_recorded_accuracy(tiny_flowers_run, tmp_path, target):
    bundle = export_run(tiny_flowers_run.run_dir, tmp_path / target, target=target, max_accuracy_drop=100.0,
                        calibration_size=8).bundle
    manifest, checked = _check_cpu_artifacts_match_manifest(bundle, tiny_flowers_run)
    expected = formats_for_target(PROFILES[target])[0].split(",")
    assert {a.format for a in manifest.artifacts if a.role == "backbone"} == set(expected)
    assert "onnx" in checked and manifest.target["name"] == target
    if "tensorrt" in PROFILES[target].deploy.backends:
        assert manifest.target["tensorrt"]["trtexec"]["fp16"].startswith("trtexec --onnx=backbone-onnx-fp16.onnx")


def test_jetson_bundle_with_real_weights_end_to_end(digits_run, digits_folder, tmp_path):
    """Lite0 on digits for the Orin Nano: export, pack, unpack on the 'device', evaluate every CPU artifact."""
    out = tmp_path / "orin"
    result = CliRunner().invoke(host, ["export", str(digits_run.run_dir), "--target", "jetson-orin-nano",
                                       "--out", str(out), "--pack"])
    assert result.exit_code == 0, result.output
    device_copy = unpack_bundle(tmp_path / "orin.tar.gz", tmp_path / "device" / "orin")
    manifest = read_bundle_manifest(device_copy)
    assert manifest.artifact("onnx-fp16").precision == "fp16"
    import onnx

    for source in ("onnx-fp16", "onnx-int8-trt"):             # the TensorRT engine sources are valid ONNX
        onnx.checker.check_model(str(device_copy / manifest.artifact(source).file), full_check=True)
    assert manifest.artifact("onnx-int8-trt").accuracy_drop <= 1.0
    for artifact in ("onnx", "onnx-fp16", "onnx-int8-trt"):
        ran = CliRunner().invoke(rt, ["evaluate", str(device_copy), str(digits_folder), "--artifact", artifact,
                                      "--json"])
        assert ran.exit_code == 0, ran.output
        assert json.loads(ran.output[ran.output.index("{"):])["accuracy"] == pytest.approx(
            manifest.artifact(artifact).accuracy)
    line = CliRunner().invoke(rt, ["build-engine", str(device_copy), "--print-trtexec", "--precision", "int8"])
    assert line.output.strip() == manifest.target["tensorrt"]["trtexec"]["int8"]


@pytest.mark.slow
@pytest.mark.parametrize("target", sorted(REQUIRED))
def test_every_target_with_real_weights(digits_run, tmp_path, target):
    bundle = export_run(digits_run.run_dir, tmp_path / target, target=target).bundle
    manifest, checked = _check_cpu_artifacts_match_manifest(bundle, digits_run)
    assert manifest.reference_accuracy >= 0.95 and checked
