"""A served Kubernetes REST API for the tests and the benchmark.

No Kubernetes API server can be installed on these machines (DESIGN.md, LAB.md), so this
module *serves the Kubernetes REST API* from objects shaped as the API reference defines
them: it is a served REST shape, not an API server (no admission, no controllers, no
watch, no protobuf, no server-side apply). What it does serve, it serves as the API server
does, and the tests prove that with the real `kubectl` and the real `kubernetes` client:

- discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/{group}`, `/apis/{group}/{version}`
  (APIResourceList with `shortNames`, `categories`, `singularName`, `verbs`), so `kubectl`
  resolves `deploy`, `sts`, `ds`, `rs`, `cj`, `rc`, `po`, `ev` and the Gatekeeper constraint kind;
- list across namespaces (`/apis/apps/v1/deployments`) and per namespace, with `limit` and
  `continue` (opaque tokens pinned to the list's `resourceVersion`; `compact()` makes older
  tokens answer `410 Expired` as a real server does after etcd compaction), list
  `metadata.resourceVersion`, `remainingItemCount`, `fieldSelector` (equality on any field
  path) and `labelSelector` (`k=v`, `k!=v`, `k`, `!k`), and `Table` responses
  (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) for kubectl's printing;
- get, and PATCH with `application/strategic-merge-patch+json` (lists merged by their patch
  merge key: containers by `name`, `$patch`, `$setElementOrder`), `application/merge-patch+json`
  (RFC 7386) and `application/json-patch+json` (RFC 6902, `test` included); custom resources
  refuse strategic merge with 415 as the API server does; `dryRun=All` returns the patched
  object without storing it; Job pod templates, workload selectors and pod spec fields other
  than images are immutable (422), as the API server validates them;
- core/v1 Events and the Gatekeeper constraint kind `K8sAzureV2ContainerAllowedImages`
  (`constraints.gatekeeper.sh/v1beta1`, cluster scoped, with `status.violations`).

`make_cluster(n_pods, n_namespaces, ...)` generates a cluster of every workload kind with
owner references and container statuses (`imageID` digests in both the containerd and the
Docker `docker-pullable://` forms) and the ground truth a scanner must find.
`KubeAPI.requests` is the request log (method, path, query, ...), so tests can assert
pagination and that pods were never patched. `KubeAPI.write_kubeconfig(path)` writes a
kubeconfig for kubectl and the `kubernetes` client.

Run standalone (the benchmark does, so the server's memory is not the scanner's):
`python -m tests.support.kubeapi --pods 10000 --namespaces 200 --kubeconfig K`.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import copy
import hashlib
import json
import random
import re
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

# --------------------------------------------------------------------------------------
# Resources served (discovery and routing)
# --------------------------------------------------------------------------------------

GATEKEEPER_GROUP = "constraints.gatekeeper.sh"
CONSTRAINT_KIND = "K8sAzureV2ContainerAllowedImages"
CONSTRAINT_PLURAL = "k8sazurev2containerallowedimages"
VERBS = ["get", "list", "patch"]  # what this served API implements, and says it does


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    custom: bool = False  # a CustomResourceDefinition's resource (no strategic merge)
    generation: bool = True  # metadata.generation bumps on spec changes

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": list(VERBS),
        }
        if self.short_names:
            entry["shortNames"] = list(self.short_names)
        if self.categories:
            entry["categories"] = list(self.categories)
        entry["storageVersionHash"] = base64.b64encode(
            hashlib.sha256(f"{self.api_version}/{self.kind}".encode()).digest()[:8]
        ).decode()
        return entry


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "namespace", "Namespace", namespaced=False, short_names=("ns",), generation=False),
    Resource("", "v1", "pods", "pod", "Pod", short_names=("po",), categories=("all",), generation=False),
    Resource(
        "",
        "v1",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        short_names=("rc",),
        categories=("all",),
    ),
    Resource("", "v1", "events", "event", "Event", short_names=("ev",), generation=False),
    Resource("apps", "v1", "deployments", "deployment", "Deployment", short_names=("deploy",), categories=("all",)),
    Resource("apps", "v1", "statefulsets", "statefulset", "StatefulSet", short_names=("sts",), categories=("all",)),
    Resource("apps", "v1", "daemonsets", "daemonset", "DaemonSet", short_names=("ds",), categories=("all",)),
    Resource("apps", "v1", "replicasets", "replicaset", "ReplicaSet", short_names=("rs",), categories=("all",)),
    Resource("batch", "v1", "jobs", "job", "Job", categories=("all",)),
    Resource("batch", "v1", "cronjobs", "cronjob", "CronJob", short_names=("cj",), categories=("all",)),
    # Gatekeeper's own configuration: its Config (exempt namespaces per process) and webhook
    Resource("config.gatekeeper.sh", "v1alpha1", "configs", "config", "Config", custom=True),
    Resource("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations",
             "validatingwebhookconfiguration", "ValidatingWebhookConfiguration", namespaced=False, generation=False),
    Resource(
        GATEKEEPER_GROUP,
        "v1beta1",
        CONSTRAINT_PLURAL,
        CONSTRAINT_PLURAL.lower(),
        CONSTRAINT_KIND,
        namespaced=False,
        categories=("constraint", "constraints"),
        custom=True,
    ),
)
BY_KIND = {r.kind: r for r in RESOURCES}
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
SERVER_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.4",
    "gitCommit": "59526cd4867447956156ae3a602fcbac10a2c335",
    "gitTreeState": "clean",
    "buildDate": "2025-04-22T16:02:27Z",
    "goVersion": "go1.23.6",
    "compiler": "gc",
    "platform": "linux/amd64",
}

# Fields whose lists a strategic merge patch merges by key (from the API's patchMergeKey tags).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}


class APIError(Exception):
    """Answered as a metav1.Status."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass
class Request:
    """One entry of the request log."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None = None
    accept: str | None = None
    body: Any = None
    status: int = 0


# --------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Collection:
    """Objects of one resource, kept as their JSON bytes, sorted by (namespace, name)."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], bytes] = {}
        self._keys: list[tuple[str, str]] | None = []

    def put(self, key: tuple[str, str], raw: bytes) -> None:
        if key not in self.data:
            self._keys = None
        self.data[key] = raw

    def sorted_keys(self) -> list[tuple[str, str]]:
        if self._keys is None:
            self._keys = sorted(self.data)
        return self._keys


