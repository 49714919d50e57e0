"""Unknown inputs end to end on the real EfficientNet-Lite0 digits bundle: the export sets the threshold on the val
rows and records it in the manifest, and the device tells flower photos from digits with it."""

from __future__ import annotations

import numpy as np

from edgetl.runtime.bundle.folder import Bundle
from edgetl.runtime.bundle.unknown import DEFAULT_KEEP, DEFAULT_METHOD, UnknownScorer
from edgetl.runtime.inference.evaluate import evaluate_bundle
from edgetl.runtime.inference.model import EdgeModel


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
