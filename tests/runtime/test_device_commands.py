"""The device commands on the committed tiny bundle, torch-free: predict, evaluate, update, history, rollback and
tune through ``edgetl-rt``; ``doctor``'s facts and profile fit; ``bench`` where no child interpreter starts."""

from __future__ import annotations

import json
import platform

import pytest
from click.testing import CliRunner
from conftest import make_folder_dataset

from edgetl.devices import load_profiles
from edgetl.runtime.cli import main as rt
from edgetl.runtime.tools.doctor import profile_fit, rank_profiles

PROFILES = load_profiles()
FAST = ["--min-runs", "10", "--min-seconds", "0.1", "--warmup-runs", "2"]


def _json(args: list[str]) -> dict:
    result = CliRunner().invoke(rt, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("artifact", ["onnx", "onnx-int8"])
def test_predict_evaluate_update_history_rollback_and_tune_on_the_tiny_bundle(tiny_bundle, tmp_path, artifact):
    images = make_folder_dataset(tmp_path / "images", classes=("red", "green", "blue"), per_class=14, size=(36, 36))
    evaluated = _json(["evaluate", str(tiny_bundle), str(images), "--artifact", artifact])
    assert evaluated["n"] == 42 and evaluated["accuracy"] > 0.6
    predicted = _json(["predict", str(tiny_bundle), str(images / "red" / "12.png"), "--artifact", artifact,
                       "--top-k", "3"])
    assert len(predicted["predictions"][0]["top_k"]) == 3
    new = tmp_path / "new"
    make_folder_dataset(new, classes=("red", "green", "blue", "white"), per_class=14, size=(36, 36))
    for folder in new.iterdir():
        for path in folder.glob("*.png"):
            if int(path.stem) < 10 and folder.name != "white":
                path.unlink()                                     # the bundle's own images: only 10-13 are new
    report = _json(["update", str(tiny_bundle), str(new), "--artifact", artifact])
    assert report["committed"] and report["new_classes"] == ["white"] and report["n_duplicate"] == 0
    history = _json(["history", str(tiny_bundle)])
    assert [v["version"] for v in history["versions"]] == [0, 1] and history["current"] == 1
    tuned = _json(["tune", str(tiny_bundle)])
    assert tuned["version"] == 2 and tuned["alpha"] > 0
    rolled = _json(["rollback", str(tiny_bundle), "--to", "0"])
    assert rolled["version"] == 3 and sorted(rolled["classes"]) == ["blue", "green", "red"]


def test_doctor_on_this_machine():
    result = CliRunner().invoke(rt, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    machine = platform.machine().lower()
    assert report["cpu"]["arch"] == {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    assert report["cpu"]["cores"] >= 1
    if report["memory"]["total_mb"] is None:              # a chroot without /proc (make check-arm64) says so
        assert any("/proc/meminfo" in line for line in report["unread"])
    else:
        assert report["memory"]["total_mb"] > 0
    assert report["backends"]["onnxruntime"]["version"] and "CPUExecutionProvider" in \
        report["backends"]["onnxruntime"]["providers"]
    assert {p["name"] for p in report["profiles"]} == set(PROFILES)
    if report["cpu"]["arch"] == "x86_64" and "avx2" in report["cpu"]["flags"] and not report["cuda"]["available"]:
        flags = set(report["cpu"]["flags"])
        expected = ("x86-avx512-bf16" if {"avx512_bf16", "amx_bf16"} & flags and "avx512_vnni" in flags
                    else "x86-avx512-vnni" if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags else "x86-avx2")
        assert report["best_profile"] == expected
    table = CliRunner().invoke(rt, ["doctor"])
    assert table.exit_code == 0 and "best profile" in table.output


def _facts(arch="x86_64", flags=(), jetson=None, cuda=(), ov_devices=None):
    return {"cpu": {"arch": arch, "flags": list(flags)}, "jetson": jetson,
            "cuda": {"devices": [{"index": i, "compute_capability": cc} for i, cc in enumerate(cuda)],
                     "reason": "" if cuda else "no CUDA device"},
            "backends": {"openvino": {"devices": ov_devices}} if ov_devices else {}}


@pytest.mark.parametrize("facts, best", [
    (_facts("aarch64", ["asimd"], {"model": "NVIDIA Jetson Orin Nano Developer Kit"}), "jetson-orin-nano"),
    (_facts("aarch64", ["asimd"], {"model": "NVIDIA Jetson AGX Orin Developer Kit"}), "jetson-agx-orin"),
    (_facts("aarch64", ["asimd"], {"model": "NVIDIA Jetson Xavier NX Developer Kit"}), "jetson-xavier-nx"),
    (_facts(flags=["avx2", "fma", "avx512f", "avx512_vnni"]), "x86-avx512-vnni"),
    (_facts(flags=["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"]), "x86-avx512-bf16"),      # Zen 4
    (_facts(flags=["avx2", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"]), "x86-avx512-bf16"),   # SPR
    (_facts(flags=["avx2", "fma", "avx_vnni"]), "x86-avx512-vnni"),                                  # Alder Lake
    (_facts(flags=["avx2", "fma"], cuda=["8.9"]), "x86-nvidia-gpu"),
    (_facts(flags=["avx2", "fma"], ov_devices={"CPU": "i7", "GPU.0": "Iris Xe"}), "intel-igpu"),
    (_facts(flags=["avx2", "fma"], cuda=["7.0"]), "x86-avx2"),   # a Volta card is below the 7.5 minimum
    (_facts("aarch64", ["asimd"]), None),                         # a Raspberry Pi: no profile fits
])
def test_profile_fit_on_other_machines(facts, best):
    ranked = rank_profiles(facts, PROFILES)
    assert (ranked[0].profile if ranked[0].fits else None) == best
    if best is None:
        assert "not a Jetson" in " ".join(profile_fit(PROFILES["jetson-orin-nx"], facts).missing)


def test_doctor_says_what_it_could_not_read_instead_of_matching_nothing():
    facts = _facts(flags=[])
    facts["cpu"]["flags_read"] = False                     # a chroot without /proc: no flags at all
    fit = profile_fit(PROFILES["x86-avx512-vnni"], facts)
    assert not fit.fits and not fit.missing and fit.unknown and "no CPU flags could be read" in fit.unknown[0]
    assert profile_fit(PROFILES["x86-avx2"], _facts(flags=["avx2", "fma"])).unknown == []


def test_a_machine_that_cannot_start_a_child_interpreter_measures_in_process_and_says_so(tiny_bundle, tmp_path,
                                                                                         monkeypatch):
    import sys

    foreign = tmp_path / "python"                     # an interpreter of another architecture: ENOEXEC
    foreign.write_bytes(b"\x7fELF" + bytes(60))
    foreign.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(foreign))
    result = CliRunner().invoke(rt, ["bench", str(tiny_bundle), "--backends", "onnxruntime",
                                     "--precisions", "fp32", "--json", *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rows"] and data["settings"]["process_per_cell"] is False
    assert "cannot be started as a child process" in data["settings"]["process_per_cell_fallback"]
    assert "in this process" in result.stderr


def test_int8_measured_on_another_architecture_is_checked_and_a_recorded_accuracy_gates_it(tiny_bundle, monkeypatch):
    from edgetl.runtime.bundle import manifest
    from edgetl.runtime.engines import choice

    def artifact(precision, measured_on):
        return manifest.Artifact(name=f"onnx-{precision}", format="onnx", precision=precision, backend="onnxruntime",
                                 role="backbone", file="x.onnx", sha256="0" * 64, size=1, input_name="input",
                                 output_name="output", accuracy_by_arch={arch: 0.9 for arch in measured_on})

    here = manifest.cpu_facts()
    aarch64 = {**here, "arch": "aarch64"}                                # a Jetson's CPU
    monkeypatch.setattr(manifest, "cpu_facts", lambda: aarch64)
    monkeypatch.setattr(choice, "cpu_facts", lambda: aarch64)
    assert artifact("int8", ["x86_64"]).needs_device_check              # ARM's int8 kernels may compute otherwise
    assert not artifact("int8", ["x86_64", "aarch64"]).needs_device_check
    assert not artifact("fp32", ["x86_64"]).needs_device_check          # fp32 agrees across them (3.9e-6)
    assert not artifact("int8", []).needs_device_check                  # bundles before 0.5 recorded none
    # make check-arm64 records what aarch64 measured; below the bundle's gate there, the artifact is not chosen
    reference = manifest.read_bundle_manifest(tiny_bundle).reference_accuracy
    manifest.record_accuracy(tiny_bundle, "aarch64", {"onnx-int8": reference - 0.5})
    opened = manifest.read_bundle_manifest(tiny_bundle)                  # the files still pass their sha256
    assert opened.artifact("onnx-int8").accuracy_by_arch == {"aarch64": reference - 0.5}
    names = {c.artifact.name for c in choice.candidates(opened, None, here["flags"])}
    assert "onnx" in names and "onnx-int8" not in names
    manifest.record_accuracy(tiny_bundle, "aarch64", {"onnx-int8": reference})
    opened = manifest.read_bundle_manifest(tiny_bundle)
    assert "onnx-int8" in {c.artifact.name for c in choice.candidates(opened, None, here["flags"])}
    assert not opened.artifact("onnx-int8").needs_device_check
    with pytest.raises(Exception, match="no artifact onnx-fp99"):
        manifest.record_accuracy(tiny_bundle, "aarch64", {"onnx-fp99": 0.5})
