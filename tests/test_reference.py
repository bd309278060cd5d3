"""ImageRef parsing against the Docker distribution reference grammar."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manifests_rewriter.reference import ImageRef, ReferenceError, familiar, parse

D = "sha256:" + "0123456789abcdef" * 4
D512 = "sha512:" + "ab" * 64

VALID = [
    # text, registry, repository, tag, digest
    ("nginx", "docker.io", "library/nginx", None, None),
    ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
    ("nginx:latest", "docker.io", "library/nginx", "latest", None),
    ("library/nginx", "docker.io", "library/nginx", None, None),
    ("docker.io/nginx", "docker.io", "library/nginx", None, None),
    ("docker.io/library/nginx:1", "docker.io", "library/nginx", "1", None),
    ("index.docker.io/nginx", "docker.io", "library/nginx", None, None),
    ("index.docker.io/bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
    ("registry-1.docker.io/bitnami/redis", "docker.io", "bitnami/redis", None, None),
    ("bitnami/redis:8.2.1-debian-12-r0", "docker.io", "bitnami/redis", "8.2.1-debian-12-r0", None),
    ("a/b/c/d", "docker.io", "a/b/c/d", None, None),
    ("registry.k8s.io/ingress-nginx/controller:v1.15.1", "registry.k8s.io", "ingress-nginx/controller", "v1.15.1", None),
    (f"registry.k8s.io/ingress-nginx/controller:v1.15.1@{D}", "registry.k8s.io", "ingress-nginx/controller", "v1.15.1", D),
    (f"nginx@{D}", "docker.io", "library/nginx", None, D),
    (f"quay.io/prometheus/prometheus@{D}", "quay.io", "prometheus/prometheus", None, D),
    (f"ghcr.io/org/app@{D512}", "ghcr.io", "org/app", None, D512),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/app:1", "localhost:5000", "app", "1", None),
    ("localhost:5000/team/app", "localhost:5000", "team/app", None, None),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", None, None),
    ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000", "a/b", "c", None),
    ("10.0.0.1/app", "10.0.0.1", "app", None, None),
    ("[::1]:5000/app:tag", "[::1]:5000", "app", "tag", None),
    ("[::1]/app", "[::1]", "app", None, None),
    ("[2001:db8::1]:443/x/y", "[2001:db8::1]:443", "x/y", None, None),
    ("myregistry.azurecr.io/app:v1", "myregistry.azurecr.io", "app", "v1", None),
    ("crazureblue.azurecr.io/docker.io/library/nginx:1", "crazureblue.azurecr.io", "docker.io/library/nginx", "1", None),
    ("mcr.microsoft.com/dotnet/aspnet:8.0", "mcr.microsoft.com", "dotnet/aspnet", "8.0", None),
    ("gcr.io/distroless/static:nonroot", "gcr.io", "distroless/static", "nonroot", None),
    ("public.ecr.aws/docker/library/redis", "public.ecr.aws", "docker/library/redis", None, None),
    ("registry:5000/app", "registry:5000", "app", None, None),
    ("Registry.Example.com/app", "Registry.Example.com", "app", None, None),
    ("Foo/bar", "Foo", "bar", None, None),  # upper-case first component is a host (distribution rule)
    ("a.b/c_d__e.f-g---h", "a.b", "c_d__e.f-g---h", None, None),
    ("app:_tag", "docker.io", "library/app", "_tag", None),
    ("app:v1.2.3-rc.1_build", "docker.io", "library/app", "v1.2.3-rc.1_build", None),
    ("app:" + "t" * 128, "docker.io", "library/app", "t" * 128, None),
    (f"localhost:5000/app:1@{D}", "localhost:5000", "app", "1", D),
    ("xn--bcher-kva.example/app", "xn--bcher-kva.example", "app", None, None),
    ("a-b.c-d.e:1/x", "a-b.c-d.e:1", "x", None, None),
    ("docker.io/bitnami/nginx:1.29.1-debian-12-r0", "docker.io", "bitnami/nginx", "1.29.1-debian-12-r0", None),
]

INVALID = [
    ("", "empty"),
    ("   ", "empty"),
    ("{{ .Values.image }}", "template"),
    ("{{ .Values.image.repository }}:{{ .Values.image.tag }}", "template"),
    ("$IMAGE", "variable"),
    ("${REGISTRY}/app", "variable"),
    ("$(params.BUILDER_IMAGE)", "variable"),
    ("ko://github.com/org/cmd/app", "scheme"),
    ("docker://nginx", "scheme"),
    ("Nginx", "lowercase"),  # no slash: a path, and paths are lower-case
    ("library/Nginx", "lowercase"),
    ("ghcr.io/Org/app", "lowercase"),
    ("nginx:", "invalid tag"),
    ("nginx:-bad", "invalid tag"),
    ("nginx:" + "t" * 129, "invalid tag"),
    ("nginx:a b", "whitespace"),
    (" nginx", "whitespace"),
    ("nginx@sha256:abc", "invalid digest"),
    ("nginx@sha256:" + "A" * 64, "lower-case"),
    ("nginx@sha256:" + "a" * 63, "64 lower-case"),
    ("nginx@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("nginx@", "invalid digest"),
    ("a" * 64, "image ID"),
    ("/nginx", "invalid repository"),
    ("nginx/", "invalid repository"),
    ("a//b", "invalid repository"),
    ("-a.com/b", "invalid registry host"),
    ("a.com:port/b", "invalid registry host"),  # a port must be digits
    ("a_b.com/c", "invalid registry host"),
    ("ex.com/" + "a" * 260, "255"),
    (":tag", "missing repository"),
    ("app\x00", "control"),
    ("a\nb", "control"),
    ("a..b/c", "invalid registry host"),
    ("repo/.x", "invalid repository"),
    ("repo/x-", "invalid repository"),
    ("https://ghcr.io/app", "scheme"),
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), VALID)
def test_valid_references(text, registry, repository, tag, digest):
    ref = parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.original == text
    assert parse(str(ref)) == ref  # canonical form parses back to the same reference


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_references(text, reason):
    with pytest.raises(ReferenceError) as info:
        parse(text)
    assert reason.lower() in str(info.value).lower()
    assert "\n" not in str(info.value)


def test_table_is_large_enough():
    assert len(VALID) + len(INVALID) >= 60


def test_latest_is_implied_not_written():
    ref = parse("nginx")
    assert ref.tag is None and ref.effective_tag == "latest" and str(ref) == "docker.io/library/nginx"


def test_reference_prefers_digest():
    assert parse(f"nginx:1@{D}").reference == D
    assert parse("nginx:1").reference == "1"


def test_with_name_keeps_tag_and_digest_as_written():
    ref = parse(f"nginx:1.27@{D}").with_name("crazureblue.azurecr.io", "docker.io/library/nginx")
    assert str(ref) == f"crazureblue.azurecr.io/docker.io/library/nginx:1.27@{D}"
    assert ref.original == str(ref)


@pytest.mark.parametrize(("text", "short"), [
    ("docker.io/library/nginx:1", "nginx:1"),
    ("docker.io/bitnami/redis", "bitnami/redis"),
    ("quay.io/a/b:c", "quay.io/a/b:c"),
])
def test_familiar(text, short):
    assert familiar(parse(text)) == short


_component = st.from_regex(r"[a-z0-9]{1,6}(?:[._-][a-z0-9]{1,6}){0,2}", fullmatch=True)
_host = st.one_of(
    st.sampled_from(["docker.io", "quay.io", "localhost", "127.0.0.1:5000", "[::1]:5000", "my.registry:443",
                     "crazureblue.azurecr.io"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]\.[a-z]{2,5}", fullmatch=True),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@st.composite
def references(draw):
    parts = draw(st.lists(_component, min_size=1, max_size=3))
    host = draw(st.one_of(st.none(), _host))
    if host is None and len(parts) > 1:
        parts[0] = parts[0].replace(".", "-")  # a first component with a '.' names a host
    path = "/".join(parts)
    text = f"{host}/{path}" if host else path
    if draw(st.booleans()):
        text += ":" + draw(_tag)
    if draw(st.booleans()):
        text += "@" + draw(_digest)
    return text


@given(references())
def test_format_parse_round_trip(text):
    ref = parse(text)
    again = parse(str(ref))
    assert again == ref
    assert str(again) == str(ref)
    assert isinstance(ref, ImageRef)


@given(st.text(max_size=80))
def test_parse_never_crashes(text):
    try:
        ref = parse(text)
    except ReferenceError as exc:
        assert str(exc)
    else:
        assert parse(str(ref)) == ref
