"""``edgetl export --unknown-method auto``: the score chosen by leave-classes-out on the shipped rows alone, recorded
in the manifest block with every candidate's AUROC, and refused or fallen back from by name."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.exporters.learning_data import LEARNING_FILE, write_unknown
from edgetl.runtime.bundle.heads import RidgeHead
from edgetl.runtime.bundle.unknown import METHODS, UnknownScorer
from edgetl.runtime.errors import ConfigError
from edgetl.unknown_choice import CannotChoose, candidates, choose, set_aside


def _staging(tmp_path, classes: int = 5, dim: int = 12, per_class: int = 30):
    """Learning data of ``classes`` seeded Gaussian classes: training rows and held-out rows, as an export ships."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (classes, dim))
    labels = np.tile(np.repeat(np.arange(classes), per_class), 2)
    features = (centres[labels] + rng.normal(0, 1, (len(labels), dim))).astype(np.float32)
    holdout = np.repeat([False, True], classes * per_class)
    (tmp_path / "learning").mkdir(parents=True)
    np.savez(tmp_path / LEARNING_FILE, features=features, labels=labels, holdout=holdout)
    return tmp_path, RidgeHead.fit(features[~holdout], labels[~holdout], classes, alpha=1.0), features, labels, holdout


def test_auto_records_the_choice_and_every_candidate_and_keeps_the_stated_share(tmp_path):
    staging, head, features, labels, holdout = _staging(tmp_path)
    block = write_unknown(staging, head, "auto", 0.9)
    assert block["chosen_by"] == "leave-classes-out" and block["method"] in METHODS
    labels_tried = {c.label for c in candidates()}
    assert set(block["candidates"]) == labels_tried
    best = max(block["candidates"], key=block["candidates"].get)
    assert best.split("@")[0] == block["method"]
    if "@" in best:
        assert block["shrinkage"] == float(best.split("@")[1])
    scorer = UnknownScorer.load(staging / block["file"])
    scores = scorer.scores(features[holdout], head.logits(features[holdout]))
    assert 0.9 <= np.mean(scores <= block["threshold"]) <= 0.9 + 1.0 / holdout.sum() + 1e-9
    # the same rows give the same choice (seeded folds, seeded projection)
    again, _, _, _, _ = _staging(tmp_path / "again")
    assert write_unknown(again, head, "auto", 0.9)["candidates"] == block["candidates"]


def test_auto_needs_three_classes_and_falls_back_to_the_default_by_name(tmp_path):
    staging, head, *_ = _staging(tmp_path, classes=2)
    said = []
    block = write_unknown(staging, head, "auto", 0.95, log=said.append)
    assert block["method"] == "combined" and "chosen_by" not in block
    assert any("at least three known classes, the run has 2" in line for line in said)
    with pytest.raises(CannotChoose, match="three"):
        choose(np.zeros((4, 3)), np.array([0, 0, 1, 1]), np.zeros((2, 3)), np.array([0, 1]), "ridge", 0.95)
    with pytest.raises(ConfigError, match="unknown method"):
        write_unknown(staging, head, "guess", 0.95)


def test_a_fold_always_leaves_two_classes_known():
    assert [set_aside(n) for n in (3, 4, 10, 11, 60, 77)] == [1, 2, 2, 2, 12, 15]


def test_auto_without_held_out_rows_cannot_choose():
    rng = np.random.default_rng(1)
    with pytest.raises(CannotChoose, match="held-out rows"):
        choose(rng.normal(size=(9, 3)), np.arange(9) % 3, np.zeros((0, 3)), np.zeros(0, np.int64), "ridge", 0.95)
