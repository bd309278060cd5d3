"""Hostile input: a table of inputs, each with the exact expected outcome.

Files (through the three command lines, in process): one clear line naming the file, the exit
code, nothing written (bytes, mtimes and modes of every file in and around the tree unchanged,
no temporary file left), and the rest of the tree still handled.  Races between reading and
writing, read-only files and directories, config files.  Registries that misbehave (oversized or
lying manifests, redirect loops, redirects to another host, garbage from the token endpoint)
through the fault proxy.  Property tests of the reference parser and of rewriting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manifests_rewriter import cli as hook_cli
from manifests_rewriter import files as files_module
from manifests_rewriter import rewrite as rewrite_module
from manifests_rewriter.config import ScanSettings
from manifests_rewriter.files import WriteError, write_atomic
from manifests_rewriter.locate import locate
from manifests_rewriter.reference import ReferenceError, parse
from mirror import cli

from ..support.work import Work, counting

ROOT = Path(__file__).resolve().parents[2]
TARGET = "crazureblue.azurecr.io"
CONFIG = f"""\
target: {{registry: {TARGET}}}
policy:
  imageRegex: '^crazureblue\\.azurecr\\.io/.+$'
"""
POD = "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
GOOD = POD.format(image="nginx:1.25")
GOOD_REWRITTEN = POD.format(image=f"{TARGET}/docker.io/library/nginx:1.25")
MAX_FILE_BYTES = ScanSettings().max_file_bytes  # scan.max_file_bytes when the config does not say
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")  # raw control characters (tab and newline aside)


# --------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under `roots` (links not followed): content hash, size, mtime_ns and mode, or the link."""
    state: dict[str, tuple[Any, ...]] = {}
    for root in roots:
        for directory, subdirs, files in os.walk(root, followlinks=False):
            for name in [*subdirs, *files]:
                path = Path(directory, name)
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode):
                    state[str(path)] = ("link", os.readlink(path))
                elif stat.S_ISREG(info.st_mode):
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    state[str(path)] = ("file", digest, info.st_size, info.st_mtime_ns, stat.S_IMODE(info.st_mode))
                elif stat.S_ISDIR(info.st_mode):
                    state[str(path)] = ("dir", stat.S_IMODE(info.st_mode))
                else:
                    state[str(path)] = ("other", stat.S_IFMT(info.st_mode))
    return state


def changed(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str
    work: Work | None = None  # steps and bytes read (tests/support/work.py), when counted
    peak_bytes: int = 0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        """The "error: FILE: why" lines (stderr; scan's table report prints them on stdout)."""
        return [line for line in self.output.splitlines() if line.startswith("error:")]


def invoke(main: Any, args: list[str], *, trace_memory: bool = False, max_steps: int | None = None) -> Run:
    """Run a CLI in this process; with `max_steps`, count its work and stop it past that many steps."""
    runner = CliRunner()
    if trace_memory:
        tracemalloc.start()
    work = None
    try:
        with counting(max_steps) if max_steps is not None else contextlib.nullcontext() as work:
            result = runner.invoke(main, args, catch_exceptions=True)
    finally:
        peak = 0
        if trace_memory:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr, work, peak)


def linear_work(tree: Path) -> int:
    """Failing fast, in steps: work linear in the YAML the tree may hold (regular files under the
    size limit), never the expansion a bomb asks for (see tests/support/work.py)."""
    size = sum(p.stat().st_size for p in tree.rglob("*")
               if p.is_file() and not p.is_symlink() and p.stat().st_size <= MAX_FILE_BYTES)
    return 8 * size + 25_000


def commands(config: Path, path: Path) -> dict[str, tuple[Any, list[str]]]:
    return {
        "scan": (cli.main, ["scan", str(path), "--config", str(config)]),
        "rewrite": (cli.main, ["rewrite", str(path), "--no-verify", "--config", str(config)]),
        "hook": (hook_cli.main, ["--config", str(config), str(path)]),
    }


@pytest.fixture
def workspace(tmp_path: Path) -> dict[str, Path]:
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    tree.mkdir()
    outside.mkdir()
    (tree / "ok.yaml").write_text(GOOD)
    (outside / "secret.yaml").write_text(POD.format(image="redis:7"))
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    return {"tree": tree, "outside": outside, "config": config, "tmp": tmp_path}


# --------------------------------------------------------------------------- the file table


def _billion_laughs_list(tree: Path) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 10):
        prev, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    lines += ["kind: Pod", "spec:", "  containers:", "  - {name: x, image: nginx}", "  - *j"]
    (tree / "bomb.yaml").write_text("\n".join(lines) + "\n")
    return ["bomb.yaml"]


