"""The host extraction pipeline: worker decoding equals the runtime's single-image path, bad images are named
or skipped in any worker, and features stream to the cache entry."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from edgetl import pipeline
from edgetl.cache import FeatureCache
from edgetl.extract import extract_features, prepare, resolve_device, run_frozen
from edgetl.pipeline import decode_workers, decoded_batches, engine_lanes, lane_count
from edgetl.runtime.data.preprocess import PreprocessConfig, normalize_batch, preprocess
from edgetl.runtime.data.reader import ReadReport
from edgetl.runtime.data.sources import ImageRecord
from edgetl.runtime.errors import ConfigError, ImageDecodeError

CONFIG = PreprocessConfig.for_size(96, 0.875, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def photos(flowers_dir) -> list[ImageRecord]:
    """Real camera photos of several sizes."""
    files = sorted(flowers_dir.rglob("*.jpg"))[:21]
    return [ImageRecord(str(f), 0) for f in files]


@pytest.mark.parametrize("workers", [0, 2])
def test_every_worker_mode_gives_the_runtime_pixels_bit_for_bit(photos, workers):
    reference = np.stack([preprocess(r.source, CONFIG) for r in photos])
    batches = list(decoded_batches(photos, CONFIG, 8, workers=workers))
    assert [b.consumed for b in batches] == [8, 8, 5]
    assert [i for b in batches for i in b.indices] == list(range(len(photos)))
    assert all(b.pixels.dtype == torch.uint8 for b in batches)
    np.testing.assert_array_equal(np.concatenate([normalize_batch(b.pixels.numpy(), CONFIG) for b in batches]),
                                  reference)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bad_image_is_named_or_skipped_in_any_worker(photos, workers, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records = photos[:5] + [ImageRecord(str(broken), 0)] + photos[5:10]
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        list(decoded_batches(records, CONFIG, 4, workers=workers))
    report = ReadReport()
    batches = list(decoded_batches(records, CONFIG, 4, workers=workers, skip_bad=True, report=report))
    assert [i for b in batches for i in b.indices] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert len(report.skipped) == 1 and report.skipped[0].source == str(broken)


def test_worker_count_follows_the_job_and_the_host_and_refuses_negatives(monkeypatch):
    assert decode_workers(10, None) == 0 and decode_workers(10, 3) == 3
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 16)
    assert decode_workers(10_000, None) == 16 and decode_workers(100, None) == 0
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)           # decoding would fight the engine
    assert decode_workers(10_000, None) == 0
    with pytest.raises(ConfigError):
        decode_workers(10, -1)


class _Recording:
    """A stand-in engine whose rows are each image's channel means, and which records its copies' lives; a copy
    can be slowed (``delay``: seconds to wait for a batch) or made to fail."""

    name = "recording"
    runs_in_lanes = True

    def __init__(self, log, threads=2, delay=None, fail=False):
        self.log, self.threads, self.delay, self.fail = log, threads, delay or (lambda batch: 0.0), fail

    def replica(self, threads):
        self.log.append(("replica", threads))
        return _Recording(self.log, threads, self.delay, self.fail)

    def open(self):
        self.log.append("open")
        return self

    def infer(self, batch):
        assert batch.dtype == np.float32 and batch.shape[1] == 3
        if self.fail:
            raise RuntimeError("the engine failed")
        time.sleep(self.delay(batch))
        return batch.mean(axis=(2, 3))

    def close(self):
        self.log.append("close")


def _lane_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("edgetl-lane")]


def test_lanes_give_each_image_its_rows_in_record_order_on_single_threaded_copies(photos):
    log = []
    steps = list(engine_lanes(photos, CONFIG, 4, _Recording(log, delay=lambda batch: 0.05 * (len(batch) == 4)), 2))
    assert [s[2] for s in steps] == [4, 4, 4, 4, 4, 1]
    assert [i for s in steps for i in s[0]] == list(range(len(photos)))
    expected = np.stack([preprocess(r.source, CONFIG) for r in photos]).mean(axis=(2, 3))
    np.testing.assert_array_equal(np.concatenate([s[1] for s in steps]), expected)
    assert log == [("replica", 1), "open", ("replica", 1), "open", "close", "close"]


def test_lanes_name_the_first_bad_image_in_record_order_or_skip_it_and_close_their_copies(photos, tmp_path):
    """Both bad images sit in the first window of batches, and the earlier one's batch finishes last (its good
    image, the first photo, is slowed): the error is still the earlier image's."""
    broken = [tmp_path / f"broken{i}.jpg" for i in range(2)]
    for path in broken:
        path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    records = [photos[0], ImageRecord(str(broken[0]), 0), *photos[1:3], photos[3], ImageRecord(str(broken[1]), 0),
               *photos[4:8]]
    log = []
    first = preprocess(photos[0].source, CONFIG)
    slow = lambda batch: 0.5 if np.array_equal(batch[0], first) else 0.0  # noqa: E731
    with pytest.raises(ImageDecodeError, match="broken0.jpg"):
        list(engine_lanes(records, CONFIG, 2, _Recording(log, delay=slow), 2))
    assert log.count("open") == log.count("close") == 2 and not _lane_threads()
    report = ReadReport()
    steps = list(engine_lanes(records, CONFIG, 2, _Recording([]), 2, skip_bad=True, report=report))
    assert [i for s in steps for i in s[0]] == [0, 2, 3, 4, 6, 7, 8, 9]
    assert [e.source for e in report.skipped] == [str(b) for b in broken]


