"""Teaching in milliseconds, torch-free: the ridge system kept solved under additions, store integrity, 0.4 stores
continued, ``tune`` and serve's background alpha search (on the committed tiny bundle)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import make_folder_dataset, relative_error, unbounded_updates

from edgetl.runtime.bundle.heads import RidgeHead, RidgeStatistics
from edgetl.runtime.bundle.store import FeatureStore
from edgetl.runtime.errors import BundleError
from edgetl.runtime.learning import RidgeLearner, UpdateSettings, learn_features, rollback_bundle, tune_alpha
from edgetl.runtime.learning.ridge_system import RidgeSystem

UNBOUNDED = unbounded_updates()



def test_ridge_system_dense_and_factored_equal_the_batch_fit_through_rebases_and_new_classes():
    rng = np.random.default_rng(0)
    dim, n = 40, 900
    centres = rng.normal(0, 3, (7, dim))
    y = rng.integers(0, 7, n)
    x = centres[y] + rng.normal(0, 1, (n, dim))
    batch = RidgeStatistics.empty(dim, 7)
    batch.add(x, y)
    expected = RidgeHead.solve(batch, 0.7)
    for factored in (False, True):
        system = RidgeSystem.from_statistics(RidgeStatistics.empty(dim, 2), max_columns=30)
        if factored:
            system.factorize()
        start = 0
        while start < n:
            k = int(rng.integers(1, 40))
            rows = slice(start, start + k)
            system.grow(int(y[:start + k].max()) + 1)         # classes appear as their first sample does
            system.add(x[rows], np.eye(len(system.mean_y))[y[rows]])
            start += k
        head = system.head(0.7)
        assert relative_error(head.weight, expected.weight) < 1e-9 and relative_error(head.bias, expected.bias) < 1e-9
        if factored:
            assert system.rebases > 3 and system.residual < 1e-12     # column budget exceeded, then rebased


def test_a_factored_solve_whose_residual_drifts_is_redone_on_a_fresh_decomposition():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, (200, 12)), rng.integers(0, 3, 200)
    learner = RidgeLearner(12, ["a", "b", "c"], alpha=1.0, keep_factor=True)
    learner.partial_fit(x[:100], y[:100])
    assert learner.head is not None          # solving factorises the system
    learner.partial_fit(x[100:], y[100:])
    learner.system._capacitance += 1e-3          # rounding that has built up, exaggerated
    rebases = learner.system.rebases
    head = learner.head
    assert learner.system.rebases == rebases + 1 and learner.system.residual < 1e-12
    assert relative_error(head.weight, RidgeHead.fit(x, y, 3, alpha=1.0).weight) < 1e-9


def test_a_tampered_segment_is_refused_with_a_rollback_hint(tiny_bundle):
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (4, 16)).astype(np.float32)
    learn_features(tiny_bundle, x, ["red", "green", "blue", "red"], [rng.bytes(8).hex() for _ in x],
                   UNBOUNDED)
    store = FeatureStore(tiny_bundle)
    version = store.version()
    assert set(version.shared) == {f"segments/{n:06d}.npz" for n in version.segments}
    path = store.root / "segments" / f"{version.segments[-1]:06d}.npz"
    data = bytearray(path.read_bytes())
    data[-40] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256.*roll back"):
        FeatureStore(tiny_bundle).state(version)


def _as_04(store: FeatureStore) -> None:
    """Rewrite the current version as edgetl 0.4 wrote it: the full statistics in state.npz, schema store/1."""
    version = store.version()
    folder = store.root / "versions" / f"{version.version:06d}"
    state = store.state(version)
    r = state.ridge
    with open(folder / "state.npz", "wb") as handle:
        np.savez(handle, gram=r.gram, cross=r.cross, feature_sum=r.feature_sum, target_sum=r.target_sum,
                 count=np.array(r.count), ncm_sums=state.ncm_sums, ncm_counts=state.ncm_counts,
                 alpha=np.array(state.alpha), alpha_selected_at=np.array(state.alpha_selected_at))
    document = json.loads((folder / "version.json").read_text())
    for key in ("residual", "alpha_selected_at"):
        document.pop(key)
    document["schema"] = "edgetl.store/1"
    document["files"]["state.npz"] = hashlib.sha256((folder / "state.npz").read_bytes()).hexdigest()
    (folder / "version.json").write_text(json.dumps(document))


def test_a_store_written_by_0_4_continues_and_rolls_back(tiny_bundle):
    bundle = tiny_bundle
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (6, 16)).astype(np.float32)
    learn_features(bundle, x, ["red", "blue", "new", "red", "new", "green"], [rng.bytes(8).hex() for _ in x],
                   UNBOUNDED)
    store = FeatureStore(bundle)
    _as_04(store)
    legacy = store.version()
    before = store.state(legacy)
    assert legacy.schema == "edgetl.store/1" and "state.npz" in legacy.files
    all_train = UpdateSettings(max_accuracy_drop=100.0, holdout_fraction=0.0)
    learn_features(bundle, x + 1, ["red"] * 6, [rng.bytes(8).hex() for _ in x], all_train)
    after = store.state(store.version())
    assert store.version().schema == "edgetl.store/2"
    assert after.ridge.count == before.ridge.count + 6
    np.testing.assert_allclose(after.ridge.feature_sum, before.ridge.feature_sum + (x + 1).astype(np.float64).sum(0),
                               rtol=1e-9)
    np.testing.assert_allclose(after.ncm_counts.sum(), before.ncm_counts.sum() + 6)
    rolled = rollback_bundle(bundle, to=legacy.version)
    back = store.state(rolled)
    np.testing.assert_allclose(back.ridge.gram, before.ridge.gram, rtol=1e-9, atol=1e-9)
    assert back.ridge.count == before.ridge.count and back.alpha == before.alpha


def test_serve_searches_alpha_in_the_background_when_an_update_leaves_it_due(tiny_bundle, tmp_path):
    from edgetl.runtime.serving.protocol import BYTES, InferRequest, Tensor
    from edgetl.runtime.serving.service import InferenceService, ServeSettings

    copy = tiny_bundle
    fresh = make_folder_dataset(tmp_path / "more", classes=("red", "green", "blue"), per_class=14, size=(36, 36))
    images = [p for p in sorted(fresh.rglob("*.png")) if int(p.stem) >= 10]    # 0-9 of red are the bundle's own
    service = InferenceService(copy, ServeSettings(name="tiny"))
    try:
        request = InferRequest(None, {"image": Tensor("image", BYTES, [len(images)], [p.read_bytes() for p in images]),
                                      "label": Tensor("label", BYTES, [len(images)],
                                                      [p.parent.name.encode() for p in images])},
                               None, False, {"holdout": 0.0})
        report = service.update(request)
        assert report["alpha_due"] and not report["alpha_searched"]     # 30 -> 30 + few: due, too small to search
        service._background.join(timeout=60)
        store = FeatureStore(copy)
        current = store.version()
        assert current.action == "tune" and current.parent == report["version"]
        assert current.alpha_selected_at == current.n_train and service.live.state.version == current.version
    finally:
        service.close()


def test_tune_alpha_commits_a_tune_version_with_the_searched_alpha_also_on_a_0_4_store(tiny_bundle):
    bundle = tiny_bundle
    rng = np.random.default_rng(8)
    x = rng.normal(0, 1, (6, 16)).astype(np.float32)
    learn_features(bundle, x, ["red", "green", "blue"] * 2, [rng.bytes(8).hex() for _ in x], UNBOUNDED)
    _as_04(FeatureStore(bundle))
    before = FeatureStore(bundle).state(FeatureStore(bundle).version())
    report = tune_alpha(bundle)
    store = FeatureStore(bundle)
    version = store.version()
    assert version.action == "tune" and version.alpha == report["alpha"] and report["holdout_n"] > 0
    assert isinstance(store.head(version), RidgeHead) and version.schema == "edgetl.store/2"
    after = store.state(version)
    assert after.ridge.count == before.ridge.count and after.alpha_selected_at == after.ridge.count
    np.testing.assert_allclose(after.ridge.gram, before.ridge.gram, rtol=1e-9, atol=1e-9)
