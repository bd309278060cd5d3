"""Pod specs: the `image` of every item of a `containers` / `initContainers` /
`ephemeralContainers` list in ANY mapping (Pods, workload templates, CronJob job templates,
`List` items, custom resources with pod templates). Source "pod". A visitor of the manifest walk.

Each field carries the labels of the pod it runs in (what Azure Policy's labelSelector is matched
against): a Pod's own `metadata.labels`, or the `metadata.labels` of the pod template (`template:`)
holding the pod spec. Anywhere else (a custom resource's own spec) they are not known: None.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .document import NULL_TAG, Walker, pointer, text_of
from .fields import NO_PARTS, ImageField, LabelMap
from .patches import is_patched_container

CONTAINER_KEYS = ("containers", "initContainers", "ephemeralContainers")
CONTAINER_SET = frozenset(CONTAINER_KEYS)


def in_container_list(cell: tuple) -> bool:
    """Whether the mapping at `cell` is an item of a container list (or a container a kustomize
    JSON 6902 patch writes: patches.py)."""
    parent = cell[0]
    if parent is not None and parent[1] in CONTAINER_SET and isinstance(parent[2], SequenceNode):
        return True
    return parent is not None and (cell[1] == "value" or parent[1] == "value") and is_patched_container(cell)


def visit(w: Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]], ctx: tuple,
          flags: int) -> Iterator[ImageField]:
    if not in_container_list(cell):
        return
    image = pairs.get("image")
    if image is not None and isinstance(image[1], ScalarNode):
        s = w.scalar(image[1])
        yield ImageField("pod", index, pointer(cell) + "/image", s.value, s.line, s, NO_PARTS,
                         kind=ctx[0], namespace=ctx[1], name=ctx[2], container=text_of(pairs.get("name", (None, None))[1]),
                         labels=pod_labels(w, cell))


def pod_labels(w: Walker, cell: tuple) -> LabelMap | None:
    """The labels of the pod whose container sits at `cell` (an item of a container list):
    `metadata.labels` of the mapping holding the pod spec, when that mapping is a Pod or a pod
    template. None when unknown (elsewhere, or labels that are not plain strings)."""
    spec_cell = cell[0][0] if cell[0] is not None else None
    if spec_cell is None or spec_cell[1] != "spec" or spec_cell[0] is None:
        return None
    holder_cell = spec_cell[0]
    holder = holder_cell[2]
    if not isinstance(holder, MappingNode):
        return None
    pairs = w.pairs(holder)
    is_pod = text_of(pairs["kind"][1]) == "Pod" if "kind" in pairs else False
    if not is_pod and holder_cell[1] != "template":
        return None
    meta = pairs.get("metadata")
    if meta is None:
        return LabelMap()
    if not isinstance(meta[1], MappingNode):
        return None if meta[1].tag != NULL_TAG else LabelMap()
    labels = w.pairs(meta[1]).get("labels")
    if labels is None or labels[1].tag == NULL_TAG:
        return LabelMap()
    if not isinstance(labels[1], MappingNode):
        return None
    found: dict[str, str] = {}
    for key, (_, value) in w.pairs(labels[1]).items():
        text = text_of(value)
        if text is None:
            return None
        found[key] = text
    return LabelMap(found)
