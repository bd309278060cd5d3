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
from collections.abc import Iterable, Iterator, Sequence
from collections.abc import Mapping as AbcMapping
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

# A stream reports the bytes it moved at most once per this many bytes (and once at its end).
BYTES_EVERY = 256 * 1024


class Progress(Protocol):
    """The progress protocol: `progress(event, info)`, the one description of every event an
    engine or the pipeline emits (mirror.terminal draws them).

    Called from any thread. A receiver only counts (a lock held for a few additions) and never
    blocks or raises: drawing happens on its own thread. Emitters go through `Engine._emit`,
    which swallows a receiver's errors. `source` is str(mapping.source), the key that ties an
    image's events together; `info` is a plain dict.

    The run:
      "images"   {count}                    images this run copies (copy_all, before any "start")
      "scanned"  {findings, images, warnings, errors}   the scan of a migration is done
    One image, in this order:
      "start"    {source, target, engine}   its copy begins
      "size"     {source, bytes}            it needs `bytes` more bytes of blobs in the target;
                                            additive, one per manifest once its blobs are known and
                                            before they are placed (blobs later found in place count)
      "transfer" {source, digest, size}     a blob starts moving (GET -> PUT); a retried transfer
                                            emits it again and the receiver restarts that blob at 0
      "bytes"    {source, digest, n}        `n` more bytes of that blob moved: a delta, aggregated in
                                            the streaming loop, at most one per BYTES_EVERY bytes plus
                                            one at the end of the stream (never one per chunk);
                                            `Engine._metered` wraps a chunk iterator to do exactly that
      "blob"     {source, digest, size, outcome, target}   a blob is in the target: outcome
                                            "copied", "mounted" or "skipped" (it was there)
      "done"     CopyResult.as_json()       finished: status copied, present or failed
    Waiting, in any command (rewrite and plan verify and resolve through the same clients):
      "waiting"  {host, cause, delay}       about to wait `delay` seconds before trying `host` again,
                                            because of `cause`: "429", "503", "timeout", "connect"...
                                            (`Engine.waiting` builds it from the error)
      "note"     {text}                     a line for the user, once (e.g. a host given up on)
    The Docker engine also emits the daemon's own stream items, "pull" and "push" {source,
    target, ref, layer, status, current, total}, "blob-done" and "image-warning"; it translates
    their byte counts into "transfer" and "bytes".
    """

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

        self._emit("images", {"count": len(mappings)})
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
        if self._progress is not None:  # the dict costs per image; a run without a display skips it
            self._emit("done", result.as_json())
        return result

    def client(self, host: str) -> RegistryClient:
        """One client per registry host: its token cache and request limit are shared."""
        from ..registry.client import RegistryClient

        with self._lock:
            client = self._clients.get(host)
            if client is None:
                copy = self.settings.copy

                def on_wait(exc: BaseException, delay: float, host: str = host) -> None:
                    self.waiting(host, exc, delay)  # a retry about to sleep: the display says so

                client = RegistryClient(host, self.settings.registry(host), credentials=self.keychain.resolve(host),
                                        timeout=copy.timeout, retries=copy.retries,
                                        max_in_flight=copy.per_registry_limit, settings_for=self.settings.registry,
                                        pacer=self.pacer, on_wait=on_wait)
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

    def waiting(self, host: str, error: BaseException, delay: float) -> None:
        """The "waiting" event for a retry about to sleep `delay` seconds after `error` from `host`."""
        from ..registry.errors import RegistryError

        if isinstance(error, RegistryError):
            cause = str(error.status) if error.status is not None else error.transport or error.cause
        else:
            cause = type(error).__name__
        self._emit("waiting", {"host": host, "cause": cause[:60], "delay": delay})

    def _metered(self, source: str, digest: str, size: int | None, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """`chunks` as they are, announced by "transfer" and counted by "bytes" events: one per
        BYTES_EVERY bytes and one at the end, so a display costs nothing per chunk."""
        if self._progress is None:
            yield from chunks
            return
        self._emit("transfer", {"source": source, "digest": digest, "size": size})
        pending = 0
        for chunk in chunks:
            yield chunk
            pending += len(chunk)
            if pending >= BYTES_EVERY:
                self._emit("bytes", {"source": source, "digest": digest, "n": pending})
                pending = 0
        if pending:
            self._emit("bytes", {"source": source, "digest": digest, "n": pending})

    def _emit(self, event: str, data: AbcMapping[str, Any]) -> None:
        if self._progress is not None:
            with contextlib.suppress(Exception):  # a broken display must not fail a copy
                self._progress(event, data)
