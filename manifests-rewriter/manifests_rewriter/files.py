"""Which files to read, and reading and writing them safely.

Directories are walked for *.yaml and *.yml without following directory links (so a
link loop cannot trap the walk). A file link whose target lies outside the tree given is
reported and skipped; one inside is skipped because its target is scanned in its own
right. A path named on the command line that is (or passes through) a link is followed
only when it stays inside its tree: the repository it is named in (the nearest directory
above it holding `.git`, as the hook passes files from the repository root), else the
directory it is named in. Reading refuses files over the size limit, binary files and
invalid UTF-8 with one line each; nothing here raises for a bad file.

Writing (`write_atomic`) replaces a file all at once, or not at all, and never through a
symbolic link: a file found in a tree is written from the tree's directory as it was
walked (`Tree`), one directory at a time without following links, so a directory swapped
for a link after the walk cannot send the write elsewhere; an output file (a report, a
plan) that is a link is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .errors import AcrMirrorError

YAML_SUFFIXES = (".yaml", ".yml")
SKIP_DIRS = {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".terraform"}


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


# scheme://userinfo@ : up to the last '@' before the path, so `user:p@ss@host` is hidden whole
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s'\"<>]+@")


def redact_url(text: str) -> str:
    """Hide the credentials of every URL in `text`: `https://user:pass@host` -> `https://***@host`.
    For anything that shows an endpoint, a remote URL or an error message quoting one."""
    return _URL_USERINFO.sub(r"\1***@", text) if "@" in text else text  # most text has no '@': skip the regex


def printable(text: str) -> str:
    """Text from files, registries and clusters, safe to show on one line: control characters
    (ESC, BEL, newlines...) and bidi overrides are shown escaped, so no manifest or file name
    can forge an output line or drive the terminal, and URL credentials are hidden (redact_url)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), redact_url(text))


@dataclass(frozen=True)
class FileError:
    file: str
    message: str

    def __str__(self) -> str:
        return printable(f"{self.file}: {self.message}")

    def as_json(self) -> dict[str, str]:
        return {"file": self.file, "message": self.message}


@dataclass(frozen=True)
class Tree:
    """A directory files were found in: its real path and its identity (device, inode) when it
    was walked. Files below it are written from this very directory (write_atomic)."""

    path: Path
    dev: int
    ino: int

    @classmethod
    def at(cls, path: str | Path) -> Tree:
        real = Path(os.path.realpath(path))
        info = os.stat(real)
        return cls(real, info.st_dev, info.st_ino)


class Found(NamedTuple):
    """A file to read: its real path (no link on the way below `tree`), the name shown, its tree."""

    path: Path
    display: str
    tree: Tree


@dataclass(frozen=True)
class SourceFile:
    path: Path  # the real path to write to (a link given on the command line is resolved)
    display: str  # the path as the user named it
    raw: bytes
    text: str
    tree: Tree | None = None  # where the file was found: written from there, never through a link


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


def containing_tree(given: str | Path) -> Path:
    """The tree a path named on the command line belongs to: the repository it is named in (the
    nearest directory above it holding .git, not counting directories that are links), else
    the directory it is named in. Links in the path may lead anywhere inside it, not out."""
    named_in = Path(os.path.abspath(given)).parent
    for directory in (named_in, *named_in.parents):
        if not os.path.islink(directory) and os.path.lexists(directory / ".git"):
            return directory
    return named_in


def _named(given: str | Path) -> Found | FileError:
    """A path named on the command line, followed only while it stays inside its tree."""
    tree_path = containing_tree(given)
    try:
        real = Path(os.path.realpath(given, strict=True))
        tree = Tree.at(tree_path)
    except (OSError, RuntimeError):
        return FileError(str(given), "symbolic link loop or broken link; skipped")
    if not real.is_relative_to(tree.path):
        return FileError(str(given), f"symbolic link to {real}, outside the tree {tree_path}; skipped (name the "
                                     f"target itself to use it)")
    return Found(real, str(given), tree)


def discover(paths: Iterable[str | Path], exclude: Exclude | Iterable[str] = ()
             ) -> Iterator[Found | FileError | ChartTemplate]:
    """Yield a Found for each file to read, a FileError, or a ChartTemplate (skipped, counted)."""
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
        if not root.is_dir() and exclude and exclude.matches(str(given)):
            continue
        if not root.is_dir() and is_chart_template(str(given)):
            yield ChartTemplate(str(given))
            continue
        named = _named(given)
        if isinstance(named, FileError) or not named.path.is_dir():
            yield named
            continue
        tree = Tree.at(named.path)
        skip = len(os.path.join(str(root), ""))  # entry paths are root + separator + relative path
        templates = "templates" + os.sep
        for entry in _entries(str(root)):
            is_yaml = entry.name.endswith(YAML_SUFFIXES)
            relative = entry.path[skip:]
            if exclude and exclude.matches(entry.path, str(root)):
                continue
            if entry.is_symlink():
                target_is_dir = os.path.isdir(entry.path)
                if is_yaml or target_is_dir:  # a link to a directory may escape the tree too
                    problem = _link_problem(entry.path, tree.path)
                    if problem:
                        yield FileError(entry.path, problem)
            elif is_yaml:
                if templates in entry.path and is_chart_template(entry.path):
                    yield ChartTemplate(entry.path)
                else:
                    yield Found(Path(f"{tree.path}{os.sep}{relative}"), entry.path, tree)


def read_named(path: str | Path, max_bytes: int) -> SourceFile | FileError:
    """One file named by its path (as discover takes a file named on the command line), read."""
    found = _named(path)
    return found if isinstance(found, FileError) else read_source(found, max_bytes)


