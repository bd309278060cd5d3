"""Live patching of owners' image fields, against the served Kubernetes API."""

from __future__ import annotations

from typing import Any

import pytest

from manifests_rewriter.model import Mapping
from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import Policy
from manifests_rewriter.reference import ImageRef, parse
from mirror.cluster.kube import connect
from mirror.cluster.patch import apply_patches, changed_paths, gitops_manager, plan_patches
from mirror.cluster.scan import scan_cluster
from tests.support.kubeapi import (
    KubeAPI,
    container,
    cronjob,
    daemonset,
    deployment,
    digest_of,
    job,
    pod,
    pod_spec,
    pods_for,
    replicaset,
    statefulset,
)

POLICY = Policy(r"^crazureblue\.azurecr\.io/.+$", ("kube-system",), ())
TARGET = "crazureblue.azurecr.io"
HELM = ({"app.kubernetes.io/managed-by": "Helm"},
        {"meta.helm.sh/release-name": "shop", "meta.helm.sh/release-namespace": "shop"})
ARGO = ({"app.kubernetes.io/instance": "shop"}, {"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/argo"})
FLUX = ({"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}, {})
FLUX_HELM = ({"helm.toolkit.fluxcd.io/name": "shop", "app.kubernetes.io/managed-by": "Helm"}, HELM[1])


def to_target(ref: ImageRef) -> ImageRef:
    return target_for(ref, TARGET)


def workloads() -> list[dict[str, Any]]:
    ns = "shop"
    objects: list[dict[str, Any]] = []
    web = deployment("web", ns, [container("app", "nginx:1.27", port=80), container("log", "fluent/fluent-bit:3.0.7")],
                     init_containers=[container("init", "busybox:1.36")], replicas=2)
    rs = replicaset("web-5d8f", ns, web["spec"]["template"]["spec"]["containers"],
                    init_containers=web["spec"]["template"]["spec"]["initContainers"], replicas=2, owner=web,
                    pod_template_hash="5d8f")
    objects += [web, rs, *pods_for(rs, 2, digests={"app": digest_of("nginx"), "log": digest_of("fluent"),
                                                    "init": digest_of("busybox")})]
    for name, (labels, notes) in (("helm", HELM), ("argo", ARGO), ("flux", FLUX), ("fluxhelm", FLUX_HELM)):
        objects.append(deployment(name, ns, [container("app", "redis:7.2")], labels=labels, annotations=notes))
    objects.append(statefulset("db", ns, [container("pg", "postgres:16")]))
    objects.append(daemonset("agent", ns, [container("agent", "otel/opentelemetry-collector:0.104.0")]))
    objects.append(cronjob("nightly", ns, [container("report", "python:3.12-slim")]))
    objects.append(job("migrate", ns, [container("migrate", "python:3.12-slim")]))
    objects.append(pod("toolbox", ns, pod_spec([container("shell", "alpine:3.20")]), digests={"shell": digest_of("a")},
                       ephemeral=[{"name": "dbg", "image": "busybox:1.36"}]))
    return objects


@pytest.fixture()
def served(tmp_path: Any) -> Any:
    with KubeAPI(workloads()) as api:
        client = connect(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        findings = scan_cluster(client, POLICY, to_target=to_target).findings
        yield api, client, findings


def mapping_of(findings: list[Any]) -> list[Mapping]:
    return [Mapping(parse(f.image), parse(f.target)) for f in findings if f.target]


def everything(source: ImageRef, target: ImageRef, digest: str | None) -> bool:
    return True


def snapshot(api: KubeAPI) -> dict[tuple[str, str], dict[str, Any]]:
    return {(kind, o["metadata"]["name"]): o for kind in ("Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job",
                                                          "Pod", "ReplicaSet") for o in api.objects(kind)}


def test_dry_run_by_default_changes_nothing_and_never_touches_pods(served: Any) -> None:
    api, client, findings = served
    before = snapshot(api)
    plans = plan_patches(client, findings, mapping_of(findings), everything)
    api.clear_log()
    results = apply_patches(client, plans)
    patches = api.requests_for("PATCH")
    assert patches and all(r.query.get("dryRun") == "All" for r in patches)
    assert all(r.content_type == "application/json-patch+json" for r in patches)
    assert snapshot(api) == before
    assert {(r.plan.kind, r.plan.name, r.status) for r in results if r.status != "skipped"} == {
        ("Deployment", "web", "would patch"), ("StatefulSet", "db", "would patch"),
        ("DaemonSet", "agent", "would patch"), ("CronJob", "nightly", "would patch")}
    assert not api.requests_for(None, "/pods")  # pods are never read nor patched by the patcher
    web = next(r for r in results if r.plan.name == "web")
    assert sorted(web.changed) == ["/spec/template/spec/containers/0/image", "/spec/template/spec/containers/1/image",
                                   "/spec/template/spec/initContainers/0/image"]


def test_apply_changes_only_image_fields_of_owners(served: Any) -> None:
    api, client, findings = served
    before = snapshot(api)
    plans = plan_patches(client, findings, mapping_of(findings), everything)
    api.clear_log()
    results = apply_patches(client, plans, dry_run=False)
    assert {r.status for r in results} == {"patched", "skipped"}
    after = snapshot(api)
    assert not any("/pods" in r.path for r in api.requests_for("PATCH"))
    for key in before:
        diff = changed_paths(before[key], after[key])
        ignore = {"/metadata/resourceVersion", "/metadata/generation"}
        assert all(p.endswith("/image") for p in diff if p not in ignore), (key, diff)
    web = after[("Deployment", "web")]["spec"]["template"]["spec"]
    assert [c["image"] for c in web["containers"]] == ["crazureblue.azurecr.io/docker.io/library/nginx:1.27",
                                                        "crazureblue.azurecr.io/docker.io/fluent/fluent-bit:3.0.7"]
    assert web["initContainers"][0]["image"] == "crazureblue.azurecr.io/docker.io/library/busybox:1.36"
    cron = after[("CronJob", "nightly")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert cron["image"] == "crazureblue.azurecr.io/docker.io/library/python:3.12-slim"
    assert after[("Pod", "toolbox")] == before[("Pod", "toolbox")]
    assert after[("Job", "migrate")] == before[("Job", "migrate")]
    assert after[("ReplicaSet", "web-5d8f")] == before[("ReplicaSet", "web-5d8f")]  # owners only: the Deployment
    # nothing is refused any more where the patch went
    rescan = scan_cluster(client, POLICY)
    assert {(f.kind, f.name) for f in rescan.findings if f.path} >= {("Pod", "toolbox"), ("Job", "migrate")}
    assert not [f for f in rescan.findings if f.kind in ("StatefulSet", "DaemonSet", "CronJob") and f.path]


def test_gitops_managed_objects_are_skipped_unless_forced(served: Any) -> None:
    api, client, findings = served
    plans = {p.name: p for p in plan_patches(client, findings, mapping_of(findings), everything)}
    for name, manager in (("helm", "Helm (release shop in shop)"), ("argo", "Argo CD"), ("flux", "Flux"),
                          ("fluxhelm", "Flux")):
        plan = plans[name]
        assert plan.action == "skip" and plan.managed_by and plan.managed_by.startswith(manager)
        assert "source" in plan.warnings[0] and "revert" in plan.warnings[0]
    forced = {p.name: p for p in plan_patches(client, findings, mapping_of(findings), everything, force=True)}
    assert all(forced[n].action == "patch" and "--force" in forced[n].warnings[0] for n in ("helm", "argo", "flux"))
    apply_patches(client, [forced["argo"]], dry_run=False)
    assert api.get("Deployment", "shop", "argo")["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "crazureblue.azurecr.io/docker.io/library/redis:7.2"


@pytest.mark.parametrize(("labels", "annotations", "expected"), [
    ({}, {}, None),
    ({"app.kubernetes.io/managed-by": "Helm"}, {}, "Helm"),
    ({}, {"meta.helm.sh/release-name": "r"}, "Helm (release r)"),
    ({"argocd.argoproj.io/instance": "x"}, {}, "Argo CD (argocd.argoproj.io/instance)"),
    ({"app.kubernetes.io/instance": "x"}, {}, None),  # a plain Kubernetes label, not Argo CD's by itself
    ({"helm.toolkit.fluxcd.io/name": "x"}, {}, "Flux (helm.toolkit.fluxcd.io/name)"),
])
def test_gitops_manager_detection(labels: dict[str, str], annotations: dict[str, str], expected: str | None) -> None:
    assert gitops_manager({"labels": labels, "annotations": annotations}) == expected


def test_unverified_images_are_never_patched(served: Any) -> None:
    api, client, findings = served
    asked: list[tuple[str, str, str | None]] = []

    def verify(source: ImageRef, target: ImageRef, digest: str | None) -> bool:
        asked.append((str(source), str(target), digest))
        return "fluent-bit" not in source.repository and "postgres" not in source.repository

    plans = {p.name: p for p in plan_patches(client, findings, mapping_of(findings), verify)}
    web = plans["web"]
    assert [c.container for c in web.changes] == ["app", "init"]
    assert any("not verified" in s and "fluent" in s and digest_of("fluent") in s for s in web.skipped)
    assert plans["db"].action == "skip" and "not verified" in (plans["db"].reason or "")
    assert ("docker.io/library/nginx:1.27", "crazureblue.azurecr.io/docker.io/library/nginx:1.27",
            digest_of("nginx")) in asked  # verify gets the running digest
    apply_patches(client, plans.values(), dry_run=False)
    images = [c["image"] for c in api.get("Deployment", "shop", "web")["spec"]["template"]["spec"]["containers"]]
    assert images == ["crazureblue.azurecr.io/docker.io/library/nginx:1.27", "fluent/fluent-bit:3.0.7"]
    assert api.get("StatefulSet", "shop", "db")["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16"

    def broken(source: ImageRef, target: ImageRef, digest: str | None) -> bool:
        raise RuntimeError("registry down")

    assert all(p.action == "skip" for p in plan_patches(client, findings, mapping_of(findings), broken))


def test_pods_jobs_ephemeral_and_unmapped_are_skipped_with_reasons(served: Any) -> None:
    _, client, findings = served
    plans = {(p.kind, p.name): p for p in plan_patches(client, findings, {}, everything)}
    assert "never patched" in (plans[("Pod", "toolbox")].reason or "")
    assert "immutable" in (plans[("Job", "migrate")].reason or "")
    assert "no target in the mapping" in (plans[("Deployment", "web")].reason or "")
    with_mapping = plan_patches(client, findings, mapping_of(findings), everything)
    assert all(p.action == "skip" for p in with_mapping if p.kind in ("Pod", "Job"))


def test_plan_mapping_with_pinned_digests_keeps_the_reference_as_written(served: Any) -> None:
    api, client, findings = served
    pinned = [Mapping(parse(f.image).with_digest(f.digest), parse(f.target).with_digest(f.digest))
              for f in findings if f.target and f.digest]
    plans = {p.name: p for p in plan_patches(client, findings, pinned, everything)}
    web = plans["web"]
    assert [c.new for c in web.changes if c.container == "app"] == ["crazureblue.azurecr.io/docker.io/library/nginx:1.27"]
    assert plans["db"].action == "skip"  # the StatefulSet runs no pod here: no digest, so not in this mapping


def test_template_changed_since_the_plan_fails_the_patch(served: Any) -> None:
    api, client, findings = served
    plans = [p for p in plan_patches(client, findings, mapping_of(findings), everything) if p.name == "db"]
    sts = api.get("StatefulSet", "shop", "db")
    sts["spec"]["template"]["spec"]["containers"][0]["image"] = "postgres:17"  # someone else's change
    api.add(sts)
    [result] = apply_patches(client, plans, dry_run=False)
    assert result.status == "failed" and "test failed" in (result.error or "")
    assert api.get("StatefulSet", "shop", "db")["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:17"
    again = [p for p in plan_patches(client, findings, mapping_of(findings), everything) if p.name == "db"]
    assert again[0].action == "skip" and "now has 'postgres:17'" in (again[0].reason or "")
