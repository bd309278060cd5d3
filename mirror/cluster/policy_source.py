"""Where the policy comes from when it is not in the config: the cluster, or an Azure Policy
assignment exported as JSON.

From the cluster: the Gatekeeper constraints of kind `K8sAzureV2ContainerAllowedImages`
(`constraints.gatekeeper.sh/v1beta1`, created by the Azure Policy add-on from the
assignment): `spec.parameters.imageRegex`, `spec.parameters.excludedContainers`,
`spec.match.excludedNamespaces`, `spec.enforcementAction` (Gatekeeper's default is deny).

Every constraint counts, whatever its enforcementAction: before the switch to deny the
constraint is in `dryrun` (Azure "Audit") or `warn`, and that is exactly the policy that
deny will enforce. Several constraints are combined *strictly*, as admission applies
them: a container is refused when any constraint refuses it. So a namespace or container
is excluded only when every constraint excludes it, and when the regexes differ an image
must match all of them (a `StrictPolicy`, which `Policy.refuses` callers use unchanged).
`origin` names every constraint and its enforcementAction. `match.namespaces`,
`match.labelSelector` and `match.namespaceSelector` narrow a constraint; they are not
modelled (the result is stricter than Gatekeeper, never laxer) and a note says so.

From an assignment: `az policy assignment show` output (`properties.parameters.X.value`),
the flattened form (`parameters.X.value`), an ARM parameter file, or a plain mapping of
parameter names to values; parameters `allowedContainerImagesRegex` (or `imageRegex`),
`excludedNamespaces`, `excludedContainers`, `effect`. When the assignment leaves
`excludedNamespaces` out, the built-in definition's default applies and is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manifests_rewriter.policy import Policy, PolicyError

GROUP = "constraints.gatekeeper.sh"
VERSION = "v1beta1"
KIND = "K8sAzureV2ContainerAllowedImages"
PLURAL = "k8sazurev2containerallowedimages"
# The built-in definition's default for excludedNamespaces ("Kubernetes cluster containers
# should only use allowed images", febd0533-8e55-448f-b837-bd0e06f16469).
DEFINITION_EXCLUDED_NAMESPACES = ("kube-system", "gatekeeper-system", "azure-arc", "azure-extensions-usage-system")


class PolicySourceError(PolicyError):
    """No usable policy where we were told to look; one line, "doing what: cause"."""


@dataclass(frozen=True)
class StrictPolicy(Policy):
    """Several constraints at once: refused when any part refuses (admission runs them all).

    `image_regex`, `excluded_namespaces` and `excluded_containers` describe the first part
    (and the exclusions common to all); `parts` are the constraints themselves."""

    parts: tuple[Policy, ...] = field(default=())

    def allows(self, image: str) -> bool:
        return all(p.allows(image) for p in self.parts)

    def namespace_excluded(self, namespace: str | None) -> bool:
        return all(p.namespace_excluded(namespace) for p in self.parts)

    def container_excluded(self, container: str | None) -> bool:
        return all(p.container_excluded(container) for p in self.parts)

    def refuses(self, image: str, *, namespace: str | None = None, container: str | None = None) -> bool:
        return any(p.refuses(image, namespace=namespace, container=container) for p in self.parts)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicySourceError(f"{where}: must be a list of strings, not {json.dumps(value)[:80]}")
    return tuple(value)


def policy_from_constraints(constraints: list[dict[str, Any]], notes: list[str] | None = None) -> Policy:
    """The policy of these constraint objects (as listed from the API), combined strictly."""
    if not constraints:
        raise PolicySourceError(f"reading the policy from the cluster: no {KIND} constraint exists "
                                f"(is the allowed-images policy assigned?); give policy: in the config instead")
    parts: list[Policy] = []
    described: list[str] = []
    for obj in sorted(constraints, key=lambda o: (o.get("metadata") or {}).get("name", "")):
        name = (obj.get("metadata") or {}).get("name", "?")
        spec = obj.get("spec") or {}
        parameters = spec.get("parameters") or {}
        match = spec.get("match") or {}
        where = f"constraint {name}"
        regex = parameters.get("imageRegex")
        if not isinstance(regex, str) or not regex:
            raise PolicySourceError(f"reading the policy from the cluster: {where} has no spec.parameters.imageRegex")
        action = spec.get("enforcementAction") or "deny"
        try:
            part = Policy(regex, _strings(match.get("excludedNamespaces"), f"{where}: spec.match.excludedNamespaces"),
                          _strings(parameters.get("excludedContainers"), f"{where}: spec.parameters.excludedContainers"),
                          origin=f"cluster constraint {name} (enforcementAction {action})")
        except PolicySourceError:
            raise
        except PolicyError as exc:
            raise PolicySourceError(f"reading the policy from the cluster: {where}: {exc}") from None
        parts.append(part)
        described.append(f"{name} (enforcementAction {action})")
        if notes is not None:
            narrowing = [k for k in ("namespaces", "labelSelector", "namespaceSelector") if match.get(k)]
            if narrowing:
                notes.append(f"{where} narrows its scope with match.{', match.'.join(narrowing)}; acr-mirror applies "
                             f"it everywhere outside the excluded namespaces (stricter, never laxer)")
            if parameters.get("excludedImages"):
                notes.append(f"{where} has excludedImages, which acr-mirror does not apply (stricter)")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    common_ns = tuple(n for n in first.excluded_namespaces if all(n in p.excluded_namespaces for p in parts))
    common_containers = tuple(c for c in first.excluded_containers if all(c in p.excluded_containers for p in parts))
    origin = f"cluster constraints {', '.join(described)}, combined: refused when any refuses"
    if all(p.image_regex == first.image_regex for p in parts) and all(
            set(p.excluded_namespaces) == set(common_ns) and set(p.excluded_containers) == set(common_containers)
            for p in parts):
        return Policy(first.image_regex, common_ns, common_containers, origin=origin)
    return StrictPolicy(first.image_regex, common_ns, common_containers, origin=origin, parts=tuple(parts))


def list_constraints(api: Any) -> list[dict[str, Any]]:
    """Every K8sAzureV2ContainerAllowedImages constraint in the cluster, as JSON."""

    from .kube import ApiError, api_instance, paged, status_message

    what = f"reading the policy from the cluster: listing {PLURAL}.{GROUP}/{VERSION}"
    call = api_instance(api, "CustomObjectsApi").list_cluster_custom_object
    try:
        return [item for page in paged(api, what, call, group=GROUP, version=VERSION, plural=PLURAL) for item in page]
    except ApiError as exc:
        if exc.status == 404:
            raise PolicySourceError(f"reading the policy from the cluster: the {KIND} constraint kind is not "
                                    f"installed ({GROUP}/{VERSION}; is the Azure Policy add-on or Gatekeeper "
                                    f"with its template installed?)") from None
        if exc.status == 403:
            raise PolicySourceError(f"{what}: forbidden; grant list on {PLURAL}.{GROUP} "
                                    f"({status_message(exc)})") from None
        raise PolicySourceError(f"{what}: {status_message(exc)}") from None


def policy_from_cluster(api: Any, *, notes: list[str] | None = None) -> Policy:
    """The policy the cluster's K8sAzureV2ContainerAllowedImages constraints enforce (or will
    enforce once switched to deny). Notes on what is not modelled go to `notes`."""
    return policy_from_constraints(list_constraints(api), notes)


def _param(parameters: Any, *names: str) -> Any:
    if not isinstance(parameters, dict):
        return None
    for name in names:
        if name in parameters:
            value = parameters[name]
            return value.get("value") if isinstance(value, dict) and "value" in value else value
    return None


def policy_from_assignment(path: str | Path, *, notes: list[str] | None = None) -> Policy:
    """The policy of an Azure Policy assignment exported as JSON (`az policy assignment show`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicySourceError(f"{path}: policy assignment file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicySourceError(f"{path}: cannot read the policy assignment: {exc}") from None
    except ValueError as exc:
        raise PolicySourceError(f"{path}: the policy assignment is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PolicySourceError(f"{path}: a policy assignment must be a JSON object")
    properties: dict[str, Any] = data["properties"] if isinstance(data.get("properties"), dict) else {}
    candidates = [properties.get("parameters"), data.get("parameters"), data]
    parameters = next((c for c in candidates if _param(c, "allowedContainerImagesRegex", "imageRegex") is not None),
                      None)
    if parameters is None:
        raise PolicySourceError(f"{path}: no allowedContainerImagesRegex parameter (looked in properties.parameters, "
                                f"parameters and the top level)")
    regex = _param(parameters, "allowedContainerImagesRegex", "imageRegex")
    if not isinstance(regex, str) or not regex:
        raise PolicySourceError(f"{path}: allowedContainerImagesRegex must be a non-empty string")
    namespaces = _param(parameters, "excludedNamespaces")
    if namespaces is None:
        namespaces = list(DEFINITION_EXCLUDED_NAMESPACES)
        if notes is not None:
            notes.append(f"{path}: no excludedNamespaces in the assignment; the definition's default applies: "
                         f"{', '.join(DEFINITION_EXCLUDED_NAMESPACES)}")
    containers = _param(parameters, "excludedContainers")
    effect = _param(parameters, "effect")
    name = data.get("name") or properties.get("displayName") or data.get("displayName")
    label = f"Azure Policy assignment {path}" + (f" ({name}" + (f", effect {effect})" if effect else ")")
                                                 if name else f" (effect {effect})" if effect else "")
    try:
        return Policy(regex, _strings(namespaces, f"{path}: excludedNamespaces"),
                      _strings(containers, f"{path}: excludedContainers"), origin=label)
    except PolicySourceError:
        raise
    except PolicyError as exc:
        raise PolicySourceError(f"{path}: allowedContainerImagesRegex: {exc}") from None
