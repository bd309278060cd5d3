"""Kubernetes manifests: one walk per document, its mappings handed to the pod-spec visitor
(pods), the hint visitor (hints) and the GitOps hand-offs (gitops). A subtree without
anything image-like is not entered (document.may_matter)."""

from __future__ import annotations

from collections.abc import Iterator

from yaml.nodes import Node

from . import gitops, hints, pods
from .document import Visitor, Walker, may_matter, walk
from .fields import ImageField

VISITORS: tuple[Visitor, ...] = (pods.visit, hints.visit, gitops.visit)


def locate_document(w: Walker, index: int, root: Node) -> Iterator[ImageField]:
    relevant = w.relevant if w.relevant is not None else []
    # a GitOps object without an image word still matters: a release that overrides nothing runs
    # its chart's images, a Flux source or a values Secret says what releases use
    if may_matter(relevant, root) or gitops.is_gitops_root(root):
        yield from walk(w, index, root, VISITORS, relevant=relevant)
