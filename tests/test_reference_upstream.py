"""distribution/reference's own test tables, as data, against acr-mirror's parser.

Ported from github.com/distribution/reference at 0965666a6ade (2026-04-18), files
normalize_test.go and reference_test.go: the inputs and expectations only, not the code. Every
upstream row is here. acr-mirror parses image fields the way `ParseNormalizedNamed` does (what
containerd and the kubelet use), so each row states what that function gives for the input:

- rows of tests on the normalizing functions (TestValidateReferenceName, TestValidateRemoteName,
  TestParseRepositoryInfo, TestNormalizedSplitHostname, TestParseReferenceWithTagAndDigest,
  TestInvalidReferenceComponents, TestParseDockerRef) keep their expectations as written;
- rows of tests on the non-normalizing `Parse`/`WithName`/`ParseNamed` (TestReferenceParse,
  TestWithNameFailure, TestDomainAndPath, TestSerialization, TestParseNamed) and
  `ParseAnyReference` keep validity and tag/digest, and state the name after normalization
  (`test_com` -> `docker.io/library/test_com`); a row comment says so where the two differ.

Rows where acr-mirror deliberately disagrees carry `DIFFERS` and a comment saying why. Upstream
tables not ported: TestMatch/TestMatchError (FamiliarMatch globbing, which acr-mirror does not
have), TestWithTag/TestWithDigest (building references from parts with short fake digests that
go-digest does not validate there), regexp_test.go (the regular expressions themselves).
"""

from __future__ import annotations

import pytest

from manifests_rewriter.reference import ReferenceError, familiar, parse

F64 = "f" * 64
H64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"  # 64 hex digits
D64 = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
SONG = "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev"  # 64, not all hex
LONG_NAMESPACE = "_".join(["this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255"] * 4) + "/docker"
DIFFERS = "DIFFERS"

