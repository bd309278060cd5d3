"""Kustomize: the `images:` entries of a kustomization (source "kustomize"). A rewrite sets
`newName` (replaced, or inserted after `name` when absent); `name` stays."""

from __future__ import annotations

from collections.abc import Iterator

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .document import LINE_BREAK, Walker, text_of
from .fields import ImageField, Insertion, Parts
from .helmcharts import locate_helm_charts


def _insertion(w: Walker, entry: MappingNode, key_node: Node) -> Insertion:
    """Where to add a key next to `key_node` in `entry`: block style, a new line after
    the key's line with its indentation; flow style, `, key: value` before the `}`."""
    text, off = w.text, w.offset
    if entry.flow_style:
        close = entry.end_mark.index + off - 1
        if not (0 <= close < len(text) and text[close] == "}"):
            close = text.rfind("}", 0, entry.end_mark.index + off)
        prev = close - 1
        while prev >= 0 and text[prev] in " \t\r\n":
            prev -= 1
        if prev >= 0 and text[prev] in ",{":  # `{}` or a trailing comma: no comma to add
            return Insertion(prev + 1, " " if text[prev] == "," else "", "")
        return Insertion(prev + 1, ", ", "")
    key_at = key_node.start_mark.index + off
    line_start = max(text.rfind("\n", 0, key_at), text.rfind("\r", 0, key_at)) + 1
    indent = " " * (key_at - line_start)
    value_node = next(v for k, v in entry.value if k is key_node)
    after = value_node.end_mark.index + off
    m = LINE_BREAK.search(text, after)
    if m is None:  # last line without a line break
        newline = "\r\n" if "\r\n" in text else "\n"
        return Insertion(len(text), newline + indent, "")
    return Insertion(m.end(), indent, m.group())


def locate_document(w: Walker, index: int, root: Node) -> Iterator[ImageField]:
    if not isinstance(root, MappingNode):
        return
    yield from locate_helm_charts(w, index, root)  # helmCharts[].valuesInline: helmcharts.py (issue 10)
    images = w.pairs(root).get("images")
    if images is None or not isinstance(images[1], SequenceNode):
        return
    for i, entry in enumerate(images[1].value):
        w.count(entry)
        if not isinstance(entry, MappingNode):
            continue
        pairs = w.pairs(entry)
        scalars: dict[str, Node] = {k: pairs[k][1] for k in ("name", "newName", "newTag", "digest")
                                    if k in pairs and isinstance(pairs[k][1], ScalarNode)}
        name = text_of(scalars.get("name")) or ""
        if not name:
            continue
        parts = {k: w.scalar(v) for k, v in scalars.items()}  # type: ignore[arg-type]
        value = text_of(scalars.get("newName")) or name
        tag = text_of(scalars.get("newTag")) or ""
        digest = text_of(scalars.get("digest")) or ""
        if tag and not digest:  # kustomize writes only the digest when both are set
            value += f":{tag}"
        if digest:
            value += f"@{digest}"
        insert = None
        if "newName" not in scalars:
            insert = _insertion(w, entry, pairs["name"][0])
        line = parts.get("newName", parts["name"]).line
        yield ImageField("kustomize", index, f"/images/{i}", value, line, None, Parts(parts), insert=insert)
