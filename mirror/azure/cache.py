"""ACR artifact-cache rules instead of copies (`acr-mirror cache-rules`).

A cache rule makes ACR pull an image from its upstream the first time someone pulls it from the
registry: `targetRepository` names (in the ACR) map to `sourceRepository` names upstream. One
wildcard rule per upstream registry covers every image of the plan from it, when the naming
template puts the source repository at the end of a per-registry prefix:

    target.naming "{registry}/{repository}":  docker.io/* <- docker.io/*,  quay.io/* <- quay.io/*
    target.naming "mirror/{registry}/{repository}":  mirror/docker.io/* <- docker.io/*

An upstream that needs credentials gets a credential set: ACR reads the username and password
from Key Vault secrets (`azure.cache_credentials.<host>`: their URIs), with the credential set's
own system identity, which must be allowed to read them.

Where cache rules do not fit (the image stays for `sync` to copy), said per upstream or image:
- an upstream ACR's cache does not support (the documented list below, plus `azure.cache_upstreams`);
- a naming template a rule cannot express (text after {repository}, a prefix that is not whole
  path segments, {registry} after {repository}), or a plan target that differs from the naming;
- a wildcard rule of the registry that overlaps (ACR refuses overlapping wildcard rules), or a
  rule with the same target for another source;
- more rules than ACR allows per registry (1,000);
- a pinned digest that upstream deleted: the cache has nothing to pull (found by the pull);
- anonymous-only upstreams (MCR, ECR Public) ignore credentials.

After the rules exist, each image's manifest is pulled once through the registry (a GET, which is
what makes ACR fetch it) and its digest compared with the source's: only then may a reference be
rewritten to it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from manifests_rewriter.naming import host_as_path
from manifests_rewriter.reference import ImageRef, parse

from ..plan import PlanEntry
from ..registry.credentials import CredentialError, Keychain
from ..registry.errors import RegistryError
from ..settings import AzureSettings
from .arm import AcrRegistry, Arm, ArmError, CacheRule, CredentialSet

# Upstreams ACR's artifact cache documents (container-registry-artifact-cache.md, "Upstream support").
SUPPORTED_UPSTREAMS = {
    "docker.io": "Docker Hub",
    "mcr.microsoft.com": "Microsoft Artifact Registry",
    "public.ecr.aws": "Amazon ECR Public",
    "ghcr.io": "GitHub Container Registry",
    "nvcr.io": "Nvidia",
    "quay.io": "Quay",
    "registry.k8s.io": "registry.k8s.io",
    "gcr.io": "Google Container Registry",
}
ANONYMOUS_ONLY = frozenset({"mcr.microsoft.com", "public.ecr.aws"})
RULE_LIMIT = 1000  # cache rules per registry
RULE_PREFIX = "acrmirror-"


@dataclass
class RulePlan:
    """The rule for one upstream and what became of it."""

    upstream: str  # the source registry host
    name: str = ""
    source: str = ""  # sourceRepository pattern
    target: str = ""  # targetRepository pattern
    images: int = 0
    credential_set: str | None = None
    status: str = "planned"  # planned | created | reused | unfit | failed
    reason: str | None = None  # why unfit or failed
    notes: list[str] = field(default_factory=list)


@dataclass
class CachedImage:
    source: str
    target: str
    rule: str | None = None
    status: str = "planned"  # planned | cached | unfit | failed
    digest: str | None = None
    error: str | None = None


@dataclass
class CacheOutcome:
    registry: str
    rules: list[RulePlan]
    images: list[CachedImage]
    notes: list[str] = field(default_factory=list)


def rule_patterns(template: str, host: str) -> tuple[str, str] | str:
    """(target pattern, source pattern) of the one wildcard rule serving `host`'s images under
    `template`, or why no cache rule can express it."""
    prefix, marker, suffix = template.partition("{repository}")
    if not marker:
        return "target.naming has no {repository}"
    if suffix.strip("/"):
        return f"target.naming {template!r} puts {suffix!r} after {{repository}}: a cache rule maps prefix/* only"
    rendered = prefix.format(registry=host_as_path(host)).lstrip("/")
    if rendered and not rendered.endswith("/"):
        return (f"target.naming {template!r} joins {{repository}} to {rendered!r} inside one path segment: "
                f"cache rules match whole segments (prefix/*)")
    return f"{rendered}*", f"{host}/*"


def _overlaps(a: str, b: str) -> bool:
    """Whether two wildcard target patterns can match one repository (ACR refuses that)."""
    if not (a.endswith("*") and b.endswith("*")):
        return False
    a, b = a[:-1], b[:-1]
    return a.startswith(b) or b.startswith(a)


def _name(host: str, taken: set[str], kind: str = "") -> str:
    """`acrmirror-<host>`: 5-50 letters, digits and '-'; a hash when long or taken."""
    slug = re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-") or "registry"
    name = (RULE_PREFIX + kind + slug)[:50].rstrip("-")
    if name.lower() in taken or len(RULE_PREFIX + kind + slug) > 50:
        digest = hashlib.sha256(host.encode()).hexdigest()[:8]
        name = f"{name[:41].rstrip('-')}-{digest}"
    return name


def plan_rules(images: Sequence[PlanEntry], template: str, settings: AzureSettings,
               existing: Sequence[CacheRule]) -> tuple[list[RulePlan], dict[str, RulePlan]]:
    """One rule per upstream (reused, to create, or unfit, with why); and the rule of each image."""
    by_host: dict[str, list[PlanEntry]] = {}
    for image in images:
        by_host.setdefault(parse(image.source).registry, []).append(image)
    supported = {**SUPPORTED_UPSTREAMS, **{h: h for h in settings.cache_upstreams}}
    names = {r.name.lower() for r in existing}
    wildcards = [r for r in existing if r.target.endswith("*")]
    new = 0
    rules: list[RulePlan] = []
    of_image: dict[str, RulePlan] = {}
    for host in sorted(by_host):
        rule = RulePlan(host, images=len(by_host[host]))
        rules.append(rule)
        for image in by_host[host]:
            of_image[image.source] = rule
        if host not in supported:
            rule.status = "unfit"
            rule.reason = (f"ACR's artifact cache does not support {host} as an upstream (it supports "
                           f"{', '.join(sorted(SUPPORTED_UPSTREAMS))}; add it to azure.cache_upstreams if ACR now does)")
            continue
        patterns = rule_patterns(template, host)
        if isinstance(patterns, str):
            rule.status, rule.reason = "unfit", patterns
            continue
        rule.target, rule.source = patterns
        same = next((r for r in existing if r.target == rule.target), None)
        if same is not None and same.source == rule.source:
            rule.name, rule.status = same.name, "reused"
            continue
        if same is not None:
            rule.status = "unfit"
            rule.reason = f"rule {same.name} already maps {same.target} to {same.source}"
            continue
        clash = next((r for r in wildcards if _overlaps(r.target, rule.target)), None)
        if clash is not None:
            rule.status = "unfit"
            rule.reason = (f"{rule.target} overlaps the wildcard rule {clash.name} ({clash.target} <- {clash.source}); "
                           f"ACR refuses overlapping wildcard rules")
            continue
        if len(existing) + new >= RULE_LIMIT:
            rule.status = "unfit"
            rule.reason = f"the registry has reached ACR's limit of {RULE_LIMIT:,} cache rules"
            continue
        rule.name = _name(host, names)
        names.add(rule.name.lower())
        wildcards.append(CacheRule(rule.name, rule.source, rule.target))
        new += 1
    return rules, of_image


def served_name(source: ImageRef, rule: RulePlan) -> str:
    """The target repository the rule serves `source` under."""
    return rule.target[:-1] + source.repository


def credential_set_for(arm: Arm, registry: AcrRegistry, rule: RulePlan, settings: AzureSettings,
                       sets: list[CredentialSet], keychain: Keychain | None, *, dry_run: bool) -> str | None:
    """The credential set the upstream's rule uses (reused or created), None when it pulls
    anonymously; notes say what the user must do."""
    host = rule.upstream
    wanted = settings.cache_credentials.get(host)
    if wanted is not None and host in ANONYMOUS_ONLY:
        rule.notes.append(f"{host} supports anonymous pulls only: azure.cache_credentials.{host} is not used")
        return None
    if wanted is None:
        held = _held_credentials(keychain, host)
        if held and host not in ANONYMOUS_ONLY:
            rule.notes.append(f"acr-mirror has credentials for {host} ({held}) but ACR's cache reads them only from "
                              f"Key Vault: store the username and password as secrets and set "
                              f"azure.cache_credentials.{host} (username_secret, password_secret); until then the "
                              f"cache pulls {host} anonymously")
        return None
    found = next((s for s in sets if s.login_server == host and s.username_secret == wanted.username_secret
                  and s.password_secret == wanted.password_secret), None)
    if found is None and dry_run:
        rule.credential_set = _name(host, {s.name.lower() for s in sets}, "creds-")
        return None
    if found is None:
        name = _name(host, {s.name.lower() for s in sets}, "creds-")
        found = arm.create_credential_set(registry, name, host, wanted.username_secret, wanted.password_secret)
        sets.append(found)
    rule.credential_set = found.name
    if found.health and found.health != "Healthy":
        who = f"principal {found.principal_id}" if found.principal_id else "its identity"
        rule.notes.append(f"credential set {found.name} cannot read its Key Vault secrets yet ({found.health}"
                          f"{': ' + found.health_error if found.health_error else ''}): allow {who} to get the "
                          f"secrets (role Key Vault Secrets User), then pull again")
    return found.id


def _held_credentials(keychain: Keychain | None, host: str) -> str | None:
    if keychain is None:
        return None
    try:
        found = keychain.resolve(host)
    except CredentialError:
        return None
    return None if found.anonymous else found.source


def apply_rules(arm: Arm, registry: AcrRegistry, images: Sequence[PlanEntry], template: str,
                settings: AzureSettings, keychain: Keychain | None, *, dry_run: bool) -> CacheOutcome:
    """Plan the rules against the registry's, and (unless `dry_run`) create what is missing."""
    existing = arm.cache_rules(registry)
    sets = arm.credential_sets(registry) if any(h in settings.cache_credentials for h in
                                                 {parse(i.source).registry for i in images}) else []
    rules, of_image = plan_rules(images, template, settings, existing)
    outcome = CacheOutcome(registry.id, rules, [])
    for rule in rules:
        if rule.status not in ("planned", "reused"):
            continue
        try:
            credential_set = credential_set_for(arm, registry, rule, settings, sets, keychain, dry_run=dry_run)
            if rule.status == "planned" and not dry_run:
                arm.create_cache_rule(registry, rule.name, rule.source, rule.target, credential_set)
                rule.status = "created"
            elif rule.status == "reused" and credential_set:
                current = next(r for r in existing if r.name == rule.name).credential_set_id
                if (current or "").lower() != credential_set.lower():
                    rule.notes.append(f"rule {rule.name} pulls with {current or 'no credentials'}, not credential "
                                      f"set {rule.credential_set}: update it (az acr cache update -c) if needed")
        except ArmError as exc:
            rule.status, rule.reason = "failed", str(exc)
    for image in images:
        rule = of_image[image.source]
        item = CachedImage(image.source, image.target, rule.name or None, digest=image.digest)
        if rule.status in ("unfit", "failed"):
            item.status, item.error = rule.status, f"no cache rule for {rule.upstream}: {rule.reason}"
        else:
            source, target = parse(image.source), parse(image.target)
            served = served_name(source, rule)
            if target.registry != registry.login_server or target.repository != served:
                item.status = "unfit"
                item.error = (f"the plan's target {target.registry}/{target.repository} is not what rule "
                              f"{rule.name} serves ({registry.login_server}/{served}): plan again with this naming")
        outcome.images.append(item)
    return outcome


