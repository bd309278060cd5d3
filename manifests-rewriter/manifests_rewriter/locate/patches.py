"""Kustomize JSON 6902 patch files: the containers and images their operations write.

A patch file referenced by a kustomization (`patches: - path: x.yaml` with a `target:`) is a
list of operations; one that adds or replaces a container, a container list or an image
writes an image that kustomize renders:

    - op: add
      path: /spec/template/spec/initContainers/0
      value: {name: secret-init, image: quay.io/argoproj/argocd:latest}
    - op: replace
      path: /spec/template/spec/containers/0/image
      value: nginx:1.27.1

Such a container is a pod container (pods.in_container_list asks `is_patched_container`), so
its image is found, refused and rewritten as any other; an image written directly as the
value is found here (source "pod"). A visitor of the manifest walk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .document import Walker, pointer, text_of
from .fields import NO_PARTS, ImageField

_CONTAINERS = r"/(?:containers|initContainers|ephemeralContainers)"
_ONE_CONTAINER = re.compile(_CONTAINERS + r"/(?:\d+|-)$")
_CONTAINER_LIST = re.compile(_CONTAINERS + "$")
_IMAGE = re.compile(_CONTAINERS + r"/(?:\d+|-)/image$")
_WRITES = ("add", "replace")


def _operation(cell: tuple | None) -> tuple[str, str] | None:
    """(op, path) when `cell` is an item of a document's top-level list with `op` and `path`."""
    if cell is None or not isinstance(cell[1], int) or cell[0] is None or cell[0][1] is not None:
        return None
    node = cell[2]
    if not isinstance(node, MappingNode):
        return None
    keys = {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}
    op, path = text_of(keys.get("op")), text_of(keys.get("path"))
    return (op, path) if op in _WRITES and path else None


def is_patched_container(cell: tuple) -> bool:
    """Whether the mapping at `cell` is a container a JSON 6902 operation writes: the `value` of
    an operation on `.../containers/N` (or `-`), or an item of the list it gives `.../containers`."""
    parent = cell[0]
    if parent is None:
        return False
    if parent[1] == "value":
        operation = _operation(parent[0])
        return operation is not None and isinstance(parent[2], SequenceNode) and bool(
            _CONTAINER_LIST.search(operation[1]))
    if cell[1] == "value":
        operation = _operation(parent)
        return operation is not None and bool(_ONE_CONTAINER.search(operation[1]))
    return False


def visit(w: Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]], ctx: tuple,
          flags: int) -> Iterator[ImageField]:
    """An image written directly as an operation's value (`path: .../containers/0/image`)."""
    if "op" not in pairs or "value" not in pairs:
        return
    operation = _operation(cell)
    value = pairs["value"][1]
    if operation is None or not isinstance(value, ScalarNode) or not _IMAGE.search(operation[1]):
        return
    s = w.scalar(value)
    yield ImageField("pod", index, pointer(cell) + "/value", s.value, s.line, s, NO_PARTS)
