"""Bulk repository updates: rewrite many local git checkouts in one run, one branch each.

Per repository (`bulk_rewrite`), through the `git` command line (argument lists, never a
shell):

1. Refuse, leaving it untouched (status "skipped"): a path that is not a git work tree, a
   repository without commits, one with a merge/rebase/cherry-pick/revert/bisect in progress,
   a dirty working tree (`git status --porcelain` not empty, untracked files included: reason
   "uncommitted changes"), a branch name that already exists (never overwritten; the reason
   says how to delete it), and with `push` a remote that is not configured.
2. `git switch -c BRANCH` from HEAD, then `rewrite_repo(repo)`, which rewrites files in place
   and returns the `RewriteResult`.
3. Files written that git does not track (ignored files) are put back byte for byte; the
   rest is checked against `git status` (the rewrite must not have changed anything it did
   not report), staged by name (`git add -- FILE...`, literal pathspecs) and committed:
   subject "Point container images at the allowed registry", body one line per image
   change, `path:line: old -> new` (paths relative to the work tree's top). Author and
   committer come from git's own configuration and environment; only when `user.name` or
   `user.email` is unset is `-c user.name=acr-mirror` / `-c user.email=acr-mirror@localhost`
   given. The checkout is left on the new branch, for review. Nothing written: back to the
   original branch, the new branch is deleted ("unchanged").
4. Any failure (the rewrite raised, git failed, a hook refused the commit, Ctrl-C): the new
   branch is reset, the original branch (or detached HEAD) checked out again and the new
   branch deleted, so the repository is as it was ("failed", with the reason; Ctrl-C is
   re-raised once the repository is restored). Untracked files are never deleted: if any
   appeared, the reason lists them.
5. `push`: `git push -u REMOTE refs/heads/BRANCH:refs/heads/BRANCH` (no terminal prompts,
   stdin closed, a time limit). A failed push leaves the commit in place: status "changed",
   `pushed` False, and the reason says how to retry.

Every message that may contain git output is passed through `redact`, which hides the user
information (`user:password@`, `token@`) of URLs, so a remote URL with credentials is never
shown.

No code of a checkout runs. The checkouts are often someone else's (a bulk update of many
teams' repositories), and git runs commands a repository's own configuration names. On every
git call acr-mirror makes: no hooks at all (`core.hooksPath=/dev/null`, `--no-verify`), no
`core.fsmonitor`, no `ext::` transport, no submodule recursion, no automatic gc, no pager. And
each command-running key the checkout's own config (`.git/config`, `config.worktree` and what
they include) sets is pinned to the user's own value (system, global) or made harmless (see
`_pins`): clean/smudge/process filters, credential helpers, `core.sshCommand`, `core.askPass`,
`core.gitProxy`, `gpg.*program`, `commit.gpgSign`, `remote.*.receivepack` (as push's option), diff
drivers, `http.sslVerify`. A file to commit that needs a filter only the checkout defines
fails the repository with a reason (committing it unfiltered would store the wrong content).
The user's own configuration still applies (identity, signing, their credential helpers unless
the checkout names helpers of its own: then none runs, and a push that needs credentials fails
with the retry command).

`dry_run`: nothing in a repository is changed. The read-only refusals of step 1 apply; then
`rewrite_repo(repo, write=False)` is called, so a callable used with `dry_run` must accept a
`write` keyword and write nothing when it is False (as `rewrite_paths` does). The outcome
says what would happen: "changed" (with the files and images that would be committed) or
"unchanged"; `commit` stays None. If the working tree is not exactly as before afterwards,
the outcome is "failed".
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manifests_rewriter.errors import UsageError
from manifests_rewriter.files import WriteError, printable, redact_url, write_atomic
from manifests_rewriter.rewrite import FileRewrite, RewriteResult

DEFAULT_BRANCH = "acr-mirror/allowed-images"
COMMIT_SUBJECT = "Point container images at the allowed registry"
FALLBACK_NAME = "acr-mirror"
FALLBACK_EMAIL = "acr-mirror@localhost"
PUSH_TIMEOUT = 600.0  # seconds; a push that waits on a prompt or a dead network ends here

# Environment that would point `git -C REPO` at another repository, or at another index.
_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY",
                  "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_COMMON_DIR", "GIT_NAMESPACE", "GIT_PREFIX")
_IN_PROGRESS = (("rebase-merge", "rebase"), ("rebase-apply", "rebase or am"), ("MERGE_HEAD", "merge"),
                ("CHERRY_PICK_HEAD", "cherry-pick"), ("REVERT_HEAD", "revert"), ("BISECT_LOG", "bisect"))
# Set on every git call: nothing a checkout configures runs through these (module docstring).
SAFE_CONFIG = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "protocol.ext.allow=never",
               "submodule.recurse=false", "push.recurseSubmodules=no", "gc.auto=0", "maintenance.auto=false")
# Keys (as `git config --list` spells them: section and name lower case) whose value is a command git
# runs, or that hand credentials on: when the checkout's own config sets one, it is pinned to the
# user's value or to this harmless one (None: a credential helper, handled as a list).
_COMMAND_KEYS: tuple[tuple[re.Pattern[str], str | None], ...] = (
    (re.compile(r"filter\..+\.(clean|smudge|process)"), ""),
    (re.compile(r"credential\.(.+\.)?helper"), None),
    (re.compile(r"core\.sshcommand"), "ssh"),
    (re.compile(r"core\.askpass"), ""),
    (re.compile(r"gpg\.program|gpg\.openpgp\.program"), "gpg"),
    (re.compile(r"gpg\.x509\.program"), "gpgsm"),
    (re.compile(r"gpg\.ssh\.program"), "ssh-keygen"),
    (re.compile(r"gpg\.ssh\.defaultkeycommand"), ""),
    (re.compile(r"(commit|tag)\.gpgsign"), "false"),
    (re.compile(r"diff\.external|diff\..+\.(textconv|command)"), ""),
    (re.compile(r"http\.(.+\.)?sslverify"), "true"),
)
_TRUSTED_SCOPES = ("system", "global", "command")  # the user's own; "local" and "worktree" are the checkout's


class BulkError(UsageError):
    """The run cannot start at all (git missing, an invalid branch name)."""


@dataclass
class RepoOutcome:
    repo: str
    status: str  # "changed" | "unchanged" | "skipped" | "failed"
    branch: str | None = None
    commit: str | None = None
    files: int = 0
    images: int = 0
    reason: str | None = None
    pushed: bool = False

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


redact = redact_url  # hide credentials in URLs: `https://user:pass@host` -> `https://***@host`


def read_repo_list(path: str | os.PathLike[str]) -> list[Path]:
    """One repository path per line; blank lines and lines starting with '#' are ignored.
    `~` is expanded; a relative path is taken relative to the list file's directory."""
    list_path = Path(path)
    base = list_path.parent
    repos: list[Path] = []
    for line in list_path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        repo = Path(entry).expanduser()
        repos.append(repo if repo.is_absolute() else base / repo)
    return repos


