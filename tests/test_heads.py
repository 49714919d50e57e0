import numpy as np
import pytest
from conftest import gaussian_blobs

from edgetl.runtime.bundle.heads import LinearHead, MLPHead, RidgeHead, RidgeStatistics, load_head
from edgetl.runtime.errors import BundleError, ConfigError


def _blobs(n=300, d=16, k=3, seed=0):
    return gaussian_blobs(n, d, k, seed)


def test_ridge_matches_the_batch_closed_form():
    x, y = _blobs()
    head = RidgeHead.fit(x, y, 3, alpha=2.0)
    xd = x.astype(np.float64)
    targets = np.eye(3)[y]
    xc, yc = xd - xd.mean(0), targets - targets.mean(0)
    weight = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(16), xc.T @ yc)
    np.testing.assert_allclose(head.weight, weight.T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.bias, targets.mean(0) - xd.mean(0) @ weight, rtol=1e-5, atol=1e-6)


def test_ridge_statistics_do_not_depend_on_batch_order():
    x, y = _blobs()
    whole = RidgeStatistics.empty(16, 3)
    whole.add(x, y)
    pieces = RidgeStatistics.empty(16, 3)
    order = np.random.default_rng(3).permutation(len(y))
    for chunk in np.array_split(order, 7):
        pieces.add(x[chunk], y[chunk])
    a, b = RidgeHead.solve(whole, 1.0), RidgeHead.solve(pieces, 1.0)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-6, atol=1e-9)


def test_ridge_selects_alpha_on_validation_and_classifies():
    x, y = _blobs(seed=1)
    head = RidgeHead.fit(x[:200], y[:200], 3, x[200:], y[200:])
    assert np.mean(head.logits(x[200:]).argmax(1) == y[200:]) > 0.9


@pytest.mark.parametrize("head", [
    LinearHead(np.ones((3, 4), np.float32), np.zeros(3, np.float32)),
    MLPHead(np.ones((5, 4), np.float32), np.zeros(5, np.float32), np.ones((3, 5), np.float32), np.ones(3, np.float32)),
    RidgeHead.fit(*_blobs(60, 4, 3), 3, alpha=1.0),
])
def test_heads_round_trip_through_npz(tmp_path, head):
    path = tmp_path / "head.npz"
    head.save(path)
    loaded = load_head(path)
    assert type(loaded) is type(head)
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    np.testing.assert_allclose(loaded.logits(x), head.logits(x), rtol=1e-6)


def test_wrong_feature_shape_is_refused():
    head = LinearHead(np.ones((3, 4), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ConfigError, match=r"\(N, 4\)"):
        head.logits(np.ones((2, 5)))


def test_pickled_or_unknown_head_files_are_refused(tmp_path):
    pickled = tmp_path / "evil.npz"
    np.savez(pickled, kind=np.array("linear"), weight=np.array([object()], dtype=object), bias=np.zeros(1))
    with pytest.raises(BundleError):
        load_head(pickled)
    unknown = tmp_path / "unknown.npz"
    np.savez(unknown, kind=np.array("forest"))
    with pytest.raises(BundleError, match="forest"):
        load_head(unknown)


@pytest.mark.parametrize("head", [
    LinearHead(*[np.random.default_rng(1).normal(size=s).astype(np.float32) for s in ((3, 4), (3,))]),
    MLPHead(*[np.random.default_rng(2).normal(size=s).astype(np.float32) for s in ((5, 4), (5,), (3, 5), (3,))]),
    RidgeHead.fit(*_blobs(60, 4, 3), 3, alpha=1.0),
])
def test_the_torch_form_of_a_head_computes_its_logits_and_converts_back(head):
    """One torch mirror of the numpy heads: what exports and what trains have the same layers."""
    import torch

    from edgetl.heads import _numpy_head, torch_head

    module = torch_head(head)
    x = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    with torch.inference_mode():
        logits = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, head.logits(x), rtol=1e-5, atol=1e-6)
    back = _numpy_head("mlp" if isinstance(head, MLPHead) else "linear", module)
    assert type(back) is (MLPHead if isinstance(head, MLPHead) else LinearHead)
    for name, array in back.arrays().items():
        np.testing.assert_array_equal(array, head.arrays()[name])


def test_heads_without_a_torch_form_are_refused():
    from edgetl.heads import torch_head
    from edgetl.runtime.bundle.heads import NCMHead

    with pytest.raises(ConfigError, match="no torch form for head kind 'ncm'"):
        torch_head(NCMHead(np.ones((3, 4)), np.ones(3)))
