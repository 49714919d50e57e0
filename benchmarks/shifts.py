"""Seeded distribution shifts of real data, and their cached frozen features (issue 28's shift benchmark).

Images: six corruptions of real photos (``noise``, ``blur``, ``brightness``, ``contrast``, ``jpeg``, ``fog``) at
three severities (1, 2, 3), from Hendrycks & Dietterich's ImageNet-C code as the ``imagecorruptions`` package
ships it, in its maintained fork ``imagecorruptions-imaug`` (``pip install "edgetl[bench]"``; the original 1.1.2
imports ``pkg_resources``, which current setuptools no longer ships). It names them ``gaussian_noise``,
``defocus_blur``, ``brightness``, ``contrast``, ``jpeg_compression`` and ``fog``; our severities 1, 2, 3 are its
1, 3 and 5 (mild, medium, its strongest). As in ImageNet-C, a photo is corrupted at the size the network sees: the
backbone's own resize and centre crop first (224 px for EfficientNet-Lite0), the corruption on that crop, then
normalisation. Every random draw of a corruption comes from ``numpy.random`` seeded with (seed, corruption,
severity), the seed being the photo's index in the feature builder, so a copy is the same on every run.

Texts: three shifts of banking77 queries (``typos``, ``casing``, ``style``) at the same three severities, from
seeded Python code (no maintained package does this without a model download): ``typos`` swaps, drops, doubles or
replaces letters in 5 / 10 / 20 % of the words; ``casing`` writes 30 / 60 / 100 % of the words in capitals (a shift
that an uncased tokenizer such as all-MiniLM-L6-v2's undoes: a control); ``style`` rewrites a query as a chatty
message (greetings, fillers and sign-offs around it, ``you`` as ``u``, no final punctuation), more of it with the
severity.

The cached features (``build``): EfficientNet-Lite0 224 px features of clothing10 train (clean, for the source
statistics) and val (clean and each corruption x severity), and all-MiniLM-L6-v2 features of banking77 train
(clean) and test (clean and each text shift x severity), each in ``OUT/<set>_<split>_<shift>_<severity>.npz``
(``clean_0`` for the clean copy) with the keys ``features`` (float32, N x D), ``labels`` (int64), ``classes``
and ``sources``. ``OUT/READY`` lists the files, their keys and the command once every file is written.

Run: python benchmarks/shifts.py [--out DIR] [--severities 3,1,2] [--only images|texts]
(DIR: $EDGETL_CACHE_DIR/shifts, else ~/.cache/edgetl/shifts)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
IMAGE_SHIFTS = ("noise", "blur", "brightness", "contrast", "jpeg", "fog")
TEXT_SHIFTS = ("typos", "casing", "style")
SEVERITIES = (1, 2, 3)
#: our name -> imagecorruptions' name; our severity -> its severity (1..5)
CORRUPTION_NAMES = {"noise": "gaussian_noise", "blur": "defocus_blur", "brightness": "brightness",
                    "contrast": "contrast", "jpeg": "jpeg_compression", "fog": "fog"}
SEVERITY_LEVELS = {1: 1, 2: 3, 3: 5}
INSTALL = 'pip install "edgetl[bench]"'
DEFAULT_OUT = Path(os.environ.get("EDGETL_CACHE_DIR", Path.home() / ".cache" / "edgetl")) / "shifts"


def _seed(*parts: object) -> int:
    """A 32-bit seed from the parts, the same on every run and machine (no ``hash()`` randomisation)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


@contextlib.contextmanager
def _numpy_seeded(seed: int):
    """imagecorruptions draws from the global ``numpy.random`` state: seed it for the call, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt_image(img, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``img`` (an RGB ``PIL.Image`` or an H x W x 3 uint8 array) corrupted by ``name`` at ``severity`` (1..3),
    as an H x W x 3 uint8 array; ``severity`` 0 returns the image unchanged."""
    if name not in CORRUPTION_NAMES:
        raise ValueError(f"unknown image shift {name!r}: one of {', '.join(IMAGE_SHIFTS)}")
    pixels = np.asarray(img, dtype=np.uint8)
    if severity == 0:
        return pixels.copy()
    if severity not in SEVERITY_LEVELS:
        raise ValueError(f"severity {severity} is not one of 0, {', '.join(map(str, SEVERITIES))}")
    try:
        from imagecorruptions import corrupt
    except ImportError as exc:
        raise SystemExit(f"the shift benchmark needs imagecorruptions: {INSTALL}") from exc
    with _numpy_seeded(_seed(seed, name, severity)):
        out = corrupt(pixels, corruption_name=CORRUPTION_NAMES[name], severity=SEVERITY_LEVELS[severity])
    return np.asarray(out, dtype=np.uint8)[: pixels.shape[0], : pixels.shape[1]]


