"""Find container image fields in YAML text, with the exact span of each value.

The text is composed (not constructed) with PyYAML's libyaml-backed composer: nodes
carry start/end marks, so every image scalar can be spliced later without touching a
byte around it (splice.py). Composing and walking the node graph is also faster than
constructing Python objects for whole documents.

What is found (DESIGN.md "Rewriting rules"):

- source "pod": the `image` of every item of a `containers` / `initContainers` /
  `ephemeralContainers` list in ANY mapping (Pods, workload templates, CronJob job
  templates, `List` items, custom resources with pod templates).
- source "helm": Helm values files: split maps (`registry`/`repository`/`image`/`tag`/
  `digest`/`sha`), with `global.imageRegistry` / `global.image.registry`, and plain
  `image: "repo:tag"` strings.
- source "kustomize": the top-level `images:` entries of a kustomization.
- source "compose": `services.*.image` of a Compose file.
- source "hint": image-like strings outside pod specs that a controller will turn into
  pod images later: any `image` scalar outside a pod's container lists and outside
  `status` (CR `spec.image`, Tekton steps/sidecars, Argo Workflows `container`/`script`/
  `sidecars`, old Knative `container`), `--x-image=REF` arguments and `*IMAGE*`
  environment variables of containers, ConfigMap settings such as Knative's
  `queue-sidecar-image`, and Helm image maps without a repository (cert-manager's
  `imageRegistry`/`imageNamespace`/`name`). Reported as warnings, never rewritten.

Offsets are character offsets into the decoded `str` (a leading BOM included).
Speed: composing (C) plus an iterative walk that skips subtrees whose text has
nothing image-like beats constructing the documents with yaml.load_all(CSafeLoader).
Safety: nesting beyond MAX_DEPTH is refused before composing (libyaml's composer would
crash), alias re-visits are budgeted (bombs), recursive anchors are detected.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .reference import try_parse

_STR_TAG = "tag:yaml.org,2002:str"


def _lean_loader(base: type[yaml.SafeLoader] | type[yaml.CSafeLoader]) -> type:
    """The safe loader with a leaner resolver: same tags, less Python per node.

    The stock resolver keeps a path stack for "path resolvers" (none are registered
    for the safe loader) and concatenates resolver lists per scalar; composing calls it
    for every node, so it is a visible share of the time."""
    implicit = base.yaml_implicit_resolvers
    if implicit.get(None) or base.yaml_path_resolvers:  # pragma: no cover - someone registered more
        return base

    class Lean(base):  # type: ignore[misc,valid-type]
        def descend_resolver(self, current_node: object, current_index: object) -> None:
            pass

        def ascend_resolver(self) -> None:
            pass

        def resolve(self, kind: type, value: str, implicit_: tuple[bool, bool]) -> str:
            if kind is ScalarNode:
                if implicit_[0]:
                    for tag, regexp in implicit.get(value[:1], ()):
                        if regexp.match(value):
                            return tag
                return _STR_TAG
            return super().resolve(kind, value, implicit_)

    return Lean


try:  # libyaml: much faster; its marks need a BOM correction (see _bom_offset)
    _Loader = _lean_loader(yaml.CSafeLoader)
    _LIBYAML = True
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = _lean_loader(yaml.SafeLoader)
    _LIBYAML = False

CONTAINER_KEYS = ("containers", "initContainers", "ephemeralContainers")
_CONTAINER_SET = frozenset(CONTAINER_KEYS)
FILE_KINDS = ("manifest", "helm-values", "kustomization", "compose")

# PyYAML's C composer recurses once per nesting level in C and crashes the interpreter
# (SIGSEGV) somewhere between 20,000 and 40,000 levels; no real manifest nests beyond
# a few dozen. Anything deeper than this is refused before composing.
MAX_DEPTH = 1000  # libyaml 0.2.6 (PyYAML 6.0.4 wheels) has the same limit of its own
# Walk budget: collections reached again through aliases (and merged entries). A
# YAML bomb (nested aliases) reaches it after a fraction of a second, with memory
# bounded by the text; a document without aliases never comes near it.
BUDGET_BASE = 20_000
BUDGET_PER_NODE = 50

_MERGE_TAG = "tag:yaml.org,2002:merge"
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_NULL_TAG = "tag:yaml.org,2002:null"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
_BREAK_CHARS = "\r\n\x85\u2028\u2029"
_ODD_BREAK = re.compile(r"\r(?!\n)|[\x85\u2028\u2029]")  # line breaks other than \n and \r\n

_STYLES = {None: "plain", "": "plain", "'": "single", '"': "double", "|": "literal", ">": "folded"}


# ----------------------------------------------------------------------------- types


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
    `before + "<key>: <value>" + after` at `offset` (kustomize `newName`)."""

    offset: int
    before: str
    after: str


class Parts(Mapping[str, Scalar]):
    """An immutable, hashable name -> Scalar mapping (so ImageField stays hashable)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Scalar] | Iterable[tuple[str, Scalar]] = ()) -> None:
        self._items = dict(items)

    def __getitem__(self, key: str) -> Scalar:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(self._items.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"Parts({self._items!r})"


_NO_PARTS = Parts()


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


class YamlError(Exception):
    """The text is not valid YAML (or cannot be read safely); str() is "line N: problem"."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


