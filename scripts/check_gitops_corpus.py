#!/usr/bin/env python3
"""Measure image location on real Helm values files and GitOps resources (issue 10 items 1-3).

    scripts/check_gitops_corpus.py [CORPUS_DIR] [-v]     (default: ../ext/helmcorpus)

CORPUS_DIR is the helmcorpus ground truth (kept outside every repository): files/ with the real
files in their repositories' layout, EXPECTED.json (its `_meta` explains the fields). For every
file it lists:

1. Images: each expected image is matched to a located field by its JSON pointers (a field's
   scalar and parts, inner pointers `ptr|inner` for YAML held in block scalars) and its
   reference: "found" (right reference), "wrong" (the field, another reference: e.g. a tag
   missing), "warning" (reported as a hint only), "missing". A located field no expected image
   accounts for, or one touching a `not_images` pointer, is a false positive.
2. Rewriting: every located image is rewritten in memory to crazureblue.azurecr.io/<host>/<path>;
   the result must parse, differ only inside the edits, a second scan must find only targets,
   and a second rewrite must change nothing.
3. Chart defaults (when manifests_rewriter.charts exists): the images each release runs with
   its chart resolved from the corpus (`chart_resolved`), against `releases[].runs`.

Prints the figures; exits 1 when anything is missing, wrong or a false positive (-v: per image).
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "manifests-rewriter"))

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode  # noqa: E402

from manifests_rewriter.locate import ImageField, YamlError, compose_documents, locate, make_scalar  # noqa: E402
from manifests_rewriter.locate.document import LINE_BREAK, bom_offset  # noqa: E402
from manifests_rewriter.reference import ImageRef, try_parse  # noqa: E402
from manifests_rewriter.splice import SpliceError, apply_edits, byte_span, edits_for  # noqa: E402

TARGET_REGISTRY = "crazureblue.azurecr.io"
SKIPPED_KINDS = {"kustomization", "helm-template"}  # measured by the kustomize helper's own script


def target_of(ref: ImageRef) -> ImageRef:
    host = re.sub(r"[^a-z0-9._-]+", "-", ref.registry.lower()).strip("-")
    return ref.with_name(TARGET_REGISTRY, f"{host}/{ref.repository}")


def same(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    ra, rb = try_parse(a), try_parse(b)
    return ra is not None and rb is not None and str(ra) == str(rb)


# ------------------------------------------------------------------------ offsets -> pointers


def _esc(key: object) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _scalar_pointers(text: str, offset: int, root: Node, prefix: str, out: dict[tuple[int, int], str],
                     inner_at: set[str], shift: list[int] | None = None) -> None:
    """Map each scalar's value region (start, end) to its pointer; scalars whose pointer is in
    `inner_at` are block scalars holding YAML: their content is mapped too (`ptr|inner`)."""
    stack: list[tuple[Node, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, ScalarNode):
            s = make_scalar(node, text, offset)
            span = (s.start, s.end) if shift is None else (shift[s.start] if s.start < len(shift) else s.start,
                                                             shift[s.end - 1] + 1 if s.end > s.start else s.start)
            out.setdefault(span, prefix + path)
            if prefix + path in inner_at and shift is None:
                _inner(text, s.start, node, prefix + path, out)
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                stack.append((v, f"{path}/{_esc(k.value)}"))
        elif isinstance(node, SequenceNode):
            for i, v in enumerate(node.value):
                stack.append((v, f"{path}/{i}"))


def _inner(text: str, start: int, node: ScalarNode, where: str, out: dict[tuple[int, int], str]) -> None:
    """A block scalar's content read as YAML, its offsets mapped back into the file."""
    inner = node.value
    # the content lines in the file: from `start` (first content char), each line indented alike
    line_start = text.rfind("\n", 0, start) + 1
    indent = start - line_start
    shift: list[int] = []
    pos = line_start
    for line in inner.split("\n"):
        m = LINE_BREAK.search(text, pos)
        end_of_line = m.start() if m else len(text)
        col0 = pos + indent if end_of_line - pos >= indent else end_of_line
        shift.extend(col0 + i for i in range(len(line)))
        shift.append(col0 + len(line))  # the line break
        pos = m.end() if m else len(text)
    try:
        docs = compose_documents(inner)
    except YamlError:
        return
    for i, doc in enumerate(docs):
        if doc is not None:
            _scalar_pointers(inner, 0, doc, where + "|" + (f"#{i}" if i else ""), out, set(), shift)


