"""The reliability suite's plumbing: the `reliability` mark, fault proxies, and the run's figures.

Every test in this folder is marked ``reliability`` (``make test-reliability`` runs them alone).
Tests report what they tried through the ``figures`` fixture::

    figures.record("faults", tried=proxy.total_injected, handled=..., by_kind=dict(proxy.injected))

A test records ``tried`` before its assertions and ``handled`` after them, so a failing test
keeps its tries and loses its successes.  At the end of the session the figures of every test,
with its outcome, are written to ``last-run.json`` next to this file; ``scripts/reliability_table.py``
renders the README table from it (run here when the whole folder ran, slow tests included).  The numbers in the
table therefore always come from a run, never from a hand.

Categories: ``faults`` (injected / survived), ``kills`` (kill points / clean recoveries),
``hostile`` (inputs tried / handled), ``trust`` (trust-boundary cases tried / held: a hostile registry, a
look-alike host, a planted link, an untrusted checkout or a tampered plan got nothing), ``secrets`` (planted / leaked, via ``leaked=``), ``load`` (images
synced / copied, with ``peak_rss_mib=``, ``max_in_flight=``, ``limit=``).
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
CATEGORIES = ("faults", "kills", "hostile", "trust", "secrets", "load")

_outcomes: dict[str, dict[str, Any]] = {}
_deselected: list[str] = []
_collected: dict[str, bool] = {}  # node id -> marked slow
_xdist_collected = False
_RELATIVE = "tests/reliability"


def pytest_configure(config: pytest.Config) -> None:
    global _RELATIVE
    _RELATIVE = os.path.relpath(HERE, config.rootpath).replace(os.sep, "/")


def _is_ours(item: pytest.Item) -> bool:
    try:
        return Path(str(item.path)).resolve().is_relative_to(HERE)
    except (OSError, ValueError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _is_ours(item):
            item.add_marker(pytest.mark.reliability)
            _collected[item.nodeid] = item.get_closest_marker("slow") is not None


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
    """Tag our reports and attach the test's figures (user_properties travel with xdist reports too)."""
    report = yield
    if _is_ours(item):
        report.user_properties.append(("reliability", True))
        recorder = item.stash.get(_figures_key, None)
        if recorder is not None and report.when == "teardown":
            report.user_properties.append(("reliability_figures", recorder.entries))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    properties = dict(report.user_properties)
    if not properties.get("reliability"):
        return
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "entries": []})
    xfail = getattr(report, "wasxfail", None)
    if report.skipped and xfail is not None:
        entry["outcome"], entry["reason"] = "xfailed", xfail
    elif report.skipped:
        entry["outcome"] = "skipped"
        if isinstance(report.longrepr, tuple):
            entry["reason"] = str(report.longrepr[2])
    elif report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        if xfail is not None:
            entry["reason"] = xfail
    if "reliability_figures" in properties:
        entry["entries"] = properties["reliability_figures"]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """With pytest-xdist the items are collected in the workers: learn ours from their node ids."""
    global _xdist_collected
    _xdist_collected = True
    for nodeid in ids:
        if nodeid.startswith(_RELATIVE + "/"):
            _collected.setdefault(nodeid, False)


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
                    if key.startswith(("peak_", "max_", "limit")):
                        extras[cat][key] = max(extras[cat][key], value)
                    else:
                        extras[cat][key] += value
        for cat in seen:
            totals[cat]["tests"] += 1
    for cat in CATEGORIES:
        totals[cat]["extra"] = dict(sorted(extras[cat].items()))
    return totals


def _every_file_collected() -> bool:
    """Whether every test file of this folder took part (running one file, or -k, must not render the table)."""
    ran = {nodeid.split("::", 1)[0].rsplit("/", 1)[-1] for nodeid in _collected}
    return ran >= {path.name for path in HERE.glob("test_*.py")}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _outcomes or hasattr(session.config, "workerinput"):  # xdist workers: the controller writes
        return
    outcomes = collections.Counter(r["outcome"] for r in _outcomes.values())
    not_run = sorted(set(_collected) - set(_outcomes))
    data = {
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "collected": len(_collected),
        "deselected": sorted(_deselected),
        "complete": not not_run,
        "slow_not_run": [n for n in not_run if _collected[n]],
        # the whole folder ran, every file and slow tests included (make test-reliability): the README table is rendered
        # from this run; after partial runs (make test skips the slow ones) render by hand if wanted.
        # With xdist the deselected tests are unknown here, so it is never rendered automatically.
        "renderable": not not_run and not _xdist_collected and _every_file_collected(),
        "outcomes": dict(sorted(outcomes.items())),
        "categories": _summarise(),
        "tests": dict(sorted(_outcomes.items())),
    }
    try:
        RESULTS_JSON.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    except OSError:
        return
    if data["renderable"]:
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


# --------------------------------------------------------------------------- registries and configs

ACCEPT_ALL = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
])


