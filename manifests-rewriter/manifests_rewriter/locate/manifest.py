"""Kubernetes manifests: one walk per document, its mappings handed to the pod-spec visitor
(pods), the hint visitor (hints), the GitOps hand-offs (gitops) and kustomize JSON 6902 patch
operations that write an image (patches). A subtree without
anything image-like is not entered (document.may_matter)."""

from __future__ import annotations

from collections.abc import Iterator

from yaml.nodes import Node, SequenceNode

from . import gitops, hints, patches, pods
from .document import Visitor, Walker, may_matter, walk
from .fields import ImageField

VISITORS: tuple[Visitor, ...] = (pods.visit, hints.visit, gitops.visit)
LIST_VISITORS = (*VISITORS, patches.visit)  # a document that is a list may be a JSON 6902 patch


def locate_document(w: Walker, index: int, root: Node) -> Iterator[ImageField]:
    relevant = w.relevant if w.relevant is not None else []
    # a GitOps object without an image word still matters: a release that overrides nothing runs
    # its chart's images, a Flux source or a values Secret says what releases use
    if may_matter(relevant, root) or gitops.is_gitops_root(root):
        yield from walk(w, index, root, LIST_VISITORS if isinstance(root, SequenceNode) else VISITORS,
                        relevant=relevant)
