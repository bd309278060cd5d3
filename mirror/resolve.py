"""The one place that decides what a refused reference may be rewritten to.

A reference is rewritten only to a target that a fresh look at the target registry shows
holding the source's image (`Engine.verify`), in the form the engine's copies allow
(`Engine.written_target`). `rewrite`, `migrate` and `rewrite --cluster` all ask a Resolver:

- `expected`: the digest the target must hold per source (a plan's, or what a copy reported);
  without one the source's current digest is looked up;
- `pins`: sources whose written reference gains the digest (`rewrite --plan --pin-digests`);
- `refused`: sources known not to be there, with the reason (a failed copy);
- `only`: when given, sources outside it are refused ("not in the plan");
- `verify` False: nothing is looked at (`--no-verify`, dry runs); with no engine either, the
  naming decides alone.

Answers are cached per source reference: one verification per image per run; `prefetch`
verifies many references at once (the registries' round trips overlap).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from manifests_rewriter.errors import AcrMirrorError
from manifests_rewriter.model import Mapping as ImageMapping
from manifests_rewriter.reference import ImageRef

from .engines.base import Engine

ToTarget = Callable[[ImageRef], ImageRef]


class Resolver:
    def __init__(self, to_target: ToTarget, engine: Engine | None, *, verify: bool = True,
                 expected: Mapping[str, str | None] | None = None, pins: Collection[str] = (),
                 refused: Mapping[str, str] | None = None, only: Collection[str] | None = None) -> None:
        self.to_target = to_target
        self.engine = engine
        self.verifies = verify and engine is not None
        self.expected = dict(expected or {})
        self.pins = set(pins)
        self.refused = dict(refused or {})
        self.only = set(only) if only is not None else None
        self._answers: dict[str, ImageRef | str] = {}
        self._lock = threading.Lock()

    def __call__(self, ref: ImageRef) -> ImageRef | str:
        """The target to write for `ref`, or why it must not be rewritten."""
        key = str(ref)
        with self._lock:
            answer = self._answers.get(key)
        if answer is None:
            answer = self._decide(ref, key)
            with self._lock:
                self._answers[key] = answer
        return answer

    def prefetch(self, refs: Iterable[ImageRef], workers: int = 8) -> None:
        """Decide many references concurrently, so a later call answers from the cache."""
        todo = {str(r): r for r in refs}
        if self.verifies and len(todo) > 1:
            with ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo))), thread_name_prefix="verify") as pool:
                list(pool.map(self, todo.values()))

    @property
    def unverified(self) -> dict[str, str]:
        """Sources that could not be rewritten, and why (after the calls made so far)."""
        with self._lock:
            return {k: v for k, v in self._answers.items() if isinstance(v, str)}

    def _decide(self, ref: ImageRef, key: str) -> ImageRef | str:
        if key in self.refused:
            return f"not rewritten: {self.refused[key]}"
        if self.only is not None and key not in self.only:
            return "not rewritten: not in the plan"
        target = self.to_target(ref)
        digest = self.expected.get(key)
        if self.verifies:
            problem = self.verify(ImageMapping(ref, target), digest)
            if problem:
                return f"not rewritten: {problem}"
        if digest and key in self.pins and not ref.digest:
            target = target.with_digest(digest)
        return self.engine.written_target(target) if self.engine is not None else target

    def verify(self, mapping: ImageMapping, digest: str | None = None) -> str | None:
        """None when a fresh look at the target shows the image there; otherwise why not.
        Trouble while looking is a reason, never an exception: the reference stays."""
        assert self.engine is not None
        try:
            if self.engine.verify(mapping, digest):
                return None
        except AcrMirrorError as exc:
            # no image named here: references that fail for one cause (a host that cannot be
            # reached) then share one reason, and so one line
            return f"cannot verify: {exc} (fix the registry settings, or rewrite by name only with --no-verify)"
        return f"{mapping.target} is not in the target registry with the source's digest (run acr-mirror sync first)"
