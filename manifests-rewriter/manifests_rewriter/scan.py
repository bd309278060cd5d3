"""Scan manifests: image fields the policy would refuse, as Findings.

Pure except for reading the files: `scan_text` works on a string, `scan_paths` walks and
reads. Hints (images that become pods later, outside pod specs) are warnings, never
findings and never rewritten.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import repeat
from typing import TYPE_CHECKING, Any

from . import overlays
from .files import (
    ChartTemplate,
    Exclude,
    FileError,
    Found,
    SourceFile,
    discover,
    read_named,
    read_source,
    templates_notice,
)
from .locate import MAX_NODES, Collected, ImageField, LocateError, Release, YamlError, locate
from .locate.release import ValuesSource
from .model import Decision, Finding
from .policy import Policy, Verdict
from .reference import ImageRef, ReferenceError, parse

if TYPE_CHECKING:
    from .charts import ChartSource

ToTarget = Callable[[ImageRef], ImageRef]


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    files: int = 0
    # Helm releases the files declare and the objects they refer to (the chart pass, charts.py)
    releases: list[Release] = field(default_factory=list)
    sources: list[ValuesSource] = field(default_factory=list)
    unchecked: list[FileError] = field(default_factory=list)  # what could not be checked (a chart not found)
    views: dict[tuple[str, int, str], Any] = field(default_factory=dict)  # resolved releases, for `rewrite`
    templates: list[str] = field(default_factory=list)  # Helm chart templates skipped

    @property
    def notes(self) -> list[str]:
        """Lines to show that are neither findings nor failures."""
        notice = templates_notice(self.templates)
        return [notice] if notice else []

    def as_json(self) -> dict[str, object]:
        return {
            "findings": [f.as_json() for f in self.findings],
            "warnings": [w.as_json() for w in self.warnings],
            "errors": [e.as_json() for e in self.errors],
            "unchecked": [n.as_json() for n in self.unchecked],
        }


def classify(fld: ImageField, policy: Policy, to_target: ToTarget, file: str | None) -> Finding | None:
    """The Finding for one located field, or None when admission would accept it."""
    base: dict[str, Any] = dict(source=fld.source, file=file, line=fld.line, document=fld.document, path=fld.path,
                                kind=fld.kind, namespace=fld.namespace, name=fld.name, container=fld.container)
    if fld.source == "hint":
        return Finding(image=fld.value, reason=fld.note or "image outside a pod spec; becomes a pod image later",
                       **base)
    verdict = policy.decide_field(fld)
    if not verdict.finding:
        return None
    if "{{" in fld.value:  # a template (Helm, ApplicationSet...) outside a chart's templates/: a warning
        return Finding(image=fld.value, reason="a template expression: the image is known only once rendered; "
                                               "not checked", **base)
    problem, target, digest = _judge(fld.value, to_target)
    reason = verdict.reason() + (f"; not a valid image reference: {problem}" if problem else "")
    return Finding(image=fld.value, reason=reason, target=target, digest=digest, **decided_by(verdict), **base)


def decided_by(verdict: Verdict) -> dict[str, Any]:
    """The Finding fields saying which assignment and parameter decided, and with what effect."""
    decisions = tuple(Decision(v.assignment, v.parameter, v.effect, v.finding) for v in verdict.parts)
    return {"assignment": verdict.assignment, "parameter": verdict.parameter, "effect": verdict.effect,
            "decisions": decisions if len(decisions) > 1 else ()}


@functools.lru_cache(maxsize=4096)  # a tree repeats the same few images many times
def _judge(image: str, to_target: ToTarget) -> tuple[str | None, str | None, str | None]:
    """Why an image is not a valid reference (or None), where it would go, the digest it pins."""
    try:
        ref = parse(image)
        return None, str(to_target(ref)), ref.digest
    except ReferenceError as exc:
        return str(exc), None, None


def scan_text(text: str, policy: Policy, to_target: ToTarget, *, file: str | None = None,
              result: ScanResult | None = None, content: str | None = None,
              max_nodes: int = MAX_NODES) -> ScanResult:
    result = result if result is not None else ScanResult()
    collect = Collected()
    try:
        fields = locate(text, filename=file or "", content=content, collect=collect, max_nodes=max_nodes)
    except YamlError as exc:
        what = "" if isinstance(exc, LocateError) else "not valid YAML, "  # a bomb or a huge file is valid YAML
        result.errors.append(FileError(file or "<text>", f"{what}left unchanged: {exc}"))
        return result
    _collected(collect, file or "<text>", result)
    for fld in fields:
        finding = classify(fld, policy, to_target, file)
        if finding is None:
            continue
        (result.warnings if fld.source == "hint" or "{{" in fld.value else result.findings).append(finding)
    return result


def _collected(collect: Collected, file: str, result: ScanResult) -> None:
    if not (collect.releases or collect.sources or collect.notes):
        return
    for release in collect.releases:
        release.file = file
    for source in collect.sources:
        source.file = file
    result.releases.extend(collect.releases)
    result.sources.extend(collect.sources)
    result.unchecked.extend(FileError(file, f"line {line}: {message}") for line, message in collect.notes)


def chart_defaults(result: ScanResult, charts: ChartSource, policy: Policy | None, to_target: ToTarget | None,
                   roots: Iterable[str]) -> None:
    """The chart pass (charts.py): the default images of every release, located at the release."""
    if not result.releases:
        return
    from .charts import apply_updates, chart_pass, values_files

    found = chart_pass(result.releases, result.sources, charts, roots=roots)
    if policy is not None and to_target is not None:
        _rescan_values(result, values_files(found.views.values()), policy, to_target)
    apply_updates(result.findings, found.updates)
    if policy is not None and to_target is not None:
        for file, fld, chart in found.defaults:
            finding = classify(fld, policy, to_target, file)
            if finding is not None:
                reason = f"chart default ({chart}; not set in the release's values): {finding.reason}"
                result.findings.append(replace(finding, reason=reason))
    result.unchecked.extend(found.notices)
    result.views.update(found.views)


def _rescan_values(result: ScanResult, paths: set[str], policy: Policy, to_target: ToTarget) -> None:
    """Files releases take values from, read as Helm values whatever their names (`prod.yaml`)."""
    if not paths:
        return
    again = ScanResult()
    for file in sorted(paths):  # each inside the scanned paths (charts.py reads no other)
        source = read_named(file, 16 * 1024 * 1024)
        if isinstance(source, FileError):
            continue
        shown = next((f.file for f in result.findings + result.warnings if f.file and os.path.abspath(f.file) == file),
                     os.path.relpath(file) if not os.path.relpath(file).startswith("..") else file)
        result.findings = [f for f in result.findings if not f.file or os.path.abspath(f.file) != file]
        result.warnings = [w for w in result.warnings if not w.file or os.path.abspath(w.file) != file]
        scan_text(source.text, policy, to_target, file=shown, result=again, content="helm-values")
    result.findings.extend(again.findings)
    result.warnings.extend(again.warnings)


def release_views(paths: Iterable[str], charts: ChartSource, *, max_bytes: int = 16 * 1024 * 1024,
                  exclude: Exclude | tuple[str, ...] = (), max_nodes: int = MAX_NODES) -> ScanResult:
    """The releases of the files with their charts resolved (`views`: what a rewrite inserts
    overrides from) and what could not be checked (charts not found), when no scan came first."""
    paths = list(paths)
    result = ScanResult()
    for source in read_sources(paths, max_bytes, exclude):
        collect = Collected()
        try:
            locate(source.text, filename=source.display, collect=collect, max_nodes=max_nodes)
        except YamlError as exc:  # kept, so the rewrite does not spend a bomb's budget on it again
            what = "" if isinstance(exc, LocateError) else "not valid YAML, "
            result.errors.append(FileError(source.display, f"{what}left unchanged: {exc}"))
            continue
        _collected(collect, source.display, result)
    chart_defaults(result, charts, None, None, paths)
    return result


def read_sources(paths: Iterable[str], max_bytes: int, exclude: Exclude | tuple[str, ...] = (),
                 errors: list[FileError] | None = None, templates: list[str] | None = None) -> Iterator[SourceFile]:
    """Every readable file under `paths`; unreadable ones go to `errors`, chart templates to
    `templates`."""
    for item in discover(paths, exclude):
        if isinstance(item, ChartTemplate):
            if templates is not None:
                templates.append(item.file)
            continue
        if isinstance(item, FileError):
            if errors is not None:
                errors.append(item)
            continue
        source = read_source(item, max_bytes)
        if isinstance(source, FileError):
            if errors is not None:
                errors.append(source)
            continue
        yield source


# Below this many files a second process costs more than it saves.
PARALLEL_MIN_FILES = 256
_CHUNK = 64


def _scan_files(files: list[Found], policy: Policy, to_target: ToTarget, max_bytes: int,
                max_nodes: int = MAX_NODES) -> ScanResult:
    result = ScanResult()
    for item in files:
        source = read_source(item, max_bytes)
        if isinstance(source, FileError):
            result.errors.append(source)
            continue
        result.files += 1
        scan_text(source.text, policy, to_target, file=source.display, result=result, max_nodes=max_nodes)
    return result


def _parallel_workers(count: int, policy: Policy, to_target: ToTarget) -> int:
    """Processes worth using: several only for a large tree, with fork available, no other
    threads running (forking a threaded process is unsafe) and picklable arguments."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if count < PARALLEL_MIN_FILES or cpus < 2 or threading.active_count() > 1:
        return 1
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    try:
        pickle.dumps((policy, to_target))
    except Exception:  # noqa: BLE001 - e.g. a lambda: scan in this process
        return 1
    return min(cpus, 8)


