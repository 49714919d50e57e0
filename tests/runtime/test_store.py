"""The feature store's transactions: SIGKILL at random moments, concurrent readers and writers,
the accuracy guard, eviction, rollback and damaged files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edgetl.runtime import EdgeModel
from edgetl.runtime.bundle.store import FeatureStore, StoreBusyError
from edgetl.runtime.errors import BundleError, UpdateRejectedError
from edgetl.runtime.learning import UpdateSettings, learn_features, rollback_bundle

DIM = 16   # the tiny test backbone's feature size


@pytest.fixture
def bundle(tiny_bundle):
    return tiny_bundle


CENTRES = np.random.default_rng(0).normal(0, 3, (3, DIM))


def _batch(rng, n=6, names=("k0", "k1", "k2")):
    """Features, labels and keys, all drawn from ``rng``: the keys decide which samples are held out."""
    y = rng.integers(0, len(names), n)
    features = (CENTRES[y % 3] + rng.normal(0, 1, (n, DIM))).astype(np.float32)
    return features, [names[v] for v in y], [rng.bytes(16).hex() for _ in y]


LOOSE = UpdateSettings(max_accuracy_drop=100.0)


def _learned(bundle, seed: int, rounds: int, n: int):
    """``rounds`` accepted updates of ``n`` samples; returns the generator (to go on with) and the store."""
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        learn_features(bundle, *_batch(rng, n=n), LOOSE)
    return rng, FeatureStore(bundle)


def test_versions_history_and_rollback(bundle):
    rng = np.random.default_rng(0)
    first = learn_features(bundle, *_batch(rng), LOOSE)
    assert first["version"] == 1 and first["parent"] == 0 and sorted(first["new_classes"]) == ["k0", "k1", "k2"]
    for _ in range(6):
        last = learn_features(bundle, *_batch(rng), LOOSE)
    store = FeatureStore(bundle)
    assert last["version"] == 7 and [v.version for v in store.history()] == [3, 4, 5, 6, 7]   # 5 kept
    rolled = rollback_bundle(bundle, to=4)
    assert rolled.version == 8 and rolled.action == "rollback" and rolled.segments == store.version(4).segments
    with EdgeModel(bundle) as model:
        assert model.head_version == 8
        np.testing.assert_array_equal(model.head.weight, store.head(store.version(4)).weight)
    with pytest.raises(BundleError, match="no longer exists"):
        rollback_bundle(bundle, to=1)


def test_ridge_state_after_updates_equals_a_batch_fit_on_everything_stored(bundle):
    from edgetl.runtime.bundle.heads import RidgeHead, RidgeStatistics

    _, store = _learned(bundle, seed=1, rounds=5, n=12)
    version = store.version()
    samples = store.samples(version, DIM)
    train = samples.select(~samples.holdout)
    state = store.state(version)
    batch = RidgeStatistics.empty(DIM, len(version.classes))
    batch.add(train.features, train.labels)
    assert state.ridge.count == len(train)        # every stored training row counted exactly once
    # version 0's statistics are the bundle's shipped training rows (the host learned from no more)
    np.testing.assert_allclose(state.ridge.gram, batch.gram, rtol=1e-6)
    expected = RidgeHead.solve(batch, version.alpha)
    head = store.head(version)
    assert np.max(np.abs(head.weight - expected.weight)) / np.max(np.abs(expected.weight)) < 1e-6


KILLED_UPDATER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edgetl.runtime.learning import UpdateSettings, learn_features

    bundle, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 3, (3, 16))
    while True:
        y = rng.integers(0, 3, 6)
        x = centres[y] + rng.normal(0, 1, (6, 16))
        keys = [rng.bytes(16).hex() for _ in y]
        # no eviction here (a returned sample must be a stored row); the kill-point test below evicts
        report = learn_features(bundle, x, ["k%d" % v for v in y], keys,
                                UpdateSettings(max_accuracy_drop=100.0, max_per_class=10 ** 6,
                                               max_holdout_per_class=10 ** 6))
        print(json.dumps({"version": report["version"], "keys": keys}), flush=True)
""")


