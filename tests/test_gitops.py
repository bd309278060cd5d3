"""GitOps resources and Helm values as charts write them (issue 10 items 1 and 2): every image
found once, with its reference, and rewritten byte-exactly (inside strings too)."""

from __future__ import annotations

import re

import pytest
import yaml

from manifests_rewriter.locate import Collected, ImageField, locate
from manifests_rewriter.reference import ImageRef, parse
from manifests_rewriter.splice import SpliceError, apply_edits, edits_for

TARGET = "crazureblue.azurecr.io"


def to_target(ref: ImageRef) -> ImageRef:
    host = re.sub(r"[^a-z0-9._-]+", "-", ref.registry)
    return ref.with_name(TARGET, f"{host}/{ref.repository}")


def images(text: str, filename: str = "x.yaml") -> list[tuple[str, str, str]]:
    return [(f.source, f.path, f.value) for f in locate(text, filename=filename)]


def rewrite(text: str, filename: str = "x.yaml") -> str:
    """Every image rewritten to its target; the result must parse, a second scan finds only
    targets and a second rewrite changes nothing."""
    edits = [e for f in locate(text, filename=filename) if f.source != "hint" for e in edits_for(f, to_target(parse(f.value)))]
    new = apply_edits(text, edits)
    list(yaml.safe_load_all(new))
    again = locate(new, filename=filename)
    assert all(f.source == "hint" or parse(f.value).registry == TARGET for f in again), again
    assert not [e for f in again if f.source != "hint" for e in edits_for(f, parse(f.value))]
    return new


def changed_lines(old: str, new: str) -> list[tuple[str, str]]:
    return [(a, b) for a, b in zip(old.splitlines(), new.splitlines(), strict=True) if a != b]


# ---------------------------------------------------------------------------------------- Flux


FLUX = """\
apiVersion: helm.toolkit.fluxcd.io/v2beta2
kind: HelmRelease
metadata: {name: podinfo, namespace: flux-system}
spec:
  targetNamespace: apps
  chart:
    spec: {chart: podinfo, version: 6.x, sourceRef: {kind: HelmRepository, name: podinfo}}
  values:
    image: nginx:1.27
    redis:
      repository: public.ecr.aws/docker/library/redis
      tag: 8.6.2
    template:
      spec:
        containers:
        - name: app
          image: alpine:3
"""


def test_flux_values_are_read_once_in_the_target_namespace() -> None:
    fields = locate(FLUX)
    assert [(f.source, f.path, f.value) for f in fields] == [
        ("helm", "/spec/values/image", "nginx:1.27"),
        ("helm", "/spec/values/redis", "public.ecr.aws/docker/library/redis:8.6.2"),
        ("pod", "/spec/values/template/spec/containers/0/image", "alpine:3"),
    ]
    assert {(f.kind, f.namespace, f.name) for f in fields} == {("HelmRelease", "apps", "podinfo")}
    new = rewrite(FLUX)
    assert changed_lines(FLUX, new) == [
        ("    image: nginx:1.27", "    image: crazureblue.azurecr.io/docker.io/library/nginx:1.27"),
        ("      repository: public.ecr.aws/docker/library/redis",
         "      repository: crazureblue.azurecr.io/public.ecr.aws/docker/library/redis"),
        ("          image: alpine:3", "          image: crazureblue.azurecr.io/docker.io/library/alpine:3"),
    ]


def test_flux_release_is_collected() -> None:
    collect = Collected()
    locate(FLUX, filename="apps/podinfo.yaml", collect=collect)
    [release] = collect.releases
    assert (release.kind, release.name, release.namespace, release.home) == ("HelmRelease", "podinfo", "apps",
                                                                             "flux-system")
    assert release.chart is not None and release.chart.source == ("HelmRepository", "flux-system", "podinfo")
    assert release.values["redis"]["tag"] == "8.6.2" and release.values_at == "/spec/values"


# ------------------------------------------------------------------------------------- Argo CD


