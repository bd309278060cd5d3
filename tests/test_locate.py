"""locate(): image fields of every YAML style, with exact value spans."""

from __future__ import annotations

from unittest import mock

import pytest
import yaml

from manifests_rewriter.locate import (
    ImageField,
    LocateError,
    YamlError,
    compose_documents,
    document,
    file_kind,
    locate,
)
from manifests_rewriter.locate.helm import go_format_number

from .support.work import counting

DIGEST = "sha256:" + "ab" * 32


def pods(text: str, **kw) -> list[ImageField]:
    return [f for f in locate(text, **kw) if f.source == "pod"]


def spans_ok(text: str, fields: list[ImageField]) -> None:
    """Every exact scalar's region holds exactly its value."""
    for f in fields:
        s = f.scalar
        if s is not None and s.exact:
            block = s.style in ("literal", "folded")  # the region leaves the chomped line break
            assert text[s.start : s.end] == (s.value.rstrip("\n") if block else s.value), f


# ----------------------------------------------------------------------------- pod images: styles

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  template:
    spec:
      initContainers:
      - name: init
        image: busybox:1.36
      containers:
      - name: app
        image: {image}
      - name: side
        image: quay.io/org/side@{digest}
"""


@pytest.mark.parametrize(
    ("written", "value", "style", "exact"),
    [
        ("nginx:1.25", "nginx:1.25", "plain", True),
        ("nginx:1.25   # the app", "nginx:1.25", "plain", True),
        ("'nginx:1.25'# c", "nginx:1.25", "single", True),
        ("'nginx:1.25'", "nginx:1.25", "single", True),
        ('"nginx:1.25"', "nginx:1.25", "double", True),
        ("&img nginx:1.25", "nginx:1.25", "plain", True),
        ("!!str nginx:1.25", "nginx:1.25", "plain", True),
        ("&a !!str 'nginx:1.25'", "nginx:1.25", "single", True),
        ("|-\n          nginx:1.25", "nginx:1.25", "literal", True),
        ("|- # header comment\n          nginx:1.25", "nginx:1.25", "literal", True),
        ("|2-\n          nginx:1.25", "nginx:1.25", "literal", True),  # explicit indentation
        ("|1-\n          nginx:1.25", " nginx:1.25", "literal", False),  # a leading space in the value
        (">-\n          nginx:1.25", "nginx:1.25", "folded", True),
        ("|\n          nginx:1.25", "nginx:1.25\n", "literal", True),  # exact; the value keeps its newline
        ('"ngin\\x78:1.25"', "nginx:1.25", "double", False),  # an escape: region != value
        ("'it''s'", "it's", "single", False),
        ('"nginx:\n          1.25"', "nginx: 1.25", "double", False),  # folded quoted line
        ("nginx\n          :1.25", "nginx :1.25", "plain", False),  # multi-line plain
        ("|-\n          nginx\n          :1", "nginx\n:1", "literal", False),
    ],
)
def test_pod_image_styles(written: str, value: str, style: str, exact: bool) -> None:
    text = DEPLOYMENT.format(image=written, digest=DIGEST)
    fields = pods(text)
    assert [f.container for f in fields] == ["init", "app", "side"]
    app = fields[1]
    assert app.value == value
    assert app.scalar is not None
    assert (app.scalar.style, app.scalar.exact) == (style, exact)
    assert app.path == "/spec/template/spec/containers/0/image"
    assert (app.kind, app.namespace, app.name, app.document) == ("Deployment", "shop", "web", 0)
    assert app.line == 14
    if exact:
        assert text[app.scalar.start : app.scalar.end] == value.rstrip("\n")
    else:
        assert text[app.scalar.start : app.scalar.end] != value
    assert fields[0].path == "/spec/template/spec/initContainers/0/image"
    assert fields[2].value == f"quay.io/org/side@{DIGEST}"
    spans_ok(text, fields)


def test_empty_and_null_images_are_reported_but_not_exact() -> None:
    text = "kind: Pod\nspec:\n  containers:\n  - name: a\n    image:\n  - name: b\n    image: ''\n"
    a, b = pods(text)
    assert (a.value, a.scalar.exact) == ("", False)  # nothing to splice into
    assert (b.value, b.scalar.exact) == ("", True)  # inside the quotes is fine
    assert text[b.scalar.start - 1 : b.scalar.end + 1] == "''"


def test_non_scalar_image_and_non_list_containers_are_ignored() -> None:
    text = """\
