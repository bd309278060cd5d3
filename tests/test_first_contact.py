"""What a new user meets first (issue 12, item 5): diffs `git apply` takes, regexes shown as
written, plurals, and one exit-code table that every command applies the same way."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from manifests_rewriter import cli as hook_cli
from mirror import cli

ROOT = Path(__file__).resolve().parents[1]
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


# -- regexes as written -----------------------------------------------------------------------------


def _config(root: Path, regex: str) -> str:
    # the regex goes in as YAML writes it in single quotes, exactly as a user would type it
    (root / "acr-mirror.yaml").write_text(f"target: {{registry: {TARGET}}}\npolicy:\n"
                                          f"  imageRegex: '{regex.replace(chr(39), chr(39) * 2)}'\n")
    return str(root / "acr-mirror.yaml")


@pytest.mark.parametrize(("regex", "args", "where"), [
    (r"crazureblue\.azurecr\.io/", ["policy", "lint"], "stderr"),  # not anchored
    (r"^[a-z]+\.azurecr\.io/", ["policy", "lint"], "stderr"),  # any *.azurecr.io
    (r"^crazureblue\.azurecr\.io/mirror/", ["scan", "pod.yaml"], "stderr"),  # the naming is refused
    (r"^crazureblue\.azurecr\.io/(?=x)", ["scan", "pod.yaml"], "stderr"),  # not RE2
    (r"^crazureblue\.azurecr\.io/.+$", ["policy", "lint"], "stdout"),  # ok
    (r"^crazureblue\.azurecr\.io/.+$", ["scan", "pod.yaml", "--format", "json"], "stdout"),  # the reason
    (r"^crazureblue\.azurecr\.io/(it's|app)/", ["policy", "lint"], "stderr"),  # a quote inside
])
def test_regexes_are_shown_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, regex: str,
                                      args: list[str], where: str) -> None:
    """Every message naming the regex shows it in YAML's single quotes: pasted back into the
    config it is the same regex; never a Python repr with doubled backslashes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pod.yaml").write_text(POD.format(image="nginx:1.27"))
    _config(tmp_path, regex)
    result = run([*args, "--config", "acr-mirror.yaml"])
    shown = "'" + regex.replace("'", "''") + "'"
    if "json" in args:  # JSON escapes backslashes itself: look at the value
        [finding] = json.loads(result.stdout)["findings"]
        assert finding["reason"].startswith(f"does not match imageRegex {shown} ")
    else:
        assert f"imageRegex {shown}" in getattr(result, where), result.output
        assert "\\\\" not in result.output
    assert yaml.safe_load(f"imageRegex: {shown}")["imageRegex"] == regex  # it pastes back as it was


# -- plurals ----------------------------------------------------------------------------------------


def _singular_problems(text: str) -> list[str]:
    """"1 images", "1 warnings", "1 files": a count of one followed by a plural noun."""
    return re.findall(r"(?<![\d.,])1 (?:[a-z-]+ )?(?:images|files|findings|warnings|errors|references|workloads|"
                      r"refusals|repositories|violations|unreadable files)\b", text)


