"""Rewrites that keep what `kustomize build` renders.

A kustomization's `images:` entry finds its image by NAME, as the build has it at that moment.
Rewriting a base's `image: nginx:1.27` to `crazureblue.azurecr.io/docker.io/library/nginx:1.27`
alone leaves an overlay's `- name: nginx / newTag: 1.27.1` matching nothing, and production
silently rolls back to 1.27. So, before anything is written, the kustomizations of the
repository are modelled offline (kustomize_model: what each one renders, and which entry
matched which image under which name), and every image field an entry matches is decided
together with the entries that match it (a "group"):

- in place, the usual case: the base image is rewritten as any image is, and each entry that
  matched it follows: its `name` becomes the base image's new name; a `newName` the policy
  refuses gets its target. An overlay's tag, digest and tagSuffix stay as they are;
- left for the entry's newName: a base image that is not rewritten (outside the files given,
  or its own reference cannot be rewritten) keeps its name; the entry that decides the name a
  refused render ends with gets (or changes) its `newName`, so every build renders the target;
- neither: an entry that would have to match two different new names, a render whose image
  cannot be rewritten (e.g. not in the target), an entry in a file that may not be written:
  nothing of the group changes, and each refused field of it is reported as skipped.

The model does not apply patches, but the images a kustomization's patch files write (found as
pod images: locate/patches.py, or a strategic-merge patch's containers) join the groups of the
entries applied after them, so an entry that follows a renamed base keeps matching them too.

Then the edits are checked before anything is written: every kustomization is modelled again
on the edited texts, and each image it renders must be the one it rendered before, or that
image's target with the same tag and digest. A group that fails the check is left unchanged.

Which kustomizations: every kustomization file below the repository root of each path given
(the nearest directory above it holding `.git`; without one, the directory given or the
file's directory), read offline, never fetched. A kustomization that is not among the files
given is edited when one of its entries must follow a base image that is rewritten (the
pre-commit hook names only the files of a commit: a base changed alone brings along the
overlay entries that match it), unless scan.exclude excludes it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from . import files
from . import kustomize_model as km
from .locate import ImageField, YamlError, locate
from .policy import Policy
from .reference import ImageRef, ReferenceError, parse

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# (real path, document index, JSON pointer): an image field or an images: entry
Key = tuple[str, int, str]
Resolve = Callable[[ImageRef], "ImageRef | str"]


@dataclass(frozen=True)
class Keep:
    """Leave the field as it is; reported as skipped (with the reason) when the policy refuses it."""

    reason: str


@dataclass(frozen=True)
class EntryEdit:
    """The new `name` / `newName` of an images: entry (None: as it is)."""

    name: str | None = None
    new_name: str | None = None


@dataclass(frozen=True)
class InPlace:
    """Rewrite the field as any refused field, though its file is not among the files given."""


Decision = Keep | EntryEdit | InPlace


def entry_key(entry: km.ImageEntry) -> Key:
    return os.path.realpath(entry.kustomization), 0, f"/images/{entry.index}"


# ----------------------------------------------------------------------------- the repository


def repository_root(path: str) -> str:
    """The nearest directory at or above `path` holding `.git` (the hook runs at the root of its
    repository); without one, the directory given or the file's directory."""
    start = os.path.abspath(path)
    if not os.path.isdir(start):
        start = os.path.dirname(start)
    return files.repository_root(start) or start


def kustomization_dirs(roots: Iterable[str]) -> list[str]:
    """Directories holding a kustomization file below `roots` (links to directories are not
    followed, version-control and dependency directories are skipped), sorted."""
    found: set[str] = set()
    walked: list[str] = []
    for root in sorted({os.path.abspath(r) for r in roots}):
        if any(root.startswith(w + os.sep) for w in walked):
            continue  # below a root already walked
        walked.append(root)
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d not in files.SKIP_DIRS)
            if any(name in km.KUSTOMIZATION_FILES for name in names):
                found.add(directory)
    return sorted(found)


# ----------------------------------------------------------------------------- what kustomize renders


