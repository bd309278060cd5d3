"""Audit after enforcement: admission denials, stuck rollouts, constraint violations."""

from __future__ import annotations

from typing import Any

from manifests_rewriter.policy import Policy
from mirror.cluster.audit import audit_cluster, parse_denial
from mirror.cluster.kube import connect
from tests.support.kubeapi import (
    APIError,
    KubeAPI,
    constraint,
    container,
    daemonset,
    denial_message,
    deployment,
    event,
    job,
    replicaset,
    statefulset,
    violation,
)

CONSTRAINT = "azurepolicy-k8sazurev2containerallowedimag-8b5c1d0f6a2e4b3c9d7e"


def cluster() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    denied = f"Error creating: {denial_message(CONSTRAINT, 'nginx:1.27', 'app')}"
    stuck = [{"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
              "message": "Deployment does not have minimum availability.", "lastUpdateTime": "2025-05-01T10:05:00Z",
              "lastTransitionTime": "2025-05-01T10:05:00Z"},
             {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": denied,
              "lastUpdateTime": "2025-05-01T10:06:00Z", "lastTransitionTime": "2025-05-01T10:06:00Z"},
             {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
              "message": 'ReplicaSet "web-5d8f" has timed out progressing.', "lastUpdateTime": "2025-05-01T10:15:00Z",
              "lastTransitionTime": "2025-05-01T10:15:00Z"}]
    web = deployment("web", "shop", [container("app", "nginx:1.27")], conditions=stuck)
    rs = replicaset("web-5d8f", "shop", [container("app", "nginx:1.27")], owner=web, pod_template_hash="5d8f")
    objects += [web, rs, event(rs, "FailedCreate", denied, count=5, minute=1),
                event(rs, "FailedCreate", denied, count=3, minute=9)]
    ds = daemonset("agent", "shop", [container("agent", "otel/opentelemetry-collector:0.104.0")])
    objects += [ds, event(ds, "FailedCreate", f"Error creating: {denial_message(CONSTRAINT, 'otel/opentelemetry-collector:0.104.0', 'agent')}", component="daemonset-controller")]
    sts = statefulset("db", "shop", [container("pg", "postgres:16")])
    objects += [sts, event(sts, "FailedCreate", f"create Pod db-0 in StatefulSet db failed error: "
                           f"{denial_message(CONSTRAINT, 'postgres:16', 'pg')}", component="statefulset-controller")]
    j = job("migrate", "shop", [container("migrate", "python:3.12-slim")], failed=True)
    objects += [j, event(j, "FailedCreate", f"Error creating: {denial_message(CONSTRAINT, 'python:3.12-slim', 'migrate')}",
                         component="job-controller")]
    quota = replicaset("quota-1", "shop", [container("app", "crazureblue.azurecr.io/app:1")])
    objects += [quota, event(quota, "FailedCreate", 'Error creating: pods "quota-1-x" is forbidden: exceeded quota: '
                             "compute, requested: cpu=1, used: cpu=4, limited: cpu=4")]
    system = replicaset("coredns-1", "kube-system", [container("coredns", "mcr.microsoft.com/coredns:1")])
    objects += [system, event(system, "FailedCreate",
                              f"Error creating: {denial_message(CONSTRAINT, 'mcr.microsoft.com/coredns:1', 'coredns')}")]
    violations = [violation("Pod", "shop", "toolbox", "alpine:3.20", "shell"),
                  violation("Pod", "kube-system", "coredns-1-abcde", "mcr.microsoft.com/coredns:1", "coredns")]
    objects.append(constraint(CONSTRAINT, r"^crazureblue\.azurecr\.io/.+$", excluded_namespaces=["azure-arc"],
                              enforcement_action="deny", violations=violations, total_violations=25))
    return objects