class LocateError(YamlError):
    """Valid YAML that is refused: a bomb (alias expansion), or nested too deeply."""


# ----------------------------------------------------------------------------- composing


def _error_from(exc: yaml.YAMLError, text: str) -> YamlError:
    if "maximum nesting depth" in str(getattr(exc, "problem", "")):  # libyaml >= 0.2.6 enforces its own limit
        mark = getattr(exc, "problem_mark", None)
        return LocateError(f"nested more than {MAX_DEPTH} levels deep; refused", mark.line + 1 if mark else None)
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = [p for p in (exc.context, exc.problem) if p]
        message = ": ".join(parts) or exc.__class__.__name__
        return YamlError(message, mark.line + 1 if mark is not None else None)
    if isinstance(exc, yaml.reader.ReaderError):
        position = max(0, min(exc.position, len(text)))
        line = text.count("\n", 0, position) + 1
        return YamlError(f"unacceptable character #x{exc.character:04x} (not allowed in YAML)", line)
    return YamlError(str(exc).strip() or exc.__class__.__name__)


def _check_nesting(text: str) -> None:
    """Refuse text nested deeper than MAX_DEPTH before composing it (see MAX_DEPTH).

    A cheap upper bound first. Flow nesting needs a bracket per level. A block
    collection starts at the end of its line's indentation-and-indicators prefix
    (spaces, `- `, `? `, `: `), and only a sequence directly under a mapping key may
    share its parent's column, so block depth <= 2 * (longest such prefix + 1). Only
    text that might exceed the limit is parsed (events, no recursion) to measure."""
    if len(text) <= MAX_DEPTH:
        return
    room = MAX_DEPTH - text.count("[") - text.count("{")
    if room >= 4:
        lines = _LINE_BREAK.sub("\n", text) if _ODD_BREAK.search(text) else text  # `^` knows only \n
        if not re.search(rf"^[ \t?:-]{{{room // 2 - 1},}}", lines, re.MULTILINE):
            return
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark is not None else None
                    raise LocateError(f"nested more than {MAX_DEPTH} levels deep; refused", line)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as exc:
        raise _error_from(exc, text) from None


def compose_documents(text: str) -> list[Node]:
    """All documents of the stream as node graphs (an empty document is a null scalar,
    so indexes match yaml.safe_load_all). Raises YamlError / LocateError."""
    _check_nesting(text)
    try:
        return list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise _error_from(exc, text) from None
    except RecursionError:  # the pure-Python composer recurses in Python
        raise LocateError("nested too deeply; refused") from None


def _bom_offset(text: str) -> int:
    """libyaml's mark index does not count a leading BOM (only the first one; measured
    with libyaml 0.2.5); the pure-Python reader counts it."""
    return 1 if _LIBYAML and text.startswith("\ufeff") else 0


# ----------------------------------------------------------------------------- scalars


def _skip_properties(text: str, pos: int, end: int) -> int:
    """Skip an anchor (`&a`) and/or tag (`!t`, `!!str`) before a scalar, and the spaces,
    line breaks and comments that may follow them."""
    while pos < end and text[pos] in "&!":
        while pos < end and text[pos] not in " \t\r\n":
            pos += 1
        while pos < end:
            c = text[pos]
            if c in " \t" or c in _BREAK_CHARS:
                pos += 1
            elif c == "#":
                m = _LINE_BREAK.search(text, pos, end)
                pos = m.start() if m else end
            else:
                break
    return pos


def _block_region(text: str, pos: int, end: int, value: str) -> tuple[int, int, bool]:
    """Region of a block scalar's content (the line after the `|`/`>` header)."""
    m = _LINE_BREAK.search(text, pos)
    if m is None:
        return end, end, False
    start = m.end()
    while start < len(text) and text[start] == " ":
        start += 1
    content = value.rstrip("\n")  # the chomped line break(s) stay as they are
    stop = start + len(content)
    exact = (
        bool(content)
        and "\n" not in content
        and text[start:stop] == content
        and stop <= end
        and (stop == len(text) or text[stop] in _BREAK_CHARS)
    )
    if not exact:  # best effort region for messages: the first content line
        br = _LINE_BREAK.search(text, start)
        stop = min(br.start() if br else len(text), max(end, start))
    return start, stop, exact


def make_scalar(node: ScalarNode, text: str, offset: int) -> Scalar:
    """The Scalar of a composed node: the region of its value, and whether it is exact."""
    start = node.start_mark.index + offset
    end = node.end_mark.index + offset
    style = _STYLES.get(node.style, "plain")
    value = node.value
    pos = min(_skip_properties(text, start, end), end)
    if style in ("single", "double"):
        rs, re_ = pos + 1, max(pos + 1, end - 1)
        exact = text[rs:re_] == value
    elif style in ("literal", "folded"):
        rs, re_, exact = _block_region(text, pos, end, value)
    else:
        # An empty plain scalar (`image:`) has no characters to replace: inserting text
        # there could glue it to the `:`; refuse it rather than guess.
        rs, re_ = pos, end
        exact = bool(value) and text[rs:re_] == value
    return Scalar(rs, re_, value, node.start_mark.line + 1, style, exact)