def pointer_map(text: str, inner_at: set[str]) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    offset = bom_offset(text)
    for i, doc in enumerate(compose_documents(text)):
        if doc is not None:
            _scalar_pointers(text, offset, doc, f"#{i}" if i else "", out, inner_at)
    return out


def norm(pointer: str) -> str:
    return pointer[2:] if pointer.startswith("#0") else pointer


def field_pointers(f: ImageField, where: dict[tuple[int, int], str]) -> set[str]:
    """The pointers of a field's scalars, and of the keys of its own map (an empty `repository`
    that falls back to a global one is still this map's)."""
    scalars = ([f.scalar] if f.scalar is not None else []) + list(f.parts.values())
    found = {where.get((s.start, s.end), f"?{s.start}") for s in scalars}
    doc = f"#{f.document}" if f.document else ""
    if f.scalar is None:
        found |= {doc + f.path + "/" + k for k in ("repository", "image", "name", "tag")}
    return found


# ------------------------------------------------------------------------------ reading


def read(corpus: Path, key: str) -> tuple[str, str]:
    """(text, filename to locate it as); `x.tgz!dir/values.yaml` is a member of a packaged chart."""
    path, _, member = key.partition("!")
    if not member:
        return (corpus / path).read_bytes().decode("utf-8"), str(corpus / path)
    with tarfile.open(corpus / path, "r:gz") as tar:
        handle = tar.extractfile(member)
        assert handle is not None
        return handle.read().decode("utf-8"), member


class Tally:
    def __init__(self) -> None:
        self.rows: dict[str, Counter[str]] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.counts: Counter[str] = Counter()

    def add(self, kind: str, what: str, n: int = 1) -> None:
        self.rows.setdefault(kind, Counter())[what] += n


COLUMNS = ("expected", "found", "wrong", "warning", "missing", "needs-chart", "false+")


