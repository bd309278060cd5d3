"""Helm releases declared in files, as the locators find them: which chart, which values, and
where a rewrite may add keys to those values.

Flux `HelmRelease`, Argo CD `Application`/`ApplicationSet`, Helmfile releases, Kustomize
`helmCharts`, k3s `HelmChart` (and a chart's own values files, see manifests_rewriter.charts)
each give a `Release`. The chart pass (manifests_rewriter.charts) resolves the chart, merges the
release's values over the chart's defaults and reports the images the release runs that its
values do not set; `rewrite` adds the overrides at the release's `slots`.

Everything here is plain data (picklable: a parallel scan sends it between processes); nodes
never leave the locator.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .document import LINE_BREAK, Walker
from .fields import Scalar
from .nested import EmbeddedWalker

ValuesPath = tuple[str, ...]
CHART_VALUES = "chart values"  # a values file next to its Chart.yaml: the chart's own release


@dataclass(frozen=True)
class ChartRef:
    """The chart a release installs. One of: `path` (a chart directory or .tgz, relative to
    `base`), `repo` + `name` (an HTTP Helm repository; or `oci://host/path/name`, the chart's
    own repository, `name` its last element), `source` (a Flux sourceRef, resolved in the chart
    pass)."""

    name: str = ""
    repo: str = ""
    version: str = ""  # a version or a semver range; "" = the newest
    path: str = ""
    base: str = ""
    source: tuple[str, str, str] | None = None  # (kind, namespace, name)

    def describe(self) -> str:
        if self.path:
            return f"chart {self.path}"
        where = self.repo.rstrip("/")
        if where.startswith("oci://"):
            text = f"{where}/{self.name}" if self.name and not where.endswith("/" + self.name) else where
        else:
            text = f"{self.name} from {where}" if where else self.name
        if self.source and not where:
            text = f"{self.name + ' ' if self.name else ''}from {self.source[0]} " \
                   f"{'/'.join(x for x in self.source[1:] if x)}"
        return f"chart {text}" + (f" {self.version}" if self.version else "")


@dataclass(frozen=True)
class ValuesRef:
    """A Flux `valuesFrom` entry: values kept in a ConfigMap or Secret."""

    kind: str
    name: str
    key: str = "values.yaml"
    target_path: str = ""
    optional: bool = False


@dataclass(frozen=True)
class MapSlot:
    """Where keys can be added to a mapping of a release's values: at `offset`, block lines with
    `indent` (one step deeper: `unit`), or inside a flow mapping (`flow`: "{}" empty, "," not).
    `wrap`: keys to create first (the values are not there yet); `item`: the new mapping is an
    item of a list (Helmfile `values:`); `lead`: text before the block (a line break at the
    end of a file without one)."""

    offset: int
    indent: str
    unit: str = "  "
    newline: str = "\n"
    flow: str = ""
    wrap: ValuesPath = ()
    item: bool = False
    lead: str = ""


@dataclass
class Release:
    """One Helm release declared in a file."""

    kind: str
    name: str | None
    namespace: str | None
    document: int
    path: str  # JSON pointer of the object (or the entry) that declares it
    line: int
    chart: ChartRef | None
    values_at: str  # JSON pointer of its values (where they are, or would be added)
    values: dict[str, Any] = field(default_factory=dict)  # inline values, merged as the tool merges them
    value_files: tuple[str, ...] = ()  # files merged below the inline values, relative to files_base
    files_base: str | None = None  # None: the chart's own directory (Argo CD valueFiles)
    values_from: tuple[ValuesRef, ...] = ()
    unresolved: str = ""  # why the chart cannot be known (a template placeholder, say)
    home: str | None = None  # the object's own namespace (where its valuesFrom objects are)
    optional: bool = False  # a release only if its chart path holds a chart (an Argo CD `path:`)
    file: str = ""  # set by the scan
    # with Collected.detail (rewrite): the values' scalars by path, and where keys may be added
    scalars: dict[ValuesPath, Scalar] = field(default_factory=dict)
    slots: dict[ValuesPath, MapSlot] = field(default_factory=dict)

    def describe(self) -> str:
        name = "/".join(x for x in (self.namespace, self.name) if x)
        return f"{self.kind} {name}".strip()


@dataclass
class ValuesSource:
    """An object other files' releases refer to: a ConfigMap/Secret holding values (`data`: key ->
    values), or a Flux HelmRepository/OCIRepository/GitRepository (`data`: url, type, ref)."""

    kind: str
    namespace: str | None
    name: str | None
    document: int
    line: int
    data: dict[str, Any] = field(default_factory=dict)
    file: str = ""


@dataclass
class Collected:
    """What a locate() call gathers besides image fields (locate(..., collect=)). `detail`: also
    the scalars and insertion points of every release's values (a rewrite needs them)."""

    detail: bool = False
    filename: str = ""
    releases: list[Release] = field(default_factory=list)
    sources: list[ValuesSource] = field(default_factory=list)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (line, message)


