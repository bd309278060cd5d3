"""ACR's artifact cache on loopback: a proxy in front of a served ACR's registry.

The CNCF registry cannot pull through by itself. On a manifest GET or HEAD that the registry
answers 404 and a cache rule of the served ACR covers, the proxy has the served ARM copy the image
in from its upstream first (tests/support/arm.py `ArmServer.pull_through`, with the credential
set's Key Vault secrets), as ACR does on a first pull, then answers from the registry. Point the
registry's `endpoint` setting at `proxy.url`.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.support.arm import ArmError, ArmServer, ServedAcr


class PullThroughProxy:
    """In front of a served ACR's registry: a manifest GET/HEAD the registry answers 404 and a cache
    rule covers makes the served ARM pull it through first, as ACR does on a first pull."""

    def __init__(self, arm: ArmServer, acr: ServedAcr) -> None:
        self.arm, self.acr = arm, acr
        self.pulls: list[str] = []
        upstream = urlsplit(acr.registry.url)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.forward(self, "GET")

            def do_HEAD(self) -> None:
                owner.forward(self, "HEAD")

        self.upstream = (upstream.hostname, upstream.port)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def send(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def forward(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
        status, answer, body = self.send(method, handler.path, headers)
        parts = handler.path.split("?")[0].split("/manifests/")
        if status == 404 and len(parts) == 2 and parts[0].startswith("/v2/"):
            repository, reference = parts[0][4:], parts[1]
            if self.arm.cache_rule_for(self.acr, repository) is not None:
                self.pulls.append(f"{repository}:{reference}")
                with contextlib.suppress(ArmError, RuntimeError):  # nothing upstream: the 404 stands
                    self.arm.pull_through(self.acr, repository, reference)
                status, answer, body = self.send(method, handler.path, headers)
        handler.send_response(status)
        for name, value in answer:
            if name.lower() not in ("connection", "transfer-encoding"):
                handler.send_header(name, value)
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(body)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
