"""Helm values files: split image maps (`registry`/`repository`/`image`/`tag`/`digest`/`sha`),
with `global.imageRegistry` / `global.image.registry`, and plain `image: "repo:tag"` strings.
Source "helm"; image maps without a repository (cert-manager's `imageRegistry`/
`imageNamespace`/`name`) are hints. The values may be a whole file (`locate_document`) or a
subtree another locator hands over (`locate_subtree`: a Flux HelmRelease's `spec.values`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import replace
from decimal import Decimal
from functools import partial

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..reference import try_parse
from .document import MARKED, NULL_TAG, NUMBER_TAGS, STR_TAG, TOP, Walker, pointer, text_of, walk
from .fields import NO_PARTS, ImageField, Parts, Scalar
from .pods import in_container_list
from .pods import visit as pod_visit
from .release import CHART_VALUES, ChartRef, Release, split_set_path, to_data, values_layout

SPLIT_KEYS = ("registry", "repository", "image", "name", "tag", "digest", "sha")
NOT_IMAGE_KEYS = {"imagepullpolicy", "imagepullsecrets", "pullpolicy"}
# keys naming one piece of a reference, not a whole one (`imageRegistry: quay.io` would
# otherwise parse as the image docker.io/library/quay.io)
PIECE_SUFFIXES = ("registry", "namespace", "tag", "tags", "digest", "sha", "policy",
                   "secret", "secrets", "repository", "version", "name", "pullsecrets")


class _Globals:
    """The chart-wide keys of a values tree that image maps take pieces from: `global.imageRegistry`,
    `global.systemDefaultRegistry` (Rancher's charts), `global.image.registry` (ingress-nginx),
    `global.image.repository`/`tag` (argo-cd: the image of every component whose own repository is
    empty), cert-manager's top-level `imageRegistry`/`imageNamespace`; only non-empty ones count."""

    def __init__(self, w: Walker, root: Node) -> None:
        self.nodes: dict[str, Node] = {}
        self.global_map: Node | None = None
        self.image_map: Node | None = None
        self.image_cell: tuple | None = None  # where global.image sits, to report it when no map uses it
        self.image_used = False
        if not isinstance(root, MappingNode):
            return
        pairs = w.pairs(root)
        for key in ("imageRegistry", "imageNamespace"):  # cert-manager's top-level pieces
            self._keep(pairs, key, "top." + key)
        glob = pairs.get("global")
        if glob is None or not isinstance(glob[1], MappingNode):
            return
        self.global_map = glob[1]
        gpairs = w.pairs(glob[1])
        self._keep(gpairs, "imageRegistry", "imageRegistry")
        self._keep(gpairs, "systemDefaultRegistry", "systemDefaultRegistry")
        image = gpairs.get("image")
        if image is not None and isinstance(image[1], MappingNode):
            self.image_map = image[1]
            ipairs = w.pairs(image[1])
            for key in ("registry", "repository", "tag"):
                self._keep(ipairs, key, "image." + key)

    def _keep(self, pairs: Mapping[str, tuple[Node, Node]], key: str, name: str) -> None:
        found = pairs.get(key)
        if found is not None and isinstance(found[1], ScalarNode) and _helm_text(found[1]):
            self.nodes[name] = found[1]

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.nodes


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
           globals_: _Globals) -> Iterator[ImageField]:
    path = pointer(cell)
    key = cell[1] if isinstance(cell[1], str) else ""
    # an item of a container list in values reports its image as a pod field (pods.visit)
    taken: set[str] = {"image"} if in_container_list(cell) and isinstance(pairs.get("image", (0, 0))[1], ScalarNode) \
        else set()
    scalars = {k: pairs[k][1] for k in SPLIT_KEYS if k in pairs and isinstance(pairs[k][1], ScalarNode)}
    own_image_key = "image" in key.lower()
    under_image = bool(flags & MARKED) or own_image_key
    is_global = cell[2] is globals_.global_map or cell[2] is globals_.image_map
    has_repository = bool(scalars.keys() & {"repository", "image"})
    versioned = bool(scalars.keys() & {"tag", "digest", "sha"})
    split = (
        not is_global
        and not taken
        # `name` alone makes an image map only under its own image key (cert-manager's
        # `image: {name: ...}`), not e.g. an item of a list under an image key; a tag alone
        # only where global.image.repository names the image (argo-cd's components)
        and (has_repository or own_image_key and ("name" in scalars or versioned and "image.repository" in globals_))
        # under an image key, or a repository/image with its tag beside it (redis-ha's
        # `exporter: {image: ..., tag: ...}`)
        and (under_image or has_repository and versioned)
    )
    if split:
        yield from _helm_split(w, index, path, scalars, globals_, ctx, own_image_key)
        taken.update(scalars)
    if is_global:
        return
    for k, (_, v) in pairs.items():
        if k in taken or not isinstance(v, ScalarNode) or v.tag != STR_TAG:
            continue
        value = v.value
        if _is_plain_image_key(k, value) and "{{" not in value and try_parse(value) is not None:
            s = w.scalar(v)
            yield ImageField("helm", index, f"{path}/{k.replace('~', '~0').replace('/', '~1')}", value, s.line,
                             s, NO_PARTS, kind=ctx[0], namespace=ctx[1], name=ctx[2])


