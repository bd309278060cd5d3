"""Which files are read: Helm chart templates are recognised and skipped with one notice line (not
unreadable, not a SARIF error); scan.exclude is matched relative to the config file's directory and
to the repository, for files named explicitly too."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from manifests_rewriter import cli as hook_cli
from manifests_rewriter.files import ChartTemplate, Exclude, discover, is_chart_template
from mirror import cli

CONFIG = "target: {registry: crazureblue.azurecr.io}\npolicy: {imageRegex: '^crazureblue\\.azurecr\\.io/.+$'}\n"
DEPLOYMENT = """\
{{- if .Values.enabled }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "web.fullname" . }}
spec:
  template:
    spec:
      containers:
        - name: web
          image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
{{- end }}
"""
# a template that happens to parse as YAML: its `{{ ... }}` image is not a refused finding
PARSES = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: a\n      image: '{{ .Values.image }}'\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    chart = tmp_path / "charts" / "web"
    (chart / "templates" / "tests").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: web\nversion: 1.0.0\n")
    (chart / "values.yaml").write_text("image:\n  repository: nginx\n  tag: '1.27'\nenabled: true\n")
    (chart / "templates" / "deployment.yaml").write_text(DEPLOYMENT)
    (chart / "templates" / "pod.yaml").write_text(PARSES)
    (chart / "templates" / "_helpers.tpl").write_text('{{- define "web.fullname" -}}web{{- end }}\n')
    (chart / "templates" / "tests" / "test-connection.yaml").write_text("{{ if .Values.x }}\nkind: Pod\n{{ end }}\n")
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "app.yaml").write_text("kind: Pod\nspec:\n  containers: [{name: a, image: redis:7}]\n")
    (tmp_path / "acr-mirror.yaml").write_text(CONFIG)
    return tmp_path


def run(main, args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_chart_templates_are_recognised(repo: Path) -> None:
    templates = repo / "charts" / "web" / "templates"
    assert is_chart_template(str(templates / "deployment.yaml"))
    assert is_chart_template(str(templates / "tests" / "test-connection.yaml"))
    assert is_chart_template(str(repo / "anything" / "_helpers.tpl"))
    assert not is_chart_template(str(repo / "charts" / "web" / "values.yaml"))
    (repo / "k8s" / "templates").mkdir()  # a templates/ directory without Chart.yaml is not a chart's
    assert not is_chart_template(str(repo / "k8s" / "templates" / "x.yaml"))
    found = list(discover([str(repo)]))
    assert sorted(Path(f.file).name for f in found if isinstance(f, ChartTemplate)) == [
        "deployment.yaml", "pod.yaml", "test-connection.yaml"]  # .tpl files are not YAML: not walked
    assert sorted(Path(f[1]).name for f in found if isinstance(f, tuple)) == ["Chart.yaml", "acr-mirror.yaml", "app.yaml",
                                                                          "values.yaml"]


def test_scan_rewrite_check_and_hook_pass_a_repository_with_a_chart(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    scan = run(cli.main, ["scan", ".", "--config", "acr-mirror.yaml"])
    assert scan.exit_code == 1  # the chart's values and k8s/app.yaml are refused; no template is an error
    assert "0 errors" in scan.stdout and "not valid YAML" not in scan.output and "{{" not in scan.output
    [note] = [line for line in scan.output.splitlines() if line.startswith("note:")]
    assert note.startswith("note: 3 Helm chart templates skipped") and "charts/web" in note
    sarif = json.loads(run(cli.main, ["scan", ".", "--config", "acr-mirror.yaml", "--format", "sarif"]).stdout)
    assert {r["ruleId"] for r in sarif["runs"][0]["results"]} == {"disallowed-image"}
    assert all("templates" not in json.dumps(r["locations"]) for r in sarif["runs"][0]["results"])

    rewrite = run(cli.main, ["rewrite", ".", "--config", "acr-mirror.yaml", "--no-verify"])
    assert "rewrote ./charts/web/values.yaml" in rewrite.stderr and "error" not in rewrite.stderr
    assert run(cli.main, ["scan", ".", "--config", "acr-mirror.yaml"]).exit_code == 0
    check = run(cli.main, ["rewrite", ".", "--config", "acr-mirror.yaml", "--no-verify", "--check"])
    assert check.exit_code == 0, check.output
    # the hook, given every YAML file of the repository as pre-commit does (templates included)
    every = sorted(str(p.relative_to(repo)) for p in repo.rglob("*.y*ml"))
    hook = run(hook_cli.main, ["--config", "acr-mirror.yaml", *every, "charts/web/templates/_helpers.tpl"])
    assert hook.exit_code == 0, hook.output
    assert "note: 4 Helm chart templates skipped" in hook.stderr and "0 files rewritten" in hook.stderr


def test_a_template_expression_outside_a_chart_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text(PARSES)
    (tmp_path / "c.yaml").write_text(CONFIG)
    scan = run(cli.main, ["scan", str(tmp_path / "pod.yaml"), "--config", str(tmp_path / "c.yaml"), "--format", "json"])
    data = json.loads(scan.stdout)
    assert scan.exit_code == 0 and data["findings"] == []
    assert "template expression" in data["warnings"][0]["reason"]


# ----------------------------------------------------------------------------- scan.exclude


def exclude_tree(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for name in ("k8s/app.yaml", "k8s/legacy/old.yaml", "legacy/top.yaml"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("kind: Pod\nspec:\n  containers: [{name: a, image: redis:7}]\n")
    (repo / ".git").mkdir()
    return repo


def names(paths: list[str], exclude: Exclude) -> list[str]:
    return sorted(Path(item[1]).name for item in discover(paths, exclude) if isinstance(item, tuple))


def test_exclude_is_relative_to_the_config_directory(tmp_path: Path) -> None:
    repo = exclude_tree(tmp_path)
    exclude = Exclude(("k8s/legacy/*",), (str(repo),))
    assert names([str(repo / "k8s")], exclude) == ["app.yaml"]  # before: matched against legacy/old.yaml only
    assert names([str(repo / "k8s" / "legacy" / "old.yaml"), str(repo / "k8s" / "app.yaml")], exclude) == ["app.yaml"]


def test_exclude_keeps_the_patterns_that_worked_before(tmp_path: Path) -> None:
    """Relative to the PATH walked (the rule before) and the file name alone still match."""
    repo = exclude_tree(tmp_path)
    elsewhere = str(tmp_path / "configs")
    assert names([str(repo / "k8s")], Exclude(("legacy/*",), (elsewhere,))) == ["app.yaml"]
    assert names([str(repo)], Exclude(("old.yaml",), (elsewhere,))) == ["app.yaml", "top.yaml"]
    assert names([str(repo)], Exclude(("legacy/*",), (elsewhere,))) == ["app.yaml", "old.yaml"]


def test_hook_applies_exclude_to_files_named_from_the_repository_root(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The config lives outside the repository ($ACR_MIRROR_CONFIG); pre-commit runs at the
    repository root and names files relative to it: patterns are matched from there too."""
    repo = exclude_tree(tmp_path)
    config = tmp_path / "shared" / "acr-mirror.yaml"
    config.parent.mkdir()
    config.write_text(CONFIG + "scan:\n  exclude: ['k8s/legacy/*']\n")
    monkeypatch.chdir(repo)
    before = (repo / "k8s/legacy/old.yaml").read_text()
    result = run(hook_cli.main, ["--config", str(config), "k8s/legacy/old.yaml", "k8s/app.yaml"])
    assert result.exit_code == 1 and "rewrote k8s/app.yaml" in result.stderr
    assert (repo / "k8s/legacy/old.yaml").read_text() == before
    assert "1 file rewritten, 0 left unchanged" in result.stderr


def test_config_exclude_base_is_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from manifests_rewriter.config import load_config

    repo = exclude_tree(tmp_path)
    (repo / "acr-mirror.yaml").write_text(CONFIG + "scan:\n  exclude: ['legacy/*']\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(os.path.join("repo", "acr-mirror.yaml"))
    assert config.scan.exclude == Exclude(("legacy/*",), (str(repo),))
    assert names([str(repo)], config.scan.exclude) == ["acr-mirror.yaml", "app.yaml", "old.yaml"]
