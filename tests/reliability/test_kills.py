"""kill -9 at many points, then run again: nothing half-written, and the re-run ends as an uninterrupted run.

Sync (and migrate): the console script runs as a subprocess; fault proxies in front of the source and
the target count every request, and the process is killed when the N-th arrives, either before it is
forwarded or after the registry has carried it out but before the client hears back (the worst moment
for a PUT).  N is spread over the requests of an uninterrupted run.  After each kill every tag in the
target must be a whole image (manifests, children and blobs present, bytes matching their digests) with
the digest of the uninterrupted run; after migrate kills, every rewritten reference in the files must
point at an image the target holds.  The re-run must leave exactly the uninterrupted run's tags and
digests (and files).

Rewrite: a tree of manifests is rewritten by a subprocess killed after seeded random delays spread over
an uninterrupted run's duration; each file must hold its old or its new bytes, never a mix, and a re-run
must end byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from manifests_rewriter import cli as hook_cli

from .conftest import ACCEPT_ALL, cli_env, integrity_problems, registry_state, write_config
from .faultproxy import Fault, FaultProxy, ProxyRequest

SYNC_POINTS = 22
MIGRATE_POINTS = 4
REWRITE_POINTS = 22


def _points(count: int, every: int = 2) -> list[Any]:
    """All kill points; every other one runs by default, the rest are marked slow (make test-slow)."""
    return [pytest.param(i, marks=() if i % every == 0 else pytest.mark.slow) for i in range(count)]

# A subset of the standard set that still has everything: shared layers, an index, a signature, a referrer.
KILL_REFS = ["library/nginx:1.25", "team/api:1.0", "team/web:2.0", "multi/app:1.0", "deep/nested/path/app:0.1"]


class KillSwitch:
    """A proxy policy that counts requests (across proxies) and kills ``process`` at request ``at``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.at: int | None = None
        self.after = False
        self.process: subprocess.Popen[bytes] | None = None
        self.fired = threading.Event()
        self.fired_on = ""

    def arm(self, at: int | None, *, after: bool = False) -> None:
        with self.lock:
            self.count, self.at, self.after, self.process = 0, at, after, None
            self.fired.clear()

    def _kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.fired.set()

    def policy(self, request: ProxyRequest) -> Fault | str | None:
        with self.lock:
            self.count += 1
            if self.at is None or self.count != self.at or self.fired.is_set():
                return None
            self.fired_on = f"{request.method} {request.path.split('?')[0]}"
        if not self.after:
            self._kill()
            return "reset"

        def kill_before_answering(status: int, headers: list[tuple[str, str]], body: bytes) -> Any:
            self._kill()
            return status, headers, body

        return Fault("mutate", mutate=kill_before_answering)


def _start(argv: list[str], switch: KillSwitch | None = None) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", *argv], env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    if switch is not None:
        with switch.lock:
            switch.process = process
            if switch.fired.is_set():  # cannot happen before the first request, but be exact
                os.kill(process.pid, signal.SIGKILL)
    return process


def _finish(process: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr.decode(errors="replace")


@pytest.fixture(scope="module")
def sync_world(seeded_source: Any, module_target: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, Any]]:
    source, seeded = seeded_source
    target = module_target
    switch = KillSwitch()
    psrc = FaultProxy(source.url, switch.policy, keep_seen=False).start()
    ptgt = FaultProxy(target.url, switch.policy, keep_seen=False).start()
    workdir = tmp_path_factory.mktemp("kills")
    config = write_config(workdir / "config.yaml", target.host, {
        source.host: {"endpoint": psrc.url, "insecure": True},
        target.host: {"endpoint": ptgt.url, "insecure": True},
    })
    images = [source.ref(r) for r in KILL_REFS]
    manifests = workdir / "manifests-template"
    manifests.mkdir()
    for i, ref in enumerate(images):
        (manifests / f"app{i}.yaml").write_text(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec:\n  containers:\n  - name: c\n    image: {ref}\n")
    world = {"source": source, "target": target, "switch": switch, "config": config, "images": images,
             "workdir": workdir, "manifests": manifests}

    # the uninterrupted runs: sync, then migrate (from an empty target each time)
    for command in ("sync", "migrate"):
        target.wipe()
        switch.arm(None)
        tree = _tree(world, f"baseline-{command}")
        code, stderr = _finish(_start(_argv(world, command, tree)))
        assert code == 0, stderr
        world[f"{command}_requests"] = switch.count
        world[f"{command}_state"] = registry_state(target.url)
        world[f"{command}_files"] = _files(tree)
        assert integrity_problems(target.url) == []
    assert world["sync_state"] == world["migrate_state"]
    try:
        yield world
    finally:
        psrc.stop()
        ptgt.stop()


def _tree(world: dict[str, Any], name: str) -> Path:
    tree = world["workdir"] / name
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(world["manifests"], tree)
    return tree


def _argv(world: dict[str, Any], command: str, tree: Path) -> list[str]:
    if command == "sync":
        argv = ["mirror.cli", "sync", "--config", str(world["config"])]
        for ref in world["images"]:
            argv += ["--image", ref]
        return argv
    return ["mirror.cli", "migrate", str(tree), "--config", str(world["config"])]


def _files(tree: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tree.iterdir()) if p.is_file()}


