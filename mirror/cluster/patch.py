"""Live patch: point the owning workloads' container images at their verified targets.

Only owners are patched (Deployment, StatefulSet, DaemonSet, CronJob, ReplicaSet,
ReplicationController), never pods, and only their containers' `image` fields: the patch
is an RFC 6902 JSON patch whose every change is a `replace` of one `.../image`, guarded by
`test` operations on that container's name and current image, so a template that changed
since the scan makes the patch fail instead of overwriting someone else's change.

Nothing is patched for an image that `verify(source, target, running_digest)` does not
confirm in the target registry. Bare Pods are never patched (recreate them from their
source), nor Jobs (their pod template is immutable; the next run must come from the
source). Objects managed by Helm, Argo CD or Flux, and objects controlled by another
controller (an operator), are skipped with a warning that the source must change (GitOps
would revert the patch), unless `force`.

`apply_patches` sends each patch as a server-side dry run (`dryRun=All`) by default. When
applying for real it first dry-runs the same patch and refuses to go on if the server's
answer changes anything under `spec` other than the planned image fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field
from typing import Any

from manifests_rewriter.model import Finding, Mapping
from manifests_rewriter.reference import ImageRef, ReferenceError, parse

from .kube import ApiError, call_json, status_message
from .scan import KIND_BY_NAME, Kind, controller_of, dig

Verify = Callable[[ImageRef, ImageRef, str | None], bool]
MappingLike = Iterable[Mapping] | AbcMapping[str, ImageRef] | Callable[[ImageRef], ImageRef | None]
PATCHABLE = ("Deployment", "StatefulSet", "DaemonSet", "CronJob", "ReplicaSet", "ReplicationController")
FIELD_MANAGER = "acr-mirror"


@dataclass(frozen=True)
class ImageChange:
    container: str
    list_name: str  # containers | initContainers
    index: int
    old: str
    new: str
    path: str  # JSON pointer of the image field
    digest: str | None = None  # the running digest verify confirmed in the target


@dataclass
class PatchPlan:
    """What would change on one owner; `action` is "patch" or "skip"."""

    kind: str
    namespace: str
    name: str
    action: str = "skip"
    changes: list[ImageChange] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # images left alone, and why
    warnings: list[str] = field(default_factory=list)
    reason: str | None = None  # why the whole object is skipped
    managed_by: str | None = None
    before: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def where(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def json_patch(self) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        for change in self.changes:
            base = change.path.rsplit("/", 1)[0]
            ops += [{"op": "test", "path": f"{base}/name", "value": change.container},
                    {"op": "test", "path": change.path, "value": change.old},
                    {"op": "replace", "path": change.path, "value": change.new}]
        return ops

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name, "action": self.action,
                "reason": self.reason, "managed_by": self.managed_by,
                "changes": [{"container": c.container, "path": c.path, "old": c.old, "new": c.new,
                             "digest": c.digest} for c in self.changes],
                "skipped": list(self.skipped), "warnings": list(self.warnings)}

    def __str__(self) -> str:
        if self.action != "patch":
            return f"{self.where}: skipped: {self.reason or '; '.join(self.skipped)}"
        return f"{self.where}: " + ", ".join(f"{c.container} {c.old} -> {c.new}" for c in self.changes)


@dataclass
class PatchResult:
    plan: PatchPlan
    status: str  # "would patch" | "patched" | "skipped" | "failed"
    dry_run: bool = True
    error: str | None = None
    changed: list[str] = field(default_factory=list)  # JSON pointers the server's answer changed under spec

    def as_json(self) -> dict[str, Any]:
        return {**self.plan.as_json(), "status": self.status, "dry_run": self.dry_run, "error": self.error,
                "changed": list(self.changed)}

    def __str__(self) -> str:
        if self.status == "failed":
            return f"{self.plan.where}: failed: {self.error}"
        if self.status == "skipped":
            return str(self.plan)
        suffix = " (server dry run)" if self.dry_run else ""
        return f"{self.status}{suffix}: {self.plan}"


def gitops_manager(meta: dict[str, Any]) -> str | None:
    """Who owns this object's source, from its labels and annotations (None: nobody we know)."""
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    keys = [*labels, *annotations]
    flux = sorted(k for k in keys if k.startswith(("kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/")))
    if flux:
        return f"Flux ({flux[0]})"
    argo = sorted(k for k in keys if k.startswith("argocd.argoproj.io/"))
    if argo:
        return f"Argo CD ({argo[0]})"
    if str(labels.get("app.kubernetes.io/managed-by", "")).lower() == "helm" or any(
            k.startswith("meta.helm.sh/") for k in annotations):
        release = annotations.get("meta.helm.sh/release-name")
        where = annotations.get("meta.helm.sh/release-namespace")
        return f"Helm (release {release}{' in ' + where if where else ''})" if release else "Helm"
    return None


