"""Helm values files: split image maps (`registry`/`repository`/`image`/`tag`/`digest`/`sha`),
with `global.imageRegistry` / `global.image.registry`, and plain `image: "repo:tag"` strings.
Source "helm"; image maps without a repository (cert-manager's `imageRegistry`/
`imageNamespace`/`name`) are hints. The values may be a whole file (`locate_document`) or a
subtree another locator hands over (`locate_subtree`: a Flux HelmRelease's `spec.values`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal
from functools import partial

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode

from ..reference import try_parse
from .document import MARKED, NULL_TAG, NUMBER_TAGS, STR_TAG, TOP, Walker, pointer, text_of, walk
from .fields import NO_PARTS, ImageField, Parts
from .pods import in_container_list
from .pods import visit as pod_visit

SPLIT_KEYS = ("registry", "repository", "image", "name", "tag", "digest", "sha")
NOT_IMAGE_KEYS = {"imagepullpolicy", "imagepullsecrets", "pullpolicy"}
# keys naming one piece of a reference, not a whole one (`imageRegistry: quay.io` would
# otherwise parse as the image docker.io/library/quay.io)
PIECE_SUFFIXES = ("registry", "namespace", "tag", "tags", "digest", "sha", "policy",
                   "secret", "secrets", "repository", "version", "name", "pullsecrets")


def _helm_globals(w: Walker, root: Node) -> dict[str, Node]:
    """`global.imageRegistry` and `global.image.registry` scalars, when set (non-empty), and
    the `global` and `global.image` mappings themselves (under "node.global", "node.image")."""
    found: dict[str, Node] = {}
    if not isinstance(root, MappingNode):
        return found
    for key in ("imageRegistry", "imageNamespace"):  # cert-manager's top-level pieces
        piece = w.pairs(root).get(key)
        if piece is not None and text_of(piece[1]):
            found["top." + key] = piece[1]  # type: ignore[assignment]
    glob = w.pairs(root).get("global")
    if glob is None or not isinstance(glob[1], MappingNode):
        return found
    found["node.global"] = glob[1]
    gpairs = w.pairs(glob[1])
    reg = gpairs.get("imageRegistry")
    if reg is not None and text_of(reg[1]):
        found["imageRegistry"] = reg[1]  # type: ignore[assignment]
    image = gpairs.get("image")
    if image is not None and isinstance(image[1], MappingNode):
        found["node.image"] = image[1]
        reg = w.pairs(image[1]).get("registry")
        if reg is not None and text_of(reg[1]):
            found["image.registry"] = reg[1]  # type: ignore[assignment]
    return found


def go_format_number(text: str) -> str:
    """How Helm renders a numeric value: values become float64 and templates print
    them with Go's %v (shortest digits, exponent form from 1e+06 and below 1e-04),
    so `tag: 1.10` renders "1.1" and `tag: 20180801` renders "2.0180801e+07"."""
    try:
        number = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return text
    value = float(number)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    exp = len(ds) + int(exponent) - 1  # decimal exponent of the first digit
    head = "-" if sign else ""
    if exp < -4 or exp >= 6:  # Go's shortest %g switches to exponent form at precision 6
        mantissa = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{head}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp >= len(ds) - 1:
        return head + ds + "0" * (exp - len(ds) + 1)
    if exp >= 0:
        return head + ds[: exp + 1] + "." + ds[exp + 1 :]
    return head + "0." + "0" * (-exp - 1) + ds


def _helm_text(node: Node) -> str:
    """A value as a Helm template prints it."""
    if not isinstance(node, ScalarNode) or node.tag == NULL_TAG:
        return ""
    if node.tag in NUMBER_TAGS and not node.style:
        return go_format_number(node.value)
    return node.value


def _is_plain_image_key(key: str, value: str) -> bool:
    lower = key.lower()
    if "image" not in lower or lower in NOT_IMAGE_KEYS or lower.endswith(PIECE_SUFFIXES):
        return False
    return lower.endswith("image") or "/" in value or ":" in value


def _visit(w: Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]], ctx: tuple, flags: int,
           globals_: Mapping[str, Node]) -> Iterator[ImageField]:
    path = pointer(cell)
    key = cell[1] if isinstance(cell[1], str) else ""
    # an item of a container list in values reports its image as a pod field (pods.visit)
    taken: set[str] = {"image"} if in_container_list(cell) and isinstance(pairs.get("image", (0, 0))[1], ScalarNode) \
        else set()
    scalars = {k: pairs[k][1] for k in SPLIT_KEYS if k in pairs and isinstance(pairs[k][1], ScalarNode)}
    own_image_key = "image" in key.lower()
    under_image = bool(flags & MARKED) or own_image_key
    is_global = cell[2] is globals_.get("node.global") or cell[2] is globals_.get("node.image")
    split = (
        not is_global
        and not taken
        # `name` alone makes an image map only under its own image key (cert-manager's
        # `image: {name: ...}`), not e.g. an item of a list under an image key
        and bool(scalars.keys() & {"repository", "image"} or ("name" in scalars and own_image_key))
        and (under_image or ("repository" in scalars and "tag" in scalars))
    )
    if split:
        yield from _helm_split(w, index, path, scalars, globals_, ctx)
        taken.update(scalars)
    if is_global:
        return
    for k, (_, v) in pairs.items():
        if k in taken or not isinstance(v, ScalarNode) or v.tag != STR_TAG:
            continue
        value = v.value
        if _is_plain_image_key(k, value) and try_parse(value) is not None:
            s = w.scalar(v)
            yield ImageField("helm", index, f"{path}/{k.replace('~', '~0').replace('/', '~1')}", value, s.line,
                             s, NO_PARTS, kind=ctx[0], namespace=ctx[1], name=ctx[2])


def _helm_split(w: Walker, index: int, path: str, scalars: Mapping[str, Node],
                globals_: Mapping[str, Node], ctx: tuple) -> Iterator[ImageField]:
    """A split image map. The registry in effect: `global.imageRegistry` when set (it
    overrides per-image registries in bitnami and kube-prometheus-stack charts), else the
    map's own `registry`, else `global.image.registry` (ingress-nginx)."""
    repo_key = "repository" if _helm_text(scalars.get("repository")) else "image"  # type: ignore[arg-type]
    repo_node = scalars.get(repo_key)
    repository = _helm_text(repo_node) if repo_node is not None else ""
    parts = {k: w.scalar(v) for k, v in scalars.items()}  # type: ignore[arg-type]
    if not repository:
        # cert-manager style: the chart builds the name from imageRegistry/imageNamespace/name;
        # nothing safe to rewrite here, but the image will be refused: warn.
        name = scalars.get("name")
        if name is not None and _helm_text(name):
            s = parts["name"]
            pieces = [_helm_text(globals_[k]) for k in ("top.imageRegistry", "top.imageNamespace") if k in globals_]
            value = "/".join(p.strip("/") for p in [*pieces, _helm_text(name)])
            if "tag" in scalars and _helm_text(scalars["tag"]):
                value += ":" + _helm_text(scalars["tag"])
            yield ImageField("hint", index, path, value, s.line, None, Parts(parts),
                             kind=ctx[0], namespace=ctx[1], name=ctx[2],
                             note="Helm image map without a repository: the chart composes the image "
                                  "(e.g. from imageRegistry/imageNamespace/name); rewrite those values by hand")
        return
    registry_node: Node | None = globals_.get("imageRegistry")
    note = "registry from global.imageRegistry, shared by every image of the chart" if registry_node else None
    if registry_node is None and "registry" in scalars and _helm_text(scalars["registry"]):
        registry_node = scalars["registry"]
    if registry_node is None and "image.registry" in globals_:
        registry_node = globals_["image.registry"]
        note = "registry from global.image.registry, shared by every image of the chart"
    registry = _helm_text(registry_node) if registry_node is not None else ""
    if registry_node is not None:
        parts["registry"] = w.scalar(registry_node)  # type: ignore[arg-type]
    elif "registry" in parts:
        del parts["registry"]  # an empty registry is not in effect
    tag = _helm_text(scalars["tag"]) if "tag" in scalars else ""
    digest = _helm_text(scalars["digest"]) if "digest" in scalars else ""
    if not digest and "sha" in scalars and _helm_text(scalars["sha"]):
        digest = "sha256:" + _helm_text(scalars["sha"])  # kube-prometheus-stack: `@sha256:{{ .sha }}`
    value = f"{registry.rstrip('/')}/{repository}" if registry else repository
    if tag:
        value += f":{tag}"
    if digest:
        value += f"@{digest}"
    line = parts[repo_key].line
    yield ImageField("helm", index, path, value, line, None, Parts(parts),
                     kind=ctx[0], namespace=ctx[1], name=ctx[2], note=note)


def _image_key(key: str) -> bool:
    """Maps under such a key are image maps by position (`image:`, `controllerImage:`...)."""
    lower = key.lower()
    return "image" in lower and lower not in NOT_IMAGE_KEYS


def locate_subtree(w: Walker, index: int, root: Node, cell: tuple | None, ctx: tuple) -> Iterator[ImageField]:
    """The images of a values tree at `cell` (None: the document itself). Values are walked
    whole: a map qualifies by its parent's key, which lies outside the map's own text."""
    visitor = partial(_visit, globals_=_helm_globals(w, root))
    yield from walk(w, index, root, (pod_visit, visitor), cell=cell, ctx=ctx, flags=TOP if cell is None else 0,
                    mark=_image_key)


def locate_document(w: Walker, index: int, root: Node) -> Iterator[ImageField]:
    return locate_subtree(w, index, root, None, (None, None, None))