def test_counts_of_one_are_singular(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _config(tmp_path, REGEX)
    (tmp_path / "pod.yaml").write_text(POD.format(image="nginx:1.27")
                                       + "---\nkind: Tekton\nspec: {steps: [{image: alpine:3}]}\n")
    (tmp_path / "bad.yaml").write_text("{{ template }}: [\n")
    outputs = {
        "scan": run(["scan", "pod.yaml", "bad.yaml"]),
        "plan": run(["plan", "--no-resolve", "--output", "plan.json", "pod.yaml"]),
        "rewrite": run(["rewrite", "--no-verify", "--check", "pod.yaml"]),
        "hook": run(["--check", "pod.yaml"], main=hook_cli.main),
    }
    assert "1 image reference the policy would refuse:" in outputs["scan"].stdout
    assert "1 file scanned" not in outputs["scan"].stdout  # two files
    assert "2 files scanned: 1 finding, 1 warning, 1 error." in outputs["scan"].stdout
    assert "wrote plan.json: 1 image" in outputs["plan"].stderr
    for name, result in outputs.items():
        assert _singular_problems(result.output) == [], (name, result.output)
    assert _singular_problems("1 images; 1 unreadable files; 11 images; 2.1 files") == ["1 images", "1 unreadable files"]


def test_terminal_lines_count_in_the_singular(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lines printed from results, fed counts of one."""
    from mirror import terminal
    from mirror.engines.base import CopyResult

    lines: list[str] = []
    monkeypatch.setattr(terminal, "err", lines.append)
    terminal.copies_summary([CopyResult("a", "b", status="copied", bytes_moved=1)])
    stream = io.StringIO()
    progress = terminal.PlainProgress(stream)
    progress("scanned", {"findings": 1, "images": 1, "warnings": 1, "errors": 1})
    progress("images", {"count": 1})
    progress("done", {"source": "a", "target": "b", "status": "copied"})
    progress.close()
    text = "\n".join(lines) + stream.getvalue()
    assert "1 image: 1 copied; 1 B moved." in text
    assert "scan: 1 refused reference, 1 distinct image, 1 warning, 1 unreadable file" in text
    assert _singular_problems(text) == [], text


# -- one exit-code table ------------------------------------------------------------------------------

COMMANDS = {  # each command as a user would try it first, without a registry
    "scan": (cli.main, ["scan"]),
    "plan": (cli.main, ["plan", "--no-resolve"]),
    "sync": (cli.main, ["sync", "--dry-run"]),
    "rewrite": (cli.main, ["rewrite", "--no-verify"]),
    "migrate": (cli.main, ["migrate", "--dry-run"]),
    "hook": (hook_cli.main, []),
}


def _errors(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


USAGE_CHECKED = {**COMMANDS, "cache-rules": (cli.main, ["cache-rules", "--dry-run"])}  # checked before ARM


@pytest.mark.parametrize("command", list(USAGE_CHECKED))
def test_a_path_that_does_not_exist_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      command: str) -> None:
    monkeypatch.chdir(tmp_path)
    _config(tmp_path, REGEX)
    (tmp_path / "pod.yaml").write_text(POD.format(image="nginx:1.27"))
    main, args = USAGE_CHECKED[command]
    result = run([*args, "pod.yaml", "typo.yaml"], main=main)
    assert result.exit_code == 2, result.output
    assert _errors(result) == ["error: typo.yaml: no such file or directory"]
    assert (tmp_path / "pod.yaml").read_text() == POD.format(image="nginx:1.27")  # nothing done


@pytest.mark.parametrize("command", [*USAGE_CHECKED, "policy lint"])
def test_a_naming_the_regex_refuses_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      command: str) -> None:
    monkeypatch.chdir(tmp_path)
    _config(tmp_path, r"^crazureblue\.azurecr\.io/mirror/")  # the default naming puts images elsewhere
    (tmp_path / "pod.yaml").write_text(POD.format(image="nginx:1.27"))
    main, args = USAGE_CHECKED.get(command, (cli.main, ["policy", "lint"]))
    result = run([*args, *([] if command == "policy lint" else ["pod.yaml"])], main=main)
    assert result.exit_code == 2, result.output
    [error] = _errors(result)
    assert "target naming gives" in error and "refuses" in error


@pytest.mark.parametrize("command", [*COMMANDS, "rewrite --git"])
def test_an_unreadable_file_fails_every_command_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      command: str) -> None:
    """Exit 1, whatever the command: the same outcome, the same code."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.chdir(repo)
    _config(tmp_path, REGEX)
    monkeypatch.setenv("ACR_MIRROR_CONFIG", str(tmp_path / "acr-mirror.yaml"))
    (repo / "chart.yaml").write_text("{{- if .Values.x }}\nkind: Pod\n{{- end }}\n")  # a template: not YAML
    if command == "rewrite --git":
        if shutil.which("git") is None:
            pytest.skip("git is not installed")
        (repo / "pod.yaml").write_text(POD.format(image="nginx:1.27"))
        git(repo, "init", "-q")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "first")
        result = run(["rewrite", "--no-verify", "--git", "."])
        assert "changed" in result.stdout  # the rest of the checkout was rewritten and committed
    else:
        main, args = COMMANDS[command]
        result = run([*args, "chart.yaml"], main=main)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output


def test_rewrite_git_list_that_cannot_be_read_is_a_usage_error(tmp_path: Path) -> None:
    _config(tmp_path, REGEX)
    for listing in (tmp_path / "missing.txt", tmp_path):
        result = run(["rewrite", "--config", str(tmp_path / "acr-mirror.yaml"), "--git-list", str(listing)])
        assert result.exit_code == 2, result.output
    (tmp_path / "repos.txt").write_text("checkout-that-is-gone\n")  # an entry of the list: skipped, as before
    listed = run(["rewrite", "--no-verify", "--config", str(tmp_path / "acr-mirror.yaml"),
                  "--git-list", str(tmp_path / "repos.txt")])
    assert listed.exit_code == 0 and "no such directory" in listed.stdout


@pytest.mark.parametrize("args", [[], ["scan"], ["plan"], ["sync"], ["rewrite"], ["migrate"], ["policy", "lint"],
                                  ["audit"], ["cache-rules"], ["hook"]])
def test_help_points_to_the_exit_code_table(args: list[str]) -> None:
    main, args = (hook_cli.main, []) if args == ["hook"] else (cli.main, args)
    result = run([*args, "--help"], main=main)
    assert result.exit_code == 0
    assert 'Exit codes: 0 ok; 1 something to fix or that failed; 2 usage or configuration error; 123 internal ' \
           'error. The table: README.md, "Exit codes".' in " ".join(result.stdout.split())


def test_readme_exit_code_table_is_the_one_in_the_code() -> None:
    from manifests_rewriter import errors

    readme = (ROOT / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n|", 1)[1].split("\n\n", 1)[0]
    codes = [int(row.split("|")[1]) for row in table.splitlines()[2:]]  # after the header and its rule
    assert codes == [errors.EXIT_OK, errors.EXIT_FAILED, errors.EXIT_USAGE, errors.EXIT_INTERNAL,
                     errors.EXIT_INTERRUPTED]


# -- the README's first steps --------------------------------------------------------------------


@needs_git
def test_readme_pre_commit_snippet_pins_a_commit(tmp_path: Path) -> None:
    """The README's .pre-commit-config.yaml, then its `pre-commit autoupdate --freeze`: rev becomes
    the SHA of this repository's head (no release tag here), which pre-commit can check out."""
    if git(ROOT, "rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout")
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("# .pre-commit-config.yaml\n", 1)[1].split("```", 1)[0]
    url = yaml.safe_load(snippet)["repos"][0]["repo"]
    command = readme.split("```sh\npre-commit autoupdate", 1)[1].split("\n", 1)[0]
    assert command == f" --freeze --repo {url}"
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    local = ROOT.as_uri()
    (repo / ".pre-commit-config.yaml").write_text(snippet.replace(url, local))
    env = {"PRE_COMMIT_HOME": str(tmp_path / "cache"), "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pre_commit", "autoupdate", "--freeze", "--repo", local],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    [entry] = yaml.safe_load((repo / ".pre-commit-config.yaml").read_text())["repos"]
    head = git(ROOT, "rev-parse", "HEAD").stdout.strip()
    tags = git(ROOT, "tag", "--points-at", "HEAD").stdout.split()
    assert entry["rev"] == head or tags, entry  # a tagged head is pinned to the tag's commit, frozen
    assert entry["hooks"] == [{"id": "manifests-rewriter"}]
