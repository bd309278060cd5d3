"""What `kustomize build` does to container images, modelled offline (no kustomize binary).

    b = build("overlays/prod")
    for f in b.fields:            # every image field of the rendered output
        f.resource, f.source, f.pointer, f.original, f.image
    for m in b.all_matches():     # every images: entry that matched, with the name it matched
        m.entry, m.kustomization, m.field, m.before, m.after

Read from kustomize's own code (api/internal/target/kusttarget.go, api/filters/imagetag,
api/internal/image, api/internal/konfig/builtinpluginconsts/images.go) and checked against
`kubectl kustomize` (kustomize v5.5.0):
- order: a kustomization accumulates its resources (each directory fully built first), runs
  its generators, then its components in order (each component adds its resources and applies
  its own transformers to everything accumulated so far), then its own transformers: patches,
  namespace, prefixes, labels, ..., images (one transformer per entry, in list order);
- an entry matches an image by NAME as written at that moment, after earlier transformers: the
  entry name is used as a regular expression, `^NAME(:tag)?(@digest)?$`, unescaped (so `.`
  matches any character, and a base image `nginx` is not matched by `docker.io/library/nginx`);
- on a match: newName replaces the name; newTag (with digest: both) replaces tag and drops the
  digest; digest alone drops the tag; tagSuffix appends to the tag (dropping the digest);
- fields: every `image` in a list under a `containers` or `initContainers` key at any depth (the
  "legacy" walk; ephemeralContainers are not touched), and the field specs spec/containers[]/image,
  spec/initContainers[]/image, spec/template/spec/... (plus `configurations:` image field specs).
  A field reached both ways is transformed twice by the same entry (visible with tagSuffix:
  `nginx:1.27` becomes `nginx:1.27-s-s` in a Pod or Deployment, `nginx:1.27-s` in a CronJob);
  CustomResourceDefinition objects are never touched.
Not modelled (reported in `notes`): patches and replacements that set images, helmCharts
(kustomize needs --enable-helm and a helm binary), remote resources (refused, never fetched).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import AcrMirrorError
from .yamlload import GoLikeLoader

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 50  # nested bases/components

# kustomize's default image field specs (builtinpluginconsts/images.go as of v5.5.0; newer
# versions add spec/volumes[]/image/reference, which v5.5.0 leaves alone)
DEFAULT_FIELD_SPECS: tuple[tuple[str, ...], ...] = (
    ("spec", "containers[]", "image"),
    ("spec", "initContainers[]", "image"),
    ("spec", "template", "spec", "containers[]", "image"),
    ("spec", "template", "spec", "initContainers[]", "image"),
)
LEGACY_LISTS = ("containers", "initContainers")


class KustomizeError(AcrMirrorError, ValueError):
    """A kustomization that cannot be read; the message names the file and says why."""


# ------------------------------------------------------------------ image names, as kustomize
def split(image: str) -> tuple[str, str, str]:
    """kustomize's image.Split: (name, tag, digest); ':' and '@' are searched after the first '/'."""
    search, slash = image, image.find("/")
    if slash > 0:
        search = image[slash:]
    else:
        slash = 0
    at, colon = search.find("@"), search.find(":")
    if colon < 0 and at < 0:
        return image, "", ""
    if at >= 0 and (at < colon or colon < 0):
        return image[: at + slash], "", image[at + slash + 1:]
    if at >= 0 and colon >= 0:
        return image[: colon + slash], image[colon + slash + 1: at + slash], image[at + slash + 1:]
    return image[: colon + slash], image[colon + slash + 1:], ""


def is_matched(image: str, name: str) -> bool:
    """kustomize's image.IsImageMatched: the entry name is a regular expression, unescaped."""
    try:
        pattern = re.compile("^" + name + r"(:[a-zA-Z0-9_.{}-]*)?(@[a-zA-Z0-9]+([.+_-][a-zA-Z0-9]+)*:[a-zA-Z0-9_.{}-]*)?$")
    except re.error:
        return False  # Go: a name that does not compile matches nothing
    return pattern.fullmatch(image) is not None