# (upstream test, input, canonical string after normalization | None when invalid, comment)
VALID_OR_NOT: list[tuple[str, str, str | None, str]] = [
    # ---- normalize_test.go TestValidateReferenceName
    ("ValidateReferenceName", "docker/docker", "docker.io/docker/docker", ""),
    ("ValidateReferenceName", "library/debian", "docker.io/library/debian", ""),
    ("ValidateReferenceName", "debian", "docker.io/library/debian", ""),
    ("ValidateReferenceName", "localhost/library/debian", "localhost/library/debian", ""),
    ("ValidateReferenceName", "localhost/debian", "localhost/debian", ""),
    ("ValidateReferenceName", "LOCALDOMAIN/library/debian", "LOCALDOMAIN/library/debian", ""),
    ("ValidateReferenceName", "LOCALDOMAIN/debian", "LOCALDOMAIN/debian", ""),
    ("ValidateReferenceName", "docker.io/docker/docker", "docker.io/docker/docker", ""),
    ("ValidateReferenceName", "docker.io/library/debian", "docker.io/library/debian", ""),
    ("ValidateReferenceName", "docker.io/debian", "docker.io/library/debian", ""),
    ("ValidateReferenceName", "index.docker.io/docker/docker", "docker.io/docker/docker", ""),
    ("ValidateReferenceName", "index.docker.io/library/debian", "docker.io/library/debian", ""),
    ("ValidateReferenceName", "index.docker.io/debian", "docker.io/library/debian", ""),
    ("ValidateReferenceName", "127.0.0.1:5000/docker/docker", "127.0.0.1:5000/docker/docker", ""),
    ("ValidateReferenceName", "127.0.0.1:5000/library/debian", "127.0.0.1:5000/library/debian", ""),
    ("ValidateReferenceName", "127.0.0.1:5000/debian", "127.0.0.1:5000/debian", ""),
    ("ValidateReferenceName", "192.168.0.1", "docker.io/library/192.168.0.1", ""),
    ("ValidateReferenceName", "192.168.0.1:80", "docker.io/library/192.168.0.1:80", ""),
    ("ValidateReferenceName", "192.168.0.1:8/debian", "192.168.0.1:8/debian", ""),
    ("ValidateReferenceName", "192.168.0.2:25000/debian", "192.168.0.2:25000/debian", ""),
    ("ValidateReferenceName", SONG, f"docker.io/library/{SONG}", ""),
    ("ValidateReferenceName", "[fc00::1]:5000/docker", "[fc00::1]:5000/docker", ""),
    ("ValidateReferenceName", "[fc00::1]:5000/docker/docker", "[fc00::1]:5000/docker/docker", ""),
    ("ValidateReferenceName", "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
     "[fc00:1:2:3:4:5:6:7]:5000/library/debian", ""),
    ("ValidateReferenceName", f"docker.io/{H64}", f"docker.io/library/{H64}", "64 hex with a host: a name"),
    ("ValidateReferenceName", "Docker/docker", "Docker/docker", "upper case first component: a host"),
    ("ValidateReferenceName", "DOCKER/docker", "DOCKER/docker", ""),
    ("ValidateReferenceName", "https://github.com/docker/docker", None, ""),
    ("ValidateReferenceName", "docker/Docker", None, ""),
    ("ValidateReferenceName", "-docker", None, ""),
    ("ValidateReferenceName", "-docker/docker", None, ""),
    ("ValidateReferenceName", "-docker.io/docker/docker", None, ""),
    ("ValidateReferenceName", "docker///docker", None, ""),
    ("ValidateReferenceName", "docker.io/docker/Docker", None, ""),
    ("ValidateReferenceName", "docker.io/docker///docker", None, ""),
    ("ValidateReferenceName", "[fc00::1]", None, ""),
    ("ValidateReferenceName", "[fc00::1]:5000", None, ""),
    ("ValidateReferenceName", "fc00::1:5000/debian", None, ""),
    ("ValidateReferenceName", "[fe80::1%eth0]:5000/debian", None, ""),
    ("ValidateReferenceName", "[2001:db8:3:4::192.0.2.33]:5000/debian", None, ""),
    ("ValidateReferenceName", H64, None, "a bare 64-hex string is an image ID"),
    # ---- normalize_test.go TestValidateRemoteName
    ("ValidateRemoteName", "docker/docker", "docker.io/docker/docker", ""),
    ("ValidateRemoteName", SONG, f"docker.io/library/{SONG}", ""),
    ("ValidateRemoteName", "docker-rules/docker", "docker.io/docker-rules/docker", ""),
    ("ValidateRemoteName", "docker---rules/docker", "docker.io/docker---rules/docker", ""),
    ("ValidateRemoteName", "doc/docker", "docker.io/doc/docker", ""),
    ("ValidateRemoteName", "d/docker", "docker.io/d/docker", ""),
    ("ValidateRemoteName", "jess/t", "docker.io/jess/t", ""),
    ("ValidateRemoteName", "dock__er/docker", "docker.io/dock__er/docker", ""),
    ("ValidateRemoteName", "docker/Docker", None, ""),
    ("ValidateRemoteName", "docker///docker", None, ""),
    ("ValidateRemoteName", H64, None, ""),
    ("ValidateRemoteName", "-docker/docker", None, ""),
    ("ValidateRemoteName", "docker-/docker", None, ""),
    ("ValidateRemoteName", "-docker-/docker", None, ""),
    ("ValidateRemoteName", "____/____", None, ""),
    ("ValidateRemoteName", "_docker/_docker", None, ""),
    ("ValidateRemoteName", "dock..er/docker", None, ""),
    ("ValidateRemoteName", "dock_.er/docker", None, ""),
    ("ValidateRemoteName", "dock-.er/docker", None, ""),
    ("ValidateRemoteName", "docker/", None, ""),
    ("ValidateRemoteName", LONG_NAMESPACE, None, "path longer than 255"),
    # ---- normalize_test.go TestParseReferenceWithTagAndDigest, TestInvalidReferenceComponents
    ("ParseReferenceWithTagAndDigest", f"busybox:latest@sha256:{'86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa'}",
     "docker.io/library/busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa", ""),
    ("InvalidReferenceComponents", "-foo", None, ""),
    # ---- normalize_test.go TestParseAnyReference (ParseAnyReference; here ParseNormalizedNamed)
    ("ParseAnyReference", "redis", "docker.io/library/redis", ""),
    ("ParseAnyReference", "redis:latest", "docker.io/library/redis:latest", ""),
    ("ParseAnyReference", "docker.io/library/redis:latest", "docker.io/library/redis:latest", ""),
    ("ParseAnyReference", f"redis@sha256:{D64}", f"docker.io/library/redis@sha256:{D64}", ""),
    ("ParseAnyReference", f"docker.io/library/redis@sha256:{D64}", f"docker.io/library/redis@sha256:{D64}", ""),
    ("ParseAnyReference", "dmcgowan/myapp", "docker.io/dmcgowan/myapp", ""),
    ("ParseAnyReference", "dmcgowan/myapp:latest", "docker.io/dmcgowan/myapp:latest", ""),
    ("ParseAnyReference", "docker.io/mcgowan/myapp:latest", "docker.io/mcgowan/myapp:latest", ""),
    ("ParseAnyReference", f"dmcgowan/myapp@sha256:{D64}", f"docker.io/dmcgowan/myapp@sha256:{D64}", ""),
    ("ParseAnyReference", f"docker.io/dmcgowan/myapp@sha256:{D64}", f"docker.io/dmcgowan/myapp@sha256:{D64}", ""),
    # DIFFERS: ParseAnyReference makes a bare 64-hex string a digest reference (an image ID);
    # an image field names something to pull and mirror, so acr-mirror refuses it, as
    # ParseNormalizedNamed does.
    ("ParseAnyReference", D64, None, DIFFERS),
    # DIFFERS: ParseAnyReference reads "sha256:<hex>" as a digest (an ID); ParseNormalizedNamed,
    # which image fields go through, reads it as docker.io/library/sha256 with tag <hex>.
    ("ParseAnyReference", f"sha256:{D64}", f"docker.io/library/sha256:{D64}", DIFFERS),
    ("ParseAnyReference", D64[:63], f"docker.io/library/{D64[:63]}", "63 hex digits: a name"),
    ("ParseAnyReference", "dbcc1", "docker.io/library/dbcc1", ""),
    # ---- reference_test.go TestReferenceParse (Parse; names shown normalized)
    ("ReferenceParse", "test_com", "docker.io/library/test_com", "Parse: no domain"),
    ("ReferenceParse", "test.com:tag", "docker.io/library/test.com:tag", "Parse: name test.com, tag"),
    ("ReferenceParse", "test.com:5000", "docker.io/library/test.com:5000", "a tag, not a port"),
    ("ReferenceParse", "test.com/repo:tag", "test.com/repo:tag", ""),
    ("ReferenceParse", "test:5000/repo", "test:5000/repo", ""),
    ("ReferenceParse", "test:5000/repo:tag", "test:5000/repo:tag", ""),
    ("ReferenceParse", f"test:5000/repo@sha256:{F64}", f"test:5000/repo@sha256:{F64}", ""),
    ("ReferenceParse", f"test:5000/repo:tag@sha256:{F64}", f"test:5000/repo:tag@sha256:{F64}", ""),
    ("ReferenceParse", "", None, ""),
    ("ReferenceParse", ":justtag", None, ""),
    ("ReferenceParse", f"@sha256:{F64}", None, ""),
    ("ReferenceParse", "repo@sha256:" + "f" * 34, None, "digest too short"),
    ("ReferenceParse", f"validname@invaliddigest:{F64}", None, "unsupported algorithm"),
    # DIFFERS: upstream's test binary does not register sha512 (it imports crypto/sha256 only),
    # so Parse answers ErrDigestUnsupported there; containerd and Docker register sha384 and
    # sha512, and so does acr-mirror.
    ("ReferenceParse", "validname@sha512:" + "f" * 128, "docker.io/library/validname@sha512:" + "f" * 128, DIFFERS),
    ("ReferenceParse", "Uppercase:tag", None, "upper case repository"),
    ("ReferenceParse", "test:5000/Uppercase/lowercase:tag", None, ""),
    ("ReferenceParse", "lowercase:Uppercase", "docker.io/library/lowercase:Uppercase", ""),
    ("ReferenceParse", "domain/" + "a" * 256 + ":tag", None, "path longer than 255"),
    # the path is 255 characters with docker.io/ in front: the limit is on the path alone
    ("ReferenceParse", "a/" * 127 + "a:tag-puts-this-over-max", "docker.io/" + "a/" * 127 + "a:tag-puts-this-over-max",
     "Parse: domain a"),
    ("ReferenceParse", "aa/asdf$$^/aa", None, ""),
    ("ReferenceParse", "sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux", ""),
    ("ReferenceParse", "sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux:some-long-tag", ""),
    ("ReferenceParse", "b.gcr.io/test.example.com/my-app:test.example.com",
     "b.gcr.io/test.example.com/my-app:test.example.com", ""),
    ("ReferenceParse", "xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com", ""),
    ("ReferenceParse", f"xn--7o8h.com/myimage:xn--7o8h.com@sha256:{F64}",
     f"xn--7o8h.com/myimage:xn--7o8h.com@sha256:{F64}", ""),
    ("ReferenceParse", "foo_bar.com:8080", "docker.io/library/foo_bar.com:8080", "Parse: no domain"),
    ("ReferenceParse", "foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com:8080", "Parse: domain foo"),
    ("ReferenceParse", "192.168.1.1", "docker.io/library/192.168.1.1", "Parse: no domain"),
    ("ReferenceParse", "192.168.1.1:tag", "docker.io/library/192.168.1.1:tag", ""),
    ("ReferenceParse", "192.168.1.1:5000", "docker.io/library/192.168.1.1:5000", ""),
    ("ReferenceParse", "192.168.1.1/repo", "192.168.1.1/repo", ""),
    ("ReferenceParse", "192.168.1.1:5000/repo", "192.168.1.1:5000/repo", ""),
    ("ReferenceParse", "192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo:5050", ""),
    ("ReferenceParse", "[2001:db8::1]", None, ""),
    ("ReferenceParse", "[2001:db8::1]:5000", None, ""),
    ("ReferenceParse", "[2001:db8::1]:tag", None, ""),
    ("ReferenceParse", "[2001:db8::1]/repo", "[2001:db8::1]/repo", ""),
    ("ReferenceParse", "[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo:tag", ""),
    ("ReferenceParse", "[2001:db8::1]:5000/repo", "[2001:db8::1]:5000/repo", ""),
    ("ReferenceParse", "[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000/repo:tag", ""),
    ("ReferenceParse", f"[2001:db8::1]:5000/repo@sha256:{F64}", f"[2001:db8::1]:5000/repo@sha256:{F64}", ""),
    ("ReferenceParse", f"[2001:db8::1]:5000/repo:tag@sha256:{F64}", f"[2001:db8::1]:5000/repo:tag@sha256:{F64}", ""),
    ("ReferenceParse", "[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo", ""),
    ("ReferenceParse", "[::1]:5000/repo", "[::1]:5000/repo", ""),
    ("ReferenceParse", "[fe80::1%eth0]:5000/repo", None, ""),
    ("ReferenceParse", "[fe80::1%@invalidzone]:5000/repo", None, ""),
    ("ReferenceParse", "example.com/" + "a" * 255 + ":tag", "example.com/" + "a" * 255 + ":tag", "path of 255"),
    # ---- reference_test.go TestWithNameFailure (WithName: a name without tag or digest)
    ("WithNameFailure", "", None, ""),
    ("WithNameFailure", ":justtag", None, ""),
    ("WithNameFailure", f"@sha256:{F64}", None, ""),
    ("WithNameFailure", f"validname@invaliddigest:{F64}", None, ""),
    # DIFFERS: WithName refuses a tag because it builds a bare name; an image field is a
    # reference, where a tag belongs.
    ("WithNameFailure", "example.com/repo:tag", "example.com/repo:tag", DIFFERS),
    ("WithNameFailure", "example.com/" + "a" * 256, None, "path longer than 255"),
    ("WithNameFailure", "aa/asdf$$^/aa", None, ""),
    # ---- reference_test.go TestSerialization
    ("Serialization", "", None, ""),
    ("Serialization", "example.com:8000/named", "example.com:8000/named", ""),
    ("Serialization", "example.com:8000/named:tagged", "example.com:8000/named:tagged", ""),
    ("Serialization", "other.com/named@sha256:1234567890098765432112345667890098765432112345667890098765432112",
     "other.com/named@sha256:1234567890098765432112345667890098765432112345667890098765432112", ""),
    # ---- the two rules issue 13 names (normalize.go/reference.go at the same commit)
    ("normalize.go", f"{H64}:v1", f"docker.io/library/{H64}:v1", "only the whole string is checked for an ID"),
    ("normalize.go", f"{H64}@sha256:{F64}", f"docker.io/library/{H64}@sha256:{F64}", ""),
    ("reference.go", "registry.example.com:5000/" + "a" * 255, "registry.example.com:5000/" + "a" * 255,
     "255 applies to the path only"),
    ("reference.go", "registry.example.com:5000/" + "a" * 256, None, "path longer than 255"),
]

