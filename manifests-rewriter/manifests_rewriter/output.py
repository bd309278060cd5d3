"""What a rewrite says, as black does: "rewrote" vs "would rewrite", one line per image change,
then a summary. Shared by the hook and acr-mirror; lines are yielded with their stream
("out": the diff, "err": everything else) so each CLI prints them its own way."""

from __future__ import annotations

from collections.abc import Iterator

from .files import printable
from .rewrite import RewriteResult


def rewrite_lines(result: RewriteResult, *, write: bool, diff: bool) -> Iterator[tuple[str, str]]:
    for error in result.errors:
        yield "err", f"error: {error}"
    for skipped in result.skipped:
        yield "err", f"skipped: {skipped}"
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