# ----------------------------------------------------------------------------- helpers


def _key(node: Node) -> str | None:
    return node.value if isinstance(node, ScalarNode) else None


def _text(node: Node | None) -> str | None:
    """A scalar's string value, None for anything else (or a null)."""
    if isinstance(node, ScalarNode) and node.tag != _NULL_TAG:
        return node.value
    return None


def _pointer(cell: tuple | None) -> str:
    """JSON pointer of a path cell chain (parent, key, node)."""
    keys: list[str] = []
    while cell is not None and cell[1] is not None:
        keys.append(str(cell[1]).replace("~", "~0").replace("/", "~1"))
        cell = cell[0]
    return "/" + "/".join(reversed(keys)) if keys else ""


class _Walker:
    """Per-document state: merged-mapping cache, the visit budget, Scalars by node."""

    def __init__(self, text: str, offset: int, has_merge: bool) -> None:
        self.text = text
        self.offset = offset
        self.has_merge = has_merge
        self.visits = 0
        self.seen: set[int] = set()  # collections walked
        self.skipped: set[int] = set()  # collections not entered (nothing image-like in them)
        self._pairs: dict[int, dict[str, tuple[Node, Node]]] = {}
        self._scalars: dict[int, Scalar] = {}

    def scalar(self, node: ScalarNode) -> Scalar:
        found = self._scalars.get(id(node))
        if found is None:
            found = self._scalars[id(node)] = make_scalar(node, self.text, self.offset)
        return found

    def may_matter(self, node: Node, relevant: list[int]) -> bool:
        """_may_matter, remembering skipped nodes: reaching one again through an alias
        counts against the budget like any re-visit."""
        if id(node) in self.skipped:
            self.revisit(node)
            return False
        if _may_matter(relevant, node):
            return True
        self.skipped.add(id(node))
        return False

    def revisit(self, node: Node) -> None:
        """A collection reached again through an alias: counted against the budget
        before it is walked again, so a bomb stops after little work."""
        self.count(node)

    def count(self, node: Node, n: int = 1) -> None:
        self.visits += n
        if self.visits > BUDGET_BASE + BUDGET_PER_NODE * len(self.seen):
            raise LocateError(
                f"more than {self.visits} nodes after expanding aliases (a YAML bomb?); refused",
                node.start_mark.line + 1,
            )

    def pairs(self, node: MappingNode) -> dict[str, tuple[Node, Node]]:
        """The mapping as a constructor would see it: merge keys (`<<`) resolved, own
        keys over merged ones, earlier merge sources over later, the last duplicate
        winning (PyYAML's flatten_mapping + dict semantics). Cached per node."""
        cached = self._pairs.get(id(node))
        if cached is not None:
            return cached
        if not self.has_merge:
            try:  # fast path: all keys are scalars (a complex key's value is a list)
                result = {k.value: (k, v) for k, v in node.value}
            except TypeError:
                result = {k.value: (k, v) for k, v in node.value if isinstance(k, ScalarNode)}
            self._pairs[id(node)] = result
            return result
        # Merge sources are resolved before the mappings that merge them, with an explicit
        # stack (chains of merges can be thousands long). A mapping being resolved is
        # marked with an empty placeholder: a merge cycle (`&a {<<: *a}`) sees it empty.
        stack: list[tuple[MappingNode, bool]] = [(node, False)]
        while stack:
            current, ready = stack.pop()
            if ready:
                self._pairs[id(current)] = self._merged(current)
                continue
            if id(current) in self._pairs:
                continue
            self._pairs[id(current)] = {}
            stack.append((current, True))
            for k, v in current.value:
                if k.tag == _MERGE_TAG:
                    for source in v.value if isinstance(v, SequenceNode) else [v]:
                        if isinstance(source, MappingNode) and id(source) not in self._pairs:
                            stack.append((source, False))
        return self._pairs[id(node)]

    def _merged(self, node: MappingNode) -> dict[str, tuple[Node, Node]]:
        """One mapping's pairs, its merge sources already resolved in the cache."""
        merged: dict[str, tuple[Node, Node]] = {}
        own: dict[str, tuple[Node, Node]] = {}
        for k, v in node.value:
            if k.tag == _MERGE_TAG:
                sources = v.value if isinstance(v, SequenceNode) else [v]
                for source in reversed(sources):  # earlier sources win
                    if isinstance(source, MappingNode):
                        entries = self._pairs.get(id(source), {})
                        # copying merged entries is work an alias bomb can multiply
                        # (long chains of merges that each add keys): charge it
                        self.count(k, len(entries))
                        merged.update(entries)
            else:
                key = _key(k)
                if key is not None:
                    own[key] = (k, v)
        merged.update(own)
        return merged

    def is_cycle(self, node: Node, parent: tuple | None) -> bool:
        """True when `node` is its own ancestor (a recursive anchor like `&a [*a]`)."""
        if id(node) not in self.seen:
            return False
        cell = parent
        while cell is not None:
            if cell[2] is node:
                return True
            cell = cell[0]
        return False