kind: Pod
spec:
  containers:
  - name: a
    image: {ref: x}
  - just-a-string
  initContainers: {name: b, image: c}
"""
    assert pods(text) == []


def test_flow_style_and_json() -> None:
    text = ('{"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": '
            '[{"name": "a", "image": "nginx"}, {name: b, image: redis:7}]}}')
    a, b = pods(text)
    assert (a.value, a.scalar.style, b.value, b.scalar.style) == ("nginx", "double", "redis:7", "plain")
    assert text[a.scalar.start - 1 : a.scalar.end + 1] == '"nginx"'
    assert a.path == "/spec/containers/0/image" and a.name == "p"
    spans_ok(text, [a, b])


def test_anchor_and_alias_share_one_scalar() -> None:
    text = """\
kind: Pod
spec:
  containers:
  - name: a
    image: &img registry.example.com/app:1
  - name: b
    image: *img
  initContainers: &inits
  - name: i
    image: busybox
  ephemeralContainers: *inits
"""
    fields = pods(text)
    by = {(f.path.split("/")[2], f.container): f for f in fields}
    assert by[("containers", "a")].scalar is by[("containers", "b")].scalar
    assert by[("containers", "b")].line == 5  # the anchor's line
    assert by[("initContainers", "i")].scalar is by[("ephemeralContainers", "i")].scalar
    assert len(fields) == 4
    spans_ok(text, fields)


def test_merge_keys_are_resolved() -> None:
    text = """\
x-defaults: &defaults
  image: base/app:2
  name: default
kind: Pod
spec:
  containers:
  - <<: *defaults
    name: first
  - <<: [*defaults]
    name: second
    image: own/image:3
"""
    first, second = pods(text)
    assert (first.container, first.value, first.line) == ("first", "base/app:2", 2)
    assert (second.container, second.value, second.line) == ("second", "own/image:3", 11)
    assert first.path == "/spec/containers/0/image"


def test_crlf_and_bom_offsets() -> None:
    base = DEPLOYMENT.format(image="'nginx:1'", digest=DIGEST)
    for text in (base.replace("\n", "\r\n"), "\ufeff" + base, "\ufeff" + base.replace("\n", "\r\n")):
        fields = pods(text)
        assert [f.value for f in fields] == ["busybox:1.36", "nginx:1", f"quay.io/org/side@{DIGEST}"]
        assert [f.line for f in fields] == [11, 14, 16]
        spans_ok(text, fields)
        assert all(f.scalar.exact for f in fields)


def test_pure_python_loader_fallback_gives_the_same_spans(monkeypatch) -> None:
    """Without libyaml the pure-Python loader is used; its marks count the BOM."""
    from manifests_rewriter.locate import document as module

    texts = ["\ufeff" + DEPLOYMENT.format(image="'nginx:1'", digest=DIGEST).replace("\n", "\r\n"),
             "\ufeff" + BITNAMI, "\ufeffimages:\n- name: x\n"]
    names = ["deploy.yaml", "values.yaml", "kustomization.yaml"]
    fast = [locate(t, filename=n) for t, n in zip(texts, names, strict=True)]
    monkeypatch.setattr(module, "_Loader", module._lean_loader(yaml.SafeLoader))
    monkeypatch.setattr(module, "_LIBYAML", False)
    slow = [locate(t, filename=n) for t, n in zip(texts, names, strict=True)]
    assert slow == fast
    spans_ok(texts[0], slow[0])


def test_block_scalar_with_crlf() -> None:
    text = "kind: Pod\r\nspec:\r\n  containers:\r\n  - image: |-\r\n      nginx:1\r\n    name: a\r\n"
    (f,) = pods(text)
    assert (f.value, f.scalar.exact, text[f.scalar.start : f.scalar.end]) == ("nginx:1", True, "nginx:1")


def test_multi_document_indexes_count_empty_documents() -> None:
    pod = "kind: Pod\nmetadata: {name: %s}\nspec: {containers: [{name: c, image: img%s}]}\n"
    text = "# leading comment\n---\n---\n" + pod % ("a", 1) + "---\n# only a comment\n---\n" + pod % ("b", 2) + "...\n"
    fields = pods(text)
    loaded = list(yaml.safe_load_all(text))
    assert [f.document for f in fields] == [i for i, d in enumerate(loaded) if d]
    assert [(f.name, f.value) for f in fields] == [("a", "img1"), ("b", "img2")]


def test_kind_list_items_take_their_own_metadata() -> None:
    text = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: one, namespace: ns1}
  spec: {containers: [{name: c, image: a}]}
- kind: DaemonSet
  metadata: {name: two}
  spec: {template: {spec: {containers: [{name: d, image: b}]}}}
"""
    one, two = pods(text)
    assert (one.kind, one.namespace, one.name, one.path) == ("Pod", "ns1", "one", "/items/0/spec/containers/0/image")
    assert (two.kind, two.namespace, two.name) == ("DaemonSet", None, "two")


