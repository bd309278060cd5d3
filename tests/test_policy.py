"""The allow policy agrees with Gatekeeper: RE2, unanchored search on the image as written,
namespace and container exclusions; and lint catches weak regexes and bad naming."""

import pytest

from manifests_rewriter.naming import NamingError, check_template, host_as_path, target_for
from manifests_rewriter.policy import Policy, PolicyError, lint
from manifests_rewriter.reference import parse

REGEX = r"crazureblue\.azurecr\.io/.+$"


@pytest.mark.parametrize(("regex", "image", "allowed"), [
    (REGEX, "crazureblue.azurecr.io/docker.io/library/nginx:1", True),
    (REGEX, "nginx", False),
    (REGEX, "docker.io/library/nginx", False),
    # unanchored: Rego re_match is a search, so a prefix slips through
    (REGEX, "evil.example/crazureblue.azurecr.io/x", True),
    ("^" + REGEX, "evil.example/crazureblue.azurecr.io/x", False),
    ("^" + REGEX, "crazureblue.azurecr.io/", False),  # .+ needs something after the slash
    # matched against the string as written, not the normalized reference
    (r"^docker\.io/", "nginx", False),
    (r"^docker\.io/", "docker.io/library/nginx", True),
    (r"^(crazureblue\.azurecr\.io|mcr\.microsoft\.com)/", "mcr.microsoft.com/dotnet/runtime:8.0", True),
    (r"^crazureblue\.azurecr\.io/", "CRAZUREBLUE.azurecr.io/x", False),  # case-sensitive, like RE2
    (r"(?i)^crazureblue\.azurecr\.io/", "CRAZUREBLUE.azurecr.io/x", True),
    (r"\.azurecr\.io/", "attacker.azurecr.io/x", True),
])
def test_regex_semantics(regex, image, allowed):
    assert Policy(regex).allows(image) is allowed
    assert Policy(regex).refuses(image) is (not allowed)


@pytest.mark.parametrize("regex", [r"(?=x)", r"(a)\1", r"(?<=a)b", "[", "(?P<n>a)(?P=n)"])
def test_regex_re2_rejects_is_a_policy_error(regex):
    with pytest.raises(PolicyError) as info:
        Policy(regex)
    assert "not a valid RE2 expression" in str(info.value)


@pytest.mark.parametrize(("patterns", "namespace", "excluded"), [
    (("kube-system",), "kube-system", True),
    (("kube-system",), "kube-public", False),
    (("kube-*",), "kube-public", True),
    (("*-system",), "gatekeeper-system", True),
    (("*-system",), "system", False),
    ((), "kube-system", False),
    (("kube-system",), None, False),
    (("kube-system",), "", False),
])
def test_namespace_exclusions(patterns, namespace, excluded):
    policy = Policy("^allowed/", excluded_namespaces=patterns)
    assert policy.namespace_excluded(namespace) is excluded
    assert policy.refuses("nginx", namespace=namespace) is (not excluded)


def test_container_exclusions_are_exact_names():
    policy = Policy("^allowed/", excluded_containers=("istio-proxy",))
    assert not policy.refuses("nginx", container="istio-proxy")
    assert policy.refuses("nginx", container="istio-proxy-2")
    assert policy.refuses("nginx", container=None)


def _naming(template="{registry}/{repository}", registry="crazureblue.azurecr.io"):
    return lambda ref: target_for(ref, registry, template)


def test_lint_unanchored_shows_a_bypass():
    messages = lint(Policy(REGEX), "crazureblue.azurecr.io", _naming())
    warning = [m for m in messages if "not anchored" in m.message]
    assert warning and "evil.example/crazureblue.azurecr.io" in warning[0].message
    assert warning[0].level == "warning"
    assert not [m for m in lint(Policy("^" + REGEX), "crazureblue.azurecr.io", _naming())]


def test_lint_any_azurecr_registry():
    messages = lint(Policy(r"^[a-z0-9]+\.azurecr\.io/"), "crazureblue.azurecr.io", _naming())
    assert any("any *.azurecr.io" in m.message for m in messages)


def test_lint_naming_that_the_regex_refuses_is_an_error():
    policy = Policy(r"^crazureblue\.azurecr\.io/mirror/")
    messages = lint(policy, "crazureblue.azurecr.io", _naming())
    errors = [m for m in messages if m.level == "error"]
    assert errors and "target naming gives" in errors[-1].message
    assert not [m for m in lint(policy, "crazureblue.azurecr.io", _naming("mirror/{registry}/{repository}"))
                if m.level == "error"]


@pytest.mark.parametrize(("source", "template", "expected"), [
    ("nginx:1.27", "{registry}/{repository}", "crazureblue.azurecr.io/docker.io/library/nginx:1.27"),
    ("registry.k8s.io/pause:3.9", "{registry}/{repository}", "crazureblue.azurecr.io/registry.k8s.io/pause:3.9"),
    ("127.0.0.1:5000/team/app:1", "{registry}/{repository}", "crazureblue.azurecr.io/127.0.0.1-5000/team/app:1"),
    ("[::1]:5000/app", "{registry}/{repository}", "crazureblue.azurecr.io/1-5000/app"),
    ("localhost:5000/app", "mirror/{registry}/{repository}", "crazureblue.azurecr.io/mirror/localhost-5000/app"),
    ("quay.io/a/b:c", "{repository}", "crazureblue.azurecr.io/a/b:c"),
    ("Registry.Example.com/app", "{registry}/{repository}", "crazureblue.azurecr.io/registry.example.com/app"),
])
def test_target_naming(source, template, expected):
    target = target_for(parse(source), "crazureblue.azurecr.io", template)
    assert str(target) == expected
    assert parse(str(target)) == target  # a valid reference


def test_target_naming_keeps_digest_as_written():
    digest = "sha256:" + "ab" * 32
    target = target_for(parse(f"nginx:1@{digest}"), "r.azurecr.io")
    assert (target.tag, target.digest) == ("1", digest)


@pytest.mark.parametrize("template", ["{registry}", "{repo}", "{registry}/{repository}/{tag}", "{"])
def test_bad_templates(template):
    with pytest.raises(NamingError):
        check_template(template)


def test_host_as_path():
    assert host_as_path("127.0.0.1:5000") == "127.0.0.1-5000"
    assert host_as_path("docker.io") == "docker.io"
