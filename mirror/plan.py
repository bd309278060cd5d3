"""The plan: which source image goes where, at which digest, and where it was found.

A plan is a value built before anything is copied. `acr-mirror plan --output` writes it
as deterministic JSON (sorted, no timestamps) so it can be reviewed and diffed; `sync
--plan` executes exactly it, optionally one shard of it.

A plan file is input like any other: between review and run it may have been edited. Before
`sync --plan` or `rewrite --plan` uses one, `check_plan` holds it against the configuration in
force: its header must name the configured target registry and naming, and every entry's
target must be what they give for its source, allowed by the policy, its digest a digest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifests_rewriter.errors import UsageError
from manifests_rewriter.model import Finding, Mapping
from manifests_rewriter.policy import Policy
from manifests_rewriter.reference import ImageRef, ReferenceError, digest_problem, parse

PLAN_VERSION = 1


class PlanError(UsageError):
    """A plan file or --shard that cannot be used; one line naming the file."""


@dataclass
class PlanEntry:
    source: str  # canonical source reference, as found (tag and/or digest as written)
    target: str
    digest: str | None = None  # the source digest to copy: running (cluster) or resolved (registry)
    platforms: list[str] = field(default_factory=list)
    found: list[dict[str, Any]] = field(default_factory=list)
    drift: str | None = None  # the tag now points elsewhere than what runs

    def mapping(self) -> Mapping:
        """The copy to perform; a planned digest pins the source (and the target keeps the tag)."""
        source, target = parse(self.source), parse(self.target)
        if self.digest and source.digest != self.digest:
            source, target = source.with_digest(self.digest), target.with_digest(self.digest)
        return Mapping(source, target)

    def as_json(self) -> dict[str, Any]:
        data = {"source": self.source, "target": self.target, "digest": self.digest,
                "platforms": sorted(self.platforms), "found": self.found}
        if self.drift:
            data["drift"] = self.drift
        return data


@dataclass
class Plan:
    target_registry: str
    naming: str
    entries: list[PlanEntry] = field(default_factory=list)

    def mappings(self) -> list[Mapping]:
        return [e.mapping() for e in self.entries]

    def shard(self, index: int, count: int) -> Plan:
        """A stable slice: an image's shard depends only on its source reference."""
        picked = [e for e in self.entries if shard_of(e.source, count) == index]
        return Plan(self.target_registry, self.naming, picked)

    def to_json(self) -> str:
        data = {"version": PLAN_VERSION, "target": {"registry": self.target_registry, "naming": self.naming},
                "images": [e.as_json() for e in sorted(self.entries, key=lambda e: e.source)]}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "plan") -> Plan:
        try:
            data = json.loads(text)
            if data.get("version") != PLAN_VERSION:
                raise PlanError(f"{origin}: unsupported plan version {data.get('version')!r}")
            entries = []
            for i, item in enumerate(data["images"]):
                for key in ("source", "target"):
                    try:
                        parse(item[key])
                    except ReferenceError as exc:
                        raise PlanError(f"{origin}: images[{i}].{key}: {exc}") from None
                entries.append(PlanEntry(item["source"], item["target"], item.get("digest"),
                                         list(item.get("platforms") or []), list(item.get("found") or []),
                                         item.get("drift")))
            return cls(data["target"]["registry"], data["target"]["naming"], entries)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, PlanError):
                raise
            raise PlanError(f"{origin}: not a valid acr-mirror plan: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise PlanError(f"{path}: cannot read plan: {exc.strerror or exc}") from None


def check_plan(plan: Plan, origin: str, *, target_registry: str, naming: str,
               to_target: Callable[[ImageRef], ImageRef], policy: Policy) -> list[str]:
    """Hold a plan read from `origin` against the configuration in force. A header for another
    target registry or naming raises PlanError (exit 2); each entry whose target is not what
    target.registry and target.naming give for its source, is refused by the policy, or whose
    digest is not a digest, is one line of the list returned (nothing of the plan may run then)."""
    if (plan.target_registry, plan.naming) != (target_registry, naming):
        raise PlanError(f"{origin}: made for target.registry {plan.target_registry!r} and naming {plan.naming!r}, "
                        f"but the configuration says {target_registry!r} and {naming!r}; make the plan again "
                        f"(acr-mirror plan) with this configuration")
    refused = []
    for i, entry in enumerate(plan.entries):
        where = f"{origin}: images[{i}] {entry.source}"
        expected = str(to_target(parse(entry.source)))
        if str(parse(entry.target)) != expected:
            refused.append(f"{where}: target {entry.target} is not what target.registry and target.naming give "
                           f"({expected})")
        elif not policy.allows(expected):
            refused.append(f"{where}: target {entry.target} is refused by the policy's imageRegex")
        problem = digest_problem(entry.digest) if entry.digest is not None else None
        if problem:
            refused.append(f"{where}: digest: {problem}")
    return refused


def shard_of(source: str, count: int) -> int:
    return int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") % count


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise PlanError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise PlanError(f"--shard {text!r}: need 0 <= I < N (I is 0-based, like JOB_COMPLETION_INDEX)")
    return index, count


def _where(f: Finding) -> dict[str, Any]:
    if f.file is not None:
        return {"file": f.file, "line": f.line, "path": f.path}
    return {"kind": f.kind, "namespace": f.namespace, "name": f.name, "container": f.container}


def plan_from_findings(findings: Iterable[Finding], target_registry: str, naming: str) -> Plan:
    """One entry per source image (deduplicated on the normalized reference)."""
    entries: dict[str, PlanEntry] = {}
    for f in findings:
        if f.target is None:
            continue  # not a valid reference: reported by scan, nothing to copy
        source = str(parse(f.image))
        entry = entries.setdefault(source, PlanEntry(source, f.target))
        if f.file is None and f.digest and not parse(f.image).digest:
            if entry.digest and entry.digest != f.digest:
                entry.drift = f"{source} runs as {entry.digest} and {f.digest}"
            entry.digest = entry.digest or f.digest
        if _where(f) not in entry.found:
            entry.found.append(_where(f))
    for entry in entries.values():
        entry.found.sort(key=lambda w: json.dumps(w, sort_keys=True))
    return Plan(target_registry, naming, sorted(entries.values(), key=lambda e: e.source))