ARGO = """\
apiVersion: argoproj.io/v1alpha1
kind: Application
metadata:
  name: guestbook
  namespace: argocd
spec:
  destination: {namespace: shop}
  source:
    repoURL: https://charts.example.org
    chart: guestbook
    targetRevision: 1.2.3
    helm:
      valuesObject:
        image:
          registry: docker.io
          repository: bitnami/nginx
          tag: 1.29.1
      values: |
        # values as a string
        sidecar:
          image: "quay.io/org/sidecar:2"   # quoted, with a comment
        exporter:
          image: ghcr.io/oliver006/redis_exporter
          tag: v1.75.0
      parameters:
      - name: worker.image.repository
        value: gcr.io/org/worker
      - name: worker.image.tag
        value: "7"
      - name: "nginx-ingress.controller.service.annotations.external-dns\\\\.alpha\\\\.kubernetes\\\\.io/hostname"
        value: mydomain.example.com
  sources:
  - repoURL: https://github.com/org/app.git
    path: overlays/prod
    kustomize:
      images:
      - quay.io/argoprojlabs/argocd-e2e-container:0.2
      - my-app=gcr.io/my-repo/my-app:0.1
      - 'web=ghcr.io/org/web@sha256:%s'
""" % ("ab" * 32)


def test_argo_application_values_parameters_and_kustomize_images() -> None:
    fields = locate(ARGO)
    assert [(f.source, f.path, f.value) for f in fields] == [
        ("helm", "/spec/source/helm/valuesObject/image", "docker.io/bitnami/nginx:1.29.1"),
        ("helm", "/spec/source/helm/values|/sidecar/image", "quay.io/org/sidecar:2"),
        ("helm", "/spec/source/helm/values|/exporter", "ghcr.io/oliver006/redis_exporter:v1.75.0"),
        ("helm", "/spec/source/helm/parameters/0/value", "gcr.io/org/worker:7"),
        ("kustomize", "/spec/sources/0/kustomize/images/0", "quay.io/argoprojlabs/argocd-e2e-container:0.2"),
        ("kustomize", "/spec/sources/0/kustomize/images/1", "gcr.io/my-repo/my-app:0.1"),
        ("kustomize", "/spec/sources/0/kustomize/images/2", "ghcr.io/org/web@sha256:" + "ab" * 32),
    ]
    assert {f.namespace for f in fields} == {"shop"}  # where the pods run, not the Application's namespace
    assert fields[1].line == 21 and fields[2].line == 23  # lines of the file, inside the string


def test_argo_rewrite_splices_inside_strings_and_keeps_names() -> None:
    new = rewrite(ARGO)
    assert changed_lines(ARGO, new) == [
        ("          registry: docker.io", "          registry: crazureblue.azurecr.io"),
        ("          repository: bitnami/nginx", "          repository: docker.io/bitnami/nginx"),
        ('          image: "quay.io/org/sidecar:2"   # quoted, with a comment',
         '          image: "crazureblue.azurecr.io/quay.io/org/sidecar:2"   # quoted, with a comment'),
        ("          image: ghcr.io/oliver006/redis_exporter",
         "          image: crazureblue.azurecr.io/ghcr.io/oliver006/redis_exporter"),
        ("        value: gcr.io/org/worker", "        value: crazureblue.azurecr.io/gcr.io/org/worker"),
        ("      - quay.io/argoprojlabs/argocd-e2e-container:0.2",
         "      - quay.io/argoprojlabs/argocd-e2e-container=crazureblue.azurecr.io/quay.io/argoprojlabs/"
         "argocd-e2e-container:0.2"),
        ("      - my-app=gcr.io/my-repo/my-app:0.1", "      - my-app=crazureblue.azurecr.io/gcr.io/my-repo/my-app:0.1"),
        ("      - 'web=ghcr.io/org/web@sha256:" + "ab" * 32 + "'",
         "      - 'web=crazureblue.azurecr.io/ghcr.io/org/web@sha256:" + "ab" * 32 + "'"),
    ]


def test_applicationset_template_and_values_that_are_a_template() -> None:
    text = """\
apiVersion: argoproj.io/v1alpha1
kind: ApplicationSet
metadata: {name: apps, namespace: argocd}
spec:
  generators: [{list: {elements: [{stage: test}]}}]
  template:
    metadata: {name: 'app-{{stage}}'}
    spec:
      destination: {namespace: 'app-{{stage}}'}
      source:
        repoURL: https://charts.bitnami.com/bitnami
        chart: nginx
        targetRevision: 14.1.0
        helm:
          values: |
            image: {{ .Values.image }}:{{ .Values.tag }}
          parameters:
          - name: image.tag
            value: placeholder
"""
    collect = Collected()
    assert locate(text, collect=collect) == []  # a tag alone is no image without the chart
    assert collect.notes == [(15, "helm.values is not valid YAML (a template?): its images are not checked")]
    [release] = collect.releases
    assert release.values == {"image": {"tag": "placeholder"}} and release.name == "app-{{stage}}"
    assert release.chart is not None and (release.chart.name, release.chart.version) == ("nginx", "14.1.0")