class KubeAPI:
    """The served API. `with KubeAPI(objects) as api:` starts it on a free loopback port."""

    def __init__(
        self, objects: Iterable[dict[str, Any]] = (), *, token: str | None = None, log_bodies: bool = True
    ):
        self.token = token
        self.log_bodies = log_bodies
        self.requests: list[Request] = []
        self._lock = threading.RLock()
        self._rv = 1000
        self._min_continue_rv = 0
        self._store: dict[str, _Collection] = {r.plural: _Collection() for r in RESOURCES}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for obj in objects:
            self.add(obj)

    # ---- objects ------------------------------------------------------------------
    def _resource_of(self, obj: dict[str, Any]) -> Resource:
        resource = BY_KIND.get(obj.get("kind", ""))
        if resource is None or resource.api_version != obj.get("apiVersion"):
            raise ValueError(f"not served: {obj.get('apiVersion')}/{obj.get('kind')}")
        return resource

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as a create would (uid, resourceVersion, creationTimestamp)."""
        resource = self._resource_of(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("metadata.name is required")
        if resource.namespaced and not meta.get("namespace"):
            raise ValueError(f"{resource.kind} {meta['name']}: metadata.namespace is required")
        if not resource.namespaced:
            meta.pop("namespace", None)
        with self._lock:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", _now())
            if resource.generation:
                meta.setdefault("generation", 1)
            meta["resourceVersion"] = self._next_rv()
            key = (meta.get("namespace", ""), meta["name"])
            self._store[resource.plural].put(key, _dumps(obj))
        return obj

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        resource = BY_KIND[kind]
        raw = self._store[resource.plural].data.get((namespace or "", name))
        return json.loads(raw) if raw is not None else None

    def objects(self, kind: str) -> list[dict[str, Any]]:
        collection = self._store[BY_KIND[kind].plural]
        with self._lock:
            return [json.loads(collection.data[k]) for k in collection.sorted_keys()]

    def count(self, kind: str) -> int:
        return len(self._store[BY_KIND[kind].plural].data)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def compact(self) -> None:
        """As etcd compaction: continue tokens issued before now answer 410 Expired."""
        with self._lock:
            self._min_continue_rv = self._rv + 1
            self._next_rv()

    # ---- request log helpers ------------------------------------------------------------
    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_for(self, method: str | None = None, path_contains: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if (method is None or r.method == method) and path_contains in r.path]

    # ---- serving --------------------------------------------------------------------
    def start(self) -> KubeAPI:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="kubeapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, *, context: str = "served", namespace: str = "default") -> dict[str, Any]:
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [
                {"name": "served", "cluster": {"server": self.url}},
                # a second context pointing nowhere, for --context tests
                {"name": "unreachable", "cluster": {"server": "http://127.0.0.1:9"}},
            ],
            "users": [{"name": "tester", "user": user}],
            "contexts": [
                {"name": context, "context": {"cluster": "served", "user": "tester", "namespace": namespace}},
                {"name": "unreachable", "context": {"cluster": "unreachable", "user": "tester"}},
            ],
            "current-context": context,
        }

    def write_kubeconfig(self, path: str | Path, **kwargs: Any) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.kubeconfig(**kwargs), indent=2), encoding="utf-8")
        return path

    # ---- the API ----------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes, str]:
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        entry = Request(method, split.path, query, headers.get("content-type"), headers.get("accept"))
        with self._lock:
            self.requests.append(entry)
        try:
            if (
                self.token
                and split.path not in ("/healthz", "/livez", "/readyz")
                and headers.get("authorization") != f"Bearer {self.token}"
            ):
                raise APIError(401, "Unauthorized", "Unauthorized")
            status, payload = self._route(method, split.path, query, headers, body, entry)
            content_type = "application/json"
        except APIError as exc:
            status, payload, content_type = exc.code, _dumps(exc.status()), "application/json"
        entry.status = status
        return status, payload, content_type

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes, entry: Request
    ) -> tuple[int, bytes]:
        parts = [p for p in path.split("/") if p]
        if method == "GET" and path in ("/healthz", "/livez", "/readyz"):
            return 200, b"ok"
        if method == "GET" and path == "/version":
            return 200, _dumps(SERVER_VERSION)
        if method == "GET" and parts == ["api"]:
            return 200, _dumps(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("http://")}
                    ],
                }
            )
        if method == "GET" and parts == ["apis"]:
            return 200, _dumps(
                {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in _groups()]}
            )
        if method == "GET" and len(parts) == 2 and parts[0] == "apis" and parts[1] in _groups():
            return 200, _dumps({"kind": "APIGroup", "apiVersion": "v1", **self._group(parts[1])})
        if method == "GET" and (parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis")):
            group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
            resources = [r.discovery() for r in RESOURCES if r.group == group and r.version == version]
            if not resources:
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            return 200, _dumps(
                {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": f"{group}/{version}" if group else version,
                    "resources": resources,
                }
            )

        resource, namespace, name, subresource = self._parse_resource_path(parts)
        if subresource:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and name is None:
            return 200, self._list(resource, namespace, query, headers.get("accept", ""))
        if method == "GET":
            raw = self._store[resource.plural].data.get((namespace or "", name))
            if raw is None:
                raise _not_found(resource, name)
            if "as=Table" in headers.get("accept", ""):
                return 200, _dumps(self._table(resource, [json.loads(raw)], {}, query))
            return 200, raw
        if method == "PATCH" and name is not None:
            return 200, self._patch(resource, namespace, name, query, headers.get("content-type", ""), body, entry)
        raise APIError(
            405,
            "MethodNotAllowed",
            f"the server does not allow this method on the requested resource "
            f"(this served API implements {', '.join(VERBS)})",
        )

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        versions = sorted({r.version for r in RESOURCES if r.group == group})
        gv = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gv, "preferredVersion": gv[0]}

    def _parse_resource_path(self, parts: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
        if len(parts) >= 3 and parts[0] == "api" and parts[1] == "v1":
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        resource = _BY_PATH.get((group, version, rest[0]))
        if resource is None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if namespace is not None and not resource.namespaced:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if len(rest) > 3:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return resource, namespace, name, subresource

    # ---- list ---------------------------------------------------------------------------
    def _list(self, resource: Resource, namespace: str | None, query: dict[str, str], accept: str) -> bytes:
        collection = self._store[resource.plural]
        limit = int(query.get("limit") or 0)
        if limit < 0:
            raise APIError(400, "BadRequest", "limit must be non-negative")
        field_selector = _parse_selector(query.get("fieldSelector", ""), "field")
        label_selector = _parse_selector(query.get("labelSelector", ""), "label")
        with self._lock:
            list_rv = self._rv
            start_after: tuple[str, str] | None = None
            token = query.get("continue")
            if token:
                list_rv, start_after = self._decode_continue(token)
            keys = collection.sorted_keys()
            lo = 0 if namespace is None else bisect.bisect_left(keys, (namespace, ""))
            if start_after is not None:
                lo = max(lo, bisect.bisect_right(keys, start_after))
            items: list[bytes] = []
            next_key: tuple[str, str] | None = None
            last_key: tuple[str, str] | None = None
            index = lo
            while index < len(keys):
                key = keys[index]
                index += 1
                if namespace is not None and key[0] != namespace:
                    break
                raw = collection.data[key]
                if (field_selector or label_selector) and not _selected(
                    json.loads(raw), field_selector, label_selector
                ):
                    continue
                if limit and len(items) == limit:
                    next_key = last_key
                    break
                items.append(raw)
                last_key = key
            remaining = 0
            if next_key is not None and not (field_selector or label_selector):
                end = len(keys) if namespace is None else bisect.bisect_left(keys, (namespace + "\x00", ""))
                remaining = end - (index - 1)
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if next_key is not None:
            meta["continue"] = _encode_continue(list_rv, next_key)
            if remaining:
                meta["remainingItemCount"] = remaining
        if "as=Table" in accept:
            table = self._table(resource, [json.loads(i) for i in items], meta, query)
            return _dumps(table)
        head = _dumps({"kind": f"{resource.kind}List", "apiVersion": resource.api_version, "metadata": meta})
        return head[:-1] + b',"items":[' + b",".join(items) + b"]}"

    def _decode_continue(self, token: str) -> tuple[int, tuple[str, str]]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            rv = int(data["rv"])
            namespace, _, name = data["start"].rstrip("\x00").partition("/")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise APIError(400, "BadRequest", "continue key is not valid: invalid continue token") from None
        if rv < self._min_continue_rv:
            raise APIError(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent "
                "list result. You can start a new list without the continue parameter.",
            )
        return rv, (namespace, name)

    # ---- tables for kubectl's printing ---------------------------------------------------
    def _table(
        self, resource: Resource, objects: list[dict[str, Any]], meta: dict[str, Any], query: dict[str, str]
    ) -> dict[str, Any]:
        columns = [("Name", "string", "name")]
        extra: list[tuple[str, str, str]] = []
        if resource.kind == "Pod":
            extra = [("Ready", "string", ""), ("Status", "string", ""), ("Restarts", "string", "")]
        elif resource.kind == "Deployment":
            extra = [("Ready", "string", ""), ("Up-to-date", "integer", ""), ("Available", "integer", "")]
        elif resource.kind == CONSTRAINT_KIND:
            extra = [("enforcement-action", "string", ""), ("total-violations", "integer", "")]
        columns = columns + extra + [("Age", "date", "")]
        include = query.get("includeObject", "PartialObjectMetadata")
        rows = []
        for obj in objects:
            cells: list[Any] = [obj["metadata"]["name"]]
            status = obj.get("status") or {}
            spec = obj.get("spec") or {}
            if resource.kind == "Pod":
                statuses = status.get("containerStatuses") or []
                cells += [
                    f"{sum(1 for s in statuses if s.get('ready'))}/{len(spec.get('containers') or [])}",
                    status.get("phase", "Unknown"),
                    str(sum(s.get("restartCount", 0) for s in statuses)),
                ]
            elif resource.kind == "Deployment":
                cells += [
                    f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
                    status.get("updatedReplicas", 0),
                    status.get("availableReplicas", 0),
                ]
            elif resource.kind == CONSTRAINT_KIND:
                cells += [spec.get("enforcementAction", "deny"), status.get("totalViolations", 0)]
            cells.append(_age(obj["metadata"].get("creationTimestamp")))
            row: dict[str, Any] = {"cells": cells}
            if include == "Object":
                row["object"] = obj
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": meta,
            "columnDefinitions": [
                {"name": n, "type": t, "format": f, "description": n, "priority": 0} for n, t, f in columns
            ],
            "rows": rows,
        }

    # ---- patch ---------------------------------------------------------------------------
    def _patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        query: dict[str, str],
        content_type: str,
        body: bytes,
        entry: Request,
    ) -> bytes:
        dry_run = query.get("dryRun")
        if dry_run not in (None, "All"):
            raise APIError(400, "BadRequest", f"Invalid dryRun value {dry_run!r}: only 'All' is supported")
        media = content_type.split(";")[0].strip()
        try:
            patch = json.loads(body or b"null")
        except ValueError as exc:
            raise APIError(400, "BadRequest", f"error decoding patch: {exc}") from None
        if self.log_bodies:
            entry.body = patch
        accepted = ["application/json-patch+json", "application/merge-patch+json"]
        if not resource.custom:
            accepted.append("application/strategic-merge-patch+json")
        if media not in accepted:
            raise APIError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types include: "
                f"{', '.join(accepted)}",
            )
        with self._lock:
            collection = self._store[resource.plural]
            raw = collection.data.get((namespace or "", name))
            if raw is None:
                raise _not_found(resource, name)
            original = json.loads(raw)
            if media == "application/json-patch+json":
                patched = json_patch(original, patch)
            elif media == "application/merge-patch+json":
                patched = merge_patch(original, patch)
            else:
                patched = strategic_merge_patch(original, patch)
            if not isinstance(patched, dict):
                raise APIError(422, "Invalid", "the patch does not produce an object")
            _validate_update(resource, original, patched)
            if patched == original:
                return raw
            if resource.generation and (patched.get("spec") != original.get("spec")):
                patched["metadata"]["generation"] = int(original["metadata"].get("generation", 1)) + 1
            if dry_run == "All":
                return _dumps(patched)
            patched["metadata"]["resourceVersion"] = self._next_rv()
            out = _dumps(patched)
            collection.put((namespace or "", name), out)
            return out


def _groups() -> list[str]:
    seen: list[str] = []
    for r in RESOURCES:
        if r.group and r.group not in seen:
            seen.append(r.group)
    return seen


def _not_found(resource: Resource, name: str) -> APIError:
    what = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
    return APIError(
        404, "NotFound", f'{what} "{name}" not found', {"name": name, "group": resource.group, "kind": resource.plural}
    )


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _encode_continue(rv: int, key: tuple[str, str]) -> str:
    # The API server's token: base64url of {"v":"meta.k8s.io/v1","rv":N,"start":"<key>\x00"}.
    data = {"v": "meta.k8s.io/v1", "rv": rv, "start": f"{key[0]}/{key[1]}\x00"}
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _parse_selector(text: str, what: str) -> list[tuple[str, str, str | None]]:
    """`a=b,c!=d,e,!f` -> [(op, key, value)]; op one of = != exists !exists."""
    terms: list[tuple[str, str, str | None]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "==" in term or "=" in term:
            key, value = re.split("==?", term, maxsplit=1)
            terms.append(("=", key.strip(), value.strip()))
        elif what == "label" and term.startswith("!"):
            terms.append(("!exists", term[1:], None))
        elif what == "label":
            terms.append(("exists", term, None))
        else:
            raise APIError(400, "BadRequest", f"invalid {what} selector {text!r}")
    return terms


def _selected(
    obj: dict[str, Any], fields: list[tuple[str, str, str | None]], labels: list[tuple[str, str, str | None]]
) -> bool:
    for op, key, value in fields:
        current: Any = obj
        for part in key.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        text = "" if current is None else str(current)
        if (op == "=" and text != value) or (op == "!=" and text == value):
            return False
    obj_labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, key, value in labels:
        if op == "=" and obj_labels.get(key) != value:
            return False
        if op == "!=" and obj_labels.get(key) == value:
            return False
        if op == "exists" and key not in obj_labels:
            return False
        if op == "!exists" and key in obj_labels:
            return False
    return True


# --------------------------------------------------------------------------------------
# Patch semantics
# --------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise APIError(422, "Invalid", f"json patch: invalid pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            raise APIError(
                422,
                "Invalid",
                f"the server rejected our request due to an error in our request: "
                f"json patch: path /{'/'.join(tokens)} does not exist",
            )
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    if not isinstance(operations, list):
        raise APIError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def container_of(path: str) -> tuple[Any, str]:
        tokens = _pointer(path)
        if not tokens:
            raise APIError(422, "Invalid", "json patch: cannot operate on the whole document")
        return _walk(doc, tokens[:-1]), tokens[-1]

    def remove(path: str) -> Any:
        parent, last = container_of(path)
        if isinstance(parent, dict) and last in parent:
            return parent.pop(last)
        if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
            return parent.pop(int(last))
        raise APIError(422, "Invalid", f"json patch: remove {path}: no such member")

    def add(path: str, value: Any) -> None:
        parent, last = container_of(path)
        if isinstance(parent, dict):
            parent[last] = value
        elif isinstance(parent, list):
            index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
            if not 0 <= index <= len(parent):
                raise APIError(422, "Invalid", f"json patch: add {path}: index out of range")
            parent.insert(index, value)
        else:
            raise APIError(422, "Invalid", f"json patch: add {path}: parent is not a container")

    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise APIError(400, "BadRequest", f"json patch: invalid operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "test":
            if _walk(doc, _pointer(path)) != op.get("value"):
                raise APIError(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: "
                    f"json patch: test failed at {path}",
                )
        elif kind == "remove":
            remove(path)
        elif kind == "add":
            add(path, copy.deepcopy(op.get("value")))
        elif kind == "replace":
            _walk(doc, _pointer(path))  # must exist
            parent, last = container_of(path)
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op.get("value"))
            else:
                parent[last] = copy.deepcopy(op.get("value"))
        elif kind in ("move", "copy"):
            source = op.get("from", "")
            value = remove(source) if kind == "move" else copy.deepcopy(_walk(doc, _pointer(source)))
            add(path, value)
        else:
            raise APIError(400, "BadRequest", f"json patch: unknown operation {kind!r}")
    return doc


def strategic_merge_patch(original: Any, patch: Any) -> Any:
    """Kubernetes strategic merge: maps merge, lists with a patch merge key merge by key."""
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(original)
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key == "$patch":
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key == "$retainKeys":
            for existing in list(result):
                if existing not in value and existing not in patch:
                    result.pop(existing)
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field_name = key.split("/", 1)[1]
            result[field_name] = [v for v in result.get(field_name) or [] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(current if isinstance(current, dict) else {}, value)
        elif isinstance(value, list) and MERGE_KEYS.get(key) and all(isinstance(v, dict) for v in value):
            result[key] = _merge_list(current if isinstance(current, list) else [], value, MERGE_KEYS[key])
        else:
            result[key] = copy.deepcopy(value)
    for key, order in orders.items():
        items = result.get(key)
        merge_key = MERGE_KEYS.get(key)
        if isinstance(items, list) and merge_key:
            rank = {(o.get(merge_key) if isinstance(o, dict) else o): i for i, o in enumerate(order)}
            result[key] = sorted(items, key=lambda item: rank.get(item.get(merge_key) if isinstance(item, dict)
                                                            else item, len(rank)))
    return result


def _merge_list(current: list[Any], patch: list[dict[str, Any]], merge_key: str) -> list[Any]:
    if any(item.get("$patch") == "replace" for item in patch):
        return [
            copy.deepcopy({k: v for k, v in item.items() if k != "$patch"})
            for item in patch
            if item.get("$patch") != "replace"
        ]
    result = [copy.deepcopy(item) for item in current]
    for item in patch:
        key = item.get(merge_key)
        index = next(
            (i for i, existing in enumerate(result) if isinstance(existing, dict) and existing.get(merge_key) == key),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(copy.deepcopy(item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _pod_spec_without_images(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    for list_name in ("containers", "initContainers", "ephemeralContainers"):
        for container in spec.get(list_name) or []:
            container.pop("image", None)
    spec.pop("activeDeadlineSeconds", None)
    spec.pop("tolerations", None)
    return spec


def _validate_update(resource: Resource, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The update validation the API server would refuse (only what matters for patches here)."""
    for path in (("metadata", "name"), ("metadata", "namespace"), ("metadata", "uid"), ("kind",), ("apiVersion",)):
        a: Any = old
        b: Any = new
        for part in path:
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if a != b:
            raise APIError(
                422,
                "Invalid",
                f'{resource.kind}.{resource.group or "core"} "{old["metadata"]["name"]}" '
                f"is invalid: {'.'.join(path)}: Invalid value: {b!r}: field is immutable",
            )
    name = old["metadata"]["name"]
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if resource.kind == "Pod" and _pod_spec_without_images(old_spec) != _pod_spec_without_images(new_spec):
        raise APIError(
            422,
            "Invalid",
            f'Pod "{name}" is invalid: spec: Forbidden: pod updates may not change fields '
            f"other than `spec.containers[*].image`, `spec.initContainers[*].image`, "
            f"`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing "
            f"tolerations)",
        )
    if resource.kind == "Job" and old_spec.get("template") != new_spec.get("template"):
        raise APIError(
            422,
            "Invalid",
            f'Job.batch "{name}" is invalid: spec.template: Invalid value: '
            f"core.PodTemplateSpec{{...}}: field is immutable",
        )
    if resource.group == "apps" and old_spec.get("selector") != new_spec.get("selector"):
        raise APIError(
            422,
            "Invalid",
            f'{resource.kind}.apps "{name}" is invalid: spec.selector: Invalid value: '
            f"v1.LabelSelector{{...}}: field is immutable",
        )


