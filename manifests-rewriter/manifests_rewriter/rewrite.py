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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import overlays
from .files import Exclude, FileError, SourceFile, WriteError, as_exclude, printable, templates_notice, write_atomic
from .locate import MAX_NODES, Collected, ImageField, LocateError, YamlError, locate
from .policy import Policy
from .reference import ImageRef, ReferenceError, parse
from .scan import read_sources, release_views
from .splice import Edit, SpliceError, apply_edits, edits_for, entry_edits

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
    notes: list[str] = field(default_factory=list)  # what the user should know, neither a failure nor a warning

    @property
    def changed(self) -> list[FileRewrite]:
        return [f for f in self.files if f.changed]


@dataclass
class FilePlan:
    """One file planned: its rewrite (None when it cannot be), its image fields, what was skipped."""

    source: SourceFile
    rewrite: FileRewrite | None
    fields: list[ImageField] | None
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)


def plan_file(source: SourceFile, policy: Policy, resolve: Resolve,
              decisions: Mapping[overlays.Key, overlays.Decision] | None = None, *,
              only_decided: bool = False, views: dict[tuple[int, str], Any] | None = None,
              roots: Iterable[str] = (), content: str | None = None, max_nodes: int = MAX_NODES) -> FilePlan:
    """The file's edits. `decisions` (overlays: kustomize groups) override the field's own rewrite;
    `only_decided`: a file outside the ones given, where only decided fields change. `views`: its
    Helm releases with their charts resolved, by (document, pointer): the chart's default images
    get overrides in the release's values (charts.py). `content`: read the file as that kind (a
    release's value file, whatever its name)."""
    collect = Collected(detail=True) if views else None
    try:
        fields = locate(source.text, filename=source.display, content=content, collect=collect, max_nodes=max_nodes)
    except YamlError as exc:
        what = "" if isinstance(exc, LocateError) else "not valid YAML, "  # a bomb or a huge file is valid YAML
        return FilePlan(source, None, None, errors=[FileError(source.display, f"{what}left unchanged: {exc}")])
    plan = FilePlan(source, None, fields)
    real = os.path.realpath(source.path)
    edits: list[Edit] = []
    changes: list[ImageChange] = []
    releases = None  # the chart defaults' overrides (charts.py); the fields they cover give way
    if collect is not None and views:
        from .charts import plan_releases

        releases = plan_releases(collect.releases, views, policy, resolve, roots)
        edits.extend(releases.edits)
        changes.extend(ImageChange(*change) for change in releases.changes)
        plan.skipped.extend(Skipped(source.display, *skipped) for skipped in releases.skipped)
    for fld in fields:
        if releases is not None and releases.covers(fld):
            continue
        decision = decisions.get((real, fld.document, fld.path)) if decisions else None
        if decision is None and only_decided:
            continue
        if fld.source == "hint":
            continue
        refused = policy.decide_field(fld).finding
        if isinstance(decision, overlays.Keep):
            if refused:
                plan.skipped.append(Skipped(source.display, fld.line, fld.value, decision.reason))
            continue
        try:
            if isinstance(decision, overlays.EntryEdit):
                new_edits = entry_edits(fld, name=decision.name, new_name=decision.new_name)
                new_value = _entry_value(fld, decision)
            elif not refused:
                continue  # (InPlace: only a refused field is rewritten)
            else:
                target = _target(fld, policy, resolve)
                if isinstance(target, str):
                    plan.skipped.append(Skipped(source.display, fld.line, fld.value, target))
                    continue
                new_edits, new_value = edits_for(fld, target), str(target)
        except SpliceError as exc:
            plan.skipped.append(Skipped(source.display, fld.line, fld.value, f"not rewritten: {exc}"))
            continue
        edits.extend(new_edits)
        if new_edits and new_value == fld.value and isinstance(decision, overlays.EntryEdit):
            name = fld.parts["name"]  # only the name an overlay's entry matches changes
            changes.append(ImageChange(name.line, f"images: name {name.value}", f"name {decision.name}"))
        elif new_edits:
            changes.append(ImageChange(fld.line, fld.value, new_value))
    try:
        new_text = apply_edits(source.text, edits)
    except SpliceError as exc:
        plan.errors.append(FileError(source.display, f"left unchanged: {exc}"))
        return plan
    plan.rewrite = FileRewrite(source, new_text, changes)
    return plan


def _target(fld: ImageField, policy: Policy, resolve: Resolve) -> ImageRef | str:
    """The target of a refused field, or why it is not rewritten."""
    try:
        ref = parse(fld.value)
    except ReferenceError as exc:
        return f"not rewritten: {exc}"
    target = resolve(ref)
    if not isinstance(target, str) and not policy.allows(str(target)):
        return f"target {target} would still be refused by imageRegex"
    return target


def _entry_value(fld: ImageField, edit: overlays.EntryEdit) -> str:
    """An images: entry's value (newName or name, then tag or digest) after the edit."""
    parts = fld.parts
    written = parts["newName"].value if "newName" in parts and parts["newName"].value else parts["name"].value
    suffix = fld.value[len(written):]
    if edit.new_name is not None:
        return edit.new_name + suffix
    if "newName" in parts and parts["newName"].value:
        return fld.value
    return (edit.name if edit.name is not None else parts["name"].value) + suffix


