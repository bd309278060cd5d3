"""The span-keeping YAML walk that every locator uses.

The text is composed (not constructed) with PyYAML's libyaml-backed composer: nodes carry
start/end marks, so every scalar a locator reports can be spliced later without touching a
byte around it (splice.py). Composing and walking the node graph is also faster than
constructing Python objects for whole documents.

Offsets are character offsets into the decoded `str` (a leading BOM included).
Safety: nesting beyond MAX_DEPTH and files of more than MAX_NODES nodes are refused before
composing (libyaml's composer would crash; every composed node costs some 300-400 bytes, so a
15 MiB file of tiny nodes would take gigabytes), alias re-visits are budgeted (bombs),
recursive anchors are detected. Composing and walking run with the garbage collector paused
(`gc_paused`): the node graph is up to millions of container objects that the collector would
otherwise rescan again and again (superlinear time on large files), and it holds no cycles.

`walk` goes depth-first over one document's collections and hands every mapping to the
locator's visitors; with `relevant` (manifests) it skips subtrees whose text has nothing
image-like. A visitor receives (walker, document index, path cell, pairs, context, flags);
a path cell is (parent cell, key, node), so JSON pointers cost nothing until reported.
"""

from __future__ import annotations

import gc
import re
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .fields import ImageField, Scalar

STR_TAG = "tag:yaml.org,2002:str"


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
                return STR_TAG
            return super().resolve(kind, value, implicit_)

    return Lean


try:  # libyaml: much faster; its marks need a BOM correction (see _bom_offset)
    _Loader = _lean_loader(yaml.CSafeLoader)
    _LIBYAML = True
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = _lean_loader(yaml.SafeLoader)
    _LIBYAML = False


# PyYAML's C composer recurses once per nesting level in C and crashes the interpreter
# (SIGSEGV) somewhere between 20,000 and 40,000 levels; no real manifest nests beyond
# a few dozen. Anything deeper than this is refused before composing.
MAX_DEPTH = 1000  # libyaml 0.2.6 (PyYAML 6.0.4 wheels) has the same limit of its own
# Walk budget: collections reached again through aliases (and merged entries). A
# YAML bomb (nested aliases) reaches it after a fraction of a second, with memory
# bounded by the text; a document without aliases never comes near it.
BUDGET_BASE = 20_000
BUDGET_PER_NODE = 50
# Nodes (scalars, mappings, sequences; aliases reuse theirs) one file may compose into. A composed
# node costs 300-400 bytes, up to ~700 with what a scan keeps of a node full of containers: 500k
# nodes stay within ~350 MB. Real manifests run at about 30 bytes a node (the largest in the test
# corpus, Argo CD's install.yaml: 1.9 MB, 64k nodes). The setting that changes it is scan.max_file_nodes.
MAX_NODES = 500_000
NODE_LIMIT_SETTING = "scan.max_file_nodes"

MERGE_TAG = "tag:yaml.org,2002:merge"
NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
NULL_TAG = "tag:yaml.org,2002:null"
BOOL_TAG = "tag:yaml.org,2002:bool"
LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")
BREAK_CHARS = "\r\n\x85\u2028\u2029"
_ODD_BREAK = re.compile(r"\r(?!\n)|[\x85\u2028\u2029]")  # line breaks other than \n and \r\n

_STYLES = {None: "plain", "": "plain", "'": "single", '"': "double", "|": "literal", ">": "folded"}



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


def _may_nest_too_deep(text: str) -> bool:
    """A cheap upper bound on nesting. Flow nesting needs a bracket per level. A block
    collection starts at the end of its line's indentation-and-indicators prefix (spaces,
    `- `, `? `, `: `), and only a sequence directly under a mapping key may share its
    parent's column, so block depth <= 2 * (longest such prefix + 1)."""
    if len(text) <= MAX_DEPTH:
        return False
    room = MAX_DEPTH - text.count("[") - text.count("{")
    if room >= 4:
        lines = LINE_BREAK.sub("\n", text) if _ODD_BREAK.search(text) else text  # `^` knows only \n
        if not re.search(rf"^[ \t?:-]{{{room // 2 - 1},}}", lines, re.MULTILINE):
            return False
    return True


