"""Unknown inputs, torch-free: each scorer on seeded synthetic blobs, the threshold's share of known inputs kept, the
threshold moving with every committed head version (a new class, a rollback), ``--reject`` as a switch, ``evaluate
--unknown``'s JSON, ``cluster --rejected-only`` and the served ``ood_score`` / ``unknown`` outputs."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_folder_dataset
from PIL import Image

from edgetl.runtime.bundle.folder import Bundle
from edgetl.runtime.bundle.heads import RidgeHead
from edgetl.runtime.bundle.store import FeatureStore
from edgetl.runtime.bundle.unknown import (
    METHODS,
    PROJECTED,
    SEARCH_DIMS,
    UnknownScorer,
    UnknownSettings,
    auroc,
    fit_scorer,
    fit_unknown,
    keep_threshold,
)
from edgetl.runtime.cli import main as rt
from edgetl.runtime.errors import BundleError, ConfigError
from edgetl.runtime.learning.rollback import rollback_bundle
from edgetl.runtime.learning.settings import UpdateSettings
from edgetl.runtime.learning.update import learn_features


def _blobs(seed: int = 0, dim: int = 8, per_class: int = 60):
    """Three known Gaussian classes on a sphere-ish shell and a fourth, unknown one elsewhere."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:4] * 6.0 + 1.0
    def draw(c, n):
        return (centres[c] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    train = np.concatenate([draw(c, per_class) for c in range(3)])
    labels = np.repeat(np.arange(3), per_class)
    held_out = np.concatenate([draw(c, per_class) for c in range(3)])
    test = np.concatenate([draw(c, per_class) for c in range(3)])
    unknown = draw(3, per_class)
    return train, labels, held_out, test, unknown


def _projection(dim: int, hidden: int = 16, seed: int = 1):
    """A seeded random ReLU projection: what the host trains, for tests that need one without torch."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (hidden, dim)).astype(np.float32), np.zeros(hidden, np.float32)


@pytest.mark.parametrize("method", METHODS)
def test_every_scorer_tells_a_far_class_from_the_known_ones(method):
    train, labels, held_out, test, unknown = _blobs()
    head = RidgeHead.fit(train, labels, 3, alpha=1.0)
    settings, scorer = fit_unknown(UnknownSettings(method), train, labels, held_out, head,
                                   projection=_projection(train.shape[1]) if method in PROJECTED else None)
    known_scores = scorer.scores(test, head.logits(test))
    unknown_scores = scorer.scores(unknown, head.logits(unknown))
    assert settings.on == "val" and settings.n == len(held_out) and settings.method == method
    assert auroc(known_scores, unknown_scores) > 0.9
    assert np.mean(unknown_scores <= settings.threshold) < 0.5


def test_combined_adds_the_projected_distance_and_a_version_file_rebuilds_it_from_rows_and_projection(tmp_path):
    train, labels, held_out, test, unknown = _blobs()
    head = RidgeHead.fit(train, labels, 3, alpha=1.0)
    projection = _projection(train.shape[1])
    settings, scorer = fit_unknown(UnknownSettings("combined"), train, labels, held_out, head, projection=projection)
    assert scorer.parts == ("margin", "knn", "projected-knn") and settings.extra["parts"] == list(scorer.parts)
    # the third part is the cosine distance to the nearest training row after relu(x Wᵀ + b), standardised
    hidden = lambda x: np.maximum(x @ projection[0].T + projection[1], 0.0)  # noqa: E731
    def nearest(x):
        a, b = hidden(x), hidden(train)
        a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1.0 - (a @ b.astype(np.float16).astype(np.float32).T).max(axis=1)      # the bank is float16
    without = fit_scorer("combined", train, labels, 3, reference=(held_out, head.logits(held_out)))
    mean, spread = scorer.arrays["scale"][4:]
    expected = without.scores(test, head.logits(test)) + (nearest(test) - mean) / spread
    np.testing.assert_allclose(scorer.scores(test, head.logits(test)), expected, atol=1e-4)
    # a store version's file leaves out the banks and the projection; both come back from rows and the bundle
    scorer.save(tmp_path / "version.npz", bank=False)
    stored = np.load(tmp_path / "version.npz")
    assert not {"bank", "projected_bank", "projection_w", "projection_b"} & set(stored.files)
    reloaded = UnknownScorer.load(tmp_path / "version.npz")
    assert reloaded.needs_bank
    with pytest.raises(BundleError, match="projection"):
        reloaded.with_bank(train)
    reloaded = UnknownScorer.load(tmp_path / "version.npz").with_bank(train, projection)
    np.testing.assert_array_equal(reloaded.scores(unknown, head.logits(unknown)),
                                  scorer.scores(unknown, head.logits(unknown)))
    with pytest.raises(ConfigError, match="projection"):
        fit_unknown(UnknownSettings("projected-knn"), train, labels, held_out, head)


def test_mahalanobis_scores_are_the_textbook_distances_on_normalised_features():
    train, labels, _, test, _ = _blobs(1)
    shrinkage = 0.3
    scorer = fit_scorer("mahalanobis", train, labels, 3, shrinkage=shrinkage)
    x = train / np.linalg.norm(train, axis=1, keepdims=True)
    means = np.stack([x[labels == c].mean(axis=0) for c in range(3)])
    centred = x - means[labels]
    covariance = centred.T @ centred / (len(x) - 3)
    shrunk = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    inverse = np.linalg.inv(shrunk)
    t = test / np.linalg.norm(test, axis=1, keepdims=True)
    expected = np.min([np.einsum("ij,jk,ik->i", t - m, inverse, t - m) for m in means], axis=0)
    np.testing.assert_allclose(scorer.scores(test), expected, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method", ["mahalanobis", "relative-mahalanobis"])
def test_a_class_without_rows_leaves_the_mahalanobis_scores_those_of_the_classes_with_rows(method):
    """A head may know a class the rows lack (all its samples held out, or learned on other devices): the scores
    stay finite and equal those fitted without that class."""
    train, labels, _, test, _ = _blobs(2)
    with_empty = fit_scorer(method, train, labels, 4).scores(test)
    assert np.isfinite(with_empty).all()
    np.testing.assert_array_equal(with_empty, fit_scorer(method, train, labels, 3).scores(test))


def test_knn_is_one_minus_the_cosine_of_the_kth_neighbour():
    bank = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    scorer = fit_scorer("knn", bank, np.zeros(3, np.int64), 1, k=2)
    query = np.array([[1, 0]], np.float32)           # cosines: 1, 0, 0.707 -> the 2nd largest is 0.707
    np.testing.assert_allclose(scorer.scores(query), [1 - np.sqrt(0.5)], atol=1e-3)
    # the training rows themselves: each one's own match is skipped
    np.testing.assert_allclose(scorer.scores(bank[:1], exclude_self=True), [1 - 0.0], atol=1e-3)


def test_auroc_and_the_threshold_have_known_answers():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    scores = np.random.default_rng(0).normal(size=1000)
    for keep in (0.9, 0.95, 0.99):
        threshold = keep_threshold(scores, keep)
        assert keep <= np.mean(scores <= threshold) <= keep + 0.002
    with pytest.raises(ConfigError, match="method"):
        fit_scorer("entropy", scores[:, None])


def test_the_threshold_moves_with_a_new_class_and_comes_back_on_rollback(tiny_bundle):
    bundle = Bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    with np.load(bundle.file(bundle.manifest.learning)) as data:
        known = data["features"]
    direction = np.where(known.mean(axis=0) > np.median(known.mean(axis=0)), -1.0, 1.0)     # away from them
    far = (np.abs(known).max() * direction + rng.normal(0, 0.05, (40, known.shape[1]))).astype(np.float32)
    # version 0 (the bundle's rows), then an update teaching the far inputs as a new class
    report = learn_features(tiny_bundle, far, ["white"] * 40, [f"white-{i}" for i in range(40)])
    store = FeatureStore(tiny_bundle)
    first, second = store.version(0), store.version(report.version)
    assert first.unknown["threshold"] is not None and "unknown.npz" in second.files
    assert second.unknown["threshold"] != first.unknown["threshold"]
    assert second.unknown["method"] == first.unknown["method"] and second.unknown["keep"] == 0.95
    before = Bundle(tiny_bundle)
    scorer_1 = store.unknown_scorer(second)
    scorer_0 = store.unknown_scorer(first)
    head_0, head_1 = store.head(first), store.head(second)
    probe = far[:10]
    # unknown to version 0, known to version 1
    assert np.all(scorer_0.scores(probe, head_0.logits(probe)) > first.unknown["threshold"])
    assert np.mean(scorer_1.scores(probe, head_1.logits(probe)) <= second.unknown["threshold"]) >= 0.8
    assert before.current_head().unknown.threshold == second.unknown["threshold"]
    rolled = rollback_bundle(tiny_bundle, to=0)
    assert rolled.unknown["threshold"] == first.unknown["threshold"]
    assert Bundle(tiny_bundle).current_head().unknown.threshold == first.unknown["threshold"]


def _json(args: list[str]) -> dict:
    result = CliRunner().invoke(rt, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _odd_images(folder, n=6):
    """Inputs unlike the tiny bundle's red / green / blue squares: flat grey and black-white stripes."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = np.zeros((36, 36, 3), np.uint8)
        pixels[:, ::2] = 40 * i
        pixels[::3] = 255 - 30 * i
        paths.append(folder / f"odd-{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_reject_changes_labels_only_when_asked_and_evaluate_reports_unknowns(tiny_bundle, tmp_path):
    images = make_folder_dataset(tmp_path / "known", classes=("red", "green", "blue"), per_class=8, size=(36, 36))
    odd = _odd_images(tmp_path / "odd" / "none")
    inputs = [str(p) for p in odd] + [str(images / "red" / "3.png")]
    plain = _json(["predict", str(tiny_bundle), *inputs])["predictions"]
    rejecting = _json(["predict", str(tiny_bundle), *inputs, "--reject"])["predictions"]
    assert all(p["label"] in ("red", "green", "blue") for p in plain)
    assert any(p["unknown"] for p in plain) and not all(p["unknown"] for p in plain)
    for a, b in zip(plain, rejecting):
        assert a["unknown_score"] == b["unknown_score"] and a["top_k"] == b["top_k"]
        assert b["label"] == ("unknown" if a["unknown"] else a["label"])
    report = _json(["evaluate", str(tiny_bundle), str(images), "--unknown", str(tmp_path / "odd")])
    block = report["unknown"]
    assert {"auroc", "accepted", "threshold", "method"} <= set(block)
    assert 0.0 <= block["accepted"] <= 1.0 and block["auroc"] > 0.5 and block["n_unknown"] == len(odd)
    rejected = _json(["evaluate", str(tiny_bundle), str(images), "--reject"])
    assert rejected["accuracy_without_reject"] == report["accuracy"]
    assert rejected["accuracy"] == pytest.approx(report["accuracy"] - 0, abs=rejected["rejected"] + 1e-9)
    table = CliRunner().invoke(rt, ["evaluate", str(tiny_bundle), str(images), "--unknown", str(tmp_path / "odd")])
    assert table.exit_code == 0 and "unknown auroc" in table.output and "unknowns accepted" in table.output


def test_cluster_takes_only_the_rejected_inputs(tiny_bundle, tmp_path):
    images = make_folder_dataset(tmp_path / "mixed", classes=("red",), per_class=6, size=(36, 36))
    _odd_images(images / "odd")
    summary = _json(["cluster", str(tiny_bundle), str(images), "--k", "2", "--out", str(tmp_path / "groups"),
                     "--rejected-only"])
    everything = _json(["cluster", str(tiny_bundle), str(images), "--k", "2", "--out", str(tmp_path / "all")])
    assert summary["rejected_only"] and summary["n"] + summary["accepted_left_out"] == everything["n"] == 12
    assert 2 <= summary["n"] < 12


def test_serve_sends_ood_score_and_unknown_when_asked_by_name(tiny_bundle, tmp_path):
    from edgetl.runtime.serving.protocol import parse_infer_request
    from edgetl.runtime.serving.service import InferenceService, ServeSettings

    odd = _odd_images(tmp_path / "odd", 2)
    payload = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "parameters": {"content_type": "base64"},
                           "data": [base64.b64encode(p.read_bytes()).decode() for p in odd]}],
               "outputs": [{"name": "ood_score"}, {"name": "unknown"}, {"name": "label"}]}
    for reject in (False, True):
        service = InferenceService(tiny_bundle, ServeSettings(measure=False, reject=reject))
        try:
            meta = service.model_metadata()
            assert {"ood_score", "unknown"} <= {o["name"] for o in meta["outputs"]}
            assert meta["parameters"]["unknown_method"] in METHODS and "unknown_threshold" in meta["parameters"]
            body, _, _ = service.infer(parse_infer_request(json.dumps(payload).encode()))
            outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
            assert outputs["unknown"]["datatype"] == "BOOL" and outputs["ood_score"]["datatype"] == "FP32"
            flags, labels = outputs["unknown"]["data"], outputs["label"]["data"]
            scores = outputs["ood_score"]["data"]
            assert flags == [s > meta["parameters"]["unknown_threshold"] for s in scores]
            assert all((label == "unknown") == (reject and flag) for label, flag in zip(labels, flags))
            plain, _, _ = service.infer(parse_infer_request(json.dumps({"inputs": payload["inputs"]}).encode()))
            assert "ood_score" not in {o["name"] for o in json.loads(plain)["outputs"]}    # only when asked
        finally:
            service.close()


