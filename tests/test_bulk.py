"""Bulk repository updates on real git repositories, real files and local bare remotes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import Policy
from manifests_rewriter.rewrite import RewriteResult, rewrite_paths
from mirror import bulk
from mirror.bulk import (
    COMMIT_SUBJECT,
    DEFAULT_BRANCH,
    BulkError,
    RepoOutcome,
    bulk_rewrite,
    read_repo_list,
    redact,
    summary_table,
)

POLICY = Policy(r"^crazureblue\.azurecr\.io/.+$")
ACR = "crazureblue.azurecr.io"

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # the front end
spec:
  template:
    spec:
      initContainers:
        - name: init
          image: busybox:1.36   # keep this comment
      containers:
        - name: web
          image: nginx:1.27
        - name: cache
          image: "docker.io/library/redis:7.2"
        - name: ok
          image: crazureblue.azurecr.io/tools/ok:1
"""
JOB = """\
apiVersion: batch/v1
kind: Job
metadata: {name: migrate}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: tool, image: 'ghcr.io/acme/tool:v2'}]
"""
COMPLIANT = """\
apiVersion: v1
kind: Pod
metadata:
  name: fine
spec:
  containers:
    - name: fine
      image: crazureblue.azurecr.io/docker.io/library/nginx:1.27
"""
README = "Runs nginx:1.27 and image: busybox:1.36 (prose, not a manifest).\n"
FILES = {"deploy/app.yaml": DEPLOYMENT, "jobs/migrate.yml": JOB, "deploy/fine.yaml": COMPLIANT, "README.md": README}
# (file, line, old, new): what the commit must list and the diff must hold, nothing else
EXPECTED = [
    ("deploy/app.yaml", 10, "busybox:1.36", f"{ACR}/docker.io/library/busybox:1.36"),
    ("deploy/app.yaml", 13, "nginx:1.27", f"{ACR}/docker.io/library/nginx:1.27"),
    ("deploy/app.yaml", 15, "docker.io/library/redis:7.2", f"{ACR}/docker.io/library/redis:7.2"),
    ("jobs/migrate.yml", 8, "ghcr.io/acme/tool:v2", f"{ACR}/ghcr.io/acme/tool:v2"),
]


def naming_only(ref):
    return target_for(ref, ACR)


def rewrite_repo(repo: Path, *, write: bool = True) -> RewriteResult:
    return rewrite_paths([str(repo)], POLICY, naming_only, write=write)


@pytest.fixture(autouse=True)
def git_env(tmp_path, monkeypatch):
    """No user or system git configuration; a fixed identity from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Test Author")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "author@example.test")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "Test Committer")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "committer@example.test")


def git(repo: Path, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=check, capture_output=True, text=True).stdout


def make_repo(tmp_path: Path, name: str, files: dict[str, str] | None = None, *, remote: bool = True) -> Path:
    repo = tmp_path / name
    repo.mkdir()
    git(repo, "init", "--quiet", "-b", "main")
    for rel, text in (FILES if files is None else files).items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "initial")
    if remote:
        bare = tmp_path / f"{name}.git"
        git(tmp_path, "init", "--quiet", "--bare", str(bare))
        git(repo, "remote", "add", "origin", str(bare))
        git(repo, "push", "--quiet", "origin", "main")
    return repo


def snapshot(repo: Path) -> dict:
    """Everything a run must not touch: refs, HEAD, index state and every file's bytes."""
    files = {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(repo).parts}
    return {"head": git(repo, "rev-parse", "HEAD"), "symbolic": git(repo, "symbolic-ref", "-q", "HEAD", check=False),
            "refs": git(repo, "for-each-ref"), "status": git(repo, "status", "--porcelain", "-uall"), "files": files}


