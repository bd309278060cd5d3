"""Azure Policy as assigned: assignments of the allowed-images definition, directly or through
initiatives, with the definition's defaults and the exemptions that waive them -> a Policy.

Pure (no SDK, no I/O): `--policy-file` hands it what `az policy assignment show/list`,
`az policy exemption list`, `az policy set-definition show` or the portal export wrote;
`mirror.azure.policy` hands it what ARM answered. Shapes accepted: ARM's (`properties: {...}`),
the Azure CLI's flattened one, lists of them and `{"value": [...]}` pages, mixed in one list;
and, as before, a bare parameter mapping or an ARM parameter file (an assignment of this
definition with those parameters).

Semantics (learn.microsoft.com "Azure Policy assignment structure", "exemption structure",
"initiative definition structure"; the definition febd0533-8e55-448f-b837-bd0e06f16469 v9.2.0):

- parameter names are case-insensitive; what an assignment leaves out takes the definition's
  `defaultValue` (the definition in the input, else the published 9.2.0 defaults below);
- an initiative passes each of its definitions parameters written as `[parameters('x')]`
  (the assignment's x, else the initiative's defaultValue for x) or as literal values
  (`[[...` is a literal starting with `[`); the same definition may appear several times
  (several `policyDefinitionReferenceId`s): each is an assignment of its own;
- `enforcementMode: DoNotEnforce` does not enforce Deny: violations are reported, not refused;
- `overrides` of kind `policyEffect` replace the effect, for the references their
  `policyDefinitionReferenceId` selectors pick;
- an exemption (Waiver or Mitigated alike) waives the assignment named by
  `policyAssignmentId`, for an initiative only the `policyDefinitionReferenceIds` it lists (all
  when empty), until `expiresOn`;
- a pod must pass every assignment in force (admission runs them all).

What cannot be decided from here (resource selectors, a location) is resolved the strict way
(the assignment applies, the exemption does not) and said in a note.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from manifests_rewriter.errors import PolicyError
from manifests_rewriter.policy import (
    ALWAYS_EXCLUDED,
    AUDIT,
    DENY,
    DISABLED,
    EFFECT_NAMES,
    EFFECTS,
    LabelSelector,
    Policy,
    combine,
)

DEFINITION_NAME = "febd0533-8e55-448f-b837-bd0e06f16469"
DEFINITION_ID = f"/providers/Microsoft.Authorization/policyDefinitions/{DEFINITION_NAME}"
# The published definition's parameters and defaults (v9.2.0; tests compare them with the fixture).
DEFINITION_DEFAULTS: dict[str, Any] = {
    "warn": False,
    "effect": "Deny",
    "excludedNamespaces": ["kube-system", "gatekeeper-system", "azure-arc", "azure-extensions-usage-system"],
    "namespaces": [],
    "labelSelector": {},
    "excludedContainers": [],
}
PARAMETERS = ("allowedContainerImagesRegex", "excludedNamespaces", "namespaces", "labelSelector",
              "excludedContainers", "effect", "warn", "source")
REGEX_PARAMETER = "allowedContainerImagesRegex"
_EFFECTS = {"deny": DENY, "audit": AUDIT, "disabled": DISABLED}
_EXPRESSION = re.compile(r"\[\s*parameters\(\s*'([^']+)'\s*\)\s*\]")
_TYPES = {
    "microsoft.authorization/policyassignments": "assignment",
    "microsoft.authorization/policyexemptions": "exemption",
    "microsoft.authorization/policysetdefinitions": "set",
    "microsoft.authorization/policydefinitions": "definition",
}


class PolicySourceError(PolicyError):
    """No usable policy where we were told to look; one line, "doing what: cause"."""


def plain(value: Any) -> Any:
    """JSON-like Python values (the SDK's models are mappings of their REST JSON)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _props(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """ARM's `properties`, or the Azure CLI's flattened object itself."""
    props = obj.get("properties")
    return props if isinstance(props, Mapping) else obj


def _lower(text: Any) -> str:
    return text.lower().rstrip("/") if isinstance(text, str) else ""


def _get(mapping: Any, name: str) -> Any:
    """A key looked up case-insensitively (ARM parameter names are)."""
    if not isinstance(mapping, Mapping):
        return None
    if name in mapping:
        return mapping[name]
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() == name.lower():
            return value
    return None


def _has(mapping: Any, name: str) -> bool:
    return isinstance(mapping, Mapping) and any(isinstance(k, str) and k.lower() == name.lower() for k in mapping)


def _value(entry: Any) -> Any:
    """`{"value": X}` -> X (assignment and reference parameters); anything else as is."""
    return entry["value"] if isinstance(entry, Mapping) and "value" in entry else entry


def kind_of(obj: Mapping[str, Any]) -> str:
    """assignment | exemption | set | definition | parameters (a bare parameter mapping)."""
    known = _TYPES.get(_lower(obj.get("type")))
    if known:
        return known
    props = _props(obj)
    if "policyAssignmentId" in props:
        return "exemption"
    if "policyDefinitions" in props:
        return "set"
    if "policyRule" in props:
        return "definition"
    if "policyDefinitionId" in props:
        return "assignment"
    return "parameters"


@dataclass
class Documents:
    """What a file or ARM gave, sorted by kind."""

    assignments: list[dict[str, Any]] = field(default_factory=list)
    exemptions: list[dict[str, Any]] = field(default_factory=list)
    sets: list[dict[str, Any]] = field(default_factory=list)
    definitions: list[dict[str, Any]] = field(default_factory=list)

    def add(self, obj: Any, where: str) -> None:
        if isinstance(obj, list):
            for item in obj:
                self.add(item, where)
            return
        if not isinstance(obj, Mapping):
            raise PolicySourceError(f"{where}: expected JSON objects (assignments, exemptions, initiatives), "
                                    f"not {json.dumps(obj)[:60]}")
        if isinstance(obj.get("value"), list) and len(obj) <= 2:  # an ARM list page
            self.add(obj["value"], where)
            return
        kind = kind_of(obj)
        if kind == "parameters":
            obj = _legacy_assignment(obj, where)
            kind = "assignment"
        {"assignment": self.assignments, "exemption": self.exemptions, "set": self.sets,
         "definition": self.definitions}[kind].append(plain(obj))


def _legacy_assignment(obj: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A bare parameter mapping, `{"parameters": ...}` or an ARM parameter file: an assignment of
    this definition (acr-mirror read these before it read assignments)."""
    candidates = [_props(obj).get("parameters"), obj.get("parameters"), obj]
    parameters = next((c for c in candidates if isinstance(c, Mapping)
                       and (_has(c, REGEX_PARAMETER) or _has(c, "imageRegex"))), None)
    if parameters is None:
        raise PolicySourceError(f"{where}: no {REGEX_PARAMETER} parameter (looked in properties.parameters, "
                                f"parameters and the top level) and no policy assignment")
    parameters = {("allowedContainerImagesRegex" if k.lower() == "imageregex" else k): v
                  for k, v in parameters.items() if isinstance(k, str) and not k.startswith("$")}
    return {"name": obj.get("name") or _props(obj).get("displayName") or obj.get("displayName"),
            "properties": {"policyDefinitionId": DEFINITION_ID, "parameters": parameters}}


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("name") or _props(obj).get("displayName") or obj.get("id") or "").rsplit("/", 1)[-1]


def scope_of(resource_id: str) -> str:
    """The scope an assignment or exemption lives at (its id without the provider suffix)."""
    low = resource_id.lower()
    cut = low.find("/providers/microsoft.authorization/")
    return resource_id[:cut] if cut >= 0 else ""


def is_at_or_above(scope: str, target: str) -> bool:
    """Whether something at `scope` applies to `target` (ARM scopes: management groups above
    subscriptions above resource groups above resources). A management group is taken as an
    ancestor: ARM lists only those on the target's chain."""
    scope, target = _lower(scope), _lower(target)
    if scope.startswith("/providers/microsoft.management/managementgroups/") or scope in ("", "/"):
        return True
    return target == scope or target.startswith(scope + "/")


def _parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


@dataclass
class _Part:
    """One assignment of the definition (direct, or one reference of an initiative)."""

    assignment: dict[str, Any]
    name: str
    values: dict[str, Any]
    reference: str | None = None  # policyDefinitionReferenceId in an initiative
    initiative: str | None = None
    waived_by: str | None = None

    @property
    def label(self) -> str:
        where = f" ({self.reference} of initiative {self.initiative})" if self.reference else ""
        return f"assignment {self.name}{where}" if self.name else "the assignment"


class Resolver:
    """Turns Documents into the Policy in force; notes what was assumed or left out."""

    def __init__(self, documents: Documents, where: str, notes: list[str] | None = None, *,
                 scope: str | None = None, now: dt.datetime | None = None) -> None:
        self.docs = documents
        self.where = where
        self.notes = notes if notes is not None else []
        self.scope = scope
        self.now = now or dt.datetime.now(dt.UTC)
        self.defaults = self._definition_defaults()

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def _definition_defaults(self) -> dict[str, Any]:
        for definition in self.docs.definitions:
            if _lower(definition.get("name")) == DEFINITION_NAME or _lower(definition.get("id")).endswith(
                    DEFINITION_NAME):
                params = _props(definition).get("parameters") or {}
                return {k: v["defaultValue"] for k, v in params.items()
                        if isinstance(v, Mapping) and "defaultValue" in v}
        return dict(DEFINITION_DEFAULTS)

    # -- assignments -> parts

    def parts(self) -> list[_Part]:
        parts: list[_Part] = []
        others = 0
        for assignment in self.docs.assignments:
            props = _props(assignment)
            name = _name(assignment)
            if not self._applies(assignment, name):
                continue
            definition_id = _lower(props.get("policyDefinitionId"))
            if definition_id.endswith(f"/policydefinitions/{DEFINITION_NAME}"):
                values = self._with_defaults(props.get("parameters"), name)
                parts.append(_Part(assignment, name, values))
            elif "/policysetdefinitions/" in definition_id:
                parts.extend(self._initiative_parts(assignment, name, definition_id))
            else:
                others += 1
        if others:
            self._note(f"{self.where}: {others} assignment{'s' * (others != 1)} of other policy definitions ignored")
        return parts

    def _applies(self, assignment: Mapping[str, Any], name: str) -> bool:
        props = _props(assignment)
        if self.scope is None:
            if props.get("notScopes"):
                self._note(f"assignment {name} excludes {', '.join(props['notScopes'])} (notScopes): the file does "
                           f"not say which cluster is meant, so it is applied")
            return True
        at = props.get("scope") or scope_of(str(assignment.get("id") or ""))
        if not is_at_or_above(at, self.scope):
            self._note(f"assignment {name} is assigned at {at}, below {self.scope}: it applies there only, not "
                       f"read (give that scope to include it)")
            return False
        for not_scope in props.get("notScopes") or ():
            if is_at_or_above(not_scope, self.scope):
                self._note(f"assignment {name} does not apply to {self.scope} (notScopes {not_scope})")
                return False
            self._note(f"assignment {name} does not apply under {not_scope} (notScopes)")
        return True

    def _with_defaults(self, given: Any, name: str) -> dict[str, Any]:
        values = dict(self.defaults)
        for parameter, entry in (given or {}).items():
            canonical = next((p for p in PARAMETERS if p.lower() == parameter.lower()), parameter)
            values[canonical] = _value(entry)
        if not _has(given, "excludedNamespaces"):
            self._note(f"assignment {name}: no excludedNamespaces; the definition's default applies: "
                       f"{', '.join(values.get('excludedNamespaces') or [])}")
        return values

    def _set_definition(self, definition_id: str) -> dict[str, Any] | None:
        for candidate in self.docs.sets:
            if _lower(candidate.get("id")) == definition_id or (
                    not candidate.get("id") and _lower(candidate.get("name")) == definition_id.rsplit("/", 1)[-1]):
                return candidate
        return None

    def _initiative_parts(self, assignment: Mapping[str, Any], name: str, set_id: str) -> list[_Part]:
        initiative = self._set_definition(set_id)
        set_name = set_id.rsplit("/", 1)[-1]
        if initiative is None:
            self._note(f"assignment {name} assigns initiative {set_name}, whose definition is not in "
                       f"{self.where}: not read (add `az policy set-definition show --name {set_name}` output)")
            return []
        set_props = _props(initiative)
        given = _props(assignment).get("parameters") or {}
        set_defaults = {k: v.get("defaultValue") for k, v in (set_props.get("parameters") or {}).items()
                        if isinstance(v, Mapping) and "defaultValue" in v}
        parts = []
        for ref in set_props.get("policyDefinitions") or ():
            if not _lower(ref.get("policyDefinitionId")).endswith(f"/policydefinitions/{DEFINITION_NAME}"):
                continue
            ref_id = str(ref.get("policyDefinitionReferenceId") or DEFINITION_NAME)
            passed: dict[str, Any] = {}
            for parameter, entry in (ref.get("parameters") or {}).items():
                passed[parameter] = {"value": self._evaluate(_value(entry), given, set_defaults,
                                                             f"initiative {set_name}, reference {ref_id}, "
                                                             f"parameter {parameter}")}
            passed = {k: v for k, v in passed.items() if v["value"] is not _MISSING}
            values = self._with_defaults(passed, f"{name} ({ref_id})")
            parts.append(_Part(dict(assignment), name, values, ref_id, set_name))
        if not parts:
            self._note(f"assignment {name}: initiative {set_name} does not include the allowed-images definition")
        return parts

    def _evaluate(self, value: Any, given: Mapping[str, Any], set_defaults: Mapping[str, Any], where: str) -> Any:
        """A parameter value in an initiative: `[parameters('x')]` or a literal."""
        if not isinstance(value, str) or not value.startswith("["):
            return value
        if value.startswith("[["):
            return value[1:]  # ARM's escape for a literal starting with '['
        match = _EXPRESSION.fullmatch(value.strip())
        if match is None:
            raise PolicySourceError(f"{self.where}: {where}: the expression {value!r} is not supported "
                                    f"(only [parameters('name')])")
        parameter = match.group(1)
        if _has(given, parameter):
            return _value(_get(given, parameter))
        if _has(set_defaults, parameter):
            return _get(set_defaults, parameter)
        return _MISSING

    # -- exemptions

    def apply_exemptions(self, parts: list[_Part]) -> None:
        for exemption in self.docs.exemptions:
            props = _props(exemption)
            name = _name(exemption)
            target = _lower(props.get("policyAssignmentId"))
            hit = [p for p in parts if _lower(p.assignment.get("id")) == target]
            if not hit:
                self._note(f"exemption {name} is for {props.get('policyAssignmentId')}, not among the "
                           f"assignments read: ignored")
                continue
            expires = _parse_time(props.get("expiresOn"))
            if expires is not None and expires <= self.now:
                self._note(f"exemption {name} expired on {props.get('expiresOn')}: ignored")
                continue
            if props.get("resourceSelectors"):
                self._note(f"exemption {name} has resourceSelectors, which acr-mirror cannot evaluate: not applied")
                continue
            if self.scope is not None:
                at = scope_of(str(exemption.get("id") or ""))
                if at and not is_at_or_above(at, self.scope):
                    self._note(f"exemption {name} at {at} waives {hit[0].label} there only, not for all of "
                               f"{self.scope}: not applied")
                    continue
            references = [r.lower() for r in props.get("policyDefinitionReferenceIds") or ()]
            category = props.get("exemptionCategory") or "Waiver"
            until = f", until {props['expiresOn']}" if props.get("expiresOn") else ""
            for part in hit:
                if references and (part.reference or "").lower() not in references:
                    continue
                part.waived_by = f"exemption {name} ({category}{until})"

    # -- parts -> Policy

    def effect_of(self, part: _Part) -> str:
        props = _props(part.assignment)
        raw = part.values.get("effect")
        effect = _EFFECTS.get(str(raw).lower())
        if effect is None:
            raise PolicySourceError(f"{self.where}: {part.label}: effect {raw!r} is not Deny, Audit or Disabled")
        for override in props.get("overrides") or ():
            if str(override.get("kind", "")).lower() != "policyeffect":
                continue
            new = _EFFECTS.get(str(override.get("value")).lower())
            if new is None:
                continue
            chosen = self._override_applies(override, part)
            if chosen is None:  # cannot tell: the stricter of the two
                self._note(f"{part.label}: an effect override has selectors acr-mirror cannot evaluate; the "
                           f"stricter effect is used")
                new = min(effect, new, key=EFFECTS.index)
                chosen = True
            if chosen:
                effect = new
        if effect == DENY and str(props.get("enforcementMode", "Default")).lower() == "donotenforce":
            self._note(f"{part.label}: enforcementMode DoNotEnforce: Deny is not enforced, violations are reported")
            effect = AUDIT
        return effect

    @staticmethod
    def _override_applies(override: Mapping[str, Any], part: _Part) -> bool | None:
        for selector in override.get("selectors") or ():
            if str(selector.get("kind", "")).lower() != "policydefinitionreferenceid":
                return None
            reference = (part.reference or "").lower()
            if "in" in selector and reference not in [str(x).lower() for x in selector["in"] or ()]:
                return False
            if "notIn" in selector and reference in [str(x).lower() for x in selector["notIn"] or ()]:
                return False
        return True

    def policy_of(self, part: _Part) -> Policy:
        values = part.values
        at = f"{self.where}: {part.label}"
        regex = values.get(REGEX_PARAMETER)
        if not isinstance(regex, str) or not regex:
            raise PolicySourceError(f"{at}: {REGEX_PARAMETER} must be a non-empty string")
        selector = values.get("labelSelector")
        source = values.get("source")
        if source is not None:
            self._note(f"{part.label}: parameter source={source!r} (not in the published definition 9.2.0) is "
                       f"applied as Gatekeeper's match.source")
        effect = self.effect_of(part)
        warn = values.get("warn")
        try:
            return Policy(
                regex,
                strings(values.get("excludedNamespaces"), f"{at}: excludedNamespaces"),
                strings(values.get("excludedContainers"), f"{at}: excludedContainers"),
                origin=f"Azure Policy assignment {self.where} ("
                       f"{part.label.removeprefix('assignment ').removeprefix('the assignment')}"
                       f"{', ' if part.name else ''}effect {EFFECT_NAMES[effect]})",
                namespaces=strings(values.get("namespaces"), f"{at}: namespaces"),
                label_selector=LabelSelector.parse(selector, f"{at}: labelSelector") if selector else None,
                source=str(source) if source is not None else None,
                system_namespaces=ALWAYS_EXCLUDED,
                effect=effect,
                warn=warn is True or str(warn).lower() == "true",
                label=part.label,
                regex_parameter=REGEX_PARAMETER,
                waived_by=part.waived_by,
            )
        except PolicySourceError:
            raise
        except PolicyError as exc:
            raise PolicySourceError(f"{at}: {exc}") from None

    def policy(self) -> Policy:
        parts = self.parts()
        if not parts:
            raise PolicySourceError(f"{self.where}: no assignment of the allowed-images definition "
                                    f"({DEFINITION_NAME}) is in force here")
        self.apply_exemptions(parts)
        policies = [self.policy_of(p) for p in parts]
        if len(policies) == 1:
            return policies[0]
        described = ", ".join(f"{p.label} (effect {EFFECT_NAMES[p.effect]})" for p in policies)
        return combine(policies, f"Azure Policy {described}: a pod must pass each")


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Any = _Missing()


def strings(value: Any, where: str) -> tuple[str, ...]:
    """A parameter that must be a list of strings (a constraint's or an assignment's)."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicySourceError(f"{where}: must be a list of strings, not {json.dumps(value)[:80]}")
    return tuple(value)


def policy_from_documents(documents: Iterable[Any] | Documents, where: str, notes: list[str] | None = None, *,
                          scope: str | None = None, now: dt.datetime | None = None) -> Policy:
    """The Policy the given assignments, initiatives and exemptions put in force."""
    if not isinstance(documents, Documents):
        found = Documents()
        for document in documents:
            found.add(document, where)
        documents = found
    return Resolver(documents, where, notes, scope=scope, now=now).policy()
