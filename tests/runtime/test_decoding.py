"""The service's bounded decoding: the budgets (first come, first served; deadlines; claims larger than the whole)
and the pool's lanes (order, failures, cancellation)."""

from __future__ import annotations

import threading
import time

import pytest

from edgetl.runtime.data.decoding import Budget, DecodePool
from edgetl.runtime.errors import DecodeBusyError, ImageDecodeError


def _started(target) -> threading.Thread:
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.002)


def test_a_budget_grants_the_smallest_waiting_claim_first_and_gives_back():
    budget = Budget(10)
    order: list[str] = []
    first = budget.hold(9)
    first.__enter__()

    def claim(name: str, amount: int) -> None:
        with budget.hold(amount):
            order.append(name)

    big = _started(lambda: claim("big", 6))
    _wait_for(lambda: len(budget._waiting) == 1, "the big claim queued")
    small = _started(lambda: claim("small", 2))          # came later, but is smaller: it goes first
    _wait_for(lambda: len(budget._waiting) == 2, "the small claim queued")
    assert order == [] and budget.in_use == 9
    first.__exit__(None, None, None)
    big.join(10)
    small.join(10)
    assert order == ["small", "big"] and budget.in_use == 0 and budget.peak == 9


def test_a_claim_waits_until_its_deadline_then_the_service_is_busy():
    budget = Budget(4)
    with budget.hold(4):
        with pytest.raises(DecodeBusyError, match="waited past its deadline"):
            with budget.hold(1, deadline=time.monotonic() + 0.05):
                pass
        assert not budget._waiting            # the refused claim left the queue
    with budget.hold(4):                      # and the budget is whole again
        assert budget.in_use == 4


def test_a_claim_larger_than_the_budget_is_a_bad_image_or_runs_alone():
    budget = Budget(100)
    with pytest.raises(ImageDecodeError, match="101 pixels exceed the decode budget of 100"):
        with budget.hold(101):
            pass
    with budget.hold(1000, whole=True) as held:
        assert held == 100 and budget.in_use == 100
    assert budget.in_use == 0


def test_a_lane_maps_in_order_and_a_failure_cancels_what_has_not_started():
    pool = DecodePool(workers=1, pixels=10, input_bytes=10)
    try:
        with pool.lane(None) as lane:
            assert lane.map(lambda x: x * x, range(6)) == [0, 1, 4, 9, 16, 25]
        ran: list[int] = []
        release = threading.Event()

        def work(x: int) -> int:
            ran.append(x)
            if x == 1:
                raise ValueError("bad image 1")
            if x == 2:                          # the one thread is busy here while the failure is handled
                release.wait(10)
            return x

        lane = pool.lane(None)
        futures = []
        submit = lane.submit
        lane.submit = lambda *args: futures.append(submit(*args)) or futures[-1]
        failed = []
        mapping = _started(lambda: failed.append(pytest.raises(ValueError, lane.map, work, range(50))))
        _wait_for(lambda: len(futures) == 50 and futures[3].cancelled(), "the rest cancelled after the failure")
        release.set()
        mapping.join(10)
        assert failed and "bad image 1" in str(failed[0].value)
        assert ran == [0, 1, 2] and all(f.cancelled() for f in futures[3:])
    finally:
        pool.close()


def test_requests_take_the_threads_in_turn_then_smallest_image_first():
    """While the one thread is busy, a request of five images queues, then two one-image requests (a large image,
    then a smaller one): the thread takes every request's first image (the smaller first), then the rest."""
    pool = DecodePool(workers=1, pixels=10_000, input_bytes=10, express_pixels=10)
    try:
        busy, release, order = threading.Event(), threading.Event(), []
        blocker = pool.lane(None).submit(lambda _: busy.set() or release.wait(10), None)
        busy.wait(10)
        many, large, small = pool.lane(None), pool.lane(None), pool.lane(None)
        futures = [many.submit(order.append, f"many{i}", pixels=100) for i in range(5)]
        futures += [large.submit(order.append, "large", pixels=10_000), small.submit(order.append, "small", pixels=50)]
        release.set()
        for future in [blocker, *futures]:
            future.result(10)
        assert order == ["small", "many0", "large", "many1", "many2", "many3", "many4"]
    finally:
        pool.close()


def test_a_small_image_takes_the_express_thread_while_the_others_are_busy():
    pool = DecodePool(workers=1, pixels=10_000, input_bytes=10, express_pixels=100)
    try:
        release = threading.Event()
        lane = pool.lane(None)
        busy = lane.submit(lambda _: release.wait(10), None, pixels=5000)
        large = lane.submit(lambda _: "large", None, pixels=101)
        budgets = []
        small = lane.submit(lambda _: budgets.append(pool.budget()) or threading.current_thread().name, None,
                            pixels=100)
        assert small.result(10) == "edgetl-decode-express" and budgets == [pool.express]
        assert pool.express_pixels == 100 and not large.done()           # larger: only the busy thread takes it
        release.set()
        assert large.result(10) == "large" and busy.result(10)
    finally:
        pool.close()


def test_a_request_of_one_small_image_decodes_it_in_its_own_thread():
    """One small image alone skips the hand-over (holding the small images' budget); a larger one, or several,
    go to the pool's threads."""
    pool = DecodePool(workers=1, pixels=10_000, input_bytes=10, express_pixels=100, express_budget=500)
    try:
        def where(_):
            return threading.current_thread().name, pool.budget().capacity

        with pool.lane(None) as lane:
            assert lane.map(where, [None], lambda i: 100) == [(threading.current_thread().name, 500)]
            assert lane.map(where, [None], lambda i: 101) == [("edgetl-decode-0", 10_000)]
            assert lane.map(where, [None], lambda i: 0) == [("edgetl-decode-0", 10_000)]      # header unread
            assert {name for name, _ in lane.map(where, [None] * 4, lambda i: 100)} <= {
                "edgetl-decode-0", "edgetl-decode-express"}
    finally:
        pool.close()


def test_a_lane_keeps_its_inputs_until_it_closes_and_waits_no_longer_than_its_deadline():
    pool = DecodePool(workers=1, pixels=10, input_bytes=100)
    try:
        with pool.lane(None) as lane:
            lane.keep(60)
            assert pool.inputs.in_use == 60
            with pool.lane(time.monotonic() + 0.05) as other, pytest.raises(DecodeBusyError):
                other.keep(60)
        assert pool.inputs.in_use == 0
        gate = threading.Event()
        busy = pool.lane(None).submit(lambda _: gate.wait(10), None)     # the only thread, held
        with pool.lane(time.monotonic() + 0.05) as lane, pytest.raises(DecodeBusyError, match="decoding thread"):
            lane.map(lambda x: x, [1])
        gate.set()
        assert busy.result(10)
    finally:
        pool.close()