def branches(repo: Path) -> set[str]:
    return set(git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads").split())


def assert_only_image_strings(diff: str, expected: list[tuple[str, int, str, str]]) -> None:
    """Every removed/added line pair of a -U0 diff differs only in the expected image of that line."""
    pairs: dict[tuple[str, int], tuple[str, str]] = {}
    file, start, minus, plus = "", 0, [], []

    def flush():
        assert len(minus) == len(plus), (minus, plus)
        pairs.update({(file, start + i): pair for i, pair in enumerate(zip(minus, plus, strict=True))})
        minus.clear()
        plus.clear()

    for line in diff.splitlines():
        if line.startswith("diff --git"):
            flush()
        elif line.startswith("+++ "):
            file = line.removeprefix("+++ b/")
        elif line.startswith("@@"):
            flush()
            start = int(line.split()[1].lstrip("-").split(",")[0])
        elif line.startswith("-") and not line.startswith("--- "):
            minus.append(line[1:])
        elif line.startswith("+"):
            plus.append(line[1:])
    flush()
    assert sorted(pairs) == sorted((f, n) for f, n, _, _ in expected)
    for f, n, old, new in expected:
        old_line, new_line = pairs[f, n]
        assert old_line.count(old) == 1 and old_line.replace(old, new) == new_line, (old_line, new_line)


def test_five_repositories_one_dirty_each_other_one_branch_one_commit_pushed(tmp_path):
    repos = [make_repo(tmp_path, f"repo{i}") for i in range(5)]
    dirty = repos[2]
    (dirty / "deploy/app.yaml").write_text(DEPLOYMENT + "# work in progress\n")
    (dirty / "notes.txt").write_text("untracked\n")
    dirty_before = snapshot(dirty)
    before = {repo: git(repo, "rev-parse", "main").strip() for repo in repos}

    outcomes = bulk_rewrite(repos, rewrite_repo, push=True)

    assert [o.repo for o in outcomes] == [str(r) for r in repos]
    assert outcomes[2].status == "skipped" and outcomes[2].reason == "uncommitted changes"
    assert snapshot(dirty) == dirty_before
    assert (dirty / "deploy/app.yaml").read_text().endswith("# work in progress\n")
    assert DEFAULT_BRANCH not in git(dirty, "ls-remote", "origin")

    for repo, outcome in zip(repos, outcomes, strict=True):
        if repo == dirty:
            continue
        assert outcome.status == "changed", outcome
        assert (outcome.branch, outcome.files, outcome.images, outcome.pushed, outcome.reason) == \
            (DEFAULT_BRANCH, 2, 4, True, None)
        assert branches(repo) == {"main", DEFAULT_BRANCH}
        assert git(repo, "rev-parse", "main").strip() == before[repo]  # the original branch did not move
        assert git(repo, "rev-list", f"main..{DEFAULT_BRANCH}").split() == [outcome.commit]
        assert git(repo, "rev-parse", f"{DEFAULT_BRANCH}~1").strip() == before[repo]
        assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == DEFAULT_BRANCH  # left there for review
        assert git(repo, "status", "--porcelain", "-uall") == ""
        assert git(repo, "diff", "--name-only", "HEAD~1", "HEAD").split() == ["deploy/app.yaml", "jobs/migrate.yml"]
        assert_only_image_strings(git(repo, "diff", "--unified=0", "HEAD~1", "HEAD"), EXPECTED)
        message = git(repo, "log", "-1", "--format=%B").rstrip("\n").splitlines()
        assert message[0] == COMMIT_SUBJECT and message[1] == ""
        listed = [line for line in message if " -> " in line]
        assert listed == [f"{f}:{n}: {old} -> {new}" for f, n, old, new in EXPECTED]
        assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>").strip() == \
            "Test Author <author@example.test>|Test Committer <committer@example.test>"
        remote_refs = dict(reversed(line.split("\t")) for line in git(repo, "ls-remote", "origin").splitlines())
        assert remote_refs[f"refs/heads/{DEFAULT_BRANCH}"] == outcome.commit
        assert remote_refs["refs/heads/main"] == before[repo]
        assert git(repo, "rev-parse", "--abbrev-ref", f"{DEFAULT_BRANCH}@{{upstream}}").strip() == \
            f"origin/{DEFAULT_BRANCH}"
        # the rewritten bytes are exactly what rewrite_paths plans: only image text differs
        assert (repo / "README.md").read_text() == README
        assert (repo / "deploy/fine.yaml").read_text() == COMPLIANT

    table = summary_table(outcomes)
    assert "uncommitted changes" in table and f"{DEFAULT_BRANCH} (pushed)" in table
    assert table.splitlines()[-1] == "5 repositories: 4 changed, 0 unchanged, 1 skipped, 0 failed; 4 pushed"
    assert json.loads(json.dumps([o.as_json() for o in outcomes]))[0]["status"] == "changed"


def test_nothing_to_change_ends_unchanged_with_no_branch(tmp_path):
    repo = make_repo(tmp_path, "fine", {"deploy/fine.yaml": COMPLIANT, "README.md": README})
    before = snapshot(repo)
    [outcome] = bulk_rewrite([repo], rewrite_repo, push=True)
    assert (outcome.status, outcome.branch, outcome.commit, outcome.files, outcome.pushed) == \
        ("unchanged", None, None, 0, False)
    assert snapshot(repo) == before
    assert branches(repo) == {"main"}
    assert DEFAULT_BRANCH not in git(repo, "ls-remote", "origin")


def test_existing_branch_is_refused_never_overwritten(tmp_path):
    repo = make_repo(tmp_path, "has-branch")
    git(repo, "branch", DEFAULT_BRANCH)
    before = snapshot(repo)
    [outcome] = bulk_rewrite([repo], rewrite_repo)
    assert outcome.status == "skipped"
    assert f"branch {DEFAULT_BRANCH} already exists" in outcome.reason
    assert f"branch -D {DEFAULT_BRANCH}" in outcome.reason  # says how to clear the way
    assert snapshot(repo) == before


def test_paths_that_are_not_work_trees_are_skipped(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "app.yaml").write_text(DEPLOYMENT)
    a_file = tmp_path / "file.yaml"
    a_file.write_text(DEPLOYMENT)
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "--quiet", "--bare", str(bare))
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "--quiet", "-b", "main")
    outcomes = bulk_rewrite([plain, a_file, tmp_path / "missing", bare, empty], rewrite_repo)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("skipped", "not a git work tree"), ("skipped", "not a directory"), ("skipped", "no such directory"),
        ("skipped", "not a git work tree"), ("skipped", "no commits yet")]
    assert (plain / "app.yaml").read_text() == DEPLOYMENT
    assert a_file.read_text() == DEPLOYMENT