def test_argo_name_tag_entry_inside_double_quotes() -> None:
    text = ('apiVersion: argoproj.io/v1alpha1\nkind: Application\nmetadata: {name: a}\n'
            'spec:\n  source:\n    kustomize:\n      images: ["nginx:1.17.10", "memcached@sha256:' + "cd" * 32 + '"]\n')
    new = rewrite(text)
    assert '"nginx=crazureblue.azurecr.io/docker.io/library/nginx:1.17.10"' in new
    assert '"memcached=crazureblue.azurecr.io/docker.io/library/memcached@sha256:' in new


# ------------------------------------------------------------------------ k3s, ConfigMap, Secret


K3S = """\
apiVersion: helm.cattle.io/v1
kind: HelmChart
metadata: {name: traefik, namespace: kube-system}
spec:
  chart: https://%{KUBERNETES_API}%/static/charts/traefik-27.0.201+up27.0.2.tgz
  valuesContent: |-
    image:
      repository: "rancher/mirrored-library-traefik"
      tag: "2.11.10"
    service:
      ipFamilyPolicy: "PreferDualStack"
"""


def test_k3s_values_content() -> None:
    assert images(K3S) == [("helm", "/spec/valuesContent|/image", "rancher/mirrored-library-traefik:2.11.10")]
    new = rewrite(K3S)
    assert changed_lines(K3S, new) == [('      repository: "rancher/mirrored-library-traefik"',
                                        '      repository: "crazureblue.azurecr.io/docker.io/rancher/'
                                        'mirrored-library-traefik"')]


def test_values_in_configmaps_and_secrets() -> None:
    import base64

    encoded = base64.b64encode(b"image:\n  repository: quay.io/org/b\n  tag: '2'\n").decode()
    text = f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: app-values, namespace: apps}}
data:
  values.yaml: |
    image:
      repository: quay.io/org/a
      tag: "1"
  other.conf: "image: not/values:1"
---
apiVersion: v1
kind: Secret
metadata: {{name: app-secret, namespace: apps}}
data:
  values.yaml: {encoded}
stringData:
  values-extra.yaml: |
    sidecarImage: quay.io/org/c:3
"""
    collect = Collected()
    fields = locate(text, collect=collect)
    assert [(f.document, f.path, f.value, f.scalar.exact if f.scalar else f.parts["repository"].exact)
            for f in fields] == [
        (0, "/data/values.yaml|/image", "quay.io/org/a:1", True),
        (1, "/data/values.yaml|/image", "quay.io/org/b:2", False),  # base64: reported, not rewritten
        (1, "/stringData/values-extra.yaml|/sidecarImage", "quay.io/org/c:3", True),
    ]
    assert [(s.kind, s.name, sorted(s.data)) for s in collect.sources] == [
        ("ConfigMap", "app-values", ["values.yaml"]), ("Secret", "app-secret", ["values-extra.yaml", "values.yaml"])]
    with pytest.raises(SpliceError, match="cannot be rewritten in place"):
        edits_for(fields[1], to_target(parse(fields[1].value)))


# ------------------------------------------------------------------------ Helmfile and kustomize


def test_helmfile_inline_values_and_set() -> None:
    text = """\
repositories:
- name: bitnami
  url: https://charts.bitnami.com/bitnami
releases:
- name: web
  namespace: shop
  chart: bitnami/nginx
  version: 14.1.0
  values:
  - values.yaml
  - image:
      registry: docker.io
      repository: bitnami/nginx
      tag: 1.24.0
  set:
  - name: metrics.image.repository
    value: bitnami/nginx-exporter
  - name: metrics.image.tag
    value: 0.11.0
"""
    collect = Collected()
    fields = locate(text, filename="deploy/helmfile.yaml", collect=collect)
    assert [(f.path, f.value, f.namespace, f.name) for f in fields] == [
        ("/releases/0/values/1/image", "docker.io/bitnami/nginx:1.24.0", "shop", "web"),
        ("/releases/0/set/0/value", "bitnami/nginx-exporter:0.11.0", "shop", "web"),
    ]
    [release] = collect.releases
    assert release.chart is not None and release.chart.repo == "https://charts.bitnami.com/bitnami"
    assert release.value_files == ("values.yaml",) and release.files_base == "deploy"
    assert release.values["metrics"]["image"]["tag"] == "0.11.0"  # `--set` typing: not an int (a dot)
    rewrite(text, "deploy/helmfile.yaml")


def test_kustomize_helm_charts_values_inline() -> None:
    text = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
helmCharts:
- name: minecraft
  repo: https://itzg.github.io/minecraft-server-charts
  version: 3.1.3
  releaseName: moria
  valuesInline:
    image:
      repository: itzg/minecraft-server
      tag: java17
images:
- name: nginx
  newTag: "1.27"
"""
    assert images(text, "kustomization.yaml") == [
        ("helm", "/helmCharts/0/valuesInline/image", "itzg/minecraft-server:java17"),
        ("kustomize", "/images/0", "nginx:1.27"),
    ]


