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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".terraform"}


@dataclass(frozen=True)
class FileError:
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

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
        if root.is_file():
            yield root.resolve(), str(given)
            continue
        real_root = root.resolve()
        for directory, subdirs, files in os.walk(root, followlinks=False):
            subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
            for name in sorted(files):
                if not name.endswith(YAML_SUFFIXES):
                    continue
                path = Path(directory, name)
                display = str(path)
                if _excluded(os.path.relpath(path, root), exclude):
                    continue
                if path.is_symlink():
                    try:
                        target = path.resolve(strict=True)
                    except (OSError, RuntimeError):
                        yield FileError(display, "symbolic link loop or broken link; skipped")
                        continue
                    if not target.is_relative_to(real_root):
                        yield FileError(display, f"symbolic link points outside the tree ({target}); skipped")
                    continue  # inside the tree: its target is read in its own right
                yield path, display
            for name in subdirs:
                link = Path(directory, name)
                if link.is_symlink():
                    try:
                        target = link.resolve(strict=True)
                    except (OSError, RuntimeError):
                        yield FileError(str(link), "symbolic link loop or broken link; skipped")
                        continue
                    if not target.is_relative_to(real_root):
                        yield FileError(str(link), f"symbolic link points outside the tree ({target}); skipped")


def read_source(path: Path, display: str, max_bytes: int) -> SourceFile | FileError:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return FileError(display, f"file is {size:,} bytes, over the limit of {max_bytes:,} (scan.max_file_bytes)")
        with open(path, "rb") as handle:
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
