"""YAML held in a string: Argo CD `helm.values`, k3s `HelmChart.spec.valuesContent`, a ConfigMap's
`values.yaml` key. The string is composed on its own and walked like any document; every Scalar
is mapped back to the characters of the file, so a rewrite splices inside the string and every
other byte (the block's indentation included) stays.

Only a literal block scalar (`|`, `|-`, `|+`) maps back: its content lines are the inner text with
the block's indentation in front. Any other string (quoted, folded, plain, or a block with an
explicit indentation indicator) is still read, but its Scalars are not exact: the images are
reported and the rewrite refuses them ("edit by hand").
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import replace

from yaml.nodes import Node, ScalarNode

from .document import LINE_BREAK, Walker, YamlError, _skip_properties, compose_documents, make_scalar
from .fields import Scalar


class Embedded:
    """Where the inner text's characters sit in the file: `outer(i)` for an inner offset."""

    def __init__(self, text: str, offset: int, node: ScalarNode) -> None:
        self.inner = node.value
        self.starts: list[int] = []  # inner offset of each inner line
        self.outer_starts: list[int] = []  # file offset of the same line's first character
        self.outer_lines: list[int] = []  # 1-based file line of each inner line
        self.indent = ""  # the block's indentation, as written in front of each content line
        self.exact = node.style == "|" and self._map(text, offset, node)
        self.line = node.start_mark.line + 1

    def _map(self, text: str, offset: int, node: ScalarNode) -> bool:
        start = node.start_mark.index + offset
        header = _skip_properties(text, start, node.end_mark.index + offset)
        m = LINE_BREAK.search(text, header)
        if m is None or any(c.isdigit() for c in text[header:m.start()].split("#")[0]):
            return False  # no content, or an explicit indentation indicator: not mapped
        lines = self.inner.split("\n")
        first = next((x for x in lines if x), "")
        pos = m.end()
        # the indentation: the spaces before the first non-empty content line
        probe = pos
        while True:
            stop = LINE_BREAK.search(text, probe)
            line = text[probe:stop.start() if stop else len(text)]
            if line.strip(" ") or stop is None:
                break
            probe = stop.end()
        width = len(line) - len(line.lstrip(" "))
        if first and line[width:] != first:
            return False
        self.indent = " " * width
        line_no = text.count("\n", 0, pos) + 1 if "\r" not in text else len(LINE_BREAK.findall(text, 0, pos)) + 1
        inner_at = 0
        for content in lines:
            stop = LINE_BREAK.search(text, pos)
            end = stop.start() if stop else len(text)
            at = pos + width if end - pos >= width else end
            if content and text[at:at + len(content)] != content:
                return False
            self.starts.append(inner_at)
            self.outer_starts.append(at)
            self.outer_lines.append(line_no)
            inner_at += len(content) + 1
            if stop is None:
                break
            pos = stop.end()
            line_no += 1
        return True

    def outer(self, i: int) -> int:
        k = bisect_right(self.starts, i) - 1
        return self.outer_starts[k] + (i - self.starts[k])

    def outer_line(self, inner_line: int) -> int:
        """The file's 1-based line of a 1-based inner line."""
        return self.outer_lines[min(inner_line, len(self.outer_lines)) - 1] if self.outer_lines else inner_line

    def scalar(self, s: Scalar, outer: Scalar) -> Scalar:
        """An inner Scalar in the file's coordinates (not exact when the string does not map)."""
        if not self.exact or not self.starts:
            return replace(s, start=outer.start, end=outer.end, line=outer.line, exact=False)
        start = self.outer(s.start)
        end = start + (s.end - s.start)
        exact = s.exact and self.outer(max(s.start, s.end - 1)) == end - (1 if s.end > s.start else 0)
        return Scalar(start, end, s.value, self.outer_line(s.line), s.style, exact)


class EmbeddedWalker(Walker):
    """A Walker over the inner text whose Scalars are in the file's coordinates."""

    def __init__(self, embedded: Embedded, outer: Scalar, outer_text: str) -> None:
        super().__init__(embedded.inner, 0, "<<" in embedded.inner)
        self.embedded = embedded
        self.outer = outer
        self.outer_text = outer_text

    def scalar(self, node: ScalarNode) -> Scalar:
        found = self._scalars.get(id(node))
        if found is None:
            inner = make_scalar(node, self.text, 0)
            found = self._scalars[id(node)] = self.embedded.scalar(inner, self.outer)
        return found

    def offset_of(self, inner: int) -> int | None:
        """A file offset for an inner offset, None when the string does not map."""
        return self.embedded.outer(inner) if self.embedded.exact and self.embedded.starts else None


def embedded_documents(w: Walker, node: ScalarNode) -> tuple[EmbeddedWalker, list[Node]] | None:
    """The inner documents of a string scalar and a walker for them; None when the string is
    not YAML (a Go template in an ApplicationSet, say). Raises LocateError for bombs."""
    try:
        documents = compose_documents(node.value)
    except YamlError as exc:
        if type(exc) is not YamlError:
            raise
        return None
    embedded = Embedded(w.text, w.offset, node)
    return EmbeddedWalker(embedded, w.scalar(node), w.text), [d for d in documents if d is not None]
