"""Label-free adaptation (``runtime/learning/adapters.py``, ``serve --adapt-on-drift``) on seeded synthetic features:
each method recovers accuracy lost to the shift it is built for, the guard refuses a harmful adaptation and an
unshifted batch, a served stream adapts on an alarm and resets when the adaptation harms, and ``adapt`` commits
nothing when its guard refuses."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_folder_dataset

from edgetl.runtime.bundle.folder import Bundle, HeadState
from edgetl.runtime.bundle.heads import LinearHead, RidgeHead, RidgeStatistics
from edgetl.runtime.bundle.store import FeatureStore
from edgetl.runtime.cli import main as rt
from edgetl.runtime.errors import ConfigError, DataError
from edgetl.runtime.inference.features import apply_adapter
from edgetl.runtime.inference.model import EdgeModel
from edgetl.runtime.learning.adapters import (
    Candidate,
    SourceStatistics,
    choose,
    feature_drift,
    fit,
    halves,
    lame,
    signals,
    verdict,
)
from edgetl.runtime.learning.update import learn_features
from edgetl.runtime.serving.adaptation import StreamAdapter, stream_head

DIM, CLASSES = 24, 4
CAST = lambda x: x * 0.5 + np.random.default_rng(4).normal(0, 3.0, DIM)    # noqa: E731 - a colour cast, dimmer


def _clusters(rng: np.random.Generator, n: int, centres: np.ndarray, spread: float = 1.0):
    labels = rng.integers(0, len(centres), n)
    return (centres[labels] + spread * rng.normal(size=(n, centres.shape[1]))).astype(np.float32), labels


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2.0, (CLASSES, DIM)) + 5.0          # features of a ReLU backbone sit away from 0
    x, y = _clusters(rng, 800, centres)
    statistics = RidgeStatistics.empty(DIM, CLASSES)
    statistics.add(x, y)
    head = RidgeHead.solve(statistics, RidgeHead.select_alpha(statistics, None, None))
    return head, SourceStatistics.from_ridge(statistics), centres


def _accuracy(logits, labels) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def _target(centres, transform, n=400, seed=1):
    x, y = _clusters(np.random.default_rng(seed), n, centres)
    return transform(x).astype(np.float32), y


@pytest.mark.parametrize("method, transform", [
    ("normalise", lambda x: x * 0.2 + 6.0),                                      # low contrast, brighter
    ("coral", lambda x: x * 0.3 - 2.0),                                          # low contrast, darker
    ("prototypes", lambda x: x * 0.3 - 2.0),
    ("normalise+prototypes", CAST),
])
def test_each_method_recovers_accuracy_on_the_shift_it_is_built_for(source, method, transform):
    head, statistics, centres = source
    x, y = _target(centres, transform)
    before = _accuracy(head.logits(x), y)
    adapter, adapted = fit(method, head, statistics, x)
    after = _accuracy(Candidate(method, adapter, adapted).logits(x), y)
    assert before < 0.9 and after >= before + 0.05, (before, after)


def test_lame_smooths_a_batch_towards_its_neighbours(source):
    head, _, centres = source
    x, y = _target(centres, lambda x: x, seed=5)
    noisy = head.logits(x) + np.random.default_rng(6).normal(0, 0.6, (len(x), CLASSES)).astype(np.float32)
    assert _accuracy(lame(noisy, x), y) > _accuracy(noisy, y) + 0.05


def test_the_guard_refuses_an_unshifted_batch_and_a_collapsing_adaptation(source):
    head, statistics, centres = source
    clean, _ = _target(centres, lambda x: x, seed=8)
    quiet = choose(head, statistics, clean)
    assert not quiet.helped and quiet.best is None and "no shift" in quiet.reason
    assert quiet.drift_before < quiet.alarm
    shifted, y = _target(centres, CAST, seed=9)
    taken = choose(head, statistics, shifted)
    assert taken.helped and taken.method == "normalise+prototypes"
    assert _accuracy(taken.best.logits(shifted), y) > _accuracy(head.logits(shifted), y) + 0.05
    # an adaptation answering one class for everything: the guard names why it refuses
    collapsed = LinearHead(np.zeros((CLASSES, DIM), np.float32), np.array([1, 0, 0, 0], np.float32))
    reference = Candidate("served", None, head)
    before = head.logits(shifted)
    score = feature_drift(statistics)
    why = verdict(signals(Candidate("bad", None, collapsed), before, shifted, score),
                  signals(reference, before, shifted, score))
    assert why is not None and "answers" in why


def test_a_served_stream_adapts_on_the_alarm_and_resets_when_it_harms(source):
    head, statistics, centres = source
    state = HeadState(head, [f"c{i}" for i in range(CLASSES)], None, 3)
    monitor = type("Monitor", (), {"alarm": False})()      # the seam: any object with .alarm
    stream = StreamAdapter(lambda s: statistics, DIM, window=128, check_every=32, trigger=monitor)
    shifted, y = _target(centres, CAST, n=256, seed=11)
    for i in range(0, 128, 32):                           # a full window, but no alarm: nothing happens
        stream.logits(shifted[i:i + 32], state)
    assert stream.stats.adapted == 0 and not stream.stats.active
    monitor.alarm = True
    answered = [stream.logits(shifted[i:i + 32], state) for i in range(128, 256, 32)]
    assert stream.stats.adapted == 1 and stream.stats.active
    assert _accuracy(answered[-1], y[224:]) > _accuracy(head.logits(shifted[224:]), y[224:])
    # the camera is fixed: clean inputs again, which the shifted-domain adaptation now maps wrongly
    clean, _ = _target(centres, lambda x: x, n=256, seed=12)
    monitor.alarm = False
    for i in range(0, 256, 32):
        stream.logits(clean[i:i + 32], state)
        if stream.stats.resets:
            break
    assert stream.stats.resets == 1 and not stream.stats.active and stream.stats.last_reason.startswith("reset")
    np.testing.assert_allclose(stream.logits(clean[:8], state), head.logits(clean[:8]), rtol=1e-6)
    # a newly committed head version starts over
    stream.logits(shifted[:8], HeadState(head, state.labels, None, 4))
    assert stream.source is statistics and not stream.stats.active


def test_adapt_commits_nothing_when_its_guard_refuses(tiny_bundle, tmp_path):
    """Photos like the tiny bundle's own: no shift, so no version (beyond the store's first, from the bundle)."""
    target = make_folder_dataset(tmp_path / "same", classes=("red", "green", "blue"), per_class=6, size=(30, 40))
    out = CliRunner().invoke(rt, ["adapt", str(tiny_bundle), str(target), "--method", "coral", "--json",
                                  "--no-measure"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert not report["committed"] and report["guard"] == "refused" and report["version"] is None
    assert report["guard_reason"].startswith("no shift") and report["drift_before"] < report["alarm"]
    assert FeatureStore(tiny_bundle).current_number() == 0
    # forced, it is a version like any other: rollback undoes it
    forced = json.loads(CliRunner().invoke(rt, ["adapt", str(tiny_bundle), str(target), "--method", "coral", "--force",
                                                "--json", "--no-measure"]).stdout)
    assert forced["committed"] and forced["guard"] == "forced" and forced["version"] == 1
    with EdgeModel(tiny_bundle, measure=False) as model:
        assert model.head_version == 1 and "matrix" in model.adapter
    # serving it, the stream would adapt from version 0's head, which the adaptation started from
    bundle = Bundle.open(tiny_bundle)
    state, store = bundle.current_head(), bundle.store
    probe = np.random.default_rng(16).normal(0, 1, (5, bundle.feature_dim)).astype(np.float32)
    np.testing.assert_array_equal(stream_head(bundle, state).logits(probe),
                                  store.head(store.version(0)).logits(probe))
    assert CliRunner().invoke(rt, ["rollback", str(tiny_bundle)]).exit_code == 0
    with EdgeModel(tiny_bundle, measure=False) as model:
        assert model.head_version == 2 and model.adapter is None
    state = Bundle.open(tiny_bundle).current_head()
    assert stream_head(Bundle.open(tiny_bundle), state) is state.head       # not an adaptation: served as it is


def test_a_head_that_kept_an_adapter_through_an_update_or_a_rollback_is_never_adapted_again(tiny_bundle, tmp_path):
    """An update on an adaptation, or a rollback to one, keeps its feature adapter: neither ``adapt`` nor the stream
    may put a new adapter in front of that head (two feature spaces), while the unadapted head is not the source."""
    target = make_folder_dataset(tmp_path / "same", classes=("red", "green", "blue"), per_class=6, size=(30, 40))
    forced = CliRunner().invoke(rt, ["adapt", str(tiny_bundle), str(target), "--method", "coral", "--force",
                                     "--json", "--no-measure"])
    assert json.loads(forced.stdout)["version"] == 1
    bundle = Bundle.open(tiny_bundle)
    with np.load(bundle.file(bundle.manifest.learning)) as data:
        rows, labels = data["features"][:6], [bundle.manifest.labels[i] for i in data["labels"][:6]]
    learn_features(tiny_bundle, rows * 1.01, labels, [f"again-{i}" for i in range(6)])       # version 2, on 1
    store = FeatureStore(tiny_bundle)
    assert "adapter.npz" in store.version(2).files and store.version(2).action != "adapt"
    # the stream's source would be version 2's own head, which works on adapted features: it does not adapt
    assert stream_head(Bundle.open(tiny_bundle), Bundle.open(tiny_bundle).current_head()) is None
    # adapt refuses by name and writes nothing, even forced
    refused = CliRunner().invoke(rt, ["adapt", str(tiny_bundle), str(target), "--method", "coral", "--force",
                                      "--no-measure"])
    assert refused.exit_code == ConfigError.exit_code and "cannot adapt version 2" in refused.output
    assert FeatureStore(tiny_bundle).current_number() == 2
    assert CliRunner().invoke(rt, ["rollback", str(tiny_bundle), "--to", "1"]).exit_code == 0
    state = Bundle.open(tiny_bundle).current_head()
    assert state.adapter is not None and stream_head(Bundle.open(tiny_bundle), state) is None


def test_serve_adapt_on_drift_counts_what_the_stream_did(tiny_bundle):
    """The service wires the stream adapter in: the alarm seam, the source statistics of the served head, and the
    outcome in /metrics and the log."""
    from edgetl.runtime.serving.service import InferenceService, ServeSettings

    events = []
    service = InferenceService(tiny_bundle, ServeSettings(artifact="onnx", measure=False, adapt_on_drift=True,
                                                          adapt_window=32), log=events.append)
    try:
        stream = service.stream_adapter
        stream.trigger = lambda: True                 # a drift monitor raising its alarm
        size = service.preprocess.input_size
        rng = np.random.default_rng(13)
        for _ in range(4):                             # 64 inputs: one full window, one look
            images = (rng.normal(0, 1, (16, 3, size, size)) * 0.2 + 1.5).astype(np.float32)   # washed out
            logits, _, _ = service.classify(images)
            assert logits.shape == (16, len(service.live.state.labels))
        assert stream.source is not None and stream.stats.adapted + stream.stats.refused == 1
        outcome = "adapted" if stream.stats.adapted else "refused"
        assert service.metrics.adaptations.value(outcome=outcome) == 1
        assert f'edgetl_adaptations_total{{outcome="{outcome}"}} 1' in service.metrics.render()
        assert [e["outcome"] for e in events if e.get("event") == "adapt"] == [outcome]
    finally:
        service.close()


class _QueueingLock:
    """The stream adapter's lock, counting the threads queued for it: how a test knows, without sleeping, that
    every other request is waiting while one holds it."""

    def __init__(self):
        self._lock, self.changed, self.waiting = threading.Lock(), threading.Condition(), 0

    def __enter__(self):
        with self.changed:
            self.waiting += 1
            self.changed.notify_all()
        self._lock.acquire()
        with self.changed:
            self.waiting -= 1
        return self

    def __exit__(self, *exc):
        self._lock.release()


def test_concurrent_requests_count_each_adaptation_outcome_once(tiny_bundle):
    """Four requests reach the stream adapter together: the first to hold its lock adapts (or is refused) while
    the other three wait for it, and each outcome is counted and logged once, as the adapter counted it."""
    from edgetl.runtime.serving.service import InferenceService, ServeSettings

    events, requests = [], 4
    service = InferenceService(tiny_bundle, ServeSettings(artifact="onnx", measure=False, adapt_on_drift=True,
                                                          adapt_window=32), log=events.append)
    try:
        stream = service.stream_adapter
        stream._lock = queue = _QueueingLock()
        first = []

        def alarm() -> bool:                     # called under the lock: the first caller waits for the others
            if not first:
                first.append(True)
                with queue.changed:
                    assert queue.changed.wait_for(lambda: queue.waiting == requests - 1, timeout=60)
            return True

        stream.trigger = alarm
        size = service.preprocess.input_size
        batches = [(np.random.default_rng(20 + i).normal(0, 1, (64, 3, size, size)) * 0.2 + 1.5).astype(np.float32)
                   for i in range(requests)]     # washed out; each fills the window and is due a look
        with ThreadPoolExecutor(requests) as pool:
            list(pool.map(service.classify, batches))
        counted = {outcome: stream.stats.adapted if outcome == "adapted" else
                   stream.stats.refused if outcome == "refused" else stream.stats.resets
                   for outcome in ("adapted", "refused", "reset")}
        assert counted["adapted"] + counted["refused"] >= 1
        for outcome, count in counted.items():
            assert service.metrics.adaptations.value(outcome=outcome) == count, outcome
        assert len([e for e in events if e.get("event") == "adapt"]) == sum(counted.values())
        assert service.metrics.adaptation_active.value() == int(stream.stats.active)
    finally:
        service.close()


def test_the_stream_adapts_from_the_head_a_committed_adaptation_started_from(source, monkeypatch):
    """The served version is a committed adaptation: the stream's candidates are fitted from the unadapted head
    (``head_of``), not stacked on the adapted one, and judged against the adapted answers now served."""
    from edgetl.runtime.serving import adaptation

    head, statistics, centres = source
    committed_x, _ = _target(centres, lambda x: x * 0.2 + 6.0, n=256, seed=14)
    adapter, adapted_head = fit("normalise+prototypes", head, statistics, committed_x)
    state = HeadState(adapted_head, [f"c{i}" for i in range(CLASSES)], adapter, 7)
    seen = []

    def recording_choose(base, *args, **kwargs):
        seen.append((base, kwargs["reference"]))
        return choose(base, *args, **kwargs)

    monkeypatch.setattr(adaptation, "choose", recording_choose)
    stream = StreamAdapter(lambda s: statistics, DIM, window=128, check_every=32, trigger=lambda: True,
                           head_of=lambda s: head)
    shifted, _ = _target(centres, CAST, n=128, seed=15)
    for i in range(0, 128, 32):
        stream.logits(shifted[i:i + 32], state)
    assert len(seen) == 1
    base, reference = seen[0]
    assert base is head and reference.head is adapted_head and reference.adapter is adapter
    assert stream.stats.active               # taken: fitted from the unadapted head on the window's raw rows
    expected = Candidate(stream.stats.method, *fit(stream.stats.method, head, statistics, shifted))
    np.testing.assert_allclose(stream.logits(shifted[:8], state), expected.logits(shifted[:8]), rtol=1e-5)
    # without a head to start from (the adaptation's source was pruned) the stream does not adapt
    idle = StreamAdapter(lambda s: statistics, DIM, window=128, check_every=32, trigger=lambda: True,
                         head_of=lambda s: None)
    for i in range(0, 128, 32):
        idle.logits(shifted[i:i + 32], state)
    assert len(seen) == 1 and idle.stats.adapted == idle.stats.refused == 0


def test_the_stream_checks_its_adapter_only_on_rows_that_arrived_after_the_fit(source, monkeypatch):
    from edgetl.runtime.serving import adaptation

    head, statistics, centres = source
    checked = []
    monkeypatch.setattr(adaptation, "signals", lambda candidate, reference, rows, score: checked.append(rows.copy())
                        or signals(candidate, reference, rows, score))
    stream = StreamAdapter(lambda s: statistics, DIM, window=128, check_every=32, trigger=lambda: True,
                           head_of=lambda s: head)
    state = HeadState(head, [f"c{i}" for i in range(CLASSES)], None, 3)
    shifted, _ = _target(centres, CAST, n=192, seed=21)
    for i in range(0, 128, 32):
        stream.logits(shifted[i:i + 32], state)
    assert stream.stats.active and not checked          # fitted on rows 0-127, not checked yet
    stream.logits(shifted[128:160], state)
    assert len(checked) == 2                            # the adapter's and the served head's signals
    for rows in checked:
        assert {r.tobytes() for r in rows} == {r.tobytes() for r in shifted[128:160]}


def test_the_guard_judges_the_drift_on_rows_the_adapter_did_not_see(source):
    """One feature barely varies on the half of the rows ``normalise`` is fitted on (a unit that rarely fires) and
    varies on the other half: the adapter blows that feature up. Judged on its own rows, where it moves the mean
    exactly onto the source's, it would pass; judged on the held-out half, the guard refuses it by name."""
    head, statistics, centres = source
    x, _ = _target(centres, lambda x: x * 0.2 + 6.0, n=400, seed=17)
    fit_rows, check_rows = halves(len(x))
    rng = np.random.default_rng(18)
    x[fit_rows, 3] = 5.0 + rng.normal(0, 1e-3, len(fit_rows))
    x[check_rows, 3] = 6.0 + rng.normal(0, 0.5, len(check_rows))
    score = feature_drift(statistics)
    in_sample = fit("normalise", head, statistics, x)[0]
    assert score(apply_adapter(x, in_sample)) < 1e-3 < score(x)            # what the in-sample check saw
    choice = choose(head, statistics, x, ("normalise",), min_agreement=0.0, min_balance=0.0)
    assert not choice.helped and "moves the features away from the source" in choice.reason
    assert choice.candidates[0].drift > choice.drift_before
    # a plain shift passes out of sample too, and the adapter taken is fitted on every row
    plain, _ = _target(centres, lambda x: x * 0.2 + 6.0, n=400, seed=19)
    taken = choose(head, statistics, plain, ("normalise",), min_agreement=0.0, min_balance=0.0)
    assert taken.helped
    np.testing.assert_array_equal(taken.best.adapter["target_mean"], fit("normalise", head, statistics,
                                                                         plain)[0]["target_mean"])
    with pytest.raises(DataError, match="at least 4"):
        choose(head, statistics, plain[:3], ("normalise",))
