"""GitOps resources that carry Helm values or Kustomize images inside a manifest, handed to that
format's locator. A visitor of the manifest walk, at object roots only.

- Flux `HelmRelease` (helm.toolkit.fluxcd.io, every API version): `spec.values`.
- Argo CD `Application`, and the template of an `ApplicationSet`: for `spec.source` and each of
  `spec.sources`, `helm.valuesObject`, `helm.values` (YAML in a string: nested.py),
  `helm.parameters` (`--set` names and values: helm.locate_parameters) and `kustomize.images`
  (`name=newName:tag`, `name:tag` strings: the rewrite changes newName, or turns `name:tag` into
  `name=<target>:tag`, so the entry keeps matching the images it renamed).
- k3s/RKE2 `HelmChart` / `HelmChartConfig` (helm.cattle.io): `spec.valuesContent` (a string).
- ConfigMaps and Secrets holding values under a `values*.yaml` key (what Flux `valuesFrom` reads):
  `data`, Secret `stringData`; a Secret's base64 `data` is read but cannot be rewritten in place.

The images found are reported in the namespace the release's pods run in (Flux
`targetNamespace`, Argo CD `destination.namespace`, k3s `targetNamespace`). With locate(collect=),
every release (its chart, values and value sources) and every Flux source object is recorded for
the chart pass (manifests_rewriter.charts): it resolves the chart and reports the default images
the values do not override.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import registry
from .document import TOP, Walker, pointer, text_of
from .fields import ImageField, Insertion, Parts, Scalar, split_name
from .helm import locate_parameters, parameters_tree
from .nested import embedded_documents
from .release import (
    ChartRef,
    Collected,
    MapSlot,
    Release,
    ValuesRef,
    ValuesSource,
    apply_parameters,
    indent_unit,
    mapping_slot,
    to_data,
    values_layout,
)

FLUX_HELM_GROUP = "helm.toolkit.fluxcd.io/"  # every API version: v2beta1, v2beta2, v2
FLUX_SOURCE_GROUP = "source.toolkit.fluxcd.io/"
ARGO_GROUP = "argoproj.io/"
K3S_GROUP = "helm.cattle.io/"
KINDS = frozenset({"HelmRelease", "Application", "ApplicationSet", "HelmChart", "HelmChartConfig", "ConfigMap",
                   "Secret", "HelmRepository", "OCIRepository", "GitRepository"})
VALUES_KEY = re.compile(r"values[\w.-]*\.ya?ml", re.IGNORECASE)

Pairs = Mapping[str, tuple[Node, Node]]


def is_gitops_root(root: Node) -> bool:
    """Whether a document is one of KINDS (read by its `kind`, whatever its text holds)."""
    if not isinstance(root, MappingNode):
        return False
    for key, value in root.value:
        if isinstance(key, ScalarNode) and key.value == "kind":
            return isinstance(value, ScalarNode) and value.value in KINDS
    return False


def visit(w: Walker, index: int, cell: tuple, pairs: Pairs, ctx: tuple, flags: int) -> Iterator[ImageField]:
    if not flags & TOP or ctx[0] not in KINDS:
        return
    api = text_of(pairs.get("apiVersion", (None, None))[1]) or ""
    kind = ctx[0]
    if kind == "HelmRelease" and api.startswith(FLUX_HELM_GROUP):
        yield from _flux(w, index, cell, pairs, ctx)
    elif kind in ("Application", "ApplicationSet") and api.startswith(ARGO_GROUP):
        yield from _argo(w, index, cell, pairs, ctx)
    elif kind in ("HelmChart", "HelmChartConfig") and api.startswith(K3S_GROUP):
        yield from _k3s(w, index, cell, pairs, ctx)
    elif kind in ("ConfigMap", "Secret") and api == "v1":
        yield from _values_object(w, index, cell, pairs, ctx)
    elif kind in ("HelmRepository", "OCIRepository", "GitRepository") and api.startswith(FLUX_SOURCE_GROUP):
        _flux_source(w, index, cell, pairs, ctx)


# ------------------------------------------------------------------------------------- helpers


def _get(w: Walker, node: Node | None, *keys: str) -> Node | None:
    for key in keys:
        if not isinstance(node, MappingNode):
            return None
        found = w.pairs(node).get(key)
        node = found[1] if found else None
    return node


def _text(w: Walker, node: Node | None, *keys: str) -> str | None:
    return text_of(_get(w, node, *keys))


def _collect(w: Walker) -> Collected | None:
    return w.collect  # type: ignore[no-any-return]


def _note(w: Walker, node: Node, message: str) -> None:
    if w.collect is not None:
        w.collect.notes.append((node.start_mark.line + 1, message))


def _values(w: Walker, index: int, node: MappingNode, cell: tuple, ctx: tuple) -> Iterator[ImageField]:
    """A values mapping in the object: the Helm locator reads it, the manifest walk does not."""
    w.claim(node)
    yield from registry.hand_off("helm-values", w, index, node, cell, ctx)


def _string_values(w: Walker, index: int, node: Node, cell: tuple, key: str, ctx: tuple,
                   what: str) -> Iterator[ImageField]:
    """Values written as YAML in a string (`helm.values`, `valuesContent`)."""
    if not isinstance(node, ScalarNode) or not node.value.strip():
        return
    found = embedded_documents(w, node)
    if found is None:
        _note(w, node, f"{what} is not valid YAML (a template?): its images are not checked")
        return
    inner, documents = found
    for i, doc in enumerate(documents):
        if isinstance(doc, MappingNode):
            label = f"{key}|" + (f"#{i}" if i else "")
            yield from registry.hand_off("helm-values", inner, index, doc, (cell, label, doc), ctx)


def _string_data(w: Walker, node: Node) -> Any:
    """The values a string holds (first document), or None."""
    if not isinstance(node, ScalarNode):
        return None
    found = embedded_documents(w, node)
    if found is None or not found[1]:
        return None
    inner, documents = found
    return to_data(inner, documents[0])


def _string_layout(w: Walker, node: Node, release: Release, unit: str) -> None:
    """Scalars and slots of values held in a literal block string (exact spans only)."""
    if not isinstance(node, ScalarNode):
        return
    found = embedded_documents(w, node)
    if found is None or not found[1] or not found[0].embedded.exact:
        return
    inner, documents = found
    if isinstance(documents[0], MappingNode):
        values_layout(inner, documents[0], release, unit)


def _release_line(node: Node | None, fallback: Node) -> int:
    return (node or fallback).start_mark.line + 1


def _recorded(w: Walker, release: Release) -> Collected | None:
    """Add the release to the walk's collection; the collection when it wants the details (where
    values and keys are, for the rewrite), else None."""
    collect = _collect(w)
    if collect is None:
        return None
    collect.releases.append(release)
    return collect if collect.detail else None


def _record(w: Walker, release: Release, values: Node | None, anchor: MappingNode | None, wrap: tuple[str, ...],
            parent_column: int | None) -> None:
    """Add the release; with detail, its values' scalars and where keys may be added (into the
    values, or, when there are none, `wrap` keys into `anchor`)."""
    if _recorded(w, release) is None:
        return
    unit = indent_unit(w, values, parent_column) if isinstance(values, MappingNode) else "  "
    if isinstance(values, MappingNode) and values.value:
        values_layout(w, values, release, unit)
    elif isinstance(values, MappingNode) and values.flow_style:  # `values: {}`
        slot = mapping_slot(w, values, unit)
        if slot is not None:
            release.slots[()] = slot
    elif anchor is not None and values is None:
        unit = indent_unit(w, anchor, 0 if anchor.value else None)
        slot = mapping_slot(w, anchor, unit, wrap=wrap)
        if slot is not None:
            release.slots[()] = slot


# ---------------------------------------------------------------------------------------- Flux


def _flux(w: Walker, index: int, cell: tuple, pairs: Pairs, ctx: tuple) -> Iterator[ImageField]:
    spec = pairs.get("spec")
    if spec is None or not isinstance(spec[1], MappingNode):
        return
    spec_node = spec[1]
    spec_cell = (cell, "spec", spec_node)
    namespace = _text(w, spec_node, "targetNamespace") or ctx[1]
    rctx = (ctx[0], namespace, ctx[2])
    values = _get(w, spec_node, "values")
    if isinstance(values, MappingNode):
        yield from _values(w, index, values, (spec_cell, "values", values), rctx)
    if w.collect is None:
        return
    chart_node = _get(w, spec_node, "chart", "spec", "chart")
    if chart_node is not None:
        source = _get(w, spec_node, "chart", "spec", "sourceRef")
        chart = ChartRef(name=text_of(chart_node) or "", version=_text(w, spec_node, "chart", "spec", "version") or "",
                         source=_source_ref(w, source, ctx[1]))
    else:
        ref = _get(w, spec_node, "chartRef")
        chart = ChartRef(source=_source_ref(w, ref, ctx[1])) if ref is not None else None  # type: ignore[assignment]
    values_from = []
    items = _get(w, spec_node, "valuesFrom")
    for item in items.value if isinstance(items, SequenceNode) else []:
        kind, name = _text(w, item, "kind"), _text(w, item, "name")
        if kind in ("ConfigMap", "Secret") and name:
            values_from.append(ValuesRef(kind, name, _text(w, item, "valuesKey") or "values.yaml",
                                         _text(w, item, "targetPath") or "",
                                         (_text(w, item, "optional") or "").lower() == "true"))
    release = Release("HelmRelease", ctx[2], namespace, index, pointer(cell), _release_line(chart_node, spec_node),
                      chart, pointer(spec_cell) + "/values",
                      values=to_data(w, values) if isinstance(values, MappingNode) else {},
                      values_from=tuple(values_from))
    release.home = ctx[1]
    _record(w, release, values, spec_node, ("values",), spec_node.start_mark.column)


def _source_ref(w: Walker, node: Node | None, namespace: str | None) -> tuple[str, str, str] | None:
    kind, name = _text(w, node, "kind"), _text(w, node, "name")
    if not kind or not name:
        return None
    return kind, _text(w, node, "namespace") or namespace or "", name


def _flux_source(w: Walker, index: int, cell: tuple, pairs: Pairs, ctx: tuple) -> None:
    collect = _collect(w)
    spec = pairs.get("spec")
    if collect is None or spec is None or not isinstance(spec[1], MappingNode):
        return
    data = {key: _text(w, spec[1], key) or "" for key in ("url", "type")}
    ref = _get(w, spec[1], "ref")
    if isinstance(ref, MappingNode):
        data.update({f"ref.{k}": text_of(v) or "" for k, (_, v) in w.pairs(ref).items()})
    collect.sources.append(ValuesSource(ctx[0], ctx[1], ctx[2], index, spec[1].start_mark.line + 1, data))


# ------------------------------------------------------------------------------------- Argo CD


def _argo(w: Walker, index: int, cell: tuple, pairs: Pairs, ctx: tuple) -> Iterator[ImageField]:
    spec = pairs.get("spec")
    if spec is None or not isinstance(spec[1], MappingNode):
        return
    spec_node, spec_cell, name = spec[1], (cell, "spec", spec[1]), ctx[2]
    if ctx[0] == "ApplicationSet":  # the Applications it generates: its template
        template = _get(w, spec_node, "template")
        inner = _get(w, template, "spec")
        if not isinstance(inner, MappingNode):
            return
        name = _text(w, template, "metadata", "name") or name
        spec_cell = ((spec_cell, "template", template), "spec", inner)
        spec_node = inner
    namespace = _text(w, spec_node, "destination", "namespace")
    rctx = (ctx[0], namespace, name)
    sources: list[tuple[tuple, MappingNode]] = []
    source = _get(w, spec_node, "source")
    if isinstance(source, MappingNode):
        sources.append(((spec_cell, "source", source), source))
    many = _get(w, spec_node, "sources")
    if isinstance(many, SequenceNode):
        many_cell = (spec_cell, "sources", many)
        sources += [((many_cell, i, s), s) for i, s in enumerate(many.value) if isinstance(s, MappingNode)]
    for src_cell, src in sources:
        yield from _argo_source(w, index, cell, src_cell, src, rctx, name)


def _argo_source(w: Walker, index: int, cell: tuple, src_cell: tuple, src: MappingNode, ctx: tuple,
                 name: str | None) -> Iterator[ImageField]:
    helm = _get(w, src, "helm")
    helm_cell = (src_cell, "helm", helm)
    values_object = _get(w, helm, "valuesObject")
    values_string = _get(w, helm, "values")
    parameters = _get(w, helm, "parameters")
    if isinstance(values_object, MappingNode):
        yield from _values(w, index, values_object, (helm_cell, "valuesObject", values_object), ctx)
    if values_string is not None:
        yield from _string_values(w, index, values_string, helm_cell, "values", ctx, "helm.values")
    if isinstance(parameters, SequenceNode):
        w.claim(parameters)
        yield from locate_parameters(w, index, parameters, (helm_cell, "parameters", parameters), ctx)
    images = _get(w, src, "kustomize", "images")
    if isinstance(images, SequenceNode):
        kustomize = _get(w, src, "kustomize")
        yield from _argo_images(w, index, (((src_cell, "kustomize", kustomize)), "images", images), images, ctx)
    if w.collect is not None:
        _argo_release(w, index, cell, src_cell, src, helm, values_object, values_string, parameters, ctx, name)


def _argo_images(w: Walker, index: int, cell: tuple, images: SequenceNode, ctx: tuple) -> Iterator[ImageField]:
    """`kustomize.images` strings: `name=newName[:tag|@digest]` renames the images named `name`;
    `name:tag` / `name@digest` only sets their version (a rewrite makes it `name=<target>:tag`)."""
    where = pointer(cell)
    for i, item in enumerate(images.value):
        text = text_of(item)
        if not text or not isinstance(item, ScalarNode):
            continue
        s = w.scalar(item)
        old, eq, new = text.partition("=")
        if eq:
            new_name, _ = split_name(new)
            start = s.start + len(old) + 1
            parts = {"name": _piece(s, s.start, old), "newName": _piece(s, start, new_name)}
            yield ImageField("kustomize", index, f"{where}/{i}", new, s.line, s, Parts(parts),
                             kind=ctx[0], namespace=ctx[1], name=ctx[2])
        else:
            old_name, version = split_name(text)
            if not version:
                continue  # a bare name changes nothing
            insert = Insertion(s.start + len(old_name), "", "", "=")
            yield ImageField("kustomize", index, f"{where}/{i}", text, s.line, s,
                             Parts({"name": _piece(s, s.start, old_name)}), kind=ctx[0], namespace=ctx[1],
                             name=ctx[2], insert=insert)


def _piece(s: Scalar, start: int, value: str) -> Scalar:
    """A part of a string scalar (exact when the whole string is)."""
    return Scalar(start, start + len(value), value, s.line, s.style, s.exact)


def _argo_release(w: Walker, index: int, cell: tuple, src_cell: tuple, src: MappingNode, helm: Node | None,
                  values_object: Node | None, values_string: Node | None, parameters: Node | None, ctx: tuple,
                  name: str | None) -> None:
    chart_name = _text(w, src, "chart")
    path = _text(w, src, "path")
    repo = _text(w, src, "repoURL") or ""
    if not chart_name and (path is None or helm is None and not _maybe_chart_path(w, path)):
        return  # a plain directory or a kustomization, not a chart (a path with helm settings may be one)
    revision = _text(w, src, "targetRevision") or ""
    if chart_name:  # a registry without a scheme is OCI (Argo CD's `enableOCI` repositories)
        oci = repo if repo.startswith("oci://") else ("oci://" + repo if "://" not in repo and repo else "")
        chart = ChartRef(name=chart_name, repo=f"{oci.rstrip('/')}/{chart_name}" if oci else repo, version=revision)
    else:
        chart = ChartRef(path=path or "", base=os.path.dirname(w.collect.filename) if w.collect else "")
    values: dict[str, Any] = {}
    if isinstance(values_object, MappingNode):
        values = to_data(w, values_object) or {}
    elif values_string is not None:
        values = _string_data(w, values_string) or {}
    if isinstance(parameters, SequenceNode):
        apply_parameters(w, parameters, values)
    files = _get(w, helm, "valueFiles")
    value_files = tuple(text_of(f) or "" for f in files.value) if isinstance(files, SequenceNode) else ()
    helm_cell = (src_cell, "helm", helm)
    at = pointer(helm_cell) + ("/valuesObject" if values_object is not None or values_string is None else "/values")
    release = Release(ctx[0], name, ctx[1], index, pointer(src_cell), _release_line(_get(w, src, "chart"), src),
                      chart, at, values=values if isinstance(values, dict) else {},
                      value_files=tuple(f for f in value_files if f and "$" not in f))
    release.optional = not chart_name and helm is None
    if not chart_name and not path:
        release.unresolved = "no chart and no path"
    if _recorded(w, release) is None:
        return
    column = src.value[0][0].start_mark.column if src.value and not src.flow_style else None
    if isinstance(values_object, MappingNode) or values_string is None:
        anchor = helm if isinstance(helm, MappingNode) else src
        wrap = ("valuesObject",) if isinstance(helm, MappingNode) else ("helm", "valuesObject")
        if isinstance(values_object, MappingNode) and (values_object.value or values_object.flow_style):
            _record_layout(w, release, values_object, column)
        else:
            slot = mapping_slot(w, anchor, indent_unit(w, anchor, column), wrap=wrap)
            if slot is not None:
                release.slots[()] = slot
    else:
        _string_layout(w, values_string, release, "  ")
    if isinstance(parameters, SequenceNode):  # parameters win over values: their scalars count, not their maps
        tree, _ = parameters_tree(w, parameters)
        slots = dict(release.slots)
        values_layout(w, tree, release, "  ")
        release.slots = slots


def _record_layout(w: Walker, release: Release, values: MappingNode, column: int | None) -> None:
    if values.value:
        values_layout(w, values, release, indent_unit(w, values, column))
    else:
        slot = mapping_slot(w, values, "  ")
        if slot is not None:
            release.slots[()] = slot


def _maybe_chart_path(w: Walker, path: str) -> bool:
    """Whether an Argo CD `path:` without helm settings may be a chart: the chart pass checks
    for a Chart.yaml; only recorded when collecting."""
    return bool(path) and w.collect is not None


# ----------------------------------------------------------------------------------------- k3s


def _k3s(w: Walker, index: int, cell: tuple, pairs: Pairs, ctx: tuple) -> Iterator[ImageField]:
    spec = pairs.get("spec")
    if spec is None or not isinstance(spec[1], MappingNode):
        return
    spec_node, spec_cell = spec[1], (cell, "spec", spec[1])
    namespace = _text(w, spec_node, "targetNamespace") or ctx[1]
    rctx = (ctx[0], namespace, ctx[2])
    content = _get(w, spec_node, "valuesContent")
    if content is not None:
        yield from _string_values(w, index, content, spec_cell, "valuesContent", rctx, "spec.valuesContent")
    chart = _text(w, spec_node, "chart")
    collect = _collect(w)
    if collect is None or ctx[0] != "HelmChart" or not chart:
        return
    repo = _text(w, spec_node, "repo") or ""
    if "%{" in chart or chart.endswith(".tgz") and "://" in chart:
        ref = ChartRef(path=chart.rsplit("/", 1)[-1]) if chart.endswith(".tgz") else None
        unresolved = "" if ref else "the chart URL is a k3s placeholder"
    else:
        ref = ChartRef(name=chart, repo=repo, version=_text(w, spec_node, "version") or "")
        unresolved = ""
    release = Release(ctx[0], ctx[2], namespace, index, pointer(cell), _release_line(_get(w, spec_node, "chart"),
                                                                                      spec_node),
                      ref, pointer(spec_cell) + "/valuesContent",
                      values=(_string_data(w, content) or {}) if content is not None else {}, unresolved=unresolved)
    collect.releases.append(release)
    if collect.detail and content is not None:
        _string_layout(w, content, release, "  ")


# ------------------------------------------------------------------------- values in ConfigMaps


def _values_object(w: Walker, index: int, cell: tuple, pairs: Pairs, ctx: tuple) -> Iterator[ImageField]:
    """`values*.yaml` keys of a ConfigMap (`data`) or Secret (`stringData`; base64 `data` is
    read, never rewritten): the values a Flux `valuesFrom` gives a release."""
    data: dict[str, Any] = {}
    for section in ("data", "stringData") if ctx[0] == "Secret" else ("data",):
        holder = pairs.get(section)
        if holder is None or not isinstance(holder[1], MappingNode):
            continue
        holder_cell = (cell, section, holder[1])
        for key, (_, found) in w.pairs(holder[1]).items():
            if not VALUES_KEY.fullmatch(key) or not isinstance(found, ScalarNode):
                continue
            node = _decoded(found) if ctx[0] == "Secret" and section == "data" else found
            if node is None:
                continue
            yield from _string_values(w, index, node, holder_cell, key, ctx, f"{ctx[0]} {section}.{key}")
            if w.collect is not None:
                data[key] = _string_data(w, node)
    collect = _collect(w)
    if collect is not None and data:
        collect.sources.append(ValuesSource(ctx[0], ctx[1], ctx[2], index, cell[2].start_mark.line + 1, data))


def _decoded(node: ScalarNode) -> ScalarNode | None:
    """A Secret's base64 value as a plain string node at the same place (never exact: the
    rewrite cannot change the encoded text)."""
    try:
        text = base64.b64decode(node.value, validate=False).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return ScalarNode(node.tag, text, node.start_mark, node.end_mark, style='"')


__all__ = ["ChartRef", "MapSlot", "visit"]
