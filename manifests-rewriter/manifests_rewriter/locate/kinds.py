"""What a file holds, so the right locator reads it: by name first, then by content."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from yaml.nodes import MappingNode, Node, SequenceNode

from .document import root_pairs, text_of

_COMPOSE_NAME = re.compile(r"(?:compose(?:\.[\w-]+)*|docker-compose[\w.-]*)\.ya?ml", re.IGNORECASE)
_VALUES_NAME = re.compile(r"values[\w.-]*\.ya?ml", re.IGNORECASE)
_KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_HELMFILE_NAME = re.compile(r"helmfile\.ya?ml", re.IGNORECASE)
_NOT_VALUES = ("chart.yaml", "chart.lock", "requirements.yaml", "requirements.lock")


def _is_compose_root(pairs: dict[str, Node]) -> bool:
    services = pairs.get("services")
    if "apiVersion" in pairs or "kind" in pairs or not isinstance(services, MappingNode) or not services.value:
        return False
    # every service a mapping, one at least with its own image or build (others may
    # get theirs through a merge key)
    bodies = [root_pairs(service) for _, service in services.value]
    return all(isinstance(s, MappingNode) for _, s in services.value) and any(
        "image" in keys or "build" in keys for keys in bodies
    )


def _is_helmfile_root(pairs: dict[str, Node]) -> bool:
    """A top-level `releases:` list whose entries name a chart (Helmfile), not a manifest."""
    releases = pairs.get("releases")
    if "apiVersion" in pairs or "kind" in pairs or not isinstance(releases, SequenceNode) or not releases.value:
        return False
    return all(isinstance(r, MappingNode) and {"name", "chart"} <= root_pairs(r).keys() for r in releases.value)


def file_kind(filename: str, documents: Iterable[Node | None] = ()) -> str:
    """What a file holds: "manifest", "helm-values", "kustomization", "compose" or "helmfile".

    By name first (`kustomization.yaml`, `compose.yaml`, `docker-compose*.yml`,
    `values*.yaml`, `helmfile.yaml`, `helmfile.d/*.yaml`), then by content (`kind: Kustomization`;
    a top-level `services:` whose entries have `image`/`build`; a top-level `releases:` list of
    charts); a file next to a `Chart.yaml` that is not a manifest is Helm values too."""
    base = os.path.basename(filename)
    if base in _KUSTOMIZATION_NAMES or base.lower() in _KUSTOMIZATION_NAMES[:2]:
        return "kustomization"
    if "helmfile" in filename.lower() and (_HELMFILE_NAME.fullmatch(base) or
                                           os.path.basename(os.path.dirname(filename)) == "helmfile.d"):
        return "helmfile"
    if _COMPOSE_NAME.fullmatch(base):
        return "compose"
    if _VALUES_NAME.fullmatch(base):
        return "helm-values"
    tops = [root_pairs(d) for d in documents if d is not None]  # each document's top-level keys, once
    for pairs in tops:
        kind = text_of(pairs.get("kind"))
        if kind in ("Kustomization", "Component") and "kustomize" in (text_of(pairs.get("apiVersion")) or ""):
            return "kustomization"
    if tops and all(_is_compose_root(p) for p in tops):
        return "compose"
    if tops and all(_is_helmfile_root(p) for p in tops):  # (a manifest fails on its first document)
        return "helmfile"
    if (
        base
        and base.lower() not in _NOT_VALUES
        and base.lower().endswith((".yaml", ".yml"))
        and not any("apiVersion" in p and "kind" in p for p in tops)
        and os.path.isfile(os.path.join(os.path.dirname(filename) or ".", "Chart.yaml"))  # last: a syscall
    ):
        return "helm-values"
    return "manifest"
