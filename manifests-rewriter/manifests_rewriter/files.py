"""Which files to read, and reading them safely.

Directories are walked for *.yaml and *.yml without following directory links (so a
link loop cannot trap the walk). A file link whose target lies outside the tree given is
reported and skipped; one inside is skipped because its target is scanned in its own
right. Reading refuses files over the size limit, binary files and invalid UTF-8 with one
line each; nothing here raises for a bad file. Writing (`write_atomic`) replaces a file
all at once, or not at all.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import glob
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import AcrMirrorError

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


@functools.lru_cache(maxsize=1024)
def repository_root(directory: str) -> str | None:
    """The nearest directory at or above `directory` (absolute) holding `.git`, if any."""
    while True:
        if os.path.lexists(os.path.join(directory, ".git")):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


@dataclass(frozen=True)
class Exclude:
    """scan.exclude: glob patterns matched against a file's path relative to each of `bases`
    (the config file's directory) and to its repository (the nearest directory above it holding
    `.git`: the pre-commit hook runs there), against its path relative to the PATH it was found
    under (the rule before, kept so that existing patterns keep working), and against its name
    alone. Files named explicitly are matched too."""

    patterns: tuple[str, ...] = ()
    bases: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __iter__(self) -> Iterator[str]:
        return iter(self.patterns)

    def matches(self, path: str, walked_from: str | None = None) -> bool:
        if not self.patterns:
            return False
        absolute = os.path.abspath(path)
        names = {os.path.basename(absolute)}
        for base in (*self.bases, repository_root(os.path.dirname(absolute)), walked_from):
            if base:
                relative = os.path.relpath(absolute, os.path.abspath(base))
                if not relative.startswith(".."):
                    names.add(relative)
        return any(fnmatch.fnmatch(name, p) for name in names for p in self.patterns)


def as_exclude(exclude: Exclude | Iterable[str]) -> Exclude:
    return exclude if isinstance(exclude, Exclude) else Exclude(tuple(exclude))


def templates_notice(files: list[str]) -> str | None:
    """The one line that says chart templates were skipped, naming their charts."""
    if not files:
        return None
    charts = sorted({f.rsplit(os.sep + "templates" + os.sep, 1)[0] if os.sep + "templates" + os.sep in os.sep + f
                     else os.path.dirname(f) or "." for f in files})
    shown = ", ".join(charts[:3]) + (f" and {len(charts) - 3} more" if len(charts) > 3 else "")
    return (f"{len(files)} Helm chart template{'s' * (len(files) != 1)} skipped (not YAML until Helm renders them; "
            f"the images come from the chart's values): {shown}")


@dataclass(frozen=True)
class ChartTemplate:
    """A Helm chart template: a file under `templates/` of a directory holding Chart.yaml, or a
    `.tpl` file. Not YAML until Helm renders it (its images come from the chart's values), so it
    is skipped, and counted in one notice line rather than reported as unreadable."""

    file: str


@functools.lru_cache(maxsize=1024)
def _is_chart(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "Chart.yaml"))


def is_chart_template(path: str) -> bool:
    """Whether the file is a Helm chart template (see ChartTemplate)."""
    if path.endswith(".tpl"):
        return True
    parts = Path(os.path.abspath(path)).parts
    return any(parts[i] == "templates" and _is_chart(os.path.join(*parts[:i])) for i in range(1, len(parts) - 1))


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


def discover(paths: Iterable[str | Path], exclude: Exclude | Iterable[str] = ()
             ) -> Iterator[tuple[Path, str] | FileError | ChartTemplate]:
    """Yield (real path, display name) for each file to read, a FileError, or a ChartTemplate."""
    exclude = as_exclude(exclude)
    _is_chart.cache_clear()  # the tree may have changed since the last call (tests, long runs)
    repository_root.cache_clear()
    for given in paths:
        root = Path(given)
        if root.is_symlink() and not root.exists():
            yield FileError(str(given), "broken symbolic link")
            continue
        if not root.exists():
            yield FileError(str(given), "no such file or directory")
            continue
        if not root.is_dir():
            if exclude and exclude.matches(str(given)):
                continue
            yield ChartTemplate(str(given)) if is_chart_template(str(given)) else (root.resolve(), str(given))
            continue
        real_root = root.resolve()
        templates = "templates" + os.sep
        for entry in _entries(str(root)):
            is_yaml = entry.name.endswith(YAML_SUFFIXES)
            if exclude and exclude.matches(entry.path, str(root)):
                continue
            if entry.is_symlink():
                target_is_dir = os.path.isdir(entry.path)
                if is_yaml or target_is_dir:  # a link to a directory may escape the tree too
                    problem = _link_problem(entry.path, real_root)
                    if problem:
                        yield FileError(entry.path, problem)
            elif is_yaml:
                if templates in entry.path and is_chart_template(entry.path):
                    yield ChartTemplate(entry.path)
                else:
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


class WriteError(AcrMirrorError):
    """A file was not written (changed since it was read, read-only, gone); nothing was written."""


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
    WriteError is raised and nothing is written."""
    path = Path(os.path.realpath(path))
    directory = path.parent

    def check() -> os.stat_result | None:
        try:
            current = path.read_bytes() if expected is not None else None
            info = path.stat()
        except FileNotFoundError:
            if expected is not None:
                raise WriteError(f"{path}: the file is gone since it was read; not written") from None
            return None
        except OSError as exc:
            raise WriteError(f"reading {path}: {exc.strerror or exc}") from None
        if expected is not None and current != expected:
            raise WriteError(f"{path}: the file changed since it was read; not written")
        return info

    info = check()
    if info is not None and not info.st_mode & 0o222:
        # rename() needs only the directory's permission; a file made read-only stays as it is
        raise WriteError(f"{path}: the file is read-only; not written")
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