def test_rewrite_that_raises_leaves_the_repository_as_it_was(tmp_path):
    repo = make_repo(tmp_path, "boom")
    before = snapshot(repo)

    def explode(path: Path) -> RewriteResult:
        result = rewrite_repo(path)  # files are rewritten on disk, then it goes wrong
        assert result.written
        raise RuntimeError("resolver lost the network")

    [outcome] = bulk_rewrite([repo], explode)
    assert outcome.status == "failed"
    assert outcome.reason == "rewrite failed: RuntimeError: resolver lost the network"
    assert (outcome.branch, outcome.commit, outcome.pushed) == (None, None, False)
    assert snapshot(repo) == before
    assert branches(repo) == {"main"}


def test_refused_commit_is_undone(tmp_path, monkeypatch):
    repo = make_repo(tmp_path, "refused")
    monkeypatch.setattr(bulk, "commit_message", lambda files: "")  # git refuses an empty message
    before = snapshot(repo)
    [outcome] = bulk_rewrite([repo], rewrite_repo)
    assert outcome.status == "failed" and "git commit failed: Aborting commit due to empty commit message" in outcome.reason
    assert snapshot(repo) == before
    assert branches(repo) == {"main"}


def test_detached_head_is_restored_detached(tmp_path):
    repo = make_repo(tmp_path, "detached")
    git(repo, "switch", "--quiet", "--detach", "HEAD")
    before = snapshot(repo)
    [outcome] = bulk_rewrite([repo], lambda path: RewriteResult())
    assert outcome.status == "unchanged"
    assert snapshot(repo) == before


def test_failed_push_is_reported_without_credentials(tmp_path):
    repo = make_repo(tmp_path, "badremote", remote=False)
    git(repo, "remote", "add", "origin", "https://deploy-bot:s3cr3t-t0ken@127.0.0.1:9/team/app.git")
    [outcome] = bulk_rewrite([repo], rewrite_repo, push=True)
    assert (outcome.status, outcome.pushed, outcome.files) == ("changed", False, 2)
    assert outcome.reason.startswith("push to origin failed")
    assert "retry with git -C" in outcome.reason
    for text in (outcome.reason, json.dumps(outcome.as_json()), summary_table([outcome])):
        assert "s3cr3t" not in text
    assert git(repo, "rev-list", "--count", f"main..{DEFAULT_BRANCH}").strip() == "1"  # the commit stays


def test_push_to_a_missing_remote_is_refused_up_front(tmp_path):
    repo = make_repo(tmp_path, "noremote", remote=False)
    before = snapshot(repo)
    [outcome] = bulk_rewrite([repo], rewrite_repo, push=True)
    assert (outcome.status, outcome.reason) == ("skipped", "no remote named 'origin' to push to")
    assert snapshot(repo) == before


def test_identity_falls_back_only_when_git_has_none(tmp_path, monkeypatch):
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "x")  # make_repo commits need some identity
    unset = make_repo(tmp_path, "anon", remote=False)
    configured = make_repo(tmp_path, "configured", remote=False)
    git(configured, "config", "user.name", "Repo Owner")
    git(configured, "config", "user.email", "owner@example.test")
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("EMAIL", "")
    outcomes = bulk_rewrite([unset, configured], rewrite_repo)
    assert [o.status for o in outcomes] == ["changed", "changed"]
    ident = "%an <%ae>|%cn <%ce>"
    assert git(unset, "log", "-1", f"--format={ident}").strip() == \
        "acr-mirror <acr-mirror@localhost>|acr-mirror <acr-mirror@localhost>"
    assert git(configured, "log", "-1", f"--format={ident}").strip() == \
        "Repo Owner <owner@example.test>|Repo Owner <owner@example.test>"
    assert subprocess.run(["git", "-C", str(unset), "config", "--get", "user.name"]).returncode == 1  # nothing saved


