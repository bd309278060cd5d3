"""GitOps resources that carry another format inside a manifest, handed to that format's
locator: a Flux `HelmRelease`'s `spec.values` is a Helm values tree. A visitor of the
manifest walk, at object roots only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from yaml.nodes import MappingNode, Node

from . import registry
from .document import TOP, Walker, text_of
from .fields import ImageField

FLUX_HELM_GROUP = "helm.toolkit.fluxcd.io/"  # every API version: v2beta1, v2beta2, v2


def visit(w: Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]], ctx: tuple,
          flags: int) -> Iterator[ImageField]:
    if not flags & TOP or ctx[0] != "HelmRelease":
        return
    if not (text_of(pairs.get("apiVersion", (None, None))[1]) or "").startswith(FLUX_HELM_GROUP):
        return
    spec = pairs.get("spec")
    if spec is None or not isinstance(spec[1], MappingNode):
        return
    spec_cell = (cell, "spec", spec[1])
    values = w.pairs(spec[1]).get("values")
    if values is not None and isinstance(values[1], MappingNode):
        yield from registry.hand_off("helm-values", w, index, values[1], (spec_cell, "values", values[1]), ctx)
