"""Splice edits into text, byte-exactly, and write files atomically.

Callers read a file as bytes, decode it with strict UTF-8 (a BOM stays in the str),
apply edits at character offsets found by locate.py, and encode back with UTF-8: every
byte outside the edits is unchanged (no newline translation, so CRLF stays CRLF).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .locate import ImageField, Scalar
from .reference import ImageRef, ReferenceError, parse


class SpliceError(Exception):
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


def split_name(text: str) -> tuple[str, str]:
    """("registry/repository" as written, ":tag@digest" as written) of a reference text."""
    at = text.find("@")
    rest = text if at < 0 else text[:at]
    colon = rest.rfind(":")
    end = colon if colon > rest.rfind("/") and not rest.endswith("]") else len(rest)
    return text[:end], text[end:]


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
        new_name = parts.get("newName")
        if new_name is not None:
            return _replace(field, new_name, target.name)
        if field.insert is None:
            raise SpliceError(f"line {field.line}: {field.path}: nowhere to add newName")
        if not _SAFE_PLAIN.fullmatch(target.name):
            raise SpliceError(f"new name {target.name!r} cannot be written as a plain scalar")
        ins = field.insert
        return [Edit(ins.offset, ins.offset, "", f"{ins.before}newName: {target.name}{ins.after}")]
    raise SpliceError(f"line {field.line}: {field.path}: nothing to rewrite for a {field.source} field")


# ----------------------------------------------------------------------------- files


def byte_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Byte offsets in the UTF-8 encoding of `text` of the character span start..end."""
    first = len(text[:start].encode("utf-8"))
    return first, first + len(text[start:end].encode("utf-8"))


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


TEMP_MARK = "acr-mirror-"  # names our temporary files, so a later run may remove a killed run's leftovers


def write_atomic(path: Path, data: bytes, *, expected: bytes | None = None) -> None:
    """Replace the file's content with `data`, all at once: a temporary file in the same
    directory is written, fsynced, given the original file's mode (and owner when
    possible), then renamed over the file, and the directory is fsynced. Readers see
    the old or the new content, never a mix; a crash leaves the old file.

    A symlink is followed: its target is replaced, the link stays. A read-only file is refused.
    Temporary files a killed run left beside the file (`.NAME.acr-mirror-*.tmp`) are removed.
    With `expected`, the file must still hold exactly those bytes (it is checked before
    and again just before the rename); if someone changed it since it was read,
    SpliceError is raised and nothing is written."""
    path = Path(os.path.realpath(path))
    directory = path.parent

    def check() -> os.stat_result | None:
        try:
            current = path.read_bytes() if expected is not None else None
            info = path.stat()
        except FileNotFoundError:
            if expected is not None:
                raise SpliceError(f"{path}: the file is gone since it was read; not written") from None
            return None
        except OSError as exc:
            raise SpliceError(f"reading {path}: {exc.strerror or exc}") from None
        if expected is not None and current != expected:
            raise SpliceError(f"{path}: the file changed since it was read; not written")
        return info

    info = check()
    if info is not None and not info.st_mode & 0o222:
        # rename() needs only the directory's permission; a file made read-only stays as it is
        raise SpliceError(f"{path}: the file is read-only; not written")
    prefix = f".{path.name}.{TEMP_MARK}"
    for stale in directory.glob(f"{glob.escape(prefix)}*.tmp"):  # left by a run that was killed mid-write
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if info is not None:
                os.fchmod(handle.fileno(), stat.S_IMODE(info.st_mode))
                if (info.st_uid, info.st_gid) != (os.getuid(), os.getgid()):
                    with contextlib.suppress(OSError):  # only root may give files away
                        os.fchown(handle.fileno(), info.st_uid, info.st_gid)
            else:  # a new file: what open() would have given it
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        check()  # narrow the window for a concurrent edit as far as we can
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)