# ------------------------------------------------------------------------------ values as data


def to_data(w: Walker, node: Node | None) -> Any:
    """A node as the Python value a YAML loader would give (merge keys resolved, map keys as
    strings the way Helm sees them), without touching the node graph. Iterative (values may nest
    as deep as the composer allows); a collection inside itself (a recursive anchor) is cut there;
    alias re-visits count against the walk budget."""
    if node is None:
        return None
    if isinstance(node, ScalarNode):
        return _scalar_value(node)
    root: list[Any] = [None]
    # (node, container to fill, key or index in it, ids of the collections above)
    stack: list[tuple[Node, Any, Any, frozenset[int]]] = [(node, root, 0, frozenset())]
    while stack:
        current, parent, slot, above = stack.pop()
        if isinstance(current, ScalarNode):
            parent[slot] = _scalar_value(current)
        elif id(current) in above:
            parent[slot] = None  # recursive anchor
        elif isinstance(current, SequenceNode):
            w.count(current, len(current.value))
            parent[slot] = items = [None] * len(current.value)
            inner = above | {id(current)}
            stack.extend((child, items, i, inner) for i, child in enumerate(current.value))
        elif isinstance(current, MappingNode):
            pairs = w.pairs(current)
            w.count(current, len(pairs))
            parent[slot] = mapping = dict.fromkeys(str(k) for k in pairs)
            inner = above | {id(current)}
            stack.extend((child, mapping, str(key), inner) for key, (_, child) in pairs.items())
        else:
            parent[slot] = None
    return root[0]


def _scalar_value(node: ScalarNode) -> Any:
    constructor = yaml.SafeLoader.yaml_constructors.get(node.tag)
    if constructor is None or node.tag == "tag:yaml.org,2002:str":
        return node.value
    try:
        return constructor(_constructor(), node)
    except (yaml.YAMLError, ValueError, TypeError):
        return node.value


@functools.cache
def _constructor() -> yaml.SafeLoader:
    return yaml.SafeLoader("")


def set_path(tree: dict[str, Any], path: ValuesPath, value: Any) -> None:
    """Set `value` at `path`, creating maps (a scalar in the way is replaced, as `--set` does)."""
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[path[-1]] = value


def split_set_path(name: str) -> ValuesPath:
    """`a.b\\.c.d` -> ("a", "b.c", "d"): a Helm `--set` name (Argo CD parameters, Helmfile `set`)."""
    keys, current, escaped = [], [], False
    for char in name:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            keys.append("".join(current))
            current = []
        else:
            current.append(char)
    keys.append("".join(current))
    return tuple(keys)


def apply_parameters(w: Walker, items: SequenceNode, values: dict[str, Any]) -> None:
    """Argo CD parameters over the values, typed as `helm --set` types them (`forceString`: kept)."""
    for item in items.value:
        name, value = _item(w, item, "name"), _item_node(w, item, "value")
        if not name or not isinstance(value, ScalarNode):
            continue
        text = value.value
        typed: Any = text
        if (_item(w, item, "forceString") or "").lower() != "true":
            if re.fullmatch(r"-?(0|[1-9][0-9]*)", text):
                typed = int(text)
            elif text in ("true", "false"):
                typed = text == "true"
            elif text == "null":
                typed = None
        set_path(values, split_set_path(name), typed)


