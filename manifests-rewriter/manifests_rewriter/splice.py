"""Splice edits into text, byte-exactly.

Callers read a file as bytes, decode it with strict UTF-8 (a BOM stays in the str),
apply edits at character offsets found by the locators, and encode back with UTF-8: every
byte outside the edits is unchanged (no newline translation, so CRLF stays CRLF). Writing
the result is files.write_atomic's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import yaml

from .errors import AcrMirrorError
from .locate import ImageField, Scalar
from .locate.fields import split_name
from .reference import ImageRef, ReferenceError, parse


class SpliceError(AcrMirrorError):
    """An edit that cannot be made safely; the message says why. Nothing is written."""


@dataclass(frozen=True)
class Edit:
    start: int  # character offsets into the decoded text; start == end inserts
    end: int
    old: str  # what the text holds there now (checked before splicing)
    new: str


def apply_edits(text: str, edits: Iterable[Edit]) -> str:
    """The text with every edit applied. Identical edits count once (one scalar reached
    through several aliases); overlapping edits, two different insertions at one place,
    or an `old` that the text no longer holds raise SpliceError."""
    ordered = sorted(set(edits), key=lambda e: (e.start, e.end, e.new))
    pieces: list[str] = []
    pos = 0
    last: Edit | None = None
    for edit in ordered:
        if not 0 <= edit.start <= edit.end <= len(text):
            raise SpliceError(f"edit {edit.start}..{edit.end} is outside the text ({len(text)} characters)")
        found = text[edit.start : edit.end]
        if found != edit.old:
            raise SpliceError(f"at offset {edit.start}: expected {edit.old!r} but the text holds {found!r}")
        if last is not None and (edit.start < pos or (edit.start, edit.end) == (last.start, last.end)):
            raise SpliceError(f"conflicting edits at offsets {last.start}..{last.end} and {edit.start}..{edit.end}")
        pieces.append(text[pos : edit.start])
        pieces.append(edit.new)
        pos = edit.end
        last = edit
    pieces.append(text[pos:])
    return "".join(pieces)


# ----------------------------------------------------------------------------- edits for a field


# What a plain scalar may hold and still be read back as the same string: no indicator
# first, no ": " / " #", no flow characters (the scalar may sit in a flow collection).
_SAFE_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/:@+-]*")


def _check_fits(scalar: Scalar, new: str) -> None:
    style = scalar.style
    if "\n" in new or "\r" in new:
        raise SpliceError(f"new value {new!r} spans lines")
    if style == "plain":
        if not _SAFE_PLAIN.fullmatch(new) or new.endswith(":"):
            raise SpliceError(f"new value {new!r} cannot be written as a plain scalar")
        if yaml.safe_load(new) != new:  # e.g. a name that reads back as a number or bool
            raise SpliceError(f"new value {new!r} would not read back as a string")
    elif style == "single" and "'" in new:
        raise SpliceError(f"new value {new!r} contains a single quote")
    elif style == "double" and ('"' in new or "\\" in new):
        raise SpliceError(f"new value {new!r} contains a quote or backslash")
    elif style in ("literal", "folded") and (new != new.strip() or new.startswith("#")):
        raise SpliceError(f"new value {new!r} cannot be written as a block scalar")


def _require_exact(field: ImageField, scalar: Scalar) -> None:
    if not scalar.exact:
        raise SpliceError(
            f"line {scalar.line}: the {scalar.style} scalar {scalar.value!r} at {field.path} cannot be "
            f"rewritten in place (escapes, folded lines or an empty value); edit it by hand"
        )


def _replace(field: ImageField, scalar: Scalar, new: str) -> list[Edit]:
    _require_exact(field, scalar)
    if scalar.value == new:
        return []
    _check_fits(scalar, new)
    return [Edit(scalar.start, scalar.end, scalar.value, new)]


def _source(field: ImageField) -> ImageRef:
    try:
        return parse(field.value)
    except ReferenceError as exc:
        raise SpliceError(f"line {field.line}: {field.path}: {exc}") from None


def _same_version(field: ImageField, source: ImageRef, target: ImageRef) -> None:
    if (source.tag, source.digest) != (target.tag, target.digest):
        raise SpliceError(
            f"line {field.line}: {field.path}: the target {target} must keep the tag and digest of {field.value!r}"
        )


def edits_for(field: ImageField, target: ImageRef) -> list[Edit]:
    """The edits that make `field` refer to `target` (same tag and digest as the source,
    kept exactly as written). An empty list when it already does.

    - one scalar (pod, compose, helm plain string): the name part of the reference is
      replaced, the `:tag` / `@digest` text after it stays; a target that adds a digest
      to an undigested source appends `@digest` (pinning);
    - Helm split map: the registry part in effect (the map's own, or a global one:
      then every image of the chart that uses it must be rewritten in the same run, the
      identical global edits count once) gets the target registry and the repository
      part the target repository; without a registry part, the repository part (or
      `image`) gets the whole target name;
    - kustomize: `newName` is set (replaced, or inserted after `name`); `name` stays.

    Raises SpliceError for hints, scalars that cannot be spliced exactly, or a target
    that changes the tag."""
    if field.source == "hint":
        raise SpliceError(f"line {field.line}: {field.path} is a warning ({field.note}); it is not rewritten")
    if field.scalar is not None:
        _require_exact(field, field.scalar)
    source = _source(field)
    if field.source in ("pod", "compose", "helm") and field.scalar is not None:
        scalar = field.scalar
        _, suffix = split_name(scalar.value)
        if (source.tag, source.digest) == (target.tag, target.digest):
            new = target.name + suffix
        elif source.tag == target.tag and source.digest is None and target.digest:
            new = target.name + suffix + "@" + target.digest
        else:
            new = str(target)
        return _replace(field, scalar, new)
    _same_version(field, source, target)
    parts = field.parts
    if field.source == "helm" and "name" in parts and "repository" not in parts and "image" not in parts:
        return _composed_edits(field, target)
    if field.source == "helm":
        repo_key = "repository" if "repository" in parts and parts["repository"].value else "image"
        repo = parts.get(repo_key)
        if repo is None:
            raise SpliceError(f"line {field.line}: {field.path}: no repository in this image map")
        _, repo_suffix = split_name(repo.value)  # a repository part may carry its own ":tag"
        registry = parts.get("registry")
        if registry is not None and registry.value:
            return _replace(field, registry, target.registry) + _replace(
                field, repo, target.repository + repo_suffix
            )
        return _replace(field, repo, target.name + repo_suffix)
    if field.source == "kustomize":
        return entry_edits(field, new_name=target.name)
    raise SpliceError(f"line {field.line}: {field.path}: nothing to rewrite for a {field.source} field")


def entry_edits(field: ImageField, *, name: str | None = None, new_name: str | None = None) -> list[Edit]:
    """The edits of a kustomize `images:` entry: `name` replaced (an entry that must keep
    matching a base image renamed in the same rewrite), `newName` replaced or inserted after
    `name`. None leaves a key as it is."""
    if field.source != "kustomize":
        raise SpliceError(f"line {field.line}: {field.path}: not a kustomize images: entry")
    edits = [] if name is None else _replace(field, field.parts["name"], name)
    if new_name is None:
        return edits
    current = field.parts.get("newName")
    if current is not None:
        return edits + _replace(field, current, new_name)
    if field.insert is None:
        raise SpliceError(f"line {field.line}: {field.path}: nowhere to add newName")
    if not _SAFE_PLAIN.fullmatch(new_name):
        raise SpliceError(f"new name {new_name!r} cannot be written as a plain scalar")
    ins = field.insert
    return edits + [Edit(ins.offset, ins.offset, "", f"{ins.before}{ins.key}{new_name}{ins.after}")]


def _composed_edits(field: ImageField, target: ImageRef) -> list[Edit]:
    """cert-manager's `[registry/][namespace/]name` (chart-wide registry and namespace): the name
    stays; the registry takes what the target puts before the namespace, or (when the target does
    not keep the namespace) the registry and namespace take the target's host and path."""
    parts = field.parts
    name = parts["name"].value
    prefix, slash, last = target.name.rpartition("/")
    if not slash or last != name:
        raise SpliceError(f"line {field.line}: {field.path}: the target {target} must end with the name {name!r}")
    registry, namespace = parts.get("registry"), parts.get("namespace")
    if namespace is not None and prefix.endswith("/" + namespace.value) and registry is not None:
        return _replace(field, registry, prefix[: -len(namespace.value) - 1])
    if namespace is not None and registry is not None:
        host, _, path = prefix.partition("/")
        if not path:
            raise SpliceError(f"line {field.line}: {field.path}: the target {target} has no namespace to write")
        return _replace(field, registry, host) + _replace(field, namespace, path)
    only = registry or namespace
    if only is None:
        raise SpliceError(f"line {field.line}: {field.path}: no registry or namespace value to write the target in")
    return _replace(field, only, prefix)


# ----------------------------------------------------------------------------- files


def byte_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Byte offsets in the UTF-8 encoding of `text` of the character span start..end."""
    first = len(text[:start].encode("utf-8"))
    return first, first + len(text[start:end].encode("utf-8"))