def scan_paths(paths: Iterable[str], policy: Policy, to_target: ToTarget, *,
               max_bytes: int = 16 * 1024 * 1024, exclude: Exclude | tuple[str, ...] = (),
               charts: ChartSource | None = None, max_nodes: int = MAX_NODES) -> ScanResult:
    """Scan every YAML file under `paths`; a large tree is spread over the machine's cores. With
    `charts`, the default images of the Helm releases the files declare too (charts.py)."""
    paths = list(paths)
    result = ScanResult()
    files: list[Found] = []
    for item in discover(paths, exclude):
        if isinstance(item, ChartTemplate):
            result.templates.append(item.file)
        elif isinstance(item, FileError):
            result.errors.append(item)
        else:
            files.append(item)
    workers = _parallel_workers(len(files), policy, to_target)
    if workers == 1:
        parts: Iterable[ScanResult] = [_scan_files(files, policy, to_target, max_bytes, max_nodes)]
    else:
        chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(workers, mp_context=context)
        parts = pool.map(_scan_files, chunks, repeat(policy), repeat(to_target), repeat(max_bytes), repeat(max_nodes))
    try:
        for part in parts:  # in file order, whatever the number of workers
            result.findings.extend(part.findings)
            result.warnings.extend(part.warnings)
            result.errors.extend(part.errors)
            result.files += part.files
            result.releases.extend(part.releases)
            result.sources.extend(part.sources)
            result.unchecked.extend(part.unchecked)
    finally:
        if workers > 1:
            pool.shutdown()
    if charts is not None:
        chart_defaults(result, charts, policy, to_target, paths)
    if any(f.source == "kustomize" for f in result.findings):
        result.findings = _as_rendered(paths, result.findings, policy, to_target)
    return result