def _billion_laughs_map(tree: Path) -> str:
    lines = ["apiVersion: v1", "kind: List", "x0: &x0 {image: nginx, name: c}"]
    for level in range(1, 12):
        keys = ", ".join(f"k{i}: *x{level - 1}" for i in range(8))
        lines.append(f"x{level}: &x{level} {{{keys}}}")
    lines += ["items:", "- kind: Pod", "  spec:", "    containers: [*x0]", "    initContainers:", "    - *x11"]
    (tree / "bomb-map.yaml").write_text("\n".join(lines) + "\n")
    return ["bomb-map.yaml"]


def _deep_flow(tree: Path) -> str:
    (tree / "deep-flow.yaml").write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    return ["deep-flow.yaml"]


def _deep_block(tree: Path) -> str:
    text = "".join("  " * i + "a:\n" for i in range(1500)) + "  " * 1500 + "b\n"
    (tree / "deep-block.yaml").write_text(text)
    return ["deep-block.yaml"]


def _huge(tree: Path) -> str:
    line = b"# " + b"x" * 97 + b"\n"
    with open(tree / "huge.yaml", "wb") as handle:
        handle.write(GOOD.encode())
        block = line * 10_000
        for _ in range(105):
            handle.write(block)  # ~100 MB of valid YAML (comments)
    return ["huge.yaml"]