@dataclass(frozen=True)
class Render:
    """One image field in the output of one kustomization build."""

    root: str  # the kustomization directory built
    key: Key  # where the image is written
    original: str  # as written there
    final: str  # as the build renders it
    steps: tuple[tuple[Key, str], ...]  # the entries that matched it, in order, with the image each one saw


@dataclass
class Model:
    """Every kustomization of the tree built, as far as the model goes."""

    renders: list[Render] = field(default_factory=list)
    entries: dict[Key, km.ImageEntry] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)  # root -> what is not modelled there
    failed: dict[str, str] = field(default_factory=dict)  # root -> why it could not be built

    def through_entries(self) -> dict[Key, list[Render]]:
        """For each images: entry that matched, the renders it took part in."""
        out: dict[Key, list[Render]] = {}
        for r in self.renders:
            for ekey in dict.fromkeys(e for e, _ in r.steps):
                out.setdefault(ekey, []).append(r)
        return out

    def by_root(self) -> dict[str, dict[Key, Render]]:
        out: dict[str, dict[Key, Render]] = {}
        for r in self.renders:
            out.setdefault(r.root, {})[r.key] = r
        return out


def _in_order(b: km.Build) -> Iterator[km.Match]:
    """The matches of a build in the order kustomize applies them: resources and components
    first (each fully), then the kustomization's own entries."""
    for child in b.children:
        yield from _in_order(child)
    yield from b.matches


def build_model(directories: Iterable[str], *, texts: Mapping[str, str] | None = None,
                parsed: dict[str, list[Any]] | None = None) -> Model:
    """Build every kustomization (components are built by the kustomizations using them)."""
    model = Model()
    parsed = {} if parsed is None else parsed
    patched: dict[str, list[ImageField]] = {}
    for directory in directories:
        try:
            b = km.build(directory, texts=texts, parsed=parsed)
        except km.KustomizeError as exc:
            model.failed[directory] = str(exc)
            continue
        if b.kind == "Component":
            continue
        model.notes[directory] = list(dict.fromkeys(b.notes))
        steps: dict[Key, list[tuple[Key, str]]] = {}
        for m in _in_order(b):
            key = (os.path.realpath(m.field.source), m.field.doc, m.field.pointer)
            ekey = entry_key(m.entry)
            model.entries[ekey] = m.entry
            steps.setdefault(key, []).append((ekey, m.before))
        for f in b.fields:
            key = (os.path.realpath(f.source), f.doc, f.pointer)
            model.renders.append(Render(directory, key, f.original, f.image, tuple(steps.get(key, ()))))
        seen = {r.key for r in model.renders if r.root == directory}
        for r in _patch_renders(b, directory, [], texts or {}, patched):
            if r.key not in seen:
                seen.add(r.key)
                model.renders.append(r)
                model.entries.update((e, _entry_of(b, e)) for e, _ in r.steps)
    return model


# ----------------------------------------------------------------------------- images that patches write


def _entries_of_component(c: km.Build) -> list[km.ImageEntry]:
    """The entries a component applies: its own components' first, then its own."""
    return [e for child in c.children if child.kind == "Component" for e in _entries_of_component(child)] + c.entries


def _entry_of(b: km.Build, key: Key) -> km.ImageEntry:
    return next(e for node in b.walk() for e in node.entries if entry_key(e) == key)


def _patch_files(b: km.Build, texts: Mapping[str, str]) -> list[str]:
    """The local files a kustomization's patches read (patches, patchesStrategicMerge, patchesJson6902)."""
    real = os.path.realpath(b.kustomization)
    try:
        text = texts.get(real)
        if text is None:
            with open(real, encoding="utf-8") as f:
                text = f.read(km.MAX_FILE_BYTES)
        k = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    refs = []
    for key in ("patches", "patchesStrategicMerge", "patchesJson6902"):
        for p in (k.get(key) or []) if isinstance(k, dict) and isinstance(k.get(key), list) else []:
            ref = p.get("path") if isinstance(p, dict) else p if isinstance(p, str) and "\n" not in p else None
            if isinstance(ref, str) and not km._is_remote(ref):
                path = os.path.normpath(os.path.join(b.directory, ref))
                if os.path.isfile(path):
                    refs.append(path)
    return refs


