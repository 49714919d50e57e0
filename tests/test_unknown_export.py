"""Unknown inputs end to end on the real EfficientNet-Lite0 digits bundle: the export sets the threshold on the val
rows and records it in the manifest, the device tells flower photos from digits with it, and its updates keep using
the projection the export trained."""

from __future__ import annotations

import shutil

import numpy as np

from edgetl.runtime.bundle.folder import Bundle
from edgetl.runtime.bundle.store import FeatureStore
from edgetl.runtime.bundle.unknown import DEFAULT_KEEP, DEFAULT_METHOD, UnknownScorer, UnknownSettings, fit_unknown
from edgetl.runtime.inference.evaluate import evaluate_bundle
from edgetl.runtime.inference.model import EdgeModel
from edgetl.runtime.learning.update import learn_features
from edgetl.unknown_projection import HIDDEN


def test_the_export_threshold_keeps_the_stated_share_and_flowers_are_unknown_to_digits(digits_bundle, flowers_dir):
    bundle = Bundle(digits_bundle.bundle)
    block = bundle.manifest.unknown
    assert block["method"] == DEFAULT_METHOD and block["keep"] == DEFAULT_KEEP and block["on"] == "val"
    with np.load(bundle.file(bundle.manifest.learning)) as data:
        held_out = data["features"][data["holdout"]]
    assert block["n"] == len(held_out)
    scorer = UnknownScorer.load(bundle.file(block))
    scores = scorer.scores(held_out, bundle.exported_head.logits(held_out))
    kept = np.mean(scores <= block["threshold"])
    assert DEFAULT_KEEP <= kept <= DEFAULT_KEEP + 1.0 / len(held_out) + 1e-9
    with EdgeModel(bundle, artifact="onnx", measure=False) as model:
        report = evaluate_bundle(model, "builtin:digits", unknown=str(flowers_dir))
        predictions = model.predict([str(p) for p in sorted(flowers_dir.rglob("*.jpg"))[:3]], reject=True)
    assert report["unknown"]["auroc"] >= 0.98 and report["unknown"]["accepted"] <= 0.1
    assert report["unknown"]["threshold"] == block["threshold"] and report["unknown"]["kept"] >= 0.85
    assert all(p.unknown_score is not None for p in predictions)
    assert [p.label == "unknown" for p in predictions] == [p.unknown for p in predictions]


def test_the_exported_projection_serves_every_store_version_without_being_stored(digits_bundle, tmp_path):
    """The host trains the projection once; a device update refits the scorer with it (new class included) while
    the version's own file holds neither it nor the banks."""
    copy = tmp_path / "bundle"
    shutil.copytree(digits_bundle.bundle, copy, ignore=shutil.ignore_patterns("store", "timings", "cache"))
    exported = Bundle(copy)
    block = exported.manifest.unknown
    assert block["parts"] == ["margin", "knn", "projected-knn"]
    shipped = np.load(exported.file(block))
    assert shipped["projection_w"].shape == (HIDDEN, exported.feature_dim)
    with np.load(exported.file(exported.manifest.learning)) as data:
        features = data["features"]
    rng = np.random.default_rng(0)
    new = (features[rng.choice(len(features), 30, replace=False)][:, ::-1] * 1.5).astype(np.float32)  # a new class
    report = learn_features(copy, new, ["reversed"] * 30, [f"reversed-{i}" for i in range(30)])
    store = FeatureStore(copy)
    version = store.version(report.version)
    assert version.unknown["parts"] == ["margin", "knn", "projected-knn"]
    assert not {"projection_w", "projection_b", "bank", "projected_bank"} & set(np.load(store._verified(
        version, "unknown.npz")).files)
    state = Bundle(copy).current_head()
    train, train_labels, held_out = store.unknown_rows(version, exported.feature_dim)
    settings, fresh = fit_unknown(UnknownSettings(), train, train_labels, held_out, state.head,
                                  (shipped["projection_w"], shipped["projection_b"]))
    probe = np.concatenate([features[:20], new[:10]])
    np.testing.assert_allclose(state.unknown.scorer.scores(probe, state.head.logits(probe)),
                               fresh.scores(probe, state.head.logits(probe)), rtol=1e-6, atol=1e-6)
    assert state.unknown.settings.threshold == settings.threshold
