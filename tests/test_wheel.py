"""The built artifacts hold everything (issue 26).

The sdist and the wheel are built as a release builds them (``python -m build``: the wheel from the sdist, so a file
the sdist forgot is missing from the wheel too), their files are compared with what git sees under the package
folders, and the wheel, installed where no source tree can be imported, runs the host path (select, finetune
--backbone auto, export) and the device path (evaluate, predict, serve) through its own console scripts. The
editable install of the checkout hides a package missing from the wheel: that is how ``edgetl/selection/`` went
unshipped in 0.6.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import REPO_ROOT, request

#: top-level folder -> where its files lie in the wheel (setup.py maps the folders onto these import paths)
INSTALLED_AS = {"edgetl": "edgetl", "exporters": "edgetl/exporters", "runtime": "edgetl/runtime",
                "devices": "edgetl/devices"}


def git_files(*folders: str) -> list[str]:
    """Repository paths git sees (tracked, or new and not ignored) under ``folders``, those that exist now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", *folders],
                            cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    return sorted(p for p in listed.split("\0") if p and (REPO_ROOT / p).is_file())


def installed_path(path: str) -> str:
    folder, rest = path.split("/", 1)
    return f"{INSTALLED_AS[folder]}/{rest}"


def difference(where: str, expected: set[str], found: set[str]) -> str:
    return f"{where}: missing {sorted(expected - found)}, unexpected {sorted(found - expected)}"


def only(paths) -> Path:
    found = list(paths)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel of a copy of the checkout (what git sees, data/ aside), built with the build tools of
    this environment (no network)."""
    root = tmp_path_factory.mktemp("dist")
    source, out = root / "source", root / "dist"
    for name in git_files():
        if not name.startswith("data/"):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                           cwd=root, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return {"sdist": only(out.glob("*.tar.gz")), "wheel": only(out.glob("*.whl"))}


def test_sdist_and_wheel_hold_every_module_and_data_file(dist):
    sources = git_files(*INSTALLED_AS)
    assert any(p.endswith(".toml") for p in sources) and any(p.endswith(".npz") for p in sources)   # data files too
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        shipped = {n for n in wheel.namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert shipped == {installed_path(p) for p in sources}, difference("wheel", {installed_path(p) for p in sources},
                                                                       shipped)
    with tarfile.open(dist["sdist"]) as sdist:
        packed = {m.name.split("/", 1)[1] for m in sdist.getmembers() if m.isfile()}
    assert set(sources) <= packed, difference("sdist", set(sources), packed & set(sources))
    assert not any(p.startswith(("data/", "tests/")) for p in packed)        # repository data, not the package's


@pytest.fixture(scope="module")
def installed(dist, tmp_path_factory) -> Path:
    """A fresh venv of the base interpreter holding the wheel alone. Its dependencies come from this environment's
    site-packages through a .pth line: a folder named in a .pth is appended to sys.path, but the .pth files inside it
    (the checkout's editable finder among them) are not processed, so no source tree can be imported."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], check=True,
                          capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (Path(site) / "test-dependencies.pth").write_text("".join(f"{p}\n" for p in ours))
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                          str(dist["wheel"])], cwd=venv, capture_output=True, text=True)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-2000:]
    return venv


def installed_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(EDGETL_CACHE_DIR=str(work / "cache"), EDGETL_STATE_DIR=str(work / "state"), PYTHONNOUSERSITE="1")
    return env


def test_the_installed_wheel_imports_from_its_own_folder(installed, tmp_path):
    probe = ("import json, sys, edgetl, edgetl.runtime, edgetl.selection, edgetl.devices\n"
             "print(json.dumps({'files': [m.__file__ for m in (edgetl, edgetl.runtime, edgetl.selection)],\n"
             "                  'finders': [repr(f) for f in sys.meta_path], 'path': sys.path}))")
    found = json.loads(subprocess.run([installed / "bin" / "python", "-c", probe], cwd=tmp_path,
                                      env=installed_env(tmp_path), check=True, capture_output=True, text=True).stdout)
    assert all(Path(f).is_relative_to(installed) for f in found["files"]), found["files"]
    assert not any("editable" in f for f in found["finders"]), found["finders"]
    assert sysconfig.get_path("purelib") in found["path"]                # the dependencies come from here


def test_the_installed_wheel_runs_the_host_and_device_paths(installed, tmp_path):
    env = installed_env(tmp_path)

    def cli(*args: str) -> str:
        done = subprocess.run([installed / "bin" / args[0], *args[1:]], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(args)}: {done.stderr[-3000:]}"
        return done.stdout

    # the host: select, then finetune --backbone auto reuses the selection and its cached features
    selection = json.loads(cli("edgetl", "select", "builtin:digits", "--backbones", "efficientnet_lite0",
                               "--folds", "2", "--out", "selection", "--json"))
    assert selection["recommendation"]["backbone"] == "efficientnet_lite0"
    run = json.loads(cli("edgetl", "finetune", "builtin:digits", "--backbone", "auto", "--backbones",
                         "efficientnet_lite0", "--head", "ridge", "--out", "run", "--json"))
    assert run["backbone"] == "efficientnet_lite0" and run["cache_hit"] is True, run
    manifest = json.loads(cli("edgetl", "export", "run", "--out", "bundle", "--format", "onnx", "--json"))
    assert "onnx" in {a["name"] for a in manifest["artifacts"]}
    cli("edgetl", "data", "export", "builtin:digits", "digits")

    # the device: the same accuracy through the runtime, one prediction, the service's health
    report = json.loads(cli("edgetl-rt", "evaluate", "bundle", "digits", "--json"))
    assert report["accuracy"] >= 0.9 and report["accuracy"] == pytest.approx(run["accuracy"], abs=0.01), report
    seven = sorted((tmp_path / "digits" / "val" / "7").glob("*.png"))[0]
    predicted = json.loads(cli("edgetl-rt", "predict", "bundle", str(seven), "--json"))
    assert predicted["predictions"][0]["label"] == "7", predicted
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen([installed / "bin" / "edgetl-rt", "serve", "bundle", "--port", "0", "--json"],
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = server.stdout.readline()
            assert line.startswith("{"), (tmp_path / "serve.log").read_text()[-3000:]
            url = urlsplit(json.loads(line)["url"])
            assert request(f"{url.hostname}:{url.port}", "GET", "/v2/health/ready")[0] == 200
            server.send_signal(signal.SIGTERM)
            assert server.wait(30) == 0
        finally:
            if server.poll() is None:
                server.kill()
