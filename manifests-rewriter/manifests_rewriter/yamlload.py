"""Constructing YAML the way Helm and kustomize (Go) read it, for values and kustomizations.

The safe loader, libyaml's when present: it accepts what Go YAML accepts and pure-Python PyYAML
refuses (a tab after a plain scalar, seen in argocd-example-apps); plus a plain `=` scalar (the
YAML 1.1 "value" tag has no constructor in PyYAML). The locators do not construct: they compose
(locate/document.py).
"""

from __future__ import annotations

from typing import Any

import yaml

_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class GoLikeLoader(_BASE):  # type: ignore[valid-type,misc]
    """yaml.SafeLoader (libyaml's when present) plus the plain `=` scalar."""


def _plain_scalar(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return loader.construct_scalar(node)  # type: ignore[arg-type]


GoLikeLoader.add_constructor("tag:yaml.org,2002:value", _plain_scalar)
