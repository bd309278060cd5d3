"""What locators report: ImageField, and the Scalar regions and insertion points it carries."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Scalar:
    """One YAML scalar in the text.

    `start`/`end` delimit the characters of the VALUE, the part a rewrite replaces:
    plain: the scalar itself (without anchor/tag); quoted: inside the quotes; block
    (`|`, `>`): the content after the header line, without indentation and line break.
    `exact` is False when that region's raw text is not the value itself (escapes,
    folded lines, multi-line or empty plain/block scalars): such a scalar cannot be
    spliced safely and the rewriter refuses it."""

    start: int
    end: int
    value: str  # the scalar's string content, as constructed
    line: int  # 1-based line where the scalar node starts (its anchor/tag/block header)
    style: str  # plain | single | double | literal | folded
    exact: bool = True


@dataclass(frozen=True)
class Insertion:
    """Where a missing key can be added to a mapping: insert
    `before + key + <value> + after` at `offset` (kustomize `newName: `; Argo CD's
    `name:tag` image string becomes `name=<value>:tag` with key `=`)."""

    offset: int
    before: str
    after: str
    key: str = "newName: "


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping (so ImageField stays hashable); keys are strings."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._items = dict(items)

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items(), key=lambda item: str(item[0]))))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._items!r})"


class Parts(FrozenMap[str, Scalar]):
    """A field's pieces by role (registry, repository, tag, digest, name, newName...)."""

    __slots__ = ()


NO_PARTS = Parts()


class LabelMap(FrozenMap[str, str]):
    """A pod's labels as written."""

    __slots__ = ()


@dataclass(frozen=True)
class ImageField:
    """One image found in a file.

    `value` is the image as the runtime will see it (for Helm split maps the reference
    the chart renders). `scalar` is the one scalar to rewrite (pod, compose, hint, helm
    plain strings); split Helm maps and kustomize entries use `parts` instead. An
    aliased node reached twice gives two ImageFields sharing one Scalar."""

    source: str  # pod | helm | kustomize | compose | hint
    document: int  # 0-based, empty documents count (as yaml.safe_load_all)
    path: str  # JSON pointer
    value: str
    line: int
    scalar: Scalar | None
    parts: Mapping[str, Scalar]
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    container: str | None = None
    note: str | None = None
    insert: Insertion | None = None  # kustomize: where to add `newName` when absent
    # The labels of the pod this container runs in, as written (a workload's pod template's);
    # None when the format does not say (Helm values, Kustomize images, Compose) or a label is
    # not a plain string. Azure Policy's labelSelector is matched against them.
    labels: LabelMap | None = None


def split_name(text: str) -> tuple[str, str]:
    """("registry/repository" as written, ":tag@digest" as written) of a reference text."""
    at = text.find("@")
    rest = text if at < 0 else text[:at]
    colon = rest.rfind(":")
    end = colon if colon > rest.rfind("/") and not rest.endswith("]") else len(rest)
    return text[:end], text[end:]
