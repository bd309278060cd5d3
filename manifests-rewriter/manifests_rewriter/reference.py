"""Container image references, parsed and normalized as the Docker distribution
reference grammar does (github.com/distribution/reference, ParseNormalizedNamed).

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path
    domain    := host [ ":" port ]          host: DNS name, IPv4, or "[" IPv6 "]"
    path      := component ( "/" component )*   lower-case only

`nginx` becomes `docker.io/library/nginx`; `index.docker.io` and `registry-1.docker.io`
become `docker.io`. The text as written is kept in `original` so a rewrite can touch
only the name and keep tag and digest exactly as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Docker Hub, in one place: image names say docker.io (or an alias), its API lives at
# registry-1.docker.io, and Docker's credential stores know it as the legacy v1 index URL.
DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_CREDENTIAL_SERVER = "https://index.docker.io/v1/"
MAX_PATH_LENGTH = 255  # distribution/reference RepositoryNameTotalLengthMax: the path only, not the domain

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
DIGEST_ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}  # algorithm -> hex digits
_HEX64 = re.compile(r"[a-f0-9]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s")


class ReferenceError(ValueError):
    """An image string that is not a valid reference; the message says why."""


@dataclass(frozen=True)
class ImageRef:
    registry: str  # normalized host[:port], e.g. docker.io, 127.0.0.1:5000, [::1]:5000
    repository: str  # path, e.g. library/nginx
    tag: str | None = None  # as written; None when absent (latest is implied)
    digest: str | None = None  # "sha256:<hex>" as written
    original: str = field(default="", compare=False)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def effective_tag(self) -> str:
        return self.tag or "latest"

    @property
    def reference(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.effective_tag

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def with_name(self, registry: str, repository: str) -> ImageRef:
        """Same tag and digest as written, another registry and repository."""
        ref = ImageRef(registry, repository, self.tag, self.digest)
        return ImageRef(registry, repository, self.tag, self.digest, original=str(ref))

    def with_digest(self, digest: str | None) -> ImageRef:
        ref = ImageRef(self.registry, self.repository, self.tag, digest)
        return ImageRef(ref.registry, ref.repository, ref.tag, ref.digest, original=str(ref))


def digest_problem(digest: object) -> str | None:
    """Why `digest` is not a content digest acr-mirror can use, or None when it is one:
    `algorithm:hex` with a supported algorithm and exactly its number of lower-case hex digits.
    Every digest, written in a manifest or sent by a registry, is checked here before use."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        return f"invalid digest {digest!r}"
    algorithm, hexpart = digest.split(":", 1)
    expected = DIGEST_ALGORITHMS.get(algorithm)
    if expected is None:
        return f"unsupported digest algorithm {algorithm!r}"
    if len(hexpart) != expected or hexpart != hexpart.lower():
        return f"invalid {algorithm} digest (need {expected} lower-case hex digits)"
    return None


def is_digest(text: object) -> bool:
    return digest_problem(text) is None


def is_docker_hub(host: str) -> bool:
    return host in DOCKER_HUB_ALIASES


def _reject_obvious(text: str) -> None:
    if not text or not text.strip():
        raise ReferenceError("empty image reference")
    if "{{" in text or "}}" in text:
        raise ReferenceError(f"{text!r} is a template expression, not an image reference")
    if "$" in text:
        raise ReferenceError(f"{text!r} contains a variable ($...), not a literal image reference")
    if "://" in text:
        raise ReferenceError(f"{text!r} is a URL or build reference (scheme://), not an image reference")
    if text != text.strip():
        raise ReferenceError(f"{text!r} has leading or trailing whitespace")
    if _CONTROL.search(text):
        raise ReferenceError("image reference contains control characters")
    if _SPACE.search(text):
        raise ReferenceError(f"{text!r} contains whitespace")


def _split_domain(name: str) -> tuple[str, str]:
    """distribution's splitDockerDomain: the first component is a host only if it has
    a '.' or ':', is 'localhost', or has upper-case letters (a path never does)."""
    slash = name.find("/")
    first = name[:slash]
    if slash == -1 or (
        not any(c in first for c in ".:[") and first != "localhost" and first.lower() == first
    ):
        domain, path = DOCKER_HUB, name
    else:
        domain, path = first, name[slash + 1 :]
    if domain.lower() in DOCKER_HUB_ALIASES:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return domain, path


def parse(text: str) -> ImageRef:
    """Parse and normalize one image reference; raise ReferenceError with the reason."""
    if not isinstance(text, str):
        raise ReferenceError(f"image must be a string, not {type(text).__name__}")
    _reject_obvious(text)
    if len(text) > 4096:
        raise ReferenceError(f"image reference is {len(text)} characters long (invalid)")
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        problem = digest_problem(digest)
        if problem:
            raise ReferenceError(f"{text!r}: {problem}")
    tag = None
    # A ':' after the last '/' separates the tag; one before it belongs to host:port.
    colon = rest.rfind(":")
    if colon > rest.rfind("/") and not rest.endswith("]"):
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not TAG_RE.fullmatch(tag):
            raise ReferenceError(f"{text!r}: invalid tag {tag!r}")
    if not rest:
        raise ReferenceError(f"{text!r}: missing repository name")
    if _HEX64.fullmatch(text):  # the whole text, as ParseNormalizedNamed: "<64 hex>:tag" is a valid name
        raise ReferenceError(f"{text!r}: a 64-character hex string is an image ID, not a repository name")
    domain, path = _split_domain(rest)
    if not DOMAIN_RE.fullmatch(domain):
        raise ReferenceError(f"{text!r}: invalid registry host {domain!r}")
    if path.lower() != path and PATH_RE.fullmatch(path.lower()):
        raise ReferenceError(f"{text!r}: repository name must be lowercase")
    if not PATH_RE.fullmatch(path):
        raise ReferenceError(f"{text!r}: invalid repository name {path!r}")
    if len(path) > MAX_PATH_LENGTH:  # the path after normalization (docker.io/library/... included)
        raise ReferenceError(f"{text!r}: repository name must not be more than {MAX_PATH_LENGTH} characters")
    return ImageRef(domain, path, tag, digest, original=text)


def try_parse(text: object) -> ImageRef | None:
    try:
        return parse(text)  # type: ignore[arg-type]
    except ReferenceError:
        return None


def familiar(ref: ImageRef) -> str:
    """The short form people write: docker.io/library/nginx:1 -> nginx:1."""
    name = ref.name
    if ref.registry == DOCKER_HUB:
        name = ref.repository.removeprefix("library/") if ref.repository.count("/") == 1 else ref.repository
    text = name + (f":{ref.tag}" if ref.tag else "") + (f"@{ref.digest}" if ref.digest else "")
    return text


def is_valid_repository(path: str) -> bool:
    return bool(PATH_RE.fullmatch(path))