def _rewritten_refs_exist(world: dict[str, Any], tree: Path) -> list[str]:
    """Every reference in the files that names the target must be a manifest the target holds."""
    target = world["target"]
    problems = []
    with httpx.Client(timeout=10) as client:
        for path in sorted(tree.glob("*.yaml")):
            for line in path.read_text().splitlines():
                image = line.strip().removeprefix("image: ")
                if not image.startswith(target.host + "/"):
                    continue
                name, _, tag = image[len(target.host) + 1:].rpartition(":")
                response = client.head(f"{target.url}/v2/{name}/manifests/{tag}", headers={"Accept": ACCEPT_ALL})
                if response.status_code != 200:
                    problems.append(f"{path.name}: {image} is not in the target ({response.status_code})")
    return problems


def _kill_and_recover(world: dict[str, Any], command: str, point: int, points: int, figures: Any) -> None:
    target, switch = world["target"], world["switch"]
    total = world[f"{command}_requests"]
    at = max(1, round(point * (total * 0.95 - 1) / max(1, points - 1)) + 1)
    after = point % 4 in (1, 2)  # the default (even) points alternate too
    target.wipe()
    tree = _tree(world, f"{command}-{point}")
    switch.arm(at, after=after)
    process = _start(_argv(world, command, tree), switch)
    code, stderr = _finish(process)
    assert switch.fired.is_set(), f"the run ended ({code}) before request {at} of ~{total}: {stderr}"
    assert code == -signal.SIGKILL, stderr
    figures.record("kills", tried=1)

    # nothing half-written: every tag is a whole image, with the uninterrupted run's digest
    assert integrity_problems(target.url) == [], f"killed {'after' if after else 'at'} {switch.fired_on}"
    state = registry_state(target.url)
    assert all(world[f"{command}_state"].get(k) == v for k, v in state.items()), state
    # files: each old or new, and a rewritten reference always names an image that is there
    before, final = _files(world["manifests"]), world[f"{command}_files"]
    for name, data in _files(tree).items():
        assert data in (before[name], final[name]), name
    assert _rewritten_refs_exist(world, tree) == []

    # run again, undisturbed: the same end as an uninterrupted run
    switch.arm(None)
    code, stderr = _finish(_start(_argv(world, command, tree)))
    assert code == 0, stderr
    assert registry_state(target.url) == world[f"{command}_state"]
    assert integrity_problems(target.url) == []
    assert _files(tree) == final
    figures.record("kills", handled=1, **{f"{command}_points": 1})


@pytest.mark.parametrize("point", _points(SYNC_POINTS))
def test_kill_sync_then_rerun(sync_world: dict[str, Any], point: int, figures: Any):
    _kill_and_recover(sync_world, "sync", point, SYNC_POINTS, figures)


@pytest.mark.parametrize("point", _points(MIGRATE_POINTS, every=1))
def test_kill_migrate_then_rerun(sync_world: dict[str, Any], point: int, figures: Any):
    _kill_and_recover(sync_world, "migrate", point, MIGRATE_POINTS, figures)


# --------------------------------------------------------------------------- rewrite

TARGET = "crazureblue.azurecr.io"
REWRITE_CONFIG = f"""\
target: {{registry: {TARGET}}}
policy:
  imageRegex: '^crazureblue\\.azurecr\\.io/.+$'
"""
FILES = 160


def _manifest(i: int) -> str:
    comment = "# keep me\n" if i % 3 == 0 else ""
    newline = "\r\n" if i % 7 == 0 else "\n"
    text = (f"{comment}apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app{i}, namespace: ns{i % 5}}}\n"
            "spec:\n  template:\n    spec:\n      containers:\n"
            f"      - name: a\n        image: nginx:1.{i % 30}   # pinned\n"
            f"      - name: b\n        image: \"quay.io/org/tool{i}:v{i}\"\n"
            f"      - name: c\n        image: {TARGET}/already/there:{i}\n"
            "      initContainers:\n"
            f"      - {{name: init, image: 'busybox:1.{i % 9}'}}\n")
    if i % 4 == 0:
        text += "---\n" + "x: " + "padding " * 2000 + "\n"  # some larger files: a longer write window
    return text.replace("\n", newline)


