"""The allow policy with Gatekeeper's and Azure Policy's exact semantics.

One `Policy` is one assignment of the built-in definition "Kubernetes cluster containers
should only use allowed images" (febd0533-8e55-448f-b837-bd0e06f16469), or one Gatekeeper
constraint made from it, or the config's `policy:` section. Admission sees a Pod and decides,
in this order (`Policy.decide`):

1. the assignment is waived by a policy exemption, or its constraint does not match Pods
   (`match.kinds`, `match.scope`): nothing is checked;
2. the namespace is one the definition always excludes by design (kube-system,
   gatekeeper-system, azure-arc), or one Gatekeeper itself exempts (its `Config`, its webhook's
   namespaceSelector);
3. Gatekeeper's `match`: `namespaces` (only these; prefix/suffix `*` globs, pkg/wildcard),
   `excludedNamespaces` (same globs), `labelSelector` against the Pod's labels (for a workload:
   its pod template's, plus the keys its controller adds), `namespaceSelector` against the
   namespace's labels, `name`, `source`;
4. the template: containers whose name is in `excludedContainers` (exact) are skipped; a
   container is a violation when `re_match(imageRegex, image)` is false: an unanchored RE2
   search on the image exactly as written.

A violation is refused at admission when the effect is Deny (Gatekeeper enforcementAction
`deny`); Audit (`dryrun`), `warn` and Disabled report it without refusing. acr-mirror reports
every violation as a finding and says which: the question is what the switch to Deny refuses.

What acr-mirror cannot know from a file (a manifest without a namespace, Helm values without
labels, a label value the controller generates) is assumed to let the policy apply: such a
verdict is stricter than admission, never laxer, and says what it assumed (`Verdict.assumed`).
`PolicySet` holds several assignments: admission runs them all, a container must pass each.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import re2

from .errors import PolicyError
from .reference import ImageRef

# The definition's own words: 'System namespaces "kube-system", "gatekeeper-system" and
# "azure-arc" are always excluded by design.' (parameter excludedNamespaces, v9.2.0)
ALWAYS_EXCLUDED = ("kube-system", "gatekeeper-system", "azure-arc")

# Effects, most severe first. Azure Deny = Gatekeeper deny; Audit = dryrun.
DENY, WARN, AUDIT, DISABLED = "deny", "warn", "audit", "disabled"
EFFECTS = (DENY, WARN, AUDIT, DISABLED)
EFFECT_NAMES = {DENY: "Deny", WARN: "warn", AUDIT: "Audit", DISABLED: "Disabled"}

# Labels the controllers add to the pods they create (values generated, so unknown here: None).
CONTROLLER_LABELS: dict[str, tuple[str, ...]] = {
    "Deployment": ("pod-template-hash",),
    "StatefulSet": ("controller-revision-hash", "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index"),
    "DaemonSet": ("controller-revision-hash", "pod-template-generation"),
    "Job": ("controller-uid", "job-name", "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name"),
    "CronJob": ("controller-uid", "job-name", "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name"),
}

Labels = Mapping[str, "str | None"]  # label -> value; None: the label is there, its value unknown


def compile_regex(pattern: str) -> re2._Regexp:
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own copy of the error to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PolicyError(f"imageRegex {pattern!r} is not a valid RE2 expression: {reason}") from None


def wildcard_matches(pattern: str, candidate: str) -> bool:
    """Gatekeeper's pkg/wildcard Wildcard.Matches: `*x*` contains, `*x` suffix, `x*` prefix,
    else equality. A lone `*` matches everything."""
    if pattern.startswith("*") and pattern.endswith("*"):
        return pattern[1:-1] in candidate  # one '*' off each end (TrimPrefix, TrimSuffix); "*" -> ""
    if pattern.startswith("*"):
        return candidate.endswith(pattern[1:])
    if pattern.endswith("*"):
        return candidate.startswith(pattern[:-1])
    return candidate == pattern


# ----------------------------------------------------------------------------- label selectors

_NAME = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
_LABEL_KEY = re.compile(rf"(?:(?:[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?{_NAME}")
_LABEL_VALUE = re.compile(rf"(?:{_NAME})?")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist (matchLabels entries are In with one value)
    values: tuple[str, ...] = ()

    def matches(self, labels: Labels) -> bool | None:
        """k8s.io/apimachinery labels.Requirement.Matches; None when it depends on an unknown value."""
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        value = labels.get(self.key)
        if not present:
            return self.operator == "NotIn"
        if value is None:
            return None
        return (value in self.values) is (self.operator == "In")

    def __str__(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        if self.operator == "In" and len(self.values) == 1:
            return f"{self.key}={self.values[0]}"
        return f"{self.key} {'in' if self.operator == 'In' else 'notin'} ({','.join(self.values)})"


@dataclass(frozen=True)
class LabelSelector:
    """A metav1.LabelSelector: matchLabels and matchExpressions ANDed; empty matches everything."""

    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, data: Any, where: str) -> LabelSelector:
        """Checked as metav1.LabelSelectorAsSelector does; a PolicyError naming `where` otherwise."""
        if not isinstance(data, Mapping):
            raise PolicyError(f"{where}: a label selector must be a mapping with matchLabels/matchExpressions")
        unknown = set(data) - {"matchLabels", "matchExpressions"}
        if unknown:
            raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: matchLabels, matchExpressions)")
        requirements: list[Requirement] = []
        labels = data.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise PolicyError(f"{where}.matchLabels: must be a mapping of label to value")
        for key, value in labels.items():
            if not isinstance(value, str):
                raise PolicyError(f"{where}.matchLabels.{key}: the value must be a string")
            requirements.append(_requirement(str(key), "In", [value], f"{where}.matchLabels"))
        expressions = data.get("matchExpressions") or []
        if not isinstance(expressions, list):
            raise PolicyError(f"{where}.matchExpressions: must be a list")
        for i, expr in enumerate(expressions):
            at = f"{where}.matchExpressions[{i}]"
            if not isinstance(expr, Mapping) or not isinstance(expr.get("key"), str):
                raise PolicyError(f"{at}: needs a key and an operator")
            requirements.append(_requirement(expr["key"], expr.get("operator"), expr.get("values"), at))
        return cls(tuple(requirements))

    def matches(self, labels: Labels | None) -> bool | None:
        """True/False; None when the answer depends on labels that are not known."""
        if not self.requirements:
            return True
        if labels is None:
            return None
        unknown = False
        for requirement in self.requirements:
            verdict = requirement.matches(labels)
            if verdict is False:
                return False
            unknown = unknown or verdict is None
        return None if unknown else True

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements) or "<everything>"


def _requirement(key: str, operator: Any, values: Any, where: str) -> Requirement:
    if operator not in OPERATORS:
        raise PolicyError(f"{where}: operator {operator!r} is not one of {', '.join(OPERATORS)}")
    if not _LABEL_KEY.fullmatch(key) or len(key.partition("/")[0]) > 253 and "/" in key:
        raise PolicyError(f"{where}: {key!r} is not a valid label key")
    if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
        raise PolicyError(f"{where}: values must be a list of strings")
    values = list(values or [])
    if operator in ("In", "NotIn") and not values:
        raise PolicyError(f"{where}: operator {operator} needs values")
    if operator in ("Exists", "DoesNotExist") and values:
        raise PolicyError(f"{where}: operator {operator} takes no values")
    for value in values:
        if not _LABEL_VALUE.fullmatch(value):
            raise PolicyError(f"{where}: {value!r} is not a valid label value")
    return Requirement(key, operator, tuple(values))


def pod_labels(template: Labels | None, kind: str | None, name: str | None = None) -> Labels | None:
    """The labels of the pods a workload creates: its template's, plus those its controller adds
    (values unknown, except a Job's job-name)."""
    if template is None:
        return None
    added = CONTROLLER_LABELS.get(kind or "")
    if not added:
        return template
    labels: dict[str, str | None] = {key: None for key in added}
    if kind == "Job" and name:
        labels["job-name"] = labels["batch.kubernetes.io/job-name"] = name
    labels.update(template)  # the template's own values win, as in the pod the controller makes
    return labels


# ----------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """What one assignment (or all of them, for a PolicySet) says about one container.

    `finding`: an assignment in force flags it (whatever its effect); `effect` is then that
    assignment's. Otherwise `parameter` names what let it pass (a namespace exclusion, the
    regex...). `assumed` says what was assumed because acr-mirror could not know it."""

    finding: bool
    assignment: str
    parameter: str
    why: str
    effect: str | None = None
    warn: bool = False
    assumed: str | None = None
    parts: tuple[Verdict, ...] = ()  # each assignment's own verdict (several assignments)

    @property
    def refused(self) -> bool:
        return self.finding and self.effect == DENY

    def consequence(self) -> str:
        """What happens at admission, in words."""
        if not self.finding:
            return "allowed"
        if self.effect == DENY:
            return "refused at admission"
        if self.effect == WARN:
            return "would be reported, not refused (warn: kubectl shows a warning)"
        if self.effect == AUDIT:
            return "would be reported, not refused (effect Audit)" + ("; kubectl warns" if self.warn else "")
        return "would be reported, not refused (effect Disabled: not evaluated until the effect changes)"

    def reason(self) -> str:
        text = f"{self.why} ({self.assignment}; {self.consequence()})"
        return f"{text}; assumed: {self.assumed}" if self.assumed else text


def _assume(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


@dataclass(frozen=True)
class Policy:
    """One assignment or constraint (see the module docstring for the order of the checks)."""

    image_regex: str
    excluded_namespaces: tuple[str, ...] = ()
    excluded_containers: tuple[str, ...] = ()
    origin: str = "config"  # where it came from, shown to the user
    namespaces: tuple[str, ...] = ()  # only these (globs); empty: all
    label_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    name_pattern: str | None = None  # Gatekeeper match.name (glob on the pod's name)
    source: str | None = None  # Gatekeeper match.source: All | Original | Generated
    system_namespaces: tuple[str, ...] = ()  # excluded whatever the parameters say (ALWAYS_EXCLUDED)
    effect: str = DENY
    warn: bool = False
    label: str = ""  # which assignment, in a few words ("assignment allowed-images"); origin when empty
    regex_parameter: str = "imageRegex"  # its name where it came from (allowedContainerImagesRegex)
    namespace_parameter: str = "excludedNamespaces"
    matches_pods: bool = True  # match.kinds and match.scope let Pods in
    waived_by: str | None = None  # a policy exemption that waives this assignment
    exempt_namespaces: tuple[tuple[str, tuple[str, ...]], ...] = ()  # Gatekeeper Config: (process, globs)
    webhook_selector: LabelSelector | None = None  # the Gatekeeper webhook's namespaceSelector
    namespace_labels: Mapping[str, Labels] | None = field(default=None, compare=False)  # the cluster's namespaces
    _compiled: object = field(default=None, compare=False, repr=False)

    _verdicts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", compile_regex(self.image_regex))
        if self.effect not in EFFECTS:
            raise PolicyError(f"effect {self.effect!r} is not one of {', '.join(EFFECT_NAMES.values())}")

    def __getstate__(self) -> dict[str, object]:  # RE2 objects do not pickle: recompiled on load
        state = dict(self.__dict__)
        state.pop("_compiled", None)
        state["_verdicts"] = {}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_compiled", compile_regex(self.image_regex))

    @property
    def name(self) -> str:
        return self.label or self.origin

    @property
    def parts(self) -> tuple[Policy, ...]:
        return (self,)

    def allows(self, image: str) -> bool:
        """True when Gatekeeper's re_match(imageRegex, image) holds: unanchored RE2 search."""
        verdict = self._verdicts.get(image)
        if verdict is None:  # a tree repeats the same few images; RE2's Python binding is not free
            verdict = self._compiled.search(image) is not None  # type: ignore[attr-defined]
            if len(self._verdicts) < 65536:
                self._verdicts[image] = verdict
        return verdict

    def namespace_excluded(self, namespace: str | None) -> bool:
        """Nothing in this namespace can be a finding of this assignment, whatever the pod:
        system namespaces, Gatekeeper's exemptions, namespaces, excludedNamespaces, namespaceSelector."""
        return bool(namespace) and self._namespace_pass(namespace) is not None

    def container_excluded(self, container: str | None) -> bool:
        return container is not None and container in self.excluded_containers

    def refuses(self, image: str, *, namespace: str | None = None, container: str | None = None,
                labels: Labels | None = None, kind: str | None = None, name: str | None = None) -> bool:
        """Would an assignment in force flag this container (refuse it, or report it)?"""
        return self.decide(image, namespace=namespace, container=container, labels=labels, kind=kind,
                           name=name).finding

    def decide_field(self, fld: Any) -> Verdict:
        """The verdict for a located image field (anything with value, namespace, container,
        labels, kind, name)."""
        return self.decide(fld.value, namespace=fld.namespace, container=fld.container,
                           labels=getattr(fld, "labels", None), kind=fld.kind, name=fld.name)

    def _pass(self, parameter: str, why: str, assumed: list[str]) -> Verdict:
        return Verdict(False, self.name, parameter, why, assumed="; ".join(assumed) or None)

    def decide(self, image: str, *, namespace: str | None = None, container: str | None = None,
               labels: Labels | None = None, kind: str | None = None, name: str | None = None) -> Verdict:
        """This assignment's verdict on one container of a pod (see the module docstring).
        `labels`: the pod's labels (for a workload, its template's; controller labels are added
        here from `kind`); None when not known. `kind`/`name`: the object as written."""
        assumed: list[str] = []
        skipped = self._namespace_pass(namespace)
        if skipped is not None:
            return self._pass(*skipped, assumed)
        if not namespace and self.namespaces:
            _assume(assumed, "the namespace is not set here: assumed to be one of namespaces")
        if self.label_selector is not None:
            matched = self.label_selector.matches(pod_labels(labels, kind, name))
            if matched is False:
                return self._pass("labelSelector", f"the pod's labels do not match labelSelector "
                                                   f"{self.label_selector}", assumed)
            if matched is None:
                _assume(assumed, f"labelSelector {self.label_selector} assumed to match (the pod's labels "
                                 f"are not all known here)")
        if self.namespace_selector is not None:
            matched = self.namespace_selector.matches(self._labels_of(namespace))
            if matched is None:
                _assume(assumed, f"namespaceSelector {self.namespace_selector} assumed to match (namespace "
                                 f"{namespace or '(not set)'} is not known)")
        if self.name_pattern:
            if kind == "Pod" and name:
                if not wildcard_matches(self.name_pattern, name):
                    return self._pass("name", f"pod name {name} does not match {self.name_pattern}", assumed)
            else:
                _assume(assumed, f"match.name {self.name_pattern} assumed to match the generated pod names")
        if self.source == "Generated":
            if kind == "Pod":
                return self._pass("source", "match.source Generated: pods created directly are not checked",
                                  assumed)
            _assume(assumed, "match.source Generated: refused only where an ExpansionTemplate expands this kind")
        if self.container_excluded(container):
            return self._pass("excludedContainers", f"container {container} is excluded", assumed)
        if self.allows(image):
            return self._pass(self.regex_parameter, f"matches {self.regex_parameter}", assumed)
        return Verdict(True, self.name, self.regex_parameter, f"does not match {self.regex_parameter} "
                       f"{self.image_regex!r}", self.effect, self.warn, "; ".join(assumed) or None)

    def _namespace_pass(self, namespace: str | None) -> tuple[str, str] | None:
        """(parameter, why) when nothing in this namespace can be a finding of this assignment."""
        if self.waived_by:
            return "exemption", f"waived by {self.waived_by}"
        if not self.matches_pods:
            return "kinds", "the constraint does not match Pods"
        if not namespace:
            return None
        for pattern in self.system_namespaces:
            if wildcard_matches(pattern, namespace):
                return "system namespace", f"namespace {namespace} is always excluded by the definition"
        exempt = self._gatekeeper_exempt(namespace)
        if exempt:
            return exempt
        if self.namespaces and not any(wildcard_matches(p, namespace) for p in self.namespaces):
            return "namespaces", f"namespace {namespace} is not in namespaces {list(self.namespaces)}"
        for pattern in self.excluded_namespaces:
            if wildcard_matches(pattern, namespace):
                return self.namespace_parameter, f"namespace {namespace} is excluded ({pattern})"
        if self.namespace_selector is not None and self.namespace_selector.matches(self._labels_of(namespace)) is False:
            return ("namespaceSelector", f"namespace {namespace}'s labels do not match namespaceSelector "
                                         f"{self.namespace_selector}")
        return None

    def _labels_of(self, namespace: str | None) -> Labels | None:
        if not namespace or self.namespace_labels is None:
            return None
        return self.namespace_labels.get(namespace)

    def _gatekeeper_exempt(self, namespace: str) -> tuple[str, str] | None:
        """Gatekeeper skips the namespace: its Config for the process that decides (the webhook
        refuses and warns; audit reports dryrun), or its webhook's namespaceSelector."""
        process = "audit" if self.effect in (AUDIT, DISABLED) else "webhook"
        for pattern in dict(self.exempt_namespaces).get(process, ()):
            if wildcard_matches(pattern, namespace):
                return "Gatekeeper Config", f"namespace {namespace} is exempt from Gatekeeper's {process} ({pattern})"
        selector = self.webhook_selector if process == "webhook" else None
        if selector is not None and selector.matches(self._labels_of(namespace)) is False:
            return ("webhook namespaceSelector", f"Gatekeeper's webhook skips namespace {namespace} "
                                                 f"(namespaceSelector {selector})")
        return None


