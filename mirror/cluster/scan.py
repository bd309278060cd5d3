"""Scan a live cluster: every container image the policy would refuse, once per top owner.

Lists Deployments, StatefulSets, DaemonSets, CronJobs, ReplicationControllers, ReplicaSets,
Jobs and Pods page by page (`limit` / `continue`), parsing each page's JSON ourselves
(`_preload_content=False`) and keeping only owner links, container names, images and
running digests: memory stays bounded by one page plus the findings, whatever the
cluster's size, and nothing is deserialized into the client's model classes.

Attribution. A pod's finding goes to its top owner: Pod -> ReplicaSet -> Deployment,
Pod -> Job -> CronJob, Pod -> StatefulSet / DaemonSet / ReplicationController; a bare pod
is its own owner. One (owner, container, image) is one finding however many replicas run
it. A workload with no pods counts too (its template creates pods later); templates of
objects that a listed owner controls (a Deployment's ReplicaSets, a CronJob's Jobs) are
its owner's business and count only through their pods. An owner of a kind acr-mirror
does not read (an Argo Rollout, an operator's custom resource, a Node for static pods)
ends the chain at the last object read, with a warning that the image must change there.

Digests. `status.containerStatuses[].imageID` (and the init and ephemeral statuses) gives
the digest that runs: `docker-pullable://repo@sha256:...` or `repo@sha256:...`. A bare
`sha256:...` (or `docker://sha256:...`) is the local image ID, not a manifest digest, and
is ignored. When the replicas of one owner run different digests of the same image the
tag has moved: the finding carries the digest most replicas run and a warning names all.

Exclusions follow Gatekeeper and the policy's parameters (manifests_rewriter.policy): a
namespace the policy never checks yields no finding (nor a warning); each container is judged
with the labels of its pod (a running pod's own; a workload's pod template's when it has no pod
yet), so labelSelector and namespaceSelector decide as admission would. A finding says which
assignment and parameter decided it, and whether it is refused or only reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from manifests_rewriter.files import FileError
from manifests_rewriter.model import Finding
from manifests_rewriter.policy import Policy, Verdict
from manifests_rewriter.reference import ImageRef, ReferenceError, parse
from manifests_rewriter.scan import decided_by

from .kube import ApiError, api_instance, paged, status_message

ToTarget = Callable[[ImageRef], ImageRef]
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
STATUS_LISTS = {"containers": "containerStatuses", "initContainers": "initContainerStatuses",
                "ephemeralContainers": "ephemeralContainerStatuses"}
_DIGEST = re.compile(r"(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})")


@dataclass(frozen=True)
class Kind:
    """One workload kind: how to list, read and patch it, and where its pod spec is."""

    kind: str
    api: str  # the kubernetes client API class
    group_version: str
    plural: str
    snake: str  # deployment -> list_deployment_for_all_namespaces, read_namespaced_deployment
    pod_spec: tuple[str, ...]  # path to the pod spec inside the object

    def method(self, api_client: Any, verb: str, namespace: str | None = None) -> Callable[..., Any]:
        cls = api_instance(api_client, self.api)
        if verb == "list":
            name = f"list_namespaced_{self.snake}" if namespace else f"list_{self.snake}_for_all_namespaces"
        else:
            name = f"{verb}_namespaced_{self.snake}"
        return getattr(cls, name)

    def path_of(self, list_name: str, index: int) -> str:
        return "/" + "/".join((*self.pod_spec, list_name, str(index), "image"))


_TEMPLATE = ("spec", "template", "spec")
KINDS: tuple[Kind, ...] = (  # owners before what they own: the index is complete when pods come
    Kind("Deployment", "AppsV1Api", "apps/v1", "deployments", "deployment", _TEMPLATE),
    Kind("StatefulSet", "AppsV1Api", "apps/v1", "statefulsets", "stateful_set", _TEMPLATE),
    Kind("DaemonSet", "AppsV1Api", "apps/v1", "daemonsets", "daemon_set", _TEMPLATE),
    Kind("CronJob", "BatchV1Api", "batch/v1", "cronjobs", "cron_job", ("spec", "jobTemplate", "spec", "template", "spec")),
    Kind("ReplicationController", "CoreV1Api", "v1", "replicationcontrollers", "replication_controller", _TEMPLATE),
    Kind("ReplicaSet", "AppsV1Api", "apps/v1", "replicasets", "replica_set", _TEMPLATE),
    Kind("Job", "BatchV1Api", "batch/v1", "jobs", "job", _TEMPLATE),
    Kind("Pod", "CoreV1Api", "v1", "pods", "pod", ("spec",)),
)
KIND_BY_NAME = {k.kind: k for k in KINDS}
_GROUP_OF = {k.kind: k.group_version.rpartition("/")[0] for k in KINDS}


def controller_of(meta: dict[str, Any]) -> tuple[str, str, str] | None:
    """(apiVersion, kind, name) of the controlling owner reference, if any."""
    for ref in meta.get("ownerReferences") or ():
        if ref.get("controller"):
            return ref.get("apiVersion", ""), ref.get("kind", ""), ref.get("name", "")
    return None


def dig(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else None
    return obj


def running_digest(image_id: str | None) -> str | None:
    """The manifest digest in a container status' imageID, or None (not pulled, or a local image ID)."""
    if not image_id or "@" not in image_id:
        return None
    match = _DIGEST.fullmatch(image_id.rsplit("@", 1)[1])
    return match.group(1) if match else None