def test_cronjob_and_custom_resource_pod_templates() -> None:
    text = """\
kind: CronJob
metadata: {name: nightly}
spec:
  jobTemplate:
    spec:
      template:
        spec:
          containers:
          - {name: job, image: "ghcr.io/o/job:1"}
---
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: r, namespace: prod}
spec:
  template:
    spec:
      containers:
      - name: main
        image: example.com/r:2
---
apiVersion: example.com/v1
kind: Anything
spec:
  deeply:
    nested:
      - containers:
        - image: x/y:3
          name: z
"""
    fields = pods(text)
    assert [(f.document, f.kind, f.path) for f in fields] == [
        (0, "CronJob", "/spec/jobTemplate/spec/template/spec/containers/0/image"),
        (1, "Rollout", "/spec/template/spec/containers/0/image"),
        (2, "Anything", "/spec/deeply/nested/0/containers/0/image"),
    ]
    assert fields[1].namespace == "prod"


def test_keys_spelled_with_escapes_are_still_found() -> None:
    # documents without any image-like text are skipped; an escape defeats that test
    text = 'kind: Service\nspec: {ports: [{port: 80}]}\n---\nkind: Pod\nspec:\n  "cont\\x61iners":\n  - "im\\x61ge": nginx\n'
    (f,) = pods(text)
    assert (f.document, f.path, f.value) == (1, "/spec/containers/0/image", "nginx")


def test_path_escapes_keys() -> None:
    text = "kind: X\nspec:\n  a/b~c:\n    containers: [{image: i}]\n"
    (f,) = pods(text)
    assert f.path == "/spec/a~1b~0c/containers/0/image"


def test_status_is_not_a_pod_image_or_a_hint() -> None:
    text = """\
kind: Pod
spec:
  containers: [{name: a, image: nginx}]
status:
  containerStatuses:
  - image: docker.io/library/nginx:latest
    imageID: docker.io/library/nginx@sha256:abc
"""
    fields = locate(text)
    assert [(f.source, f.value) for f in fields] == [("pod", "nginx")]


def test_env_annotations_and_configmap_values_are_not_pod_images() -> None:
    text = """\
kind: Deployment
metadata:
  annotations:
    image: nginx:1
spec:
  template:
    spec:
      containers:
      - name: a
        image: real/image:1
        env:
        - {name: OTHER, value: "nginx:1"}
---
kind: ConfigMap
data:
  image: nginx:1
"""
    assert [f.value for f in pods(text)] == ["real/image:1"]