def test_sigkill_at_random_moments_never_loses_a_returned_update(bundle, child_python):
    rng = np.random.default_rng(2024)
    returned: set[str] = set()
    last_version = -1
    for attempt in range(25):
        child = subprocess.Popen([sys.executable, "-c", KILLED_UPDATER, str(bundle), str(attempt)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(float(rng.uniform(0.3, 1.2)))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, err
        lines = [json.loads(line) for line in out.splitlines() if line.endswith("}")]
        for line in lines:
            returned.update(line["keys"])
            last_version = max(last_version, line["version"])
        store = FeatureStore(bundle)
        version = store.version()                       # loads, and its files pass their sha256
        assert version.version >= last_version
        samples = store.samples(version, DIM)
        assert returned <= set(samples.keys.tolist()), "a sample whose update returned was lost"
        assert store.head(version).num_classes == len(version.classes)
        assert store.state(version).ridge.count == int((~samples.holdout).sum())
    assert len(returned) > 0 and last_version >= 5
    report = learn_features(bundle, *_batch(np.random.default_rng(9)), LOOSE)   # the store still works
    assert report["version"] > last_version
    leftovers = [p for p in FeatureStore(bundle).root.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


KILL_POINT_UPDATER = textwrap.dedent("""
    import json, os, pathlib, shutil, signal, sys
    import numpy as np
    from edgetl.runtime.learning import UpdateSettings, learn_features

    bundle, kind, when, nth, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    seen = [0]

    def killing(original, name_of):
        def call(*args, **kwargs):
            hit = kind in name_of(*args)
            if hit:
                seen[0] += 1
            if hit and seen[0] == nth and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if hit and seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call

    os.replace = killing(os.replace, lambda src, dst, *a: str(dst) + " replace")
    shutil.rmtree = killing(shutil.rmtree, lambda path, *a: str(path) + " rmtree")
    pathlib.Path.unlink = killing(pathlib.Path.unlink, lambda self, *a: str(self) + " unlink")
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(0, 3, (3, 16))
    settings = UpdateSettings(max_accuracy_drop=100.0, max_per_class=12, max_holdout_per_class=3)
    for i in range(60):
        n = 6 if i % 4 == 0 else 1            # one-sample updates fill a size tier: compaction
        y = rng.integers(0, 3, n)
        x = centres[y] + rng.normal(0, 1, (n, 16))
        keys = [rng.bytes(16).hex() for _ in y]
        print(json.dumps({"attempt": keys}), flush=True)
        report = learn_features(bundle, x, ["k%d" % v for v in y], keys, settings)
        print(json.dumps({"returned": keys, "n_train_new": report["n_train_new"]}), flush=True)
""")

# Every step of the commit path, killed just before and just after it: a new segment, a residual (written by
# eviction), the version folder's rename, CURRENT's, and the deletions of pruning and compaction.
KILL_POINTS = [("segments", 3), ("residuals", 1), ("versions", 4), ("CURRENT", 5), ("rmtree", 2), ("unlink", 3)]


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_at_every_step_of_the_commit_path_loses_nothing_and_counts_nothing_twice(bundle, when,
                                                                                         child_python):
    learn_features(bundle, *_batch(np.random.default_rng(10)), LOOSE)      # versions 0 and 1
    for seed, (kind, nth) in enumerate(KILL_POINTS):
        before = FeatureStore(bundle)
        counted = before.state(before.version(), DIM).ridge.count
        child = subprocess.run([sys.executable, "-c", KILL_POINT_UPDATER, str(bundle), kind, when, str(nth),
                                str(seed)],
                               capture_output=True, text=True, timeout=300)
        assert child.returncode == -signal.SIGKILL, f"{kind} #{nth} was never reached: {child.stderr[-500:]}"
        lines = [json.loads(line) for line in child.stdout.splitlines()]
        returned = sum(line["n_train_new"] for line in lines if "returned" in line)
        in_flight = lines[-1]["attempt"] if "attempt" in lines[-1] else []
        store = FeatureStore(bundle)
        version = store.version()                                  # loads; its files pass their sha256
        state = store.state(version, DIM)
        # every returned sample is counted once; the one in flight either committed (killed after the
        # commit point, while pruning) or left nothing
        assert state.ridge.count - (counted + returned) in range(0, len(in_flight) + 1), (kind, when)
        assert state.ridge.count == int(state.ncm_counts.sum())
        samples = store.samples(version, DIM)
        assert len(set(samples.keys.tolist())) == len(samples)            # no row stored twice
        assert store.head(version).num_classes == len(version.classes)
    report = learn_features(bundle, *_batch(np.random.default_rng(9)), LOOSE)   # the store still works
    assert report["committed"]
    assert [p for p in FeatureStore(bundle).root.rglob("*") if p.name.startswith(".")] == []


def test_second_writer_waits_or_fails_clearly(bundle, child_python):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from edgetl.runtime.bundle.store import FeatureStore
        with FeatureStore({str(bundle)!r}).locked():
            print("locked", flush=True)
            time.sleep(2.0)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    rng = np.random.default_rng(3)
    with pytest.raises(StoreBusyError, match=f"held by pid {holder.pid}"):
        learn_features(bundle, *_batch(rng), UpdateSettings(max_accuracy_drop=100.0, lock_timeout=0.3))
    started = time.monotonic()
    report = learn_features(bundle, *_batch(rng), UpdateSettings(max_accuracy_drop=100.0, lock_timeout=30))
    assert report["committed"] and time.monotonic() - started > 0.5     # it waited for the holder
    holder.wait(timeout=10)


def test_readers_see_the_old_head_or_the_new_one_never_a_mix(bundle, child_python):
    learn_features(bundle, *_batch(np.random.default_rng(4)), LOOSE)
    writer = subprocess.Popen([sys.executable, "-c", KILLED_UPDATER, str(bundle), "77"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = FeatureStore(bundle)
    seen = set()
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            version = store.version()
            head = store.head(version)                 # sha256 against that version's own record
            assert head.num_classes == len(version.classes)
            seen.add(version.version)
    finally:
        writer.kill()
        writer.communicate()
    assert len(seen) >= 2      # commits happened while reading


def test_bad_labels_are_not_committed_unless_forced(bundle):
    rng, store = _learned(bundle, seed=5, rounds=4, n=30)
    before = store.current_number()
    features, names, keys = _batch(rng, n=200)
    wrong = [{"k0": "k1", "k1": "k2", "k2": "k0"}[n] for n in names]     # systematically mislabelled
    with pytest.raises(UpdateRejectedError, match="would fall from"):
        learn_features(bundle, features, wrong, keys, UpdateSettings())
    assert store.current_number() == before
    forced = learn_features(bundle, features, wrong, keys, UpdateSettings(force=True))
    assert forced["committed"] and forced["accuracy_after_on_earlier_holdout"] < forced["accuracy_before"]


def test_eviction_keeps_the_newest_rows_per_class_and_the_statistics_of_all(bundle):
    from edgetl.runtime.learning.update import _holdout_flags

    settings = UpdateSettings(max_accuracy_drop=100.0, max_per_class=10, max_holdout_per_class=3, holdout_fraction=0.2)
    rng = np.random.default_rng(6)
    batches = [_batch(rng, n=12, names=("k0", "k0", "k0")) for _ in range(4)]
    reports = [learn_features(bundle, *b, settings) for b in batches]
    # which rows are held out follows from the seeded keys; every batch has some of each
    flags = [_holdout_flags(np.array(keys), names, 0.2) for _, names, keys in batches]
    train_keys = [k for (_, _, keys), f in zip(batches, flags) for k, held in zip(keys, f) if not held]
    holdout_keys = [k for (_, _, keys), f in zip(batches, flags) for k, held in zip(keys, f) if held]
    assert len(train_keys) > 10 and len(holdout_keys) > 3
    assert [r["n_holdout_new"] for r in reports] == [int(f.sum()) for f in flags]
    store = FeatureStore(bundle)
    version = store.version()
    samples = store.samples(version, DIM)
    k0 = version.classes.index("k0")
    ours = samples.labels == k0
    kept = samples.keys[ours & ~samples.holdout].tolist()
    # the newest rows, in age order: a class over its bound (10) drops to nine tenths of it (9)
    assert 9 <= len(kept) <= 10 and kept == train_keys[-len(kept):]
    assert samples.keys[ours & samples.holdout].tolist() == holdout_keys[-3:]    # 3 - 3 // 10: exactly 3
    assert sum(r["evicted"] for r in reports) == len(train_keys) - len(kept) + len(holdout_keys) - 3
    assert version.residual is not None                          # evicted training rows live on there
    assert store.state(version).ridge.target_sum[k0] == len(train_keys)   # the statistics keep every sample


def test_damaged_store_files_are_refused_with_a_rollback_hint(bundle):
    rng = np.random.default_rng(7)
    learn_features(bundle, *_batch(rng), LOOSE)
    learn_features(bundle, *_batch(rng), LOOSE)
    store = FeatureStore(bundle)
    head = store.root / "versions" / f"{store.current_number():06d}" / "head.npz"
    head.write_bytes(head.read_bytes()[:-7])
    with pytest.raises(BundleError, match="rollback"):
        EdgeModel(bundle)
    rollback_bundle(bundle)                                # back to the previous, intact version
    with EdgeModel(bundle) as model:
        assert model.head_version == 3


def test_a_hand_edited_version_file_is_one_line_naming_its_key(bundle):
    learn_features(bundle, *_batch(np.random.default_rng(9)), LOOSE)
    store = FeatureStore(bundle)
    path = store.root / "versions" / f"{store.current_number():06d}" / "version.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "segments": "1,2"}))
    with pytest.raises(BundleError, match=r"version.json: segments must be a list of integers, got the string") as info:
        store.version()
    assert "\n" not in str(info.value) and "rollback" in str(info.value)


def test_leftovers_of_a_killed_writer_are_cleaned(bundle):
    rng = np.random.default_rng(8)
    learn_features(bundle, *_batch(rng), LOOSE)
    store = FeatureStore(bundle)
    (store.root / "versions" / "000099").mkdir()                       # a version never committed
    (store.root / "segments" / "000777.npz").write_bytes(b"orphan")      # a segment no version lists
    (store.root / ".CURRENT.tmp-x").write_text("9")
    report = learn_features(bundle, *_batch(rng), LOOSE)
    assert report["version"] == 2
    assert not (store.root / "versions" / "000099").exists()
    assert not (store.root / "segments" / "000777.npz").exists() and not (store.root / ".CURRENT.tmp-x").exists()
