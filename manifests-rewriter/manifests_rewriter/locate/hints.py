"""Hints: images outside pod specs that a controller will turn into pod images later.

Any `image` scalar outside a pod's container lists and outside `status` (a CR's
`spec.image`, Tekton steps/sidecars, Argo Workflows `container`/`script`/`sidecars`, old
Knative `container`), `--x-image=REF` arguments and `*IMAGE*` environment variables of
containers, and ConfigMap settings such as Knative's `queue-sidecar-image`. Reported as
warnings (source "hint"), never rewritten. A visitor of the manifest walk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..reference import try_parse
from .document import BOOL_TAG, NULL_TAG, STATUS, TOP, Walker, pointer, text_of
from .fields import NO_PARTS, ImageField
from .helm import NOT_IMAGE_KEYS, PIECE_SUFFIXES
from .pods import in_container_list

_ARG_IMAGE = re.compile(r"--?[\w.-]*image[\w.-]*=(\S+)", re.IGNORECASE)


def visit(w: Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]], ctx: tuple,
          flags: int) -> Iterator[ImageField]:
    in_containers = in_container_list(cell)
    if in_containers or "image" in pairs:
        yield from _hints(w, index, cell, pairs, ctx, flags, in_containers)
    elif flags & TOP and ctx[0] == "ConfigMap" and "data" in pairs:
        yield from _configmap_hints(w, index, cell, pairs["data"][1], ctx)


def _hint_note(ctx: tuple, path: str) -> str:
    kind = ctx[0] or "object"
    if "/templates/" in path:
        return f"{kind} template image: the workflow controller runs it in a pod"
    if "/steps/" in path or "/sidecars/" in path:
        return f"{kind} step/sidecar image: it becomes a pod container when the task runs"
    if path == "/spec/image":
        return f"{kind} spec.image: the operator creates pods with this image"
    return f"{kind} image field outside a pod spec: a controller may create pods with it"


def _hints(w: Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]],
           ctx: tuple, flags: int, in_containers: bool) -> Iterator[ImageField]:
    if flags & STATUS:
        return
    image = pairs.get("image")
    container_like = in_containers
    if not in_containers and image is not None and isinstance(image[1], ScalarNode):
        s = w.scalar(image[1])
        if s.value.strip() and image[1].tag not in (NULL_TAG, BOOL_TAG):
            path = pointer(cell) + "/image"
            yield ImageField("hint", index, path, s.value, s.line, s, NO_PARTS, kind=ctx[0],
                             namespace=ctx[1], name=ctx[2], container=text_of(pairs.get("name", (None, None))[1]),
                             note=_hint_note(ctx, path))
            container_like = True
    if not container_like:
        return
    container = text_of(pairs.get("name", (None, None))[1])
    # `--sidecar-image=REF` arguments and `*IMAGE*` environment variables of containers
    for key in ("args", "command"):
        seq = pairs.get(key)
        if seq is None or not isinstance(seq[1], SequenceNode):
            continue
        for i, item in enumerate(seq[1].value):
            text = text_of(item)
            m = _ARG_IMAGE.fullmatch(text) if text else None
            if text and m and try_parse(m.group(1)) is not None:
                s = w.scalar(item)  # type: ignore[arg-type]
                yield ImageField("hint", index, f"{pointer(cell)}/{key}/{i}", m.group(1), s.line, s, NO_PARTS,
                                 kind=ctx[0], namespace=ctx[1], name=ctx[2], container=container,
                                 note=f"argument {text.split('=', 1)[0]}: the program may start pods with this image")
    env = pairs.get("env")
    if env is not None and isinstance(env[1], SequenceNode):
        for i, item in enumerate(env[1].value):
            if not isinstance(item, MappingNode):
                continue
            var = w.pairs(item)
            name = text_of(var.get("name", (None, None))[1]) or ""
            value = var.get("value")
            text = text_of(value[1]) if value else None
            if "IMAGE" in name.upper() and text and ("/" in text or ":" in text) and try_parse(text):
                s = w.scalar(value[1])  # type: ignore[index,arg-type]
                yield ImageField("hint", index, f"{pointer(cell)}/env/{i}/value", text, s.line, s, NO_PARTS,
                                 kind=ctx[0], namespace=ctx[1], name=ctx[2], container=container,
                                 note=f"environment variable {name}: an operator may start pods with this image")


def _configmap_hints(w: Walker, index: int, cell: tuple, data: Node, ctx: tuple) -> Iterator[ImageField]:
    """ConfigMap settings such as Knative's `queue-sidecar-image`: a controller injects
    that image into pods it creates."""
    if not isinstance(data, MappingNode):
        return
    for key, (_, value) in w.pairs(data).items():
        lower = key.lower()
        text = text_of(value)
        if ("image" in lower and lower not in NOT_IMAGE_KEYS and not lower.endswith(PIECE_SUFFIXES)
                and text and "/" in text and try_parse(text) is not None):
            s = w.scalar(value)  # type: ignore[arg-type]
            yield ImageField("hint", index, f"{pointer(cell)}/data/{key.replace('~', '~0').replace('/', '~1')}",
                             text, s.line, s, NO_PARTS, kind=ctx[0], namespace=ctx[1], name=ctx[2],
                             note=f"ConfigMap setting {key}: a controller puts this image into the pods it creates")
