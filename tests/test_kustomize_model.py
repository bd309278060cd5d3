"""kustomize_model against the real `kubectl kustomize` on trees generated here: the images the
model says each resource renders must be the ones kubectl renders."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from manifests_rewriter.kustomize_model import KustomizeError, build, is_matched, split

KUBECTL = shutil.which("kubectl")


class _Loader(yaml.SafeLoader):
    """kubectl prints a plain `=` (YAML 1.1 "value" tag): read it as the string it is."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (kustomize built in) not installed")


def deployment(name: str, *images: str, init: tuple[str, ...] = ()) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)],
                                           **({"initContainers": [{"name": f"i{i}", "image": im}
                                                                  for i, im in enumerate(init)]} if init else {})}}}}


def write(d: Path, kustomization: dict, **files: list[dict] | dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    for name, docs in files.items():
        docs = docs if isinstance(docs, list) else [docs]
        (d / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return d


def kubectl_images(d: Path) -> dict[tuple[str, str], str]:
    """(Kind/name, pointer) -> image for every containers/initContainers/ephemeralContainers image
    kubectl renders (the same field set the model reports, plus ephemeral containers)."""
    out = subprocess.run([KUBECTL, "kustomize", str(d)], capture_output=True, text=True, check=True).stdout
    found: dict[tuple[str, str], str] = {}

    def walk(node, ptr, res):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("containers", "initContainers", "ephemeralContainers") and isinstance(v, list):
                    for i, c in enumerate(v):
                        if isinstance(c, dict) and isinstance(c.get("image"), str):
                            found[(res, f"{ptr}/{k}/{i}/image")] = c["image"]
                walk(v, f"{ptr}/{k}", res)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{ptr}/{i}", res)

    for doc in yaml.load_all(out, Loader=_Loader):  # noqa: S506 - SafeLoader subclass
        if doc:
            walk(doc, "", f"{doc['kind']}/{doc['metadata']['name']}")
    return found


def model_images(d: Path) -> dict[tuple[str, str], str]:
    return {(f.resource, f.pointer): f.image for f in build(d).fields}


def assert_same_as_kubectl(d: Path) -> dict[tuple[str, str], str]:
    got, want = model_images(d), kubectl_images(d)
    # ephemeral containers are never transformed: the model does not list them
    want = {k: v for k, v in want.items() if "/ephemeralContainers/" not in k[1]}
    assert got == want
    return got


# ----------------------------------------------------------------------------- unit level
@pytest.mark.parametrize("image,parts", [
    ("nginx", ("nginx", "", "")), ("nginx:1.27", ("nginx", "1.27", "")),
    ("localhost:5000/app:v1", ("localhost:5000/app", "v1", "")),
    ("localhost:5000/app", ("localhost:5000/app", "", "")),
    ("r.io/a/b@sha256:ab", ("r.io/a/b", "", "sha256:ab")), ("r.io/a/b:t@sha256:ab", ("r.io/a/b", "t", "sha256:ab")),
])
def test_split_like_kustomize(image, parts):
    assert split(image) == parts


def test_names_are_unescaped_regular_expressions():
    assert is_matched("nginx:1.27", "nginx") and not is_matched("docker.io/library/nginx:1.27", "nginx")
    assert is_matched("quayXio/x:1", "quay.io/x")  # '.' matches any character, as in kustomize
    assert not is_matched("nginxplus:1", "nginx") and not is_matched("a:1", "a[")  # bad pattern: no match


# ------------------------------------------------------------------ against kubectl kustomize
@needs_kubectl
def test_issue_10_base_and_overlay_match_by_name_as_written(tmp_path):
    write(tmp_path / "base", {"resources": ["app.yaml"]},
          app=[deployment("web", "nginx:1.27"), deployment("db", "postgres:16-alpine")])
    prod = write(tmp_path / "overlays" / "prod", {"resources": ["../../base"], "images": [
        {"name": "nginx", "newTag": "1.27.1"}, {"name": "postgres", "newTag": "16.3-alpine"}]})
    got = assert_same_as_kubectl(prod)
    assert sorted(got.values()) == ["nginx:1.27.1", "postgres:16.3-alpine"]
    b = build(prod)
    assert {(m.entry.name, m.before, m.after) for m in b.all_matches()} == {
        ("nginx", "nginx:1.27", "nginx:1.27.1"), ("postgres", "postgres:16-alpine", "postgres:16.3-alpine")}
    (web,) = [m for m in b.all_matches() if m.entry.name == "nginx"]
    assert web.field.source.endswith("base/app.yaml") and web.field.pointer == "/spec/template/spec/containers/0/image"

    # the broken rewrite from issue 10: the base renamed, the overlay entry no longer matches
    (tmp_path / "base" / "app.yaml").write_text(yaml.safe_dump_all(
        [deployment("web", "acr.example/docker.io/library/nginx:1.27"), deployment("db", "postgres:16-alpine")]))
    got = assert_same_as_kubectl(prod)
    assert "acr.example/docker.io/library/nginx:1.27" in got.values()
    assert [e.name for e in build(prod).unmatched_entries()] == ["nginx"]


@needs_kubectl
def test_component_renames_then_a_later_entry_matches_the_new_name_only(tmp_path):
    write(tmp_path / "base", {"resources": ["app.yaml"]}, app=deployment("db", "postgres:16-alpine"))
    write(tmp_path / "comp", {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
                              "images": [{"name": "postgres", "newName": "docker.io/library/postgres"}]})
    ov = write(tmp_path / "ov", {"resources": ["../base"], "components": ["../comp"], "images": [
        {"name": "postgres", "newTag": "16.3-alpine"}, {"name": "docker.io/library/postgres", "newTag": "16.4-alpine"}]})
    assert list(assert_same_as_kubectl(ov).values()) == ["docker.io/library/postgres:16.4-alpine"]
    b = build(ov)
    assert [(m.entry.name, m.kustomization.split("/")[-2]) for m in b.all_matches()] == [
        ("docker.io/library/postgres", "ov"), ("postgres", "comp")]
    assert [e.name for e in b.unmatched_entries()] == ["postgres"]


@needs_kubectl
def test_components_apply_in_order_over_everything_accumulated(tmp_path):
    write(tmp_path / "base", {"resources": ["app.yaml"]}, app=deployment("a", "busybox:1"))
    write(tmp_path / "c1", {"kind": "Component", "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                            "resources": ["extra.yaml"], "images": [{"name": "busybox", "newName": "mirror.example/busybox"}]},
          extra=deployment("b", "busybox:2"))
    write(tmp_path / "c2", {"kind": "Component", "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                            "resources": ["late.yaml"], "images": [{"name": "mirror.example/busybox", "newTag": "9"}]},
          late=deployment("c", "busybox:3"))
    ov = write(tmp_path / "ov", {"resources": ["../base"], "components": ["../c1", "../c2"]})
    got = assert_same_as_kubectl(ov)
    assert sorted(got.values()) == ["busybox:3", "mirror.example/busybox:9", "mirror.example/busybox:9"]


@needs_kubectl
def test_tag_suffix_applies_twice_where_legacy_walk_and_field_specs_overlap(tmp_path):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "a", "image": "nginx:1.27"}, {"name": "b", "image": "nginx"}],
                    "ephemeralContainers": [{"name": "e", "image": "nginx:1.27"}]}}
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cj"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "a", "image": "nginx:1.27"}]}}}}}}
    d = write(tmp_path / "k", {"resources": ["r.yaml"], "images": [{"name": "nginx", "tagSuffix": "-s"}]},
              r=[pod, deployment("d", "nginx:1.27"), cron])
    got = assert_same_as_kubectl(d)
    assert got[("Pod/p", "/spec/containers/0/image")] == "nginx:1.27-s-s"
    assert got[("Pod/p", "/spec/containers/1/image")] == "nginx:-s-s"
    assert got[("Deployment/d", "/spec/template/spec/containers/0/image")] == "nginx:1.27-s-s"
    assert got[("CronJob/cj", "/spec/jobTemplate/spec/template/spec/containers/0/image")] == "nginx:1.27-s"