def _binary(tree: Path) -> str:
    (tree / "image.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return ["image.yaml"]


def _utf16(tree: Path) -> str:
    (tree / "utf16.yaml").write_bytes(GOOD.encode("utf-16"))
    return ["utf16.yaml"]


def _latin1(tree: Path) -> str:
    (tree / "latin1.yaml").write_bytes(GOOD.replace("name: app", "name: caf\xe9").encode("latin-1"))
    return ["latin1.yaml"]


def _link_loop(tree: Path) -> str:
    (tree / "loop-a.yaml").symlink_to("loop-b.yaml")
    (tree / "loop-b.yaml").symlink_to("loop-a.yaml")
    return ["loop-a.yaml", "loop-b.yaml"]


def _broken_link(tree: Path) -> str:
    (tree / "gone.yaml").symlink_to("nowhere.yaml")
    return ["gone.yaml"]


def _escaping_file_link(tree: Path) -> str:
    (tree / "escape.yaml").symlink_to(tree.parent / "outside" / "secret.yaml")
    return ["escape.yaml"]


def _escaping_dir_link(tree: Path) -> str:
    (tree / "vendor").symlink_to(tree.parent / "outside", target_is_directory=True)
    return ["vendor"]


def _relative_escape(tree: Path) -> str:
    (tree / "sub").mkdir()
    (tree / "sub" / "up.yaml").symlink_to("../../outside/secret.yaml")
    return ["sub/up.yaml"]


def _fifo(tree: Path) -> str:
    os.mkfifo(tree / "pipe.yaml")
    return ["pipe.yaml"]


@dataclass(frozen=True)
class Row:
    name: str
    build: Callable[[Path], list[str]]  # creates the hostile entries, returns their names (as reported)
    message: str  # regex the one error line about the file must match
    max_memory: int | None = None  # bytes (tracemalloc peak)


FILE_ROWS = [
    Row("billion-laughs-list", _billion_laughs_list, r"YAML bomb\?\); refused", 64 << 20),
    Row("billion-laughs-map", _billion_laughs_map, r"YAML bomb\?\); refused", 64 << 20),
    Row("deep-flow-nesting", _deep_flow, r"nested more than \d+ levels deep; refused", 64 << 20),
    Row("deep-block-nesting", _deep_block, r"nested more than \d+ levels deep; refused", 128 << 20),
    Row("100MB-file", _huge, r"file is [\d,]+ bytes, over the limit of [\d,]+ \(scan\.max_file_bytes\)", 24 << 20),
    Row("binary-file", _binary, r"binary file \(contains NUL bytes\), not YAML"),
    Row("utf16-file", _utf16, r"binary file \(contains NUL bytes\), not YAML"),
    Row("latin1-file", _latin1, r"line 6: not UTF-8 text \(byte 0xe9 at offset \d+\)"),
    Row("symlink-loop", _link_loop, r"symbolic link loop or broken link; skipped"),
    Row("broken-symlink", _broken_link, r"symbolic link loop or broken link; skipped"),
    Row("file-link-escaping-tree", _escaping_file_link, r"symbolic link points outside the tree \(.*\); skipped"),
    Row("dir-link-escaping-tree", _escaping_dir_link, r"symbolic link points outside the tree \(.*\); skipped"),
    Row("relative-link-escaping-tree", _relative_escape, r"symbolic link points outside the tree \(.*\); skipped"),
]


@pytest.mark.parametrize("row", FILE_ROWS, ids=[r.name for r in FILE_ROWS])
@pytest.mark.parametrize("command", ["scan", "rewrite", "hook"])
def test_hostile_file(workspace: dict[str, Path], row: Row, command: str, figures: Any):
    tree, outside = workspace["tree"], workspace["outside"]
    bad = row.build(tree)
    figures.record("hostile", tried=1)
    main, args = commands(workspace["config"], tree)[command]
    before = snapshot(tree, outside)
    run = invoke(main, args, max_steps=linear_work(tree))

    assert "Traceback" not in run.output
    assert run.exit_code == 1, run.output
    errors = run.error_lines()
    assert [e.split(": ", 2)[1] for e in errors] == [str(tree / b) for b in bad], run.output  # one line per entry
    for error in errors:
        assert re.search(row.message, error), error
    # fast, in counts: YAML work linear in the tree, and no file read beyond the size limit
    assert run.work is not None and run.work.steps <= linear_work(tree), run.work
    assert run.work.read <= MAX_FILE_BYTES, f"read {run.work.read:,} bytes"
    if row.max_memory is not None:  # again, traced (tracemalloc slows the run, so not timed)
        peak = invoke(main, args, trace_memory=True).peak_bytes
        assert peak < row.max_memory, f"peak {peak / 2**20:.1f} MiB"
    # nothing written but the good file (by the writing commands), the rest of the tree still handled
    expected_changes = {str(tree / "ok.yaml")} if command != "scan" else set()
    assert changed(before, snapshot(tree, outside)) == expected_changes
    if command == "scan":
        assert "nginx:1.25" in run.stdout
    else:
        assert (tree / "ok.yaml").read_text() == GOOD_REWRITTEN
    assert (outside / "secret.yaml").read_text() == POD.format(image="redis:7")
    figures.record("hostile", handled=1)


@pytest.mark.parametrize("command", ["scan", "rewrite", "hook"])
def test_link_loop_through_directories_terminates(workspace: dict[str, Path], command: str, figures: Any):
    """A directory link back into the tree (sub/again -> ..) is not walked twice, and nothing hangs."""
    tree = workspace["tree"]
    (tree / "sub").mkdir()
    (tree / "sub" / "again").symlink_to("..", target_is_directory=True)
    (tree / "sub" / "self").symlink_to(".", target_is_directory=True)
    figures.record("hostile", tried=1)
    main, args = commands(workspace["config"], tree)[command]
    listed: list[str] = []
    scandir = os.scandir

    expected = {str(tree), str(tree / "sub")}

    def counted_scandir(path: Any = ".") -> Any:
        listed.append(os.path.normpath(path))
        if len(listed) > 10 * len(expected):  # a loop being followed: stop it here
            raise AssertionError(f"listed {listed[-1]} after {len(listed) - 1} listings")
        return scandir(path)

    with mock.patch.object(files_module.os, "scandir", counted_scandir):
        run = invoke(main, args)
    assert "Traceback" not in run.output
    # only the two real directories are listed: a link followed even once adds sub/again or sub/self
    assert set(listed) == expected, listed
    assert run.error_lines() == []
    assert run.exit_code == (0 if command == "rewrite" else 1)
    if command == "scan":
        assert run.stdout.count("ok.yaml:7:") == 1  # found once, not once per path to it
    figures.record("hostile", handled=1)


@pytest.mark.parametrize("command", ["scan", "rewrite", "hook"])
def test_fifo_in_the_tree_is_refused_not_waited_on(workspace: dict[str, Path], command: str, figures: Any):
    tree = workspace["tree"]
    [bad] = _fifo(tree)
    figures.record("hostile", tried=1)
    stop = threading.Event()
    hung = threading.Event()

    def unblock() -> None:
        """The hang guard: after 30 s, a writer. Opening one succeeds only while a reader has the
        pipe open, i.e. the command is still waiting on it (then the test ends, and fails)."""
        if not stop.wait(30):
            try:
                fd = os.open(tree / bad, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return
            hung.set()
            os.close(fd)

    helper = threading.Thread(target=unblock, daemon=True)
    helper.start()
    main, args = commands(workspace["config"], tree)[command]
    try:
        run = invoke(main, args)
    finally:
        stop.set()
    assert not hung.is_set(), "the command waited on a named pipe"
    [error] = run.error_lines()
    assert error.startswith(f"error: {tree / bad}: ") and "not a regular file" in error
    figures.record("hostile", handled=1)


# --------------------------------------------------------------------------- images in the file


@pytest.mark.parametrize("command", ["scan", "rewrite", "hook"])
@pytest.mark.parametrize("kind", ["10KB-image", "nul-escape-image", "unicode-image", "whitespace-image"])
def test_hostile_image_strings(workspace: dict[str, Path], command: str, kind: str, figures: Any):
    """Invalid image strings: reported (scan) or skipped with the reason (rewrite), never written, no crash."""
    tree = workspace["tree"]
    value, reason = {
        "10KB-image": ("a" * 10_240 + ":1", "characters long"),
        "nul-escape-image": ('"nginx\\0:1"', "control characters"),
        "unicode-image": ('"ngínx:1"', ""),
        "whitespace-image": ('"nginx :1"', ""),
    }[kind]
    (tree / "bad.yaml").write_text(POD.format(image=value))
    figures.record("hostile", tried=1)
    before = snapshot(tree)
    main, args = commands(workspace["config"], tree)[command]
    run = invoke(main, args)
    assert "Traceback" not in run.output and run.error_lines() == []
    assert changed(before, snapshot(tree)) == ({str(tree / "ok.yaml")} if command != "scan" else set())
    if command == "scan":
        assert run.exit_code == 1
        assert "not a valid image reference" in run.stdout and reason in run.stdout
    else:
        skipped = [line for line in run.stderr.splitlines() if line.startswith("skipped:")]
        assert len(skipped) == 1 and f"{tree / 'bad.yaml'}:7:" in skipped[0] and "not rewritten" in skipped[0]
        assert reason in skipped[0]
        assert run.exit_code == (0 if command == "rewrite" else 1)
    figures.record("hostile", handled=1)


@pytest.mark.parametrize("command", ["scan", "rewrite", "hook"])
def test_control_characters_never_reach_the_terminal(workspace: dict[str, Path], command: str, figures: Any):
    """An image string or a file name carrying ESC sequences or newlines is printed escaped."""
    tree = workspace["tree"]
    (tree / "ctrl.yaml").write_text(POD.format(image='"nginx\\e]0;owned\\a\\e[2J:1"'))
    (tree / "evil\x1b[31m\nerror: forged.yaml").write_bytes(b"\xff not utf-8")
    figures.record("hostile", tried=1)
    main, args = commands(workspace["config"], tree)[command]
    run = invoke(main, args)
    assert "Traceback" not in run.output
    assert not CONTROL.search(run.output), [line for line in run.output.splitlines() if CONTROL.search(line)]
    assert not any(line.startswith("error: forged.yaml") for line in run.output.splitlines())
    figures.record("hostile", handled=1)


# --------------------------------------------------------------------------- changed between read and write


def test_write_atomic_refuses_a_file_changed_since_it_was_read(tmp_path: Path, figures: Any):
    path = tmp_path / "a.yaml"
    path.write_text(GOOD)
    read = path.read_bytes()
    path.write_text(GOOD + "# the user's edit\n")
    figures.record("hostile", tried=1)
    with pytest.raises(WriteError, match="changed since it was read; not written"):
        write_atomic(path, GOOD_REWRITTEN.encode(), expected=read)
    assert path.read_text() == GOOD + "# the user's edit\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml"]  # no temporary file left
    figures.record("hostile", handled=1)


def test_write_atomic_refuses_a_file_deleted_since_it_was_read(tmp_path: Path, figures: Any):
    path = tmp_path / "a.yaml"
    path.write_text(GOOD)
    read = path.read_bytes()
    path.unlink()
    figures.record("hostile", tried=1)
    with pytest.raises(WriteError, match="gone since it was read"):
        write_atomic(path, GOOD_REWRITTEN.encode(), expected=read)
    assert list(tmp_path.iterdir()) == []
    figures.record("hostile", handled=1)


def _user_edits(path: Path, text: str) -> Callable[[], None]:
    def edit() -> None:
        path.write_text(text)
        info = path.stat()
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))

    return edit


