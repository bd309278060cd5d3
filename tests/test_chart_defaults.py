"""Chart defaults (issue 10 item 3), offline: a release that overrides nothing still runs its
chart's default images; scan reports them at the release, rewrite adds the overrides (new keys
in the file's own style are the only change), and a second scan is clean."""

from __future__ import annotations

import functools
import io
import tarfile
from pathlib import Path

import pytest
import yaml

from manifests_rewriter.charts import LocalCharts, newest
from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import Policy
from manifests_rewriter.rewrite import rewrite_paths
from manifests_rewriter.scan import scan_paths

TARGET = "crazureblue.azurecr.io"
POLICY = Policy(r"^crazureblue\.azurecr\.io/.+$")
TO_TARGET = functools.partial(target_for, registry=TARGET, template="{registry}/{repository}")

WEB_VALUES = """\
image:
  registry: docker.io
  repository: bitnami/nginx
  tag: ""
metrics:
  enabled: false
  image:
    registry: docker.io
    repository: bitnami/nginx-exporter
    tag: 0.11.0
sidecar:
  image: busybox
  tag: "1.36"
"""


def write_chart(root: Path, name: str = "web", version: str = "1.2.3", app_version: str = "1.27.0",
                values: str = WEB_VALUES, templates: str = "image: {{ .Values.image.tag | default .Chart.AppVersion }}",
                dependencies: list | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta = {"apiVersion": "v2", "name": name, "version": version, "appVersion": app_version}
    if dependencies:
        meta["dependencies"] = dependencies
    (root / "Chart.yaml").write_text(yaml.safe_dump(meta))
    (root / "values.yaml").write_text(values)
    (root / "templates").mkdir(exist_ok=True)
    (root / "templates" / "deployment.yaml").write_text(templates + "\n")
    return root


def pack(chart: Path, into: Path) -> Path:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    out = into / f"{meta['name']}-{meta['version']}.tgz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(chart.rglob("*")):
            if p.is_file():
                tar.add(p, arcname=f"{meta['name']}/{p.relative_to(chart).as_posix()}")
    out.write_bytes(buf.getvalue())
    return out


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A chart directory (--chart-dir) holding web 1.2.3 packaged."""
    directory = tmp_path / "cache"
    directory.mkdir()
    pack(write_chart(tmp_path / "src" / "web"), directory)
    return directory


def run(tree: Path, cache: Path) -> tuple[list[tuple[str, int | None, str, str]], list[str]]:
    charts = LocalCharts([str(cache)], [str(tree)])
    found = scan_paths([str(tree)], POLICY, TO_TARGET, charts=charts)
    return ([(Path(f.file or "").name, f.line, f.path or "", f.image) for f in found.findings],
            [str(n) for n in found.unchecked])


def rewrite(tree: Path, cache: Path) -> dict[str, tuple[str, str]]:
    """Rewrite the tree; every file's (before, after) text when it changed. Then: a second scan
    finds nothing and a second rewrite changes nothing."""
    before = {p: p.read_text() for p in tree.rglob("*.yaml")}
    charts = LocalCharts([str(cache)], [str(tree)])
    result = rewrite_paths([str(tree)], POLICY, TO_TARGET, charts=charts)
    assert not result.errors and not result.skipped, (result.errors, result.skipped)
    for p in before:
        if p.read_text() != before[p]:
            list(yaml.safe_load_all(p.read_text()))
    assert run(tree, cache)[0] == []
    again = rewrite_paths([str(tree)], POLICY, TO_TARGET, charts=charts)
    assert not again.changed
    return {p.name: (before[p], p.read_text()) for p in before if before[p] != p.read_text()}


def added(old: str, new: str) -> str:
    """The text inserted (the only change allowed besides edits of image values)."""
    i = next((i for i in range(len(old)) if old[i] != new[i]), len(old))
    assert new[i + len(new) - len(old):] == old[i:]
    return new[i:i + len(new) - len(old)]


# ---------------------------------------------------------------------------------------- Flux


FLUX = """\
apiVersion: source.toolkit.fluxcd.io/v1
kind: HelmRepository
metadata:
  name: charts
  namespace: flux-system
spec:
  url: https://charts.example.org
---
apiVersion: helm.toolkit.fluxcd.io/v2
kind: HelmRelease
metadata:
  name: web
  namespace: apps
spec:
    interval: 10m
    chart:
        spec:
            chart: web
            version: 1.x
            sourceRef:
                kind: HelmRepository
                name: charts
                namespace: flux-system
"""


def test_a_release_that_overrides_nothing_runs_the_chart_defaults(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "web.yaml").write_text(FLUX)
    findings, notices = run(tree, cache)
    assert notices == []
    # the tag comes from appVersion; the exporter is not deployed (metrics.enabled: false)
    assert findings == [("web.yaml", 18, "/spec/values/image", "docker.io/bitnami/nginx:1.27.0"),
                        ("web.yaml", 18, "/spec/values/sidecar", "busybox:1.36")]
    [(old, new)] = rewrite(tree, cache).values()
    assert added(old, new) == (
        "    values:\n"
        "        image:\n"
        "            registry: crazureblue.azurecr.io\n"
        "            repository: docker.io/bitnami/nginx\n"
        "        sidecar:\n"
        "            image: crazureblue.azurecr.io/docker.io/library/busybox\n")  # its 4-space indentation


def test_values_that_set_a_tag_get_the_rest_beside_it(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    text = FLUX.replace("                namespace: flux-system\n",
                        "                namespace: flux-system\n"
                        "    values:\n"
                        "        image: {tag: 1.27.1}   # pinned\n"
                        "        sidecar:\n"
                        "            image: quay.io/org/busybox  # our build\n")
    (tree / "web.yaml").write_text(text)
    findings, _ = run(tree, cache)
    assert [f[2:] for f in findings] == [("/spec/values/sidecar/image", "quay.io/org/busybox:1.36"),  # the chart's tag
                                         ("/spec/values/image", "docker.io/bitnami/nginx:1.27.1")]
    [(old, new)] = rewrite(tree, cache).values()
    assert new == old.replace(
        "image: {tag: 1.27.1}",
        "image: {tag: 1.27.1, registry: crazureblue.azurecr.io, repository: docker.io/bitnami/nginx}").replace(
        "image: quay.io/org/busybox", "image: crazureblue.azurecr.io/quay.io/org/busybox")


def test_a_registry_the_chart_defaults_is_added_to_a_repository_the_release_sets(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "web.yaml").write_text(FLUX + "    values:\n        image:\n            repository: myorg/nginx\n")
    findings, _ = run(tree, cache)
    assert ("web.yaml", 26, "/spec/values/image", "docker.io/myorg/nginx:1.27.0") in findings
    [(old, new)] = rewrite(tree, cache).values()
    assert new.endswith("        image:\n            repository: docker.io/myorg/nginx\n"
                        "            registry: crazureblue.azurecr.io\n"
                        "        sidecar:\n            image: crazureblue.azurecr.io/docker.io/library/busybox\n")


def test_a_chart_that_cannot_be_found_is_a_notice_naming_it(tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "web.yaml").write_text(FLUX)
    findings, notices = run(tree, tmp_path / "empty")
    assert findings == []
    assert len(notices) == 1 and "HelmRelease apps/web: chart defaults not checked: chart web from " \
                                 "https://charts.example.org 1.x: not in the chart directories" in notices[0]


# ------------------------------------------------------------------------------------- Argo CD


ARGO = """\
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata: {name: web, namespace: argocd}
spec:
  destination: {namespace: shop}
  source:
    repoURL: https://charts.example.org
    chart: web
    targetRevision: 1.2.3
    helm:
      values: |
        # the values, as a string
        replicas: 2
        sidecar:
          tag: "1.37"
      parameters:
      - name: image.tag
        value: "1.27.2"
"""


def test_argo_values_string_gets_the_overrides_inside_it(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "app.yaml").write_text(ARGO)
    findings, _ = run(tree, cache)
    assert sorted(f[3] for f in findings) == ["busybox:1.37", "docker.io/bitnami/nginx:1.27.2"]
    [(old, new)] = rewrite(tree, cache).values()
    assert new == old.replace('          tag: "1.37"\n', '          tag: "1.37"\n'
                                                         '          image: crazureblue.azurecr.io/docker.io/library/busybox\n'
                                                         '        image:\n'
                                                         '          registry: crazureblue.azurecr.io\n'
                                                         '          repository: docker.io/bitnami/nginx\n')


def test_argo_without_values_gets_a_values_object(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    text = ARGO.split("    helm:")[0]
    (tree / "app.yaml").write_text(text)
    [(old, new)] = rewrite(tree, cache).values()
    assert added(old, new) == ("    helm:\n      valuesObject:\n        image:\n"
                               "          registry: crazureblue.azurecr.io\n"
                               "          repository: docker.io/bitnami/nginx\n"
                               "        sidecar:\n          image: crazureblue.azurecr.io/docker.io/library/busybox\n")


def test_argo_path_to_a_chart_in_the_tree(tmp_path: Path, cache: Path) -> None:
    """The chart's own values file is rewritten where it is; the Application adds nothing."""
    tree = tmp_path / "repo"
    write_chart(tree / "charts" / "web")
    (tree / "apps").mkdir()
    (tree / "apps" / "web.yaml").write_text(
        "apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: web}\n"
        "spec:\n  source:\n    repoURL: https://git.example.org/repo.git\n    path: charts/web\n")
    findings, notices = run(tree, cache)
    assert notices == []
    assert sorted((f[0], f[3]) for f in findings) == [
        ("values.yaml", "busybox:1.36"), ("values.yaml", "docker.io/bitnami/nginx-exporter:0.11.0"),
        ("values.yaml", "docker.io/bitnami/nginx:1.27.0")]
    assert set(rewrite(tree, cache)) == {"values.yaml"}


# ------------------------------------------------------------------------ Helmfile, kustomize, k3s


def test_helmfile_with_value_files_only_gets_a_values_item(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "values-web.yaml").write_text("replicas: 2\n")
    (tree / "helmfile.yaml").write_text(
        "repositories:\n- name: example\n  url: https://charts.example.org\nreleases:\n"
        "- name: web\n  chart: example/web\n  version: ~1.2\n  values:\n  - values-web.yaml\n")
    changed = rewrite(tree, cache)
    old, new = changed["helmfile.yaml"]
    assert added(old, new) == ("  - image:\n      registry: crazureblue.azurecr.io\n"
                               "      repository: docker.io/bitnami/nginx\n"
                               "    sidecar:\n      image: crazureblue.azurecr.io/docker.io/library/busybox\n")


def test_kustomize_helm_chart_without_values_inline(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "kustomization.yaml").write_text(
        "helmCharts:\n- name: web\n  repo: https://charts.example.org\n  version: 1.2.3\n  releaseName: web\n")
    [(old, new)] = rewrite(tree, cache).values()
    assert added(old, new) == ("  valuesInline:\n    image:\n      registry: crazureblue.azurecr.io\n"
                               "      repository: docker.io/bitnami/nginx\n"
                               "    sidecar:\n      image: crazureblue.azurecr.io/docker.io/library/busybox\n")


def test_k3s_packaged_chart_and_values_content(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "web.yaml").write_text(
        "apiVersion: helm.cattle.io/v1\nkind: HelmChart\nmetadata: {name: web, namespace: kube-system}\n"
        "spec:\n  chart: https://%{KUBERNETES_API}%/static/charts/web-1.2.3.tgz\n"
        "  valuesContent: |-\n    sidecar:\n      image: quay.io/org/busybox\n")
    [(old, new)] = rewrite(tree, cache).values()
    assert new.endswith("      image: crazureblue.azurecr.io/quay.io/org/busybox\n    image:\n"
                        "      registry: crazureblue.azurecr.io\n      repository: docker.io/bitnami/nginx\n")


# ------------------------------------------------------------------------------ a chart's own


def test_umbrella_chart_values_get_what_its_packaged_subchart_needs(tmp_path: Path) -> None:
    """argo-cd's redis-ha umbrella: the values set a subchart tag only; the repository comes from
    the packaged subchart, and the rewrite adds it beside the tag."""
    tree = tmp_path / "repo"
    sub = write_chart(tmp_path / "src" / "redis-ha", name="redis-ha", version="4.35.10", app_version="8.2",
                      values="image:\n  repository: public.ecr.aws/docker/library/redis\n  tag: 8.2.1-alpine\n"
                             "exporter:\n  enabled: false\n  image: quay.io/oliver006/redis_exporter\n  tag: v1\n")
    umbrella = write_chart(tree / "chart", name="redis-ha", version="2.0", values="redis-ha:\n  image:\n"
                           "    tag: 8.10.1-alpine\n", dependencies=[{"name": "redis-ha", "version": "4.35.10"}])
    (umbrella / "charts").mkdir()
    pack(sub, umbrella / "charts")
    findings, _ = run(tree, tmp_path / "none")
    assert findings == [("values.yaml", 1, "/redis-ha/image", "public.ecr.aws/docker/library/redis:8.10.1-alpine")]
    [(old, new)] = rewrite(tree, tmp_path / "none").values()
    assert new == old + "    repository: crazureblue.azurecr.io/public.ecr.aws/docker/library/redis\n"


def test_values_file_of_a_chart_gets_its_tag_from_app_version(tmp_path: Path) -> None:
    tree = tmp_path / "repo"
    write_chart(tree / "metrics-server", values="image:\n  repository: registry.k8s.io/metrics-server/metrics-server\n"
                "  tag: ''\n", app_version="0.8.1",
                templates='image: "{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "v%s" '
                          '.Chart.AppVersion) }}"')
    findings, _ = run(tree, tmp_path / "none")
    assert findings == [("values.yaml", 2, "/image", "registry.k8s.io/metrics-server/metrics-server:v0.8.1")]


def test_newest_version_in_a_range() -> None:
    assert newest(["1.2.3", "1.10.0", "2.0.0", "1.11.0-rc.1"], "1.x") == "1.10.0"
    assert newest(["v1.21.1", "v1.20.0"], "") == "v1.21.1"
    assert newest(["1.2.3"], "1.2.3") == "1.2.3" and newest(["1.2.3"], ">=2") is None


def test_values_from_a_configmap_in_the_tree_and_one_that_is_not(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "web.yaml").write_text(FLUX + "    valuesFrom:\n    - kind: ConfigMap\n      name: web-values\n"
                                          "    - kind: Secret\n      name: elsewhere\n")
    (tree / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-values, namespace: apps}\ndata:\n"
        "  values.yaml: |\n    image:\n      registry: quay.io\n      repository: org/nginx\n")
    findings, notices = run(tree, cache)
    assert sorted(f[3] for f in findings) == ["busybox:1.36", "quay.io/org/nginx:1.27.0"]  # the chart adds the tag
    assert [n.split(": ", 1)[1] for n in notices] == [
        "line 18: HelmRelease apps/web: valuesFrom Secret apps/elsewhere key values.yaml is not among the values of "
        "the scanned files (only values*.yaml keys are read): the images it may set are not checked"]
    changed = rewrite(tree, cache)
    assert "repository: quay.io/org/nginx" in changed["configmap.yaml"][1]  # rewritten in the ConfigMap itself
    assert "registry: crazureblue.azurecr.io" in changed["configmap.yaml"][1]
    assert "registry" not in added(*changed["web.yaml"])  # the release adds only what the ConfigMap does not set