# --- git -----------------------------------------------------------------------------------


class _GitFailed(Exception):
    pass


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCATION_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"  # fail rather than wait for a password nobody will type
    env["GIT_LITERAL_PATHSPECS"] = "1"  # a file named '*.yaml' or '[a].yaml' means itself
    return env


@dataclass
class _Pins:
    """What neutralises the command-running keys one checkout's own config sets."""

    config: list[str]  # `-c key=value` arguments
    env: dict[str, str]
    filters: set[str]  # filter drivers only the checkout defines (disabled)
    helpers: bool = False  # the checkout names credential helpers (none runs)
    receive_pack: dict[str, str] = field(default_factory=dict)  # remote -> program (the first one set wins: an option)


def _pins(git: _Git) -> _Pins:
    """Read every config entry with its scope; pin each command key the checkout sets (its own
    `.git/config`, `config.worktree` and what they include) to the user's value, else to a
    harmless one (_COMMAND_KEYS)."""
    listing = git.run("config", "--list", "--show-scope", "-z").stdout.split("\0")
    entries: list[tuple[str, str, str]] = []
    for scope, entry in zip(listing[::2], listing[1::2], strict=False):
        key, _, value = entry.partition("\n")
        entries.append((scope, key, value))
    pins = _Pins([], {}, set())
    untrusted = {key for scope, key, _ in entries if scope not in _TRUSTED_SCOPES}
    trusted: dict[str, str] = {key: value for scope, key, value in entries if scope in _TRUSTED_SCOPES}
    for key in sorted(untrusted):
        if key == "core.gitproxy":  # a list matched in order: only the environment overrides it
            pins.env["GIT_PROXY_COMMAND"] = os.environ.get("GIT_PROXY_COMMAND", "")
            continue
        if key.startswith("remote.") and key.endswith(".receivepack"):  # git uses the first one: push's option wins
            pins.receive_pack[key[len("remote."):-len(".receivepack")]] = trusted.get(key, "git-receive-pack")
            continue
        for pattern, harmless in _COMMAND_KEYS:
            if not pattern.fullmatch(key):
                continue
            if harmless is None:
                pins.helpers = True
                break
            pins.config += ["-c", f"{key}={trusted.get(key, harmless)}"]
            if key.startswith("filter.") and key not in trusted:
                driver = key[len("filter."):].rpartition(".")[0]
                pins.filters.add(driver)
                pins.config += ["-c", f"filter.{driver}.required=false"]
            break
    if pins.helpers:  # an empty helper resets the list (URL-specific helpers too): none of them runs
        pins.config += ["-c", "credential.helper="]
    return pins