def _context(pairs: Mapping[str, tuple[Node, Node]]) -> tuple[str | None, str | None, str | None]:
    kind = _text(pairs["kind"][1]) if "kind" in pairs else None
    namespace = name = None
    meta = pairs.get("metadata")
    if meta is not None and isinstance(meta[1], MappingNode):
        for k, v in meta[1].value:
            key = _key(k)
            if key == "namespace":
                namespace = _text(v)
            elif key == "name":
                name = _text(v)
    return kind, namespace, name


def _root_pairs(node: Node | None) -> dict[str, Node]:
    if not isinstance(node, MappingNode):
        return {}
    return {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}


# ----------------------------------------------------------------------------- file kinds

_COMPOSE_NAME = re.compile(r"(?:compose(?:\.[\w-]+)*|docker-compose[\w.-]*)\.ya?ml", re.IGNORECASE)
_VALUES_NAME = re.compile(r"values[\w.-]*\.ya?ml", re.IGNORECASE)
_KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_NOT_VALUES = ("chart.yaml", "chart.lock", "requirements.yaml", "requirements.lock")


def _is_compose_root(root: Node | None) -> bool:
    pairs = _root_pairs(root)
    services = pairs.get("services")
    if "apiVersion" in pairs or "kind" in pairs or not isinstance(services, MappingNode) or not services.value:
        return False
    # every service a mapping, one at least with its own image or build (others may
    # get theirs through a merge key)
    bodies = [_root_pairs(service) for _, service in services.value]
    return all(isinstance(s, MappingNode) for _, s in services.value) and any(
        "image" in keys or "build" in keys for keys in bodies
    )


def _is_manifest_root(root: Node | None) -> bool:
    pairs = _root_pairs(root)
    return "apiVersion" in pairs and "kind" in pairs


def file_kind(filename: str, documents: Iterable[Node | None] = ()) -> str:
    """What a file holds: "manifest", "helm-values", "kustomization" or "compose".

    By name first (`kustomization.yaml`, `compose.yaml`, `docker-compose*.yml`,
    `values*.yaml`), then by content (`kind: Kustomization`; a top-level `services:`
    whose entries have `image`/`build`); a file next to a `Chart.yaml` that is not a
    manifest is Helm values too."""
    base = os.path.basename(filename)
    if base in _KUSTOMIZATION_NAMES or base.lower() in _KUSTOMIZATION_NAMES[:2]:
        return "kustomization"
    if _COMPOSE_NAME.fullmatch(base):
        return "compose"
    if _VALUES_NAME.fullmatch(base):
        return "helm-values"
    documents = [d for d in documents if d is not None]
    for root in documents:
        kind = _text(_root_pairs(root).get("kind"))
        if kind in ("Kustomization", "Component") and "kustomize" in (
            _text(_root_pairs(root).get("apiVersion")) or ""
        ):
            return "kustomization"
    if documents and all(_is_compose_root(d) for d in documents):
        return "compose"
    if (
        base
        and base.lower() not in _NOT_VALUES
        and base.lower().endswith((".yaml", ".yml"))
        and not any(_is_manifest_root(d) for d in documents)
        and os.path.isfile(os.path.join(os.path.dirname(filename) or ".", "Chart.yaml"))  # last: a syscall
    ):
        return "helm-values"
    return "manifest"


# ----------------------------------------------------------------------------- entry point


def locate(text: str, *, filename: str = "", content: str | None = None) -> list[ImageField]:
    """Every image field of the text, in document order. `content` forces the file kind
    (one of FILE_KINDS) instead of guessing it from `filename` and the documents.

    Raises YamlError when the text is not valid YAML, LocateError for bombs or
    excessive nesting."""
    documents = compose_documents(text)
    kind = content or file_kind(filename, documents)
    if kind not in FILE_KINDS:
        raise ValueError(f"unknown file kind {kind!r}")
    offset = _bom_offset(text)
    has_merge = "<<" in text
    relevant = [m.start() - offset for m in _RELEVANT.finditer(text)] if kind == "manifest" else []
    found: list[ImageField] = []
    for index, root in enumerate(documents):
        if not isinstance(root, (MappingNode, SequenceNode)):
            continue
        walker = _Walker(text, offset, has_merge)
        if kind == "kustomization":
            found.extend(_kustomize(walker, index, root))
        elif kind == "compose":
            found.extend(_compose(walker, index, root))
        elif kind == "helm-values":
            found.extend(_walk(walker, index, root, helm=True))
        elif _may_matter(relevant, root):
            found.extend(_walk(walker, index, root, helm=False, relevant=relevant))
    found.sort(key=lambda f: (f.document, f.line, f.path))
    return found


# ----------------------------------------------------------------------------- the walk