@pytest.mark.parametrize("when", ["after-plan", "inside-write-atomic", "replaced-by-link"])
@pytest.mark.parametrize("command", ["rewrite", "hook"])
def test_file_changed_between_scan_and_rewrite_keeps_the_users_edit(
        workspace: dict[str, Path], monkeypatch: pytest.MonkeyPatch, when: str, command: str, figures: Any):
    """The file changes after it was read and planned: refused with one line, the user's edit kept."""
    tree, outside = workspace["tree"], workspace["outside"]
    path = tree / "ok.yaml"
    users = GOOD.replace("name: app", "name: app-renamed-by-user")
    if when == "replaced-by-link":
        def edit() -> None:
            path.unlink()
            path.symlink_to(outside / "secret.yaml")
    else:
        edit = _user_edits(path, users)

    if when in ("after-plan", "replaced-by-link"):
        real_plan = rewrite_module.plan_file

        def plan_then_edit(*args: Any, **kwargs: Any) -> Any:
            planned = real_plan(*args, **kwargs)
            edit()
            return planned

        monkeypatch.setattr(rewrite_module, "plan_file", plan_then_edit)
    else:  # between write_atomic's first check and its rename: the second check must see it
        real_temporary = files_module._temporary

        def temporary_after_edit(*args: Any, **kwargs: Any) -> Any:
            edit()
            return real_temporary(*args, **kwargs)

        monkeypatch.setattr(files_module, "_temporary", temporary_after_edit)

    figures.record("hostile", tried=1)
    main, args = commands(workspace["config"], tree)[command]
    run = invoke(main, args)
    assert run.exit_code == 1 and "Traceback" not in run.output
    [error] = run.error_lines()
    assert error.startswith(f"error: {path}: ") or error.startswith(f"error: {tree}")
    assert "since it was read; not written" in error
    if when == "replaced-by-link":
        assert path.is_symlink() and (outside / "secret.yaml").read_text() == POD.format(image="redis:7")
    else:
        assert path.read_text() == users
    assert sorted(p.name for p in tree.iterdir()) == ["ok.yaml"]  # no temporary file left
    figures.record("hostile", handled=1)