def write_config(path: Path, target_host: str, registries: dict[str, dict[str, Any]], *,
                 naming: str = "{repository}", extra: str = "", **copy: Any) -> Path:
    """An acr-mirror config: target, a policy that accepts exactly the target names, per-host settings."""
    lines = [f"target: {{registry: '{target_host}', naming: '{naming}'}}",
             "policy:", f"  imageRegex: '^{re_escape(target_host)}/.+$'"]
    if registries:
        lines.append("registries:")
        for host, settings in registries.items():
            body = ", ".join(f"{k}: {json.dumps(v)}" for k, v in settings.items())
            lines.append(f"  '{host}': {{{body}}}")
    if copy:
        lines.append("copy: {" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in copy.items()) + "}")
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


def re_escape(text: str) -> str:
    return text.replace(".", "\\.")


def _get(client: Any, url: str, **kwargs: Any) -> Any:
    response = client.get(url, **kwargs)
    response.raise_for_status()
    return response


def catalog(client: Any, url: str) -> list[str]:
    """Every repository of the registry at ``url`` (paginated through the Link header)."""
    repositories: list[str] = []
    path = "/v2/_catalog?n=1000"
    while path:
        response = _get(client, url + path)
        repositories += response.json().get("repositories") or []
        link = response.headers.get("Link", "")
        path = link[link.index("<") + 1:link.index(">")] if "<" in link else ""
    return repositories


def registry_state(url: str) -> dict[str, str]:
    """``repository:tag`` -> manifest digest, for every tag of every repository (read directly, no proxy)."""
    import httpx

    state: dict[str, str] = {}
    with httpx.Client(timeout=30) as client:
        repositories = catalog(client, url)
        for repo in repositories:
            tags = client.get(f"{url}/v2/{repo}/tags/list")
            if tags.status_code == 404:
                continue
            for tag in tags.json().get("tags") or []:
                head = client.head(f"{url}/v2/{repo}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
                state[f"{repo}:{tag}"] = head.headers.get("Docker-Content-Digest", f"HTTP {head.status_code}")
    return state


def integrity_problems(url: str) -> list[str]:
    """Tags whose image is not whole: a manifest, child manifest or blob it references is missing (or lies)."""
    import hashlib

    import httpx

    problems: list[str] = []
    with httpx.Client(timeout=30) as client:
        repositories = catalog(client, url)
        for repo in repositories:
            tags = client.get(f"{url}/v2/{repo}/tags/list")
            if tags.status_code == 404:
                continue
            for tag in tags.json().get("tags") or []:
                pending = [tag]
                while pending:
                    reference = pending.pop()
                    response = client.get(f"{url}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_ALL})
                    if response.status_code != 200:
                        problems.append(f"{repo}:{tag}: manifest {reference} is missing ({response.status_code})")
                        continue
                    actual = "sha256:" + hashlib.sha256(response.content).hexdigest()
                    if reference.startswith("sha256:") and actual != reference:
                        problems.append(f"{repo}:{tag}: manifest {reference} holds bytes of {actual}")
                    manifest = response.json()
                    for child in manifest.get("manifests") or []:
                        pending.append(child["digest"])
                    for blob in [manifest.get("config"), *(manifest.get("layers") or [])]:
                        if not blob or blob.get("urls"):
                            continue
                        head = client.head(f"{url}/v2/{repo}/blobs/{blob['digest']}")
                        if head.status_code != 200:
                            problems.append(f"{repo}:{tag}: blob {blob['digest']} is missing ({head.status_code})")
                        elif int(head.headers.get("Content-Length", -1)) != blob["size"]:
                            problems.append(f"{repo}:{tag}: blob {blob['digest']} has the wrong size")
    return problems


@pytest.fixture(scope="module")
def seeded_source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, Any]]]:
    """One source registry per module with the standard image set (seeding takes seconds: do it once)."""
    import shutil

    from tests.support.images import seed_standard_set
    from tests.support.registries import start_registry

    if shutil.which("docker-registry") is None or shutil.which("skopeo") is None:
        pytest.skip("needs docker-registry and skopeo")
    registry = start_registry(tmp_path_factory.mktemp("source"))
    try:
        seeded = seed_standard_set(registry, tmp_path_factory.mktemp("images"))
        yield registry, seeded
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def module_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One target registry per module; use ``empty_target`` to get it wiped."""
    import shutil

    from tests.support.registries import start_registry

    if shutil.which("docker-registry") is None:
        pytest.skip("needs docker-registry")
    registry = start_registry(tmp_path_factory.mktemp("target"))
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def empty_target(module_target: Any) -> Any:
    module_target.wipe()
    return module_target


def cli_env() -> dict[str, str]:
    """The environment for running the CLIs as subprocesses from the working tree."""
    root = HERE.parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACR_MIRROR_", "DOCKER_", "AZURE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "manifests-rewriter")])
    env["DOCKER_CONFIG"] = str(HERE / "no-docker-config")  # never the user's credentials
    return env
