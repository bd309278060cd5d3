"""Pacing under ACR's per-tier budgets (mirror.registry.pacing), counted in operations on a
virtual clock: no test here waits or measures wall time."""

from __future__ import annotations

import threading

import pytest

from mirror.registry.pacing import ACR_TIERS, WINDOW, Budget, Pacer, kind_of


class VirtualClock:
    """A clock that moves only when someone sleeps; thread-safe."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.slept += seconds


def max_in_any_window(stamps: list[float]) -> int:
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, at in enumerate(stamps):
        while stamps[start] <= at - WINDOW:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_documented_tiers() -> None:
    assert {k: (b.reads_per_minute, b.writes_per_minute) for k, b in ACR_TIERS.items()} == {
        "Basic": (1000, 100), "Standard": (3000, 500), "Premium": (10000, 2000)}
    assert [kind_of(m) for m in ("GET", "HEAD", "PUT", "POST", "PATCH", "DELETE")] == [
        "read", "read", "write", "write", "write", "write"]


def test_writes_are_paced_below_the_limit_in_every_window() -> None:
    clock = VirtualClock()
    pacer = Pacer({"cr.example": Budget(50, 20, "test tier")}, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(100):
        pacer.take("cr.example", "PUT")
        stamps.append(clock())
    writes = next(f for f in pacer.figures() if f.kind == "write")
    assert writes.operations == 100 and writes.paced_to == 18  # 90 % of 20
    assert max_in_any_window(stamps) == writes.peak <= 18 < 20
    assert writes.waited > 0 and clock.slept == pytest.approx(writes.waited)
    # the pacing costs only what the budget demands: 100 writes at 18/min take about 5 virtual minutes
    assert 4 * WINDOW < clock.now - 1000.0 < 6 * WINDOW
    reads = next(f for f in pacer.figures() if f.kind == "read")
    assert (reads.operations, reads.peak) == (0, 0)  # separate budgets


def test_reads_do_not_wait_for_writes_and_other_hosts_are_not_paced() -> None:
    clock = VirtualClock()
    pacer = Pacer({"cr.example": Budget(1000, 10)}, clock=clock, sleep=clock.sleep)
    for _ in range(9):
        pacer.take("cr.example", "PUT")
    before = clock.now
    for _ in range(50):
        pacer.take("cr.example", "HEAD")  # within the read burst (90): no wait
        pacer.take("elsewhere.io", "PUT")  # no budget: never waits, never counted
    assert clock.now == before
    assert not pacer.paces("elsewhere.io")
    assert {(f.kind, f.operations) for f in pacer.figures()} == {("read", 50), ("write", 9)}


def test_threads_share_one_budget() -> None:
    clock = VirtualClock()
    pacer = Pacer({"cr.example": Budget(60, 30)}, clock=clock, sleep=clock.sleep)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            pacer.take("cr.example", "GET")
            with lock:
                stamps.append(clock())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reads = next(f for f in pacer.figures() if f.kind == "read")
    assert reads.operations == 100 == len(stamps)
    assert max_in_any_window(stamps) <= reads.paced_to == 54 < 60


def test_429s_are_counted_and_the_line_says_how_close() -> None:
    pacer = Pacer({"cr.example": ACR_TIERS["Standard"]})
    pacer.take("cr.example", "GET")
    pacer.observe("cr.example", 429)
    pacer.observe("cr.example", 200)
    pacer.observe("other", 429)
    reads = next(f for f in pacer.figures() if f.kind == "read")
    assert reads.throttled == 1
    assert reads.line() == ("cr.example (ACR Standard): reads peaked at 1/min of 3,000 (0%), 1 in all, "
                            "0.0 s waiting, 1 throttled (429)")
    assert reads.as_json()["limit_per_minute"] == 3000