# --------------------------------------------------------------------------- read-only files and directories


@pytest.mark.parametrize("command", ["rewrite", "hook"])
def test_read_only_file_is_not_replaced(workspace: dict[str, Path], command: str, figures: Any):
    tree = workspace["tree"]
    path = tree / "ok.yaml"
    path.chmod(0o444)
    figures.record("hostile", tried=1)
    before = snapshot(tree)
    main, args = commands(workspace["config"], tree)[command]
    run = invoke(main, args)
    assert run.exit_code == 1 and "Traceback" not in run.output
    [error] = run.error_lines()
    assert error.startswith(f"error: {path}: ")
    assert changed(before, snapshot(tree)) == set()
    figures.record("hostile", handled=1)


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True)
    return probe.returncode == 0


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "manifests-rewriter")])}


def _run_read_only(mount: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI where `mount` is bind-mounted read-only (a private mount namespace): even root cannot write."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(mount),
                           sys.executable, *argv], capture_output=True, text=True, env=_env(), timeout=60)


@pytest.mark.parametrize("command", ["rewrite", "hook"])
def test_read_only_directory(workspace: dict[str, Path], command: str, figures: Any):
    """The directory cannot take the temporary file: one line naming the file, exit 1, file intact."""
    tree = workspace["tree"]
    config = workspace["config"]
    argv = {"rewrite": ["-m", "mirror.cli", "rewrite", str(tree), "--no-verify", "--config", str(config)],
            "hook": ["-m", "manifests_rewriter.cli", "--config", str(config), str(tree)]}[command]
    before = snapshot(tree)
    tree.chmod(0o555)
    try:
        if os.access(tree, os.W_OK):  # root: permissions do not stop it; a read-only mount does
            if not _can_unshare():
                pytest.skip("running as root without mount namespaces: no way to make a directory read-only")
            figures.record("hostile", tried=1)
            result = _run_read_only(tree, argv)
            code, stderr = result.returncode, result.stderr
        else:
            figures.record("hostile", tried=1)
            main, args = commands(config, tree)[command]
            run = invoke(main, args)
            code, stderr = run.exit_code, run.stderr
    finally:
        tree.chmod(0o755)
    assert code == 1 and "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {tree / 'ok.yaml'}: cannot write"), stderr
    assert re.search(r"Read-only file system|Permission denied", errors[0])
    assert changed(before, snapshot(tree)) == set()
    figures.record("hostile", handled=1)


@pytest.mark.skipif(not _can_unshare(), reason="needs root and mount namespaces (a file bind-mounted read-only)")
def test_file_that_cannot_be_replaced(workspace: dict[str, Path], figures: Any):
    """The file itself is a read-only mount point: rename over it fails (EBUSY); the temporary file is removed."""
    tree, config = workspace["tree"], workspace["config"]
    path = tree / "ok.yaml"
    before = snapshot(tree)
    figures.record("hostile", tried=1)
    result = _run_read_only(path, ["-m", "manifests_rewriter.cli", "--config", str(config), str(path)])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: cannot write"), result.stderr
    assert changed(before, snapshot(tree)) == set()
    figures.record("hostile", handled=1)


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("command", ["scan", "sync", "rewrite", "hook", "plan", "migrate"])
@pytest.mark.parametrize("extra, key", [
    ("targets: {registry: x.io}\n", "'targets'"),
    ("copy: {concurency: 4}\n", "copy.concurency"),
    ("registries:\n  docker.io: {endpont: https://m.example}\n", "registries.docker.io.endpont"),
    ("scan: {max_file_byte: 1}\n", "scan.max_file_byte"),
])
def test_config_unknown_keys_exit_2_nothing_written(workspace: dict[str, Path], command: str, extra: str, key: str,
                                                    figures: Any):
    tree, config = workspace["tree"], workspace["config"]
    config.write_text(CONFIG + extra)
    figures.record("hostile", tried=1)
    before = snapshot(tree)
    if command == "hook":
        main, args = hook_cli.main, ["--config", str(config), str(tree)]
    else:
        main, args = cli.main, [command, str(tree), "--config", str(config)]
    run = invoke(main, args)
    assert run.exit_code == 2, run.output
    assert len(run.error_lines()) == 1 and key in run.error_lines()[0] and "unknown key" in run.error_lines()[0]
    assert str(config) in run.error_lines()[0]
    assert "Traceback" not in run.output
    assert changed(before, snapshot(tree)) == set()
    figures.record("hostile", handled=1)