def test_ignored_files_are_put_back_and_not_committed(tmp_path):
    repo = make_repo(tmp_path, "ignored", {**FILES, ".gitignore": "generated/\n"}, remote=False)
    (repo / "generated").mkdir()
    (repo / "generated/out.yaml").write_text(DEPLOYMENT)
    [outcome] = bulk_rewrite([repo], rewrite_repo)
    assert (outcome.status, outcome.files, outcome.images) == ("changed", 2, 4)
    assert "not tracked by git, put back unchanged: generated/out.yaml" in outcome.reason
    assert (repo / "generated/out.yaml").read_text() == DEPLOYMENT
    assert git(repo, "diff", "--name-only", "HEAD~1", "HEAD").split() == ["deploy/app.yaml", "jobs/migrate.yml"]


def test_dry_run_changes_nothing_and_says_what_would_happen(tmp_path):
    repos = [make_repo(tmp_path, "a"), make_repo(tmp_path, "b", {"deploy/fine.yaml": COMPLIANT})]
    before = [snapshot(r) for r in repos]
    outcomes = bulk_rewrite(repos, rewrite_repo, push=True, dry_run=True)
    assert [(o.status, o.files, o.images, o.commit, o.pushed) for o in outcomes] == [
        ("changed", 2, 4, None, False), ("unchanged", 0, 0, None, False)]
    assert outcomes[0].reason == f"dry run: would commit 2 files on {DEFAULT_BRANCH} and push to origin"
    assert [snapshot(r) for r in repos] == before
    assert all(DEFAULT_BRANCH not in git(r, "ls-remote", "origin") for r in repos)


def test_same_repository_twice_and_subdirectory(tmp_path):
    repo = make_repo(tmp_path, "twice", remote=False)
    outcomes = bulk_rewrite([repo / "deploy", repo], rewrite_repo)
    assert outcomes[0].status == "changed" and (outcomes[0].files, outcomes[0].images) == (1, 3)
    assert (outcomes[1].status, outcomes[1].reason) == ("skipped", f"same repository as {repo / 'deploy'}")
    assert git(repo, "diff", "--name-only", "HEAD~1", "HEAD").split() == ["deploy/app.yaml"]


def test_invalid_branch_name_is_a_usage_error(tmp_path):
    repo = make_repo(tmp_path, "r", remote=False)
    for bad in ("bad..name", "-x", "has space"):
        with pytest.raises(BulkError):
            bulk_rewrite([repo], rewrite_repo, branch=bad)
    assert branches(repo) == {"main"}


def test_read_repo_list(tmp_path):
    lst = tmp_path / "lists" / "repos.txt"
    lst.parent.mkdir()
    lst.write_text("# team repositories\n\n  ../one  \n/abs/two\n   # indented comment\n~/three\n")
    assert read_repo_list(lst) == [lst.parent / "../one", Path("/abs/two"), Path(os.environ["HOME"]) / "three"]


def test_redact_hides_url_credentials():
    assert redact("fatal: unable to access 'https://u:p@ss@host:8443/x.git/': refused") == \
        "fatal: unable to access 'https://***@host:8443/x.git/': refused"
    assert redact("ssh://token@host/x and git@github.com:org/x.git") == "ssh://***@host/x and git@github.com:org/x.git"


def test_summary_table_columns():
    table = summary_table([RepoOutcome("/r/a", "changed", DEFAULT_BRANCH, "abc", 2, 4, None, True),
                           RepoOutcome("/r/bb", "skipped", reason="uncommitted changes")])
    lines = table.splitlines()
    assert lines[0].split() == ["REPOSITORY", "STATUS", "FILES", "IMAGES", "BRANCH", "REASON"]
    assert lines[1].split() == ["/r/a", "changed", "2", "4", DEFAULT_BRANCH, "(pushed)", "-"]
    assert lines[2].split() == ["/r/bb", "skipped", "0", "0", "-", "uncommitted", "changes"]
    assert lines[3] == "2 repositories: 1 changed, 0 unchanged, 1 skipped, 0 failed; 1 pushed"


def test_interrupt_restores_the_repository_then_propagates(tmp_path):
    repo = make_repo(tmp_path, "ctrl-c", remote=False)
    before = snapshot(repo)

    def interrupted(path: Path) -> RewriteResult:
        rewrite_repo(path)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bulk_rewrite([repo], interrupted)
    assert snapshot(repo) == before
    assert branches(repo) == {"main"}