_TOP, _ITEMS, _STATUS, _UNDER_IMAGE = 1, 2, 4, 8
_COLLECTIONS = (MappingNode, SequenceNode)
# "ontainers" covers containers/initContainers/ephemeralContainers
_RELEVANT = re.compile(r"image|ontainers|[*\\]", re.IGNORECASE)


def _may_matter(relevant: list[int], node: Node) -> bool:
    """Whether a node's text holds a container list key, an image-ish word, an alias
    (anything may hide behind one) or an escape (a key may be spelled with one).
    Without any, the subtree cannot hold a pod image or a hint: whole documents
    (Services, RBAC, most CRDs) and most of a workload are skipped.
    `relevant`: sorted offsets of _RELEVANT matches, in mark coordinates."""
    i = bisect_left(relevant, node.start_mark.index)
    return i < len(relevant) and relevant[i] < node.end_mark.index
_ARG_IMAGE = re.compile(r"--?[\w.-]*image[\w.-]*=(\S+)", re.IGNORECASE)


def _walk(w: _Walker, index: int, root: Node, *, helm: bool, relevant: list[int] | None = None
          ) -> Iterator[ImageField]:
    """Depth-first over the collections of one document (iterative: no recursion).

    With `relevant` (manifests), a subtree whose text has nothing image-like is not
    entered (see _may_matter): metadata, probes, resources, ports are skipped for the
    price of a binary search. Helm values are walked whole: there a map qualifies by
    its parent's key, which lies outside the map's own text."""
    helm_globals = _helm_globals(w, root) if helm else {}
    # stack entries: (node, path cell, (kind, namespace, name), flags); a path cell is
    # (parent cell, key, node), so paths cost nothing until a field is reported.
    stack: list[tuple[Node, tuple, tuple, int]] = [(root, (None, None, root), (None, None, None), _TOP)]
    seen = w.seen
    push = stack.append
    while stack:
        node, cell, ctx, flags = stack.pop()
        if id(node) in seen:  # reached again through an alias: a cycle, or one more visit
            if w.is_cycle(node, cell[0]):
                continue
        else:
            seen.add(id(node))
        inherited = flags & (_STATUS | _UNDER_IMAGE)
        if isinstance(node, SequenceNode):
            if flags & _ITEMS:
                inherited |= _TOP
            items = node.value
            for i in range(len(items) - 1, -1, -1):
                child = items[i]
                if isinstance(child, _COLLECTIONS):
                    if id(child) in seen:
                        w.revisit(child)
                    elif relevant is not None and not w.may_matter(child, relevant):
                        continue
                    push((child, (cell, i, child), ctx, inherited))
            continue
        if not isinstance(node, MappingNode):
            continue
        pairs = w.pairs(node)
        top = flags & _TOP
        if top:
            ctx = _context(pairs)
        parent = cell[0]
        in_containers = (
            parent is not None and parent[1] in _CONTAINER_SET and isinstance(parent[2], SequenceNode)
        )
        taken: set[str] = set()  # keys reported here (not again as helm plain strings)
        if in_containers:
            image = pairs.get("image")
            if image is not None and isinstance(image[1], ScalarNode):
                s = w.scalar(image[1])
                yield ImageField(
                    "pod", index, _pointer(cell) + "/image", s.value, s.line, s, _NO_PARTS,
                    kind=ctx[0], namespace=ctx[1], name=ctx[2], container=_text(pairs.get("name", (None, None))[1]),
                )
                taken.add("image")
        if helm:
            yield from _helm(w, index, cell, pairs, ctx, flags, helm_globals, taken)
        elif in_containers or "image" in pairs:
            yield from _hints(w, index, cell, pairs, ctx, flags, in_containers)
        elif top and ctx[0] == "ConfigMap" and "data" in pairs:
            yield from _configmap_hints(w, index, cell, pairs["data"][1], ctx)
        if not (top or helm):  # the common case, kept lean
            for key, (_, child) in reversed(pairs.items()):
                if isinstance(child, _COLLECTIONS):
                    if id(child) in seen:
                        w.revisit(child)
                    elif relevant is not None and not w.may_matter(child, relevant):
                        continue
                    push((child, (cell, key, child), ctx, inherited))
            continue
        list_root = top and (ctx[0] or "").endswith("List")
        for key, (_, child) in reversed(pairs.items()):
            if not isinstance(child, _COLLECTIONS):
                continue
            if id(child) in seen:
                w.revisit(child)
            elif relevant is not None and not w.may_matter(child, relevant):
                continue
            child_flags = inherited
            if top:
                if key == "status":
                    child_flags |= _STATUS
                elif list_root and key == "items":
                    child_flags |= _ITEMS
            if helm and "image" in key.lower() and key.lower() not in _NOT_IMAGE_KEYS:
                child_flags |= _UNDER_IMAGE
            push((child, (cell, key, child), ctx, child_flags))


# ----------------------------------------------------------------------------- hints


