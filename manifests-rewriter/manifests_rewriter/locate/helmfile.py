"""Helmfile: `releases[].values` given inline (maps; file names are the chart pass's) and
`releases[].set` (`--set` names and values), read as Helm values; source "helm". Each release is
recorded for the chart pass: a local chart (`./charts/x`), `repo/name` from `repositories:`
(HTTP or OCI), or `oci://...`. A helmfile that is a Go template is not YAML until helmfile renders
it: it is reported as unreadable by the scan like any template.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import registry
from .document import LINE_BREAK, Walker, pointer, text_of
from .fields import ImageField
from .helm import locate_parameters, parameters_tree
from .release import (
    ChartRef,
    MapSlot,
    Release,
    apply_parameters,
    file_offset,
    indent_unit,
    mapping_slot,
    to_data,
    values_layout,
)

KIND = "HelmfileRelease"


def _get(w: Walker, node: Node | None, key: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    found = w.pairs(node).get(key)
    return found[1] if found else None


def repositories(w: Walker, root: MappingNode) -> dict[str, str]:
    """`repositories:` name -> URL (`oci://host/path` for OCI ones)."""
    found: dict[str, str] = {}
    items = _get(w, root, "repositories")
    for item in items.value if isinstance(items, SequenceNode) else []:
        name, url = text_of(_get(w, item, "name")), text_of(_get(w, item, "url"))
        if name and url:
            oci = (text_of(_get(w, item, "oci")) or "").lower() == "true"
            found[name] = "oci://" + url if oci and "://" not in url else url
    return found


def locate_document(w: Walker, index: int, root: Node) -> Iterator[ImageField]:
    if not isinstance(root, MappingNode):
        return
    releases = _get(w, root, "releases")
    if not isinstance(releases, SequenceNode):
        return
    repos = repositories(w, root) if w.collect is not None else {}
    releases_cell = ((None, None, root), "releases", releases)
    for i, entry in enumerate(releases.value):
        w.count(entry)
        if not isinstance(entry, MappingNode):
            continue
        cell = (releases_cell, i, entry)
        ctx = (KIND, text_of(_get(w, entry, "namespace")), text_of(_get(w, entry, "name")))
        values = _get(w, entry, "values")
        maps: list[MappingNode] = []
        if isinstance(values, SequenceNode):
            values_cell = (cell, "values", values)
            for j, item in enumerate(values.value):
                if isinstance(item, MappingNode):
                    maps.append(item)
                    yield from registry.hand_off("helm-values", w, index, item, (values_cell, j, item), ctx)
        settings = _get(w, entry, "set")
        if isinstance(settings, SequenceNode):
            yield from locate_parameters(w, index, settings, (cell, "set", settings), ctx)
        if w.collect is not None:
            _record(w, index, cell, entry, values, maps, settings, repos, ctx)


def _record(w: Walker, index: int, cell: tuple, entry: MappingNode, values: Node | None, maps: list[MappingNode],
            settings: Node | None, repos: dict[str, str], ctx: tuple) -> None:
    chart_node = _get(w, entry, "chart")
    chart = text_of(chart_node) or ""
    version = text_of(_get(w, entry, "version")) or ""
    base = os.path.dirname(w.collect.filename)
    ref: ChartRef | None = None
    unresolved = ""
    if "{{" in chart:
        unresolved = f"the chart {chart!r} is a template"
    elif chart.startswith("oci://"):
        ref = ChartRef(name=chart.rstrip("/").rsplit("/", 1)[-1], repo=chart, version=version)
    elif chart.startswith((".", "/")) or "/" not in chart:
        ref = ChartRef(path=chart, base=base)
    else:
        repo, _, name = chart.partition("/")
        if repo in repos:
            url = repos[repo]
            ref = ChartRef(name=name, repo=f"{url.rstrip('/')}/{name}" if url.startswith("oci://") else url,
                           version=version)
        else:
            ref = ChartRef(path=chart, base=base)  # a relative directory without ./
    merged: dict[str, Any] = {}
    for item in maps:
        data = to_data(w, item)
        if isinstance(data, dict):
            from ..helmchart import coalesce_tables

            merged = coalesce_tables(data, merged, True)
    files = tuple(text_of(x) or "" for x in values.value if isinstance(x, ScalarNode)) \
        if isinstance(values, SequenceNode) else ()
    release = Release(KIND, ctx[2], ctx[1], index, pointer(cell), (chart_node or entry).start_mark.line + 1, ref,
                      pointer(cell) + "/values", values=merged, value_files=tuple(f for f in files if f),
                      files_base=base, unresolved=unresolved)
    if isinstance(settings, SequenceNode):
        apply_parameters(w, settings, release.values)
    w.collect.releases.append(release)
    if not w.collect.detail:
        return
    column = entry.value[0][0].start_mark.column if entry.value and not entry.flow_style else None
    for item in maps:  # later maps win: their scalars and slots last
        values_layout(w, item, release, indent_unit(w, item, column))
    if not maps:
        slot = _item_slot(w, values) if isinstance(values, SequenceNode) else \
            mapping_slot(w, entry, indent_unit(w, entry, None), wrap=("values",), item=True)
        if slot is not None:
            release.slots[()] = slot
    if isinstance(settings, SequenceNode):  # `set` wins over values: its scalars count, not its maps
        tree, _ = parameters_tree(w, settings)
        slots = dict(release.slots)
        values_layout(w, tree, release, "  ")
        release.slots = slots


def _item_slot(w: Walker, items: SequenceNode) -> MapSlot | None:
    """A new item at the end of a block list of value files."""
    if items.flow_style or not items.value:
        return None
    text = w.text
    first = file_offset(w, items.value[0].start_mark.index)
    last = file_offset(w, items.value[-1].end_mark.index)
    if first is None or last is None:
        return None
    dash = text.rfind("-", 0, first)
    line_start = max(text.rfind("\n", 0, dash), text.rfind("\r", 0, dash)) + 1
    m = LINE_BREAK.search(text, last)
    newline = "\r\n" if "\r\n" in text else "\n"
    if m is None:
        return MapSlot(len(text), " " * (dash - line_start), "  ", newline, item=True, lead=newline)
    return MapSlot(m.end(), " " * (dash - line_start), "  ", m.group(), item=True)
