"""Find container image fields in YAML text, with the exact span of each value.

What is found (DESIGN.md "Rewriting rules"), one locator per format:

- `manifest` (manifest.py): source "pod" (pods.py), the `image` of every item of a
  `containers` / `initContainers` / `ephemeralContainers` list in any mapping; source "hint"
  (hints.py), images that become pod images later, reported as warnings; GitOps resources
  that embed another format are handed to its locator (gitops.py: Flux HelmRelease values,
  Argo CD Application/ApplicationSet Helm values, parameters and Kustomize images, k3s HelmChart
  valuesContent, values in ConfigMaps and Secrets).
- `helm-values` (helm.py): Helm values files; source "helm".
- `kustomization` (kustomize.py): the top-level `images:` entries; source "kustomize".
- `compose` (compose.py): `services.*.image`; source "compose".
- `helmfile` (helmfile.py): `releases[].values` given inline and `releases[].set`; source "helm".

GitOps resources (gitops.py), Helmfile releases and Kustomize `helmCharts` (helmcharts.py) are
also recorded as Helm releases when a caller passes `collect=` (locate.release.Collected): the
chart pass (manifests_rewriter.charts) reports the chart default images they run.

Which locator reads a file: kinds.file_kind (by name, then by content). The span-keeping walk
all of them use: document.py. Speed: composing (C) plus an iterative walk that skips subtrees
whose text has nothing image-like beats constructing the documents with
yaml.load_all(CSafeLoader).
"""

from __future__ import annotations

from yaml.nodes import MappingNode, SequenceNode

from . import compose, helm, helmfile, kustomize, manifest
from .document import (
    MAX_NODES,
    RELEVANT,
    LocateError,
    Walker,
    YamlError,
    bom_offset,
    compose_documents,
    gc_paused,
    make_scalar,
)
from .fields import ImageField, Insertion, Parts, Scalar
from .kinds import file_kind
from .pods import CONTAINER_KEYS
from .registry import LOCATORS, Locator
from .release import Collected, Release

LOCATORS.update({
    "manifest": Locator(manifest.locate_document),
    "helm-values": Locator(helm.locate_document, helm.locate_subtree),
    "kustomization": Locator(kustomize.locate_document),
    "compose": Locator(compose.locate_document),
    "helmfile": Locator(helmfile.locate_document),
})
FILE_KINDS = tuple(LOCATORS)

__all__ = ["CONTAINER_KEYS", "FILE_KINDS", "LOCATORS", "MAX_NODES", "Collected", "ImageField", "Insertion", "LocateError",
           "Parts", "Release", "Scalar", "YamlError", "compose_documents", "file_kind", "locate", "make_scalar"]


def locate(text: str, *, filename: str = "", content: str | None = None, collect: Collected | None = None,
           max_nodes: int = MAX_NODES) -> list[ImageField]:
    """Every image field of the text, in document order. `content` forces the file kind
    (one of FILE_KINDS) instead of guessing it from `filename` and the documents. `collect`
    gathers the Helm releases and values sources the file declares (for the chart pass).

    Raises YamlError when the text is not valid YAML, LocateError for bombs, excessive
    nesting, or more than `max_nodes` nodes (scan.max_file_nodes)."""
    with gc_paused():  # linear time on large files (document.py)
        return _locate(text, filename, content, collect, max_nodes)


def _locate(text: str, filename: str, content: str | None, collect: Collected | None,
            max_nodes: int) -> list[ImageField]:
    documents = compose_documents(text, max_nodes)
    kind = content or file_kind(filename, documents)
    if kind not in LOCATORS:
        raise ValueError(f"unknown file kind {kind!r}")
    offset = bom_offset(text)
    has_merge = "<<" in text
    relevant = [m.start() - offset for m in RELEVANT.finditer(text)] if kind == "manifest" else None
    locator = LOCATORS[kind]
    found: list[ImageField] = []
    if collect is not None:
        collect.filename = filename
    for index, root in enumerate(documents):
        if isinstance(root, MappingNode | SequenceNode):
            walker = Walker(text, offset, has_merge, relevant)
            walker.collect = collect
            found.extend(locator.document(walker, index, root))
    found.sort(key=lambda f: (f.document, f.line, f.path))
    return found