def test_a_store_version_from_before_scorers_gets_one_fitted_when_opened(tiny_bundle):
    bundle = Bundle(tiny_bundle)
    with np.load(bundle.file(bundle.manifest.learning)) as data:
        red = data["features"][data["labels"] == 0]
    rows = red[np.arange(30) % len(red)] * np.float32(1.01)          # more of a known class
    report = learn_features(tiny_bundle, rows, ["red"] * 30, [f"k{i}" for i in range(30)],
                            UpdateSettings(force=True))      # the guard is not what this test is about
    path = tiny_bundle / "store" / "versions" / f"{report.version:06d}" / "version.json"
    document = json.loads(path.read_text())
    expected = document.pop("unknown")["threshold"]
    del document["files"]["unknown.npz"]                  # as a 0.7 store wrote it
    path.write_text(json.dumps(document))
    state = Bundle(tiny_bundle).current_head()
    assert state.unknown is not None and state.unknown.threshold == pytest.approx(expected)


def test_a_commit_and_the_loads_after_it_read_each_segment_once(tiny_bundle, monkeypatch):
    """The commit refits the unknown scorer from the segments its transaction holds, and a version's kNN bank is
    rebuilt once per store: loading it again (serve after its own commit, or on a forced refresh) reads nothing."""
    reads = []
    real = FeatureStore._read_shared

    def counting(store, version, name):
        reads.append(name)
        return real(store, version, name)

    monkeypatch.setattr(FeatureStore, "_read_shared", counting)
    bundle = Bundle(tiny_bundle)
    with np.load(bundle.file(bundle.manifest.learning)) as data:
        known, labels = data["features"], [bundle.manifest.labels[i] for i in data["labels"]]
    rng = np.random.default_rng(4)
    new = (known + rng.normal(0, 0.01, known.shape)).astype(np.float32)
    report = learn_features(bundle, new, labels, [f"again-{i}" for i in range(len(new))])   # version 0, then 1
    segments = [name for name in reads if name.startswith("segments/")]
    assert segments and len(segments) == len(set(segments)), segments
    reads.clear()
    state = bundle.current_head()
    assert state.version == report.version and state.unknown.scorer.method in ("knn", "combined")
    assert bundle.current_head().unknown is not None and not reads
    elsewhere = Bundle(tiny_bundle)                  # another process: the bank is rebuilt from the rows, once
    loaded = elsewhere.current_head()
    first = [name for name in reads if name.startswith("segments/")]
    elsewhere.current_head()
    assert first and [name for name in reads if name.startswith("segments/")] == first
    store, probe = elsewhere.store, new[:20]
    version = store.version(report.version)
    head = store.head(version)
    refit = store.fit_unknown(version, head)[1].scores(probe, head.logits(probe))
    np.testing.assert_array_equal(state.unknown.scores(probe, head.logits(probe)), refit)
    np.testing.assert_array_equal(loaded.unknown.scores(probe, head.logits(probe)), refit)


