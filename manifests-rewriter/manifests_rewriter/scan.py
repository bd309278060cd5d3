"""Scan manifests: image fields the policy would refuse, as Findings.

Pure except for reading the files: `scan_text` works on a string, `scan_paths` walks and
reads. Hints (images that become pods later, outside pod specs) are warnings, never
findings and never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .files import FileError, SourceFile, discover, read_source
from .locate import ImageField, YamlError, locate
from .model import Finding
from .policy import Policy
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
    base = dict(source=fld.source, file=file, line=fld.line, document=fld.document, path=fld.path,
                kind=fld.kind, namespace=fld.namespace, name=fld.name, container=fld.container)
    if fld.source == "hint":
        return Finding(image=fld.value, reason=fld.note or "image outside a pod spec; becomes a pod image later",
                       **base)  # type: ignore[arg-type]
    if not policy.refuses(fld.value, namespace=fld.namespace, container=fld.container):
        return None
    reason = f"does not match imageRegex {policy.image_regex!r}"
    target = digest = None
    try:
        ref = parse(fld.value)
        digest = ref.digest
        target = str(to_target(ref))
    except ReferenceError as exc:
        reason = f"{reason}; not a valid image reference: {exc}"
    return Finding(image=fld.value, reason=reason, target=target, digest=digest, **base)  # type: ignore[arg-type]


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


def scan_paths(paths: Iterable[str], policy: Policy, to_target: ToTarget, *,
               max_bytes: int = 16 * 1024 * 1024, exclude: tuple[str, ...] = ()) -> ScanResult:
    result = ScanResult()
    for source in read_sources(paths, max_bytes, exclude, result.errors):
        result.files += 1
        scan_text(source.text, policy, to_target, file=source.display, result=result)
    return result