def pull_through(outcome: CacheOutcome, read_digest: Callable[[ImageRef], str | None],
                 pull: Callable[[ImageRef], str | None], *, workers: int = 4) -> None:
    """Pull each covered image once through the registry and compare with the source's digest,
    `workers` at a time (a first pull waits for ACR to fetch upstream).

    `pull(target)`: the digest the registry serves (a manifest GET, which makes ACR fetch it
    upstream), None when it has nothing; `read_digest(source)`: the source's digest now."""
    items = [item for item in outcome.images if item.status == "planned"]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="cache-pull") as pool:
        list(pool.map(lambda item: _pull_one(item, read_digest, pull), items))


def _pull_one(item: CachedImage, read_digest: Callable[[ImageRef], str | None],
              pull: Callable[[ImageRef], str | None]) -> None:
    source, target = parse(item.source), parse(item.target)
    try:
        served = pull(target)
        if served is None:
            item.status = "failed"
            item.error = (f"does not resolve through the cache: upstream no longer has {source.digest} "
                          f"(a pinned digest upstream deleted): copy it with sync from where it still exists, or "
                          f"pin a digest upstream has" if source.digest else
                          f"does not resolve through the cache: check that upstream has {source} and that the "
                          f"rule's credential set is healthy")
            return
        expected = item.digest or source.digest or read_digest(source)
        if expected is None:
            item.status = "failed"
            item.error = f"the cache serves {served}, but the source has no {source} any more"
            return
        if served != expected:
            item.status = "failed"
            item.error = (f"the cache serves {served}, the source has {expected} (ACR keeps the tag it cached "
                          f"first): pin the digest, or copy it with sync")
            return
        item.status, item.digest = "cached", served
    except (RegistryError, ArmError, CredentialError) as exc:
        item.status, item.error = "failed", f"pulling it through the cache: {exc}"
