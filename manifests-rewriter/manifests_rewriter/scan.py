"""Scan manifests: image fields the policy would refuse, as Findings.

Pure except for reading the files: `scan_text` works on a string, `scan_paths` walks and
reads. Hints (images that become pods later, outside pod specs) are warnings, never
findings and never rewritten.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

from .files import FileError, SourceFile, discover, read_source
from .locate import ImageField, YamlError, locate
from .model import Decision, Finding
from .policy import Policy, Verdict
from .reference import ImageRef, ReferenceError, parse

ToTarget = Callable[[ImageRef], ImageRef]


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    files: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "findings": [f.as_json() for f in self.findings],
            "warnings": [w.as_json() for w in self.warnings],
            "errors": [e.as_json() for e in self.errors],
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
              result: ScanResult | None = None) -> ScanResult:
    result = result if result is not None else ScanResult()
    try:
        fields = locate(text, filename=file or "")
    except YamlError as exc:
        result.errors.append(FileError(file or "<text>", f"not valid YAML, left unchanged: {exc}"))
        return result
    for fld in fields:
        finding = classify(fld, policy, to_target, file)
        if finding is None:
            continue
        (result.warnings if fld.source == "hint" else result.findings).append(finding)
    return result


def read_sources(paths: Iterable[str], max_bytes: int, exclude: tuple[str, ...] = (),
                 errors: list[FileError] | None = None) -> Iterator[SourceFile]:
    """Every readable file under `paths`; unreadable ones go to `errors`."""
    for item in discover(paths, exclude):
        if isinstance(item, FileError):
            if errors is not None:
                errors.append(item)
            continue
        source = read_source(*item, max_bytes)
        if isinstance(source, FileError):
            if errors is not None:
                errors.append(source)
            continue
        yield source


# Below this many files a second process costs more than it saves.
PARALLEL_MIN_FILES = 256
_CHUNK = 64


def _scan_files(files: list[tuple[Path, str]], policy: Policy, to_target: ToTarget, max_bytes: int) -> ScanResult:
    result = ScanResult()
    for item in files:
        source = read_source(*item, max_bytes)
        if isinstance(source, FileError):
            result.errors.append(source)
            continue
        result.files += 1
        scan_text(source.text, policy, to_target, file=source.display, result=result)
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
               max_bytes: int = 16 * 1024 * 1024, exclude: tuple[str, ...] = ()) -> ScanResult:
    """Scan every YAML file under `paths`; a large tree is spread over the machine's cores."""
    result = ScanResult()
    files: list[tuple[Path, str]] = []
    for item in discover(paths, exclude):
        if isinstance(item, FileError):
            result.errors.append(item)
        else:
            files.append(item)
    workers = _parallel_workers(len(files), policy, to_target)
    if workers == 1:
        parts: Iterable[ScanResult] = [_scan_files(files, policy, to_target, max_bytes)]
    else:
        chunks = [files[i:i + _CHUNK] for i in range(0, len(files), _CHUNK)]
        context = multiprocessing.get_context("fork")
        pool = ProcessPoolExecutor(workers, mp_context=context)
        parts = pool.map(_scan_files, chunks, repeat(policy), repeat(to_target), repeat(max_bytes))
    try:
        for part in parts:  # in file order, whatever the number of workers
            result.findings.extend(part.findings)
            result.warnings.extend(part.warnings)
            result.errors.extend(part.errors)
            result.files += part.files
    finally:
        if workers > 1:
            pool.shutdown()
    return result
