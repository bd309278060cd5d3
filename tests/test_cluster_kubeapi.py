"""The served Kubernetes API is faithful: the real kubectl and the typed kubernetes client accept it.

No API server can be installed here; tests/support/kubeapi.py serves the REST shape, and
these tests hold it to what kubectl (client-go) and the kubernetes Python client (its
pydantic models validate every field) expect of a real server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from tests.support.kubeapi import (
    KubeAPI,
    denial_message,
    event,
    json_patch,
    make_cluster,
    merge_patch,
    strategic_merge_patch,
)

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None,
                                   reason="kubectl is not installed (Debian: apt-get install kubernetes-client)")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cluster = make_cluster(60, 4)
    rs = next(o for o in cluster.objects if o["kind"] == "ReplicaSet" and o["metadata"]["namespace"] == "team-002")
    cluster.objects.append(event(rs, "FailedCreate", "Error creating: " + denial_message("c", "nginx:1.27", "app")))
    with KubeAPI(cluster.objects) as api:
        path = api.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
        yield cluster, api, path


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    cache = str(Path(kubeconfig).parent / "kubectl-cache")  # not the user's ~/.kube/cache
    return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), f"--cache-dir={cache}", "--request-timeout=20s",
                           *args],
                          capture_output=True, text=True, timeout=60, check=False)


@needs_kubectl
def test_kubectl_lists_all_pods_across_pages(tmp_path: Path) -> None:
    # few pods: kubectl throttles itself beyond a burst of 10 requests (5 per second)
    cluster = make_cluster(17, 3)
    with KubeAPI(cluster.objects) as api:
        out = kubectl(api.write_kubeconfig(tmp_path / "kubeconfig"), "get", "pods", "-A", "--chunk-size=2", "-o", "json")
        assert out.returncode == 0, out.stderr
        pods = json.loads(out.stdout)["items"]
        assert len(pods) == cluster.pods == 17
        assert len({(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods}) == 17
        pages = api.requests_for("GET", "/api/v1/pods")
        assert len(pages) == 9 and all(r.query["limit"] == "2" for r in pages)
        assert "continue" not in pages[0].query and all("continue" in r.query for r in pages[1:])
        assert len({r.query["continue"] for r in pages[1:]}) == 8


@needs_kubectl
def test_kubectl_short_names_namespaced_lists_and_tables(served: Any) -> None:
    cluster, api, path = served
    out = kubectl(path, "get", "deploy", "-n", "team-002")
    assert out.returncode == 0, out.stderr
    expected = sorted(o["metadata"]["name"] for o in cluster.objects
                      if o["kind"] == "Deployment" and o["metadata"]["namespace"] == "team-002")
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE"]
    assert sorted(line.split()[0] for line in lines[1:]) == expected
    for short, kind in (("sts", "StatefulSet"), ("ds", "DaemonSet"), ("rs", "ReplicaSet"), ("cj", "CronJob"),
                        ("rc", "ReplicationController"), ("jobs", "Job"), ("po", "Pod")):
        out = kubectl(path, "get", short, "-n", "team-003", "-o", "name")
        assert out.returncode == 0, out.stderr
        names = sorted(line.split("/", 1)[1] for line in out.stdout.split())
        assert names == sorted(o["metadata"]["name"] for o in cluster.objects
                               if o["kind"] == kind and o["metadata"]["namespace"] == "team-003"), short
    out = kubectl(path, "get", "events", "-A", "--field-selector", "reason=FailedCreate", "-o", "json")
    assert out.returncode == 0 and len(json.loads(out.stdout)["items"]) == 1


@needs_kubectl
def test_kubectl_reads_the_gatekeeper_constraint(served: Any) -> None:
    _, _, path = served
    out = kubectl(path, "get", "k8sazurev2containerallowedimages")
    assert out.returncode == 0, out.stderr
    assert "azurepolicy-k8sazurev2containerallowedimag-8b5c1d0f6a2e4b3c9d7e" in out.stdout
    assert "ENFORCEMENT-ACTION" in out.stdout and "dryrun" in out.stdout
    out = kubectl(path, "get", "constraints", "-o", "jsonpath={.items[0].spec.parameters.imageRegex}")
    assert out.returncode == 0 and out.stdout == r"^crazureblue\.azurecr\.io/.+$"


@needs_kubectl
def test_kubectl_patch_server_dry_run_leaves_the_object_unchanged(served: Any) -> None:
    _, api, path = served
    before = api.get("Deployment", "team-002", "web-1")
    patch = json.dumps({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "crazureblue.azurecr.io/docker.io/library/nginx:1.27"}]}}}})
    api.clear_log()
    out = kubectl(path, "patch", "deploy", "web-1", "-n", "team-002", "--dry-run=server", "-p", patch, "-o", "json")
    assert out.returncode == 0, out.stderr
    answered = json.loads(out.stdout)
    containers = answered["spec"]["template"]["spec"]["containers"]
    assert containers[0]["image"] == "crazureblue.azurecr.io/docker.io/library/nginx:1.27"
    assert containers[1] == before["spec"]["template"]["spec"]["containers"][1]  # merged by name, not replaced
    [sent] = api.requests_for("PATCH")
    assert sent.query["dryRun"] == "All" and sent.content_type == "application/strategic-merge-patch+json"
    assert api.get("Deployment", "team-002", "web-1") == before
    # a JSON patch whose test fails is refused, as the API server does
    bad = json.dumps([{"op": "test", "path": "/spec/template/spec/containers/0/image", "value": "nope"}])
    out = kubectl(path, "patch", "deploy", "web-1", "-n", "team-002", "--type=json", "-p", bad)
    assert out.returncode != 0 and "test failed" in out.stderr
    # a Job's pod template is immutable
    job_name = next(o["metadata"]["name"] for o in api.objects("Job") if o["metadata"]["namespace"] == "team-002")
    out = kubectl(path, "patch", "job", job_name, "-n", "team-002", "--dry-run=server", "--type=merge", "-p",
                  json.dumps({"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}}))
    assert out.returncode != 0 and "field is immutable" in out.stderr


def test_typed_client_validates_every_served_list(served: Any) -> None:
    cluster, _, path = served
    api = k8s_config.new_client_from_config(config_file=str(path))
    core, apps, batch = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.BatchV1Api(api)
    counts = {
        "Pod": core.list_pod_for_all_namespaces, "Event": core.list_event_for_all_namespaces,
        "Namespace": core.list_namespace, "ReplicationController": core.list_replication_controller_for_all_namespaces,
        "Deployment": apps.list_deployment_for_all_namespaces, "StatefulSet": apps.list_stateful_set_for_all_namespaces,
        "DaemonSet": apps.list_daemon_set_for_all_namespaces, "ReplicaSet": apps.list_replica_set_for_all_namespaces,
        "Job": batch.list_job_for_all_namespaces, "CronJob": batch.list_cron_job_for_all_namespaces,
    }
    for kind, call in counts.items():
        answer = call(limit=1000)
        assert len(answer.items) == sum(1 for o in cluster.objects if o["kind"] == kind), kind
        assert answer.metadata.resource_version
    pod = core.list_namespaced_pod("team-002", limit=1).items[0]
    assert pod.status.container_statuses[0].image_id
    assert apps.read_namespaced_deployment("web-1", "team-002").spec.selector.match_labels == {"app": "web-1"}


def test_patch_semantics() -> None:
    doc = {"spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "E", "value": "1"}]},
                                   {"name": "b", "image": "y"}], "dnsPolicy": "ClusterFirst"}}
    merged = strategic_merge_patch(doc, {"spec": {"containers": [{"name": "b", "image": "z"}]}})
    assert merged["spec"]["containers"] == [doc["spec"]["containers"][0], {"name": "b", "image": "z"}]
    replaced = merge_patch(doc, {"spec": {"containers": [{"name": "b", "image": "z"}], "dnsPolicy": None}})
    assert replaced == {"spec": {"containers": [{"name": "b", "image": "z"}]}}
    deleted = strategic_merge_patch(doc, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})
    assert [c["name"] for c in deleted["spec"]["containers"]] == ["b"]
    ordered = strategic_merge_patch(doc, {"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}})
    assert [c["name"] for c in ordered["spec"]["containers"]] == ["b", "a"]
    patched = json_patch(doc, [{"op": "test", "path": "/spec/containers/1/name", "value": "b"},
                               {"op": "replace", "path": "/spec/containers/1/image", "value": "z"},
                               {"op": "add", "path": "/spec/containers/-", "value": {"name": "c"}},
                               {"op": "remove", "path": "/spec/dnsPolicy"}])
    assert patched["spec"] == {"containers": [doc["spec"]["containers"][0], {"name": "b", "image": "z"},
                                              {"name": "c"}]}
    assert doc["spec"]["containers"][1]["image"] == "y"  # inputs are never mutated