# --------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    api: KubeAPI
    protocol_version = "HTTP/1.1"
    server_version = "kubeapi-served"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, payload, content_type = self.api.handle(self.command, self.path, headers, body)
        except Exception as exc:  # a bug here must show, as a 500 Status
            status, payload, content_type = (
                500,
                _dumps(APIError(500, "InternalError", repr(exc)).status()),
                "application/json",
            )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Audit-Id", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _serve


# --------------------------------------------------------------------------------------
# Objects as the API reference defines them
# --------------------------------------------------------------------------------------

BASE_TIME = datetime(2025, 5, 1, 10, 0, 0, tzinfo=UTC)
NODES = ("aks-nodepool1-31718369-vmss000000", "aks-nodepool1-31718369-vmss000001", "aks-nodepool1-31718369-vmss000002")


def digest_of(text: str) -> str:
    """A stable fake manifest digest for an image text."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _ts(offset_minutes: int = 0) -> str:
    return (BASE_TIME + timedelta(minutes=offset_minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(*parts: object) -> str:
    return str(uuid.UUID(bytes=hashlib.md5("/".join(map(str, parts)).encode()).digest(), version=4))


def _hash10(*parts: object) -> str:
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    value = int(hashlib.sha1("/".join(map(str, parts)).encode()).hexdigest(), 16)
    return "".join(alphabet[(value >> (5 * i)) % len(alphabet)] for i in range(10))


def container(name: str, image: str, *, port: int | None = None) -> dict[str, Any]:
    """A container as the API server returns it (defaults filled in)."""
    c: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
    }
    if port:
        c["ports"] = [{"containerPort": port, "name": "http", "protocol": "TCP"}]
        c["readinessProbe"] = {
            "httpGet": {"path": "/healthz", "port": port, "scheme": "HTTP"},
            "failureThreshold": 3,
            "periodSeconds": 10,
            "successThreshold": 1,
            "timeoutSeconds": 1,
        }
    c["env"] = [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}]
    return c


def pod_spec(
    containers: list[dict[str, Any]],
    init_containers: list[dict[str, Any]] | None = None,
    *,
    restart_policy: str = "Always",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if init_containers:
        spec["initContainers"] = init_containers
    spec.update(
        {
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": True,
            "restartPolicy": restart_policy,
            "schedulerName": "default-scheduler",
            "securityContext": {},
            "serviceAccount": "default",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
        }
    )
    return spec


def _template(labels: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": dict(labels)}, "spec": copy.deepcopy(spec)}


def _meta(
    name: str,
    namespace: str | None,
    *,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
    created: int = 0,
    generation: int | None = 1,
    uid: str | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["uid"] = uid or _uid(namespace, name, created)
    meta["creationTimestamp"] = _ts(created)
    if generation is not None:
        meta["generation"] = generation
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def _managed_fields(manager: str, operation: str = "Update") -> list[dict[str, Any]]:
    return [
        {
            "manager": manager,
            "operation": operation,
            "apiVersion": "v1",
            "time": _ts(),
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}, "f:spec": {"f:containers": {}}},
        }
    ]


def deployment(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    replicas: int = 1,
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owner: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    created: int = 0,
) -> dict[str, Any]:
    selector = {"app": name}
    ann = {"deployment.kubernetes.io/revision": "1", **(annotations or {})}
    spec = pod_spec(containers, init_containers)
    ready = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            name, namespace, labels={**selector, **(labels or {})}, annotations=ann, owner=owner, created=created
        ),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": _template(selector, spec),
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": conditions
            if conditions is not None
            else [
                {
                    "type": "Available",
                    "status": "True",
                    "reason": "MinimumReplicasAvailable",
                    "message": "Deployment has minimum availability.",
                    "lastUpdateTime": _ts(created + 1),
                    "lastTransitionTime": _ts(created + 1),
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "message": f'ReplicaSet "{name}" has successfully progressed.',
                    "lastUpdateTime": _ts(created + 1),
                    "lastTransitionTime": _ts(created),
                },
            ],
        },
    }


def replicaset(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    replicas: int = 1,
    init_containers: list[dict[str, Any]] | None = None,
    owner: dict[str, Any] | None = None,
    pod_template_hash: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    created: int = 0,
) -> dict[str, Any]:
    base = owner["metadata"]["name"] if owner else name
    selector = {"app": base}
    if pod_template_hash:
        selector["pod-template-hash"] = pod_template_hash
    ann = dict(annotations or {})
    if owner:
        ann.update(
            {
                "deployment.kubernetes.io/desired-replicas": str(replicas),
                "deployment.kubernetes.io/max-replicas": str(replicas + 1),
                "deployment.kubernetes.io/revision": "1",
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": _meta(
            name,
            namespace,
            labels={**selector, **(labels or {})},
            annotations=ann or None,
            owner=owner,
            created=created,
        ),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": _template(selector, pod_spec(containers, init_containers)),
        },
        "status": {
            "replicas": replicas,
            "fullyLabeledReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "observedGeneration": 1,
        },
    }


def statefulset(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    replicas: int = 1,
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    created: int = 0,
) -> dict[str, Any]:
    selector = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(
            name, namespace, labels={**selector, **(labels or {})}, annotations=annotations, created=created
        ),
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "OrderedReady",
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": _template(selector, pod_spec(containers, init_containers)),
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "readyReplicas": replicas,
            "currentReplicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
            "currentRevision": f"{name}-{_hash10(name)[:10]}",
            "updateRevision": f"{name}-{_hash10(name)[:10]}",
            "collisionCount": 0,
        },
    }


def daemonset(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    nodes: int = 3,
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    created: int = 0,
) -> dict[str, Any]:
    selector = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": _meta(
            name, namespace, labels={**selector, **(labels or {})}, annotations=annotations, created=created
        ),
        "spec": {
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": _template(selector, pod_spec(containers, init_containers)),
        },
        "status": {
            "currentNumberScheduled": nodes,
            "desiredNumberScheduled": nodes,
            "numberAvailable": nodes,
            "numberMisscheduled": 0,
            "numberReady": nodes,
            "observedGeneration": 1,
            "updatedNumberScheduled": nodes,
        },
    }


def cronjob(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    schedule: str = "*/15 * * * *",
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    created: int = 0,
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _meta(name, namespace, labels=labels, annotations=annotations, created=created),
        "spec": {
            "schedule": schedule,
            "concurrencyPolicy": "Allow",
            "suspend": False,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {
                "metadata": {},
                "spec": {
                    "backoffLimit": 6,
                    "completionMode": "NonIndexed",
                    "template": {
                        "metadata": {},
                        "spec": pod_spec(containers, init_containers, restart_policy="OnFailure"),
                    },
                },
            },
        },
        "status": {"lastScheduleTime": _ts(created + 30), "lastSuccessfulTime": _ts(created + 31)},
    }


def job(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    owner: dict[str, Any] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    created: int = 0,
    failed: bool = False,
) -> dict[str, Any]:
    meta = _meta(name, namespace, labels=labels, annotations=annotations, owner=owner, created=created)
    uid = meta["uid"]
    selector = {"batch.kubernetes.io/controller-uid": uid}
    pod_labels = {**selector, "batch.kubernetes.io/job-name": name, "controller-uid": uid, "job-name": name}
    meta["labels"] = {**pod_labels, **(labels or {})}
    status: dict[str, Any] = {"startTime": _ts(created), "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}}
    if failed:
        status.update({"active": 0, "failed": 0, "conditions": []})
    else:
        status.update(
            {
                "succeeded": 1,
                "completionTime": _ts(created + 1),
                "conditions": [
                    {
                        "type": "SuccessCriteriaMet",
                        "status": "True",
                        "lastProbeTime": _ts(created + 1),
                        "lastTransitionTime": _ts(created + 1),
                    },
                    {
                        "type": "Complete",
                        "status": "True",
                        "lastProbeTime": _ts(created + 1),
                        "lastTransitionTime": _ts(created + 1),
                    },
                ],
            }
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "parallelism": 1,
            "completions": 1,
            "backoffLimit": 6,
            "completionMode": "NonIndexed",
            "manualSelector": False,
            "podReplacementPolicy": "TerminatingOrFailed",
            "suspend": False,
            "selector": {"matchLabels": selector},
            "template": _template(pod_labels, pod_spec(containers, init_containers, restart_policy="OnFailure")),
        },
        "status": status,
    }


def replication_controller(
    name: str,
    namespace: str,
    containers: list[dict[str, Any]],
    *,
    replicas: int = 1,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    created: int = 0,
) -> dict[str, Any]:
    selector = {"app": name}
    return {
        "apiVersion": "v1",
        "kind": "ReplicationController",
        "metadata": _meta(
            name, namespace, labels={**selector, **(labels or {})}, annotations=annotations, created=created
        ),
        "spec": {
            "replicas": replicas,
            "selector": dict(selector),
            "template": _template(selector, pod_spec(containers)),
        },
        "status": {
            "replicas": replicas,
            "fullyLabeledReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "observedGeneration": 1,
        },
    }


def image_id(image: str, digest: str | None, style: str = "containerd") -> str:
    """status.containerStatuses[].imageID as the runtimes write it."""
    if not digest:
        return ""
    name = image.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name = name[:colon]
    if style == "docker":
        return f"docker-pullable://{name}@{digest}"
    if "/" not in name or (
        "." not in name.split("/")[0] and ":" not in name.split("/")[0] and name.split("/")[0] != "localhost"
    ):
        name = "docker.io/" + (name if "/" in name else f"library/{name}")
    return f"{name}@{digest}"


def _status_image(image: str) -> str:
    name = image_id(image, "sha256:" + "0" * 64).rsplit("@", 1)[0]
    tag = image.split("@", 1)[0]
    slash, colon = tag.rfind("/"), tag.rfind(":")
    return f"{name}:{tag[colon + 1 :]}" if colon > slash else f"{name}:latest"


def pod(
    name: str,
    namespace: str,
    spec: dict[str, Any],
    *,
    owner: dict[str, Any] | None = None,
    labels: dict[str, str] | None = None,
    digests: dict[str, str | None] | None = None,
    style: str = "containerd",
    node: str = NODES[0],
    phase: str = "Running",
    created: int = 0,
    ephemeral: list[dict[str, Any]] | None = None,
    generate_name: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A pod, with container statuses whose imageID carries `digests[container name]`."""
    spec = copy.deepcopy(spec)
    spec["nodeName"] = node
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    token_volume = f"kube-api-access-{_hash10(namespace, name)[:5]}"
    spec["volumes"] = [
        *spec.get("volumes", []),
        {
            "name": token_volume,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ],
            },
        },
    ]
    spec["tolerations"] = [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 300,
        },
    ]
    mount = {"name": token_volume, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}
    for list_name in ("containers", "initContainers"):
        for c in spec.get(list_name) or []:
            c["volumeMounts"] = [*c.get("volumeMounts", []), mount]
    if ephemeral:
        spec["ephemeralContainers"] = copy.deepcopy(ephemeral)
    digests = digests or {}
    succeeded = phase == "Succeeded"

    def status_of(c: dict[str, Any], kind: str) -> dict[str, Any]:
        digest = digests.get(c["name"])
        ran = bool(digest)
        state: dict[str, Any]
        if not ran:
            state = {
                "waiting": {
                    "reason": "ErrImagePull" if phase == "Pending" else "ContainerCreating",
                    "message": f'failed to pull image "{c["image"]}"',
                }
            }
        elif kind == "init" or succeeded:
            state = {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": _ts(created),
                    "finishedAt": _ts(created + 1),
                    "containerID": f"containerd://{hashlib.sha256((name + c['name']).encode()).hexdigest()}",
                }
            }
        else:
            state = {"running": {"startedAt": _ts(created + 1)}}
        entry: dict[str, Any] = {
            "name": c["name"],
            "image": _status_image(c["image"]) if ran else c["image"],
            "imageID": image_id(c["image"], digest, style),
            "lastState": {},
            "ready": ran and kind == "main" and not succeeded,
            "restartCount": 0,
            "state": state,
        }
        if ran:
            entry["containerID"] = f"containerd://{hashlib.sha256((namespace + name + c['name']).encode()).hexdigest()}"
        if kind == "main":
            entry["started"] = ran and not succeeded
        return entry

    ready = "True" if phase == "Running" else "False"
    conditions = [
        {
            "type": "PodReadyToStartContainers",
            "status": "True" if phase != "Pending" else "False",
            "lastProbeTime": None,
            "lastTransitionTime": _ts(created),
        },
        {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": _ts(created)},
        {"type": "Ready", "status": ready, "lastProbeTime": None, "lastTransitionTime": _ts(created + 1)},
        {"type": "ContainersReady", "status": ready, "lastProbeTime": None, "lastTransitionTime": _ts(created + 1)},
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": _ts(created)},
    ]
    if succeeded:
        for condition in conditions[2:4]:
            condition["reason"] = "PodCompleted"
    node_index = NODES.index(node) if node in NODES else 0
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": f"10.224.0.{4 + node_index}",
        "hostIPs": [{"ip": f"10.224.0.{4 + node_index}"}],
        "podIP": f"10.244.{node_index}.{int(_hash10(namespace, name, 'ip')[:2], 36) % 250 + 2}",
        "qosClass": "Burstable",
        "startTime": _ts(created),
        "containerStatuses": [status_of(c, "main") for c in spec["containers"]],
    }
    status["podIPs"] = [{"ip": status["podIP"]}]
    if spec.get("initContainers"):
        status["initContainerStatuses"] = [status_of(c, "init") for c in spec["initContainers"]]
    if ephemeral:
        status["ephemeralContainerStatuses"] = [status_of(c, "ephemeral") for c in spec["ephemeralContainers"]]
    pod_labels = dict(labels or {})
    meta = _meta(
        name,
        namespace,
        labels=pod_labels or None,
        annotations=annotations,
        owner=owner,
        created=created,
        generation=None,
    )
    if generate_name:
        meta = {"name": name, "generateName": generate_name, **{k: v for k, v in meta.items() if k != "name"}}
    meta["managedFields"] = _managed_fields("kube-controller-manager" if owner else "kubectl-create")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def pods_for(
    owner: dict[str, Any],
    count: int,
    *,
    digests: dict[str, str | None] | None = None,
    style: str = "containerd",
    per_pod_digests: list[dict[str, str | None]] | None = None,
    phase: str = "Running",
) -> list[dict[str, Any]]:
    """The pods a controller would create from its template, with the names it gives them."""
    kind, name, ns = owner["kind"], owner["metadata"]["name"], owner["metadata"]["namespace"]
    template = owner["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else owner["spec"]["template"]
    labels = dict(template["metadata"].get("labels") or {})
    result = []
    for i in range(count):
        if kind == "StatefulSet":
            pod_name, generate = f"{name}-{i}", None
            labels.update(
                {
                    "apps.kubernetes.io/pod-index": str(i),
                    "statefulset.kubernetes.io/pod-name": pod_name,
                    "controller-revision-hash": owner["status"]["currentRevision"],
                }
            )
        else:
            generate = f"{name}-"
            pod_name = f"{name}-{_hash10(ns, name, i)[:5]}"
        if kind == "DaemonSet":
            labels = {**labels, "controller-revision-hash": _hash10(name, "rev")[:10], "pod-template-generation": "1"}
        pod_digests = per_pod_digests[i] if per_pod_digests else digests
        result.append(
            pod(
                pod_name,
                ns,
                template["spec"],
                owner=owner,
                labels=dict(labels),
                digests=pod_digests,
                style=style,
                node=NODES[i % len(NODES)],
                generate_name=generate,
                phase=phase,
                created=int(owner["metadata"]["creationTimestamp"][14:16]) + 1,
            )
        )
    return result


def namespace_object(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {**_meta(name, None, labels={"kubernetes.io/metadata.name": name}, generation=None)},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def constraint(
    name: str,
    image_regex: str,
    *,
    excluded_namespaces: list[str] | None = None,
    excluded_containers: list[str] | None = None,
    enforcement_action: str | None = "deny",
    violations: list[dict[str, Any]] | None = None,
    total_violations: int | None = None,
    extra_parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A K8sAzureV2ContainerAllowedImages constraint as the Azure Policy add-on creates it."""
    spec: dict[str, Any] = {
        "match": {
            "kinds": [{"apiGroups": [""], "kinds": ["Pod"]}],
            "excludedNamespaces": list(excluded_namespaces or []),
        },
        "parameters": {
            "imageRegex": image_regex,
            "excludedContainers": list(excluded_containers or []),
            **(extra_parameters or {}),
        },
    }
    if enforcement_action is not None:
        spec = {"enforcementAction": enforcement_action, **spec}
    obj: dict[str, Any] = {
        "apiVersion": f"{GATEKEEPER_GROUP}/v1beta1",
        "kind": CONSTRAINT_KIND,
        "metadata": {
            **_meta(
                name,
                None,
                labels={"managed-by": "azure-policy-addon"},
                annotations={
                    "azure-policy-assignment-id": "/subscriptions/0000/providers/"
                    "Microsoft.Authorization/policyAssignments/allowed-images",
                    "azure-policy-definition-id": "/providers/Microsoft.Authorization/"
                    "policyDefinitions/febd0533-8e55-448f-b837-bd0e06f16469",
                },
            )
        },
        "spec": spec,
    }
    if violations is not None:
        obj["status"] = {
            "auditTimestamp": _ts(60),
            "totalViolations": total_violations if total_violations is not None else len(violations),
            "violations": violations,
            "byPod": [
                {
                    "id": "gatekeeper-audit-7c84869dbf-xkq2r",
                    "observedGeneration": 1,
                    "operations": ["audit", "status"],
                    "enforced": True,
                }
            ],
        }
    return obj


def violation(
    kind: str, namespace: str, name: str, image: str, container_name: str, action: str = "deny"
) -> dict[str, Any]:
    return {
        "enforcementAction": action,
        "group": "",
        "version": "v1",
        "kind": kind,
        "namespace": namespace,
        "name": name,
        "message": f"Container image {image} for container {container_name} has not been allowed.",
    }


def denial_message(constraint_name: str, image: str, container_name: str) -> str:
    """What a controller records when Gatekeeper's webhook refuses the pod it creates."""
    return (
        f'admission webhook "validation.gatekeeper.sh" denied the request: [{constraint_name}] '
        f"Container image {image} for container {container_name} has not been allowed."
    )


def event(
    involved: dict[str, Any],
    reason: str,
    message: str,
    *,
    count: int = 1,
    type_: str = "Warning",
    component: str = "replicaset-controller",
    minute: int = 0,
) -> dict[str, Any]:
    ns = involved["metadata"].get("namespace", "default")
    name = f"{involved['metadata']['name']}.{hashlib.sha1((message + str(minute)).encode()).hexdigest()[:16]}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": _meta(name, ns, created=minute, generation=None),
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "namespace": ns,
            "name": involved["metadata"]["name"],
            "uid": involved["metadata"]["uid"],
            "resourceVersion": "1",
        },
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": _ts(minute),
        "lastTimestamp": _ts(minute + count),
        "count": count,
        "type": type_,
        "eventTime": None,
        "reportingComponent": component,
        "reportingInstance": "",
    }


# --------------------------------------------------------------------------------------
# A generated cluster with its ground truth
# --------------------------------------------------------------------------------------

APP_IMAGES = (
    "nginx:1.27",
    "redis:7.2.4",
    "mcr.microsoft.com/dotnet/aspnet:8.0",
    "ghcr.io/acme/api:v2.3.1",
    "quay.io/prometheus/node-exporter:v1.8.0",
    "docker.io/bitnami/postgresql:16.3.0",
    "registry.k8s.io/ingress-nginx/controller:v1.11.0",
    "crazureblue.azurecr.io/team/orders:1.4.2",
    "crazureblue.azurecr.io/docker.io/library/nginx:1.27",
    "public.ecr.aws/docker/library/python:3.12-slim",
    "gcr.io/distroless/static:nonroot",
    "nginx@sha256:" + hashlib.sha256(b"pinned").hexdigest(),
    "127.0.0.1:5000/local/app:dev",
)
SIDECAR_IMAGES = (
    "fluent/fluent-bit:3.0.7",
    "crazureblue.azurecr.io/envoyproxy/envoy:v1.30.2",
    "otel/opentelemetry-collector:0.104.0",
)
INIT_IMAGES = ("busybox:1.36", "crazureblue.azurecr.io/docker.io/library/busybox:1.36")
SYSTEM_IMAGES = (
    "mcr.microsoft.com/oss/kubernetes/kube-proxy:v1.32.4",
    "mcr.microsoft.com/oss/kubernetes/coredns:v1.11.3-2",
    "mcr.microsoft.com/oss/open-policy-agent/gatekeeper:v3.17.1",
)
DEFAULT_REGEX = r"^crazureblue\.azurecr\.io/.+$"
DEFAULT_EXCLUDED = ("kube-system", "gatekeeper-system", "azure-arc")


@dataclass(frozen=True)
class Truth:
    """One container of one top owner, as a scanner must report it."""

    kind: str
    namespace: str
    name: str
    container: str
    image: str
    digests: frozenset[str]  # running digests (empty: no pod runs it)
    list_name: str = "containers"  # containers | initContainers | ephemeralContainers


@dataclass
class Cluster:
    objects: list[dict[str, Any]]
    truth: list[Truth]
    drift: list[Truth] = field(default_factory=list)  # entries whose replicas run several digests
    pods: int = 0
    namespaces: list[str] = field(default_factory=list)


def make_cluster(
    n_pods: int = 200,
    n_namespaces: int = 4,
    *,
    seed: int = 7,
    system: bool = True,
    drift_every: int = 7,
    ephemeral_every: int = 5,
    gitops: bool = True,
    constraint_regex: str = DEFAULT_REGEX,
    enforcement_action: str = "dryrun",
) -> Cluster:
    """Every workload kind, with owner references and container statuses, and the truth.

    Pods are split evenly over the namespaces; each namespace cycles through a menu of
    Deployment (with its current and an old ReplicaSet), StatefulSet, DaemonSet, CronJob
    (with finished Jobs), bare Job, bare ReplicaSet, ReplicationController, bare Pod (some
    with an ephemeral debug container) and a Deployment scaled to zero. Every `drift_every`-th
    Deployment has one replica still running an older digest of its tag. With `system`, the
    first two namespaces are kube-system and gatekeeper-system (excluded by the constraint,
    which the cluster also carries)."""
    rng = random.Random(seed)
    objects: list[dict[str, Any]] = []
    truth: dict[tuple[str, str, str, str, str, str], set[str]] = {}
    drift_keys: set[tuple[str, str, str, str, str, str]] = set()
    names = [f"team-{i:03d}" for i in range(n_namespaces)]
    if system and n_namespaces >= 3:
        names[:2] = ["kube-system", "gatekeeper-system"]
    quotas = [n_pods // n_namespaces + (1 if i < n_pods % n_namespaces else 0) for i in range(n_namespaces)]
    counter = {"deploy": 0, "pod": 0}

    def images_for(ns: str, k: int) -> tuple[str, str, str]:
        if ns in ("kube-system", "gatekeeper-system"):
            return SYSTEM_IMAGES[k % len(SYSTEM_IMAGES)], SIDECAR_IMAGES[k % 3], INIT_IMAGES[0]
        return (
            APP_IMAGES[(k + rng.randrange(len(APP_IMAGES))) % len(APP_IMAGES)],
            SIDECAR_IMAGES[rng.randrange(len(SIDECAR_IMAGES))],
            INIT_IMAGES[rng.randrange(len(INIT_IMAGES))],
        )

    def record(top: dict[str, Any], list_name: str, c: dict[str, Any], digest: str | None) -> None:
        key = (top["kind"], top["metadata"]["namespace"], top["metadata"]["name"], c["name"], c["image"], list_name)
        truth.setdefault(key, set())
        if digest:
            truth[key].add(digest)

    def record_template(top: dict[str, Any], spec: dict[str, Any]) -> None:
        for list_name in ("containers", "initContainers"):
            for c in spec.get(list_name) or []:
                record(top, list_name, c, None)

    def record_pods(top: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        for p in pods:
            for list_name, status_name in (
                ("containers", "containerStatuses"),
                ("initContainers", "initContainerStatuses"),
                ("ephemeralContainers", "ephemeralContainerStatuses"),
            ):
                statuses = {s["name"]: s for s in p["status"].get(status_name) or []}
                for c in p["spec"].get(list_name) or []:
                    image_ref = statuses.get(c["name"], {}).get("imageID", "")
                    record(top, list_name, c, image_ref.rsplit("@", 1)[1] if "@" in image_ref else None)

    gitops_labels = [
        (
            {"app.kubernetes.io/managed-by": "Helm"},
            {"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": "default"},
        ),
        ({"app.kubernetes.io/instance": "shop"}, {"argocd.argoproj.io/tracking-id": "shop:apps/Deployment:x/y"}),
        ({"kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}, {}),
    ]

    for ns_index, (ns, quota) in enumerate(zip(names, quotas, strict=True)):
        objects.append(namespace_object(ns))
        style = "docker" if ns_index % 2 else "containerd"
        left = quota
        step = 0
        while left > 0:
            k = ns_index * 31 + step
            main_image, side_image, init_image = images_for(ns, k)
            digest = {
                main_image: digest_of(main_image),
                side_image: digest_of(side_image),
                init_image: digest_of(init_image),
            }
            choice = step % 9
            step += 1
            created = step
            app = container("app", main_image, port=8080)
            side = container("log-shipper", side_image)
            init = container("init-config", init_image)
            dg = {"app": digest[main_image], "log-shipper": digest[side_image], "init-config": digest[init_image]}
            labels: dict[str, str] = {}
            annotations: dict[str, str] = {}
            if gitops and choice == 0 and (step // 9) % 4 < 3:
                labels, annotations = gitops_labels[(step // 9) % 3]
            if choice == 0:  # Deployment + current and old ReplicaSets + pods
                replicas = min(3, left)
                counter["deploy"] += 1
                d = deployment(
                    f"web-{step}",
                    ns,
                    [app, side],
                    init_containers=[init],
                    replicas=replicas,
                    labels=labels,
                    annotations=annotations,
                    created=created,
                )
                rs = replicaset(
                    f"web-{step}-{_hash10(ns, step)[:10]}",
                    ns,
                    [app, side],
                    init_containers=[init],
                    replicas=replicas,
                    owner=d,
                    pod_template_hash=_hash10(ns, step)[:10],
                    created=created,
                )
                old_app = container("app", APP_IMAGES[(k + 3) % len(APP_IMAGES)], port=8080)
                old = replicaset(
                    f"web-{step}-{_hash10(ns, step, 'old')[:10]}",
                    ns,
                    [old_app, side],
                    replicas=0,
                    owner=d,
                    pod_template_hash=_hash10(ns, step, "old")[:10],
                    created=created - 1 if created > 1 else 0,
                )
                per_pod = [dict(dg) for _ in range(replicas)]
                if drift_every and counter["deploy"] % drift_every == 0 and replicas > 1:
                    per_pod[-1]["app"] = digest_of(main_image + "#previous")
                    drift_keys.add(("Deployment", ns, d["metadata"]["name"], "app", main_image, "containers"))
                pods = pods_for(rs, replicas, per_pod_digests=per_pod, style=style)
                objects += [d, rs, old, *pods]
                record_template(d, d["spec"]["template"]["spec"])
                record_pods(d, pods)
                left -= replicas
            elif choice == 1:  # StatefulSet
                replicas = min(2, left)
                s = statefulset(f"db-{step}", ns, [app], init_containers=[init], replicas=replicas, created=created)
                pods = pods_for(s, replicas, digests=dg, style=style)
                objects += [s, *pods]
                record_template(s, s["spec"]["template"]["spec"])
                record_pods(s, pods)
                left -= replicas
            elif choice == 2:  # DaemonSet
                nodes = min(3, left)
                ds = daemonset(f"agent-{step}", ns, [side], nodes=nodes, created=created)
                pods = pods_for(ds, nodes, digests=dg, style=style)
                objects += [ds, *pods]
                record_template(ds, ds["spec"]["template"]["spec"])
                record_pods(ds, pods)
                left -= nodes
            elif choice == 3:  # CronJob + finished Jobs + their pods
                runs = min(2, left)
                cj = cronjob(f"report-{step}", ns, [app], created=created)
                objects.append(cj)
                record_template(cj, cj["spec"]["jobTemplate"]["spec"]["template"]["spec"])
                for run in range(runs):
                    j = job(f"report-{step}-{29000000 + run * 15}", ns, [app], owner=cj, created=created + run)
                    j["spec"]["template"] = copy.deepcopy(cj["spec"]["jobTemplate"]["spec"]["template"])
                    j["spec"]["template"]["metadata"]["labels"] = {
                        "batch.kubernetes.io/controller-uid": j["metadata"]["uid"],
                        "batch.kubernetes.io/job-name": j["metadata"]["name"],
                    }
                    pods = pods_for(j, 1, digests=dg, style=style, phase="Succeeded")
                    objects += [j, *pods]
                    record_pods(cj, pods)
                left -= runs
            elif choice == 4:  # bare Job
                j = job(f"migrate-{step}", ns, [app], init_containers=[init], created=created)
                pods = pods_for(j, 1, digests=dg, style=style, phase="Succeeded")
                objects += [j, *pods]
                record_template(j, j["spec"]["template"]["spec"])
                record_pods(j, pods)
                left -= 1
            elif choice == 5:  # bare ReplicaSet
                replicas = min(2, left)
                rs = replicaset(f"legacy-{step}", ns, [app], replicas=replicas, created=created)
                pods = pods_for(rs, replicas, digests=dg, style=style)
                objects += [rs, *pods]
                record_template(rs, rs["spec"]["template"]["spec"])
                record_pods(rs, pods)
                left -= replicas
            elif choice == 6:  # ReplicationController
                replicas = min(2, left)
                rc = replication_controller(f"old-{step}", ns, [app], replicas=replicas, created=created)
                pods = pods_for(rc, replicas, digests=dg, style=style)
                objects += [rc, *pods]
                record_template(rc, rc["spec"]["template"]["spec"])
                record_pods(rc, pods)
                left -= replicas
            elif choice == 7:  # bare Pod, some with an ephemeral debug container
                counter["pod"] += 1
                eph = None
                if ephemeral_every and counter["pod"] % ephemeral_every == 0:
                    eph = [
                        {
                            "name": "debugger",
                            "image": "busybox:1.36",
                            "imagePullPolicy": "IfNotPresent",
                            "stdin": True,
                            "tty": True,
                            "targetContainerName": "app",
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File",
                        }
                    ]
                    dg = {**dg, "debugger": digest_of("busybox:1.36")}
                p = pod(f"toolbox-{step}", ns, pod_spec([app]), digests=dg, style=style, ephemeral=eph, created=created)
                objects.append(p)
                p_top = {**p, "metadata": {**p["metadata"], "namespace": ns}}
                record_template(p_top, {"containers": [app]})
                record_pods(p_top, [p])
                left -= 1
            else:  # a Deployment scaled to zero: no pods, still counts
                d = deployment(f"idle-{step}", ns, [app], replicas=0, created=created)
                d["status"] = {"observedGeneration": 1, "conditions": d["status"]["conditions"]}
                objects.append(d)
                record_template(d, d["spec"]["template"]["spec"])
    if system and n_namespaces >= 3:
        objects.append(
            constraint(
                "azurepolicy-k8sazurev2containerallowedimag-8b5c1d0f6a2e4b3c9d7e",
                constraint_regex,
                excluded_namespaces=list(DEFAULT_EXCLUDED),
                enforcement_action=enforcement_action,
                violations=[],
            )
        )
    entries = [
        Truth(kind, ns, name, c, image, frozenset(d), list_name)
        for (kind, ns, name, c, image, list_name), d in truth.items()
    ]
    drift = [t for t in entries if (t.kind, t.namespace, t.name, t.container, t.image, t.list_name) in drift_keys]
    n = sum(1 for o in objects if o["kind"] == "Pod")
    return Cluster(
        objects, sorted(entries, key=lambda t: (t.namespace, t.kind, t.name, t.container, t.image)), drift, n, names
    )


def iter_kinds(objects: Iterable[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] == kind)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a generated cluster over the Kubernetes REST API")
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=200)
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args(argv)
    cluster = make_cluster(args.pods, args.namespaces)
    api = KubeAPI(cluster.objects, log_bodies=False)
    findings = sum(1 for _ in cluster.truth)
    del cluster
    api.start()
    api.write_kubeconfig(args.kubeconfig)
    print(json.dumps({"url": api.url, "truth": findings}), flush=True)
    try:
        sys.stdin.read()  # serve until stdin closes
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
