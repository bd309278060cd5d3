"""Values that flow between the pipeline's stages (DESIGN.md "Data types")."""

from __future__ import annotations

from dataclasses import dataclass

from .reference import ImageRef


@dataclass(frozen=True)
class Decision:
    """One assignment's verdict on a finding's container (several assignments in force)."""

    assignment: str
    parameter: str
    effect: str | None  # deny | warn | audit | disabled when it flags the container, else None
    finding: bool

    def as_json(self) -> dict[str, object]:
        return {"assignment": self.assignment, "parameter": self.parameter, "effect": self.effect,
                "finding": self.finding}


@dataclass(frozen=True)
class Finding:
    """One container image the policy would refuse, and where it was seen.

    A manifest finding has `file`, `line`, `document` and `path`; a cluster finding has
    file None, the top owner's kind/namespace/name and the running `digest`."""

    image: str  # as written
    reason: str
    source: str = "pod"  # pod | helm | kustomize | compose | cluster
    file: str | None = None
    line: int | None = None
    document: int | None = None
    path: str | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    container: str | None = None
    target: str | None = None  # where it would go (None when the image is not a valid reference)
    digest: str | None = None  # the running digest (cluster) or the one written
    # Which assignment (or constraint, or the config) and which of its parameters decided, and
    # its effect: deny (refused at admission) | warn | audit | disabled (reported, not refused).
    assignment: str | None = None
    parameter: str | None = None
    effect: str | None = None
    decisions: tuple[Decision, ...] = ()  # every assignment's verdict, when several are in force

    @property
    def refused(self) -> bool:
        """Refused at admission (effect Deny); False for Audit/warn/Disabled findings."""
        return self.effect in (None, "deny")

    def decided_by(self) -> str:
        """'<assignment>: <parameter>' and, unless refused, what happens instead."""
        if not self.assignment:
            return ""
        text = f"{self.assignment}: {self.parameter}"
        if not self.refused:
            effect = {"audit": "Audit", "disabled": "Disabled"}.get(self.effect or "", self.effect)
            text += f"; would be reported, not refused (effect {effect})"
        return text

    def location(self) -> str:
        if self.file is not None:
            return f"{self.file}:{self.line}" if self.line else self.file
        return f"{self.kind}/{self.namespace}/{self.name}" if self.namespace else f"{self.kind}/{self.name}"

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.file, "line": self.line, "document": self.document, "path": self.path,
            "kind": self.kind, "namespace": self.namespace, "name": self.name,
            "container": self.container, "image": self.image, "target": self.target,
            "digest": self.digest, "source": self.source, "reason": self.reason,
            "assignment": self.assignment, "parameter": self.parameter, "effect": self.effect,
            "refused": self.refused if self.assignment else None,
            **({"decisions": [d.as_json() for d in self.decisions]} if self.decisions else {}),
        }


@dataclass(frozen=True)
class Mapping:
    """Where one source image goes. Deduplicated: one per source reference."""

    source: ImageRef
    target: ImageRef

    @property
    def key(self) -> str:
        return str(self.source)