def _summarize(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("hint:")]
    return redact("; ".join(lines)) or "no message"


def _safe_config() -> list[str]:
    return [arg for item in SAFE_CONFIG for arg in ("-c", item)]


class _Git:
    def __init__(self, path: Path, env: dict[str, str], pins: _Pins | None = None) -> None:
        self.path = path
        self.env = env
        self.pins = pins or _Pins([], {}, set())

    def run(self, *args: str, input: str | None = None, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["git", "--no-pager", "-C", str(self.path), *_safe_config(), *self.pins.config, *args]
        try:
            done = subprocess.run(argv, input=input, capture_output=True, text=True, encoding="utf-8",
                                  errors="surrogateescape", env={**self.env, **self.pins.env}, timeout=timeout,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise _GitFailed(f"git {_command(args)} did not finish within {timeout:.0f} s") from None
        except OSError as exc:
            raise _GitFailed(f"cannot run git: {exc.strerror or exc}") from None
        if check and done.returncode != 0:
            raise _GitFailed(f"git {_command(args)} failed: {_summarize(done.stderr)}")
        return done

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).returncode == 0

    def out(self, *args: str) -> str:
        return self.run(*args).stdout

    def status_paths(self, untracked: str = "normal") -> set[str]:
        """Paths (relative to the top) that `git status` reports, untracked ones included.
        Submodules are not entered (each has a config of its own; the rewrite puts back what
        it wrote there, as git does not track it here)."""
        entries = self.out("status", "--porcelain", "-z", "--ignore-submodules=all",
                           f"--untracked-files={untracked}").split("\0")
        paths: set[str] = set()
        it = iter(entries)
        for entry in it:
            if not entry:
                continue
            paths.add(entry[3:])
            if entry[0] in "RC":  # a rename or copy: the next entry is the original path
                paths.add(next(it, ""))
        paths.discard("")
        return paths

    def tracked(self, paths: Iterable[str]) -> set[str]:
        paths = list(paths)
        if not paths:
            return set()
        return {p for p in self.out("ls-files", "-z", "--", *paths).split("\0") if p}

    def check_filters(self, paths: Sequence[str]) -> None:
        """Refuse to stage a file whose filter only the checkout's config defines: it is
        disabled, and committing the file unfiltered would store the wrong content."""
        if not self.pins.filters or not paths:
            return
        fields = self.out("check-attr", "-z", "filter", "--", *paths).split("\0")
        for path, _, driver in zip(fields[::3], fields[1::3], fields[2::3], strict=False):
            if driver in self.pins.filters:
                raise _GitFailed(f"{path} goes through the filter {driver!r} that the checkout's own config "
                                 f"defines; acr-mirror runs no command of a checkout: commit this repository by hand")


def _command(args: Sequence[str]) -> str:
    args = list(args)
    while len(args) >= 2 and args[0] == "-c":  # `-c user.name=...`: show the subcommand
        args = args[2:]
    return args[0] if args else ""


# --- one repository ------------------------------------------------------------------------


class _Refused(Exception):
    """Skipped before anything was changed."""


def _check_repository(repo: Path, branch: str, push: bool, remote: str, env: dict[str, str],
                      seen: dict[Path, str]) -> tuple[_Git, str | None, str]:
    """The refusals that need no change to the repository. Returns (git at the top of the
    work tree, original branch or None when detached, HEAD commit)."""
    if not repo.exists():
        raise _Refused("no such directory")
    if not repo.is_dir():
        raise _Refused("not a directory")
    probe = _Git(repo, env).run("rev-parse", "--is-inside-work-tree", check=False)
    if probe.returncode != 0 or probe.stdout.strip() != "true":
        # "not a git repository" says nothing more; other errors (e.g. dubious ownership) do
        detail = "" if probe.returncode == 0 or "not a git repository" in probe.stderr else _summarize(probe.stderr)
        raise _Refused("not a git work tree" + (f" ({detail})" if detail else ""))
    lines = _Git(repo, env).out("rev-parse", "--show-toplevel").splitlines()
    top = Path(lines[0]).resolve()
    if top in seen:
        raise _Refused(f"same repository as {seen[top]}")
    seen[top] = str(repo)
    git = _Git(top, env, _pins(_Git(top, env)))  # before any command that could run the checkout's code
    head = git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False)
    if head.returncode != 0:
        raise _Refused("no commits yet")
    for marker, operation in _IN_PROGRESS:
        where = Path(git.out("rev-parse", "--git-path", marker).strip())
        if not where.is_absolute():
            where = top / where
        if where.exists():
            raise _Refused(f"a {operation} is in progress")
    if git.status_paths():
        raise _Refused("uncommitted changes")
    if git.ok("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"):
        raise _Refused(f"branch {branch} already exists; it is never overwritten: delete it "
                       f"(git -C {shlex.quote(str(repo))} branch -D {shlex.quote(branch)}) or choose another branch")
    if push and remote not in git.out("remote").split():
        raise _Refused(f"no remote named {remote!r} to push to")
    symbolic = git.run("symbolic-ref", "--quiet", "HEAD", check=False)
    ref = symbolic.stdout.strip()
    original = ref.removeprefix("refs/heads/") if symbolic.returncode == 0 and ref.startswith("refs/heads/") else None
    return git, original, head.stdout.strip()


