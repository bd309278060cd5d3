"""The reliability suite's plumbing: the `reliability` mark, fault proxies, and the run's figures.

Every test in this folder is marked ``reliability`` (``make test-reliability`` runs them alone).
Tests report what they tried through the ``figures`` fixture::

    figures.record("faults", tried=proxy.total_injected, handled=..., by_kind=dict(proxy.injected))

A test records ``tried`` before its assertions and ``handled`` after them, so a failing test
keeps its tries and loses its successes.  At the end of the session the figures of every test,
with its outcome, are written to ``last-run.json`` next to this file; ``scripts/reliability_table.py``
renders the README table from it (and is run here when the whole folder ran).  The numbers in the
table therefore always come from a run, never from a hand.

Categories: ``faults`` (injected / survived), ``kills`` (kill points / clean recoveries),
``hostile`` (inputs tried / handled), ``secrets`` (planted / leaked, via ``leaked=``).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .faultproxy import FaultProxy

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "last-run.json"
CATEGORIES = ("faults", "kills", "hostile", "secrets")

_outcomes: dict[str, dict[str, Any]] = {}
_deselected: list[str] = []
_collected: list[str] = []


def _is_ours(item: pytest.Item) -> bool:
    try:
        return Path(str(item.path)).resolve().is_relative_to(HERE)
    except (OSError, ValueError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_ours(item):
            item.add_marker(pytest.mark.reliability)
            _collected.append(item.nodeid)


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected.extend(i.nodeid for i in items if _is_ours(i))


@dataclass
class Figures:
    nodeid: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    def record(self, category: str, *, tried: int = 0, handled: int = 0, **extra: Any) -> None:
        """Add `tried` attempts and `handled` successes to `category` (and any counters in `extra`)."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r} (known: {', '.join(CATEGORIES)})")
        self.entries.append({"category": category, "tried": int(tried), "handled": int(handled), **extra})


_figures_key = pytest.StashKey[Figures]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    recorder = Figures(request.node.nodeid)
    request.node.stash[_figures_key] = recorder
    return recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if not _is_ours(item):
        return report
    entry = _outcomes.setdefault(item.nodeid, {"outcome": "passed", "entries": []})
    xfail = getattr(report, "wasxfail", None)
    if report.when == "call" or report.failed or report.skipped:
        if report.skipped and xfail is not None:
            entry["outcome"], entry["reason"] = "xfailed", xfail
        elif report.skipped:
            entry["outcome"] = "skipped"
            if isinstance(report.longrepr, tuple):
                entry["reason"] = str(report.longrepr[2])
        elif report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
            if xfail is not None:
                entry["reason"] = xfail  # strict xfail that passed
        elif report.when == "call" and entry["outcome"] == "passed":
            entry["outcome"] = "passed"
    recorder = item.stash.get(_figures_key, None)
    if recorder is not None and report.when == "teardown":
        entry["entries"] = recorder.entries
    return report


def _summarise() -> dict[str, Any]:
    totals: dict[str, dict[str, Any]] = {c: {"tried": 0, "handled": 0, "tests": 0} for c in CATEGORIES}
    extras: dict[str, collections.Counter[str]] = {c: collections.Counter() for c in CATEGORIES}
    for result in _outcomes.values():
        passed = result["outcome"] == "passed"
        seen = set()
        for e in result["entries"]:
            cat = e["category"]
            totals[cat]["tried"] += e["tried"]
            totals[cat]["handled"] += e["handled"] if passed else 0
            seen.add(cat)
            for key, value in e.items():
                if key in ("category", "tried", "handled"):
                    continue
                if isinstance(value, dict):
                    for k, v in value.items():
                        extras[cat][f"{key}.{k}"] += int(v)
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    extras[cat][key] += value
        for cat in seen:
            totals[cat]["tests"] += 1
    for cat in CATEGORIES:
        totals[cat]["extra"] = dict(sorted(extras[cat].items()))
    return totals


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _outcomes:
        return
    outcomes = collections.Counter(r["outcome"] for r in _outcomes.values())
    data = {
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "collected": len(_collected),
        "deselected": sorted(_deselected),
        "complete": not _deselected and len(_outcomes) == len(_collected),
        "outcomes": dict(sorted(outcomes.items())),
        "categories": _summarise(),
        "tests": dict(sorted(_outcomes.items())),
    }
    try:
        RESULTS_JSON.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    except OSError:
        return
    if data["complete"]:
        try:
            sys.path.insert(0, str(HERE.parent.parent))
            from scripts.reliability_table import write_results

            write_results(RESULTS_JSON)
        except Exception as exc:  # noqa: BLE001 - the table must never fail the run
            print(f"reliability table not written: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- shared fixtures


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """``fault_proxy(upstream_url, policy, **kw)``: a started FaultProxy, stopped at teardown."""
    proxies: list[FaultProxy] = []

    def make(upstream: str, policy: Any = None, **kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream, policy, **kwargs).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()
