"""The progress display (mirror.terminal) fed the events of mirror.engines.base.Progress: what it
shows, counted, with a fake clock (no timing asserts); what engines emit, counted."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import parse
from mirror import cli, terminal
from mirror.engines.base import BYTES_EVERY, CopyResult, Engine
from mirror.engines.docker import _LayerBytes
from mirror.registry.errors import RegistryError
from mirror.settings import MirrorSettings

MiB = 1 << 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def done(source: str, status: str = "copied", moved: int = 0, error: str | None = None) -> dict[str, Any]:
    return CopyResult(source, f"acr.example/{source}", status=status, bytes_moved=moved, error=error).as_json()


def feed(display: terminal.ProgressDisplay, events: list[tuple[str, dict[str, Any]]]) -> None:
    for event, info in events:
        display(event, info)


def a_run_under_way(clock: Clock) -> list[tuple[str, dict[str, Any]]]:
    """3 images: one copied (64 MiB), one moving (32 of 96 MiB), one starting; docker.io is asking to wait."""
    return [
        ("images", {"count": 3}),
        ("start", {"source": "docker.io/library/nginx:1.27", "target": "acr.example/nginx:1.27"}),
        ("size", {"source": "docker.io/library/nginx:1.27", "bytes": 64 * MiB}),
        ("transfer", {"source": "docker.io/library/nginx:1.27", "digest": "sha256:a", "size": 64 * MiB}),
        *[("bytes", {"source": "docker.io/library/nginx:1.27", "digest": "sha256:a", "n": BYTES_EVERY})] * 256,
        ("blob", {"source": "docker.io/library/nginx:1.27", "digest": "sha256:a", "size": 64 * MiB,
                  "outcome": "copied"}),
        ("done", done("docker.io/library/nginx:1.27", moved=64 * MiB)),
        ("start", {"source": "registry.k8s.io/pause:3.9", "target": "acr.example/pause:3.9"}),
        ("size", {"source": "registry.k8s.io/pause:3.9", "bytes": 96 * MiB}),
        ("blob", {"source": "registry.k8s.io/pause:3.9", "digest": "sha256:base", "size": 16 * MiB,
                  "outcome": "mounted"}),
        ("transfer", {"source": "registry.k8s.io/pause:3.9", "digest": "sha256:b", "size": 80 * MiB}),
        *[("bytes", {"source": "registry.k8s.io/pause:3.9", "digest": "sha256:b", "n": BYTES_EVERY})] * 64,
        ("start", {"source": "quay.io/x/y:1", "target": "acr.example/x/y:1"}),
        ("waiting", {"host": "docker.io", "cause": "429", "delay": 12}),
    ]


def shown(display: terminal.LiveProgress, width: int = 100) -> list[str]:
    console = Console(record=True, force_terminal=True, width=width, file=io.StringIO())
    console.print(display.render())
    return [line.rstrip() for line in console.export_text().splitlines() if line.strip()]


def test_live_display_shows_images_bytes_rate_eta_in_flight_and_waits() -> None:
    clock = Clock()
    out = Console(record=True, force_terminal=True, width=100, file=io.StringIO())
    display = terminal.LiveProgress(out, clock, auto_refresh=False)
    events = a_run_under_way(clock)
    feed(display, events[:2])
    clock.now += 2  # two seconds of copying
    feed(display, events[2:])
    lines = shown(display)
    # moved: 64 + 16 MiB in 2 s; left: 96 - (16 mounted + 16 moved) of pause, the third image estimated at
    # the average of the two started (80 MiB): 144 MiB at 40 MiB/s
    assert lines[0] == "copying 1/3 images · 80.0 MiB moved · 40.0 MiB/s · ETA 0:04"
    in_flight = [line for line in lines if line.startswith("  ")]
    assert len(in_flight) == 2
    assert in_flight[0].startswith("  registry.k8s.io/pause:3.9") and in_flight[0].endswith("32.0 MiB / 96.0 MiB")
    assert in_flight[1].startswith("  quay.io/x/y:1") and in_flight[1].endswith("0 B")
    assert lines[-1] == "waiting: retrying docker.io: 429, 12 s"
    assert len(lines) == 4
    clock.now += 9
    assert shown(display)[-1] == "waiting: retrying docker.io: 429, 3 s"  # counting down
    clock.now += 3
    assert not any(line.startswith("waiting") for line in shown(display))  # over: gone
    display.close()
    printed = out.export_text()
    assert printed.count("docker.io/library/nginx:1.27 -> acr.example/docker.io/library/nginx:1.27 (64.0 MiB)") == 1


def test_live_display_of_a_retried_transfer_and_many_images() -> None:
    clock = Clock()
    display = terminal.LiveProgress(Console(file=io.StringIO()), clock, auto_refresh=False)
    feed(display, [("images", {"count": 12})])
    for i in range(12):
        feed(display, [("start", {"source": f"r.example/app{i:02d}:1", "target": "t"}),
                       ("size", {"source": f"r.example/app{i:02d}:1", "bytes": 4 * MiB})])
    first = "r.example/app00:1"
    feed(display, [("transfer", {"source": first, "digest": "d", "size": 4 * MiB}),
                   *[("bytes", {"source": first, "digest": "d", "n": BYTES_EVERY})] * 12,  # 3 MiB, then a reset
                   ("transfer", {"source": first, "digest": "d", "size": 4 * MiB}),
                   *[("bytes", {"source": first, "digest": "d", "n": BYTES_EVERY})] * 4])
    lines = shown(display, width=120)
    rows = [line for line in lines if line.startswith("  r.example/")]
    assert len(rows) == terminal.SHOWN_IN_FLIGHT
    assert rows[0].endswith("1.0 MiB / 4.0 MiB")  # the second attempt's bytes, not 3 + 1
    assert "  and 4 more in flight" in lines
    assert lines[0].startswith("copying 0/12 images · 4.0 MiB moved")  # the wire carried 4 MiB


def test_live_display_counts_an_engine_without_byte_events() -> None:
    """The registry engine before it emits "bytes" (or any engine that does not): "blob" and "done" count."""
    display = terminal.LiveProgress(Console(file=io.StringIO()), Clock(), auto_refresh=False)
    feed(display, [("images", {"count": 2}),
                   ("start", {"source": "a", "target": "t"}),
                   ("blob", {"source": "a", "digest": "d1", "size": 3 * MiB, "outcome": "copied"}),
                   ("done", done("a", moved=3 * MiB)),
                   ("start", {"source": "b", "target": "t"}),
                   ("done", done("b", moved=5 * MiB))])  # nothing but the result
    assert shown(display)[0].startswith("copying 2/2 images · 8.0 MiB moved")


def test_plain_lines_for_ci(capsys: pytest.CaptureFixture[str]) -> None:
    """One line per finished image, one per new wait (not per retry), a summary every HEARTBEAT seconds."""
    clock = Clock()
    stream = io.StringIO()
    display = terminal.PlainProgress(stream, clock)
    events = a_run_under_way(clock)
    feed(display, events)
    feed(display, [("waiting", {"host": "docker.io", "cause": "429", "delay": 6})] * 5)  # the same wait again
    feed(display, [("waiting", {"host": "docker.io", "cause": "503", "delay": 2})])
    clock.now += terminal.HEARTBEAT
    feed(display, [("bytes", {"source": "registry.k8s.io/pause:3.9", "digest": "sha256:b", "n": BYTES_EVERY})])
    feed(display, [("done", done("registry.k8s.io/pause:3.9", status="failed", error="GET blob: HTTP 500"))])
    lines = stream.getvalue().splitlines()
    assert lines == [
        "  copied docker.io/library/nginx:1.27 -> acr.example/docker.io/library/nginx:1.27 (64.0 MiB)",
        "waiting: retrying docker.io: 429, 12 s",
        "waiting: retrying docker.io: 503, 2 s",
        "progress: 1/3 images · 80.2 MiB moved · 2.7 MiB/s · ETA 0:54",  # 143.75 MiB left at 2.675 MiB/s
        "  failed registry.k8s.io/pause:3.9 -> acr.example/registry.k8s.io/pause:3.9: GET blob: HTTP 500",
    ]
    assert capsys.readouterr().err == ""  # all of it on the stream given


def test_none_shows_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    display = terminal.progress_display("none")
    feed(display, a_run_under_way(Clock()))
    display.close()
    assert capsys.readouterr() == ("", "")
    assert display.view().finished == {"copied": 1}  # it still counts


def test_remote_text_is_escaped() -> None:
    stream = io.StringIO()
    display = terminal.PlainProgress(stream, Clock())
    feed(display, [("waiting", {"host": "evil\x1b[2Jhost", "cause": "4\n29", "delay": 1}),
                   ("done", done("a\x1b]8;;x\x07b", status="failed", error="bad\rline"))])
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert len(stream.getvalue().splitlines()) == 2


@pytest.mark.parametrize(("mode", "isatty", "env", "resolved"), [
    ("auto", True, {}, "tty"),
    ("auto", False, {}, "plain"),
    ("auto", True, {"CI": "true"}, "plain"),
    ("auto", True, {"CI": "1"}, "plain"),
    ("auto", True, {"CI": "false"}, "tty"),
    ("auto", True, {"TERM": "dumb"}, "plain"),
    ("tty", False, {"CI": "true"}, "tty"),
    ("plain", True, {}, "plain"),
    ("none", True, {}, "none"),
])
def test_progress_mode(mode: str, isatty: bool, env: dict[str, str], resolved: str) -> None:
    assert terminal.progress_mode(mode, isatty=isatty, env=env) == resolved


# -- what engines emit ---------------------------------------------------------------------------


class Recording(Engine):
    name = "recording"
    preserves_digests = preserves_platforms = True

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        super().__init__(MirrorSettings(), keychain=object(),  # type: ignore[arg-type]
                         progress=lambda e, i: self.events.append((e, dict(i))))

    def _contact(self, mappings: Any) -> None:
        pass  # no registry to ping

    def _copy(self, mapping: Mapping, result: CopyResult) -> None:
        result.status = "copied"

    def status(self, mapping: Mapping) -> CopyResult:
        raise NotImplementedError

    def verify(self, mapping: Mapping, digest: str | None = None) -> bool:
        raise NotImplementedError

    def of(self, event: str) -> list[dict[str, Any]]:
        return [info for e, info in self.events if e == event]


@pytest.mark.parametrize(("total", "chunk", "events"), [
    (10 * MiB, 64 * 1024, 40),  # 10 MiB in 64 KiB chunks: one event per 256 KiB
    (10 * MiB + 1000, 64 * 1024, 41),  # and one for what is left at the end
    (100, 1, 1),  # a small blob: one event
    (3 * MiB, 3 * MiB, 1),  # a chunk larger than the step: one event for it
])
def test_metered_streams_report_bytes_in_steps_not_per_chunk(total: int, chunk: int, events: int) -> None:
    engine = Recording()
    data = [b"x" * min(chunk, total - i) for i in range(0, total, chunk)]
    passed = list(engine._metered("src", "sha256:d", total, iter(data)))
    assert passed == data  # the chunks themselves untouched
    assert engine.of("transfer") == [{"source": "src", "digest": "sha256:d", "size": total}]
    assert len(engine.of("bytes")) == events
    assert sum(e["n"] for e in engine.of("bytes")) == total


def test_metered_without_a_receiver_adds_nothing() -> None:
    engine = Recording()
    engine._progress = None
    chunks = [b"a", b"b"]
    assert list(engine._metered("s", "d", 2, iter(chunks))) == chunks


def test_copy_all_announces_the_image_count_and_waits_name_their_cause() -> None:
    engine = Recording()
    mappings = [Mapping(parse(f"r.example/a{i}:1"), parse(f"t.example/a{i}:1")) for i in range(3)]
    engine.copy_all(mappings)
    assert [e for e, _ in engine.events][:1] == ["images"] and engine.of("images") == [{"count": 3}]
    assert len(engine.of("start")) == len(engine.of("done")) == 3
    engine.waiting("docker.io", RegistryError("GET manifest", 429, retryable=True), 12.0)
    engine.waiting("quay.io", RegistryError("GET blob", transport="timeout", retryable=True), 0.5)
    engine.waiting("ghcr.io", ConnectionResetError(), 1.0)
    assert engine.of("waiting") == [{"host": "docker.io", "cause": "429", "delay": 12.0},
                                    {"host": "quay.io", "cause": "timeout", "delay": 0.5},
                                    {"host": "ghcr.io", "cause": "ConnectionResetError", "delay": 1.0}]


def test_docker_stream_progress_becomes_transfer_and_bytes() -> None:
    engine = Recording()
    layer = _LayerBytes(engine, "pull", "docker.io/library/nginx:1.27")
    total = 3 * MiB
    layer.update("aaaaaaaaaaaa", "Pulling fs layer", {})
    for current in range(0, total + 1, 32 * 1024):  # the daemon's items every 32 KiB
        layer.update("aaaaaaaaaaaa", "Downloading", {"current": current, "total": total})
    layer.update("aaaaaaaaaaaa", "Download complete", {})
    layer.update("aaaaaaaaaaaa", "Extracting", {"current": total, "total": total})  # not network bytes
    assert engine.of("transfer") == [{"source": "docker.io/library/nginx:1.27", "digest": "pull aaaaaaaaaaaa",
                                      "size": total}]
    assert len(engine.of("bytes")) == total // BYTES_EVERY
    assert sum(e["n"] for e in engine.of("bytes")) == total
    # a daemon that reports one step, then "complete": the whole layer moved
    layer.update("bbbbbbbbbbbb", "Downloading", {"current": 3679, "total": 16556})
    layer.update("bbbbbbbbbbbb", "Download complete", {})
    assert engine.of("bytes")[-1] == {"source": "docker.io/library/nginx:1.27", "digest": "pull bbbbbbbbbbbb",
                                      "n": 16556}


# -- the command line ----------------------------------------------------------------------------


@pytest.mark.registry
@pytest.mark.parametrize("mode", ["plain", "none", "tty"])
def test_sync_progress_modes(source_registry: Any, target_registry: Any, tmp_path: Path, mode: str) -> None:
    from tests.support.images import build_image, push

    image = build_image(tmp_path / "img", layers=[512 * 1024], seed="progress")
    push(image, source_registry, "team/app", "1")
    config = tmp_path / "acr-mirror.yaml"
    config.write_text(json.dumps({
        "target": {"registry": target_registry.host},
        "policy": {"imageRegex": f"^{target_registry.host}/"},
        "registries": {source_registry.host: {"insecure": True}, target_registry.host: {"insecure": True}},
    }))
    result = CliRunner().invoke(cli.main, ["sync", "--image", f"{source_registry.host}/team/app:1",
                                           "--config", str(config), "--progress", mode], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    finished = f"copied {source_registry.host}/team/app:1 -> "
    assert result.stderr.count(finished) == (0 if mode == "none" else 1)
    assert re.search(r"\n?1 image: 1 copied; 51\d\.\d KiB moved\.\n$", result.stderr)  # the summary comes last
    assert result.stdout == ""  # data only on stdout


# -- the registry engine, for real -----------------------------------------------------------------


@pytest.fixture
def proxies() -> Any:
    """Fault proxies in front of registries (tests/test_registry_client.Proxy); stopped at teardown."""
    from tests.test_registry_client import Proxy

    started: list[Any] = []

    def make(upstream: str, rule: Any = None) -> Any:
        started.append(Proxy(upstream, rule).start())
        return started[-1]

    yield make
    for proxy in started:
        proxy.stop()


@pytest.mark.registry
def test_registry_engine_feeds_the_display(source_registry: Any, target_registry: Any, tmp_path: Path,
                                           proxies: Any) -> None:
    """A real copy through a source that answers 429 once: the display's counts equal the result's."""
    from mirror.engines.registry import RegistryEngine
    from mirror.settings import CopySettings, RegistrySettings
    from tests.support.images import build_image, push

    image = build_image(tmp_path / "img", layers=[3 * MiB + 123, 700 * 1024], seed="feeds")
    push(image, source_registry, "team/feeds", "1")
    refused = {"once": True}

    def busy_once(proxy: Any, method: str, path: str, headers: dict[str, str]) -> Any:
        if refused["once"] and method == "GET" and "/blobs/" in path:
            refused["once"] = False
            return 429, {"Retry-After": "0"}, b'{"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}'
        return None

    proxy = proxies(source_registry.host, busy_once)
    settings = MirrorSettings(registries={proxy.host: RegistrySettings(insecure=True),
                                          target_registry.host: RegistrySettings(insecure=True)},
                              copy=CopySettings(retries=2))
    display = terminal.ProgressDisplay(Clock())
    events: list[tuple[str, dict[str, Any]]] = []

    def both(event: str, info: Any) -> None:
        events.append((event, dict(info)))
        display(event, info)

    m = Mapping(parse(f"{proxy.host}/team/feeds:1"), parse(f"{target_registry.host}/mirror/feeds:1"))
    with RegistryEngine(settings, progress=both) as engine:
        [result] = engine.copy_all([m])
    assert result.status == "copied", result.error
    of = {name: [i for e, i in events if e == name] for name in {e for e, _ in events}}
    blob_bytes = image.total_bytes - len(image.manifest)  # config and layers
    assert sum(e["bytes"] for e in of["size"]) == blob_bytes
    assert sum(e["n"] for e in of["bytes"]) == result.bytes_moved  # after the retry, every byte once
    assert len(of["bytes"]) <= result.bytes_moved // BYTES_EVERY + 2 * len(of["transfer"])
    assert all(e.get("source") == str(m.source) for e in of["blob"])
    assert [(e["host"], e["cause"]) for e in of["waiting"]] == [(proxy.host, "429")]
    view = display.view()
    assert view.finished == {"copied": 1} and view.moved == result.bytes_moved and view.in_flight == []