# ----------------------------------------------------------------------------- hints


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # Prometheus operator CR
            "apiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata: {name: k8s}\n"
            "spec:\n  image: quay.io/prometheus/prometheus:v2.37.0\n",
            [("/spec/image", "quay.io/prometheus/prometheus:v2.37.0", 5, "Prometheus spec.image")],
        ),
        (
            "kind: ThanosRuler\nspec:\n  image: quay.io/thanos/thanos:v0.30.0\n",
            [("/spec/image", "quay.io/thanos/thanos:v0.30.0", 3, "ThanosRuler spec.image")],
        ),
        (  # Tekton steps and sidecars, parameters included
            "apiVersion: tekton.dev/v1\nkind: Task\nspec:\n  steps:\n  - name: build\n"
            "    image: $(params.BUILDER_IMAGE)\n  - name: push\n    image: gcr.io/x/push:1\n"
            "  sidecars:\n  - image: docker:dind\n",
            [("/spec/steps/0/image", "$(params.BUILDER_IMAGE)", 6, "step"),
             ("/spec/steps/1/image", "gcr.io/x/push:1", 8, "step"),
             ("/spec/sidecars/0/image", "docker:dind", 10, "step")],
        ),
        (  # Argo Workflows: container, script, sidecars
            "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nspec:\n  templates:\n  - name: a\n"
            "    container: {image: 'alpine:3.19', command: [sh]}\n  - name: b\n"
            "    script:\n      image: python:3.12\n    sidecars:\n    - {name: s, image: nginx}\n",
            [("/spec/templates/0/container/image", "alpine:3.19", 6, "template"),
             ("/spec/templates/1/script/image", "python:3.12", 9, "template"),
             ("/spec/templates/1/sidecars/0/image", "nginx", 11, "template")],
        ),
        (  # old Knative: revisionTemplate.spec.container
            "kind: Service\nspec:\n  runLatest:\n    configuration:\n      revisionTemplate:\n"
            "        spec:\n          container:\n            image: helloworld:latest\n",
            [("/spec/runLatest/configuration/revisionTemplate/spec/container/image", "helloworld:latest", 8,
              "outside a pod spec")],
        ),
        (  # arguments and environment variables of a pod's container
            "kind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n      - name: op\n"
            "        image: op:1\n        args:\n        - --config-reloader-image=quay.io/p/reloader:v1\n"
            "        - --other=1\n        - --bad-image=not a ref\n        env:\n"
            "        - {name: RELATED_IMAGE_DB, value: 'docker.io/library/postgres:16'}\n"
            "        - {name: PLAIN, value: 'docker.io/library/postgres:16'}\n",
            [("/spec/template/spec/containers/0/args/0", "quay.io/p/reloader:v1", 9, "argument"),
             ("/spec/template/spec/containers/0/env/0/value", "docker.io/library/postgres:16", 13,
              "environment variable RELATED_IMAGE_DB")],
        ),
        (  # a ConfigMap setting that a controller injects (Knative queue-proxy)
            "kind: ConfigMap\nmetadata: {name: config-deployment}\ndata:\n"
            "  queue-sidecar-image: gcr.io/knative-releases/queue:v1\n  queue-sidecar-cpu: 25m\n"
            "  registries-skipping-tag-resolving: kind.local\n",
            [("/data/queue-sidecar-image", "gcr.io/knative-releases/queue:v1", 4, "ConfigMap setting")],
        ),
        (  # status is never a hint
            "kind: Foo\nspec: {}\nstatus:\n  image: quay.io/x/y:1\n",
            [],
        ),
    ],
)
def test_hints(text: str, expected: list[tuple[str, str, int, str]]) -> None:
    hints = [f for f in locate(text) if f.source == "hint"]
    assert [(f.path, f.value, f.line) for f in hints] == [e[:3] for e in expected]
    for f, e in zip(hints, expected, strict=True):
        assert e[3] in f.note
        spans_ok(text, [f])
    assert not [f for f in locate(text) if f.source not in ("hint", "pod")]


# ----------------------------------------------------------------------------- helm values