def _patch_renders(b: km.Build, root: str, tail: list[km.ImageEntry], texts: Mapping[str, str],
                   cache: dict[str, list[ImageField]]) -> Iterator[Render]:
    """The images written in the patch files of `b` and of every build below it, with the
    entries that apply to them: a patch applies before its kustomization's images: entries and
    everything above it (`tail`: later components, then each parent's entries). The model does
    not apply patches; this is enough to keep an entry matching an image a patch writes."""
    chain = b.entries + tail
    for path in _patch_files(b, texts):
        real = os.path.realpath(path)
        if real not in cache:
            cache[real] = _pod_fields(real, texts)
        for f in cache[real]:
            image, steps = f.value, []
            for entry in chain:
                if km.is_matched(image, entry.name):
                    steps.append((entry_key(entry), image))
                    image = entry.apply(image) or image
            yield Render(root, (real, f.document, f.path), f.value, image, tuple(steps))
    components = [i for i, c in enumerate(b.children) if c.kind == "Component"]
    for i, c in enumerate(b.children):
        later = [b.children[j] for j in components if j > i]  # a resource comes before every component
        yield from _patch_renders(c, root, [e for a in later for e in _entries_of_component(a)] + chain, texts, cache)


def _pod_fields(real: str, texts: Mapping[str, str]) -> list[ImageField]:
    try:
        text = texts.get(real)
        if text is None:
            with open(real, encoding="utf-8") as f:
                text = f.read(km.MAX_FILE_BYTES)
        return [f for f in locate(text, filename=real) if f.source == "pod"]
    except (OSError, UnicodeDecodeError, YamlError):
        return []


# ----------------------------------------------------------------------------- deciding


class _Groups:
    """Union-find over image fields and entries linked by a match."""

    def __init__(self) -> None:
        self.parent: dict[Key, Key] = {}

    def find(self, k: Key) -> Key:
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: Key, b: Key) -> None:
        self.parent[self.find(a)] = self.find(b)


def _name(image: str) -> str:
    return km.split(image)[0]


def _with_name(image: str, name: str) -> str:
    _, tag, digest = km.split(image)
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


class _Conflict(Exception):
    pass