@needs_kubectl
def test_tags_digests_ports_regex_names_custom_kinds_and_crds(tmp_path):
    digest = "sha256:" + "b" * 64
    thing = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"},
             "spec": {"deep": {"initContainers": [{"name": "x", "image": "redis:6"}]}, "image": "redis:6"}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "things.example.com"},
           "spec": {"group": "example.com", "names": {"kind": "Thing", "plural": "things"}, "scope": "Namespaced",
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object"}}}],
                    "containers": [{"name": "odd", "image": "redis:6"}]}}
    d = write(tmp_path / "k", {"resources": ["r.yaml"], "images": [
        {"name": "redis", "newTag": "7", "digest": digest},
        {"name": "localhost:5000/app", "newName": "reg.example/app"},
        {"name": "quay.io/x", "digest": digest},
        {"name": "busybox", "newName": "mirror.example/busybox", "newTag": "1.36"},
    ]}, r=[deployment("d", "redis@sha256:" + "a" * 64, "localhost:5000/app:v1", "quayXio/x:1", "nginxplus:1",
                      init=("busybox",)), thing, crd])
    got = assert_same_as_kubectl(d)
    assert got[("Deployment/d", "/spec/template/spec/containers/0/image")] == f"redis:7@{digest}"
    assert got[("Deployment/d", "/spec/template/spec/containers/2/image")] == f"quayXio/x@{digest}"
    assert got[("Thing/t", "/spec/deep/initContainers/0/image")] == f"redis:7@{digest}"
    assert got[("CustomResourceDefinition/things.example.com", "/spec/containers/0/image")] == "redis:6"