def test_value_files_are_merged_only_inside_the_scanned_paths(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tmp_path / "outside.yaml").write_text("image:\n  repository: evil/nginx\n")
    (tree / "prod.yaml").write_text("sidecar:\n  image: quay.io/org/busybox\n")
    (tree / "helmfile.yaml").write_text(
        "repositories:\n- name: example\n  url: https://charts.example.org\nreleases:\n"
        "- name: web\n  chart: example/web\n  values:\n  - ../outside.yaml\n  - prod.yaml\n")
    findings, notices = run(tree, cache)
    assert sorted(f[3] for f in findings) == ["docker.io/bitnami/nginx:1.27.0", "quay.io/org/busybox:1.36"]
    assert [n.split(": ", 1)[1] for n in notices] == [
        "line 6: HelmfileRelease web: value file ../outside.yaml is outside the scanned paths; its values are not merged"]


def test_a_value_file_with_any_name_is_read_as_values(tmp_path: Path, cache: Path) -> None:
    tree = tmp_path / "repo"
    tree.mkdir()
    (tree / "prod.yaml").write_text("image:\n  registry: quay.io\n  repository: org/nginx\n")
    (tree / "helmfile.yaml").write_text(
        "repositories:\n- name: example\n  url: https://charts.example.org\nreleases:\n"
        "- name: web\n  chart: example/web\n  values:\n  - prod.yaml\n")
    findings, _ = run(tree, cache)
    assert sorted((f[0], f[3]) for f in findings) == [("helmfile.yaml", "busybox:1.36"),
                                                      ("prod.yaml", "quay.io/org/nginx:1.27.0")]
    changed = rewrite(tree, cache)
    assert changed["prod.yaml"][1] == "image:\n  registry: crazureblue.azurecr.io\n  repository: quay.io/org/nginx\n"