# normalize_test.go TestParseRepositoryInfo: every spelling gives the same full name, domain,
# path (RemoteName) and familiar name.
REPOSITORY_INFO: list[tuple[tuple[str, ...], str, str, str, str]] = [
    # (spellings, full name, domain, path, familiar name)
    (("localhost/fooo",), "localhost/fooo", "localhost", "fooo", "localhost/fooo"),
    (("localhost/fooo/bar",), "localhost/fooo/bar", "localhost", "fooo/bar", "localhost/fooo/bar"),
    (("LOCALDOMAIN/fooo",), "LOCALDOMAIN/fooo", "LOCALDOMAIN", "fooo", "LOCALDOMAIN/fooo"),
    (("LOCALDOMAIN/fooo/bar",), "LOCALDOMAIN/fooo/bar", "LOCALDOMAIN", "fooo/bar", "LOCALDOMAIN/fooo/bar"),
    (("fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar"), "docker.io/fooo/bar", "docker.io", "fooo/bar",
     "fooo/bar"),
    (("ubuntu", "docker.io/library/ubuntu", "library/ubuntu"), "docker.io/library/ubuntu", "docker.io",
     "library/ubuntu", "ubuntu"),
    (("nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu"), "docker.io/nonlibrary/ubuntu", "docker.io",
     "nonlibrary/ubuntu", "nonlibrary/ubuntu"),
    (("other/library", "docker.io/other/library"), "docker.io/other/library", "docker.io", "other/library",
     "other/library"),
    (("127.0.0.1:8000/private/moonbase",), "127.0.0.1:8000/private/moonbase", "127.0.0.1:8000", "private/moonbase",
     "127.0.0.1:8000/private/moonbase"),
    (("127.0.0.1:8000/privatebase",), "127.0.0.1:8000/privatebase", "127.0.0.1:8000", "privatebase",
     "127.0.0.1:8000/privatebase"),
    (("example.com/private/moonbase",), "example.com/private/moonbase", "example.com", "private/moonbase",
     "example.com/private/moonbase"),
    (("example.com/privatebase",), "example.com/privatebase", "example.com", "privatebase", "example.com/privatebase"),
    (("example.com:8000/private/moonbase",), "example.com:8000/private/moonbase", "example.com:8000",
     "private/moonbase", "example.com:8000/private/moonbase"),
    (("example.com:8000/privatebasee",), "example.com:8000/privatebasee", "example.com:8000", "privatebasee",
     "example.com:8000/privatebasee"),
    (("ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base", "index.docker.io/library/ubuntu-12.04-base"),
     "docker.io/library/ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", "ubuntu-12.04-base"),
    (("foo", "docker.io/library/foo", "docker.io/foo"), "docker.io/library/foo", "docker.io", "library/foo", "foo"),
    (("library/foo/bar", "docker.io/library/foo/bar"), "docker.io/library/foo/bar", "docker.io", "library/foo/bar",
     "library/foo/bar"),
    (("store/foo/bar", "docker.io/store/foo/bar"), "docker.io/store/foo/bar", "docker.io", "store/foo/bar",
     "store/foo/bar"),
    (("Foo/bar",), "Foo/bar", "Foo", "bar", "Foo/bar"),
    (("FOO/bar",), "FOO/bar", "FOO", "bar", "FOO/bar"),
]