@needs_kubectl
def test_configurations_add_image_field_specs_that_reach_overlays(tmp_path):
    mykind = {"apiVersion": "example.com/v1", "kind": "MyKind", "metadata": {"name": "m"},
              "spec": {"runLatest": {"container": {"image": "crd-image:1"}}}}
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.yaml").write_text(yaml.safe_dump(
        {"images": [{"path": "spec/runLatest/container/image", "kind": "MyKind"}]}))
    write(tmp_path / "base", {"resources": ["r.yaml"], "configurations": ["config.yaml"],
                              "images": [{"name": "crd-image", "newTag": "2"}]}, r=mykind)
    ov = write(tmp_path / "ov", {"resources": ["../base"], "images": [{"name": "crd-image", "newName": "mirror.example/crd-image"}]})
    out = subprocess.run([KUBECTL, "kustomize", str(ov)], capture_output=True, text=True, check=True).stdout
    want = yaml.safe_load(out)["spec"]["runLatest"]["container"]["image"]
    got = {(f.resource, f.pointer): f.image for f in build(ov).fields}
    assert want == "mirror.example/crd-image:2"
    assert got == {("MyKind/m", "/spec/runLatest/container/image"): want}


@needs_kubectl
@pytest.mark.parametrize("seed", range(int(__import__("os").environ.get("KZ_SEEDS", "12"))))
def test_random_three_level_trees_match_kubectl(tmp_path, seed):
    """Bases, overlays and components with random images: entries; every rendered image must agree."""
    rnd = random.Random(seed)
    names = ["nginx", "redis", "docker.io/library/nginx", "mirror.example/redis", "quay.io/app", "app"]

    def image():
        n = rnd.choice(names)
        return n + rnd.choice(["", ":1", ":2.0", "@sha256:" + "c" * 64, ":3@sha256:" + "d" * 64])

    def entries():
        out = []
        for _ in range(rnd.randint(0, 3)):
            e = {"name": rnd.choice(names)}
            for k, vals in (("newName", names + ["other.example/x"]), ("newTag", ["9", "10.1"]),
                            ("digest", ["sha256:" + "e" * 64]), ("tagSuffix", ["-x"])):
                if rnd.random() < 0.4:
                    e[k] = rnd.choice(vals)
            out.append(e)
        return out

    def kust(**k):
        e = entries()
        return {**k, **({"images": e} if e else {})}

    write(tmp_path / "base", kust(resources=["r.yaml"]),
          r=[deployment(f"d{i}", *[image() for _ in range(rnd.randint(1, 3))]) for i in range(3)])
    write(tmp_path / "comp", {"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component",
                              **kust(resources=["c.yaml"])}, c=deployment("comp", image()))
    write(tmp_path / "mid", kust(resources=["../base"], components=["../comp"] if rnd.random() < 0.7 else []))
    top = write(tmp_path / "top", kust(resources=["../mid", "extra.yaml"]), extra=deployment("extra", image()))
    assert_same_as_kubectl(top)
    assert_same_as_kubectl(tmp_path / "mid")