def _item_node(w: Walker, node: Node, key: str) -> Node | None:
    found = w.pairs(node).get(key) if isinstance(node, MappingNode) else None
    return found[1] if found else None


def _item(w: Walker, node: Node, key: str) -> str | None:
    found = _item_node(w, node, key)
    return found.value if isinstance(found, ScalarNode) and found.tag != "tag:yaml.org,2002:null" else None


# ------------------------------------------------------------------------- scalars and slots


def file_offset(w: Walker, index: int) -> int | None:
    """The file offset of a mark index of `w`'s text (None: inside a string that does not map)."""
    if isinstance(w, EmbeddedWalker):
        return w.offset_of(index)
    return index + w.offset


def _last_leaf(node: Node) -> Node:
    while isinstance(node, MappingNode | SequenceNode) and node.value and not node.flow_style:
        last = node.value[-1]
        node = last[1] if isinstance(node, MappingNode) else last
    return node


def _text(w: Walker) -> str:
    return w.outer_text if isinstance(w, EmbeddedWalker) else w.text


def mapping_slot(w: Walker, node: MappingNode, unit: str, *, wrap: ValuesPath = (), item: bool = False,
                 indent_of: Node | None = None) -> MapSlot | None:
    """Where keys can be added to `node` (None when that place cannot be found exactly)."""
    text = _text(w)
    newline = "\r\n" if "\r\n" in text else "\n"
    if node.flow_style:
        end = file_offset(w, node.end_mark.index)
        if end is None:
            return None
        close = text.rfind("}", 0, end)
        prev = close - 1
        while prev >= 0 and text[prev] in " \t\r\n":
            prev -= 1
        if close < 0 or prev < 0:
            return None
        if text[prev] == "{":
            return MapSlot(close, "", unit, newline, "{}", wrap)
        return MapSlot(prev + 1, "", unit, newline, ",", wrap)
    if not node.value:
        return None
    first = indent_of if indent_of is not None else node.value[0][0]
    key_at = file_offset(w, first.start_mark.index)
    leaf = _last_leaf(node)
    end = file_offset(w, leaf.end_mark.index)
    if key_at is None or end is None:
        return None
    line_start = max(text.rfind("\n", 0, key_at), text.rfind("\r", 0, key_at)) + 1
    indent = " " * (key_at - line_start)
    if isinstance(leaf, ScalarNode) and leaf.style in ("|", ">") and text[end - 1:end] in ("\n", "\r"):
        return MapSlot(end, indent, unit, newline, "", wrap, item)
    m = LINE_BREAK.search(text, end)
    if m is None:
        return MapSlot(len(text), indent, unit, newline, "", wrap, item, lead=newline)
    return MapSlot(m.end(), indent, unit, m.group(), "", wrap, item)


def indent_unit(w: Walker, node: MappingNode, parent_column: int | None) -> str:
    """The file's indentation step, as this mapping shows it (2 when it cannot tell)."""
    if node.flow_style or not node.value or parent_column is None:
        return "  "
    column = node.value[0][0].start_mark.column
    step = column - parent_column
    return " " * step if 1 <= step <= 8 else "  "


def values_layout(w: Walker, root: Node, release: Release, unit: str, prefix: ValuesPath = ()) -> None:
    """Record every scalar of a values tree by path, and a slot for every block or flow mapping."""
    stack: list[tuple[Node, ValuesPath]] = [(root, prefix)]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            release.scalars[path] = w.scalar(node)
        elif isinstance(node, MappingNode):
            slot = mapping_slot(w, node, unit)
            if slot is not None:
                release.slots[path] = slot
            for key, (_, value) in w.pairs(node).items():
                stack.append((value, (*path, key)))


def walk_scalars(w: Walker, root: Node) -> Iterator[tuple[ValuesPath, ScalarNode]]:
    """(path, scalar) of every scalar under a values tree."""
    stack: list[tuple[Node, ValuesPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, ScalarNode):
            yield path, node
        elif isinstance(node, MappingNode):
            for key, (_, value) in w.pairs(node).items():
                stack.append((value, (*path, key)))
