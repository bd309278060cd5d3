"""The interface every copy engine offers the pipeline, and what they all share.

`Engine` declares what the pipeline calls: `copy_all` (many images, a bounded number at a
time, results in input order), `status` (a dry run: present / planned), `verify` (does the
target hold the source's image?), `written_target` (the reference a verified copy lets the
manifests say) and `close`; and what the engine preserves (`preserves_digests`,
`preserves_platforms`). Every engine returns `CopyResult`s and never raises for one failing
image. Shared here: registry clients per host (their token caches and request limits), one
image's copy wrapped so it never raises, the bounded pool, progress events.

A new engine subclasses Engine, implements `_copy`, `status`, `verify` (and overrides
`written_target` when its copies change digests), and gets one line in mirror.engines.ENGINES.
"""

from __future__ import annotations

import contextlib
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping as AbcMapping
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from manifests_rewriter.errors import AcrMirrorError
from manifests_rewriter.model import Mapping
from manifests_rewriter.reference import ImageRef

from ..registry.credentials import Keychain, default_keychain
from ..settings import MirrorSettings

if TYPE_CHECKING:  # the HTTP stack loads when an engine first talks to a registry, not at start-up
    from ..registry.client import RegistryClient
    from ..registry.pacing import Pacer


class Progress(Protocol):
    """Receives engine events: "start" and "done" per image (done carries the CopyResult
    fields), "blob" per blob placed, and engine-specific ones ("pull", "push", "image-warning")."""

    def __call__(self, event: str, info: AbcMapping[str, Any], /) -> None: ...


@dataclass
class CopyResult:
    """What one engine did for one image (DESIGN.md "Data types")."""

    source: str
    target: str
    status: str = "failed"  # copied | present | failed | planned
    digest: str | None = None  # the source manifest's digest
    target_digest: str | None = None  # what the target holds; differs when platforms were filtered (or docker)
    platforms: list[str] = field(default_factory=list)
    bytes_moved: int = 0
    blobs_copied: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    referrers: int = 0  # referrers and signature manifests copied along
    error: str | None = None
    note: str | None = None
    rate_limit: str | None = None
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


class Engine(ABC):
    name: ClassVar[str]
    preserves_digests: ClassVar[bool]  # the target holds the source's manifest digests
    preserves_platforms: ClassVar[bool]  # every platform of an index arrives
    doing: ClassVar[str] = ""  # appended to "copy SOURCE to TARGET" in error messages
    max_parallel: ClassVar[int | None] = None  # images in flight at most, whatever copy.concurrency says

    def __init__(self, settings: MirrorSettings, *, keychain: Keychain | None = None,
                 progress: Progress | None = None):
        self.settings = settings
        self.keychain = keychain or default_keychain(settings)
        self._progress = progress
        self._lock = threading.Lock()
        self._clients: dict[str, RegistryClient] = {}
        self.pacer: Pacer | None = None  # request budgets per host (set before the first request)

    # -- what the pipeline calls --------------------------------------------------------------

    @abstractmethod
    def status(self, mapping: Mapping) -> CopyResult:
        """Dry run: the source digest, and whether the target holds it ("present") or would get
        it ("planned"). Reads only; never raises for a registry failure ("failed" with error)."""

    @abstractmethod
    def verify(self, mapping: Mapping, digest: str | None = None) -> bool:
        """Whether the target holds the source's image (`digest`: the source digest to compare
        with; default: what the source reference names now). Absence is False; registry trouble
        while looking raises an AcrMirrorError."""

    def written_target(self, target: ImageRef) -> ImageRef:
        """The reference manifests may say once `verify` holds: the target as mapped, unless
        this engine's copies change digests."""
        return target

    def copy_all(self, mappings: Sequence[Mapping], *, fail_fast: bool = False) -> list[CopyResult]:
        """Copy many images, a bounded number at a time; results in the input order."""
        stop = threading.Event()

        def run(mapping: Mapping) -> CopyResult:
            if stop.is_set():
                return CopyResult(str(mapping.source), str(mapping.target),
                                  error="not attempted: an earlier image failed (fail-fast)")
            result = self.copy(mapping)
            if fail_fast and result.status == "failed":
                stop.set()
            return result

        self._contact(mappings)
        workers = max(1, min(self.settings.copy.concurrency, self.max_parallel or len(mappings) or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{self.name}-image") as pool:
            return list(pool.map(run, mappings))

    def _contact(self, mappings: Sequence[Mapping]) -> None:
        """Ping every registry of the run at once, before the first image: each host's round trips
        (and a host that cannot be reached) are known up front instead of one image after another."""
        hosts = sorted({m.source.registry for m in mappings} | {m.target.registry for m in mappings})

        def ping(host: str) -> None:
            with contextlib.suppress(AcrMirrorError):  # remembered by the client; each image reports it
                self.client(host).ping()

        if len(hosts) > 1:
            with ThreadPoolExecutor(max_workers=min(8, len(hosts)), thread_name_prefix="contact") as pool:
                list(pool.map(ping, hosts))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shared by the engines ----------------------------------------------------------------

    @abstractmethod
    def _copy(self, mapping: Mapping, result: CopyResult) -> None:
        """Copy one image, filling in `result`; raise on failure."""

    def copy(self, mapping: Mapping) -> CopyResult:
        """Copy one image and report; never raises for a registry or daemon failure."""
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

    def client(self, host: str) -> RegistryClient:
        """One client per registry host: its token cache and request limit are shared."""
        from ..registry.client import RegistryClient

        with self._lock:
            client = self._clients.get(host)
            if client is None:
                copy = self.settings.copy
                client = RegistryClient(host, self.settings.registry(host), credentials=self.keychain.resolve(host),
                                        timeout=copy.timeout, retries=copy.retries,
                                        max_in_flight=copy.per_registry_limit, settings_for=self.settings.registry,
                                        pacer=self.pacer)
                self._clients[host] = client
            return client

    @staticmethod
    def describe(exc: BaseException, doing: str) -> str:
        """One line for a failure: an AcrMirrorError's own message says what was done (its
        operation), anything else gets "doing: cause"."""
        if isinstance(exc, AcrMirrorError) and exc.names_operation:
            return str(exc)
        if isinstance(exc, AcrMirrorError):
            return f"{doing}: {exc}"
        return f"{doing}: {type(exc).__name__}: {exc}"

    def _rate_limit(self, mapping: Mapping) -> str | None:
        """Docker Hub's rate-limit headers as last seen from the source registry."""
        with self._lock:
            client = self._clients.get(mapping.source.registry)
        return client.rate_limit if client else None

    def _emit(self, event: str, data: AbcMapping[str, Any]) -> None:
        if self._progress is not None:
            with contextlib.suppress(Exception):  # a broken display must not fail a copy
                self._progress(event, data)