@dataclass(frozen=True)
class ImageEntry:
    """One entry of a kustomization's `images:` list."""

    name: str
    new_name: str = ""
    new_tag: str = ""
    digest: str = ""
    tag_suffix: str = ""
    kustomization: str = ""  # the file it is written in
    index: int = 0  # its position in that file's images: list

    def apply(self, image: str) -> str | None:
        """The new value, or None when the entry does not match (imagetag/updater.go)."""
        if not is_matched(image, self.name):
            return None
        name, tag, digest = split(image)
        if self.new_name:
            name = self.new_name
        if self.new_tag and self.digest:
            tag, digest = self.new_tag, self.digest
        elif self.new_tag:
            tag, digest = self.new_tag, ""
        elif self.digest:
            tag, digest = "", self.digest
        elif self.tag_suffix:
            tag, digest = tag + self.tag_suffix, ""
        return name + (":" + tag if tag else "") + ("@" + digest if digest else "")


# ----------------------------------------------------------------------------- the model
@dataclass
class ImageField:
    """An image field of a rendered resource, traced back to where it is written."""

    resource: str  # Kind/name as written in its source (prefixes and namespaces are not applied)
    source: str  # file the resource comes from
    doc: int  # document index in that file
    pointer: str  # JSON pointer of the field inside that document
    original: str  # value as written in the source file
    image: str  # value after every transformer of the build
    legacy: bool  # reached by the containers/initContainers walk
    field_spec: bool  # reached by a field spec


@dataclass
class Match:
    entry: ImageEntry
    kustomization: str  # where the entry is written
    applied_in: str  # the kustomization (or component) whose build applied it
    field: ImageField
    before: str  # the name as written when the entry applied: what it matched
    after: str


@dataclass
class Build:
    """A kustomization (or component) built: the image fields it renders, the matches of its own
    images: entries, the builds it used (resources and components), and what was not modelled."""

    directory: str
    kustomization: str
    kind: str  # Kustomization or Component
    fields: list[ImageField]
    matches: list[Match] = field(default_factory=list)
    entries: list[ImageEntry] = field(default_factory=list)
    children: list[Build] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    helm_charts: list[dict[str, Any]] = field(default_factory=list)
    specs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # image field specs in force: (kind or "", path)

    def walk(self) -> Iterator[Build]:
        yield self
        for c in self.children:
            yield from c.walk()

    def all_matches(self) -> Iterator[Match]:
        for b in self.walk():
            yield from b.matches

    def images(self) -> list[str]:
        return [f.image for f in self.fields]

    def unmatched_entries(self) -> list[ImageEntry]:
        """images: entries (of this build and every build it used) that matched no image: after a
        rename upstream, an overlay entry written for the old name silently does nothing."""
        matched = {(m.entry.kustomization, m.entry.index) for m in self.all_matches()}
        return [e for b in self.walk() for e in b.entries if (e.kustomization, e.index) not in matched]


@dataclass
class _Resource:
    obj: dict[str, Any]
    source: str
    doc: int
    fields: list[tuple[tuple[str | int, ...], ImageField]]  # path in obj -> field


# What one build reads: texts to use instead of files (real path -> text: a rewrite checks what
# its edits would render before writing them), and documents already parsed (real path -> docs).
_READING: ContextVar[tuple[Mapping[str, str], dict[str, list[Any]]] | None] = ContextVar("_READING", default=None)


def build(directory: str | os.PathLike[str], *, texts: Mapping[str, str] | None = None,
          parsed: dict[str, list[Any]] | None = None) -> Build:
    """Model `kustomize build directory` for container images. `texts`: file contents to read
    instead of the files (keys: real paths); `parsed`: a cache of parsed files to share between
    builds of one tree (keys: real paths; it must not outlive the files or `texts`)."""
    directory = os.path.abspath(os.fspath(directory))
    token = _READING.set((texts or {}, parsed if parsed is not None else {}))
    try:
        return _build(directory, [], depth=0, stack=())
    finally:
        _READING.reset(token)


