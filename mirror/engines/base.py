"""What every copy engine shares: registry clients per host, one image's copy wrapped so it
never raises, a bounded pool over many images, progress events, and closing.

An engine implements `_copy(mapping, result)` (fill in the CopyResult or raise), `status`
and `verify`; the registry engine (mirror.copy) and the Docker engine (mirror.docker_engine)
then offer the same interface to the CLI and the pipeline.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from manifests_rewriter.config import Config
from manifests_rewriter.model import Mapping

from .registry.client import RegistryClient
from .registry.errors import RegistryError

if TYPE_CHECKING:
    from .copy import CopyResult

Progress = Callable[[str, dict[str, Any]], None]


def default_credentials(config: Config) -> Callable[[str], Any]:
    from .registry.credentials import credentials_for  # Docker config, helpers, env, Entra ID

    def lookup(host: str) -> Any:
        return credentials_for(host, config.registry(host))

    return lookup


class Engine:
    name = "registry"
    doing = ""  # appended to "copy SOURCE to TARGET" in error messages, e.g. " with the Docker engine"
    complete_errors: tuple[type[BaseException], ...] = (RegistryError,)  # their message says what was done

    def __init__(self, config: Config, *, credentials: Callable[[str], Any] | None = None,
                 progress: Progress | None = None):
        self.config = config
        self._credentials = credentials or default_credentials(config)
        self._progress = progress
        self._lock = threading.Lock()
        self._clients: dict[str, RegistryClient] = {}

    def client(self, host: str) -> RegistryClient:
        """One client per registry host: its token cache and request limit are shared."""
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                copy = self.config.copy
                client = RegistryClient(host, self.config.registry(host), credentials=self._credentials(host),
                                        timeout=copy.timeout, retries=copy.retries,
                                        max_in_flight=copy.per_registry_limit)
                self._clients[host] = client
            return client

    def _copy(self, mapping: Mapping, result: CopyResult) -> None:
        raise NotImplementedError

    def _workers(self, count: int) -> int:
        return self.config.copy.concurrency

    def copy(self, mapping: Mapping) -> CopyResult:
        """Copy one image and report; never raises for a registry or daemon failure."""
        from .copy import CopyResult

        result = CopyResult(str(mapping.source), str(mapping.target))
        started = time.monotonic()
        self._emit("start", {"source": result.source, "target": result.target, "engine": self.name})
        try:
            self._copy(mapping, result)
        except Exception as exc:  # one failing image must not stop the others
            result.status = "failed"
            result.error = self.describe(exc, f"copy {mapping.source} to {mapping.target}{self.doing}")
        result.seconds = round(time.monotonic() - started, 3)
        result.rate_limit = self._rate_limit(mapping)
        self._emit("done", result.as_json())
        return result

    def copy_all(self, mappings: Sequence[Mapping], *, fail_fast: bool = False) -> list[CopyResult]:
        """Copy many images, a bounded number at a time; results in the input order."""
        from .copy import CopyResult

        stop = threading.Event()

        def run(mapping: Mapping) -> CopyResult:
            if stop.is_set():
                return CopyResult(str(mapping.source), str(mapping.target),
                                  error="not attempted: an earlier image failed (fail-fast)")
            result = self.copy(mapping)
            if fail_fast and result.status == "failed":
                stop.set()
            return result

        workers = max(1, self._workers(len(mappings)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-image") as pool:
            return list(pool.map(run, mappings))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self, exc: BaseException, doing: str) -> str:
        """One line for a failure: the error's own when it says what was done, else doing: cause."""
        if isinstance(exc, self.complete_errors):
            return str(exc)
        if type(exc).__name__ == "CredentialError":
            return f"{doing}: {exc}"
        return f"{doing}: {type(exc).__name__}: {exc}"

    def _rate_limit(self, mapping: Mapping) -> str | None:
        """Docker Hub's rate-limit headers as last seen from the source registry."""
        with self._lock:
            client = self._clients.get(mapping.source.registry)
        return client.rate_limit if client else None

    def _emit(self, event: str, data: dict[str, Any]) -> None:
        if self._progress is not None:
            with contextlib.suppress(Exception):  # a broken display must not fail a copy
                self._progress(event, data)
