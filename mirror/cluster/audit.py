"""Audit after enforcement: what the policy is refusing right now.

Three sources, each an `AuditItem`:

- events: `FailedCreate` events (ReplicaSets, Jobs, DaemonSets, StatefulSets,
  ReplicationControllers, CronJobs) whose message is an admission webhook denial, e.g.
  `Error creating: admission webhook "validation.gatekeeper.sh" denied the request:
  [constraint] Container image nginx:1.27 for container web has not been allowed.`;
  one item per involved object (counts summed), attributed to its top owner;
- deployments stuck: condition `ReplicaFailure` True or `Progressing` False;
- constraint status: `status.violations` of every K8sAzureV2ContainerAllowedImages
  constraint (Gatekeeper's audit; it keeps a limited number per constraint, and an item
  says how many more `totalViolations` counts).

An object the audit cannot list (403) becomes an item too (source "error"): an audit
that could not look must not read as "nothing refused". With a `policy`, namespaces it
excludes are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from manifests_rewriter.policy import Policy

from .kube import ApiError, api_instance, call_json, paged, status_message
from .policy_source import GROUP, KIND, PLURAL, VERSION
from .scan import KIND_BY_NAME, controller_of

_WEBHOOK = re.compile(r'admission webhook "(?P<webhook>[^"]+)" denied the request:?\s*(?P<detail>.*)', re.S)
_CONSTRAINT = re.compile(r"\[([^\]\s]+)\]")
_AZURE_IMAGE = re.compile(r"Container image (?P<image>\S+) for container (?P<container>\S+) has not been allowed")
_REPO_IMAGE = re.compile(r"container <(?P<container>[^>]+)> has an invalid image repo <(?P<image>[^>]+)>")
WORKLOAD_KINDS = ("ReplicaSet", "Job", "DaemonSet", "StatefulSet", "ReplicationController", "CronJob", "Deployment")


@dataclass(frozen=True)
class AuditItem:
    source: str  # "event" | "deployment" | "constraint" | "error"
    kind: str
    namespace: str | None
    name: str
    message: str
    owner: str | None = None  # the top owner, "Deployment ns/name", when it is not the object itself
    webhook: str | None = None
    constraints: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    count: int = 1
    last_seen: str | None = None
    enforcement_action: str | None = None

    @property
    def where(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "owner": self.owner, "message": self.message, "webhook": self.webhook,
                "constraints": list(self.constraints), "images": list(self.images),
                "containers": list(self.containers), "count": self.count, "last_seen": self.last_seen,
                "enforcement_action": self.enforcement_action}

    def __str__(self) -> str:
        owner = f" (of {self.owner})" if self.owner else ""
        images = ", ".join(f"{i} (container {c})" for i, c in zip(self.images, self.containers, strict=False))
        if self.source == "event":
            what = f"pod creation refused {self.count}x by {self.webhook}"
            if self.constraints:
                what += f" [{', '.join(self.constraints)}]"
            return f"{self.where}{owner}: {what}: {images or self.message}"
        if self.source == "constraint":
            action = f" ({self.enforcement_action})" if self.enforcement_action else ""
            return f"{self.where}: violates {', '.join(self.constraints)}{action}: {images or self.message}"
        if self.source == "deployment":
            return f"{self.where}: stuck: {self.message}"
        return f"error: {self.message}"


def parse_denial(message: str) -> tuple[str | None, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(webhook, constraints, images, containers) of an admission denial message."""
    match = _WEBHOOK.search(message or "")
    if not match:
        return None, (), (), ()
    detail = match.group("detail")
    constraints = tuple(dict.fromkeys(_CONSTRAINT.findall(detail)))
    pairs = [(m.group("image"), m.group("container")) for m in _AZURE_IMAGE.finditer(detail)]
    pairs += [(m.group("image"), m.group("container")) for m in _REPO_IMAGE.finditer(detail)]
    pairs = list(dict.fromkeys(pairs))
    return match.group("webhook"), constraints, tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def _images_of(message: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    pairs = [(m.group("image"), m.group("container")) for m in _AZURE_IMAGE.finditer(message or "")]
    pairs = list(dict.fromkeys(pairs))
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


class _Auditor:
    def __init__(self, api: Any, policy: Policy | None) -> None:
        self.api, self.policy = api, policy
        self.items: list[AuditItem] = []
        self.owner_cache: dict[tuple[str, str, str], str | None] = {}

    def excluded(self, namespace: str | None) -> bool:
        return bool(self.policy and namespace and self.policy.namespace_excluded(namespace))

    def failed(self, what: str, exc: ApiError) -> None:
        self.items.append(AuditItem("error", "-", None, "-", f"{what}: {status_message(exc)}"))

    def top_owner(self, kind: str, namespace: str, name: str) -> str | None:
        """The top owner of a workload object, read through its controller references."""
        key = (kind, namespace, name)
        if key in self.owner_cache:
            return self.owner_cache[key]
        top: tuple[str, str] | None = None
        current = (kind, name)
        for _ in range(4):
            spec = KIND_BY_NAME.get(current[0])
            if spec is None:
                break
            try:
                obj = call_json(self.api, f"reading {current[0]} {namespace}/{current[1]}", spec.method(self.api, "read"),
                                name=current[1], namespace=namespace)
            except ApiError:
                break
            ref = controller_of(obj.get("metadata") or {})
            if ref is None:
                break
            current = top = (ref[1], ref[2])
        result = f"{top[0]} {namespace}/{top[1]}" if top else None
        self.owner_cache[key] = result
        return result

    def events(self) -> None:
        what = "listing FailedCreate events across all namespaces"
        call = api_instance(self.api, "CoreV1Api").list_event_for_all_namespaces
        grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
        try:
            for page in paged(self.api, what, call, field_selector="reason=FailedCreate"):
                for ev in page:
                    if ev.get("reason") != "FailedCreate":
                        continue
                    involved = ev.get("involvedObject") or {}
                    kind, ns, name = involved.get("kind", ""), involved.get("namespace", ""), involved.get("name", "")
                    if kind not in WORKLOAD_KINDS or self.excluded(ns):
                        continue
                    webhook, constraints, images, containers = parse_denial(ev.get("message", ""))
                    if webhook is None:
                        continue
                    entry = grouped.setdefault((kind, ns, name), {
                        "count": 0, "last": "", "message": "", "webhook": webhook, "constraints": {},
                        "pairs": {}})
                    entry["count"] += int(ev.get("count") or 1)
                    last = ev.get("lastTimestamp") or ev.get("eventTime") or \
                        (ev.get("metadata") or {}).get("creationTimestamp") or ""
                    if last >= entry["last"]:
                        entry["last"], entry["message"], entry["webhook"] = last, ev.get("message", ""), webhook
                    entry["constraints"].update(dict.fromkeys(constraints))
                    entry["pairs"].update(dict.fromkeys(zip(images, containers, strict=True)))
        except ApiError as exc:
            self.failed(what, exc)
            return
        for (kind, ns, name), entry in grouped.items():
            pairs = list(entry["pairs"])
            self.items.append(AuditItem(
                "event", kind, ns, name, entry["message"], owner=self.top_owner(kind, ns, name),
                webhook=entry["webhook"], constraints=tuple(entry["constraints"]),
                images=tuple(p[0] for p in pairs), containers=tuple(p[1] for p in pairs), count=entry["count"],
                last_seen=entry["last"] or None))

    def deployments(self) -> None:
        what = "listing deployments across all namespaces"
        call = KIND_BY_NAME["Deployment"].method(self.api, "list")
        try:
            for page in paged(self.api, what, call):
                for obj in page:
                    meta = obj.get("metadata") or {}
                    ns, name = meta.get("namespace", ""), meta.get("name", "")
                    if self.excluded(ns):
                        continue
                    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or ()}
                    stuck = []
                    failure = conditions.get("ReplicaFailure")
                    if failure and failure.get("status") == "True":
                        stuck.append(failure)
                    progressing = conditions.get("Progressing")
                    if progressing and progressing.get("status") == "False":
                        stuck.append(progressing)
                    if not stuck:
                        continue
                    message = "; ".join(f"{c.get('type')} {c.get('status')} ({c.get('reason', '')}): "
                                        f"{c.get('message', '')}" for c in stuck)
                    webhook, constraints, images, containers = parse_denial(message)
                    self.items.append(AuditItem(
                        "deployment", "Deployment", ns, name, message, webhook=webhook, constraints=constraints,
                        images=images, containers=containers,
                        last_seen=max((c.get("lastUpdateTime") or c.get("lastTransitionTime") or "") for c in stuck)
                        or None))
        except ApiError as exc:
            self.failed(what, exc)

    def constraints(self) -> None:
        what = f"listing {PLURAL}.{GROUP}/{VERSION}"
        call = api_instance(self.api, "CustomObjectsApi").list_cluster_custom_object
        try:
            pages = list(paged(self.api, what, call, group=GROUP, version=VERSION, plural=PLURAL))
        except ApiError as exc:
            if exc.status != 404:  # 404: the constraint kind is not installed; nothing to audit there
                self.failed(what, exc)
            return
        for obj in (item for page in pages for item in page):
            name = (obj.get("metadata") or {}).get("name", "")
            action = (obj.get("spec") or {}).get("enforcementAction") or "deny"
            status = obj.get("status") or {}
            violations = status.get("violations") or []
            listed = 0
            for v in violations:
                if self.excluded(v.get("namespace")):
                    continue
                listed += 1
                images, containers = _images_of(v.get("message", ""))
                self.items.append(AuditItem(
                    "constraint", v.get("kind", ""), v.get("namespace"), v.get("name", ""), v.get("message", ""),
                    constraints=(name,), images=images, containers=containers,
                    last_seen=status.get("auditTimestamp"), enforcement_action=v.get("enforcementAction") or action))
            total = status.get("totalViolations")
            if isinstance(total, int) and total > len(violations):
                self.items.append(AuditItem(
                    "constraint", KIND, None, name,
                    f"{total - len(violations)} more violation{'s' * (total - len(violations) != 1)} than the "
                    f"{len(violations)} listed in its status "
                    f"(Gatekeeper's audit keeps a limited number: --constraint-violations-limit)",
                    constraints=(name,), count=total - len(violations), last_seen=status.get("auditTimestamp"),
                    enforcement_action=action))

    def run(self) -> list[AuditItem]:
        self.events()
        self.deployments()
        self.constraints()
        order = {"error": 0, "event": 1, "deployment": 2, "constraint": 3}
        return sorted(self.items, key=lambda i: (order.get(i.source, 9), i.namespace or "", i.kind, i.name))


def audit_cluster(api: Any, policy: Policy | None = None) -> list[AuditItem]:
    """Admission denials (FailedCreate events), stuck Deployments and constraint violations."""
    return _Auditor(api, policy).run()
