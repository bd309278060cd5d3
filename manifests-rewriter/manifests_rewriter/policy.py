"""The allow policy with Gatekeeper's semantics.

K8sAzureV2ContainerAllowedImages refuses a container when `re_match(imageRegex, image)`
is false, where `image` is the string exactly as written in the pod spec and Rego's
`re_match` is an unanchored RE2 search. Excluded namespaces come from the constraint's
`match.excludedNamespaces` (prefix/suffix `*` globs allowed, as Gatekeeper does);
excluded containers are exact container names in any of the three container lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import re2

from .errors import PolicyError
from .reference import ImageRef


def quoted(pattern: str) -> str:
    """A regex as written, in YAML's single quotes (a quote inside is doubled): it pastes back
    into `imageRegex:` unchanged, and into a shell when it holds no quote. Never a Python repr,
    which doubles every backslash."""
    return "'" + pattern.replace("'", "''") + "'"


def compile_regex(pattern: str) -> re2._Regexp:
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own copy of the error to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PolicyError(f"imageRegex {quoted(pattern)} is not a valid RE2 expression: {reason}") from None


def _namespace_matches(pattern: str, namespace: str) -> bool:
    if pattern.endswith("*") and pattern.startswith("*") and len(pattern) > 1:
        return pattern[1:-1] in namespace
    if pattern.endswith("*"):
        return namespace.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return namespace.endswith(pattern[1:])
    return namespace == pattern


@dataclass(frozen=True)
class Policy:
    image_regex: str
    excluded_namespaces: tuple[str, ...] = ()
    excluded_containers: tuple[str, ...] = ()
    origin: str = "config"  # where it came from, shown to the user
    _compiled: object = field(default=None, compare=False, repr=False)

    _verdicts: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", compile_regex(self.image_regex))

    def __getstate__(self) -> dict[str, object]:  # RE2 objects do not pickle: recompiled on load
        state = dict(self.__dict__)
        state.pop("_compiled", None)
        state["_verdicts"] = {}
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        for key, value in state.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_compiled", compile_regex(self.image_regex))

    def allows(self, image: str) -> bool:
        """True when Gatekeeper's re_match(imageRegex, image) holds: unanchored RE2 search."""
        verdict = self._verdicts.get(image)
        if verdict is None:  # a tree repeats the same few images; RE2's Python binding is not free
            verdict = self._compiled.search(image) is not None  # type: ignore[attr-defined]
            if len(self._verdicts) < 65536:
                self._verdicts[image] = verdict
        return verdict

    def namespace_excluded(self, namespace: str | None) -> bool:
        return bool(namespace) and any(_namespace_matches(p, namespace or "") for p in self.excluded_namespaces)

    def container_excluded(self, container: str | None) -> bool:
        return container is not None and container in self.excluded_containers

    def refuses(self, image: str, *, namespace: str | None = None, container: str | None = None) -> bool:
        """Would admission refuse this container? Exclusions first, then the regex."""
        if self.namespace_excluded(namespace) or self.container_excluded(container):
            return False
        return not self.allows(image)


@dataclass(frozen=True)
class LintMessage:
    level: str  # "warning" | "error"
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


SAMPLE_SOURCES = ("nginx:1.27", "registry.k8s.io/ingress-nginx/controller:v1.11.0", "127.0.0.1:5000/team/app:1")


def lint(policy: Policy, target_registry: str | None, to_target: object | None = None,
         samples: Iterable[str] = SAMPLE_SOURCES) -> list[LintMessage]:
    """Weaknesses of the regex, and (an error) target names the regex would refuse.

    `to_target` maps a source ImageRef to its target ImageRef (the naming template)."""
    from .reference import parse  # local: policy stays importable without the parser's cost

    messages: list[LintMessage] = []
    pattern = policy.image_regex
    example_target = f"{target_registry or 'myregistry.azurecr.io'}/app:1"
    if not pattern.startswith(("^", r"\A")):
        bypass = f"evil.example/{example_target}"
        if policy.allows(bypass):
            messages.append(LintMessage(
                "warning",
                f"imageRegex {quoted(pattern)} is not anchored at the start: it also allows {bypass}; "
                f"start it with ^"))
    for other in ("attacker.azurecr.io/app:1", "someoneelse.azurecr.io/x/y:2"):
        if target_registry and other.split("/")[0] == target_registry:
            continue
        if policy.allows(other):
            messages.append(LintMessage(
                "warning",
                f"imageRegex {quoted(pattern)} allows any *.azurecr.io registry (e.g. {other}), "
                f"not only {target_registry or 'yours'}"))
            break
    if to_target is None and target_registry and not policy.allows(example_target):
        messages.append(LintMessage("error", f"imageRegex {quoted(pattern)} refuses images in the target registry "
                                             f"({example_target})"))
    if to_target is not None:
        for text in samples:
            target = to_target(parse(text))  # type: ignore[operator]
            if isinstance(target, ImageRef) and not policy.allows(str(target)):
                messages.append(LintMessage(
                    "error",
                    f"target naming gives {target} for {text}, which imageRegex {quoted(pattern)} refuses"))
                break
    return messages