def test_audit_items(tmp_path: Any) -> None:
    with KubeAPI(cluster()) as api:
        client = connect(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        items = audit_cluster(client)
        field_selectors = [r.query.get("fieldSelector") for r in api.requests_for("GET", "/events")]
    assert field_selectors == ["reason=FailedCreate"]
    events = {(i.kind, i.namespace, i.name): i for i in items if i.source == "event"}
    assert set(events) == {("ReplicaSet", "shop", "web-5d8f"), ("DaemonSet", "shop", "agent"),
                           ("StatefulSet", "shop", "db"), ("Job", "shop", "migrate"),
                           ("ReplicaSet", "kube-system", "coredns-1")}  # not the quota refusal
    rs = events[("ReplicaSet", "shop", "web-5d8f")]
    assert rs.count == 8 and rs.owner == "Deployment shop/web" and rs.webhook == "validation.gatekeeper.sh"
    assert rs.constraints == (CONSTRAINT,) and rs.images == ("nginx:1.27",) and rs.containers == ("app",)
    assert events[("StatefulSet", "shop", "db")].images == ("postgres:16",)
    assert "nginx:1.27 (container app)" in str(rs) and "8x" in str(rs) and "(of Deployment shop/web)" in str(rs)
    [stuck] = [i for i in items if i.source == "deployment"]
    assert (stuck.namespace, stuck.name, stuck.images) == ("shop", "web", ("nginx:1.27",))
    assert "ReplicaFailure" in stuck.message and "ProgressDeadlineExceeded" in stuck.message
    violations = [i for i in items if i.source == "constraint"]
    assert [(v.kind, v.namespace, v.name) for v in violations] == [
        ("K8sAzureV2ContainerAllowedImages", None, CONSTRAINT), ("Pod", "kube-system", "coredns-1-abcde"),
        ("Pod", "shop", "toolbox")]
    assert violations[0].count == 23 and "23 more violations" in violations[0].message
    assert violations[2].images == ("alpine:3.20",) and violations[2].enforcement_action == "deny"
    assert all(i.as_json()["source"] == i.source for i in items)


def test_policy_exclusions_leave_excluded_namespaces_out(tmp_path: Any) -> None:
    with KubeAPI(cluster()) as api:
        client = connect(str(api.write_kubeconfig(tmp_path / "kubeconfig")))
        items = audit_cluster(client, Policy(r"^crazureblue\.azurecr\.io/", ("kube-system",)))
    assert items and all(i.namespace != "kube-system" for i in items)


def test_forbidden_lists_are_items_not_silence(tmp_path: Any) -> None:
    class NoEvents(KubeAPI):
        def _list(self, resource: Any, namespace: Any, query: Any, accept: str) -> bytes:
            if resource.plural == "events":
                raise APIError(403, "Forbidden", 'events is forbidden: User "auditor" cannot list resource "events"')
            return super()._list(resource, namespace, query, accept)

    with NoEvents(cluster()) as api:
        items = audit_cluster(connect(str(api.write_kubeconfig(tmp_path / "kubeconfig"))))
    errors = [i for i in items if i.source == "error"]
    assert len(errors) == 1 and "forbidden" in errors[0].message and str(errors[0]).startswith("error: ")
    assert any(i.source == "deployment" for i in items)


def test_a_clean_cluster_audits_empty(tmp_path: Any) -> None:
    ok = deployment("web", "shop", [container("app", "crazureblue.azurecr.io/app:1")])
    with KubeAPI([ok, constraint("c", r"^crazureblue\.azurecr\.io/", violations=[])]) as api:
        assert audit_cluster(connect(str(api.write_kubeconfig(tmp_path / "kubeconfig")))) == []


def test_parse_denial_messages() -> None:
    message = ('admission webhook "validation.gatekeeper.sh" denied the request: [c1] Container image nginx:1 for '
               "container a has not been allowed.\n[c1] Container image redis:7 for container b has not been allowed.")
    assert parse_denial(message) == ("validation.gatekeeper.sh", ("c1",), ("nginx:1", "redis:7"), ("a", "b"))
    other = ('admission webhook "validation.gatekeeper.sh" denied the request: [repos] container <web> has an invalid '
             "image repo <docker.io/nginx:1>, allowed repos are [\"myacr.azurecr.io/\"]")
    assert parse_denial(other)[2:] == (("docker.io/nginx:1",), ("web",))
    assert parse_denial("exceeded quota") == (None, (), (), ())