def node_bound(text: str) -> int:
    """An upper bound on the nodes the text composes into, from characters alone: a node after
    the first needs an indicator (`:` `,` `-` `?` `[` `{`) or a line break before it, and one
    of those starts at most two (a key and its value, a flow mapping and its first key)."""
    return 2 * (sum(map(text.count, ":,-?[{")) + sum(map(text.count, "\n\r\x85\u2028\u2029"))) + 2


def _may_have_too_many_nodes(text: str, max_nodes: int) -> bool:
    return 2 * len(text) + 2 > max_nodes and node_bound(text) > max_nodes  # a node takes half a character at least


def check_limits(text: str, max_nodes: int = MAX_NODES) -> None:
    """Refuse text nested deeper than MAX_DEPTH, or composing into more than `max_nodes`
    nodes, before composing it. Cheap upper bounds first; only text that might exceed a
    limit is parsed to measure (events, one at a time: memory bounded by the text)."""
    deep = _may_nest_too_deep(text)
    if not (deep or _may_have_too_many_nodes(text, max_nodes)):
        return
    depth = nodes = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                nodes += 1
                if depth > MAX_DEPTH:
                    line = event.start_mark.line + 1 if event.start_mark is not None else None
                    raise LocateError(f"nested more than {MAX_DEPTH} levels deep; refused", line)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent):
                nodes += 1
            if nodes > max_nodes:
                raise LocateError(f"more than {max_nodes:,} YAML nodes, over the limit ({NODE_LIMIT_SETTING}) that "
                                  f"keeps memory bounded; refused")
    except yaml.YAMLError as exc:
        raise _error_from(exc, text) from None


class gc_paused:  # noqa: N801 - used like a function: `with gc_paused():`
    """The cyclic garbage collector off for a while (see the module docstring); nests. A class,
    not a generator: it runs for every file scanned."""

    def __enter__(self) -> None:
        self.collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.collecting:
            gc.enable()


def compose_documents(text: str, max_nodes: int = MAX_NODES) -> list[Node]:
    """All documents of the stream as node graphs (an empty document is a null scalar,
    so indexes match yaml.safe_load_all). Raises YamlError / LocateError (check_limits)."""
    check_limits(text, max_nodes)
    try:
        with gc_paused():
            return list(yaml.compose_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        raise _error_from(exc, text) from None
    except RecursionError:  # the pure-Python composer recurses in Python
        raise LocateError("nested too deeply; refused") from None


def bom_offset(text: str) -> int:
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
            if c in " \t" or c in BREAK_CHARS:
                pos += 1
            elif c == "#":
                m = LINE_BREAK.search(text, pos, end)
                pos = m.start() if m else end
            else:
                break
    return pos


def _block_region(text: str, pos: int, end: int, value: str) -> tuple[int, int, bool]:
    """Region of a block scalar's content (the line after the `|`/`>` header)."""
    m = LINE_BREAK.search(text, pos)
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
        and (stop == len(text) or text[stop] in BREAK_CHARS)
    )
    if not exact:  # best effort region for messages: the first content line
        br = LINE_BREAK.search(text, start)
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


def key_of(node: Node) -> str | None:
    return node.value if isinstance(node, ScalarNode) else None


def text_of(node: Node | None) -> str | None:
    """A scalar's string value, None for anything else (or a null)."""
    if isinstance(node, ScalarNode) and node.tag != NULL_TAG:
        return node.value
    return None


def pointer(cell: tuple | None) -> str:
    """JSON pointer of a path cell chain (parent, key, node)."""
    keys: list[str] = []
    while cell is not None and cell[1] is not None:
        keys.append(str(cell[1]).replace("~", "~0").replace("/", "~1"))
        cell = cell[0]
    return "/" + "/".join(reversed(keys)) if keys else ""