def check_images(t: Tally, key: str, want: dict, fields: list[ImageField], where: dict[tuple[int, int], str],
                 verbose: bool) -> None:
    kind = want["kind"]
    used: set[int] = set()
    for img in want.get("images", []):
        fields_ = {r: norm(p) for r, p in (img.get("fields") or {}).items() if isinstance(p, str)}
        if not fields_:
            t.add(kind, "expected")
            t.add(kind, "missing")
            t.notes.append(f"{key}: {img.get('image')}: not a field of this YAML ({img.get('notes', '')[:80]})")
            continue
        retarget = [norm(p) for p in img.get("retarget_fields") or []]
        primary = next((fields_[r] for r in ("repository", "image", "name", "kustomize_image") if r in fields_),
                       retarget[0] if retarget else next(iter(fields_.values())))
        keys = [primary]
        t.add(kind, "expected")
        image = img.get("image")
        candidates = [(i, f) for i, f in enumerate(fields) if field_pointers(f, where) & set(keys)]
        good = [(i, f) for i, f in candidates if f.source != "hint" and same(f.value, image)]
        hints = [(i, f) for i, f in candidates if f.source == "hint"]
        if image is None or try_parse(image) is None:
            # no reference can be formed from the file alone (a null repository), or its tag is known only
            # where it runs (`registry.k8s.io/kubectl:<cluster Kubernetes version>`): the name must match
            for i, _ in candidates:
                used.add(i)
            name = image.split(":<")[0] if image and ":<" in image else None
            real = [c for c in candidates if c[1].source != "hint"]
            ok = not real or name is not None and all(same(c[1].value.split("@")[0].rsplit(":", 1)[0]
                                                          if ":" in c[1].value.rsplit("/", 1)[-1] else c[1].value, name)
                                                     for c in real)
            t.add(kind, "found" if ok else "false+")
            if verbose:
                t.notes.append(f"{key}: {image!r}: no reference expected; located {[f.value for _, f in candidates]}")
            continue
        if good:
            used.update(i for i, _ in good)
            t.add(kind, "found")
            continue
        if img.get("missing_retarget_fields") and not retarget:
            used.update(i for i, _ in candidates)
            t.add(kind, "needs-chart")
            if verbose:
                t.notes.append(f"{key}: {image}: the file writes only {sorted(fields_)}; the chart supplies the rest")
            continue
        if hints and not [c for c in candidates if c[1].source != "hint"]:
            used.update(i for i, _ in hints)
            t.add(kind, "warning")
            t.problems.append(f"{key}: {image}: reported as a warning only ({hints[0][1].value!r})")
            continue
        if candidates:
            used.update(i for i, _ in candidates)
            t.add(kind, "wrong")
            t.problems.append(f"{key}: {image}: located as {[f.value for _, f in candidates]}")
            continue
        t.add(kind, "missing")
        t.problems.append(f"{key}: missing {image} at {keys[0]}")
    not_images = {norm(n["pointer"]) for n in want.get("not_images", []) if "pointer" in n}
    for i, f in enumerate(fields):
        pointers = field_pointers(f, where)
        if pointers & not_images:
            t.add(kind, "false+")
            t.problems.append(f"{key}: false positive at {sorted(pointers & not_images)}: {f.value!r}")
        elif i not in used and f.source != "hint":
            t.add(kind, "false+")
            t.problems.append(f"{key}: extra {f.source} image {f.value!r} at {f.path}")
        elif i not in used:
            t.counts["other warnings"] += 1
            if verbose:
                t.notes.append(f"{key}: warning {f.value!r} at {f.path}: {f.note}")


def completed(fields: list[ImageField], text: str, filename: str, root: Path) -> list[ImageField]:
    """The fields as a scan reports them: a values file of a chart in the tree gets what the chart
    adds (a tag from appVersion, a subchart's defaults) from the chart pass."""
    from dataclasses import replace

    try:
        from manifests_rewriter.charts import LocalCharts, chart_pass
        from manifests_rewriter.locate import Collected
    except ImportError:  # before issue 10: the fields as located
        return fields
    collect = Collected()
    locate(text, filename=filename, collect=collect)
    releases = [r for r in collect.releases if r.kind == "chart values"]
    if not releases:
        return fields
    for r in releases:
        r.file = filename
    updates = chart_pass(releases, [], LocalCharts([], [str(root)]), roots=[str(root)]).updates
    out = []
    for f in fields:
        for (_, document, path, written), image in updates.items():
            if f.document == document and f.path.startswith(path) and f.value == written:
                f = replace(f, value=image)
        out.append(f)
    return out


def check_rewrite(t: Tally, key: str, text: str, filename: str, fields: list[ImageField]) -> None:
    edits = []
    for field in fields:
        ref = try_parse(field.value)
        if field.source == "hint" or ref is None:
            continue
        try:
            edits.extend(edits_for(field, target_of(ref)))
        except SpliceError as exc:
            t.problems.append(f"{key}: cannot rewrite {field.path}: {exc}")
            continue
        t.counts["fields rewritten"] += 1
    if not edits:
        return
    try:
        new = apply_edits(text, edits)
    except SpliceError as exc:
        t.problems.append(f"{key}: edits do not apply: {exc}")
        return
    t.counts["files rewritten"] += 1
    old_b, new_b = text.encode(), new.encode()
    pos_old = pos_new = 0
    for edit in sorted(set(edits), key=lambda e: (e.start, e.end)):
        s, e = byte_span(text, edit.start, edit.end)
        keep = old_b[pos_old:s]
        if new_b[pos_new:pos_new + len(keep)] != keep:
            t.problems.append(f"{key}: bytes outside the edits changed near byte {s}")
            return
        pos_new += len(keep) + len(edit.new.encode())
        pos_old = e
    if new_b[pos_new:] != old_b[pos_old:]:
        t.problems.append(f"{key}: bytes after the last edit changed")
        return
    try:
        after = locate(new, filename=filename)
    except YamlError as exc:
        t.problems.append(f"{key}: rewritten text does not parse: {exc}")
        return
    for field in after:
        ref = try_parse(field.value)
        if field.source == "hint" or ref is None:
            continue
        if ref.registry != TARGET_REGISTRY:
            t.problems.append(f"{key}: after the rewrite {field.path} is still {field.value!r}")
            continue
        try:
            again = edits_for(field, ref)
        except SpliceError as exc:
            t.problems.append(f"{key}: second rewrite of {field.path} fails: {exc}")
            continue
        if again:
            t.problems.append(f"{key}: second rewrite of {field.path} is not a no-op")
    t.counts["rewrite checks passed"] += 1