def _hint_note(ctx: tuple, path: str) -> str:
    kind = ctx[0] or "object"
    if "/templates/" in path:
        return f"{kind} template image: the workflow controller runs it in a pod"
    if "/steps/" in path or "/sidecars/" in path:
        return f"{kind} step/sidecar image: it becomes a pod container when the task runs"
    if path == "/spec/image":
        return f"{kind} spec.image: the operator creates pods with this image"
    return f"{kind} image field outside a pod spec: a controller may create pods with it"


def _hints(w: _Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]],
           ctx: tuple, flags: int, in_containers: bool) -> Iterator[ImageField]:
    if flags & _STATUS:
        return
    image = pairs.get("image")
    container_like = in_containers
    if not in_containers and image is not None and isinstance(image[1], ScalarNode):
        s = w.scalar(image[1])
        if s.value.strip() and image[1].tag not in (_NULL_TAG, _BOOL_TAG):
            path = _pointer(cell) + "/image"
            yield ImageField("hint", index, path, s.value, s.line, s, _NO_PARTS, kind=ctx[0],
                             namespace=ctx[1], name=ctx[2], container=_text(pairs.get("name", (None, None))[1]),
                             note=_hint_note(ctx, path))
            container_like = True
    if not container_like:
        return
    container = _text(pairs.get("name", (None, None))[1])
    # `--sidecar-image=REF` arguments and `*IMAGE*` environment variables of containers
    for key in ("args", "command"):
        seq = pairs.get(key)
        if seq is None or not isinstance(seq[1], SequenceNode):
            continue
        for i, item in enumerate(seq[1].value):
            text = _text(item)
            m = _ARG_IMAGE.fullmatch(text) if text else None
            if text and m and try_parse(m.group(1)) is not None:
                s = w.scalar(item)
                yield ImageField("hint", index, f"{_pointer(cell)}/{key}/{i}", m.group(1), s.line, s, _NO_PARTS,
                                 kind=ctx[0], namespace=ctx[1], name=ctx[2], container=container,
                                 note=f"argument {text.split('=', 1)[0]}: the program may start pods with this image")
    env = pairs.get("env")
    if env is not None and isinstance(env[1], SequenceNode):
        for i, item in enumerate(env[1].value):
            if not isinstance(item, MappingNode):
                continue
            var = w.pairs(item)
            name = _text(var.get("name", (None, None))[1]) or ""
            value = var.get("value")
            text = _text(value[1]) if value else None
            if "IMAGE" in name.upper() and text and ("/" in text or ":" in text) and try_parse(text):
                s = w.scalar(value[1])  # type: ignore[index,arg-type]
                yield ImageField("hint", index, f"{_pointer(cell)}/env/{i}/value", text, s.line, s, _NO_PARTS,
                                 kind=ctx[0], namespace=ctx[1], name=ctx[2], container=container,
                                 note=f"environment variable {name}: an operator may start pods with this image")


def _configmap_hints(w: _Walker, index: int, cell: tuple, data: Node, ctx: tuple) -> Iterator[ImageField]:
    """ConfigMap settings such as Knative's `queue-sidecar-image`: a controller injects
    that image into pods it creates."""
    if not isinstance(data, MappingNode):
        return
    for key, (_, value) in w.pairs(data).items():
        lower = key.lower()
        text = _text(value)
        if ("image" in lower and lower not in _NOT_IMAGE_KEYS and not lower.endswith(_PIECE_SUFFIXES)
                and text and "/" in text and try_parse(text) is not None):
            s = w.scalar(value)  # type: ignore[arg-type]
            yield ImageField("hint", index, f"{_pointer(cell)}/data/{key.replace('~', '~0').replace('/', '~1')}",
                             text, s.line, s, _NO_PARTS, kind=ctx[0], namespace=ctx[1], name=ctx[2],
                             note=f"ConfigMap setting {key}: a controller puts this image into the pods it creates")


# ----------------------------------------------------------------------------- helm values

_SPLIT_KEYS = ("registry", "repository", "image", "name", "tag", "digest", "sha")
_NOT_IMAGE_KEYS = {"imagepullpolicy", "imagepullsecrets", "pullpolicy"}
# keys naming one piece of a reference, not a whole one (`imageRegistry: quay.io` would
# otherwise parse as the image docker.io/library/quay.io)
_PIECE_SUFFIXES = ("registry", "namespace", "tag", "tags", "digest", "sha", "policy",
                   "secret", "secrets", "repository", "version", "name", "pullsecrets")


def _helm_globals(w: _Walker, root: Node) -> dict[str, ScalarNode]:
    """`global.imageRegistry` and `global.image.registry` scalars, when set (non-empty)."""
    found: dict[str, ScalarNode] = {}
    if not isinstance(root, MappingNode):
        return found
    for key in ("imageRegistry", "imageNamespace"):  # cert-manager's top-level pieces
        piece = w.pairs(root).get(key)
        if piece is not None and _text(piece[1]):
            found["top." + key] = piece[1]  # type: ignore[assignment]
    glob = w.pairs(root).get("global")
    if glob is None or not isinstance(glob[1], MappingNode):
        return found
    gpairs = w.pairs(glob[1])
    reg = gpairs.get("imageRegistry")
    if reg is not None and _text(reg[1]):
        found["imageRegistry"] = reg[1]  # type: ignore[assignment]
    image = gpairs.get("image")
    if image is not None and isinstance(image[1], MappingNode):
        reg = w.pairs(image[1]).get("registry")
        if reg is not None and _text(reg[1]):
            found["image.registry"] = reg[1]  # type: ignore[assignment]
    return found