def rewrite_paths(paths: Iterable[str], policy: Policy, resolve: Resolve, *, write: bool = True,
                  max_bytes: int = 16 * 1024 * 1024, exclude: Exclude | tuple[str, ...] = (),
                  charts: ChartSource | None = None, views: dict[tuple[str, int, str], Any] | None = None,
                  max_nodes: int = MAX_NODES) -> RewriteResult:
    """Plan every file (kustomize overlays kept rendering what they rendered: overlays.py); with
    `write`, write the changed ones atomically. Helm releases get overrides for their charts'
    default images: from `views` (a scan's), or resolved here through `charts`."""
    paths, exclude = list(paths), as_exclude(exclude)
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

    def plan(source: SourceFile, decisions: Mapping[overlays.Key, overlays.Decision] | None = None, *,
             only_decided: bool = False) -> FilePlan:
        """plan_file with what this run knows of the file (its releases' charts, its kind)."""
        content = "helm-values" if as_values and os.path.abspath(source.display) in as_values else None
        return plan_file(source, policy, resolve, decisions, only_decided=only_decided,
                         views=by_file.get(source.display), roots=paths, content=content, max_nodes=max_nodes)

    templates: list[str] = []
    plans = []
    for source in read_sources(paths, max_bytes, exclude, result.errors, templates):
        if source.display in refused:
            result.errors.append(refused[source.display])
        else:
            plans.append(plan(source))
    notice = templates_notice(templates)
    if notice:
        result.notes.append(notice)
    if any(p.rewrite is not None and p.rewrite.changed for p in plans):
        plans = _keep_kustomize_renders(paths, plans, policy, resolve, max_bytes, exclude, result, plan)
    for planned in plans:
        result.skipped.extend(planned.skipped)
        result.errors.extend(planned.errors)
        if planned.rewrite is not None:
            result.files.append(planned.rewrite)
    if write:
        for rewrite in result.changed:
            source = rewrite.source
            try:
                write_atomic(source.path, rewrite.new_text.encode("utf-8"), expected=source.raw, tree=source.tree)
            except WriteError as exc:
                result.errors.append(FileError(source.display, str(exc)))
            except OSError as exc:
                result.errors.append(FileError(source.display, f"cannot write: {exc.strerror or exc}"))
            else:
                result.written.append(source.display)
    return result


def _keep_kustomize_renders(paths: list[str], plans: list[FilePlan], policy: Policy, resolve: Resolve,
                            max_bytes: int, exclude: Exclude, result: RewriteResult,
                            plan: Callable[..., FilePlan]) -> list[FilePlan]:
    """The plans again, with the decisions of overlays.py for the fields and images: entries that
    kustomizations link, and the kustomizations outside the files given that must follow."""
    roots = {overlays.repository_root(p) for p in paths}
    directories = overlays.kustomization_dirs(roots)
    if not directories:
        return plans
    parsed: dict[str, list[Any]] = {}
    model = overlays.build_model(directories, parsed=parsed)
    if not model.entries:
        return plans  # no images: entry matches anything: every field is rewritten as any other
    by_path = {os.path.realpath(p.source.path): p for p in plans}
    outside: dict[str, FilePlan | None] = {}

    def read_outside(real: str) -> FilePlan | None:
        if real not in outside:
            errors: list[FileError] = []
            sources = list(read_sources([overlays.shown(real)], max_bytes, (), errors))
            outside[real] = plan(sources[0], {}, only_decided=True) if sources else None
        return outside[real]

    def fields_of(real: str) -> list[ImageField] | None:
        planned = by_path.get(real) or read_outside(real)
        return planned.fields if planned else None

    def writable(real: str) -> bool:  # a file below the trees looked at, not excluded
        return any(real.startswith(r + os.sep) for r in roots) and not exclude.matches(real)

    current: dict[str, FilePlan] = {}

    def edit(decisions: dict[overlays.Key, overlays.Decision]) -> dict[str, str]:
        touched = {k[0] for k in decisions}
        current.clear()
        for real, planned in by_path.items():
            current[real] = plan(planned.source, decisions) if real in touched else planned
        for real in touched - by_path.keys():
            other = read_outside(real)
            if other is not None:
                current[real] = plan(other.source, decisions, only_decided=True)
        return {real: p.rewrite.new_text for real, p in current.items() if p.rewrite is not None and p.rewrite.changed}

    def rebuild(texts: dict[str, str]) -> overlays.Model:
        return overlays.build_model(directories, texts=texts,
                                    parsed={k: v for k, v in parsed.items() if k not in texts})

    planner = overlays.Planner(model, policy, resolve, fields_of, set(by_path), writable)
    overlays.settle(planner, edit, rebuild)
    out = [current.get(os.path.realpath(p.source.path), p) for p in plans]
    for real, planned in current.items():
        if real not in by_path and planned.rewrite is not None and planned.rewrite.changed:
            out.append(planned)
            result.notes.append(f"{planned.source.display}: not among the files given, changed too: kustomize "
                                  f"matches its images by name with those rewritten")
    changed = {real for real, p in current.items() if p.rewrite is not None and p.rewrite.changed}
    notes: dict[str, None] = {}
    for root, model_notes in model.notes.items():
        if any(r.key[0] in changed for r in model.renders if r.root == root):
            for note in model_notes:
                if "can add, change or delete images" in note:  # what the check above cannot see
                    file, _, rest = note.partition(": ")
                    notes[f"kustomize: {overlays.shown(file)}: {rest}"] = None
    result.notes.extend(notes)
    return out