# -------------------------------------------------------------------- values as charts write them


def test_argo_cd_global_image_and_redis_ha_exporter() -> None:
    text = """\
global:
  image:
    repository: quay.io/argoproj/argocd
    tag: ""
    imagePullPolicy: IfNotPresent
controller:
  image:
    repository: ""
    tag: ""
server:
  image:
    repository: ""
    tag: v3.0.0
redis-ha:
  exporter:
    enabled: false
    image: ghcr.io/oliver006/redis_exporter
    tag: v1.75.0
"""
    fields = locate(text, filename="values.yaml")
    assert [(f.path, f.value) for f in fields] == [
        ("/controller/image", "quay.io/argoproj/argocd"),
        ("/server/image", "quay.io/argoproj/argocd:v3.0.0"),
        ("/redis-ha/exporter", "ghcr.io/oliver006/redis_exporter:v1.75.0"),
    ]
    assert "global.image.repository" in (fields[0].note or "")
    new = rewrite(text, "values.yaml")  # the shared global repository is edited once
    assert new.count("crazureblue.azurecr.io/quay.io/argoproj/argocd") == 1


def test_a_release_overriding_only_the_global_image() -> None:
    text = "global:\n  image:\n    repository: my.registry/argocd\n    tag: v3.1.0\n"
    assert images(text, "values.yaml") == [("helm", "/global/image", "my.registry/argocd:v3.1.0")]


def test_cert_manager_names_are_rewritten_through_the_shared_registry() -> None:
    text = """\
imageRegistry: quay.io
imageNamespace: jetstack
image:
  name: cert-manager-controller
webhook:
  image:
    name: cert-manager-webhook
    tag: v1.17.0
"""
    new = rewrite(text, "values.yaml")
    assert changed_lines(text, new) == [("imageRegistry: quay.io", "imageRegistry: crazureblue.azurecr.io/quay.io")]


def test_templated_repositories_are_warnings() -> None:
    text = 'image:\n  repository: "{{ .Values.image_repository }}"\n  tag: "{{ .Values.image_tag }}"\n' \
           'other: "{{ .Values.image }}"\n'
    assert [(f.source, f.path) for f in locate(text, filename="values.yaml")] == [("hint", "/image")]


def test_image_name_holding_a_whole_reference() -> None:
    text = "image:\n  name: public.ecr.aws/nginx/nginx:1.27\n"
    [field] = locate(text, filename="values.yaml")
    assert field.value == "public.ecr.aws/nginx/nginx:1.27" and field.scalar is not None
    assert "crazureblue.azurecr.io/public.ecr.aws/nginx/nginx:1.27" in rewrite(text, "values.yaml")


def first(fields: list[ImageField], path: str) -> ImageField:
    return next(f for f in fields if f.path == path)


def test_hostile_values_in_releases_are_bounded() -> None:
    """Deep values, recursive anchors and alias bombs inside a release: no crash, bounded work."""
    from manifests_rewriter.locate import LocateError

    deep = "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: x}\nspec:\n  values:\n" + \
        "".join("    " + "  " * i + f"k{i}:\n" for i in range(900)) + "    " + "  " * 900 + "image: nginx:1\n"
    collect = Collected()
    [field] = locate(deep, collect=collect)
    assert field.value == "nginx:1" and collect.releases[0].values["k0"]["k1"]
    recursive = ("apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: x}\n"
                 "spec:\n  values: &v\n    image: nginx:1\n    again: *v\n")
    collect = Collected()
    locate(recursive, collect=collect)
    assert collect.releases[0].values == {"image": "nginx:1", "again": None}
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6))
    text = "apiVersion: helm.toolkit.fluxcd.io/v2\nkind: HelmRelease\nmetadata: {name: x}\nspec:\n  values:\n" + \
        "".join("    " + line + "\n" for line in bomb.splitlines())
    with pytest.raises(LocateError, match="YAML bomb"):
        locate(text, collect=Collected())