def go_format_number(text: str) -> str:
    """How Helm renders a numeric value: values become float64 and templates print
    them with Go's %v (shortest digits, exponent form from 1e+06 and below 1e-04),
    so `tag: 1.10` renders "1.1" and `tag: 20180801` renders "2.0180801e+07"."""
    try:
        number = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        return text
    value = float(number)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(value)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    exp = len(ds) + int(exponent) - 1  # decimal exponent of the first digit
    head = "-" if sign else ""
    if exp < -4 or exp >= 6:  # Go's shortest %g switches to exponent form at precision 6
        mantissa = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{head}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp >= len(ds) - 1:
        return head + ds + "0" * (exp - len(ds) + 1)
    if exp >= 0:
        return head + ds[: exp + 1] + "." + ds[exp + 1 :]
    return head + "0." + "0" * (-exp - 1) + ds


def _helm_text(node: Node) -> str:
    """A value as a Helm template prints it."""
    if not isinstance(node, ScalarNode) or node.tag == _NULL_TAG:
        return ""
    if node.tag in _NUMBER_TAGS and not node.style:
        return go_format_number(node.value)
    return node.value


def _is_plain_image_key(key: str, value: str) -> bool:
    lower = key.lower()
    if "image" not in lower or lower in _NOT_IMAGE_KEYS or lower.endswith(_PIECE_SUFFIXES):
        return False
    return lower.endswith("image") or "/" in value or ":" in value


def _helm(w: _Walker, index: int, cell: tuple, pairs: Mapping[str, tuple[Node, Node]], ctx: tuple,
          flags: int, globals_: Mapping[str, ScalarNode], taken: set[str]) -> Iterator[ImageField]:
    path = _pointer(cell)
    key = cell[1] if isinstance(cell[1], str) else ""
    scalars = {k: pairs[k][1] for k in _SPLIT_KEYS if k in pairs and isinstance(pairs[k][1], ScalarNode)}
    own_image_key = "image" in key.lower()
    under_image = bool(flags & _UNDER_IMAGE) or own_image_key
    is_global = path in ("/global", "/global/image")
    split = (
        not is_global
        and not taken
        # `name` alone makes an image map only under its own image key (cert-manager's
        # `image: {name: ...}`), not e.g. an item of a list under an image key
        and bool(scalars.keys() & {"repository", "image"} or ("name" in scalars and own_image_key))
        and (under_image or ("repository" in scalars and "tag" in scalars))
    )
    if split:
        yield from _helm_split(w, index, path, scalars, globals_, ctx)
        taken.update(scalars)
    if is_global:
        return
    for k, (_, v) in pairs.items():
        if k in taken or not isinstance(v, ScalarNode) or v.tag != _STR_TAG:
            continue
        value = v.value
        if _is_plain_image_key(k, value) and try_parse(value) is not None:
            s = w.scalar(v)
            yield ImageField("helm", index, f"{path}/{k.replace('~', '~0').replace('/', '~1')}", value, s.line,
                             s, _NO_PARTS, kind=ctx[0], namespace=ctx[1], name=ctx[2])


def _helm_split(w: _Walker, index: int, path: str, scalars: Mapping[str, Node],
                globals_: Mapping[str, ScalarNode], ctx: tuple) -> Iterator[ImageField]:
    """A split image map. The registry in effect: `global.imageRegistry` when set (it
    overrides per-image registries in bitnami and kube-prometheus-stack charts), else the
    map's own `registry`, else `global.image.registry` (ingress-nginx)."""
    repo_key = "repository" if _helm_text(scalars.get("repository")) else "image"  # type: ignore[arg-type]
    repo_node = scalars.get(repo_key)
    repository = _helm_text(repo_node) if repo_node is not None else ""
    parts = {k: w.scalar(v) for k, v in scalars.items()}  # type: ignore[arg-type]
    if not repository:
        # cert-manager style: the chart builds the name from imageRegistry/imageNamespace/name;
        # nothing safe to rewrite here, but the image will be refused: warn.
        name = scalars.get("name")
        if name is not None and _helm_text(name):
            s = parts["name"]
            pieces = [_helm_text(globals_[k]) for k in ("top.imageRegistry", "top.imageNamespace") if k in globals_]
            value = "/".join(p.strip("/") for p in [*pieces, _helm_text(name)])
            if "tag" in scalars and _helm_text(scalars["tag"]):
                value += ":" + _helm_text(scalars["tag"])
            yield ImageField("hint", index, path, value, s.line, None, Parts(parts),
                             kind=ctx[0], namespace=ctx[1], name=ctx[2],
                             note="Helm image map without a repository: the chart composes the image "
                                  "(e.g. from imageRegistry/imageNamespace/name); rewrite those values by hand")
        return
    registry_node: Node | None = globals_.get("imageRegistry")
    note = "registry from global.imageRegistry, shared by every image of the chart" if registry_node else None
    if registry_node is None and "registry" in scalars and _helm_text(scalars["registry"]):
        registry_node = scalars["registry"]
    if registry_node is None and "image.registry" in globals_:
        registry_node = globals_["image.registry"]
        note = "registry from global.image.registry, shared by every image of the chart"
    registry = _helm_text(registry_node) if registry_node is not None else ""
    if registry_node is not None:
        parts["registry"] = w.scalar(registry_node)  # type: ignore[arg-type]
    elif "registry" in parts:
        del parts["registry"]  # an empty registry is not in effect
    tag = _helm_text(scalars["tag"]) if "tag" in scalars else ""
    digest = _helm_text(scalars["digest"]) if "digest" in scalars else ""
    if not digest and "sha" in scalars and _helm_text(scalars["sha"]):
        digest = "sha256:" + _helm_text(scalars["sha"])  # kube-prometheus-stack: `@sha256:{{ .sha }}`
    value = f"{registry.rstrip('/')}/{repository}" if registry else repository
    if tag:
        value += f":{tag}"
    if digest:
        value += f"@{digest}"
    line = parts[repo_key].line
    yield ImageField("helm", index, path, value, line, None, Parts(parts),
                     kind=ctx[0], namespace=ctx[1], name=ctx[2], note=note)