BITNAMI = f"""\
global:
  imageRegistry: ""
  imagePullSecrets: []
image:
  registry: docker.io
  repository: bitnami/nginx
  tag: 1.29.1-debian-12-r0
  digest: ""
  pullPolicy: IfNotPresent
metrics:
  image:
    registry: docker.io
    repository: bitnami/nginx-exporter
    tag: 1.4.2-debian-12-r9
    digest: "{DIGEST}"
imagePullPolicy: Always
"""


def test_helm_bitnami_split_maps() -> None:
    fields = locate(BITNAMI, filename="charts/nginx/values.yaml")
    assert [(f.source, f.path, f.value) for f in fields] == [
        ("helm", "/image", "docker.io/bitnami/nginx:1.29.1-debian-12-r0"),
        ("helm", "/metrics/image", f"docker.io/bitnami/nginx-exporter:1.4.2-debian-12-r9@{DIGEST}"),
    ]
    image = fields[0]
    assert image.scalar is None
    assert {k: v.value for k, v in image.parts.items()} == {
        "registry": "docker.io", "repository": "bitnami/nginx", "tag": "1.29.1-debian-12-r0", "digest": "",
    }
    assert image.parts["registry"].line == 5 and image.line == 6
    spans_ok(BITNAMI, fields)


def test_helm_global_image_registry_overrides() -> None:
    text = BITNAMI.replace('imageRegistry: ""', "imageRegistry: my.registry.io")
    fields = locate(text, filename="values.yaml")
    assert [f.value for f in fields] == [
        "my.registry.io/bitnami/nginx:1.29.1-debian-12-r0",
        f"my.registry.io/bitnami/nginx-exporter:1.4.2-debian-12-r9@{DIGEST}",
    ]
    assert all(f.parts["registry"].line == 2 and "global.imageRegistry" in f.note for f in fields)


def test_helm_ingress_nginx_shape() -> None:
    text = f"""\
global:
  image:
    registry: registry.k8s.io
controller:
  image:
    chroot: false
    # registry: registry.k8s.io
    image: ingress-nginx/controller
    tag: "v1.15.1"
    digest: {DIGEST}
    digestChroot: {DIGEST}
    pullPolicy: IfNotPresent
defaultBackend:
  image:
    registry: example.org
    image: defaultbackend-amd64
    tag: "1.5"
"""
    controller, backend = locate(text, filename="values.yaml")
    assert controller.value == f"registry.k8s.io/ingress-nginx/controller:v1.15.1@{DIGEST}"
    assert controller.parts["registry"].line == 3 and "global.image.registry" in controller.note
    assert controller.parts["image"].value == "ingress-nginx/controller"
    assert backend.value == "example.org/defaultbackend-amd64:1.5"  # its own registry wins
    assert backend.note is None


def test_helm_metrics_server_and_prometheus_shapes() -> None:
    text = """\
image:
  repository: registry.k8s.io/metrics-server/metrics-server
  # Overrides the image tag whose default is v{{ .Chart.AppVersion }}
  tag: ""
crds:
  upgradeJob:
    image:
      busybox:
        registry: docker.io
        repository: busybox
        tag: "latest"
        sha: "%s"
prometheusOperator:
  thanosImage:
    registry: quay.io
    repository: thanos/thanos
    tag: v0.42.4
    sha: ""
couchdb:
  image:
    repository: gesellix/couchdb-prometheus-exporter
    tag: 16
rollouts:
  image:
    repository: gcr.io/heptio-images/ks-guestbook-demo
    tag: 1.10
""" % ("ab" * 32)
    fields = locate(text, filename="values-production.yml")
    assert [(f.path, f.value) for f in fields] == [
        ("/image", "registry.k8s.io/metrics-server/metrics-server"),
        ("/crds/upgradeJob/image/busybox", f"docker.io/busybox:latest@{DIGEST}"),
        ("/prometheusOperator/thanosImage", "quay.io/thanos/thanos:v0.42.4"),
        ("/couchdb/image", "gesellix/couchdb-prometheus-exporter:16"),
        ("/rollouts/image", "gcr.io/heptio-images/ks-guestbook-demo:1.1"),  # Helm prints float64 1.1
    ]
    assert "registry" not in fields[0].parts