# ---------------------------------------------------------------------------- not modelled
def test_remote_resources_and_helm_charts_are_notes_not_fetches(tmp_path):
    d = write(tmp_path / "k", {"resources": ["https://github.com/example/repo//base?ref=v1", "app.yaml"],
                               "helmCharts": [{"name": "redis", "repo": "https://charts.example", "version": "1.0.0",
                                               "valuesInline": {"image": {"tag": "7"}}}],
                               "patches": [{"path": "p.yaml"}]}, app=deployment("a", "nginx:1"))
    (d / "p.yaml").write_text(yaml.safe_dump({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "a"},
                                              "spec": {"template": {"spec": {"containers": [{"name": "c0", "image": "nginx:2"}]}}}}))
    b = build(d)
    assert [f.image for f in b.fields] == ["nginx:1"]
    assert any("remote resource https://github.com/example/repo//base?ref=v1 not fetched" in n for n in b.notes)
    assert any("helmCharts redis 1.0.0 not rendered" in n for n in b.notes)
    assert any("patches not modelled; they can add, change or delete images" in n for n in b.notes)
    assert b.helm_charts[0]["valuesInline"] == {"image": {"tag": "7"}}


def test_bad_trees_are_one_line_errors(tmp_path):
    with pytest.raises(KustomizeError, match="no kustomization.yaml"):
        build(tmp_path)
    write(tmp_path / "a", {"resources": ["../b"]})
    write(tmp_path / "b", {"resources": ["../a"]})
    with pytest.raises(KustomizeError, match="cycle"):
        build(tmp_path / "a")
    write(tmp_path / "c", {"resources": ["missing.yaml"]})
    with pytest.raises(KustomizeError, match="does not exist"):
        build(tmp_path / "c")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "kustomization.yaml").write_text("images: [\n")
    with pytest.raises(KustomizeError) as info:
        build(tmp_path / "d")
    assert "\n" not in str(info.value) and "not valid YAML" in str(info.value)


@needs_kubectl
def test_files_go_yaml_accepts_are_read_too(tmp_path):
    """argocd-example-apps ships a Service with a tab after every plain scalar: kubectl reads it,
    pure-Python PyYAML does not (libyaml does); and a plain `=` scalar (AlertmanagerConfig matchType)."""
    d = write(tmp_path / "k", {"resources": ["svc.yaml", "app.yaml"], "images": [{"name": "nginx", "newTag": "2"}]},
              app=deployment("a", "nginx:1"))
    (d / "svc.yaml").write_text("apiVersion: v1\t\nkind: Service\t\nmetadata:\t\n  name: s\t\n  labels: {m: =}\n"
                                "spec:\t\n  ports:\t\n  - port: 80\t\n")
    assert assert_same_as_kubectl(d) == {("Deployment/a", "/spec/template/spec/containers/0/image"): "nginx:2"}