def find_kustomization(directory: str) -> str | None:
    for n in KUSTOMIZATION_FILES:
        p = os.path.join(directory, n)
        if os.path.isfile(p):
            return p
    return None


def _is_remote(ref: str) -> bool:
    return "://" in ref or ref.startswith(("github.com/", "gitlab.com/", "bitbucket.org/", "git@", "git::")) \
        or "?ref=" in ref or ".git//" in ref


def _read_yaml(path: str) -> list[Any]:
    reading = _READING.get()
    if reading is None:
        return _load(path, None)
    texts, parsed = reading
    real = os.path.realpath(path)
    if real not in parsed:
        parsed[real] = _load(path, texts.get(real))
    # a build changes the objects it reads, except CustomResourceDefinitions (never transformed,
    # and the largest documents by far)
    return [d if isinstance(d, dict) and _is_crd(d) else copy.deepcopy(d) for d in parsed[real]]


def _load(path: str, text: str | None) -> list[Any]:
    try:
        if text is not None:
            return list(yaml.load_all(text, Loader=GoLikeLoader))  # noqa: S506 - SafeLoader subclass
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise KustomizeError(f"{path}: {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        with open(path, encoding="utf-8") as f:
            return list(yaml.load_all(f, Loader=GoLikeLoader))  # noqa: S506 - SafeLoader subclass
    except OSError as e:
        raise KustomizeError(f"{path}: cannot read ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise KustomizeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def _build(directory: str, acc: list[_Resource], depth: int, stack: tuple[str, ...],
           component: bool = False) -> Build:
    """Accumulate a kustomization into acc (its own resources appended) and return its Build.

    For a kustomization, acc starts empty and ends with everything it renders. For a component,
    acc holds the parent's accumulated resources, which the component transforms too."""
    if depth > MAX_DEPTH:
        raise KustomizeError(f"{directory}: bases/components nested more than {MAX_DEPTH} deep")
    kfile = find_kustomization(directory)
    if kfile is None:
        raise KustomizeError(f"{directory}: no kustomization.yaml (or .yml, Kustomization) in this directory")
    if kfile in stack:
        raise KustomizeError(f"{kfile}: cycle through " + " -> ".join(stack + (kfile,)))
    stack = stack + (kfile,)
    docs = _read_yaml(kfile)
    k = docs[0] if docs else {}
    if k is None:
        k = {}
    if not isinstance(k, dict):
        raise KustomizeError(f"{kfile}: expected a mapping")
    kind = str(k.get("kind") or "Kustomization")
    b = Build(directory, kfile, kind, fields=[])
    own: list[_Resource] = []

    for key in ("resources", "bases"):
        for ref in _list(k, key, kfile):
            if _is_remote(ref):
                b.notes.append(f"{kfile}: remote {key[:-1]} {ref} not fetched (only local paths are modelled)")
                continue
            path = os.path.normpath(os.path.join(directory, ref))
            if os.path.isdir(path):
                sub_acc: list[_Resource] = []
                child = _build(path, sub_acc, depth + 1, stack)
                b.children.append(child)
                b.notes.extend(child.notes)
                own.extend(sub_acc)
            elif os.path.isfile(path):
                own.extend(_resources_from_file(path))
            else:
                raise KustomizeError(f"{kfile}: {key} entry {ref!r} does not exist")
    for gen in ("helmCharts",):
        for h in _list(k, gen, kfile, dicts=True):
            b.helm_charts.append(h)
            b.notes.append(f"{kfile}: helmCharts {h.get('name')} {h.get('version', '')} not rendered "
                           "(kustomize needs --enable-helm and a helm binary); its valuesInline holds its image overrides")
    acc.extend(own)
    specs = DEFAULT_FIELD_SPECS_WITH_KIND + tuple(_configurations(k, directory, kfile))
    for child in b.children:  # configurations of bases reach the overlay too (MergeConfig)
        specs += tuple(x for x in child.specs if x not in specs)

    for ref in _list(k, "components", kfile):
        if _is_remote(ref):
            b.notes.append(f"{kfile}: remote component {ref} not fetched")
            continue
        path = os.path.normpath(os.path.join(directory, ref))
        if not os.path.isdir(path):
            raise KustomizeError(f"{kfile}: component {ref!r} is not a directory")
        child = _build(path, acc, depth + 1, stack, component=True)
        b.children.append(child)
        b.notes.extend(child.notes)
        specs += tuple(x for x in child.specs if x not in specs)
    b.specs = specs

    for key in ("patches", "patchesStrategicMerge", "patchesJson6902", "replacements"):
        if k.get(key):
            what = ("can add, change or delete images (they write image fields or delete objects)"
                    if _mentions_image(k[key], directory) else "write no image field")
            b.notes.append(f"{kfile}: {key} not modelled; they {what}")

    # this kustomization's own images: entries, in order, over everything accumulated
    entries = [_entry(e, kfile, i) for i, e in enumerate(_list(k, "images", kfile, dicts=True))]
    b.entries = entries
    if entries:
        for res in acc:
            _add_spec_fields(res, specs)
    for entry in entries:
        for res in acc:
            if _is_crd(res.obj):
                continue  # kustomize's deny list
            for fpath, f in res.fields:
                before = _get(res.obj, fpath)
                if not isinstance(before, str):
                    continue
                value = before
                reaches = [r for r in (f.legacy, _spec_applies(res, fpath, specs)) if r]
                # the legacy walk and the field specs each apply the entry: twice when both reach it
                for _ in reaches:
                    new = entry.apply(value)
                    value = value if new is None else new
                if reaches and is_matched(before, entry.name):
                    b.matches.append(Match(entry, kfile, kfile, f, before, value))
                if value != before:
                    _set(res.obj, fpath, value)
                    f.image = value
    b.fields = [copy.copy(f) for res in acc for _, f in res.fields]
    return b


def _add_spec_fields(res: _Resource, specs: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    """Fields only a configurations: field spec reaches (e.g. a custom kind's image path)."""
    have = {p for p, _ in res.fields}
    name = f"{res.obj.get('kind')}/{(res.obj.get('metadata') or {}).get('name')}"
    for kind, spec in specs:
        if kind and kind != res.obj.get("kind"):
            continue
        for p in _expand(res.obj, spec):
            v = _get(res.obj, p)
            if p not in have and isinstance(v, str):
                res.fields.append((p, ImageField(name, res.source, res.doc, _pointer(p), v, v, False, True)))
                have.add(p)
            elif p in have:
                next(f for q, f in res.fields if q == p).field_spec = True


DEFAULT_FIELD_SPECS_WITH_KIND: tuple[tuple[str, tuple[str, ...]], ...] = tuple(("", p) for p in DEFAULT_FIELD_SPECS)


def _list(k: dict[str, Any], key: str, kfile: str, dicts: bool = False) -> list[Any]:
    v = k.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise KustomizeError(f"{kfile}: {key} must be a list")
    for x in v:
        if dicts and not isinstance(x, dict):
            raise KustomizeError(f"{kfile}: each {key} entry must be a mapping")
        if not dicts and not isinstance(x, str):
            raise KustomizeError(f"{kfile}: each {key} entry must be a path")
    return v


def _entry(e: dict[str, Any], kfile: str, i: int) -> ImageEntry:
    if not e.get("name"):
        raise KustomizeError(f"{kfile}: images[{i}] has no name")

    def s(key: str) -> str:
        v = e.get(key)
        return "" if v is None else str(v)

    return ImageEntry(name=s("name"), new_name=s("newName"), new_tag=s("newTag"), digest=s("digest"),
                      tag_suffix=s("tagSuffix"), kustomization=kfile, index=i)


def _resources_from_file(path: str) -> list[_Resource]:
    out = []
    for i, d in enumerate(_read_yaml(path)):
        if not isinstance(d, dict):
            continue
        if d.get("kind", "").endswith("List") and isinstance(d.get("items"), list):
            raise KustomizeError(f"{path}: List objects are not modelled")
        out.append(_Resource(d, path, i, list(_image_fields(d, path, i))))
    return out


def _image_fields(obj: dict[str, Any], source: str, doc: int) -> Iterator[tuple[tuple[str | int, ...], ImageField]]:
    """Every string `image` of an item in a list under containers/initContainers (any depth),
    and every field a default field spec reaches."""
    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    seen: dict[tuple[str | int, ...], ImageField] = {}

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(node, dict):
            for key, v in node.items():
                if key in LEGACY_LISTS and isinstance(v, list):
                    for j, c in enumerate(v):
                        if isinstance(c, dict) and isinstance(c.get("image"), str):
                            p = path + (key, j, "image")
                            seen[p] = ImageField(name, source, doc, _pointer(p), c["image"], c["image"], True, False)
                walk(v, path + (key,))
        elif isinstance(node, list):
            for j, v in enumerate(node):
                walk(v, path + (j,))

    walk(obj, ())
    for _, spec in DEFAULT_FIELD_SPECS_WITH_KIND:
        for p in _expand(obj, spec):
            if isinstance(_get(obj, p), str):
                f = seen.get(p)
                if f is None:
                    v = _get(obj, p)
                    seen[p] = ImageField(name, source, doc, _pointer(p), v, v, False, True)
                else:
                    f.field_spec = True
    return iter(seen.items())


def _configurations(k: dict[str, Any], directory: str, kfile: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Image field specs from `configurations:` files ({images: [{path, kind}]})."""
    for ref in _list(k, "configurations", kfile):
        path = os.path.normpath(os.path.join(directory, ref))
        if not os.path.isfile(path):
            raise KustomizeError(f"{kfile}: configurations file {ref!r} does not exist")
        for d in _read_yaml(path):
            for spec in (d or {}).get("images") or []:
                if isinstance(spec, dict) and spec.get("path"):
                    yield str(spec.get("kind") or ""), tuple(str(spec["path"]).split("/"))


def _spec_applies(res: _Resource, path: tuple[str | int, ...], specs: tuple[tuple[str, tuple[str, ...]], ...]) -> bool:
    kind = res.obj.get("kind")
    for spec_kind, spec in specs:
        if spec_kind and spec_kind != kind:
            continue
        if path in set(_expand(res.obj, spec)):
            return True
    return False


def _expand(obj: Any, spec: tuple[str, ...]) -> Iterator[tuple[str | int, ...]]:
    """Concrete paths for a field spec (a `[]` suffix walks every list item)."""
    def rec(node: Any, i: int, path: tuple[str | int, ...]) -> Iterator[tuple[str | int, ...]]:
        if i == len(spec):
            yield path
            return
        part = spec[i]
        listy = part.endswith("[]")
        key = part[:-2] if listy else part
        if not isinstance(node, dict) or key not in node:
            return
        v = node[key]
        if listy:
            if isinstance(v, list):
                for j, item in enumerate(v):
                    yield from rec(item, i + 1, path + (key, j))
        else:
            yield from rec(v, i + 1, path + (key,))

    return rec(obj, 0, ())


def _is_crd(obj: dict[str, Any]) -> bool:
    return obj.get("kind") == "CustomResourceDefinition"


def _get(obj: Any, path: tuple[str | int, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _set(obj: Any, path: tuple[str | int, ...], value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _pointer(path: tuple[str | int, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _mentions_image(patches: Any, directory: str) -> bool:
    images = re.compile(r"\bimage\b|\$patch:\s*delete|\bop:\s*remove\b")
    if images.search(yaml.safe_dump(patches)):
        return True
    for p in patches if isinstance(patches, list) else []:
        ref = p.get("path") if isinstance(p, dict) else p if isinstance(p, str) else None
        if ref and not _is_remote(ref):
            try:
                with open(os.path.join(directory, ref), encoding="utf-8") as f:
                    if images.search(f.read(MAX_FILE_BYTES)):
                        return True
            except OSError:
                continue
    return False
