"""What a new user meets first (issue 12, item 5): diffs `git apply` takes, regexes shown as
written, plurals, and one exit-code table that every command applies the same way."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from manifests_rewriter import cli as hook_cli
from mirror import cli

TARGET = "crazureblue.azurecr.io"
REGEX = r"^crazureblue\.azurecr\.io/.+$"
CONFIG = f"""\
target: {{registry: {TARGET}}}
policy:
  imageRegex: '{REGEX}'
"""
POD = "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n  - name: app\n    image: {image}\n"

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def run(args: list[str], *, main=cli.main) -> Result:
    return CliRunner().invoke(main, args, catch_exceptions=False)


def git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


# -- diffs ----------------------------------------------------------------------------------------


def _awkward_files(root: Path) -> dict[str, bytes]:
    """Files whose diffs git is picky about, by name relative to root."""
    files = {
        "k8s/pod.yaml": POD.format(image="nginx:1.27").encode(),
        "k8s/no-final-newline.yaml": POD.format(image="redis:7").rstrip("\n").encode(),
        "k8s/crlf.yaml": POD.format(image="busybox:1.36").replace("\n", "\r\n").encode(),
        "k8s/with space.yaml": POD.format(image="quay.io/x/y:1").encode(),
        # old Mac line breaks: one line for git, many for str.splitlines
        "k8s/sub/cr-only.yaml": POD.format(image="alpine:3").replace("\n", "\r").encode(),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "acr-mirror.yaml").write_text(CONFIG)
    return files


@needs_git
@pytest.mark.parametrize("how", ["./k8s", "k8s/", "absolute", "hook"])
def test_diff_is_taken_by_git_apply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """`--diff` output applies with the real `git apply` in the directory the command ran in, and
    applying it gives exactly the bytes a rewrite writes."""
    repo = tmp_path / "repo"
    repo.mkdir()
    files = _awkward_files(repo)
    assert git(repo, "init", "-q").returncode == 0
    git(repo, "add", "-A")
    assert git(repo, "commit", "-qm", "before").returncode == 0
    monkeypatch.chdir(repo)
    if how == "hook":
        result = run(["--diff", *files], main=hook_cli.main)
    else:
        path = str(repo / "k8s") if how == "absolute" else how
        result = run(["rewrite", "--no-verify", "--diff", path])
    assert result.exit_code == 0, result.output
    headers = [line for line in result.stdout.splitlines() if line.startswith(("--- ", "+++ "))]
    assert len(headers) == 2 * len(files)
    assert all(h[4:].startswith(("a/k8s/", "b/k8s/")) for h in headers), headers  # no a/./ and no absolute path
    patch = tmp_path / "change.patch"
    patch.write_bytes(result.stdout_bytes)  # .stdout turns \r\n into \n
    check = git(repo, "apply", "--check", str(patch))
    assert check.returncode == 0, check.stderr
    assert {name: (repo / name).read_bytes() for name in files} == files  # --diff wrote nothing
    assert git(repo, "apply", str(patch)).returncode == 0
    patched = {name: (repo / name).read_bytes() for name in files}
    git(repo, "checkout", "-q", "--", ".")
    assert run(["rewrite", "--no-verify", "k8s"]).exit_code == 0
    rewritten = {name: (repo / name).read_bytes() for name in files}
    assert patched == rewritten and all(rewritten[n] != files[n] for n in files)


def test_diff_outside_the_current_directory_names_absolute_paths(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    files = _awkward_files(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run(["rewrite", "--no-verify", "--diff", "--config", "../acr-mirror.yaml", "../k8s/pod.yaml"])
    assert result.exit_code == 0, result.output
    pod = str(tmp_path / "k8s" / "pod.yaml")
    assert f"--- {pod}\n+++ {pod}\n" in result.stdout
    assert len(files) > 1