def _written(result: RewriteResult, top: Path, *, dry_run: bool) -> list[tuple[str, FileRewrite]]:
    """(path relative to the top, file) for each file the rewrite wrote (would write)."""
    written = set(result.written)
    files: list[tuple[str, FileRewrite]] = []
    for planned in result.changed:
        if not dry_run and planned.source.display not in written:
            continue
        real = Path(os.path.realpath(planned.source.path))
        if not real.is_relative_to(top):
            raise _GitFailed(f"the rewrite wrote {planned.source.display}, outside the repository")
        files.append((real.relative_to(top).as_posix(), planned))
    return sorted(files, key=lambda item: item[0])


def _put_back(files: Iterable[tuple[str, FileRewrite]]) -> list[str]:
    """Restore the original bytes of files git does not track (those the rewrite wrote, still
    as it wrote them; never through a link); returns their paths."""
    restored = []
    for rel, planned in files:
        source = planned.source
        try:
            write_atomic(source.path, source.raw, expected=planned.new_text.encode("utf-8"), tree=source.tree)
        except (OSError, WriteError):
            continue
        restored.append(rel)
    return restored


def commit_message(files: Sequence[tuple[str, FileRewrite]]) -> str:
    images = sum(len(planned.changes) for _, planned in files)
    lines = [COMMIT_SUBJECT, "",
             f"acr-mirror rewrote {images} image reference{'s' * (images != 1)} "
             f"in {len(files)} file{'s' * (len(files) != 1)}:", ""]
    for rel, planned in files:
        lines.extend(f"{rel}:{change.line}: {change.old} -> {change.new}" for change in planned.changes)
    return "\n".join(lines) + "\n"