def _version(scalars: Mapping[str, Node]) -> str:
    """`:tag`, `@digest` or both, as the chart's template appends them (`sha`: kube-prometheus-stack's
    `@sha256:{{ .sha }}`)."""
    tag = _helm_text(scalars["tag"]) if "tag" in scalars else ""
    digest = _helm_text(scalars["digest"]) if "digest" in scalars else ""
    if not digest and "sha" in scalars and _helm_text(scalars["sha"]):
        digest = "sha256:" + _helm_text(scalars["sha"])
    return (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _helm_split(w: Walker, index: int, path: str, scalars: dict[str, Node], globals_: _Globals, ctx: tuple,
                own_image_key: bool) -> Iterator[ImageField]:
    """A split image map. The registry in effect: `global.imageRegistry` when set (it
    overrides per-image registries in bitnami and kube-prometheus-stack charts), else Rancher's
    `global.systemDefaultRegistry`, else the map's own `registry`, else `global.image.registry`
    (ingress-nginx). An empty repository under an image key takes `global.image.repository`
    (argo-cd), or is composed from `imageRegistry`/`imageNamespace`/`name` (cert-manager)."""
    repo_key = "repository" if _helm_text(scalars.get("repository")) else "image"  # type: ignore[arg-type]
    repo_node = scalars.get(repo_key)
    repository = _helm_text(repo_node) if repo_node is not None else ""
    parts = {k: w.scalar(v) for k, v in scalars.items()}  # type: ignore[arg-type]
    note = None
    if not repository and own_image_key and "image.repository" in globals_:
        # argo-cd: `{{ default .Values.global.image.repository .Values.server.image.repository }}`
        scalars["repository"] = repo_node = globals_.get("image.repository")  # type: ignore[assignment]
        repo_key, repository = "repository", _helm_text(repo_node)  # type: ignore[arg-type]
        parts["repository"] = w.scalar(repo_node)  # type: ignore[arg-type]
        if not _helm_text(scalars.get("tag")) and "image.tag" in globals_:  # type: ignore[arg-type]
            scalars["tag"] = globals_.get("image.tag")  # type: ignore[assignment]
            parts["tag"] = w.scalar(scalars["tag"])  # type: ignore[arg-type]
        globals_.image_used = True
        note = "repository from global.image.repository, shared by every component of the chart"
    if not repository:
        yield from _composed(w, index, path, scalars, parts, globals_, ctx)
        return
    if "{{" in repository:
        yield ImageField("hint", index, path, repository + _version(scalars), parts[repo_key].line, None,
                         Parts(parts), kind=ctx[0], namespace=ctx[1], name=ctx[2],
                         note="the repository is a template expression: check the values it is rendered from")
        return
    registry_node: Node | None = None
    for name, why in (("imageRegistry", "global.imageRegistry"), ("systemDefaultRegistry", "global.systemDefaultRegistry")):
        if registry_node is None and name in globals_:
            registry_node = globals_.get(name)
            note = f"registry from {why}, shared by every image of the chart"
    if registry_node is None and "registry" in scalars and _helm_text(scalars["registry"]):
        registry_node = scalars["registry"]
    if registry_node is None and "image.registry" in globals_:
        registry_node = globals_.get("image.registry")
        note = "registry from global.image.registry, shared by every image of the chart"
    registry = _helm_text(registry_node) if registry_node is not None else ""
    if registry_node is not None:
        parts["registry"] = w.scalar(registry_node)  # type: ignore[arg-type]
    elif "registry" in parts:
        del parts["registry"]  # an empty registry is not in effect
    value = (f"{registry.rstrip('/')}/{repository}" if registry else repository) + _version(scalars)
    line = parts[repo_key].line if repo_key in parts else parts[next(iter(parts))].line
    yield ImageField("helm", index, path, value, line, None, Parts(parts),
                     kind=ctx[0], namespace=ctx[1], name=ctx[2], note=note)


_PIECE_ROLES = {"top.imageRegistry": "registry", "top.imageNamespace": "namespace"}


def _composed(w: Walker, index: int, path: str, scalars: dict[str, Node], parts: dict[str, Scalar],
              globals_: _Globals, ctx: tuple) -> Iterator[ImageField]:
    """cert-manager: `[imageRegistry/][imageNamespace/]name`, the top-level pieces shared by every
    image of the chart (a rewrite edits them once for all). A map with a `registry` of its own
    as well (a legacy extra prefix) is a warning: rewrite it by hand."""
    name = scalars.get("name")
    if name is None or not _helm_text(name):
        return
    pieces = [k for k in ("top.imageRegistry", "top.imageNamespace") if k in globals_]
    value = "/".join(_helm_text(globals_.get(k)).strip("/") for k in pieces)  # type: ignore[arg-type]
    value = (value + "/" if value else "") + _helm_text(name) + _version(scalars)
    legacy = "registry" in scalars and _helm_text(scalars["registry"])
    parts.pop("repository", None)
    parts.pop("registry", None)
    if not pieces and not legacy:  # `image: {name: <a whole reference>}`: the name is the image
        yield ImageField("helm", index, path, value, parts["name"].line, parts["name"], Parts(parts),
                         kind=ctx[0], namespace=ctx[1], name=ctx[2])
        return
    for k in pieces:
        parts[_PIECE_ROLES[k]] = w.scalar(globals_.get(k))  # type: ignore[arg-type]
    if legacy:
        yield ImageField("hint", index, path, value, parts["name"].line, None, Parts(parts),
                         kind=ctx[0], namespace=ctx[1], name=ctx[2],
                         note="Helm image map with a registry prefix and a composed name; rewrite it by hand")
        return
    yield ImageField("helm", index, path, value, parts["name"].line, None, Parts(parts),
                     kind=ctx[0], namespace=ctx[1], name=ctx[2],
                     note="name composed from imageRegistry/imageNamespace, shared by every image of the chart")


def _image_key(key: str) -> bool:
    """Maps under such a key are image maps by position (`image:`, `controllerImage:`...)."""
    lower = key.lower()
    return "image" in lower and lower not in NOT_IMAGE_KEYS


def locate_subtree(w: Walker, index: int, root: Node, cell: tuple | None, ctx: tuple) -> Iterator[ImageField]:
    """The images of a values tree at `cell` (None: the document itself). Values are walked
    whole: a map qualifies by its parent's key, which lies outside the map's own text."""
    globals_ = _Globals(w, root)
    visitor = partial(_visit, globals_=globals_)
    yield from walk(w, index, root, (pod_visit, visitor), cell=cell, ctx=ctx, flags=TOP if cell is None else 0,
                    mark=_image_key)
    image = globals_.image_map
    if isinstance(image, MappingNode) and "image.repository" in globals_ and not globals_.image_used:
        # values that set only the global image (a release overriding argo-cd's image): the image itself
        scalars = {k: v for k, (_, v) in w.pairs(image).items() if k in SPLIT_KEYS and isinstance(v, ScalarNode)}
        path = pointer(cell) + "/global/image"
        yield from _helm_split(w, index, path, scalars, _Globals(w, None), ctx, True)  # type: ignore[arg-type]


def locate_document(w: Walker, index: int, root: Node) -> Iterator[ImageField]:
    yield from locate_subtree(w, index, root, None, (None, None, None))
    if w.collect is not None and index == 0 and isinstance(root, MappingNode):
        _chart_values(w, index, root)


def _chart_values(w: Walker, index: int, root: MappingNode) -> None:
    """A values file next to its Chart.yaml is a release of that chart (the chart pass fills in
    what its subcharts and templates supply: tags from appVersion, packaged subcharts' images)."""
    directory = os.path.dirname(w.collect.filename)
    if not w.collect.filename or not os.path.isfile(os.path.join(directory or ".", "Chart.yaml")):
        return
    release = Release(CHART_VALUES, os.path.basename(os.path.abspath(directory or ".")), None, index, "", 1,
                      ChartRef(path=".", base=directory or "."), "", values=to_data(w, root) or {})
    w.collect.releases.append(release)
    if w.collect.detail:
        nested = next((v for _, v in root.value if isinstance(v, MappingNode) and v.value and not v.flow_style), None)
        unit = " " * nested.value[0][0].start_mark.column if nested is not None else "  "
        values_layout(w, root, release, unit if 1 <= len(unit) <= 8 else "  ")


# --------------------------------------------------------------------- `--set` style parameters

MAP_TAG = "tag:yaml.org,2002:map"


def parameters_tree(w: Walker, items: SequenceNode) -> tuple[MappingNode, dict[int, int]]:
    """Helm `--set` parameters (`- name: image.repository` / `value: ...`: Argo CD
    `helm.parameters`, Helmfile `set`) as a values tree whose leaves are the `value` scalars
    of the file, and which parameter (by index) each leaf comes from (by its Scalar's start)."""
    root = MappingNode(MAP_TAG, [], items.start_mark, items.end_mark)
    origin: dict[int, int] = {}
    for i, item in enumerate(items.value):
        w.count(item)
        if not isinstance(item, MappingNode):
            continue
        pairs = w.pairs(item)
        name = text_of(pairs.get("name", (None, None))[1])
        value = pairs.get("value")
        if not name or value is None or not isinstance(value[1], ScalarNode):
            continue
        node = root
        keys = split_set_path(name)
        for key in keys[:-1]:
            child = next((v for k, v in node.value if k.value == key), None)
            if not isinstance(child, MappingNode):
                child = MappingNode(MAP_TAG, [], item.start_mark, item.end_mark)
                node.value.append((ScalarNode(STR_TAG, key, item.start_mark, item.end_mark), child))
            node = child
        node.value[:] = [(k, v) for k, v in node.value if k.value != keys[-1]]  # a later parameter wins
        node.value.append((ScalarNode(STR_TAG, keys[-1], item.start_mark, item.end_mark), value[1]))
        origin[w.scalar(value[1]).start] = i
    return root, origin


def locate_parameters(w: Walker, index: int, items: SequenceNode, cell: tuple, ctx: tuple) -> Iterator[ImageField]:
    """The images of `--set` parameters, each reported at the parameter that names its
    repository (or image): `<cell>/<i>/value`."""
    root, origin = parameters_tree(w, items)
    where = pointer(cell)
    for found in locate_subtree(w, index, root, (None, None, root), ctx):
        main = found.scalar or found.parts.get("repository") or found.parts.get("image") or found.parts.get("name")
        i = origin.get(main.start) if main is not None else None
        if i is None:
            continue
        yield replace(found, path=f"{where}/{i}/value")

