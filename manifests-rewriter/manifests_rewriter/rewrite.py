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
from typing import Any

from . import overlays
from .files import Exclude, FileError, SourceFile, WriteError, as_exclude, printable, templates_notice, write_atomic
from .locate import ImageField, YamlError, locate
from .policy import Policy
from .reference import ImageRef, ReferenceError, parse
from .scan import read_sources
from .splice import Edit, SpliceError, apply_edits, edits_for, entry_edits

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
        name = self.source.display
        old, new = (name, name) if name.startswith("/") else (f"a/{name}", f"b/{name}")  # git-style for relative paths
        return "".join(difflib.unified_diff(
            self.source.text.splitlines(keepends=True), self.new_text.splitlines(keepends=True),
            fromfile=old, tofile=new))


@dataclass
class RewriteResult:
    files: list[FileRewrite] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
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
              only_decided: bool = False) -> FilePlan:
    """The file's edits. `decisions` (overlays: kustomize groups) override the field's own rewrite;
    `only_decided`: a file outside the ones given, where only decided fields change."""
    try:
        fields = locate(source.text, filename=source.display)
    except YamlError as exc:
        return FilePlan(source, None, None, errors=[FileError(source.display, f"not valid YAML, left unchanged: {exc}")])
    plan = FilePlan(source, None, fields)
    real = os.path.realpath(source.path)
    edits: list[Edit] = []
    changes: list[ImageChange] = []
    for fld in fields:
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
                  max_bytes: int = 16 * 1024 * 1024, exclude: Exclude | tuple[str, ...] = ()) -> RewriteResult:
    """Plan every file (kustomize overlays kept rendering what they rendered: overlays.py); with
    `write`, write the changed ones atomically."""
    paths, exclude = list(paths), as_exclude(exclude)
    result = RewriteResult()
    templates: list[str] = []
    plans = [plan_file(source, policy, resolve)
             for source in read_sources(paths, max_bytes, exclude, result.errors, templates)]
    notice = templates_notice(templates)
    if notice:
        result.notes.append(notice)
    if any(p.rewrite is not None and p.rewrite.changed for p in plans):
        plans = _keep_kustomize_renders(paths, plans, policy, resolve, max_bytes, exclude, result)
    for planned in plans:
        result.skipped.extend(planned.skipped)
        result.errors.extend(planned.errors)
        if planned.rewrite is not None:
            result.files.append(planned.rewrite)
    if write:
        for rewrite in result.changed:
            source = rewrite.source
            try:
                write_atomic(source.path, rewrite.new_text.encode("utf-8"), expected=source.raw)
            except WriteError as exc:
                result.errors.append(FileError(source.display, str(exc)))
            except OSError as exc:
                result.errors.append(FileError(source.display, f"cannot write: {exc.strerror or exc}"))
            else:
                result.written.append(source.display)
    return result


def _keep_kustomize_renders(paths: list[str], plans: list[FilePlan], policy: Policy, resolve: Resolve,
                            max_bytes: int, exclude: Exclude, result: RewriteResult) -> list[FilePlan]:
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
            outside[real] = plan_file(sources[0], policy, resolve, {}, only_decided=True) if sources else None
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
            current[real] = plan_file(planned.source, policy, resolve, decisions) if real in touched else planned
        for real in touched - by_path.keys():
            other = read_outside(real)
            if other is not None:
                current[real] = plan_file(other.source, policy, resolve, decisions, only_decided=True)
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