def _identity(git: _Git) -> list[str]:
    args: list[str] = []
    for key, fallback in (("user.name", FALLBACK_NAME), ("user.email", FALLBACK_EMAIL)):
        if not git.out("config", "--default", "", "--get", key).strip():
            args += ["-c", f"{key}={fallback}"]
    return args


def _notes(result: RewriteResult, untracked: Sequence[str]) -> list[str]:
    notes = []
    if result.errors:
        notes.append(f"{len(result.errors)} file{'s' * (len(result.errors) != 1)} not rewritten "
                     f"({redact(str(result.errors[0]))}"
                     f"{', ...' if len(result.errors) > 1 else ''})")
    if result.skipped:
        notes.append(f"{len(result.skipped)} reference{'s' * (len(result.skipped) != 1)} left as written "
                     f"({redact(str(result.skipped[0]))}"
                     f"{', ...' if len(result.skipped) > 1 else ''})")
    if untracked:
        notes.append(f"not tracked by git, put back unchanged: {', '.join(untracked)}")
    return notes


def _restore(git: _Git, branch: str, original: str | None, head: str, created: bool,
             result: RewriteResult | None, before_untracked: set[str]) -> list[str]:
    """Bring the repository back to where it was; returns what could not be done."""
    problems = []
    on_new = git.run("symbolic-ref", "--quiet", "HEAD", check=False).stdout.strip() == f"refs/heads/{branch}"
    try:
        git.run("reset", "--hard", "--quiet")  # moves no ref: HEAD's own content back
    except _GitFailed as exc:
        problems.append(str(exc))
    if result is not None:
        try:
            top = git.path
            written = _written(result, top, dry_run=False)
            tracked = git.tracked(rel for rel, _ in written)
            _put_back([(rel, f) for rel, f in written if rel not in tracked])
        except _GitFailed as exc:
            problems.append(str(exc))
    try:
        if original is not None:
            git.run("switch", "--quiet", original)
        else:
            git.run("switch", "--quiet", "--detach", head)
    except _GitFailed as exc:
        problems.append(str(exc))
    if created and not problems:
        try:
            git.run("branch", "--quiet", "-D", branch)
        except _GitFailed as exc:
            problems.append(str(exc))
    elif created:
        problems.append(f"branch {branch} left in place" + (" (checked out)" if on_new else ""))
    try:
        appeared = git.status_paths("all") - before_untracked
        if appeared:
            problems.append(f"files left in the working tree: {', '.join(sorted(appeared))}")
    except _GitFailed as exc:
        problems.append(str(exc))
    return problems


