"""Unreachable registries fail fast: a host that cannot be reached costs one ping (a short budget,
never retried inside another retry), is remembered for the run, and is reported once, not once
per image. Work is bounded by counting DNS lookups and TCP connections, never by timing."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mirror.cli import main

CONFIG = """target: {registry: crmirror.azurecr.io}
policy: {imageRegex: '^crmirror\\.azurecr\\.io/'}
registries:
  crmirror.azurecr.io: {auth: anonymous}
"""


def _run(tmp_path: Path, args: list[str], extra: str = "") -> Any:
    (tmp_path / "config.yaml").write_text(CONFIG + extra)
    return CliRunner().invoke(main, [*args, "--config", str(tmp_path / "config.yaml")])


def _fail_dns(monkeypatch: pytest.MonkeyPatch, suffix: str) -> list[str]:
    """Host names ending in `suffix` do not resolve (as with no DNS); returns the lookups made for them."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(suffix):
            lookups.append(str(host))
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return lookups


def test_a_host_that_does_not_resolve_is_looked_up_once_for_eight_images(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = _fail_dns(monkeypatch, ".invalid")
    images = [f"--image=source.invalid/team/app{n}:1" for n in range(8)]
    result = _run(tmp_path, ["sync", *images])
    assert result.exit_code == 1, result.output
    assert lookups == ["source.invalid"], lookups  # one ping, no retry, remembered for the other 7 images
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].startswith("failed: 8 images"), result.stderr
    assert "cannot resolve the host name" in failed[0] and "check the host name and the network" in failed[0]


def test_a_host_that_drops_connections_is_tried_a_bounded_number_of_times(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.1)  # so the thread notices the end of the test (a thread left running would
    port = listener.getsockname()[1]  # keep later tests' scans in one process)
    accepted: list[int] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # a reset before any answer

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        images = [f"--image=127.0.0.1:{port}/team/app{n}:1" for n in range(8)]
        result = _run(tmp_path, ["sync", *images], f"  127.0.0.1:{port}: {{insecure: true}}\n")
    finally:
        done.set()
        thread.join()
        listener.close()
    assert result.exit_code == 1, result.output
    # the ping's own budget (3 attempts over https then http) for the whole run, not per image
    assert 1 <= len(accepted) <= 6, len(accepted)
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failed) == 1 and failed[0].startswith("failed: 8 images"), result.stderr


def test_rewrite_that_cannot_verify_fails_and_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_dns(monkeypatch, "azurecr.io")
    manifest = tmp_path / "pod.yaml"
    text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: nginx:1.27}\n"
    manifest.write_text(text)
    result = _run(tmp_path, ["rewrite", str(manifest)])
    assert result.exit_code == 1, result.output  # nothing verified is not "done"
    assert manifest.read_text() == text
    assert "cannot verify" in result.stderr and "--no-verify" in result.stderr


@pytest.mark.parametrize("command", ["rewrite", "plan", "migrate"])
def test_eight_references_to_an_unreachable_host_get_one_line_naming_the_cause(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    lookups = _fail_dns(monkeypatch, ".invalid")
    texts = {}
    for n in range(8):
        path = tmp_path / "k8s" / f"p{n}.yaml"
        path.parent.mkdir(exist_ok=True)
        texts[path] = f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}}}\nspec:\n  containers:\n" \
                      f"  - {{name: a, image: source.invalid/team/app{n}:1}}\n"
        path.write_text(texts[path])
    result = _run(tmp_path, [command, str(tmp_path / "k8s")])
    assert all(path.read_text() == text for path, text in texts.items())  # nothing verified, nothing written
    assert lookups == ["source.invalid"], lookups
    cause = [line for line in result.stderr.splitlines()
             if "cannot resolve the host name" in line and not line.startswith("  ")]  # not the progress lines
    # rewrite and plan: one line for the 8 references; migrate: one for its copies, one for its rewrite
    assert len(cause) == (2 if command == "migrate" else 1), result.stderr
    assert all("8 " in line and "and 5 more" in line for line in cause), cause
    assert result.stderr.count("source.invalid/team/app7:1") <= (2 if command == "migrate" else 1)
