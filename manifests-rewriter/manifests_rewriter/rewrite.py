"""Rewrite refused image references to their targets, file by file.

Each file is planned in memory first (edits spliced into the decoded text), then written
atomically, and only if its bytes on disk are still the ones that were read. Which target
a reference gets, and whether it may be rewritten at all, is decided by `resolve`: the
offline hook uses the naming template alone; acr-mirror adds "verified in the target"
and digest pinning.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .files import FileError, SourceFile, WriteError, printable, write_atomic
from .locate import MAX_NODES, Collected, LocateError, YamlError, locate
from .policy import Policy
from .reference import ImageRef, ReferenceError, parse
from .scan import read_sources, release_views
from .splice import Edit, SpliceError, apply_edits, edits_for

if TYPE_CHECKING:
    from .charts import ChartSource

# source reference -> target reference, or a string saying why it must not be rewritten
Resolve = Callable[[ImageRef], "ImageRef | str"]


@dataclass(frozen=True)
class ImageChange:
    line: int
    old: str
    new: str


@dataclass(frozen=True)
class Skipped:
    file: str
    line: int
    image: str
    reason: str

    def __str__(self) -> str:
        return printable(f"{self.file}:{self.line}: {self.image}: {self.reason}")


@dataclass
class FileRewrite:
    source: SourceFile
    new_text: str
    changes: list[ImageChange]

    @property
    def changed(self) -> bool:
        return self.new_text != self.source.text

    def diff(self) -> str:
        """A unified diff `git apply` accepts when run where the rewrite ran (see diff_names)."""
        old, new = diff_names(self.source.display)
        lines = []
        for line in difflib.unified_diff(_lines(self.source.text), _lines(self.new_text), fromfile=old, tofile=new):
            if not line.endswith("\n"):  # a file's last line without a line break
                line += "\n\\ No newline at end of file\n"
            lines.append(line)
        return "".join(lines)


def diff_names(display: str) -> tuple[str, str]:
    """The diff's file names: git's `a/path` and `b/path`, relative to the current directory and
    normalized (git apply refuses `a/./x` and `a/../x`), for a file below the current
    directory; the absolute path on both sides for any other (GNU patch -p0 applies that)."""
    relative = os.path.relpath(os.path.abspath(display))
    if relative == os.pardir or relative.startswith(os.pardir + os.sep):
        name = os.path.abspath(display)
        return name, name
    name = relative.replace(os.sep, "/")
    return f"a/{name}", f"b/{name}"


def _lines(text: str) -> list[str]:
    """Lines as git sees them: split after each \\n only (str.splitlines also splits at \\r,
    U+2028 and others, which a patch would not reproduce)."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


@dataclass
class RewriteResult:
    files: list[FileRewrite] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    unchecked: list[FileError] = field(default_factory=list)  # what could not be checked (a chart not found)

    @property
    def changed(self) -> list[FileRewrite]:
        return [f for f in self.files if f.changed]


def plan_file(source: SourceFile, policy: Policy, resolve: Resolve, result: RewriteResult,
              views: dict[tuple[int, str], Any] | None = None, roots: Iterable[str] = (),
              content: str | None = None, max_nodes: int = MAX_NODES) -> FileRewrite | None:
    """The file's edits. `views`: its Helm releases with their charts resolved, by (document,
    pointer): the chart's default images get overrides in the release's values (charts.py).
    `content`: read the file as that kind (a release's value file, whatever its name)."""
    collect = Collected(detail=True) if views else None
    try:
        fields = locate(source.text, filename=source.display, content=content, collect=collect, max_nodes=max_nodes)
    except YamlError as exc:
        what = "" if isinstance(exc, LocateError) else "not valid YAML, "  # a bomb or a huge file is valid YAML
        result.errors.append(FileError(source.display, f"{what}left unchanged: {exc}"))
        return None
    edits: list[Edit] = []
    changes: list[ImageChange] = []
    releases = None  # the chart defaults' overrides (charts.py); the fields they cover give way
    if collect is not None and views:
        from .charts import plan_releases

        releases = plan_releases(collect.releases, views, policy, resolve, roots)
        edits.extend(releases.edits)
        changes.extend(ImageChange(*change) for change in releases.changes)
        result.skipped.extend(Skipped(source.display, *skipped) for skipped in releases.skipped)
    for fld in fields:
        if releases is not None and releases.covers(fld):
            continue
        if fld.source == "hint" or not policy.decide_field(fld).finding:
            continue
        try:
            ref = parse(fld.value)
        except ReferenceError as exc:
            result.skipped.append(Skipped(source.display, fld.line, fld.value, f"not rewritten: {exc}"))
            continue
        target = resolve(ref)
        if isinstance(target, str):
            result.skipped.append(Skipped(source.display, fld.line, fld.value, target))
            continue
        if not policy.allows(str(target)):
            result.skipped.append(Skipped(source.display, fld.line, fld.value,
                                          f"target {target} would still be refused by imageRegex"))
            continue
        try:
            new_edits = edits_for(fld, target)
        except SpliceError as exc:
            result.skipped.append(Skipped(source.display, fld.line, fld.value, f"not rewritten: {exc}"))
            continue
        edits.extend(new_edits)
        changes.append(ImageChange(fld.line, fld.value, str(target)))
    try:
        new_text = apply_edits(source.text, edits)
    except SpliceError as exc:
        result.errors.append(FileError(source.display, f"left unchanged: {exc}"))
        return None
    return FileRewrite(source, new_text, changes)


def rewrite_paths(paths: Iterable[str], policy: Policy, resolve: Resolve, *, write: bool = True,
                  max_bytes: int = 16 * 1024 * 1024, exclude: tuple[str, ...] = (),
                  charts: ChartSource | None = None, views: dict[tuple[str, int, str], Any] | None = None,
                  max_nodes: int = MAX_NODES) -> RewriteResult:
    """Plan every file; with `write`, write the changed ones atomically. Helm releases get
    overrides for their charts' default images: from `views` (a scan's), or resolved here
    through `charts`."""
    paths = list(paths)
    result = RewriteResult()
    refused: dict[str, FileError] = {}
    if views is None and charts is not None:
        resolved = release_views(paths, charts, max_bytes=max_bytes, exclude=exclude, max_nodes=max_nodes)
        views = resolved.views
        result.unchecked.extend(resolved.unchecked)
        refused = {e.file: e for e in resolved.errors}  # not valid YAML, or refused: read once, reported once
    by_file: dict[str, dict[tuple[int, str], Any]] = {}
    for (file, document, pointer), view in (views or {}).items():
        by_file.setdefault(file, {})[(document, pointer)] = view
    as_values: set[str] = set()
    if views:
        from .charts import values_files

        as_values = values_files(views.values())
    for source in read_sources(paths, max_bytes, exclude, result.errors):
        if source.display in refused:
            result.errors.append(refused[source.display])
            continue
        content = "helm-values" if as_values and os.path.abspath(source.display) in as_values else None
        planned = plan_file(source, policy, resolve, result, by_file.get(source.display), paths, content, max_nodes)
        if planned is None:
            continue
        result.files.append(planned)
        if write and planned.changed:
            try:
                write_atomic(source.path, planned.new_text.encode("utf-8"), expected=source.raw, tree=source.tree)
            except WriteError as exc:
                result.errors.append(FileError(source.display, str(exc)))
            except OSError as exc:
                result.errors.append(FileError(source.display, f"cannot write: {exc.strerror or exc}"))
            else:
                result.written.append(source.display)
    return result
