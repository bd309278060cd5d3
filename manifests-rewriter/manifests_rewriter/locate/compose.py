"""Compose files: `services.*.image` (source "compose")."""

from __future__ import annotations

from collections.abc import Iterator

from yaml.nodes import MappingNode, Node, ScalarNode

from .document import Walker
from .fields import NO_PARTS, ImageField


def locate_document(w: Walker, index: int, root: Node) -> Iterator[ImageField]:
    if not isinstance(root, MappingNode):
        return
    services = w.pairs(root).get("services")
    if services is None or not isinstance(services[1], MappingNode):
        return
    for service, (_, body) in w.pairs(services[1]).items():
        w.count(body)
        if not isinstance(body, MappingNode):
            continue
        image = w.pairs(body).get("image")
        if image is None or not isinstance(image[1], ScalarNode):
            continue
        s = w.scalar(image[1])
        escaped = service.replace("~", "~0").replace("/", "~1")
        yield ImageField("compose", index, f"/services/{escaped}/image", s.value, s.line, s, NO_PARTS,
                         name=service)