def _lookup(mapping: MappingLike) -> Callable[[ImageRef], ImageRef | None]:
    if callable(mapping) and not isinstance(mapping, AbcMapping):
        return mapping  # type: ignore[return-value]
    exact: dict[str, ImageRef] = {}
    loose: dict[tuple[str, str | None], ImageRef] = {}
    pairs: Iterable[tuple[Any, Any]] = (
        mapping.items() if isinstance(mapping, AbcMapping)
        else ((m.source, m.target) for m in mapping))  # type: ignore[union-attr]
    for source, target in pairs:
        source_ref = source if isinstance(source, ImageRef) else parse(str(source))
        target_ref = target if isinstance(target, ImageRef) else parse(str(target))
        exact[str(source_ref)] = target_ref
        loose.setdefault((source_ref.name, source_ref.tag), target_ref)  # a plan may pin a digest

    def lookup(ref: ImageRef) -> ImageRef | None:
        found = exact.get(str(ref))
        if found is None and not ref.digest:
            found = loose.get((ref.name, ref.tag))
        return found

    return lookup


def _find_container(spec: dict[str, Any], name: str | None) -> tuple[str, int, dict[str, Any]] | None:
    for list_name in ("containers", "initContainers"):
        for index, container in enumerate(spec.get(list_name) or ()):
            if container.get("name") == name:
                return list_name, index, container
    return None


