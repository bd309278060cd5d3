"""Where the policy comes from when it is not in the config: the cluster's Gatekeeper
constraints, or Azure Policy assignments in a file (`--policy-file`).

From the cluster: every constraint of kind `K8sAzureV2ContainerAllowedImages`
(`constraints.gatekeeper.sh/v1beta1`, created by the Azure Policy add-on from each assignment),
each an assignment of its own that a pod must pass (admission runs them all):

- `spec.parameters.imageRegex` and `excludedContainers` (the template);
- `spec.match`: `kinds` and `scope` (does it match Pods at all?), `namespaces`,
  `excludedNamespaces`, `labelSelector`, `namespaceSelector` (against the labels of the
  cluster's Namespace objects, read here), `name`, `source`, with Gatekeeper's semantics
  (pkg/mutation/match/match.go, pkg/wildcard);
- `spec.enforcementAction`: deny (the default), dryrun (Azure "Audit"), warn, or scoped
  (`scopedEnforcementActions` for the validation webhook). Every constraint counts whatever its
  action: dryrun is exactly what the switch to deny will enforce; findings say which is which;
- Gatekeeper's own exemptions: its `Config` (config.gatekeeper.sh/v1alpha1, `spec.match[]`
  `excludedNamespaces` for the `webhook`, `audit` or `*` processes) and the namespaceSelector
  of its validating webhook (`validation.gatekeeper.sh`; when the webhook configuration cannot
  be read, Gatekeeper's default: namespaces labelled `admission.gatekeeper.sh/ignore` are
  skipped);
- constraints the add-on manages (label `managed-by: azure-policy-addon`) also skip the
  namespaces the definition always excludes (kube-system, gatekeeper-system, azure-arc).

From a file: see mirror.azure.assignments (assignments, initiatives, exemptions).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from manifests_rewriter.policy import (
    ALWAYS_EXCLUDED,
    AUDIT,
    DENY,
    WARN,
    LabelSelector,
    Policy,
    PolicyError,
    PolicySet,
    combine,
)

from ..azure.assignments import DEFINITION_DEFAULTS, PolicySourceError, policy_from_documents, strings

__all__ = ["DEFINITION_EXCLUDED_NAMESPACES", "KIND", "PolicySourceError", "StrictPolicy", "policy_from_assignment",
           "policy_from_cluster", "policy_from_constraints"]

GROUP = "constraints.gatekeeper.sh"
VERSION = "v1beta1"
KIND = "K8sAzureV2ContainerAllowedImages"
PLURAL = "k8sazurev2containerallowedimages"
CONFIG_GROUP, CONFIG_VERSION, CONFIG_PLURAL = "config.gatekeeper.sh", "v1alpha1", "configs"
WEBHOOK = "validation.gatekeeper.sh"
# Gatekeeper's shipped webhook configuration skips namespaces with this label.
DEFAULT_WEBHOOK_SELECTOR = LabelSelector.parse(
    {"matchExpressions": [{"key": "admission.gatekeeper.sh/ignore", "operator": "DoesNotExist"}]}, "default")
# The built-in definition's default for excludedNamespaces (kept under its old name).
DEFINITION_EXCLUDED_NAMESPACES = tuple(DEFINITION_DEFAULTS["excludedNamespaces"])
_ACTIONS = {"deny": DENY, "dryrun": AUDIT, "warn": WARN}

StrictPolicy = PolicySet  # the old name


def _matches_pods(match: dict[str, Any]) -> bool:
    """match.kinds and match.scope as Gatekeeper reads them, for a Pod (group "", namespaced)."""
    if match.get("scope") == "Cluster":
        return False
    kinds = match.get("kinds") or []
    if not kinds:
        return True
    for entry in kinds:
        names, groups = entry.get("kinds") or [], entry.get("apiGroups") or []
        if (not names or "*" in names or "Pod" in names) and (not groups or "*" in groups or "" in groups):
            return True
    return False


def _effect(spec: dict[str, Any], where: str, notes: list[str] | None) -> tuple[str, str]:
    """(effect, the enforcementAction as written) of a constraint."""
    action = spec.get("enforcementAction") or "deny"
    if action == "scoped":
        found = set()
        for scoped in spec.get("scopedEnforcementActions") or ():
            points = {p.get("name") for p in scoped.get("enforcementPoints") or ()}
            if points & {WEBHOOK, "*"}:
                found.add(_ACTIONS.get(str(scoped.get("action", "")).lower(), DENY))
        return (min(found, key=(DENY, WARN, AUDIT).index) if found else AUDIT), action
    effect = _ACTIONS.get(str(action).lower())
    if effect is None:
        if notes is not None:
            notes.append(f"{where}: enforcementAction {action!r} is unknown; taken as deny")
        effect = DENY
    return effect, action


def _selector(value: Any, where: str) -> LabelSelector | None:
    if value is None:
        return None
    try:
        return LabelSelector.parse(value, where)
    except PolicyError as exc:
        raise PolicySourceError(f"reading the policy from the cluster: {exc}") from None


def policy_from_constraints(constraints: list[dict[str, Any]], notes: list[str] | None = None, *,
                            namespace_labels: dict[str, dict[str, str]] | None = None,
                            exempt_namespaces: tuple[tuple[str, tuple[str, ...]], ...] = (),
                            webhook_selector: LabelSelector | None = None) -> Policy:
    """The policy of these constraint objects (as listed from the API): each one an assignment a
    pod must pass. `namespace_labels`, `exempt_namespaces` and `webhook_selector` describe the
    cluster (its Namespaces, Gatekeeper's Config and webhook)."""
    if not constraints:
        raise PolicySourceError(f"reading the policy from the cluster: no {KIND} constraint exists "
                                f"(is the allowed-images policy assigned?); give policy: in the config instead")
    parts: list[Policy] = []
    described: list[str] = []
    for obj in sorted(constraints, key=lambda o: (o.get("metadata") or {}).get("name", "")):
        meta = obj.get("metadata") or {}
        name = meta.get("name", "?")
        spec = obj.get("spec") or {}
        parameters = spec.get("parameters") or {}
        match = spec.get("match") or {}
        where = f"constraint {name}"
        regex = parameters.get("imageRegex")
        if not isinstance(regex, str) or not regex:
            raise PolicySourceError(f"reading the policy from the cluster: {where} has no spec.parameters.imageRegex")
        effect, action = _effect(spec, where, notes)
        by_addon = (meta.get("labels") or {}).get("managed-by") == "azure-policy-addon"
        try:
            part = Policy(
                regex,
                strings(match.get("excludedNamespaces"), f"{where}: spec.match.excludedNamespaces"),
                strings(parameters.get("excludedContainers"), f"{where}: spec.parameters.excludedContainers"),
                origin=f"cluster constraint {name} (enforcementAction {action})",
                namespaces=strings(match.get("namespaces"), f"{where}: spec.match.namespaces"),
                label_selector=_selector(match.get("labelSelector"), f"{where}: spec.match.labelSelector"),
                namespace_selector=_selector(match.get("namespaceSelector"), f"{where}: spec.match.namespaceSelector"),
                name_pattern=match.get("name") or None,
                source=match.get("source") or None,
                system_namespaces=ALWAYS_EXCLUDED if by_addon else (),
                effect=effect,
                label=f"cluster constraint {name}",
                matches_pods=_matches_pods(match),
                exempt_namespaces=exempt_namespaces,
                webhook_selector=webhook_selector,
                namespace_labels=namespace_labels,
            )
        except PolicySourceError:
            raise
        except PolicyError as exc:
            raise PolicySourceError(f"reading the policy from the cluster: {where}: {exc}") from None
        parts.append(part)
        described.append(f"{name} (enforcementAction {action})")
        if notes is not None:
            if not part.matches_pods:
                notes.append(f"{where}: its match.kinds/scope do not select Pods; it refuses nothing")
            if parameters.get("excludedImages"):
                notes.append(f"{where} has excludedImages, which the allowed-images template does not read")
    if len(parts) == 1:
        return parts[0]
    return combine(parts, f"cluster constraints {', '.join(described)}: a pod must pass each")


def _list(api: Any, what: str, call: Any, **kwargs: Any) -> list[dict[str, Any]]:
    from .kube import paged

    return [item for page in paged(api, what, call, **kwargs) for item in page]


def list_constraints(api: Any) -> list[dict[str, Any]]:
    """Every K8sAzureV2ContainerAllowedImages constraint in the cluster, as JSON."""
    from .kube import ApiError, api_instance, status_message

    what = f"reading the policy from the cluster: listing {PLURAL}.{GROUP}/{VERSION}"
    call = api_instance(api, "CustomObjectsApi").list_cluster_custom_object
    try:
        return _list(api, what, call, group=GROUP, version=VERSION, plural=PLURAL)
    except ApiError as exc:
        if exc.status == 404:
            raise PolicySourceError(f"reading the policy from the cluster: the {KIND} constraint kind is not "
                                    f"installed ({GROUP}/{VERSION}; is the Azure Policy add-on or Gatekeeper "
                                    f"with its template installed?)") from None
        if exc.status == 403:
            raise PolicySourceError(f"{what}: forbidden; grant list on {PLURAL}.{GROUP} "
                                    f"({status_message(exc)})") from None
        raise PolicySourceError(f"{what}: {status_message(exc)}") from None


def read_gatekeeper(api: Any, notes: list[str] | None = None) -> dict[str, Any]:
    """What Gatekeeper itself exempts, and the Namespaces' labels: keyword arguments for
    policy_from_constraints. What cannot be read is said in `notes` and assumed not to exempt."""
    from .kube import ApiError, api_instance, status_message

    def note(text: str) -> None:
        if notes is not None:
            notes.append(text)

    found: dict[str, Any] = {}
    try:
        namespaces = _list(api, "listing namespaces", api_instance(api, "CoreV1Api").list_namespace)
        found["namespace_labels"] = {(n.get("metadata") or {}).get("name", ""): (n.get("metadata") or {}).get(
            "labels") or {} for n in namespaces}
    except ApiError as exc:
        note(f"listing namespaces: {status_message(exc)}; namespaceSelector and the webhook's namespaceSelector "
             f"are assumed to match")
    exempt: dict[str, list[str]] = {}
    try:
        configs = _list(api, "listing Gatekeeper's Config", api_instance(api, "CustomObjectsApi")
                        .list_cluster_custom_object, group=CONFIG_GROUP, version=CONFIG_VERSION, plural=CONFIG_PLURAL)
        for config in configs:
            if (config.get("metadata") or {}).get("name") != "config":
                continue  # Gatekeeper reads only the Config named "config"
            for entry in (config.get("spec") or {}).get("match") or ():
                processes = entry.get("processes") or []
                for process in ("webhook", "audit"):
                    if process in processes or "*" in processes:
                        exempt.setdefault(process, []).extend(entry.get("excludedNamespaces") or [])
    except ApiError as exc:
        if exc.status != 404:
            note(f"reading Gatekeeper's Config ({CONFIG_PLURAL}.{CONFIG_GROUP}): {status_message(exc)}; its "
                 f"exempt namespaces are not applied")
    found["exempt_namespaces"] = tuple((k, tuple(v)) for k, v in sorted(exempt.items()))
    selector: LabelSelector | None = DEFAULT_WEBHOOK_SELECTOR
    try:
        hooks = _list(api, "listing validating webhook configurations",
                      api_instance(api, "AdmissionregistrationV1Api").list_validating_webhook_configuration)
        for hook in (w for c in hooks for w in c.get("webhooks") or () if w.get("name") == WEBHOOK):
            selector = _selector(hook.get("namespaceSelector") or {}, f"webhook {WEBHOOK}: namespaceSelector")
            if hook.get("objectSelector"):
                note("Gatekeeper's webhook has an objectSelector, which acr-mirror does not apply (stricter)")
    except ApiError as exc:
        if exc.status != 404:
            note(f"reading Gatekeeper's webhook configuration: {status_message(exc)}; Gatekeeper's default "
                 f"applies (namespaces labelled admission.gatekeeper.sh/ignore are skipped)")
    found["webhook_selector"] = selector
    return found


def policy_from_cluster(api: Any, *, notes: list[str] | None = None) -> Policy:
    """The policy the cluster's K8sAzureV2ContainerAllowedImages constraints enforce (or will
    enforce once switched to deny), with Gatekeeper's exemptions and the Namespaces' labels."""
    constraints = list_constraints(api)
    return policy_from_constraints(constraints, notes, **read_gatekeeper(api, notes))


def policy_from_assignment(path: str | Path, *, notes: list[str] | None = None) -> Policy:
    """The policy of Azure Policy assignments, initiatives and exemptions exported as JSON
    (`az policy assignment show/list`, `az policy exemption list`, `az policy set-definition
    show`, the portal; one object, a list, or several concatenated in one list)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicySourceError(f"{path}: policy assignment file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicySourceError(f"{path}: cannot read the policy assignment: {exc}") from None
    except ValueError as exc:
        raise PolicySourceError(f"{path}: the policy assignment is not valid JSON: {exc}") from None
    if not isinstance(data, (dict, list)) or data == []:
        raise PolicySourceError(f"{path}: a policy assignment must be a JSON object (or a list of them)")
    return policy_from_documents([data], str(path), notes)
