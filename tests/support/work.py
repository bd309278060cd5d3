"""Work counted in steps, not seconds: what reading YAML did before it refused (or finished).

A wall-clock bound fails on a loaded machine and passes on a fast one whatever the code does;
these counts are the same on every machine. The three kinds of work a YAML read does:

- `events`: parser events the nesting pre-check consumed (`yaml.parse`, before composing);
- `nodes`: nodes of the documents composed (`yaml.compose_all`; the first walk visits each once);
- `visits`: work charged to the alias budget (`Walker.count`: collections reached again through
  aliases, merged entries copied), the work a YAML bomb multiplies.

`counting(limit)` patches those three places for the duration; past `limit` steps it raises
WorkLimit at once, so a broken guard fails the test instead of hanging it. It also measures
`read`: the bytes this process read meanwhile (Linux's /proc/self/io `rchar`, every read(2)),
so "refused before reading it" is a number too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from manifests_rewriter.locate import document


class WorkLimit(AssertionError):
    pass


@dataclass
class Work:
    limit: int
    events: int = 0
    nodes: int = 0
    visits: int = 0
    read: int = 0  # bytes read by the process (set when counting ends)

    @property
    def steps(self) -> int:
        return self.events + self.nodes + self.visits

    def add(self, kind: str, n: int) -> None:
        setattr(self, kind, getattr(self, kind) + n)
        if self.steps > self.limit:
            raise WorkLimit(f"more than {self.limit:,} steps ({self})")


def bytes_read() -> int:
    """Bytes this process has read so far through read(2) and friends (files, pipes, sockets)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def _graph_size(roots: list[Any]) -> int:
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            stack.extend(x for pair in node.value for x in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return len(seen)


@contextlib.contextmanager
def counting(limit: int) -> Iterator[Work]:
    work = Work(limit)
    parse, compose_all, count = yaml.parse, yaml.compose_all, document.Walker.count

    def counted_parse(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for event in parse(*args, **kwargs):
            work.add("events", 1)
            yield event

    def counted_compose_all(*args: Any, **kwargs: Any) -> Iterator[Any]:
        documents = list(compose_all(*args, **kwargs))
        work.add("nodes", _graph_size(documents))
        return iter(documents)

    def counted_count(self: document.Walker, node: Any, n: int = 1) -> None:
        work.add("visits", n)
        count(self, node, n)

    before = bytes_read()
    try:
        with mock.patch.object(document.yaml, "parse", counted_parse), \
                mock.patch.object(document.yaml, "compose_all", counted_compose_all), \
                mock.patch.object(document.Walker, "count", counted_count):
            yield work
    finally:
        work.read = bytes_read() - before