def test_helm_plain_strings() -> None:
    text = """\
image: "nginx:1.25"
sidecarImage: quay.io/org/sidecar:2
imageRegistry: quay.io
imageNamespace: jetstack
imagePullPolicy: IfNotPresent
templated:
  image: "{{ .Values.other }}"
nested:
  initImage: 'busybox'
  initImageTag: "1.36"
  description: "nginx:1.25"
extraContainers:
- name: x
  image: docker.io/x/y:1
"""
    fields = locate(text, filename="values.yaml")
    assert [(f.source, f.path, f.value, f.scalar.style) for f in fields] == [
        ("helm", "/image", "nginx:1.25", "double"),
        ("helm", "/sidecarImage", "quay.io/org/sidecar:2", "plain"),
        ("helm", "/nested/initImage", "busybox", "single"),
        ("helm", "/extraContainers/0/image", "docker.io/x/y:1", "plain"),
    ]
    spans_ok(text, fields)


def test_helm_map_with_a_composed_name() -> None:
    """cert-manager: `[imageRegistry/][imageNamespace/]name`, the pieces shared by the chart (issue 10)."""
    text = """\
imageRegistry: quay.io
imageNamespace: jetstack
image:
  name: cert-manager-controller
  repository: ""
webhook:
  image:
    repository: ""
    tag: v1
"""
    fields = locate(text, filename="values.yaml")
    assert [(f.source, f.path, f.value) for f in fields] == [
        ("helm", "/image", "quay.io/jetstack/cert-manager-controller"),
    ]
    assert set(fields[0].parts) == {"registry", "namespace", "name"} and "imageRegistry" in fields[0].note


def test_helm_pod_specs_inside_values_are_pod_images() -> None:
    text = "initContainers:\n- name: wait\n  image: busybox:1\n"
    assert [(f.source, f.value) for f in locate(text, filename="values.yaml")] == [("pod", "busybox:1")]


# ----------------------------------------------------------------------------- kustomize and compose


def test_kustomize_images() -> None:
    text = f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [deployment.yaml]
images:
- name: nginx
  newTag: "1.25"
- name: quay.io/argoproj/argocd
  newName: quay.io/argoproj/argocd
  newTag: latest
- {{name: redis, newName: public.ecr.aws/docker/library/redis}}
- name: pinned
  digest: {DIGEST}
"""
    fields = locate(text, filename="overlays/prod/kustomization.yaml")
    assert [(f.source, f.path, f.value, f.line) for f in fields] == [
        ("kustomize", "/images/0", "nginx:1.25", 5),
        ("kustomize", "/images/1", "quay.io/argoproj/argocd:latest", 8),
        ("kustomize", "/images/2", "public.ecr.aws/docker/library/redis", 10),
        ("kustomize", "/images/3", f"pinned@{DIGEST}", 11),
    ]
    assert fields[0].insert is not None and fields[1].insert is None
    assert set(fields[1].parts) == {"name", "newName", "newTag"}
    # by content, whatever the file name
    assert [f.source for f in locate(text, filename="kust.yaml")] == ["kustomize"] * 4


def test_compose_services_with_merge_keys() -> None:
    text = """\
x-common: &common
  image: docker.io/netboxcommunity/netbox:v4
  restart: always
services:
  netbox:
    <<: *common
  worker:
    <<: *common
    command: [worker]
  db:
    image: "postgres:16-alpine"
  app:
    build: .