@pytest.mark.parametrize("command", ["scan", "rewrite", "hook"])
def test_config_with_plain_text_password_warns_and_never_shows_it(workspace: dict[str, Path], command: str,
                                                                  figures: Any):
    tree, config = workspace["tree"], workspace["config"]
    secret = "Pl41n-T3xt-" + hashlib.sha256(command.encode()).hexdigest()[:12]
    config.write_text(CONFIG + f"registries:\n  docker.io: {{username: u, password: {secret}}}\n")
    figures.record("hostile", tried=1)
    main, args = commands(config, tree)[command]
    run = invoke(main, args)
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:") and "plain text" in line]
    assert len(warnings) == 1 and "registries.docker.io.password" in warnings[0]
    assert secret not in run.output
    assert run.exit_code == {"scan": 1, "rewrite": 0, "hook": 1}[command]  # the usual outcome, warning or not
    figures.record("hostile", handled=1)


# --------------------------------------------------------------------------- properties


_controls = st.characters(min_codepoint=0, max_codepoint=0x9f).filter(lambda c: not c.isprintable())
_hostile_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.sampled_from("abc/:@.-_0123456789sha256ABCDEF[]%$"), max_size=400),
    st.builds(lambda a, c, b: a + c + b, st.from_regex(r"[a-z0-9./:-]{0,40}", fullmatch=True), _controls,
              st.from_regex(r"[a-z0-9./:@-]{0,40}", fullmatch=True)),
    st.integers(min_value=200, max_value=20_000).map(lambda n: "a" * n),
    st.integers(min_value=1, max_value=300).map(lambda n: "a/" * n + "b:1"),
)


@settings(max_examples=300, deadline=None)
@given(_hostile_text)
def test_reference_parser_never_crashes_and_never_accepts_control_characters(text: str):
    """Extends tests/test_reference.py: long, deep and control-character strings; what parses is printable ASCII."""
    try:
        ref = parse(text)
    except ReferenceError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    formatted = str(ref)
    assert re.fullmatch(r"[\x21-\x7e]+", formatted), formatted
    assert len(formatted) <= len(text) + len("docker.io/library/") + len(":latest")


_styles = st.sampled_from(["plain", "single", "double"])
_names = st.sampled_from(["nginx:1.25", "redis", "quay.io/org/app:v1", "ghcr.io/a/b@sha256:" + "a" * 64,
                          "localhost:5000/x/y:z", f"{TARGET}/already/there:1", "{{ .Values.image }}", "$IMAGE",
                          "registry.k8s.io/pause:3.9"])
_fillers = st.sampled_from(["", "  # comment: image: fake:1", " #x"])


