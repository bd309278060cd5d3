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


# --------------------------------------------------------------------------- wired into a real copy


@pytest.mark.registry
def test_a_copy_to_a_real_registry_stays_under_a_small_budget(source_registry, target_registry, tmp_path):
    """The registry engine copies 10 images (about 70 writes) under a budget of 20 writes a minute:
    every write waited for its token (virtual time), none was left out of the count."""
    from manifests_rewriter.model import Mapping
    from manifests_rewriter.reference import parse
    from mirror.engines.registry import RegistryEngine
    from mirror.settings import CopySettings, MirrorSettings, RegistrySettings
    from tests.support.images import seed_standard_set

    seeded = seed_standard_set(source_registry, tmp_path / "images")
    clock = VirtualClock()
    target = target_registry.host
    pacer = Pacer({target: Budget(60, 20, "test tier")}, clock=clock, sleep=clock.sleep)
    stamps: list[float] = []
    real_take = pacer.take

    def take(host: str, method: str) -> None:
        real_take(host, method)
        if host == target and kind_of(method) == "write":
            stamps.append(clock())

    pacer.take = take  # type: ignore[method-assign]
    settings = MirrorSettings({h: RegistrySettings(insecure=True) for h in (source_registry.host, target)},
                              CopySettings(concurrency=4, signatures=False))
    mappings = [Mapping(parse(f"{source_registry.host}/{ref}"), parse(f"{target}/mirror/{ref}"))
                for ref in sorted(seeded["images"])]
    with RegistryEngine(settings) as engine:
        engine.pacer = pacer
        results = engine.copy_all(mappings)
        sent = engine.client(target).requests
    assert {r.status for r in results} == {"copied"}
    writes = next(f for f in pacer.figures() if f.kind == "write")
    reads = next(f for f in pacer.figures() if f.kind == "read")
    assert writes.operations == len(stamps) == sent["PUT"] + sent["POST"] + sent["PATCH"] + sent["DELETE"] > 40
    assert reads.operations == sent["GET"] + sent["HEAD"] - 1  # all but the ping
    assert max_in_any_window(stamps) <= writes.peak <= writes.paced_to == 18 < 20
    assert writes.waited > 0 and clock.now - 1000.0 > WINDOW  # it had to spread the writes over minutes


@pytest.mark.registry
def test_sync_reports_how_close_it_came_to_the_configured_tier(source_registry, target_registry, tmp_path):
    import json

    from click.testing import CliRunner

    from mirror.cli import main
    from tests.support.images import build_image, push

    push(build_image(tmp_path, layers=[1024], seed="paced"), source_registry, "team/app", "1")
    escaped = target_registry.host.replace(".", r"\.")
    config = tmp_path / "c.yaml"
    config.write_text(f"target: {{registry: '{target_registry.host}'}}\npolicy: {{imageRegex: '^{escaped}/.+$'}}\n"
                      f"registries:\n  '{source_registry.host}': {{insecure: true}}\n"
                      f"  '{target_registry.host}': {{insecure: true}}\ncopy: {{acr_sku: Basic}}\n")
    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["sync", "--image", f"{source_registry.host}/team/app:1", "--config",
                                       str(config), "--report", str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pacing = {p["kind"]: p for p in json.loads(report.read_text())["pacing"]}
    assert (pacing["read"]["limit_per_minute"], pacing["write"]["limit_per_minute"]) == (1000, 100)
    assert 0 < pacing["write"]["peak_per_minute"] <= pacing["write"]["paced_to_per_minute"] == 90
    assert f"pacing: {target_registry.host} (ACR Basic): writes peaked at " in result.stderr
