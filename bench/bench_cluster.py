"""Benchmark: `scan_cluster` against a plain list-everything script with the kubernetes client.

A served Kubernetes API (tests/support/kubeapi.py; no API server installs here) holds a
generated cluster, by default 10,000 pods across 200 namespaces with every workload kind.
It runs in its own process, and each contender runs in a fresh process of its own, so the
peak RSS printed is the contender's alone (ru_maxrss of that process, imports included).

- acr-mirror: `scan_cluster(api, policy, to_target=...)` (paged, raw JSON).
- baseline: the typed client, as a plain script would: `list_pod_for_all_namespaces()`,
  `list_deployment_for_all_namespaces()`, ... for the eight kinds, reading every
  container image from the model objects; and the same script paged (`limit=500`).

The scan's findings are also checked against the generator's ground truth: every refused
(owner, container, image) exactly once, with a digest that runs.

    python bench/bench_cluster.py [--pods 10000] [--namespaces 200] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "manifests-rewriter")]

REGEX = r"^crazureblue\.azurecr\.io/.+$"
EXCLUDED = ("kube-system", "gatekeeper-system", "azure-arc")
GOAL_SECONDS, GOAL_MB = 10.0, 200.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_scan(kubeconfig: str) -> dict[str, object]:
    from manifests_rewriter.naming import target_for
    from manifests_rewriter.policy import Policy
    from mirror.cluster.kube import connect
    from mirror.cluster.scan import scan_cluster

    start = time.perf_counter()
    api = connect(kubeconfig)
    policy = Policy(REGEX, EXCLUDED, (), origin="bench")
    result = scan_cluster(api, policy, to_target=lambda ref: target_for(ref, "crazureblue.azurecr.io"))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_mb(), "findings": len(result.findings), "pages": result.pages,
            "listed": result.listed, "errors": [str(e) for e in result.errors],
            "keys": [[f.kind, f.namespace, f.name, f.container, f.image, f.digest] for f in result.findings]}


def child_baseline(kubeconfig: str, paged: bool = False) -> dict[str, object]:
    from kubernetes import client, config

    start = time.perf_counter()
    api = config.new_client_from_config(config_file=kubeconfig)
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    images: set[tuple[str, str]] = set()
    listed: dict[str, int] = {}
    calls = {
        "Deployment": apps.list_deployment_for_all_namespaces, "StatefulSet": apps.list_stateful_set_for_all_namespaces,
        "DaemonSet": apps.list_daemon_set_for_all_namespaces, "ReplicaSet": apps.list_replica_set_for_all_namespaces,
        "ReplicationController": core.list_replication_controller_for_all_namespaces,
        "Job": batch.list_job_for_all_namespaces, "CronJob": batch.list_cron_job_for_all_namespaces,
        "Pod": core.list_pod_for_all_namespaces,
    }
    def pages(call):  # type: ignore[no-untyped-def]
        if not paged:
            yield call().items
            return
        token = None
        while True:
            answer = call(limit=500, _continue=token) if token else call(limit=500)
            yield answer.items
            token = answer.metadata._continue
            if not token:
                return

    for kind, call in calls.items():
        listed[kind] = 0
        for obj in (item for page in pages(call) for item in page):
            listed[kind] += 1
            if kind == "Pod":
                spec = obj.spec
            elif kind == "CronJob":
                spec = obj.spec.job_template.spec.template.spec
            else:
                spec = obj.spec.template.spec
            for c in [*(spec.containers or []), *(spec.init_containers or [])]:
                images.add((obj.metadata.namespace, c.image))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": peak_mb(), "images": len(images), "listed": listed}


def run_child(mode: str, kubeconfig: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--kubeconfig", kubeconfig],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)


def expected_findings(pods: int, namespaces: int) -> dict[tuple[str, str, str, str, str], frozenset[str]]:
    from manifests_rewriter.policy import Policy
    from tests.support.kubeapi import make_cluster

    policy = Policy(REGEX, EXCLUDED)
    cluster = make_cluster(pods, namespaces)
    return {(t.kind, t.namespace, t.name, t.container, t.image): t.digests for t in cluster.truth
            if policy.refuses(t.image, namespace=t.namespace, container=t.container)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (the best is printed)")
    parser.add_argument("--child", choices=["scan", "baseline", "baseline-paged"], help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (child_scan(args.kubeconfig) if args.child == "scan"
                  else child_baseline(args.kubeconfig, paged=args.child == "baseline-paged"))
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        kubeconfig = os.path.join(tmp, "kubeconfig")
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.support.kubeapi", "--pods", str(args.pods), "--namespaces",
             str(args.namespaces), "--kubeconfig", kubeconfig],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            info = json.loads(server.stdout.readline())
            print(f"served cluster: {args.pods} pods, {args.namespaces} namespaces, all workload kinds at "
                  f"{info['url']} (ready in {time.perf_counter() - started:.1f} s)")
            scans = [run_child("scan", kubeconfig) for _ in range(args.repeat)]
            baselines = [run_child("baseline", kubeconfig) for _ in range(args.repeat)]
            paged_baselines = [run_child("baseline-paged", kubeconfig) for _ in range(args.repeat)]
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=30)

    scan = min(scans, key=lambda r: r["seconds"])  # type: ignore[arg-type, return-value]
    base = min(baselines, key=lambda r: r["seconds"])  # type: ignore[arg-type, return-value]
    base_paged = min(paged_baselines, key=lambda r: r["seconds"])  # type: ignore[arg-type, return-value]
    expected = expected_findings(args.pods, args.namespaces)
    got: dict[tuple[str, ...], str | None] = {}
    duplicates = 0
    for kind, ns, name, container, image, digest in scan["keys"]:  # type: ignore[union-attr]
        key = (kind, ns, name, container, image)
        duplicates += key in got
        got[key] = digest
    missing = set(expected) - set(got)
    extra = set(got) - set(expected)
    wrong_digest = sum(1 for k, d in got.items() if k in expected and (d or None) not in (expected[k] or {None}))
    print(f"{'':14}{'seconds':>9}{'peak RSS MB':>13}  notes")
    print(f"{'acr-mirror':14}{scan['seconds']:>9.2f}{scan['peak_mb']:>13.1f}  {scan['findings']} findings, "
          f"{scan['pages']} list requests, goal < {GOAL_SECONDS:.0f} s and < {GOAL_MB:.0f} MB")
    print(f"{'kubernetes':14}{base['seconds']:>9.2f}{base['peak_mb']:>13.1f}  plain list_*_for_all_namespaces(), "
          f"typed models, {base['images']} (namespace, image) pairs")
    print(f"{'kubernetes':14}{base_paged['seconds']:>9.2f}{base_paged['peak_mb']:>13.1f}  the same, paged "
          f"(limit=500, continue)")
    print(f"listed: {scan['listed']}")
    print(f"check against the generator's truth: {len(expected)} expected, {len(got)} found, {len(missing)} missing, "
          f"{len(extra)} extra, {duplicates} duplicates, {wrong_digest} with a digest that does not run")
    ok = (not missing and not extra and not duplicates and not wrong_digest and not scan["errors"]
          and scan["seconds"] < GOAL_SECONDS and scan["peak_mb"] < GOAL_MB)  # type: ignore[operator]
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
