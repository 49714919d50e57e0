"""Incremental heads, numpy only: exact streaming ridge, NCM, SGD with replay, the partial_fit shape."""

import numpy as np
import pytest
from conftest import gaussian_blobs, relative_error

from edgetl.runtime.bundle.heads import NCMHead, RidgeHead, load_head
from edgetl.runtime.errors import ConfigError
from edgetl.runtime.learning import NCMLearner, RidgeLearner, SGDLearner


def _blobs(n=600, d=32, classes=6, seed=0):
    return gaussian_blobs(n, d, classes, seed)


def test_streaming_ridge_equals_batch_ridge_whatever_the_order():
    x, y = _blobs()
    names = np.array([f"c{i}" for i in y])
    order = sorted(set(names), key=lambda c: np.flatnonzero(names == c)[0])  # first-appearance order
    batch = RidgeHead.fit(x, np.array([order.index(n) for n in names]), len(order), alpha=3.0)
    for seed in range(3):
        chunks = np.array_split(np.random.default_rng(seed).permutation(len(y)), 9)
        learner = RidgeLearner(x.shape[1], alpha=3.0)
        for chunk in chunks:                        # classes appear chunk by chunk, in random order
            learner.partial_fit(x[chunk], names[chunk])
        head = learner.head
        perm = [learner.classes.index(c) for c in order]
        assert relative_error(head.weight[perm], batch.weight) < 1e-6
        assert relative_error(head.bias[perm], batch.bias) < 1e-6


def test_partial_fit_shape_like_scikit_learn():
    x, y = _blobs(classes=3)
    learner = RidgeLearner(x.shape[1]).partial_fit(x[:100], [str(v) for v in y[:100]], classes=["0", "1", "2", "3"])
    assert learner.classes == ["0", "1", "2", "3"]            # declared classes come first, even unseen ones
    learner.partial_fit(x[100:], y[100:])                     # integer labels index the classes
    assert np.mean(np.array(learner.predict(x)) == np.array([str(v) for v in y])) > 0.95
    with pytest.raises(ConfigError, match="label indices must lie"):
        learner.partial_fit(x[:2], [7, 0])
    with pytest.raises(ConfigError, match="features must have shape"):
        learner.partial_fit(x[:2, :5], ["0", "1"])
    with pytest.raises(ConfigError, match="NaN"):
        learner.partial_fit(np.full((1, x.shape[1]), np.nan), ["0"])


def test_alpha_is_chosen_on_held_out_samples_and_kept_until_the_store_grows():
    x, y = _blobs(n=800)
    learner = RidgeLearner(x.shape[1], classes=[str(i) for i in range(6)]).partial_fit(x[:400], y[:400])
    first = learner.choose_alpha(x[600:], y[600:])
    learner.partial_fit(x[400:450], y[400:450])
    assert learner.choose_alpha(x[600:], y[600:]) == first          # grew by 12%: no new search
    assert learner.alpha_selected_at == 400
    learner.partial_fit(x[450:600], y[450:600])
    learner.choose_alpha(x[600:], y[600:])
    assert learner.alpha_selected_at == 600                           # grew by 50%: searched again


def test_ncm_streaming_equals_batch_and_saves(tmp_path):
    x, y = _blobs(classes=4)
    streamed = NCMLearner(x.shape[1])
    for chunk in np.array_split(np.arange(len(y)), 5):
        streamed.partial_fit(x[chunk], [str(v) for v in y[chunk]])
    batch = NCMLearner(x.shape[1]).partial_fit(x, [str(v) for v in y])
    perm = [batch.classes.index(c) for c in streamed.classes]
    np.testing.assert_allclose(streamed.sums, batch.sums[perm], rtol=1e-10)
    head = streamed.head
    head.save(tmp_path / "ncm.npz")
    loaded = load_head(tmp_path / "ncm.npz")
    assert isinstance(loaded, NCMHead)
    np.testing.assert_allclose(loaded.logits(x), head.logits(x), rtol=1e-6)
    assert np.mean(np.argmax(head.logits(x), 1) == np.array([streamed.classes.index(str(v)) for v in y])) > 0.95


def test_sgd_with_replay_learns_new_classes_without_forgetting_old_ones():
    x, y = _blobs(n=900, classes=6, seed=3)
    old, new = y < 3, y >= 3
    base = RidgeLearner(x.shape[1], classes=["0", "1", "2"], alpha=1.0).partial_fit(x[old], y[old]).head
    sgd = SGDLearner(x.shape[1], ["0", "1", "2"], base.weight, base.bias)
    sgd.partial_fit(x[new], [str(v) for v in y[new]], replay=(x[old], y[old]))
    predicted = np.array(sgd.predict(x))
    assert np.mean(predicted[old] == y[old].astype(str)) > 0.95
    assert np.mean(predicted[new] == y[new].astype(str)) > 0.95
    forgetful = SGDLearner(x.shape[1], ["0", "1", "2"], base.weight, base.bias)
    forgetful.partial_fit(x[new], [str(v) for v in y[new]])            # no replay: old classes fade
    assert np.mean(np.array(forgetful.predict(x))[old] == y[old].astype(str)) < \
        np.mean(predicted[old] == y[old].astype(str))