_NONE: frozenset[int] = frozenset()


class Walker:
    """Per-document state: merged-mapping cache, the visit budget, Scalars by node.
    `relevant`: for manifests, the offsets may_matter prunes by (None: walk everything)."""

    def __init__(self, text: str, offset: int, has_merge: bool, relevant: list[int] | None = None) -> None:
        self.text = text
        self.offset = offset
        self.has_merge = has_merge
        self.relevant = relevant
        self.visits = 0
        self.seen: set[int] = set()  # collections walked
        self.skipped: set[int] = set()  # collections not entered (nothing image-like in them)
        self._pairs: dict[int, dict[str, tuple[Node, Node]]] = {}
        self._scalars: dict[int, Scalar] = {}
        self.claimed: set[int] | frozenset[int] = _NONE  # subtrees another locator read (a hand-off): not walked again
        self.collect: Any = None  # locate(collect=): releases and values sources (locate.release.Collected)

    def claim(self, node: Node) -> None:
        """A subtree another locator reads (a hand-off): the walk that found it does not enter it."""
        if not self.claimed:
            self.claimed = set()
        self.claimed.add(id(node))  # type: ignore[union-attr]

    def scalar(self, node: ScalarNode) -> Scalar:
        found = self._scalars.get(id(node))
        if found is None:
            found = self._scalars[id(node)] = make_scalar(node, self.text, self.offset)
        return found

    def may_matter(self, node: Node, relevant: list[int]) -> bool:
        """may_matter, remembering skipped nodes: reaching one again through an alias
        counts against the budget like any re-visit."""
        if id(node) in self.skipped:
            self.revisit(node)
            return False
        if may_matter(relevant, node):
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
                if k.tag == MERGE_TAG:
                    for source in v.value if isinstance(v, SequenceNode) else [v]:
                        if isinstance(source, MappingNode) and id(source) not in self._pairs:
                            stack.append((source, False))
        return self._pairs[id(node)]

    def _merged(self, node: MappingNode) -> dict[str, tuple[Node, Node]]:
        """One mapping's pairs, its merge sources already resolved in the cache."""
        merged: dict[str, tuple[Node, Node]] = {}
        own: dict[str, tuple[Node, Node]] = {}
        for k, v in node.value:
            if k.tag == MERGE_TAG:
                sources = v.value if isinstance(v, SequenceNode) else [v]
                for source in reversed(sources):  # earlier sources win
                    if isinstance(source, MappingNode):
                        entries = self._pairs.get(id(source), {})
                        # copying merged entries is work an alias bomb can multiply
                        # (long chains of merges that each add keys): charge it
                        self.count(k, len(entries))
                        merged.update(entries)
            else:
                key = key_of(k)
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


def context_of(pairs: Mapping[str, tuple[Node, Node]]) -> tuple[str | None, str | None, str | None]:
    kind = text_of(pairs["kind"][1]) if "kind" in pairs else None
    namespace = name = None
    meta = pairs.get("metadata")
    if meta is not None and isinstance(meta[1], MappingNode):
        for k, v in meta[1].value:
            key = key_of(k)
            if key == "namespace":
                namespace = text_of(v)
            elif key == "name":
                name = text_of(v)
    return kind, namespace, name


def root_pairs(node: Node | None) -> dict[str, Node]:
    if not isinstance(node, MappingNode):
        return {}
    return {k.value: v for k, v in node.value if isinstance(k, ScalarNode)}


# ----------------------------------------------------------------------------- the walk

TOP, ITEMS, STATUS, MARKED = 1, 2, 4, 8  # walk flags: an object root, List items, under status, marked key
COLLECTIONS = (MappingNode, SequenceNode)
# "ontainers" covers containers/initContainers/ephemeralContainers; "HelmRelease" lets a Flux
# HelmRelease's root through to its hand-off (gitops.py; manifest.py lets the other GitOps kinds'
# roots through by their `kind`, which costs less than more words here)
RELEVANT = re.compile(r"image|ontainers|HelmRelease|[*\\]", re.IGNORECASE)