def _process(repo: Path, rewrite_repo: Callable[..., RewriteResult], *, branch: str, push: bool, remote: str,
             dry_run: bool, env: dict[str, str], seen: dict[Path, str]) -> RepoOutcome:
    name = str(repo)
    try:
        git, original, head = _check_repository(repo, branch, push, remote, env, seen)
    except _Refused as exc:
        return RepoOutcome(name, "skipped", reason=redact(str(exc)))
    except _GitFailed as exc:
        return RepoOutcome(name, "skipped", reason=str(exc))
    if dry_run:
        return _preview(repo, git, rewrite_repo, branch=branch, push=push, remote=remote)

    created = False
    result: RewriteResult | None = None
    before_untracked: set[str] = set()
    try:
        before_untracked = git.status_paths("all")  # empty (the tree is clean) unless someone is racing us
        git.run("switch", "--quiet", "-c", branch)
        created = True
        result = rewrite_repo(Path(os.path.realpath(repo)))  # the checkout named, as a tree of its own
        written = _written(result, git.path, dry_run=False)
        tracked = git.tracked(rel for rel, _ in written)
        untracked = _put_back([(rel, f) for rel, f in written if rel not in tracked])
        files = [(rel, f) for rel, f in written if rel in tracked]
        notes = _notes(result, untracked)
        unexpected = git.status_paths("all") - before_untracked - {rel for rel, _ in files}
        if unexpected:
            raise _GitFailed(f"the rewrite changed files it did not report: {', '.join(sorted(unexpected))}")
        if not files:
            if original is not None:
                git.run("switch", "--quiet", original)
            else:
                git.run("switch", "--quiet", "--detach", head)
            git.run("branch", "--quiet", "-D", branch)
            created = False
            return RepoOutcome(name, "unchanged", reason="; ".join(notes) or None)
        git.check_filters([rel for rel, _ in files])
        git.run("add", "--", *(rel for rel, _ in files))
        git.run(*_identity(git), "commit", "--quiet", "--no-verify", "--cleanup=verbatim", "--file=-",
                input=commit_message(files))
        commit = git.out("rev-parse", "--verify", "HEAD").strip()
        committed = {p for p in git.out("diff-tree", "--no-commit-id", "--no-ext-diff", "--no-textconv", "--name-only",
                                        "-r", "-z", commit).split("\0") if p}
        if committed != {rel for rel, _ in files}:
            raise _GitFailed(f"the commit holds {', '.join(sorted(committed))}, not the rewritten files")
    except BaseException as exc:
        # before the branch exists nothing has been changed; after, undo everything
        problems = _restore(git, branch, original, head, created, result, before_untracked) if created else []
        if not isinstance(exc, Exception):
            raise
        reason = str(exc) if isinstance(exc, _GitFailed) else f"rewrite failed: {type(exc).__name__}: {exc}"
        if problems:
            reason += "; could not fully restore: " + "; ".join(problems)
        return RepoOutcome(name, "failed", reason=redact(reason))

    outcome = RepoOutcome(name, "changed", branch=branch, commit=commit, files=len(files),
                          images=sum(len(f.changes) for _, f in files))
    if push:
        try:
            program = git.pins.receive_pack.get(remote)
            git.run("push", "--quiet", "--no-verify", *([f"--receive-pack={program}"] if program else []), "-u", remote,
                    f"refs/heads/{branch}:refs/heads/{branch}", timeout=PUSH_TIMEOUT)
            outcome.pushed = True
        except _GitFailed as exc:
            helpers = "; the checkout's config names credential helpers, none was run" if git.pins.helpers else ""
            notes.append(f"push to {remote} failed ({exc}{helpers}); the commit is in place, retry with "
                         f"git -C {shlex.quote(name)} push -u {shlex.quote(remote)} {shlex.quote(branch)}")
    outcome.reason = redact("; ".join(notes)) or None
    return outcome