def read_source(found: Found, max_bytes: int) -> SourceFile | FileError:
    path, display, tree = found
    try:
        # O_NONBLOCK: opening a FIFO named *.yaml must not wait for a writer; O_NOFOLLOW: the
        # path found has no link, so a link here was planted since
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
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
        if exc.errno == errno.ELOOP:
            return FileError(display, "replaced by a symbolic link since the tree was walked; skipped")
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
    return SourceFile(path, display, raw, text, tree)


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


TEMP_MARK = "acr-mirror-"  # names our temporary files, so a later run may remove a killed run's leftovers
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_SEARCH = getattr(os, "O_PATH", os.O_RDONLY)  # enough to open what is below a directory


def _open_directory(path: Path, tree: Tree | None) -> int:
    """A descriptor of the directory `path` is in. With a tree: opened from the tree's own
    directory (the one walked, checked by identity), one component at a time without
    following links. Without: the directory as named (the caller named it; the file itself
    is never followed, see write_atomic)."""
    if tree is None:
        try:
            return os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        except OSError as exc:
            raise WriteError(f"{path}: cannot open its directory: {exc.strerror or exc}; not written") from None
    try:
        parts = path.parent.relative_to(tree.path).parts
    except ValueError:
        raise WriteError(f"{path}: outside the tree {tree.path}; not written") from None
    try:
        fd = os.open(tree.path, (os.O_RDONLY if not parts else _O_SEARCH) | os.O_DIRECTORY | _O_CLOEXEC)
    except OSError as exc:
        raise WriteError(f"{path}: cannot open {tree.path}: {exc.strerror or exc}; not written") from None
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (tree.dev, tree.ino):
        os.close(fd)
        raise WriteError(f"{path}: {tree.path} is no longer the directory that was read (moved or replaced by a "
                         f"link); not written")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        try:
            child = os.open(part, (os.O_RDONLY if last else _O_SEARCH) | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC,
                            dir_fd=fd)
        except OSError as exc:
            where = tree.path.joinpath(*parts[:i + 1])
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                reason = f"{where} was replaced (by a symbolic link?) since it was read"
            else:
                reason = f"cannot open {where}: {exc.strerror or exc}"
            raise WriteError(f"{path}: {reason}; not written") from None
        finally:
            os.close(fd)
        fd = child
    return fd


def _temporary(dir_fd: int, prefix: str) -> tuple[int, str]:
    """A new file of ours beside the target (O_EXCL: never an existing file or link)."""
    for _ in range(100):
        name = f"{prefix}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC, 0o600,
                           dir_fd=dir_fd), name
        except FileExistsError:
            continue
    raise WriteError("cannot create a temporary file")  # pragma: no cover - 100 collisions of 48 random bits


def write_atomic(path: Path, data: bytes, *, expected: bytes | None = None, tree: Tree | None = None) -> None:
    """Replace the file's content with `data`, all at once: a temporary file in the same
    directory is written, fsynced, given the original file's mode (and owner when
    possible), then renamed over the file, and the directory is fsynced. Readers see
    the old or the new content, never a mix; a crash leaves the old file.

    Never through a symbolic link: a file that is a link is refused (WriteError), so a link
    planted where a report or a plan goes cannot redirect the write. With `tree` (where the
    file was found), the directory is reached from the tree without following links (see
    Tree). A read-only file is refused. Temporary files a killed run left beside the file
    (`.NAME.acr-mirror-*.tmp`) are removed. With `expected`, the file must still hold
    exactly those bytes (it is checked before and again just before the rename); if someone
    changed it since it was read, WriteError is raised and nothing is written."""
    path = Path(path)
    name = path.name
    dir_fd = _open_directory(path, tree)
    try:
        _replace(path, name, dir_fd, data, expected)
    finally:
        os.close(dir_fd)


def _replace(path: Path, name: str, dir_fd: int, data: bytes, expected: bytes | None) -> None:
    def check() -> os.stat_result | None:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode) and expected is not None:
                raise WriteError(f"{path}: replaced by a symbolic link since it was read; not written through it")
            if stat.S_ISLNK(info.st_mode):
                raise WriteError(f"{path}: is a symbolic link; not written through it (remove the link, or name "
                                 f"the file it points to)")
            if not stat.S_ISREG(info.st_mode):
                raise WriteError(f"{path}: not a regular file; not written")
            if expected is None:
                return info
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC, dir_fd=dir_fd)
            with open(fd, "rb") as handle:
                current = handle.read()
        except FileNotFoundError:
            if expected is not None:
                raise WriteError(f"{path}: the file is gone since it was read; not written") from None
            return None
        except OSError as exc:
            raise WriteError(f"reading {path}: {exc.strerror or exc}") from None
        if current != expected:
            raise WriteError(f"{path}: the file changed since it was read; not written")
        return info

    info = check()
    if info is not None and not info.st_mode & 0o222:
        # rename() needs only the directory's permission; a file made read-only stays as it is
        raise WriteError(f"{path}: the file is read-only; not written")
    prefix = f".{name}.{TEMP_MARK}"
    with contextlib.suppress(OSError):  # left by a run that was killed mid-write
        for stale in os.listdir(dir_fd):
            if stale.startswith(prefix) and stale.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(stale, dir_fd=dir_fd)
    fd, tmp_name = _temporary(dir_fd, prefix)
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
        os.replace(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a link itself, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise
    with contextlib.suppress(OSError):  # a directory opened for search only cannot be fsynced
        os.fsync(dir_fd)