def _as_rendered(paths: Iterable[str], findings: list[Finding], policy: Policy, to_target: ToTarget) -> list[Finding]:
    """An images: entry that matches images stands for what kustomize renders through it: one
    finding per refused image rendered (an entry with only newName renders the base's tag, not
    `latest`), so that a plan mirrors what runs (overlays.py models the repository's kustomizations)."""
    model = overlays.build_model(overlays.kustomization_dirs({overlays.repository_root(p) for p in paths}))
    through = model.through_entries()
    out: list[Finding] = []
    for f in findings:
        renders = through.get((os.path.realpath(f.file), f.document or 0, f.path or "")) \
            if f.source == "kustomize" and f.file else None
        if not renders:
            out.append(f)
            continue
        for image in dict.fromkeys(r.final for r in renders):
            verdict = policy.decide(image)
            if not verdict.finding:
                continue
            roots = ", ".join(sorted({overlays.shown(r.root) for r in renders if r.final == image}))
            problem, target, digest = _judge(image, to_target)
            reason = verdict.reason() + (f"; not a valid image reference: {problem}" if problem else "")
            out.append(dataclasses.replace(f, image=image, target=target, digest=digest, **decided_by(verdict),
                                           reason=f"{reason}; rendered through this images: entry by {roots}"))
    return out
