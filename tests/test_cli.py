"""The command lines, called in process: scan formats and exit codes, rewrite modes, the hook."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from manifests_rewriter import cli as hook_cli
from mirror import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
target: {registry: crazureblue.azurecr.io}
policy:
  imageRegex: '^crazureblue\\.azurecr\\.io/.+$'
  excludedNamespaces: [kube-system]
  excludedContainers: [istio-proxy]
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: nginx:1.27   # keep this comment
        - name: istio-proxy
          image: docker.io/istio/proxyv2:1.22.0
        - name: ok
          image: crazureblue.azurecr.io/app:1
"""
SYSTEM = """\
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system}
spec:
  containers: [{name: a, image: busybox}]
"""


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "web.yaml").write_text(DEPLOYMENT)
    (tmp_path / "k8s" / "system.yaml").write_text(SYSTEM)
    (tmp_path / "k8s" / "template.yaml").write_text("{{- if .Values.x }}\nkind: Pod\n{{- end }}\n")
    (tmp_path / "config.yaml").write_text(CONFIG)
    return tmp_path


def run(args, *, main=cli.main):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def test_scan_json_contract(tree):
    result = run(["scan", str(tree / "k8s"), "--config", str(tree / "config.yaml"), "--format", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert set(data) >= {"findings", "errors"}
    [finding] = data["findings"]  # excluded namespace and container, and the compliant image, are not findings
    assert {k: finding[k] for k in ("file", "line", "document", "path", "kind", "namespace", "name", "container",
                                    "image", "target", "digest")} == {
        "file": str(tree / "k8s" / "web.yaml"), "line": 11, "document": 0,
        "path": "/spec/template/spec/containers/0/image", "kind": "Deployment", "namespace": "shop",
        "name": "web", "container": "web", "image": "nginx:1.27",
        "target": "crazureblue.azurecr.io/docker.io/library/nginx:1.27", "digest": None}
    [error] = data["errors"]
    assert error["file"].endswith("template.yaml") and "not valid YAML" in error["message"]


def test_scan_sarif(tree):
    result = run(["scan", str(tree / "k8s"), "--config", str(tree / "config.yaml"), "--format", "sarif"])
    sarif = json.loads(result.stdout)
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    disallowed = [r for r in results if r["ruleId"] == "disallowed-image"]
    assert len(disallowed) == 1
    location = disallowed[0]["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"].endswith("web.yaml") and location["region"]["startLine"] == 11


def test_scan_clean_tree_exits_zero(tmp_path):
    (tmp_path / "ok.yaml").write_text("kind: Pod\nspec:\n  containers: [{name: a, image: crazureblue.azurecr.io/a:1}]\n")
    (tmp_path / "config.yaml").write_text(CONFIG)
    result = run(["scan", str(tmp_path / "ok.yaml"), "--config", str(tmp_path / "config.yaml")])
    assert result.exit_code == 0, result.output
    assert "0 findings" in result.stdout


def test_scan_prints_lint_warnings(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG.replace("'^crazureblue", "'crazureblue"))
    (tmp_path / "ok.yaml").write_text("kind: Pod\n")
    result = run(["scan", str(tmp_path / "ok.yaml"), "--config", str(tmp_path / "config.yaml")])
    assert "not anchored" in result.stderr and "evil.example/crazureblue.azurecr.io" in result.stderr


@pytest.mark.parametrize("args", [["--check"], ["--diff"], ["--check", "--diff"]])
def test_hook_check_and_diff_write_nothing(tree, args):
    before = (tree / "k8s" / "web.yaml").read_bytes()
    result = run([*args, "--config", str(tree / "config.yaml"), str(tree / "k8s" / "web.yaml")], main=hook_cli.main)
    assert (tree / "k8s" / "web.yaml").read_bytes() == before
    assert result.exit_code == (1 if "--check" in args else 0)
    assert "would rewrite" in result.stderr
    if "--diff" in args:
        assert "+          image: crazureblue.azurecr.io/docker.io/library/nginx:1.27   # keep this comment" in result.stdout


def test_hook_rewrites_in_place_then_is_idempotent(tree):
    path = tree / "k8s" / "web.yaml"
    os.chmod(path, 0o640)
    first = run(["--config", str(tree / "config.yaml"), str(path)], main=hook_cli.main)
    assert first.exit_code == 1  # pre-commit convention: files were changed
    assert path.read_text() == DEPLOYMENT.replace("image: nginx:1.27", "image: crazureblue.azurecr.io/docker.io/library/nginx:1.27")
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    second = run(["--config", str(tree / "config.yaml"), str(path)], main=hook_cli.main)
    assert second.exit_code == 0 and "0 files rewritten" in second.stderr


def test_rewrite_no_verify_then_check_is_clean(tree):
    config = str(tree / "config.yaml")
    result = run(["rewrite", str(tree / "k8s"), "--config", config, "--no-verify"])
    assert result.exit_code == 1  # the Helm template could not be read as YAML
    assert "rewrote" in result.stderr and "--no-verify" in result.stderr
    again = run(["rewrite", str(tree / "k8s" / "web.yaml"), "--config", config, "--no-verify", "--check"])
    assert again.exit_code == 0


@pytest.mark.parametrize(("config", "message"), [
    ("target: {registry: x.io}\npolicy: {imageRegex: '(?=x)'}\n", "not a valid RE2 expression"),
    ("target: {registry: x.io}\npolicy: {imageRegex: '^x'}\nextra: 1\n", "unknown key 'extra'"),
    ("policy: {imageRegex: '^x'}\n", "target.registry is required"),
    ("target: {registry: x.io}\npolicy: {imageRegex: '^x\\.io/mirror/'}\n", "target naming gives"),
])
def test_config_errors_exit_2_one_line_nothing_written(tree, config, message):
    (tree / "config.yaml").write_text(config)
    before = (tree / "k8s" / "web.yaml").read_bytes()
    for main, args in ((cli.main, ["rewrite", "--no-verify"]), (hook_cli.main, [])):
        result = run([*args, "--config", str(tree / "config.yaml"), str(tree / "k8s" / "web.yaml")], main=main)
        assert result.exit_code == 2, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output
        assert (tree / "k8s" / "web.yaml").read_bytes() == before


def test_policy_lint_command(tree):
    ok = run(["policy", "lint", "--config", str(tree / "config.yaml")])
    assert ok.exit_code == 0 and "policy ok" in ok.stdout
    (tree / "config.yaml").write_text(CONFIG.replace("'^crazureblue\\.azurecr\\.io/.+$'", "'\\.azurecr\\.io/'"))
    weak = run(["policy", "lint", "--config", str(tree / "config.yaml")])
    assert weak.exit_code == 0 and "any *.azurecr.io" in weak.stderr and "not anchored" in weak.stderr


@pytest.mark.slow  # pre-commit builds a fresh virtualenv for the hook (about half a minute)
@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_pre_commit_hook_from_a_pinned_revision(tmp_path):
    """The real pre-commit framework installs and runs the hook as the README's snippet does: this
    repository pinned at a commit. Its environment holds the offline core and nothing heavier."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "deploy.yaml").write_text(DEPLOYMENT)
    (repo / "acr-mirror.yaml").write_text(CONFIG)
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    # a snapshot of the working tree as a commit, to pin
    source = tmp_path / "hook-source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", ".demo", ".bench", "*cache*", "*.egg-info"))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "snapshot"]):
        subprocess.run(["git", *args], cwd=source, check=True, env=env)
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, check=True, env=env, capture_output=True,
                         text=True).stdout.strip()
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {source.as_uri()}\n    rev: {rev}\n    hooks:\n      - id: manifests-rewriter\n")
    for args in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    pre_commit = [sys.executable, "-m", "pre_commit", "run", "--all-files"]
    first = subprocess.run(pre_commit, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1, first.stdout + first.stderr  # it modified files
    assert "files were modified by this hook" in first.stdout
    assert "image: crazureblue.azurecr.io/docker.io/library/nginx:1.27   # keep this comment" in (repo / "deploy.yaml").read_text()
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
    second = subprocess.run(pre_commit, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    # the hook's environment: the offline core and its three libraries, nothing of acr-mirror's side
    (site,) = (tmp_path / "cache").glob("repo*/py_env-*/lib/python*/site-packages")
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"manifests_rewriter", "pyyaml", "google_re2", "click"} <= installed
    assert not installed & {"httpx", "kubernetes", "azure_identity", "azure_core", "docker", "rich", "tenacity"}
    env_dir = site.parents[2]
    size = sum(f.stat().st_size for f in env_dir.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\npre-commit hook environment: {size / 2**20:.1f} MiB, distributions: {', '.join(sorted(installed))}")


def _git(repo, *args, env=None):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_rewrite_git_checkouts_one_branch_and_commit_each(tmp_path, monkeypatch):
    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
                       "GIT_COMMITTER_EMAIL": "t@example.com"}.items():
        monkeypatch.setenv(key, value)
    repos = []
    for name in ("clean", "dirty"):
        repo = tmp_path / name
        repo.mkdir()
        (repo / "web.yaml").write_text(DEPLOYMENT)
        _git(repo, "init", "-q", "-b", "main")
        _git(repo, "add", "-A")
        _git(repo, "commit", "-qm", "init")
        repos.append(repo)
    (repos[1] / "web.yaml").write_text(DEPLOYMENT + "# local edit\n")
    (tmp_path / "repos.txt").write_text("# checkouts\nclean\n")
    (tmp_path / "config.yaml").write_text(CONFIG)
    result = run(["rewrite", "--config", str(tmp_path / "config.yaml"), "--no-verify", "--git-list",
                  str(tmp_path / "repos.txt"), "--git", str(repos[1])])
    assert result.exit_code == 0, result.output
    assert "uncommitted changes" in result.stdout
    assert _git(repos[0], "rev-parse", "--abbrev-ref", "HEAD").strip() == "acr-mirror/allowed-images"
    message = _git(repos[0], "log", "-1", "--format=%B")
    assert "nginx:1.27 -> crazureblue.azurecr.io/docker.io/library/nginx:1.27" in message
    assert _git(repos[0], "rev-list", "--count", "main..HEAD").strip() == "1"
    assert (repos[1] / "web.yaml").read_text() == DEPLOYMENT + "# local edit\n"
    assert "acr-mirror/allowed-images" not in _git(repos[1], "branch")


@pytest.mark.parametrize("command, verb", [("sync", "executes"), ("cache-rules", "covers")])
def test_a_reviewed_plan_comes_alone(tree, command, verb):
    """--plan runs the plan as reviewed: a PATH or an --image beside it is a usage error, before
    the plan file is even read."""
    for extra in ([str(tree / "k8s")], ["--image", "nginx:1.27"]):
        result = run([command, *extra, "--plan", str(tree / "no-such-plan.json"), "--config", str(tree / "config.yaml")])
        assert result.exit_code == 2
        assert f"--plan {verb} the plan as reviewed: give no PATH or --image with it" in result.output