@st.composite
def pod_documents(draw: Any) -> str:
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    docs = []
    for d in range(draw(st.integers(1, 3))):
        lines = [f"apiVersion: v1{draw(_fillers)}", "kind: Pod", f"metadata: {{name: p{d}}}",
                 "spec:", "  containers:"]
        for i in range(draw(st.integers(1, 3))):
            image = draw(_names)
            style = draw(_styles)
            if style == "single":
                image = "'" + image + "'"
            elif style == "double" or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._/:@+-]*", image):
                image = '"' + image + '"'
            lines += [f"  - name: c{i}", f"    image: {image}{draw(_fillers)}",
                      f"    env: [{{name: IMAGE, value: \"{draw(_names)}\"}}]"]
        docs.append(newline.join(lines))
    prefix = draw(st.sampled_from(["", "\ufeff", "# header" + newline]))
    return prefix + (newline + "---" + newline).join(docs) + draw(st.sampled_from(["", newline]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pod_documents())
def test_rewrite_never_changes_bytes_outside_image_spans(tmp_path: Path, text: str):
    """Extends the locator's properties to the whole rewrite: only located image spans change, the result
    re-reads to the same images (rewritten where refused), and a second run writes nothing."""
    from manifests_rewriter.config import parse_config
    from manifests_rewriter.naming import target_for
    from manifests_rewriter.rewrite import rewrite_paths

    config = parse_config({"target": {"registry": TARGET}, "policy": {"imageRegex": r"^crazureblue\.azurecr\.io/.+$"}})
    policy = config.policy
    path = tmp_path / f"p{abs(hash(text))}.yaml"
    raw = text.encode("utf-8")
    path.write_bytes(raw)
    resolve = lambda ref: target_for(ref, config.target_registry, config.naming)  # noqa: E731
    result = rewrite_paths([str(path)], policy, resolve)
    assert result.errors == []
    new = path.read_bytes().decode("utf-8")
    fields = [f for f in locate(text) if f.scalar is not None and f.source != "hint"]
    spans = sorted({(f.scalar.start, f.scalar.end) for f in fields})
    pattern, pos = "", 0
    for start, end in spans:
        pattern += re.escape(text[pos:start]) + "(.*?)"
        pos = end
    pattern += re.escape(text[pos:])
    match = re.fullmatch(pattern, new, flags=re.DOTALL)
    assert match is not None, "bytes outside the image spans changed"
    for old_field, value in zip(sorted(fields, key=lambda f: f.scalar.start), match.groups(), strict=False):
        assert "\n" not in value and "\r" not in value
        if not policy.refuses(old_field.value):
            assert value == text[old_field.scalar.start:old_field.scalar.end]
    again = rewrite_paths([str(path)], policy, resolve)
    assert again.written == [] and path.read_bytes().decode("utf-8") == new
    path.unlink()


def test_hostile_results_are_json_serialisable_for_the_report(workspace: dict[str, Path]):
    """scan --format json of the whole hostile tree is valid JSON with one error entry per bad file."""
    tree = workspace["tree"]
    builders = [r.build for r in FILE_ROWS if r.name != "100MB-file"]
    names = [name for build in builders for name in build(tree)]
    run = invoke(cli.main, ["scan", str(tree), "--config", str(workspace["config"]), "--format", "json"])
    data = json.loads(run.stdout)
    reported = {Path(e["file"]).name for e in data["errors"]}
    assert {Path(n).name for n in names} <= reported
    assert run.exit_code == 1


# --------------------------------------------------------------------------- hostile registries


from mirror.registry.transport import MAX_REDIRECTS  # noqa: E402
from mirror.settings import CopySettings  # noqa: E402

from .conftest import registry_state, write_config  # noqa: E402
from .faultproxy import Fault, FaultProxy, ProxyRequest, always  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def hostile_world(basic_registry: Any, target_registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  fault_proxy: Callable[..., FaultProxy]) -> dict[str, Any]:
    """A basic-auth source with one image (so Authorization headers are really sent), an empty target."""
    from tests.support.images import build_image, push

    image = build_image(tmp_path / "oci", layers=[64 * 1024, 1024], seed="hostile/registry")
    push(image, basic_registry, "app/victim", "1")
    monkeypatch.setenv("HOSTILE_SOURCE_PASSWORD", basic_registry.password)
    return {"source": basic_registry, "target": target_registry, "image": image, "tmp": tmp_path,
            "make_proxy": fault_proxy, "ref": f"{basic_registry.host}/app/victim:1"}


def _hostile_sync(world: dict[str, Any], source_endpoint: str, **copy: Any) -> tuple[Any, dict[str, Any]]:
    source, target, tmp = world["source"], world["target"], world["tmp"]
    config = write_config(tmp / "config.yaml", target.host, {
        source.host: {"endpoint": source_endpoint, "insecure": True, "username": source.username,
                      "password_env": "HOSTILE_SOURCE_PASSWORD"},
        target.host: {"insecure": True},
    }, **copy)
    report = tmp / "report.json"
    result = CliRunner().invoke(cli.main, ["sync", "--image", world["ref"], "--config", str(config),
                                           "--report", str(report)], catch_exceptions=False)
    return result, json.loads(report.read_text()) if report.exists() else {}


def _refused(world: dict[str, Any], result: Any, report: dict[str, Any], pattern: str) -> str:
    """The one image failed with an error matching `pattern`, said once, and nothing reached the target."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    [item] = report["images"]
    assert item["status"] == "failed" and re.search(pattern, item["error"] or ""), item["error"]
    assert "\n" not in item["error"]
    assert registry_state(world["target"].url) == {}
    return item["error"]


def test_registry_manifest_over_4_mib(hostile_world: dict[str, Any], figures: Any):
    """A registry answering a 5 MiB 'manifest' (honest digest header): refused before it is all read."""
    body = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","layers":[' + b" " * (5 << 20) + b"]}"
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    huge = Fault("respond", status=200, body=body, headers=(("Content-Type", OCI_MANIFEST),
                                                             ("Docker-Content-Digest", digest)))
    proxy = hostile_world["make_proxy"](hostile_world["source"].url,
                                        always(huge, lambda r: "/manifests/" in r.path and r.method == "GET"))
    figures.record("hostile", tried=1)
    result, report = _hostile_sync(hostile_world, proxy.url)
    _refused(hostile_world, result, report, r"over the 4 MiB limit")
    figures.record("hostile", handled=1)


@pytest.mark.parametrize("where", ["GET", "HEAD and GET"])
def test_registry_digest_header_lies(hostile_world: dict[str, Any], where: str, figures: Any):
    methods = ("GET",) if where == "GET" else ("GET", "HEAD")
    proxy = hostile_world["make_proxy"](hostile_world["source"].url,
                                        always("lie-digest", lambda r: "/manifests/" in r.path and r.method in methods))
    figures.record("hostile", tried=1)
    result, report = _hostile_sync(hostile_world, proxy.url)
    _refused(hostile_world, result, report, r"(?i)digest|MANIFEST_UNKNOWN")
    figures.record("hostile", handled=1)


def test_registry_redirect_loop(hostile_world: dict[str, Any], figures: Any):
    """Blob GETs redirect to themselves: a clear error after a few hops, quickly, not a hang or a retry storm."""
    def loop(request: ProxyRequest) -> Fault | None:
        if request.method == "GET" and request.is_blob:
            return Fault("redirect", status=307, location=request.path)
        return None

    proxy = hostile_world["make_proxy"](hostile_world["source"].url, loop)
    figures.record("hostile", tried=1)
    result, report = _hostile_sync(hostile_world, proxy.url)
    _refused(hostile_world, result, report, r"too many redirects")
    # quickly, in counts: each attempt stops after MAX_REDIRECTS hops, and attempts are bounded
    assert 0 < proxy.injected["redirect"] <= (MAX_REDIRECTS + 1) * (CopySettings().retries + 1)
    figures.record("hostile", handled=1)


def test_registry_redirect_to_another_host_drops_authorization(hostile_world: dict[str, Any], figures: Any):
    """Blob GETs are sent to 'storage' on another host (as ACR does): the copy works, and the
    Authorization header goes to the registry only, never to the other host."""
    source = hostile_world["source"]
    auth = "Basic " + base64_of(f"{source.username}:{source.password}")
    # the storage host: serves blobs from the registry itself (like a pre-signed URL, it needs no header)
    storage = hostile_world["make_proxy"](source.url, inject_headers={"Authorization": auth})
    storage_url = f"http://localhost:{storage.port}"

    def to_storage(request: ProxyRequest) -> Fault | None:
        if request.method == "GET" and request.is_blob:
            return Fault("redirect", status=307, location=storage_url + request.path)
        return None

    registry = hostile_world["make_proxy"](source.url, to_storage)
    figures.record("hostile", tried=1)
    result, report = _hostile_sync(hostile_world, registry.url)
    assert result.exit_code == 0, result.output
    assert [i["status"] for i in report["images"]] == ["copied"]
    assert storage.wait_idle() and registry.wait_idle()
    assert storage.requests >= 2  # config and layers came from storage
    assert any(s.authorization for s in registry.seen), "the registry never got credentials: nothing to leak"
    assert [s.path for s in storage.seen if s.authorization] == [], "Authorization followed the redirect"
    figures.record("hostile", handled=1)


def base64_of(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize("garbage", ["html", "json-without-token", "truncated-json", "huge"])
def test_token_endpoint_returning_garbage(token_registry: Any, target_registry: Any, tmp_path: Path,
                                          fault_proxy: Callable[..., FaultProxy], monkeypatch: pytest.MonkeyPatch,
                                          garbage: str, figures: Any):
    """The registry's challenge names a token endpoint that answers nonsense: one clear error, nothing written."""
    from tests.support.images import build_image, push

    image = build_image(tmp_path / "oci", layers=[1024], seed="hostile/token")
    push(image, token_registry, "app/t", "1")
    body = {"html": b"<html><body>Service Unavailable</body></html>",
            "json-without-token": b'{"message": "ok", "expires_in": 300}',
            "truncated-json": b'{"token": "eyJhbGciOi',
            "huge": b'{"token": "' + b"A" * (8 << 20) + b'"}'}[garbage]
    bogus = fault_proxy(token_registry.token_url or "http://127.0.0.1:1",
                        always(Fault("respond", status=200, body=body, headers=(("Content-Type", "application/json"),))))
    real_realm = token_registry.token_url or ""

    def point_to_bogus(status: int, headers: list[tuple[str, str]], data: bytes) -> Any:
        headers = [(k, v.replace(real_realm, bogus.url + "/token") if k.lower() == "www-authenticate" else v)
                   for k, v in headers]
        return status, headers, data

    registry = fault_proxy(token_registry.url, always(Fault("mutate", mutate=point_to_bogus)))
    monkeypatch.setenv("HOSTILE_TOKEN_PASSWORD", token_registry.password)
    config = write_config(tmp_path / "config.yaml", target_registry.host, {
        token_registry.host: {"endpoint": registry.url, "insecure": True, "username": token_registry.username,
                              "password_env": "HOSTILE_TOKEN_PASSWORD"},
        bogus.url.split("/")[2]: {"insecure": True},  # the (plain-HTTP) realm may receive the credentials
        target_registry.host: {"insecure": True},
    })
    report = tmp_path / "report.json"
    figures.record("hostile", tried=1)
    result = CliRunner().invoke(cli.main, ["sync", "--image", f"{token_registry.host}/app/t:1", "--config",
                                           str(config), "--report", str(report)], catch_exceptions=False)
    assert 1 <= bogus.requests <= 2  # bounded by requests, not time: a nonsense answer is not asked again and again
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    [item] = json.loads(report.read_text())["images"]
    assert item["status"] == "failed" and re.search(r"(?i)token", item["error"]), item["error"]
    assert len(item["error"]) < 1000 and "\n" not in item["error"]
    assert registry_state(target_registry.url) == {}
    print(f"{garbage}: {item['error']}")
    figures.record("hostile", handled=1)