def test_lanes_close_their_copies_when_the_engine_fails_or_the_consumer_stops(photos):
    log = []
    with pytest.raises(RuntimeError, match="the engine failed"):
        list(engine_lanes(photos, CONFIG, 4, _Recording(log, fail=True), 2))
    assert log.count("open") == log.count("close") == 2 and not _lane_threads()
    log.clear()
    steps = engine_lanes(photos, CONFIG, 4, _Recording(log), 2)
    assert next(steps)[0] == [0, 1, 2, 3]
    steps.close()
    assert log.count("open") == log.count("close") == 2 and not _lane_threads()


def test_a_cpu_engine_pass_runs_in_lanes_where_decoding_would_run_in_threads(monkeypatch):
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 2)
    assert lane_count(10_000, None, 8) == 2 and lane_count(10, None, 8) == 2
    assert lane_count(8, None, 8) == 0                                 # one batch: nothing to run beside it
    assert lane_count(10, 2, 8) == lane_count(10, 0, 8) == 0            # the decoding --workers names
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")                         # torchrun ranks share the two cores
    assert lane_count(10, None, 8) == 0
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(pipeline, "usable_cores", lambda: 16)
    assert lane_count(100, None, 8) == 13                               # no more copies than batches
    assert lane_count(200, None, 8) == 16 and lane_count(10_000, None, 8) == 0   # a large job: worker processes


def test_rows_stream_to_the_entry_and_skipped_rows_read_as_zeros(tmp_path):
    cache = FeatureCache(tmp_path)
    rows = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    with cache.writer("k", 5, (2, 3)) as writer:
        writer.write([3, 4], rows[3:5])            # out of order, in runs
        writer.write([0, 1], rows[0:2])
        writer.skipped = ["c.jpg: corrupt"]
    entry = cache.loaded("k")
    np.testing.assert_array_equal(entry.features[[0, 1, 3, 4]], rows[[0, 1, 3, 4]])
    assert not entry.features[2].any() and entry.valid.tolist() == [True, True, False, True, True]
    assert entry.skipped == ["c.jpg: corrupt"] and not entry.hit
    with pytest.raises(RuntimeError, match="killed"), cache.writer("half", 5, (2, 3)) as writer:
        writer.write([0], rows[:1])
        raise RuntimeError("killed mid-pass")
    assert cache.load("half") is None and sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_the_pass_writes_what_the_module_computes(photos, tmp_path):
    """Eager torch through the pipeline (workers) equals the module on the runtime's own preprocessing."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    compute = resolve_device("cpu")
    module = prepare(module, compute)
    cache = FeatureCache(tmp_path)
    with cache.writer("pass", len(photos), (4,)) as writer:
        run_frozen(module, photos, CONFIG, compute, writer, batch_size=8, workers=2)
    with torch.inference_mode():
        expected = module(torch.from_numpy(np.stack([preprocess(r.source, CONFIG) for r in photos]))).numpy()
    np.testing.assert_allclose(cache.loaded("pass").features, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_gives_the_eager_features(photos):
    """``--compile`` (torch.compile, about 20 s here: marked slow) changes the speed, not the features."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    eager, _, _ = extract_features(module, photos[:10], CONFIG, resolve_device("cpu"), batch_size=8)
    fast, _, _ = extract_features(module, photos[:10], CONFIG, resolve_device("cpu", compile=True), batch_size=8)
    np.testing.assert_allclose(fast, eager, rtol=1e-5, atol=1e-6)


def test_the_gpu_batch_is_the_largest_power_of_two_that_fits_its_share_of_free_memory():
    from edgetl.extract import gpu_batch_for, pass_batch_size

    mib = 1 << 20
    assert gpu_batch_for(80_000 * mib, 20 * mib) == 512          # an H100: capped
    assert gpu_batch_for(8_000 * mib, 20 * mib) == 64            # 2 GB for images of 20 MB: 100 -> 64
    assert gpu_batch_for(1_000 * mib, 20 * mib) == 32            # never below the floor
    assert pass_batch_size(torch.nn.Identity(), 64, resolve_device("cpu")) == 8     # CPUs keep their default