@dataclass
class Planner:
    """Decisions for the image fields and entries a rewrite must change together.

    `fields_of(path)`: the located image fields of a file (None when it cannot be read);
    `given`: the real paths of the files being rewritten; `writable(path)`: whether a file
    outside them may be edited (an overlay whose entries follow a rewritten base)."""

    model: Model
    policy: Policy
    resolve: Resolve
    fields_of: Callable[[str], list[ImageField] | None]
    given: set[str]
    writable: Callable[[str], bool]
    frozen: dict[Key, str] = field(default_factory=dict)  # group -> why it is left as it is

    def __post_init__(self) -> None:
        self.groups = _Groups()
        for r in self.model.renders:
            self.groups.find(r.key)
            for ekey, _ in r.steps:
                self.groups.union(r.key, ekey)
        self._located: dict[Key, ImageField | None] = {}

    # -- lookups
    def located(self, key: Key) -> ImageField | None:
        if key not in self._located:
            fields = self.fields_of(key[0]) or []
            for f in fields:
                self._located.setdefault((key[0], f.document, f.path), f)
            self._located.setdefault(key, None)
        return self._located[key]

    def refuses(self, image: str, key: Key) -> bool:
        f = self.located(key)
        if f is None:
            return self.policy.refuses(image)
        return self.policy.refuses(image, namespace=f.namespace, container=f.container,
                                   labels=getattr(f, "labels", None), kind=f.kind, name=f.name)

    def target(self, image: str) -> ImageRef | str:
        """The image's target, or why it has none."""
        try:
            answer = self.resolve(parse(image))
        except ReferenceError as exc:
            return f"not a valid image reference: {exc}"
        if isinstance(answer, str):
            return answer.removeprefix("not rewritten: ")
        if not self.policy.allows(str(answer)):
            return f"its target {answer} would still be refused by imageRegex"
        return answer

    # -- one group
    def _in_place(self, key: Key, drag: bool) -> str | None:
        """The new image of a field rewritten in place, or None when it stays. `drag`: a field
        outside the files given may be rewritten too (its group has one among them that is)."""
        f = self.located(key)
        if f is None or f.source != "pod" or not self.refuses(f.value, key):
            return None
        if key[0] not in self.given and not (drag and self.writable(key[0])):
            return None
        target = self.target(f.value)
        return None if isinstance(target, str) else _with_name(f.value, target.name)

    def _solve(self, renders: list[Render], entries: set[Key]) -> tuple[dict[Key, km.ImageEntry], set[Key]]:
        """The entries' new state, so that every render of the group ends with its target (or
        as it was, when the policy allows it), and the fields outside the files given that are
        rewritten with the group (an overlay's patch, a second base the same entry matches).
        Raises _Conflict."""
        keys = list(dict.fromkeys(r.key for r in renders))
        moved = {k: self._in_place(k, False) for k in keys}
        dragged: set[Key] = set()
        if any(moved.values()):  # the group changes: what it links outside the files given follows
            for k in keys:
                if moved[k] is None and k[0] not in self.given:
                    moved[k] = self._in_place(k, True)
                    dragged |= {k} if moved[k] else set()
        originals = {r.key: r.original for r in renders}
        base: dict[Key, str] = {k: v or originals[k] for k, v in moved.items()}
        state = {e: self.model.entries[e] for e in entries}
        for r in renders:  # a render that cannot be rewritten blocks the whole group
            if r.steps and self.refuses(r.final, r.key):
                target = self.target(r.final)
                if isinstance(target, str):
                    raise _Conflict(f"`kustomize build {shown(r.root)}` renders {r.final} ({target})")
        for _ in range(2 * len(entries) + 4):
            seen: dict[Key, set[str]] = {}
            finals: list[tuple[Render, str]] = []
            for r in renders:
                image = base[r.key]
                for ekey, _before in r.steps:
                    seen.setdefault(ekey, set()).add(image)
                    entry = state[ekey]
                    if not km.is_matched(image, entry.name):
                        entry = replace(entry, name=_name(image))  # as it will be once renamed
                    image = entry.apply(image) or image
                finals.append((r, image))
            changed = False
            for ekey, images in seen.items():  # an entry follows the new name of what it matched
                entry = state[ekey]
                if all(km.is_matched(i, entry.name) for i in images):
                    continue
                names = sorted({_name(i) for i in images})
                if len(names) > 1:
                    raise _Conflict(f"the images: entry {entry.name!r} ({shown(entry.kustomization)}) would have to "
                                    f"match {' and '.join(names)}")
                state[ekey] = replace(entry, name=names[0])
                changed = True
            if changed:
                continue
            wanted: dict[Key, str] = {}
            for r, final in finals:  # a render still refused: the entry deciding its name gets the target's
                if not r.steps or not self.refuses(final, r.key):
                    continue
                target = self.target(r.final)
                if isinstance(target, str):
                    raise _Conflict(f"`kustomize build {shown(r.root)}` renders {r.final} ({target})")
                deciding = [e for e, _ in r.steps if state[e].new_name] or [e for e, _ in r.steps]
                ekey = deciding[-1]
                if wanted.setdefault(ekey, target.name) != target.name:
                    raise _Conflict(f"the images: entry {state[ekey].name!r} ({shown(state[ekey].kustomization)}) "
                                    f"would need two newNames: {wanted[ekey]} and {target.name}")
                if state[ekey].new_name != target.name:
                    state[ekey] = replace(state[ekey], new_name=target.name)
                    changed = True
            if not changed:
                return state, dragged
        raise _Conflict("the images: entries do not settle on one name")  # pragma: no cover - a cycle

    def decide(self) -> dict[Key, Decision]:
        groups: dict[Key, tuple[list[Render], set[Key]]] = {}
        for r in self.model.renders:
            renders, entries = groups.setdefault(self.groups.find(r.key), ([], set()))
            renders.append(r)
            entries.update(e for e, _ in r.steps)
        decisions: dict[Key, Decision] = {}
        for group, (renders, entries) in groups.items():
            if not entries and group not in self.frozen:
                continue  # no entry involved: the field is rewritten as any other
            if not any(k[0] in self.given for k in [*(r.key for r in renders), *entries]):
                continue  # nothing of it is being rewritten
            reason = self.frozen.get(group)
            state: dict[Key, km.ImageEntry] = {}
            dragged: set[Key] = set()
            if reason is None:
                try:
                    state, dragged = self._solve(renders, entries)
                    for ekey, new in state.items():
                        old = self.model.entries[ekey]
                        if new != old and (self.located(ekey) is None or not (ekey[0] in self.given or
                                                                               self.writable(ekey[0]))):
                            raise _Conflict(f"{shown(ekey[0])} must change too (its images: entry {old.name!r}) "
                                            f"but scan.exclude excludes it or it cannot be read")
                except _Conflict as exc:
                    reason = str(exc)
            if reason is not None:
                why = f"not rewritten: {reason}; the image and the images: entries matching it are left as they are"
                for r in renders:
                    decisions[r.key] = Keep(why)
                for ekey in entries:
                    decisions[ekey] = Keep(why)
                continue
            decisions.update((k, InPlace()) for k in dragged)
            for ekey, new in state.items():
                old = self.model.entries[ekey]
                decisions[ekey] = EntryEdit(new.name if new.name != old.name else None,
                                            new.new_name if new.new_name != old.new_name else None)
        return decisions

    # -- checking the edits
    def check(self, after: Model) -> dict[Key, str]:
        """Groups whose renders change in any other way than to their target (group -> why)."""
        before, now = self.model.by_root(), after.by_root()
        bad: dict[Key, str] = {}
        for root, renders in before.items():
            if root in after.failed:
                for r in renders.values():
                    bad.setdefault(self.groups.find(r.key), f"`kustomize build {shown(root)}` would fail: "
                                                              f"{after.failed[root]}")
                continue
            new = now.get(root, {})
            for key in renders.keys() | new.keys():
                old_r, new_r = renders.get(key), new.get(key)
                old_image = old_r.final if old_r else "nothing"
                new_image = new_r.final if new_r else "nothing"
                if old_r is None or new_r is None or not self._same(old_r, new_image):
                    bad.setdefault(self.groups.find(key), f"`kustomize build {shown(root)}` would render "
                                                          f"{new_image} instead of {old_image}")
        return bad

    def _same(self, old: Render, new: str) -> bool:
        """The same image, or its target with the same tag and digest."""
        if new == old.final:
            return True
        if km.split(new)[1:] != km.split(old.final)[1:] or self.refuses(new, old.key):
            return False
        target = self.target(old.final)
        return not isinstance(target, str) and _name(new) == target.name


def settle(planner: Planner, edit: Callable[[dict[Key, Decision]], dict[str, str]],
           rebuild: Callable[[dict[str, str]], Model]) -> dict[Key, Decision]:
    """Decide, apply the decisions to the texts (`edit`: real path -> new text of every file that
    changes), model the tree again on them (`rebuild`), and leave unchanged every group whose
    renders would change otherwise than to their targets, until none does."""
    decisions = planner.decide()
    for _ in range(len(planner.groups.parent) + 1):
        texts = edit(decisions)
        if not texts:
            break
        bad = {g: why for g, why in planner.check(rebuild(texts)).items() if g not in planner.frozen}
        if not bad:
            break
        planner.frozen.update(bad)
        decisions = planner.decide()
    return decisions


def shown(path: str) -> str:
    """A path as shown: relative to the current directory when it is below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
