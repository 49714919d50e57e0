"""Shared fixtures: real weights, real images, one digits run and bundle per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FLOWERS = SHARED_DATA / "flowers3"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Keep the feature cache of the test session out of the user's home."""
    previous = os.environ.get("EDGETL_CACHE_DIR")
    os.environ["EDGETL_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))
    yield
    if previous is None:
        os.environ.pop("EDGETL_CACHE_DIR", None)
    else:
        os.environ["EDGETL_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def flowers_dir() -> Path:
    if not FLOWERS.is_dir():
        pytest.skip(f"real test photos not found at {FLOWERS} (../shared/data beside the repository)")
    return FLOWERS


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A real EfficientNet-Lite0 run on builtin:digits (64 px, linear head)."""
    from edgetl.finetune import FinetuneConfig, finetune

    out = tmp_path_factory.mktemp("digits") / "run"
    return finetune("builtin:digits", out, FinetuneConfig())


@pytest.fixture(scope="session")
def digits_bundle(digits_run, tmp_path_factory):
    from edgetl.exporters.bundle import export_run

    out = tmp_path_factory.mktemp("digits-bundle") / "bundle"
    return export_run(digits_run.run_dir, out)


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """builtin:digits written as an image folder, as a device would receive it."""
    from edgetl.data_export import export_image_folder

    out = tmp_path_factory.mktemp("digits-folder") / "digits"
    export_image_folder("builtin:digits", out)
    return out


def write_image(path: Path, size=(32, 24), color=(200, 30, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path, format=fmt)
    return path


def make_folder_dataset(root: Path, classes=("a", "b"), per_class=4, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for c_index, name in enumerate(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c_index % 3] = 255
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root