"""
    fields = locate(text, filename="docker-compose.override.yml")
    assert sorted((f.source, f.path, f.value, f.line, f.name) for f in fields) == [
        ("compose", "/services/db/image", "postgres:16-alpine", 11, "db"),
        ("compose", "/services/netbox/image", "docker.io/netboxcommunity/netbox:v4", 2, "netbox"),
        ("compose", "/services/worker/image", "docker.io/netboxcommunity/netbox:v4", 2, "worker"),
    ]
    by = {f.name: f for f in fields}
    assert by["netbox"].scalar is by["worker"].scalar
    assert [f.source for f in locate(text, filename="stack.yml")] == ["compose"] * 3  # by content


@pytest.mark.parametrize(
    ("filename", "text", "kind"),
    [
        ("kustomization.yaml", "resources: []\n", "kustomization"),
        ("a/b/Kustomization", "resources: []\n", "kustomization"),
        ("compose.yaml", "services: {}\n", "compose"),
        ("docker-compose.prod.yml", "services: {}\n", "compose"),
        ("values.yaml", "a: 1\n", "helm-values"),
        ("chart/values-staging.yml", "a: 1\n", "helm-values"),
        ("deploy.yaml", "apiVersion: v1\nkind: Pod\n", "manifest"),
        ("x.yaml", "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n", "kustomization"),
        ("x.yaml", "services:\n  web: {image: nginx}\n", "compose"),
        ("x.yaml", "apiVersion: v1\nkind: Service\nspec: {}\nservices: {web: {image: nginx}}\n", "manifest"),
    ],
)
def test_file_kind(filename: str, text: str, kind: str) -> None:
    assert file_kind(filename, compose_documents(text)) == kind


def test_file_next_to_chart_yaml_is_helm_values(tmp_path) -> None:
    (tmp_path / "Chart.yaml").write_text("name: x\n")
    for name, text in [("prod.yaml", "a: 1\n"), ("Chart.yaml", "name: x\n"), ("pod.yaml", "apiVersion: v1\nkind: Pod\n")]:
        (tmp_path / name).write_text(text)
    assert file_kind(str(tmp_path / "prod.yaml"), compose_documents("a: 1\n")) == "helm-values"
    assert file_kind(str(tmp_path / "Chart.yaml"), compose_documents("name: x\n")) == "manifest"
    assert file_kind(str(tmp_path / "pod.yaml"), compose_documents("apiVersion: v1\nkind: Pod\n")) == "manifest"


def test_go_number_formatting_matches_helm() -> None:
    cases = {"16": "16", "0.1": "0.1", "1.10": "1.1", "123456": "123456", "1234567": "1.234567e+06",
             "20180801": "2.0180801e+07", "0.00001": "1e-05", "-2.5": "-2.5", "1_000": "1000"}
    assert {k: go_format_number(k) for k in cases} == cases


# ----------------------------------------------------------------------------- errors and hostile input


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a: b\n  c: d\n", 2, "mapping values are not allowed"),
        ("a: [1, 2\nb: 3\n", 2, "flow sequence"),
        ("kind: Pod\nspec:\n  containers:\n  - image: {{ .Values.image }}:{{ .Values.tag }}\n", 4, "block mapping"),
        ("{{- if .Values.enabled }}\nkind: Pod\n", 1, ""),
        ("a: *undefined\n", 1, "undefined alias"),
        ("a: b\nc: \x00\n", 2, "unacceptable character"),
    ],
)
def test_invalid_yaml_gives_yaml_error_with_line(text: str, line: int, words: str) -> None:
    with pytest.raises(YamlError) as info:
        locate(text)
    assert not isinstance(info.value, LocateError)
    assert info.value.line == line
    assert str(info.value).startswith(f"line {line}: ")
    assert words in info.value.message


def billion_laughs(levels: int = 9) -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def container_bomb() -> str:
    """Aliases that multiply containers: each level doubles the pod images found."""
    lines = ["l0: &l0 {containers: [{name: c, image: nginx}]}"]
    for i in range(1, 30):
        lines.append(f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}]")
    return "\n".join(lines) + "\n"


def linear_work(text: str) -> int:
    """Failing fast, in steps: work linear in the text (parser events, nodes, alias re-visits;
    tests/support/work.py), never the expansion a bomb asks for. Past it, counting() stops the run."""
    return 8 * len(text) + 25_000


@pytest.mark.parametrize(
    "text",
    [
        billion_laughs(),
        container_bomb(),
        "[" * 100_000 + "]" * 100_000,  # libyaml's composer would crash the interpreter
        "{a: " * 50_000 + "b" + "}" * 50_000,
        "- " * 5_000 + "x\n",
        "a:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(3000)),
        "k:\r" + "- " * 50_000 + "x\r",  # CR-only line breaks hide the deep line from a naive check
        "k:\u2028" + "- " * 50_000 + "x\n",
    ],
    ids=["billion-laughs", "container-bomb", "deep-flow", "deep-flow-map", "deep-block-seq", "deep-block-map",
         "deep-block-after-cr", "deep-block-after-ls"],
)
def test_bombs_and_deep_nesting_fail_fast(text: str) -> None:
    with counting(linear_work(text)) as work, pytest.raises(LocateError) as info:
        locate(text)
    assert work.steps <= linear_work(text), work
    assert info.value.line is not None and str(info.value).startswith("line ")


def test_files_of_too_many_nodes_are_refused_before_composing() -> None:
    """scan.max_file_nodes: counted from the events (memory bounded by the text), refused with a line
    naming the limit and the setting; a file at the limit is read as usual."""
    pod = "kind: Pod\nspec:\n  containers:\n" + "".join(f"  - {{name: c{i}, image: nginx:1.{i}}}\n" for i in range(100))
    nodes = 1 + 2 + 2 + 2 + 100 * 5  # root, kind pair, spec key + mapping, containers key + list, 5 per container
    assert len(locate(pod, max_nodes=nodes)) == 100
    composed = []
    compose = mock.patch.object(document.yaml, "compose_all", side_effect=lambda *a, **k: composed.append(1) or iter(()))
    with compose, pytest.raises(LocateError, match=r"more than 506 YAML nodes, over the limit \(scan.max_file_nodes\)"):
        locate(pod, max_nodes=nodes - 1)
    assert composed == [], "composed before it was refused"
    assert document.node_bound(pod) >= nodes  # the cheap bound sends it to be counted


def test_recursive_anchors_terminate() -> None:
    text = "a: &a [*a, 1]\nb: &b {self: *b, containers: [{name: x, image: nginx}]}\nc: &c {<<: *c, d: 1}\n"
    fields = locate(text)
    assert [(f.path, f.value) for f in fields] == [("/b/containers/0/image", "nginx")]


def test_long_merge_chains_and_nested_merges_need_no_recursion() -> None:
    chain = "a0: &a0 {containers: [{name: c, image: x}]}\n" + "".join(
        f"a{i}: &a{i} {{<<: *a{i - 1}}}\n" for i in range(1, 3000)
    )
    assert len(pods(chain)) == 3000
    nested = "x: " + "{<<: " * 990 + "{containers: [{image: y}]}" + "}" * 990 + "\n"
    assert [f.path for f in pods(nested)] == ["/x/containers/0/image"]


def test_merge_chains_that_grow_are_refused_but_big_documents_are_not() -> None:
    growing = "a0: &a0 {k0: 0}\n" + "".join(f"a{i}: &a{i} {{<<: *a{i - 1}, k{i}: {i}}}\n" for i in range(1, 20_000))
    with counting(linear_work(growing)) as work, pytest.raises(LocateError, match="expanding aliases"):
        locate(growing)
    assert work.steps <= linear_work(growing), work  # copying every chain whole would be quadratic
    big = "x: &x {a: 1}\ny: {<<: *x}\n" + "".join(f"k{i}: {{containers: [{{image: i{i}}}]}}\n" for i in range(30_000))
    assert len(pods(big)) == 30_000


def test_moderate_alias_reuse_is_fine() -> None:
    text = "base: &b {containers: [{name: c, image: nginx}]}\n" + "".join(f"k{i}: *b\n" for i in range(500))
    assert len(pods(text)) == 501


def test_unknown_content_kind_is_rejected() -> None:
    with pytest.raises(ValueError):
        locate("a: 1\n", content="nonsense")