def _preview(repo: Path, git: _Git, rewrite_repo: Callable[..., RewriteResult], *, branch: str, push: bool,
             remote: str) -> RepoOutcome:
    name = str(repo)
    try:
        before = git.out("status", "--porcelain", "-z", "--ignore-submodules=all", "--untracked-files=all")
        result = rewrite_repo(Path(os.path.realpath(repo)), write=False)
        written = _written(result, git.path, dry_run=True)
        tracked = git.tracked(rel for rel, _ in written)
        files = [(rel, f) for rel, f in written if rel in tracked]
        if git.out("status", "--porcelain", "-z", "--ignore-submodules=all", "--untracked-files=all") != before:
            raise _GitFailed("the dry run changed the working tree (does rewrite_repo honour write=False?)")
    except _GitFailed as exc:
        return RepoOutcome(name, "failed", reason=redact(str(exc)))
    except Exception as exc:
        return RepoOutcome(name, "failed", reason=redact(f"rewrite failed: {type(exc).__name__}: {exc}"))
    notes = _notes(result, [rel for rel, _ in written if rel not in tracked])
    if not files:
        return RepoOutcome(name, "unchanged", reason="; ".join(notes) or None)
    images = sum(len(f.changes) for _, f in files)
    notes.insert(0, f"dry run: would commit {len(files)} file{'s' * (len(files) != 1)} on {branch}"
                 + (f" and push to {remote}" if push else ""))
    return RepoOutcome(name, "changed", branch=branch, files=len(files), images=images, reason="; ".join(notes))


# --- the run -------------------------------------------------------------------------------


def bulk_rewrite(repos: Sequence[Path], rewrite_repo: Callable[..., RewriteResult], *,
                 branch: str = DEFAULT_BRANCH, push: bool = False, remote: str = "origin",
                 dry_run: bool = False) -> list[RepoOutcome]:
    """Rewrite each repository on its own new branch; one outcome per repository, in order.

    `rewrite_repo(repo)` rewrites the files of one repository in place; with `dry_run` it is
    called as `rewrite_repo(repo, write=False)` and must write nothing. Raises BulkError when
    git is missing or the branch name is not a valid one."""
    if shutil.which("git") is None:
        raise BulkError("git is not installed (or not on PATH)")
    env = _git_env()
    check = subprocess.run(["git", *_safe_config(), "check-ref-format", "--branch", branch], capture_output=True,
                           text=True, env=env, stdin=subprocess.DEVNULL)
    if check.returncode != 0 or branch.startswith("-"):
        raise BulkError(f"{branch!r} is not a valid branch name")
    if not remote or remote.startswith("-"):
        raise BulkError(f"{remote!r} is not a valid remote name")
    seen: dict[Path, str] = {}
    return [_process(Path(repo), rewrite_repo, branch=branch, push=push, remote=remote, dry_run=dry_run,
                     env=env, seen=seen) for repo in repos]


def summary_table(outcomes: Sequence[RepoOutcome]) -> str:
    """A plain text table, one row per repository, and a line of totals."""
    header = ("REPOSITORY", "STATUS", "FILES", "IMAGES", "BRANCH", "REASON")
    rows = [header]
    for o in outcomes:
        branch = (o.branch or "-") + (" (pushed)" if o.pushed else "")
        reason = " ".join((o.reason or "-").split())
        # names and reasons come from the checkouts and from git: escaped before widths are taken
        rows.append((printable(o.repo), o.status, str(o.files), str(o.images), printable(branch), printable(reason)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in (2, 3) else cell.ljust(w) for i, (cell, w) in enumerate(zip(row[:-1], widths, strict=True))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    counts = {s: sum(o.status == s for o in outcomes) for s in ("changed", "unchanged", "skipped", "failed")}
    total = len(outcomes)
    lines.append(f"{total} repositor{'y' if total == 1 else 'ies'}: "
                 + ", ".join(f"{n} {s}" for s, n in counts.items())
                 + (f"; {sum(o.pushed for o in outcomes)} pushed" if any(o.pushed for o in outcomes) else ""))
    return "\n".join(lines)
