"""Target names: where a source image goes in the target registry.

`target.naming` is a template over `{registry}` (the source host) and `{repository}` (the
source path); the result is a repository path in `target.registry`. With the default
"{registry}/{repository}", `nginx:1` becomes `crazureblue.azurecr.io/docker.io/library/nginx:1`.

A source host is not always a valid path component: `127.0.0.1:5000` or `[::1]:5000`.
Such a host is made one by lower-casing it and turning every run of characters a path
may not hold (':', '[', ']') into '-': `127.0.0.1:5000` -> `127.0.0.1-5000`,
`[::1]:5000` -> `1-5000`.
"""

from __future__ import annotations

import re
import string

from .reference import ImageRef, ReferenceError, is_valid_repository

DEFAULT_NAMING = "{registry}/{repository}"
_FIELDS = {"registry", "repository"}


class NamingError(ValueError):
    pass


def host_as_path(host: str) -> str:
    text = re.sub(r"[^a-z0-9._-]+", "-", host.lower()).strip("-._")
    return re.sub(r"[-]*([._])[-]*", r"\1", text) or "registry"


def check_template(template: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise NamingError(f"target.naming {template!r}: {exc}") from None
    unknown = names - _FIELDS
    if unknown:
        raise NamingError(f"target.naming {template!r}: unknown placeholder(s) "
                          f"{', '.join(sorted(unknown))}; use {{registry}} and {{repository}}")
    if "repository" not in names:
        raise NamingError(f"target.naming {template!r} must contain {{repository}}, "
                          f"or every image would collide on one name")


def target_for(source: ImageRef, registry: str, template: str = DEFAULT_NAMING) -> ImageRef:
    """The target reference: same tag and digest as written, name from the template."""
    path = template.format(registry=host_as_path(source.registry), repository=source.repository)
    path = path.strip("/")
    if not is_valid_repository(path):
        raise ReferenceError(f"target name {registry}/{path!r} for {source.original or source} is not a valid repository")
    return source.with_name(registry, path)
