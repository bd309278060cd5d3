"""Cluster scan against the served Kubernetes API (tests/support/kubeapi.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from manifests_rewriter.errors import UsageError
from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import Policy
from manifests_rewriter.reference import parse
from mirror.cluster import ClusterError
from mirror.cluster.kube import connect
from mirror.cluster.scan import running_digest, scan_cluster
from tests.support.kubeapi import (
    APIError,
    KubeAPI,
    container,
    cronjob,
    daemonset,
    deployment,
    digest_of,
    job,
    make_cluster,
    pod,
    pod_spec,
    pods_for,
    replicaset,
    replication_controller,
    statefulset,
)

REGEX = r"^crazureblue\.azurecr\.io/.+$"
POLICY = Policy(REGEX, ("kube-system", "gatekeeper-system", "azure-arc"), (), origin="config test")
TARGET = "crazureblue.azurecr.io"


def to_target(ref):  # type: ignore[no-untyped-def]
    return target_for(ref, TARGET)


@pytest.fixture(scope="module")
def generated() -> Any:
    cluster = make_cluster(300, 6)
    with KubeAPI(cluster.objects) as api:
        yield cluster, api


def client_for(api: KubeAPI, tmp_path: Any) -> Any:
    return connect(str(api.write_kubeconfig(tmp_path / "kubeconfig")))


def keys(findings: list[Any]) -> set[tuple[str, ...]]:
    return {(f.kind, f.namespace, f.name, f.container, f.image) for f in findings}


def test_findings_equal_the_generated_truth_once_each_with_running_digest(generated: Any, tmp_path: Any) -> None:
    cluster, api = generated
    result = scan_cluster(client_for(api, tmp_path), POLICY, to_target=to_target)
    expected = {(t.kind, t.namespace, t.name, t.container, t.image): t for t in cluster.truth
                if POLICY.refuses(t.image, namespace=t.namespace, container=t.container)}
    assert not result.errors
    assert len(result.findings) == len(keys(result.findings))  # one finding per owner/container/image
    assert keys(result.findings) == set(expected)
    for f in result.findings:
        truth = expected[(f.kind, f.namespace, f.name, f.container, f.image)]
        assert f.source == "cluster" and f.file is None
        assert (f.digest in truth.digests) if truth.digests else f.digest is None
        assert f.target == str(to_target(parse(f.image)))
    kinds = {f.kind for f in result.findings}
    assert kinds == {"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job", "ReplicaSet",
                     "ReplicationController", "Pod"}
    assert result.listed["Pod"] == cluster.pods


def small_cluster() -> list[dict[str, Any]]:
    """One of each kind in namespace shop, and the same in kube-system (excluded)."""
    objects: list[dict[str, Any]] = []
    for ns in ("shop", "kube-system"):
        app = container("app", "nginx:1.27", port=80)
        side = container("log", "fluent/fluent-bit:3.0.7")
        init = container("init", "busybox:1.36")
        digests = {"app": digest_of("nginx:1.27"), "log": digest_of("fluent-bit"), "init": digest_of("busybox")}
        d = deployment("web", ns, [app, side], init_containers=[init], replicas=3)
        rs = replicaset("web-7d4b9c8f5d", ns, [app, side], init_containers=[init], replicas=3, owner=d,
                        pod_template_hash="7d4b9c8f5d")
        objects += [d, rs, *pods_for(rs, 3, digests=digests, style="docker")]
        cj = cronjob("nightly", ns, [container("report", "python:3.12-slim")])
        j = job("nightly-29000000", ns, [container("report", "python:3.12-slim")], owner=cj)
        objects += [cj, j, *pods_for(j, 1, digests={"report": digest_of("python")}, phase="Succeeded")]
        s = statefulset("db", ns, [container("pg", "postgres:16")], replicas=2)
        objects += [s, *pods_for(s, 2, digests={"pg": digest_of("postgres")})]
        ds = daemonset("agent", ns, [container("agent", "crazureblue.azurecr.io/agent:1")])
        objects += [ds, *pods_for(ds, 3, digests={"agent": digest_of("agent")})]
        rc = replication_controller("legacy", ns, [container("old", "redis:6")], replicas=2)
        objects += [rc, *pods_for(rc, 2, digests={"old": digest_of("redis6")})]
        idle = deployment("idle", ns, [container("idle", "httpd:2.4")], replicas=0)
        objects.append(idle)
        objects.append(pod("toolbox", ns, pod_spec([container("shell", "alpine:3.20")]),
                           digests={"shell": digest_of("alpine"), "dbg": digest_of("busybox-dbg")},
                           ephemeral=[{"name": "dbg", "image": "busybox:1.36", "terminationMessagePath":
                                       "/dev/termination-log", "terminationMessagePolicy": "File"}]))
    return objects


@pytest.fixture()
def small(tmp_path: Any) -> Any:
    with KubeAPI(small_cluster()) as api:
        yield api, client_for(api, tmp_path)


def test_attribution_to_top_owner_one_finding_per_workload_container(small: Any) -> None:
    _, client = small
    result = scan_cluster(client, POLICY, to_target=to_target)
    got = sorted((f.kind, f.name, f.container, f.image, f.path) for f in result.findings)
    assert got == [
        ("CronJob", "nightly", "report", "python:3.12-slim", "/spec/jobTemplate/spec/template/spec/containers/0/image"),
        ("Deployment", "idle", "idle", "httpd:2.4", "/spec/template/spec/containers/0/image"),
        ("Deployment", "web", "app", "nginx:1.27", "/spec/template/spec/containers/0/image"),
        ("Deployment", "web", "init", "busybox:1.36", "/spec/template/spec/initContainers/0/image"),
        ("Deployment", "web", "log", "fluent/fluent-bit:3.0.7", "/spec/template/spec/containers/1/image"),
        ("Pod", "toolbox", "dbg", "busybox:1.36", "/spec/ephemeralContainers/0/image"),
        ("Pod", "toolbox", "shell", "alpine:3.20", "/spec/containers/0/image"),
        ("ReplicationController", "legacy", "old", "redis:6", "/spec/template/spec/containers/0/image"),
        ("StatefulSet", "db", "pg", "postgres:16", "/spec/template/spec/containers/0/image"),
    ]
    assert all(f.namespace == "shop" for f in result.findings)  # kube-system is excluded, silently
    assert not [w for w in result.warnings if w.namespace == "kube-system"]
    by_container = {f.container: f for f in result.findings}
    assert by_container["app"].digest == digest_of("nginx:1.27")  # from docker-pullable:// imageIDs
    assert by_container["init"].digest == digest_of("busybox")  # init container status
    assert by_container["dbg"].digest == digest_of("busybox-dbg")  # ephemeral container status
    assert by_container["idle"].digest is None  # no pods: still a finding, nothing runs
    assert by_container["report"].digest == digest_of("python")  # CronJob <- Job <- Pod
    as_json = by_container["app"].as_json()
    assert as_json["file"] is None and as_json["kind"] == "Deployment" and as_json["namespace"] == "shop"
    assert as_json["target"] == "crazureblue.azurecr.io/docker.io/library/nginx:1.27"


@pytest.mark.parametrize(("image_id", "digest"), [
    ("docker-pullable://nginx@sha256:" + "a" * 64, "sha256:" + "a" * 64),
    ("docker.io/library/nginx@sha256:" + "b" * 64, "sha256:" + "b" * 64),
    ("127.0.0.1:5000/team/app@sha256:" + "c" * 64, "sha256:" + "c" * 64),
    ("sha256:" + "d" * 64, None),  # a local image ID (config digest), not a manifest digest
    ("docker://sha256:" + "e" * 64, None),
    ("", None),
    (None, None),
    ("nginx@sha256:short", None),
])
def test_running_digest_forms(image_id: str | None, digest: str | None) -> None:
    assert running_digest(image_id) == digest


def test_drift_warning_names_both_digests(tmp_path: Any) -> None:
    app = container("app", "nginx:1.27")
    d = deployment("web", "shop", [app], replicas=3)
    rs = replicaset("web-5f6d", "shop", [app], replicas=3, owner=d, pod_template_hash="5f6d")
    old, new = digest_of("nginx-old"), digest_of("nginx-new")
    pods = pods_for(rs, 3, per_pod_digests=[{"app": new}, {"app": new}, {"app": old}])
    with KubeAPI([d, rs, *pods]) as api:
        result = scan_cluster(client_for(api, tmp_path), POLICY)
    [finding] = result.findings
    assert finding.digest == new  # what most replicas run
    drift = [w for w in result.warnings if "drift" in w.reason]
    assert len(drift) == 1
    assert old in drift[0].reason and new in drift[0].reason
    assert (drift[0].kind, drift[0].namespace, drift[0].name, drift[0].container) == ("Deployment", "shop", "web", "app")


def test_mid_rollout_old_image_is_its_own_finding_without_path(tmp_path: Any) -> None:
    d = deployment("web", "shop", [container("app", "nginx:1.28")], replicas=2)
    new_rs = replicaset("web-new", "shop", [container("app", "nginx:1.28")], replicas=1, owner=d,
                        pod_template_hash="new")
    old_rs = replicaset("web-old", "shop", [container("app", "nginx:1.27")], replicas=1, owner=d,
                        pod_template_hash="old")
    objects = [d, new_rs, old_rs, *pods_for(new_rs, 1, digests={"app": digest_of("1.28")}),
               *pods_for(old_rs, 1, digests={"app": digest_of("1.27")})]
    with KubeAPI(objects) as api:
        result = scan_cluster(client_for(api, tmp_path), POLICY)
    got = {(f.kind, f.name, f.image, f.path, f.digest) for f in result.findings}
    assert got == {("Deployment", "web", "nginx:1.28", "/spec/template/spec/containers/0/image", digest_of("1.28")),
                   ("Deployment", "web", "nginx:1.27", None, digest_of("1.27"))}


def test_excluded_containers_and_namespace_globs(small: Any) -> None:
    _, client = small
    policy = Policy(REGEX, ("kube-*",), ("log", "dbg"))
    result = scan_cluster(client, policy)
    assert {f.container for f in result.findings} == {"app", "init", "report", "pg", "old", "idle", "shell"}
    assert {f.namespace for f in result.findings} == {"shop"}


def test_namespace_option_lists_only_that_namespace(small: Any) -> None:
    api, client = small
    api.clear_log()
    result = scan_cluster(client, POLICY, namespace="shop")
    assert {f.namespace for f in result.findings} == {"shop"} and len(result.findings) == 9
    lists = api.requests_for("GET")
    assert lists and all("/namespaces/shop/" in r.path for r in lists)
    excluded = scan_cluster(client, POLICY, namespace="kube-system")
    assert not excluded.findings and "excluded" in excluded.warnings[0].reason


def test_pagination_follows_continue_and_matches_one_page(generated: Any, tmp_path: Any) -> None:
    _, api = generated
    client = client_for(api, tmp_path)
    api.clear_log()
    paged = scan_cluster(client, POLICY, to_target=to_target, page_size=7)
    pod_lists = api.requests_for("GET", "/api/v1/pods")
    assert len(pod_lists) == -(-300 // 7)  # every page of pods, 7 at a time
    assert all(r.query["limit"] == "7" for r in pod_lists)
    assert "continue" not in pod_lists[0].query and all("continue" in r.query for r in pod_lists[1:])
    whole = scan_cluster(client, POLICY, to_target=to_target, page_size=500)
    assert [f.as_json() for f in paged.findings] == [f.as_json() for f in whole.findings]
    assert paged.pages > whole.pages


def test_expired_continue_restarts_the_list(tmp_path: Any) -> None:
    cluster = make_cluster(60, 3)

    class Compacting(KubeAPI):
        compacted = False

        def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Any:
            answer = super().handle(method, raw_path, headers, body)
            if raw_path.startswith("/api/v1/pods") and "continue=" in raw_path and not self.compacted:
                self.compacted = True
                self.compact()  # the next page's token is now too old: 410 Expired
            return answer

    with Compacting(cluster.objects) as api:
        client = client_for(api, tmp_path)
        result = scan_cluster(client, POLICY, page_size=10)
        assert any(r.status == 410 for r in api.requests)
    with KubeAPI(make_cluster(60, 3).objects) as plain:
        expected = scan_cluster(client_for(plain, tmp_path), POLICY, page_size=10)
    assert keys(result.findings) == keys(expected.findings)
    assert [f.digest for f in result.findings] == [f.digest for f in expected.findings]
    assert any("410" in w.reason for w in result.warnings)


def test_forbidden_kind_is_an_error_and_the_scan_goes_on(small: Any, tmp_path: Any) -> None:
    class NoCronJobs(KubeAPI):
        def _list(self, resource: Any, namespace: Any, query: Any, accept: str) -> bytes:
            if resource.plural == "cronjobs":
                raise APIError(403, "Forbidden", 'cronjobs.batch is forbidden: User "scanner" cannot list '
                                                 'resource "cronjobs" in API group "batch" at the cluster scope')
            return super()._list(resource, namespace, query, accept)

    with NoCronJobs(small_cluster()) as api:
        result = scan_cluster(client_for(api, tmp_path), POLICY)
    assert len(result.errors) == 1 and "cronjobs" in str(result.errors[0]) and "forbidden" in str(result.errors[0])
    assert result.errors[0].as_json()["file"] == "cluster"
    # the pods of the CronJob's Jobs still count (attributed to the Job's recorded owner)
    assert {"Deployment", "StatefulSet", "Pod"} <= {f.kind for f in result.findings}


def test_invalid_image_has_no_target_and_says_why(tmp_path: Any) -> None:
    d = deployment("bad", "shop", [container("app", "Nginx:Latest")])
    with KubeAPI([d]) as api:
        [finding] = scan_cluster(client_for(api, tmp_path), POLICY, to_target=to_target).findings
    assert finding.target is None
    assert "not a valid image reference" in finding.reason and "lowercase" in finding.reason


def test_owner_of_an_unread_kind_ends_the_chain_with_a_warning(tmp_path: Any) -> None:
    rollout = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
               "metadata": {"name": "checkout", "namespace": "shop", "uid": "0f0f0f0f-0000-4000-8000-000000000001"}}
    app = container("app", "nginx:1.27")
    rs = replicaset("checkout-6c9f", "shop", [app], replicas=1, owner=rollout, pod_template_hash="6c9f")
    objects = [rs, *pods_for(rs, 1, digests={"app": digest_of("x")})]
    with KubeAPI(objects) as api:
        result = scan_cluster(client_for(api, tmp_path), POLICY)
    [finding] = result.findings
    assert (finding.kind, finding.name, finding.digest) == ("ReplicaSet", "checkout-6c9f", digest_of("x"))
    [warning] = [w for w in result.warnings if "Rollout" in w.reason]
    assert "does not read" in warning.reason and warning.name == "checkout-6c9f"


def test_connect_context_token_and_errors(tmp_path: Any) -> None:
    d = deployment("web", "shop", [container("app", "nginx:1.27")])
    with KubeAPI([copy.deepcopy(d)], token="s3cret") as api:
        path = api.write_kubeconfig(tmp_path / "kubeconfig")
        result = scan_cluster(connect(str(path), context="served"), POLICY)
        assert len(result.findings) == 1
        assert all(r.status == 200 for r in api.requests)  # the bearer token went along
        with pytest.raises(ClusterError, match="cannot reach"):
            scan_cluster(connect(str(path), context="unreachable"), POLICY)
        with pytest.raises(ClusterError, match="context 'nope'"):
            connect(str(path), context="nope")
        api.token = "rotated"
        with pytest.raises(ClusterError, match="401"):
            scan_cluster(connect(str(path)), POLICY)
    with pytest.raises(UsageError, match="--kubeconfig .* file not found"):  # a bad option: exit 2
        connect(str(tmp_path / "missing"))


def test_no_kubeconfig_and_not_in_cluster(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    import kubernetes.config as kc

    monkeypatch.setattr(kc, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / ".kube" / "config"))
    with pytest.raises(ClusterError, match="no kubeconfig"):
        connect()


def test_in_cluster_service_account(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes.config as kc
    import kubernetes.config.incluster_config as incluster

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setattr(kc, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "none"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    client = connect()
    assert client.configuration.host == "https://10.0.0.1:443"
    assert client.configuration.api_key["BearerToken"] == "bearer sa-token"