# (test, input, domain, path): normalize_test.go TestNormalizedSplitHostname; reference_test.go
# TestDomainAndPath (WithName, no normalization: "test_com/foo" has no domain there, docker.io here)
# and TestParseNamed's valid rows.
DOMAIN_AND_PATH: list[tuple[str, str, str, str]] = [
    ("NormalizedSplitHostname", "test.com/foo", "test.com", "foo"),
    ("NormalizedSplitHostname", "test_com/foo", "docker.io", "test_com/foo"),
    ("NormalizedSplitHostname", "docker/migrator", "docker.io", "docker/migrator"),
    ("NormalizedSplitHostname", "test.com:8080/foo", "test.com:8080", "foo"),
    ("NormalizedSplitHostname", "test-com:8080/foo", "test-com:8080", "foo"),
    ("NormalizedSplitHostname", "foo", "docker.io", "library/foo"),
    ("NormalizedSplitHostname", "xn--n3h.com/foo", "xn--n3h.com", "foo"),
    ("NormalizedSplitHostname", "xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
    ("NormalizedSplitHostname", "docker.io/foo", "docker.io", "library/foo"),
    ("NormalizedSplitHostname", "docker.io/library/foo", "docker.io", "library/foo"),
    ("NormalizedSplitHostname", "docker.io/library/foo/bar", "docker.io", "library/foo/bar"),
    ("DomainAndPath", "test.com/foo", "test.com", "foo"),
    ("DomainAndPath", "test_com/foo", "docker.io", "test_com/foo"),
    ("DomainAndPath", "test:8080/foo", "test:8080", "foo"),
    ("DomainAndPath", "test.com:8080/foo", "test.com:8080", "foo"),
    ("DomainAndPath", "test-com:8080/foo", "test-com:8080", "foo"),
    ("DomainAndPath", "xn--n3h.com:18080/foo", "xn--n3h.com:18080", "foo"),
    ("ParseNamed", "test.com/foo", "test.com", "foo"),
    ("ParseNamed", "test:8080/foo", "test:8080", "foo"),
    ("ParseNamed", "docker.io/library/foo", "docker.io", "library/foo"),
]

# reference_test.go TestParseNamed: ParseNamed accepts only canonical names (ErrNameNotCanonical
# otherwise); canonical here means the normalized form is the text itself.
CANONICAL: list[tuple[str, bool]] = [
    ("test.com/foo", True), ("test:8080/foo", True), ("test_com/foo", False), ("test.com", False),
    ("foo", False), ("library/foo", False), ("docker.io/library/foo", True), ("docker.io/foo", False),
]

# normalize_test.go TestParseDockerRef: the name with ":latest" added when there is no tag, and
# only the digest when there are both. ImageRef keeps the tag as written (a rewrite must not drop
# it), so the row compares name + (digest, or the tag with latest implied): the same string.
DOCKER_REF: list[tuple[str, str]] = [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:latest", "docker.io/library/busybox:latest"),
    ("busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
     "docker.io/library/busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/busybox:latest", "docker.io/library/busybox:latest"),
    ("library/busybox:latest", "docker.io/library/busybox:latest"),
    ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
    ("gcr.io/library/busybox", "gcr.io/library/busybox:latest"),
    ("gcr.io/library/busybox:latest@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582",
     "gcr.io/library/busybox@sha256:e6693c20186f837fc393390135d8a598a96a833917917789d63766cab6c59582"),
]


def _id(row: tuple) -> str:
    text = row[1] if len(row[1]) <= 60 else row[1][:28] + "..." + row[1][-28:]
    return f"{row[0]}:{text or '<empty>'}"


@pytest.mark.parametrize("row", VALID_OR_NOT, ids=[_id(r) for r in VALID_OR_NOT])
def test_upstream_validity_and_normalized_name(row: tuple[str, str, str | None, str]) -> None:
    _, text, expected, _ = row
    if expected is None:
        with pytest.raises(ReferenceError):
            parse(text)
        return
    ref = parse(text)
    assert str(ref) == expected
    assert parse(str(ref)) == ref  # the canonical form parses back to itself


@pytest.mark.parametrize(("spellings", "full", "domain", "path", "familiar_name"), REPOSITORY_INFO)
def test_upstream_repository_info(spellings: tuple[str, ...], full: str, domain: str, path: str,
                                  familiar_name: str) -> None:
    for text in spellings:
        ref = parse(text)
        assert (ref.name, ref.registry, ref.repository, familiar(ref)) == (full, domain, path, familiar_name), text


@pytest.mark.parametrize(("test", "text", "domain", "path"), DOMAIN_AND_PATH)
def test_upstream_domain_and_path(test: str, text: str, domain: str, path: str) -> None:
    ref = parse(text)
    assert (ref.registry, ref.repository) == (domain, path)


@pytest.mark.parametrize(("text", "canonical"), CANONICAL)
def test_upstream_canonical_names(text: str, canonical: bool) -> None:
    assert (str(parse(text)) == text) is canonical


@pytest.mark.parametrize(("text", "expected"), DOCKER_REF)
def test_upstream_docker_ref(text: str, expected: str) -> None:
    ref = parse(text)
    assert ref.name + (f"@{ref.digest}" if ref.digest else f":{ref.effective_tag}") == expected


def test_familiar_string_keeps_tag_and_digest() -> None:
    short = "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"
    assert familiar(parse(short)) == short  # TestParseReferenceWithTagAndDigest's FamiliarString


def test_every_deliberate_difference_is_explained() -> None:
    differs = [r for r in VALID_OR_NOT if r[3] == DIFFERS]
    assert len(differs) == 4
    rows = len(VALID_OR_NOT) + sum(len(r[0]) for r in REPOSITORY_INFO) + len(DOMAIN_AND_PATH) + len(CANONICAL) \
        + len(DOCKER_REF) + 1
    assert rows > 200  # the tables are all here