# ----------------------------------------------------------------------------- kustomize


def _insertion(w: _Walker, entry: MappingNode, key_node: Node) -> Insertion:
    """Where to add a key next to `key_node` in `entry`: block style, a new line after
    the key's line with its indentation; flow style, `, key: value` before the `}`."""
    text, off = w.text, w.offset
    if entry.flow_style:
        close = entry.end_mark.index + off - 1
        if not (0 <= close < len(text) and text[close] == "}"):
            close = text.rfind("}", 0, entry.end_mark.index + off)
        prev = close - 1
        while prev >= 0 and text[prev] in " \t\r\n":
            prev -= 1
        if prev >= 0 and text[prev] in ",{":  # `{}` or a trailing comma: no comma to add
            return Insertion(prev + 1, " " if text[prev] == "," else "", "")
        return Insertion(prev + 1, ", ", "")
    key_at = key_node.start_mark.index + off
    line_start = max(text.rfind("\n", 0, key_at), text.rfind("\r", 0, key_at)) + 1
    indent = " " * (key_at - line_start)
    value_node = next(v for k, v in entry.value if k is key_node)
    after = value_node.end_mark.index + off
    m = _LINE_BREAK.search(text, after)
    if m is None:  # last line without a line break
        newline = "\r\n" if "\r\n" in text else "\n"
        return Insertion(len(text), newline + indent, "")
    return Insertion(m.end(), indent, m.group())


def _kustomize(w: _Walker, index: int, root: Node) -> Iterator[ImageField]:
    if not isinstance(root, MappingNode):
        return
    images = w.pairs(root).get("images")
    if images is None or not isinstance(images[1], SequenceNode):
        return
    for i, entry in enumerate(images[1].value):
        w.count(entry)
        if not isinstance(entry, MappingNode):
            continue
        pairs = w.pairs(entry)
        scalars: dict[str, Node] = {k: pairs[k][1] for k in ("name", "newName", "newTag", "digest")
                                    if k in pairs and isinstance(pairs[k][1], ScalarNode)}
        name = _text(scalars.get("name")) or ""
        if not name:
            continue
        parts = {k: w.scalar(v) for k, v in scalars.items()}  # type: ignore[arg-type]
        value = _text(scalars.get("newName")) or name
        tag = _text(scalars.get("newTag")) or ""
        digest = _text(scalars.get("digest")) or ""
        if tag and not digest:  # kustomize writes only the digest when both are set
            value += f":{tag}"
        if digest:
            value += f"@{digest}"
        insert = None
        if "newName" not in scalars:
            insert = _insertion(w, entry, pairs["name"][0])
        line = parts.get("newName", parts["name"]).line
        yield ImageField("kustomize", index, f"/images/{i}", value, line, None, Parts(parts), insert=insert)


# ----------------------------------------------------------------------------- compose


def _compose(w: _Walker, index: int, root: Node) -> Iterator[ImageField]:
    if not isinstance(root, MappingNode):
        return
    services = w.pairs(root).get("services")
    if services is None or not isinstance(services[1], MappingNode):
        return
    for service, (_, body) in w.pairs(services[1]).items():
        w.count(body)
        if not isinstance(body, MappingNode):
            continue
        image = w.pairs(body).get("image")
        if image is None or not isinstance(image[1], ScalarNode):
            continue
        s = w.scalar(image[1])
        escaped = service.replace("~", "~0").replace("/", "~1")
        yield ImageField("compose", index, f"/services/{escaped}/image", s.value, s.line, s, _NO_PARTS,
                         name=service)