@pytest.fixture(scope="module")
def rewrite_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("rewrite-kills")
    template = base / "template"
    template.mkdir()
    for i in range(FILES):
        (template / f"m{i:04d}.yaml").write_bytes(_manifest(i).encode())
    config = base / "config.yaml"
    config.write_text(REWRITE_CONFIG)
    # the uninterrupted run, as a subprocess, timed
    expected = base / "expected"
    shutil.copytree(template, expected)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "manifests_rewriter.cli", "--config", str(config), str(expected)],
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    duration = time.monotonic() - started
    assert run.returncode == 1 and f"{FILES} files rewritten" in run.stderr, run.stderr
    old, new = _files(template), _files(expected)
    assert all(old[n] != new[n] for n in old)
    return {"base": base, "template": template, "config": config, "old": old, "new": new, "duration": duration}


def _temporary_files(tree: Path) -> list[str]:
    return sorted(p.name for p in tree.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("point", _points(REWRITE_POINTS))
def test_kill_rewrite_then_rerun(rewrite_world: dict[str, Any], point: int, figures: Any):
    world = rewrite_world
    tree = world["base"] / f"kill-{point}"
    shutil.copytree(world["template"], tree)
    delay = random.Random(f"rewrite-kill-{point}").uniform(0.35, 1.0) * world["duration"]
    command = (["manifests_rewriter.cli", "--config", str(world["config"]), str(tree)] if point % 4 in (0, 1) else
               ["mirror.cli", "rewrite", str(tree), "--no-verify", "--config", str(world["config"])])
    process = _start(command)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    code, _ = _finish(process)
    figures.record("kills", tried=1)

    files = _files(tree)
    files = {n: d for n, d in files.items() if not n.endswith(".tmp")}
    assert files.keys() == world["old"].keys()
    done = 0
    for name, data in files.items():
        assert data in (world["old"][name], world["new"][name]), f"{name} is half-written"
        done += data == world["new"][name]
    leftovers = _temporary_files(tree)

    rerun = CliRunner().invoke(hook_cli.main, ["--config", str(world["config"]), str(tree)])
    assert rerun.exit_code in (0, 1) and "error" not in rerun.stderr, rerun.output
    after = {n: d for n, d in _files(tree).items() if not n.endswith(".tmp")}
    assert after == world["new"]
    figures.record("kills", handled=1, rewrite_points=1, files_done_at_kill=done, temp_files_left=len(leftovers))
    print(f"point {point}: killed after {delay:.2f} s (exit {code}), {done}/{FILES} files rewritten, "
          f"{len(leftovers)} temporary files left")


def test_temporary_file_of_a_killed_write_is_cleaned_by_the_rerun(tmp_path: Path, figures: Any):
    """Deterministic: the child kills itself just before the rename of its first write."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.yaml").write_bytes(_manifest(1).encode())
    config = tmp_path / "config.yaml"
    config.write_text(REWRITE_CONFIG)
    child = ("import os, signal, sys\n"
             "os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
             "from manifests_rewriter.cli import main\n"
             "sys.argv = ['manifests-rewriter', '--config', sys.argv[1], sys.argv[2]]\n"
             "main()\n")
    run = subprocess.run([sys.executable, "-c", child, str(config), str(tree)], env=cli_env(), capture_output=True,
                         timeout=60)
    assert run.returncode == -signal.SIGKILL
    figures.record("kills", tried=1)
    assert (tree / "a.yaml").read_bytes() == _manifest(1).encode()  # the old bytes: the rename never happened
    rerun = CliRunner().invoke(hook_cli.main, ["--config", str(config), str(tree)])
    assert rerun.exit_code == 1
    assert sorted(p.name for p in tree.iterdir()) == ["a.yaml"], "temporary files left behind"
    figures.record("kills", handled=1)


def test_report_of_a_killed_sync_is_never_half_written(sync_world: dict[str, Any], figures: Any):
    """--report is written at the end: after a kill it is either absent or whole JSON."""
    world = sync_world
    world["target"].wipe()
    report = world["workdir"] / "report.json"
    switch = world["switch"]
    switch.arm(max(2, world["sync_requests"] // 2))
    argv = [*_argv(world, "sync", world["workdir"]), "--report", str(report)]
    code, _ = _finish(_start(argv, switch))
    assert code == -signal.SIGKILL
    figures.record("kills", tried=1)
    if report.exists():
        json.loads(report.read_text())
    switch.arm(None)
    code, stderr = _finish(_start(argv))
    assert code == 0, stderr
    assert {i["status"] for i in json.loads(report.read_text())["images"]} == {"copied"}
    figures.record("kills", handled=1)
