"""Real Docker Engine APIs for tests: dockerd and podman's Docker-compatible service.

Each daemon runs as its own process on a unix socket in a private temporary directory, with
private storage, so tests never touch (or depend on) a system daemon or its images:

- dockerd: ``dockerd -H unix://SOCK --data-root D --exec-root E --pidfile P --bridge=none
  --iptables=false --ip6tables=false --insecure-registry HOST:PORT...`` (LAB.md: pull, tag and
  push work so; nothing here runs containers). ``--config-file`` points at an empty file so a
  ``/etc/docker/daemon.json`` cannot change the daemon under test.
- podman: ``podman --root R --runroot RR system service --time=0 unix://SOCK``. podman reads
  registry settings from ``/etc/containers/registries.conf.d``: a drop-in marks the test
  registries insecure (plain HTTP). It is written before the service starts (podman reads it
  once) and removed at teardown, also when the test process exits without teardown.

Plain-HTTP registries must be known when a daemon starts, so ``engine_registries`` (module
scope) starts the registries first and the daemon fixtures take their host:port from it.

Tests and fixtures talk to the daemons over raw HTTP on the socket (httpx), not with the
``docker`` package: that stays in ``mirror/docker_engine.py`` only.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.registries import (
    REGISTRY_BINARY,
    AcrTokenServer,
    Registry,
    free_port,
    make_ca,
    make_server_cert,
    start_registry,
)

DAEMONS = ("dockerd", "podman")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REGISTRIES_CONF_D = Path("/etc/containers/registries.conf.d")

_LIVE: set[Daemon] = set()


@atexit.register
def _stop_leftovers() -> None:
    for daemon in list(_LIVE):
        daemon.stop()


class DaemonStartError(RuntimeError):
    pass


@dataclass(eq=False)
class Daemon:
    """A running Docker Engine API (dockerd, or podman's compatible service) on a unix socket."""

    kind: str  # "dockerd" | "podman"
    workdir: Path  # private, removed at stop
    socket: Path
    insecure: tuple[str, ...]  # host:port of the plain-HTTP registries it accepts
    log_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    dropin: Path | None = None  # podman: the registries.conf.d file written for the test registries
    tls_url: str | None = None  # dockerd: tcp://127.0.0.1:PORT, TLS with a private CA
    cert_dir: Path | None = None  # holds ca.pem (the docker CLI's DOCKER_CERT_PATH layout) for tls_url

    @property
    def base_url(self) -> str:
        """What ``docker.host`` / ``DOCKER_HOST`` takes: ``unix:///.../docker.sock``."""
        return f"unix://{self.socket}"

    # -- the Engine API, raw (for assertions)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        transport = httpx.HTTPTransport(uds=str(self.socket))
        with httpx.Client(transport=transport, base_url="http://engine", timeout=30) as client:
            return client.request(method, path, **kwargs)

    def ping(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.request("GET", "/_ping").status_code == 200
        return False

    def version(self) -> dict[str, Any]:
        return self.request("GET", "/version").raise_for_status().json()

    def images(self) -> list[dict[str, Any]]:
        """``GET /images/json``: every local image, with RepoTags and RepoDigests."""
        return self.request("GET", "/images/json", params={"all": "true"}).raise_for_status().json() or []

    def image_names(self) -> set[str]:
        """Every name an image is known by locally: tags and digest references.

        dockerd keeps a by-digest pull as a RepoDigest only; podman keeps it as a name (in RepoTags
        and Names), and its RepoDigests are derived (each name x each digest), so not counted."""
        keys = ("RepoTags", "RepoDigests") if self.kind == "dockerd" else ("RepoTags", "Names")
        names: set[str] = set()
        for image in self.images():
            for key in keys:
                names.update(n for n in image.get(key) or [] if n and "<none>" not in n)
        return names

    def inspect(self, name: str) -> dict[str, Any] | None:
        response = self.request("GET", f"/images/{name}/json")
        return response.json() if response.status_code == 200 else None

    def remove_all_images(self) -> None:
        """Empty the local image store (between tests that count what a copy left behind)."""
        for image in self.images():
            self.request("DELETE", f"/images/{image['Id']}", params={"force": "true"})

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    # -- lifecycle

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        if self.kind == "dockerd":
            _stop_pidfile(self.workdir / "exec" / "containerd" / "containerd.pid")  # normally gone with dockerd
        if self.dropin is not None:
            self.dropin.unlink(missing_ok=True)
            self.dropin = None
        _unmount_under(self.workdir)
        shutil.rmtree(self.workdir, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_pidfile(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)


def _unmount_under(directory: Path) -> None:
    """Unmount what a daemon left mounted under its directory (podman keeps its overlay home mounted)."""
    prefix = str(directory.resolve()) + "/"
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if len(line.split()) > 1]
        for mount in sorted((m for m in mounts if (m + "/").startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def _workdir(kind: str) -> Path:
    # Short: unix socket paths (containerd's under the exec root too) must stay under 108 bytes.
    return Path(tempfile.mkdtemp(prefix=f"acrm-{kind}-", dir="/tmp"))


def _wait_ready(daemon: Daemon) -> None:
    assert daemon.process is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = daemon.process.poll()
        if code is not None:
            raise DaemonStartError(f"{daemon.kind} exited with status {code}; its log:\n{daemon.log()[-3000:]}")
        if daemon.socket.exists() and daemon.ping():
            return
        time.sleep(0.1)
    raise DaemonStartError(f"{daemon.kind} did not answer /_ping within {START_TIMEOUT:.0f} s; "
                           f"its log:\n{daemon.log()[-3000:]}")


def _launch(daemon: Daemon, command: list[str]) -> Daemon:
    with daemon.log_file.open("wb") as log:
        daemon.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
    _LIVE.add(daemon)
    try:
        _wait_ready(daemon)
    except BaseException:
        daemon.stop()
        raise
    return daemon


def start_dockerd(insecure: Iterable[str] = (), *, tls: bool = False) -> Daemon:
    """A private dockerd (Debian docker.io) that accepts plain HTTP from the ``insecure`` hosts.

    With ``tls`` it also listens on ``tls_url`` (TCP on loopback, ``--tls``: the server presents a
    certificate of a private CA, whose ``ca.pem`` is in ``cert_dir``; clients need no certificate)."""
    binary = shutil.which("dockerd")
    if binary is None:
        raise DaemonStartError("dockerd is not on PATH (apt-get install docker.io)")
    workdir = _workdir("dockerd")
    insecure = tuple(insecure)
    daemon = Daemon("dockerd", workdir, workdir / "docker.sock", insecure, workdir / "dockerd.log")
    (workdir / "daemon.json").write_text("{}\n")
    tls_args: list[str] = []
    if tls:
        ca = make_ca(workdir / "ca")
        server = make_server_cert(ca, workdir / "server")
        daemon.cert_dir = workdir / "client"
        daemon.cert_dir.mkdir()
        shutil.copy(ca.cert_file, daemon.cert_dir / "ca.pem")
        daemon.tls_url = f"tcp://127.0.0.1:{free_port()}"
        tls_args = ["-H", daemon.tls_url, "--tls", "--tlsverify=false", "--tlscacert", str(ca.cert_file),
                    "--tlscert", str(server.cert_file), "--tlskey", str(server.key_file)]
    command = [
        binary, "-H", daemon.base_url, *tls_args, "--config-file", str(workdir / "daemon.json"),
        "--data-root", str(workdir / "data"), "--exec-root", str(workdir / "exec"),
        "--pidfile", str(workdir / "dockerd.pid"), "--bridge=none", "--iptables=false", "--ip6tables=false",
        *[f"--insecure-registry={host}" for host in insecure],
    ]  # fmt: skip
    return _launch(daemon, command)


def podman_dropin(insecure: Iterable[str]) -> str:
    return "".join(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n\n' for host in insecure)


def start_podman(insecure: Iterable[str] = ()) -> Daemon:
    """podman's Docker-compatible service with private storage; plain HTTP allowed for ``insecure``."""
    binary = shutil.which("podman")
    if binary is None:
        raise DaemonStartError("podman is not on PATH (apt-get install podman)")
    insecure = tuple(insecure)
    workdir = _workdir("podman")
    daemon = Daemon("podman", workdir, workdir / "podman.sock", insecure, workdir / "podman.log")
    if insecure:
        if not os.access(REGISTRIES_CONF_D, os.W_OK):
            shutil.rmtree(workdir, ignore_errors=True)
            raise DaemonStartError(f"{REGISTRIES_CONF_D} is not writable: podman cannot be told the test "
                                   "registries are plain HTTP (run the tests as root)")
        daemon.dropin = REGISTRIES_CONF_D / f"zz-acr-mirror-test-{uuid.uuid4().hex[:12]}.conf"
        daemon.dropin.write_text("# written by acr-mirror's tests (tests/support/engines.py); removed at teardown\n"
                                 + podman_dropin(insecure))
    command = [
        binary, "--root", str(workdir / "root"), "--runroot", str(workdir / "run"), "--tmpdir", str(workdir / "tmp"),
        "--events-backend=file", "--cgroup-manager=cgroupfs",
        "system", "service", "--time=0", daemon.base_url,
    ]  # fmt: skip
    return _launch(daemon, command)


def start_daemon(kind: str, insecure: Iterable[str] = ()) -> Daemon:
    if kind not in DAEMONS:
        raise ValueError(f"kind must be one of {DAEMONS}, not {kind!r}")
    return start_dockerd(insecure) if kind == "dockerd" else start_podman(insecure)


def require_daemon(kind: str) -> None:
    """Skip (with the reason) when the daemon binary, or root for its setup, is missing."""
    if shutil.which(kind) is None:
        package = "docker.io" if kind == "dockerd" else "podman"
        pytest.skip(f"{kind} is not on PATH (apt-get install {package})")
    if os.geteuid() != 0:
        pytest.skip(f"{kind} with private storage on a unix socket needs root here")


# --------------------------------------------------------------------------- pytest fixtures


@dataclass
class EngineRegistries:
    """The registries the daemons of a module talk to: started first, so their ports are known."""

    source: Registry  # plain HTTP
    target: Registry  # plain HTTP
    basic: Registry  # plain HTTP with basic auth
    acr: Registry  # token auth behind the ACR token endpoints (``acr.acr`` is the AcrTokenServer)

    @property
    def all(self) -> tuple[Registry, ...]:
        return (self.source, self.target, self.basic, self.acr)

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(r.host for r in self.all)


@pytest.fixture(scope="module")
def engine_registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineRegistries]:
    if shutil.which(REGISTRY_BINARY) is None:
        pytest.skip(f"{REGISTRY_BINARY} (CNCF distribution) is not on PATH")
    started: list[Registry] = []
    acr = AcrTokenServer(tmp_path_factory.mktemp("engine-acr")).start()
    try:
        for kwargs in ({}, {}, {"auth": "basic"}, {"auth": "token", "token_server": acr, "username": "acradmin"}):
            started.append(start_registry(tmp_path_factory.mktemp("engine-registry"), **kwargs))
        yield EngineRegistries(*started)
    finally:
        for registry in started:
            registry.stop()
        acr.stop()


def _daemon_fixture(kind: str, registries: EngineRegistries) -> Iterator[Daemon]:
    require_daemon(kind)  # a missing binary skips; a daemon that is there but does not start is an error
    daemon = start_dockerd(registries.hosts, tls=True) if kind == "dockerd" else start_podman(registries.hosts)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def dockerd_engine(engine_registries: EngineRegistries) -> Iterator[Daemon]:
    """A private dockerd for the module, accepting plain HTTP from ``engine_registries``; also on
    ``tls_url`` (TLS, CA in ``cert_dir``)."""
    yield from _daemon_fixture("dockerd", engine_registries)


@pytest.fixture(scope="module")
def podman_engine(engine_registries: EngineRegistries) -> Iterator[Daemon]:
    """podman's Docker-compatible service for the module, accepting plain HTTP from ``engine_registries``."""
    yield from _daemon_fixture("podman", engine_registries)


@contextlib.contextmanager
def running_daemon(kind: str, insecure: Iterable[str] = ()) -> Iterator[Daemon]:
    """A daemon for scripts (the bench): started, yielded, always stopped."""
    daemon = start_daemon(kind, insecure)
    try:
        yield daemon
    finally:
        daemon.stop()