def build_cache(corpus: Path, expected: dict, cache: Path) -> None:
    """A chart directory (`--chart-dir`) holding, under the names a release asks for, the charts the
    corpus resolved its releases to (as a Helm cache would hold the published ones: a chart whose
    appVersion the release pipeline stamps gets it stamped here too)."""
    import shutil

    from manifests_rewriter.locate import Collected

    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    for key, want in expected["files"].items():
        for rel in want.get("releases", []):
            resolved = rel.get("chart_resolved")
            if not resolved:
                continue
            text, filename = read(corpus, key)
            collect = Collected()
            locate(text, filename=filename, collect=collect)
            for release in collect.releases:
                if release.document != rel.get("doc", 0) or release.chart is None or release.chart.path and \
                        not release.chart.path.endswith(".tgz"):
                    continue
                chart = release.chart
                source = corpus / resolved
                if chart.path:  # a packaged chart named by file (k3s)
                    (cache / Path(chart.path).name).symlink_to(source)
                    continue
                meta_name = yaml_load((source / "Chart.yaml").read_text()).get("name") if source.is_dir() else None
                name = chart.name or (chart.repo.rstrip("/").rsplit("/", 1)[-1] if chart.repo else meta_name)
                stamped = re.search(r"(v\d+\.\d+\.\d+)", rel.get("resolution", "")) if "stamped" in \
                    rel.get("resolution", "") + rel.get("chart", "") or "appVersion" in rel.get("resolution", "") else None
                if source.is_dir():
                    meta = yaml_load((source / "Chart.yaml").read_text())
                    version = stamped.group(1) if stamped else str(meta.get("version"))
                    target = cache / f"{name}-{version}"
                    if target.exists():
                        continue
                    if stamped:  # as published: version and appVersion stamped
                        shutil.copytree(source, target, symlinks=True)
                        meta.update(version=version, appVersion=version)
                        (target / "Chart.yaml").write_text(yaml_dump(meta))
                    else:
                        target.symlink_to(source)


def yaml_load(text: str) -> dict:
    import yaml

    return yaml.safe_load(text) or {}


