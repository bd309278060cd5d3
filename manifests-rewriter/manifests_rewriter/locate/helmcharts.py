"""Kustomize `helmCharts:` (the Helm chart inflation generator): each entry's `valuesInline` is
read as Helm values (source "helm"), and the entry is recorded for the chart pass: a chart from
`repo` (HTTP or `oci://`) with `version`, or a local one under `helmGlobals.chartHome`
(default `charts/`) next to the kustomization. kustomize.py calls this for every kustomization.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from yaml.nodes import MappingNode, Node, SequenceNode

from . import registry
from .document import Walker, pointer, text_of
from .fields import ImageField
from .release import ChartRef, Release, indent_unit, mapping_slot, to_data, values_layout

KIND = "HelmChartInflationGenerator"


def _get(w: Walker, node: Node | None, key: str) -> Node | None:
    if not isinstance(node, MappingNode):
        return None
    found = w.pairs(node).get(key)
    return found[1] if found else None


def locate_helm_charts(w: Walker, index: int, root: MappingNode) -> Iterator[ImageField]:
    charts = _get(w, root, "helmCharts")
    if not isinstance(charts, SequenceNode):
        return
    home = text_of(_get(w, _get(w, root, "helmGlobals"), "chartHome")) or "charts"
    charts_cell = ((None, None, root), "helmCharts", charts)
    for i, entry in enumerate(charts.value):
        w.count(entry)
        if not isinstance(entry, MappingNode):
            continue
        cell = (charts_cell, i, entry)
        name = text_of(_get(w, entry, "name")) or ""
        ctx = (KIND, text_of(_get(w, entry, "namespace")), text_of(_get(w, entry, "releaseName")) or name)
        values = _get(w, entry, "valuesInline")
        if isinstance(values, MappingNode):
            w.claim(values)
            yield from registry.hand_off("helm-values", w, index, values, (cell, "valuesInline", values), ctx)
        if w.collect is None or not name:
            continue
        repo = text_of(_get(w, entry, "repo")) or ""
        version = text_of(_get(w, entry, "version")) or ""
        base = os.path.dirname(w.collect.filename)
        if repo.startswith("oci://"):
            repo = f"{repo.rstrip('/')}/{name}"
        chart = ChartRef(name=name, repo=repo, version=version) if repo else \
            ChartRef(path=os.path.join(home, name), base=base)
        files = [text_of(_get(w, entry, "valuesFile")) or ""]
        extra = _get(w, entry, "additionalValuesFiles")
        files += [text_of(x) or "" for x in extra.value] if isinstance(extra, SequenceNode) else []
        release = Release(KIND, ctx[2], ctx[1], index, pointer(cell), entry.start_mark.line + 1, chart,
                          pointer(cell) + "/valuesInline",
                          values=to_data(w, values) if isinstance(values, MappingNode) else {},
                          value_files=tuple(f for f in files if f), files_base=base)
        w.collect.releases.append(release)
        if w.collect.detail:
            column = entry.value[0][0].start_mark.column if entry.value and not entry.flow_style else None
            if isinstance(values, MappingNode) and values.value:
                values_layout(w, values, release, indent_unit(w, values, column))
            elif values is None:
                slot = mapping_slot(w, entry, indent_unit(w, entry, None), wrap=("valuesInline",))
                if slot is not None:
                    release.slots[()] = slot