Context = tuple  # (kind, namespace, name) of the object a node belongs to
Visitor = Callable[["Walker", int, tuple, Mapping[str, tuple[Node, Node]], Context, int], Iterator[ImageField]]


def may_matter(relevant: list[int], node: Node) -> bool:
    """Whether a node's text holds a container list key, an image-ish word, an alias
    (anything may hide behind one) or an escape (a key may be spelled with one).
    Without any, the subtree cannot hold a pod image or a hint: whole documents
    (Services, RBAC, most CRDs) and most of a workload are skipped.
    `relevant`: sorted offsets of RELEVANT matches, in mark coordinates."""
    i = bisect_left(relevant, node.start_mark.index)
    return i < len(relevant) and relevant[i] < node.end_mark.index


def walk(w: Walker, index: int, root: Node, visitors: tuple[Visitor, ...], *, cell: tuple | None = None,
         ctx: Context = (None, None, None), flags: int = TOP, relevant: list[int] | None = None,
         mark: Callable[[str], bool] | None = None) -> Iterator[ImageField]:
    """Depth-first over the collections below `root` (iterative: no recursion), each mapping
    handed to every visitor in turn.

    `cell`: where `root` sits (None: the document root); `ctx` and `flags` its context.
    With `relevant` (manifests), a subtree whose text has nothing image-like is not entered
    (see may_matter): metadata, probes, resources, ports are skipped for the price of a
    binary search. Object roots (TOP) set the context from their kind and metadata; the
    `status` of an object is flagged STATUS, the items of a `*List` TOP. `mark(key)`: keys
    whose subtrees are flagged MARKED (Helm: under an image key)."""
    # stack entries: (node, path cell, (kind, namespace, name), flags)
    stack: list[tuple[Node, tuple, tuple, int]] = [(root, cell or (None, None, root), ctx, flags)]
    seen = w.seen
    push = stack.append
    while stack:
        node, cell, ctx, flags = stack.pop()
        if id(node) in seen:  # reached again through an alias: a cycle, or one more visit; or handed off
            if id(node) in w.claimed or w.is_cycle(node, cell[0]):
                continue
        else:
            seen.add(id(node))
        inherited = flags & (STATUS | MARKED)
        if isinstance(node, SequenceNode):
            if flags & ITEMS:
                inherited |= TOP
            items = node.value
            for i in range(len(items) - 1, -1, -1):
                child = items[i]
                if isinstance(child, COLLECTIONS):
                    if id(child) in seen:
                        w.revisit(child)
                    elif relevant is not None and not w.may_matter(child, relevant):
                        continue
                    push((child, (cell, i, child), ctx, inherited))
            continue
        if not isinstance(node, MappingNode):
            continue
        pairs = w.pairs(node)
        top = flags & TOP
        if top:
            ctx = context_of(pairs)
        for visit in visitors:
            yield from visit(w, index, cell, pairs, ctx, flags)
        if not (top or mark):  # the common case, kept lean
            for key, (_, child) in reversed(pairs.items()):
                if isinstance(child, COLLECTIONS):
                    if id(child) in seen:
                        w.revisit(child)
                    elif relevant is not None and not w.may_matter(child, relevant):
                        continue
                    push((child, (cell, key, child), ctx, inherited))
            continue
        list_root = top and (ctx[0] or "").endswith("List")
        for key, (_, child) in reversed(pairs.items()):
            if not isinstance(child, COLLECTIONS):
                continue
            if id(child) in seen:
                w.revisit(child)
            elif relevant is not None and not w.may_matter(child, relevant):
                continue
            child_flags = inherited
            if top:
                if key == "status":
                    child_flags |= STATUS
                elif list_root and key == "items":
                    child_flags |= ITEMS
            if mark is not None and mark(key):
                child_flags |= MARKED
            push((child, (cell, key, child), ctx, child_flags))