# --- texts -----------------------------------------------------------------------------------------------------

_TYPO_RATE = {1: 0.05, 2: 0.10, 3: 0.20}
_CAPS_RATE = {1: 0.3, 2: 0.6, 3: 1.0}
_KEYS = "qwertyuiopasdfghjklzxcvbnm"
_GREETINGS = ("hi", "hey there", "hello", "good morning", "hi team", "hey")
_FILLERS = ("so basically", "quick question", "um", "just wondering", "sorry to bother", "like")
_SIGNOFFS = ("thx", "thanks a lot", "pls help", "cheers", "asap pls", "ty")


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2 or not word.isalpha():
        return word
    i = rng.randrange(len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:                                   # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == 1:                                   # drop a letter
        return word[:i] + word[i + 1:]
    if kind == 2:                                   # double a letter
        return word[:i] + word[i] + word[i:]
    return word[:i] + rng.choice(_KEYS) + word[i + 1:]     # a wrong key


def shift_text(text: str, name: str, severity: int, seed: int = 0) -> str:
    """``text`` shifted by ``name`` (``typos``, ``casing``, ``style``) at ``severity`` (1..3; 0: unchanged),
    with every random choice drawn from a generator seeded by (seed, text, name, severity)."""
    if name not in TEXT_SHIFTS:
        raise ValueError(f"unknown text shift {name!r}: one of {', '.join(TEXT_SHIFTS)}")
    if severity == 0:
        return text
    if severity not in SEVERITIES:
        raise ValueError(f"severity {severity} is not one of 0, {', '.join(map(str, SEVERITIES))}")
    rng = random.Random(_seed(seed, text, name, severity))
    words = text.split()
    if name == "typos":
        return " ".join(_typo(w, rng) if rng.random() < _TYPO_RATE[severity] else w for w in words)
    if name == "casing":
        return " ".join(w.upper() if rng.random() < _CAPS_RATE[severity] else w for w in words)
    body = " ".join("u" if w.lower() == "you" else w for w in words).rstrip("?.!").lower()
    parts = [rng.choice(_GREETINGS)] + ([rng.choice(_FILLERS)] if severity >= 2 else []) + [body]
    if severity >= 2:
        parts.append(rng.choice(_SIGNOFFS))
    if severity >= 3:
        parts.insert(1, rng.choice(_FILLERS))
        parts.append(rng.choice(_SIGNOFFS))
    return " ".join(parts)


# --- cached features -------------------------------------------------------------------------------------------

def _save(path: Path, features: np.ndarray, labels: np.ndarray, classes: list[str], sources: list[str]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=features.astype(np.float32), labels=labels.astype(np.int64),
             classes=np.array(classes), sources=np.array(sources))
    tmp.replace(path)


def _each_copy(out: Path, stem: str, jobs, labels: np.ndarray, classes: list[str], what: str,
               make: Callable[[str, int], tuple[np.ndarray, list[str]]]) -> list[Path]:
    """``OUT/STEM_SHIFT_SEVERITY.npz`` for each (shift, severity) of ``jobs``: ``make`` gives its features and
    sources; a file already there is kept (the cache)."""
    written = []
    for shift, severity in jobs:
        path = out / f"{stem}_{shift}_{severity}.npz"
        if not path.exists():
            t0 = time.perf_counter()
            features, sources = make(shift, severity)
            _save(path, features, labels, classes, sources)
            print(f"{path.name}: {len(labels)} {what} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        written.append(path)
    return written


def _image_folder(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for i, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            paths.append(p)
            labels.append(i)
    return paths, np.array(labels), classes


def image_features(out: Path, severities: tuple[int, ...], shifts: tuple[str, ...], batch: int = 32) -> list[Path]:
    """clothing10 train (clean) and val (clean, each shift x severity) through EfficientNet-Lite0 at 224 px."""
    import torch
    from PIL import Image

    from edgetl.backbones import create_backbone
    from edgetl.runtime.data.preprocess import normalize_batch, resize_and_crop

    torch.manual_seed(0)
    backbone = create_backbone("efficientnet_lite0").eval()
    config = backbone.pretrained.preprocess(224)
    written = []

    def features(crops: list[np.ndarray]) -> np.ndarray:
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(crops), batch):
                x = torch.from_numpy(normalize_batch(np.stack(crops[i:i + batch]), config))
                chunks.append(backbone(x).numpy())
        return np.concatenate(chunks)

    for split, jobs in (("train", [("clean", 0)]),
                        ("val", [("clean", 0)] + [(s, v) for v in severities for s in shifts])):
        paths, labels, classes = _image_folder(DATA / "clothing10" / split)
        crops = [np.asarray(resize_and_crop(Image.open(p).convert("RGB"), config), dtype=np.uint8) for p in paths]
        sources = [str(p.relative_to(DATA)) for p in paths]

        def photos(shift: str, severity: int, crops=crops, sources=sources):
            shifted = crops if severity == 0 else [corrupt_image(c, shift, severity, seed=i)
                                                   for i, c in enumerate(crops)]
            return features(shifted), sources

        written += _each_copy(out, f"clothing10_{split}", jobs, labels, classes, "photos", photos)
    return written


def _banking(split: str) -> tuple[list[str], np.ndarray, list[str]]:
    with (DATA / "banking77" / f"{split}.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes = sorted({r["category"] for r in rows})
    position = {c: i for i, c in enumerate(classes)}
    return [r["text"] for r in rows], np.array([position[r["category"]] for r in rows]), classes


def text_features(out: Path, severities: tuple[int, ...], shifts: tuple[str, ...], batch: int = 64) -> list[Path]:
    """banking77 train (clean) and test (clean, each shift x severity) through all-MiniLM-L6-v2."""
    import torch

    from edgetl.backbones import create_backbone

    backbone = create_backbone("minilm-l6").eval()
    preprocess = backbone.pretrained.preprocess()
    written = []

    def features(texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")
        values = np.zeros((len(texts), backbone.feature_dim), np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), batch):
                take = order[i:i + batch]
                ids = torch.from_numpy(preprocess.encode([texts[j] for j in take]))
                values[take] = backbone(ids).numpy()
        return values

    for split, jobs in (("train", [("clean", 0)]),
                        ("test", [("clean", 0)] + [(s, v) for v in severities for s in shifts])):
        texts, labels, classes = _banking(split)

        def sentences(shift: str, severity: int, texts=texts):
            shifted = texts if severity == 0 else [shift_text(t, shift, severity, seed=i) for i, t in enumerate(texts)]
            return features(shifted), shifted

        written += _each_copy(out, f"banking77_{split}", jobs, labels, classes, "texts", sentences)
    return written


def load(out: Path, dataset: str, split: str, shift: str = "clean", severity: int = 0) -> dict[str, np.ndarray]:
    """One cached file as a dict (``features``, ``labels``, ``classes``, ``sources``)."""
    with np.load(out / f"{dataset}_{split}_{shift}_{severity}.npz") as npz:
        return {k: npz[k] for k in npz.files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--severities", default="3,1,2", help="In this order (severity 3 first).")
    parser.add_argument("--only", choices=("images", "texts"), default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    severities = tuple(int(s) for s in args.severities.split(","))
    written = []
    if args.only != "texts":
        written += image_features(args.out, severities, IMAGE_SHIFTS)
    if args.only != "images":
        written += text_features(args.out, severities, TEXT_SHIFTS)
    if args.only is None and set(severities) == set(SEVERITIES):
        lines = [f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
                 "keys: features (float32 N x D), labels (int64 N), classes (str), sources (str: photo path or "
                 "the shifted text)", "files:"] + [f"  {p.name}" for p in written]
        (args.out / "READY").write_text("\n".join(lines) + "\n")
    print(f"{len(written)} feature files in {args.out}")


if __name__ == "__main__":
    main()