# --------------------------------------------------------------------------------------
# The scan
# --------------------------------------------------------------------------------------


@dataclass
class ClusterScan:
    """What a cluster scan found. `warnings` are Findings with the warning in `reason`
    (like the manifest scanner's); `errors` are FileErrors whose `file` is "cluster"."""

    findings: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    errors: list[FileError] = field(default_factory=list)
    listed: dict[str, int] = field(default_factory=dict)  # objects listed per kind
    pages: int = 0  # list requests made

    def as_json(self) -> dict[str, Any]:
        return {"findings": [f.as_json() for f in self.findings], "warnings": [w.as_json() for w in self.warnings],
                "errors": [e.as_json() for e in self.errors], "listed": dict(self.listed), "pages": self.pages}


class _Entry:
    """One (top owner, container, image): where it is written and which digests run."""

    __slots__ = ("path", "digests", "list_name", "verdict")

    def __init__(self, list_name: str, verdict: Verdict) -> None:
        self.list_name = list_name
        self.verdict = verdict  # the first pod's (replicas share their template's labels)
        self.path: str | None = None
        self.digests: dict[str, int] = {}


class _Scanner:
    def __init__(self, api: Any, policy: Policy, namespace: str | None, to_target: ToTarget | None,
                 page_size: int) -> None:
        self.api, self.policy, self.namespace = api, policy, namespace
        self.to_target, self.page_size = to_target, page_size
        self.result = ClusterScan()
        # (namespace, kind, name) -> its controller reference (apiVersion, kind, name) or None
        self.index: dict[tuple[str, str, str], tuple[str, str, str] | None] = {}
        self.entries: dict[tuple[str, str, str, str, str], _Entry] = {}
        self.verdicts: dict[tuple[Any, ...], Verdict] = {}  # (image, namespace, container, labels, ...) -> verdict
        self.excluded_ns: dict[str, bool] = {}
        self.top_cache: dict[tuple[str, str, str], tuple[str, str]] = {}
        self.seen_pods: set[str] = set()
        self.unread_owner_warned: set[tuple[str, str, str]] = set()
        self.notes: list[str] = []

    # ---- helpers --------------------------------------------------------------------
    def ns_excluded(self, namespace: str) -> bool:
        known = self.excluded_ns.get(namespace)
        if known is None:
            known = self.excluded_ns[namespace] = self.policy.namespace_excluded(namespace)
        return known

    def decide(self, image: str, namespace: str, container: str, labels: dict[str, str] | None, kind: str,
               name: str) -> Verdict:
        # names only matter to a constraint's match.name: left out of the key otherwise
        named = any(p.name_pattern for p in self.policy.parts)
        key = (image, namespace, container, frozenset((labels or {}).items()), kind, name if named else None)
        known = self.verdicts.get(key)
        if known is None:
            known = self.verdicts[key] = self.policy.decide(image, namespace=namespace, container=container,
                                                            labels=labels or {}, kind=kind, name=name)
        return known

    def warn(self, reason: str, *, kind: str | None = None, namespace: str | None = None,
             name: str | None = None, container: str | None = None, image: str = "") -> None:
        self.result.warnings.append(Finding(image=image, reason=reason, source="cluster", kind=kind,
                                            namespace=namespace, name=name, container=container))

    def error(self, message: str) -> None:
        self.result.errors.append(FileError("cluster", message))

    def listing(self, kind: Kind) -> Iterator[list[dict[str, Any]]]:
        where = f"in namespace {self.namespace}" if self.namespace else "across all namespaces"
        what = f"listing {kind.plural} ({kind.group_version}) {where}"
        kwargs: dict[str, Any] = {"namespace": self.namespace} if self.namespace else {}
        try:
            for page in paged(self.api, what, kind.method(self.api, "list", self.namespace),
                              page_size=self.page_size, notes=self.notes, **kwargs):
                self.result.pages += 1
                yield page
        except ApiError as exc:
            if exc.status == 404:
                self.notes.append(f"{what}: not served by this cluster ({status_message(exc)})")
            else:
                self.error(f"{what}: {status_message(exc)}")

    def top_owner(self, namespace: str, kind: str, name: str,
                  ref: tuple[str, str, str] | None) -> tuple[str, str]:
        """Follow controller references through the kinds we list, as far as they go."""
        start = (namespace, kind, name)
        cached = self.top_cache.get(start)
        if cached is not None:
            return cached
        depth = 0
        while ref is not None and depth < 8:
            depth += 1
            api_version, owner_kind, owner_name = ref
            if owner_kind not in KIND_BY_NAME or api_version.rpartition("/")[0] != _GROUP_OF[owner_kind]:
                warned = (namespace, kind, name)
                if warned not in self.unread_owner_warned:
                    self.unread_owner_warned.add(warned)
                    self.warn(f"controlled by {owner_kind} {namespace}/{owner_name} ({api_version}), which "
                              f"acr-mirror does not read: change the image there, a patch here would be reverted",
                              kind=kind, namespace=namespace, name=name)
                break
            key = (namespace, owner_kind, owner_name)
            kind, name = owner_kind, owner_name
            if key not in self.index:
                break  # the owner is gone (or being deleted): attribute to it anyway
            ref = self.index[key]
        result = (kind, name)
        self.top_cache[start] = result
        return result

    def record(self, owner: tuple[str, str, str], list_name: str, container: str, image: str,
               path: str | None, digest: str | None, pod: tuple[dict[str, str] | None, str, str]) -> None:
        """`pod`: the labels, kind and name of the object judged (a pod, or a workload's template)."""
        if not isinstance(image, str):
            return
        verdict = self.decide(image, owner[1], container, *pod)
        if not verdict.finding:
            return
        key = (*owner, container, image)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = _Entry(list_name, verdict)
        if path is not None and entry.path is None:
            entry.path = path
        if digest:
            entry.digests[digest] = entry.digests.get(digest, 0) + 1

    # ---- the passes -------------------------------------------------------------------
    def objects(self, kind: Kind) -> Iterator[tuple[dict[str, Any], dict[str, Any], str, str]]:
        """Each listed object of `kind` outside the excluded namespaces, with its metadata,
        namespace and name; the count of all listed lands in `result.listed` at the end."""
        count = 0
        for page in self.listing(kind):
            for obj in page:
                count += 1
                meta = obj.get("metadata") or {}
                namespace, name = meta.get("namespace", ""), meta.get("name", "")
                if not self.ns_excluded(namespace):
                    yield obj, meta, namespace, name
        self.result.listed[kind.kind] = count

    def scan_owners(self, kind: Kind) -> None:
        for obj, meta, namespace, name in self.objects(kind):
            ref = controller_of(meta)
            self.index[(namespace, kind.kind, name)] = ref
            if ref is not None and ref[1] in KIND_BY_NAME and (namespace, ref[1], ref[2]) in self.index:
                continue  # a listed owner's template speaks for it
            top = self.top_owner(namespace, kind.kind, name, ref)
            spec = dig(obj, kind.pod_spec) or {}
            template_meta = dig(obj, (*kind.pod_spec[:-1], "metadata")) or {}
            pod = (template_meta.get("labels") or {}, kind.kind, name)
            for list_name in ("containers", "initContainers"):
                for index, container in enumerate(spec.get(list_name) or ()):
                    path = kind.path_of(list_name, index) if top == (kind.kind, name) else None
                    self.record((top[0], namespace, top[1]), list_name, container.get("name", ""),
                                container.get("image", ""), path, None, pod)

    def scan_pods(self) -> None:
        kind = KIND_BY_NAME["Pod"]
        for pod, meta, namespace, name in self.objects(kind):
            uid = meta.get("uid") or f"{namespace}/{name}"
            if uid in self.seen_pods:
                continue  # listed twice after a 410 restart
            self.seen_pods.add(uid)
            ref = controller_of(meta)
            top = self.top_owner(namespace, "Pod", name, ref) if ref else ("Pod", name)
            own = top == ("Pod", name)
            spec, status = pod.get("spec") or {}, pod.get("status") or {}
            judged = (meta.get("labels") or {}, "Pod", name)
            for list_name in CONTAINER_LISTS:
                containers = spec.get(list_name)
                if not containers:
                    continue
                digests = {s.get("name"): running_digest(s.get("imageID"))
                           for s in status.get(STATUS_LISTS[list_name]) or ()}
                for index, container in enumerate(containers):
                    cname = container.get("name", "")
                    path = kind.path_of(list_name, index) if own else None
                    self.record((top[0], namespace, top[1]), list_name, cname, container.get("image", ""),
                                path, digests.get(cname), judged)

    def findings(self) -> None:
        by_image: dict[str, dict[str, list[str]]] = {}
        for (kind, namespace, name, container, image), entry in self.entries.items():
            digest = None
            where = f"{kind} {namespace}/{name}"
            if entry.digests:
                ranked = sorted(entry.digests.items(), key=lambda item: (-item[1], item[0]))
                digest = ranked[0][0]
                if len(ranked) > 1:
                    running = ", ".join(f"{d} ({n} pod{'s' if n > 1 else ''})" for d, n in ranked)
                    self.warn(f"digest drift: replicas run different digests of {image}: {running}; the tag "
                              f"has moved since some pods started. The finding carries {digest}",
                              kind=kind, namespace=namespace, name=name, container=container, image=image)
                by_image.setdefault(image, {}).setdefault(digest, []).append(where)
            base_reason = entry.verdict.reason()
            reason, target = base_reason, None
            try:
                ref = parse(image)
                if self.to_target is not None:
                    try:
                        target = str(self.to_target(ref))
                    except ValueError as exc:
                        reason = f"{base_reason}; no target name: {exc}"
            except ReferenceError as exc:
                reason = f"{base_reason}; not a valid image reference, cannot be mirrored: {exc}"
            self.result.findings.append(Finding(
                image=image, reason=reason, source="cluster", file=None, path=entry.path, kind=kind,
                namespace=namespace, name=name, container=container, target=target, digest=digest,
                **decided_by(entry.verdict)))
        for image, digests in sorted(by_image.items()):
            if len(digests) > 1:
                parts = "; ".join(f"{d} in {', '.join(sorted(w)[:3])}{' ...' if len(w) > 3 else ''}"
                                  for d, w in sorted(digests.items()))
                self.warn(f"digest drift across workloads: {image} runs as {len(digests)} digests: {parts}",
                          image=image)
        self.result.findings.sort(key=lambda f: (f.namespace or "", f.kind or "", f.name or "", f.container or "",
                                                 f.image))

    def run(self) -> ClusterScan:
        if self.namespace and self.ns_excluded(self.namespace):
            self.warn(f"namespace {self.namespace} is excluded by the policy ({self.policy.origin}): nothing to "
                      f"report there", namespace=self.namespace)
            return self.result
        for kind in KINDS[:-1]:
            self.scan_owners(kind)
        self.scan_pods()
        self.findings()
        for note in self.notes:
            self.warn(note)
        return self.result


def scan_cluster(api: Any, policy: Policy, *, namespace: str | None = None, to_target: ToTarget | None = None,
                 page_size: int = 500) -> ClusterScan:
    """Every container image the policy would refuse in the running workloads (all namespaces,
    or `namespace`), one Finding per top owner, container and image, with the running digest.

    `to_target` names the target (None leaves `target` empty). A kind that cannot be listed
    (403) is an error in the result and the scan goes on; an unreachable or unauthorized
    cluster raises ClusterError."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    return _Scanner(api, policy, namespace, to_target, page_size).run()