def yaml_dump(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def check_releases(t: Tally, corpus: Path, expected: dict, verbose: bool) -> None:
    """Chart defaults: what each release runs, chart resolved from the cache, against `runs`."""
    import functools

    from manifests_rewriter.charts import LocalCharts
    from manifests_rewriter.naming import target_for
    from manifests_rewriter.policy import Policy
    from manifests_rewriter.scan import scan_paths

    cache = corpus.parent / "gitops" / "chart-cache"
    build_cache(corpus, expected, cache)
    policy = Policy(r"^crazureblue\.azurecr\.io/.+$")
    to_target = functools.partial(target_for, registry=TARGET_REGISTRY, template="{registry}/{repository}")
    scanned: dict[Path, object] = {}
    for key, want in sorted(expected["files"].items()):
        for rel in want.get("releases", []):
            runs = {r["image"] for r in rel.get("runs", []) if r.get("image")}
            kind = "release (chart resolved)" if rel.get("chart_resolved") else "release (not in corpus)"
            root = corpus / "/".join(key.split("/")[:2])
            if root not in scanned:
                scanned[root] = scan_paths([str(root)], policy, to_target, charts=LocalCharts([str(cache)], [str(root)]))
            result = scanned[root]
            file = str(corpus / key)
            got = {f.image for f in result.findings if f.file == file and f.document == rel.get("doc", 0)}  # type: ignore[attr-defined]
            in_tree = rel.get("chart_resolved") and (corpus / rel["chart_resolved"]).is_relative_to(root)
            if in_tree:  # a chart in the scanned tree: its values files report its images themselves
                chart_dir = str(corpus / rel["chart_resolved"]) + "/"
                got |= {f.image for f in result.findings if (f.file or "").startswith(chart_dir)}  # type: ignore[attr-defined]
            notices = [n for n in result.unchecked if n.file == file]  # type: ignore[attr-defined]
            t.add(kind, "expected", len(runs))
            if not rel.get("chart_resolved"):
                t.counts["releases without a resolvable chart: warned"] += bool(notices) or not runs
                if not notices and not got:
                    t.problems.append(f"{key}: {rel['resource']}: chart not resolvable, and no warning")
                t.add(kind, "found", len(runs & got))
                continue
            t.add(kind, "found", len(runs & got))
            for image in sorted(runs - got):
                t.add(kind, "missing")
                t.problems.append(f"{key}: {rel['resource']} runs {image}: not reported"
                                  + (f" ({notices[0].message})" if notices else ""))
            for image in sorted(got - runs):
                t.add(kind, "false+")
                t.problems.append(f"{key}: {rel['resource']}: reported {image}, which it does not run")
            if verbose:
                t.notes.append(f"{key}: {rel['resource']}: {sorted(got)}")


def check_tree_rewrite(t: Tally, corpus: Path, cache: Path) -> None:
    """`rewrite` of a copy of the whole corpus with chart defaults (--chart-dir = the cache): every
    changed file parses, its changes are edits of located image lines or new lines only, a second
    scan finds nothing but what the rewrite said it skipped, a second rewrite changes nothing."""
    import difflib
    import functools
    import shutil
    import tempfile

    from manifests_rewriter.charts import LocalCharts
    from manifests_rewriter.naming import target_for
    from manifests_rewriter.policy import Policy
    from manifests_rewriter.rewrite import rewrite_paths
    from manifests_rewriter.scan import scan_paths

    policy = Policy(r"^crazureblue\.azurecr\.io/.+$")
    to_target = functools.partial(target_for, registry=TARGET_REGISTRY, template="{registry}/{repository}")
    with tempfile.TemporaryDirectory(dir=corpus.parent / "gitops") as tmp:
        tree = Path(tmp) / "files"
        shutil.copytree(corpus / "files", tree, symlinks=True)
        charts = LocalCharts([str(cache)], [str(tree)])
        before = {p: p.read_text(encoding="utf-8", errors="replace") for p in tree.rglob("*.y*ml") if p.is_file()}
        located = {}
        for p, text in before.items():
            try:
                located[p] = {s.line for f in locate(text, filename=str(p)) if f.source != "hint"
                              for s in ([f.scalar] if f.scalar else []) + list(f.parts.values())}
            except YamlError:
                continue
        result = rewrite_paths([str(tree)], policy, to_target, charts=charts)
        skipped = {(Path(s.file), s.image) for s in result.skipped}
        t.counts["tree rewrite: files changed"] = len(result.changed)
        t.counts["tree rewrite: skipped (said why)"] = len(result.skipped)
        inserted = 0
        for planned in result.changed:
            path = Path(planned.source.display)
            old, new = before[path], path.read_text(encoding="utf-8")
            try:
                list(yaml_load_all(new))
            except Exception as exc:  # noqa: BLE001 - any parse failure is a problem
                t.problems.append(f"{path.relative_to(tree)}: rewritten file does not parse: {exc}")
                continue
            a, b = old.splitlines(), new.splitlines()
            for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
                if op == "insert":
                    inserted += j2 - j1
                elif op == "delete" or op == "replace" and (
                        j2 - j1 < i2 - i1 or any(i + 1 not in located.get(path, set()) for i in range(i1, i2))):
                    t.problems.append(f"{path.relative_to(tree)}: lines {i1 + 1}-{i2} changed beyond image values")
        t.counts["tree rewrite: lines inserted (chart default overrides)"] = inserted
        again = scan_paths([str(tree)], policy, to_target, charts=charts)
        left = [f for f in again.findings if (Path(f.file or ""), f.image) not in skipped]
        for f in left:
            t.problems.append(f"after the rewrite: {Path(f.file or '').relative_to(tree)}:{f.line}: {f.image} still "
                              f"refused ({f.reason[:60]})")
        second = rewrite_paths([str(tree)], policy, to_target, charts=charts, write=False)
        for planned in second.changed:
            t.problems.append(f"second rewrite changes {Path(planned.source.display).relative_to(tree)}")


def yaml_load_all(text: str) -> list:
    import yaml

    return list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def main(argv: list[str]) -> int:
    args = [a for a in argv[1:] if not a.startswith("-")]
    verbose = "-v" in argv
    corpus = Path(args[0]) if args else ROOT.parent / "ext" / "helmcorpus"
    expected = json.loads((corpus / "EXPECTED.json").read_text(encoding="utf-8"))
    t = Tally()
    for key, want in sorted(expected["files"].items()):
        if want["kind"] in SKIPPED_KINDS:
            continue
        text, filename = read(corpus, key)
        if not filename.endswith((".yaml", ".yml")):
            t.counts["not discovered (.gotmpl: a Go template)"] += 1
            for _ in want.get("images", []):
                t.add(want["kind"], "expected")
                t.add(want["kind"], "missing")
            t.notes.append(f"{key}: not a .yaml file; its {len(want.get('images', []))} image(s) are not scanned")
            continue
        t.counts["files"] += 1
        try:
            fields = locate(text, filename=filename)
            fields = completed(fields, text, filename, corpus / "/".join(key.split("/")[:2]))
        except YamlError as exc:
            if "{{" in text:  # a Go template (helmfile.yaml): skipped with a notice, never an error
                t.counts["Go templates (not YAML until rendered)"] += 1
                for _ in want.get("images", []):
                    t.add(want["kind"], "expected")
                    t.add(want["kind"], "missing")
                continue
            t.problems.append(f"{key}: not read: {exc}")
            continue
        pointers = {norm(p) for img in want.get("images", []) for p in (img.get("fields") or {}).values()
                    if isinstance(p, str)} | {norm(n["pointer"]) for n in want.get("not_images", []) if "pointer" in n}
        where = pointer_map(text, {p.split("|")[0] for p in pointers if "|" in p})
        check_images(t, key, want, fields, where, verbose)
        check_rewrite(t, key, text, filename, fields)
    try:
        import manifests_rewriter.charts  # noqa: F401 - the chart pass (absent before issue 10)
    except ImportError:
        t.counts["chart pass: not available in this version"] = 1
    else:
        check_releases(t, corpus, expected, verbose)
        check_tree_rewrite(t, corpus, corpus.parent / "gitops" / "chart-cache")
    print(f"corpus: {corpus}")
    print(f"  {'kind':<28}" + "".join(f"{c:>12}" for c in COLUMNS))
    total: Counter[str] = Counter()
    for kind, row in sorted(t.rows.items()):
        total.update(row)
        print(f"  {kind:<28}" + "".join(f"{row[c]:>12}" for c in COLUMNS))
    print(f"  {'all':<28}" + "".join(f"{total[c]:>12}" for c in COLUMNS))
    for k, v in sorted(t.counts.items()):
        print(f"  {k}: {v}")
    for line in t.notes:
        print(f"  note: {line}")
    print(f"problems: {len(t.problems)}")
    for line in t.problems:
        print(f"  {line}")
    return 1 if t.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
