"""What a rewrite says, as black does: "rewrote" vs "would rewrite", one line per image change,
then a summary. Shared by the hook and acr-mirror; lines are yielded with their stream
("out": the diff, "err": everything else) so each CLI prints them its own way."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from .files import printable
from .rewrite import RewriteResult, Skipped

T = TypeVar("T")


def by_cause(items: Iterable[T], cause: Callable[[T], str]) -> dict[str, list[T]]:
    """Items grouped by their cause, in the order first seen: a report says each cause once (a
    registry that cannot be reached is one line, not one per image)."""
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(cause(item), []).append(item)
    return groups


def first_few(names: Sequence[str], shown: int = 3) -> str:
    """A group of names on one line: "a, b, c and 5 more"."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def counted(names: Sequence[str], noun: str) -> str:
    """Many names of one cause on one line: "8 images (a, b, c and 5 more)"."""
    return f"{len(names)} {noun} ({first_few(names)})"


def skipped_lines(skipped: Sequence[Skipped]) -> Iterator[str]:
    """One line per reason, naming the first few references skipped for it."""
    for reason, same in by_cause(skipped, lambda item: item.reason).items():
        if len(same) == 1:
            yield f"skipped: {same[0]}"
        else:
            names = counted([f"{s.file}:{s.line} {s.image}" for s in same], "references")
            yield printable(f"skipped: {names}: {reason}")


def rewrite_lines(result: RewriteResult, *, write: bool, diff: bool) -> Iterator[tuple[str, str]]:
    for error in result.errors:
        yield "err", f"error: {error}"
    for line in skipped_lines(result.skipped):
        yield "err", line
    for unchecked in result.unchecked:  # what could not be checked (a chart not found): never silent
        yield "err", f"warning: {printable(str(unchecked))}"
    for note in result.notes:
        yield "err", f"note: {printable(note)}"
    for planned in result.changed:
        if diff:
            yield "out", planned.diff()
        verb = "rewrote" if write and planned.source.display in result.written else "would rewrite"
        yield "err", f"{verb} {printable(planned.source.display)}"
        for change in planned.changes:
            yield "err", f"  line {change.line}: {printable(change.old)} -> {printable(change.new)}"
    changed = len(result.changed)
    unchanged = len(result.files) - changed
    verb = "rewritten" if write else "would be rewritten"
    yield "err", (f"{changed} file{'s' * (changed != 1)} {verb}, {unchanged} left unchanged"
                  f"{f', {len(result.errors)} with errors' if result.errors else ''}.")