def test_combined_searches_a_large_bank_in_its_leading_directions_and_a_version_rebuilds_them(tmp_path):
    rng = np.random.default_rng(5)
    dim, classes = 300, 4
    centres = rng.normal(0, 1, (classes, dim))
    labels = np.repeat(np.arange(classes), 1000)                  # 4,000 x 300 = 1.2 M entries: over the bound
    train = (centres[labels] + rng.normal(0, 0.5, (len(labels), dim))).astype(np.float32)
    held_out = (centres[labels[::40]] + rng.normal(0, 0.5, (100, dim))).astype(np.float32)
    head = RidgeHead.fit(train, labels, classes, alpha=1.0)
    _, scorer = fit_unknown(UnknownSettings("combined"), train, labels, held_out, head)
    basis = scorer.arrays["basis"]
    assert basis.shape == (dim, SEARCH_DIMS) and scorer.arrays["bank"].shape == (len(train), SEARCH_DIMS)
    np.testing.assert_allclose(basis.T @ basis, np.eye(SEARCH_DIMS), atol=1e-4)
    probe = (rng.normal(0, 1, (20, dim)) + centres[0]).astype(np.float32)
    # the knn part: the cosine distance to the nearest row, both sides normalised in the basis
    reduce = lambda x: _rows(_rows(x) @ basis)  # noqa: E731
    nearest = 1.0 - (reduce(probe) @ reduce(train).astype(np.float16).astype(np.float32).T).max(axis=1)
    np.testing.assert_allclose(scorer._part("knn", probe, None, False), nearest, atol=1e-5)
    scorer.save(tmp_path / "version.npz", bank=False)
    assert "basis" not in np.load(tmp_path / "version.npz").files
    again = UnknownScorer.load(tmp_path / "version.npz").with_bank(train)
    np.testing.assert_allclose(again.scores(probe, head.logits(probe)), scorer.scores(probe, head.logits(probe)),
                               rtol=1e-5, atol=1e-5)
    small = fit_unknown(UnknownSettings("combined"), train[:500], labels[:500], held_out, head)[1]
    assert "basis" not in small.arrays                              # 150,000 entries: every feature searched


def _rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)