@dataclass(frozen=True)
class PolicySet(Policy):
    """Several assignments at once: admission runs them all, so a container must pass each.

    `image_regex` and the exclusions describe the first part (for display); `allows()` holds
    when every part's regex allows the image; `decide()` gives the most severe finding (Deny,
    then warn, Audit, Disabled) or, when every part lets the container pass, the first part's
    reason, with each part's own verdict in `parts`."""

    members: tuple[Policy, ...] = field(default=())

    @property
    def parts(self) -> tuple[Policy, ...]:
        return self.members

    def allows(self, image: str) -> bool:
        return all(p.allows(image) for p in self.members)

    def namespace_excluded(self, namespace: str | None) -> bool:
        return all(p.namespace_excluded(namespace) for p in self.members)

    def container_excluded(self, container: str | None) -> bool:
        return all(p.container_excluded(container) for p in self.members)

    def decide(self, image: str, *, namespace: str | None = None, container: str | None = None,
               labels: Labels | None = None, kind: str | None = None, name: str | None = None) -> Verdict:
        verdicts = tuple(p.decide(image, namespace=namespace, container=container, labels=labels, kind=kind,
                                  name=name) for p in self.members)
        found = [v for v in verdicts if v.finding]
        chosen = min(found, key=lambda v: EFFECTS.index(v.effect or DISABLED)) if found else verdicts[0]
        return Verdict(chosen.finding, chosen.assignment, chosen.parameter, chosen.why, chosen.effect, chosen.warn,
                       chosen.assumed, verdicts)


