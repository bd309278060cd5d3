"""Pod specs: the `image` of every item of a `containers` / `initContainers` /
`ephemeralContainers` list in ANY mapping (Pods, workload templates, CronJob job templates,
`List` items, custom resources with pod templates). Source "pod". A visitor of the manifest walk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from yaml.nodes import Node, ScalarNode, SequenceNode

from .document import Walker, pointer, text_of
from .fields import NO_PARTS, ImageField
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
                         kind=ctx[0], namespace=ctx[1], name=ctx[2], container=text_of(pairs.get("name", (None, None))[1]))