def _read(api: Any, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
    return call_json(api, f"reading {kind.kind} {namespace}/{name}", kind.method(api, "read"),
                     name=name, namespace=namespace)


def plan_patches(api: Any, findings: Iterable[Finding], mapping: MappingLike, verify: Verify, *,
                 force: bool = False) -> list[PatchPlan]:
    """One PatchPlan per top owner among the cluster findings (reads each owner once)."""
    lookup = _lookup(mapping)
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for f in findings:
        if f.source == "cluster" and f.file is None and f.kind and f.name:
            groups.setdefault((f.kind, f.namespace or "", f.name), []).append(f)
    plans: list[PatchPlan] = []
    for (kind_name, namespace, name), group in sorted(groups.items()):
        plan = PatchPlan(kind_name, namespace, name)
        plans.append(plan)
        if kind_name == "Pod":
            plan.reason = "a bare Pod: pods are never patched; recreate it from its source with the target image"
            continue
        if kind_name == "Job":
            plan.reason = "a Job's pod template is immutable: change its source so the next run uses the target image"
            continue
        if kind_name not in PATCHABLE:
            plan.reason = f"{kind_name} is not a kind acr-mirror patches: change its source"
            continue
        kind = KIND_BY_NAME[kind_name]
        try:
            obj = _read(api, kind, namespace, name)
        except ApiError as exc:
            plan.reason = ("gone since the scan" if exc.status == 404
                           else f"reading it: {status_message(exc)}")
            continue
        meta = obj.get("metadata") or {}
        manager = gitops_manager(meta)
        controller = controller_of(meta)
        if controller and not manager:
            manager = f"its controller {controller[1]} {namespace}/{controller[2]} ({controller[0]})"
        plan.managed_by = manager
        if manager:
            message = (f"{plan.where} is managed by {manager}: change the image in its source (chart values, "
                       f"git); GitOps or the controller would revert a live patch")
            if not force:
                plan.reason = message
                plan.warnings.append(message)
                continue
            plan.warnings.append(f"{message} (patched anyway: --force)")
        spec = dig(obj, kind.pod_spec) or {}
        done: set[str] = set()
        for f in group:
            label = f"container {f.container} {f.image}"
            try:
                source = parse(f.image)
            except ReferenceError as exc:
                plan.skipped.append(f"{label}: not a valid image reference ({exc})")
                continue
            located = _find_container(spec, f.container)
            if located is None:
                plan.skipped.append(f"{label}: not in the {kind_name}'s pod template (an ephemeral or pod-only "
                                    f"container); pods are never patched")
                continue
            list_name, index, container = located
            current = container.get("image")
            target = lookup(source)
            if target is None:
                plan.skipped.append(f"{label}: no target in the mapping (not planned)")
                continue
            new = str(source.with_name(target.registry, target.repository))
            if current == new:
                plan.skipped.append(f"{label}: already points at {new}")
                continue
            if current != f.image:
                plan.skipped.append(f"{label}: the template now has {current!r}; left alone")
                continue
            path = kind.path_of(list_name, index)
            if path in done:
                continue
            new_ref = parse(new)
            try:
                verified = verify(source, new_ref, f.digest)
            except Exception as exc:  # noqa: BLE001 - a failed check is a "no", reported
                plan.skipped.append(f"{label}: verifying {new} failed: {exc}")
                continue
            if not verified:
                pinned = f" with digest {f.digest}" if f.digest else ""
                plan.skipped.append(f"{label}: not verified: {new} is not in the target registry{pinned}")
                continue
            done.add(path)
            plan.changes.append(ImageChange(f.container or "", list_name, index, f.image, new, path, f.digest))
        if plan.changes:
            plan.action = "patch"
            plan.before = obj
        else:
            plan.reason = plan.reason or "; ".join(plan.skipped) or "nothing to change"
    return plans


def changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """JSON pointers where two JSON values differ (leaves, and added/removed members)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after)):
            token = str(key).replace("~", "~0").replace("/", "~1")
            if key not in before or key not in after:
                out.append(f"{prefix}/{token}")
            else:
                out += changed_paths(before[key], after[key], f"{prefix}/{token}")
        return out
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        out = []
        for i, (a, b) in enumerate(zip(before, after, strict=True)):
            out += changed_paths(a, b, f"{prefix}/{i}")
        return out
    return [] if before == after else [prefix or "/"]


def _send(api: Any, plan: PatchPlan, dry_run: bool) -> dict[str, Any]:
    kind = KIND_BY_NAME[plan.kind]
    extra = {"dry_run": "All"} if dry_run else {}
    return call_json(api, f"patching {plan.where}", kind.method(api, "patch"), name=plan.name,
                     namespace=plan.namespace, body=plan.json_patch(), field_manager=FIELD_MANAGER,
                     _content_type="application/json-patch+json", **extra)


def apply_patches(api: Any, plans: Iterable[PatchPlan], *, dry_run: bool = True) -> list[PatchResult]:
    """Send each plan's patch: a server-side dry run unless `dry_run` is False."""
    results: list[PatchResult] = []
    for plan in plans:
        if plan.action != "patch" or not plan.changes:
            results.append(PatchResult(plan, "skipped", dry_run))
            continue
        expected = {c.path for c in plan.changes}
        try:
            answer = _send(api, plan, dry_run=True)
            changed = [p for p in changed_paths((plan.before or {}).get("spec"), answer.get("spec"), "/spec")]
            unexpected = [p for p in changed if p not in expected]
            if unexpected:
                results.append(PatchResult(plan, "failed", dry_run, f"the server's dry run changes more than the "
                                                                    f"image fields: {', '.join(unexpected[:5])}",
                                           changed))
                continue
            if not dry_run:
                answer = _send(api, plan, dry_run=False)
                changed = changed_paths((plan.before or {}).get("spec"), answer.get("spec"), "/spec")
            results.append(PatchResult(plan, "would patch" if dry_run else "patched", dry_run, None, changed))
        except ApiError as exc:
            results.append(PatchResult(plan, "failed", dry_run, f"patching {plan.where}: {status_message(exc)}"))
    return results
