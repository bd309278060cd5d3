"""Which files to read, and reading them safely.

Directories are walked for *.yaml and *.yml without following directory links (so a
link loop cannot trap the walk). A file link whose target lies outside the tree given is
reported and skipped; one inside is skipped because its target is scanned in its own
right. Reading refuses files over the size limit, binary files and invalid UTF-8 with one
line each; nothing here raises for a bad file.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".terraform"}


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text from files and registries, safe for a terminal: control characters (ESC, BEL,
    newlines...) and bidi overrides are shown escaped, so no manifest or file name can
    forge an output line or drive the terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


@dataclass(frozen=True)
class FileError:
    file: str
    message: str

    def __str__(self) -> str:
        return printable(f"{self.file}: {self.message}")

    def as_json(self) -> dict[str, str]:
        return {"file": self.file, "message": self.message}


@dataclass(frozen=True)
class SourceFile:
    path: Path  # the path to write to (a link given on the command line is resolved)
    display: str  # the path as the user named it
    raw: bytes
    text: str


def _excluded(relative: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch(os.path.basename(relative), p) for p in patterns)


def _entries(root: str) -> Iterator[os.DirEntry[str]]:
    """Every entry below root, sorted, without following directory links (an explicit stack:
    no recursion limit, and a link loop cannot trap it)."""
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            continue  # unreadable directory: nothing below it to report by name
        subdirs = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.name not in SKIP_DIRS:
                    subdirs.append(entry.path)
            else:
                yield entry
        stack.extend(reversed(subdirs))


def _link_problem(path: str, real_root: Path) -> str | None:
    try:
        target = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return "symbolic link loop or broken link; skipped"
    if not target.is_relative_to(real_root):
        return f"symbolic link points outside the tree ({target}); skipped"
    return None  # inside the tree: its target is read in its own right


def discover(paths: Iterable[str | Path], exclude: tuple[str, ...] = ()) -> Iterator[tuple[Path, str] | FileError]:
    """Yield (real path, display name) for each file to read, or a FileError."""
    for given in paths:
        root = Path(given)
        if root.is_symlink() and not root.exists():
            yield FileError(str(given), "broken symbolic link")
            continue
        if not root.exists():
            yield FileError(str(given), "no such file or directory")
            continue
        if not root.is_dir():
            yield root.resolve(), str(given)
            continue
        real_root = root.resolve()
        for entry in _entries(str(root)):
            is_yaml = entry.name.endswith(YAML_SUFFIXES)
            if exclude and _excluded(os.path.relpath(entry.path, root), exclude):
                continue
            if entry.is_symlink():
                target_is_dir = os.path.isdir(entry.path)
                if is_yaml or target_is_dir:  # a link to a directory may escape the tree too
                    problem = _link_problem(entry.path, real_root)
                    if problem:
                        yield FileError(entry.path, problem)
            elif is_yaml:
                yield Path(entry.path), entry.path


def read_source(path: Path, display: str, max_bytes: int) -> SourceFile | FileError:
    try:
        # O_NONBLOCK: opening a FIFO named *.yaml must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return FileError(display, "not a regular file (a FIFO, socket or device); skipped")
            if info.st_size > max_bytes:
                return FileError(display, f"file is {info.st_size:,} bytes, over the limit of {max_bytes:,} "
                                          f"(scan.max_file_bytes)")
            raw = handle.read(max_bytes + 1)
    except PermissionError:
        return FileError(display, "cannot read: permission denied")
    except IsADirectoryError:
        return FileError(display, "is a directory")
    except OSError as exc:
        return FileError(display, f"cannot read: {exc.strerror or exc}")
    if len(raw) > max_bytes:
        return FileError(display, f"file grew over the limit of {max_bytes:,} bytes while being read")
    if b"\x00" in raw:
        return FileError(display, "binary file (contains NUL bytes), not YAML")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return FileError(display, f"line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
    return SourceFile(path, display, raw, text)