def combine(parts: Iterable[Policy], origin: str) -> Policy:
    """One Policy for one part, else a PolicySet."""
    parts = tuple(parts)
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return PolicySet(first.image_regex, first.excluded_namespaces, first.excluded_containers, origin=origin,
                     label=origin, members=parts)


@dataclass(frozen=True)
class LintMessage:
    level: str  # "warning" | "error"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


SAMPLE_SOURCES = ("nginx:1.27", "registry.k8s.io/ingress-nginx/controller:v1.11.0", "127.0.0.1:5000/team/app:1")


def lint(policy: Policy, target_registry: str | None, to_target: object | None = None,
         samples: Iterable[str] = SAMPLE_SOURCES) -> list[LintMessage]:
    """Weaknesses of each assignment's regex, and (an error) target names a regex would refuse.

    `to_target` maps a source ImageRef to its target ImageRef (the naming template)."""
    messages: list[LintMessage] = []
    for part in policy.parts:
        for message in _lint_one(part, target_registry, to_target, samples):
            if len(policy.parts) > 1:
                message = LintMessage(message.level, f"{part.name}: {message.message}")
            if message not in messages:
                messages.append(message)
    return messages


def _lint_one(policy: Policy, target_registry: str | None, to_target: object | None,
              samples: Iterable[str]) -> list[LintMessage]:
    from .reference import parse  # local: policy stays importable without the parser's cost

    messages: list[LintMessage] = []
    pattern = policy.image_regex
    example_target = f"{target_registry or 'myregistry.azurecr.io'}/app:1"
    if not pattern.startswith(("^", r"\A")):
        bypass = f"evil.example/{example_target}"
        if policy.allows(bypass):
            messages.append(LintMessage(
                "warning",
                f"imageRegex {pattern!r} is not anchored at the start: it also allows {bypass!r}; "
                f"start it with '^'"))
    for other in ("attacker.azurecr.io/app:1", "someoneelse.azurecr.io/x/y:2"):
        if target_registry and other.split("/")[0] == target_registry:
            continue
        if policy.allows(other):
            messages.append(LintMessage(
                "warning",
                f"imageRegex {pattern!r} allows any *.azurecr.io registry (e.g. {other!r}), "
                f"not only {target_registry or 'yours'}"))
            break
    if to_target is None and target_registry and not policy.allows(example_target):
        messages.append(LintMessage("error", f"imageRegex {pattern!r} refuses images in the target registry "
                                             f"({example_target!r})"))
    if to_target is not None:
        for text in samples:
            target = to_target(parse(text))  # type: ignore[operator]
            if isinstance(target, ImageRef) and not policy.allows(str(target)):
                messages.append(LintMessage(
                    "error",
                    f"target naming gives {str(target)!r} for {text!r}, which imageRegex {pattern!r} refuses"))
                break
    return messages
