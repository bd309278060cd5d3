#!/usr/bin/env python3
"""Check locate() and the splicer against a corpus of real files.

    scripts/check_corpus.py [CORPUS_DIR]        (default: ../shared/corpus)

CORPUS_DIR holds the files, EXPECTED.json (what PyYAML's safe_load_all sees in each
file; its `_meta` explains the fields) and SOURCES.tsv (each file's path in its
repository, which decides its kind: `values.yaml`, `kustomization.yaml`, ...).

1. Locating: every expected pod image, Helm value, kustomize entry and Compose image is
   found with the same document, path, value, line and style, and nothing else is;
   invalid files raise YamlError. Entries that are not images by this tool's rules are
   counted as "explained", with the reason printed. Expected differences from EXPECTED.json
   (which predates them), each explained per entry:
   - a Helm image map without a repository whose name the chart composes from the top-level
     `imageRegistry`/`imageNamespace` (cert-manager) is an image rewritten through those keys,
     not a warning (issue 10). Walking every subtree (no skipping
   by text) gives the same result.
2. Rewriting: every image that is a valid reference is rewritten in memory to
   crazureblue.azurecr.io/<host>/<path>; the result must parse, hold the same images
   (now the targets), differ from the input only inside the edited spans, and a second
   rewrite must change nothing.

Prints a summary; exits 1 on any mismatch.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import Counter
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "manifests-rewriter"))

from manifests_rewriter import locate as locate_module  # noqa: E402
from manifests_rewriter.locate import ImageField, YamlError, compose_documents, file_kind, locate  # noqa: E402
from manifests_rewriter.reference import ImageRef, try_parse  # noqa: E402
from manifests_rewriter.splice import SpliceError, apply_edits, byte_span, edits_for  # noqa: E402

TARGET_REGISTRY = "crazureblue.azurecr.io"
KINDS = {"manifest": "manifest", "crd": "manifest", "manifest-json": "manifest",
         "helm-values": "helm-values", "kustomization": "kustomization", "compose": "compose"}


def target_of(ref: ImageRef) -> ImageRef:
    host = re.sub(r"[^a-z0-9._-]+", "-", ref.registry.lower()).strip("-")
    return ref.with_name(TARGET_REGISTRY, f"{host}/{ref.repository}")


CATEGORIES = ("pod", "helm", "kustomize", "compose", "warnings")
COLUMNS = ("expected", "found", "explained", "missing", "extra")


class Report:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()  # files and rewrite figures
        self.table: dict[str, Counter[str]] = {c: Counter() for c in CATEGORIES}
        self.problems: list[str] = []
        self.explained: list[str] = []

    def tally(self, category: str, what: str, n: int = 1) -> None:
        self.table[category][what] += n

    def problem(self, file: str, message: str) -> None:
        self.problems.append(f"{file}: {message}")

    def explain(self, file: str, message: str) -> None:
        self.explained.append(f"{file}: {message}")


def _p(path: str) -> str:
    return path.lstrip("/")


def compare_pod(rep: Report, name: str, expected: list[dict], fields: list[ImageField]) -> None:
    want = {(e["doc"], e["path"], e["image"], e["line"], e["style"]) for e in expected}
    got = {(f.document, _p(f.path), f.value, f.line, f.scalar.style if f.scalar else None)
           for f in fields if f.source == "pod"}
    rep.tally("pod", "expected", len(want))
    rep.tally("pod", "found", len(got & want))
    for item in sorted(want - got, key=str):
        rep.tally("pod", "missing")
        rep.problem(name, f"missing pod image {item}")
    for item in sorted(got - want, key=str):
        rep.tally("pod", "extra")
        rep.problem(name, f"extra pod image {item}")


def compare_helm(rep: Report, name: str, expected: list[dict], fields: list[ImageField]) -> None:
    helm = {_p(f.path): f for f in fields if f.source == "helm"}
    hints = {_p(f.path): f for f in fields if f.source == "hint"}
    registry_lines = {f.parts["registry"].line for f in helm.values() if "registry" in f.parts}
    matched: set[str] = set()
    for entry in expected:
        path = entry["path"]
        rep.tally("helm", "expected")
        if entry["kind"] == "scalar":
            value = entry.get("value")
            leaf = path.rsplit("/", 1)[-1]
            if path == "global/imageRegistry":
                status = "in effect" if entry["line"] in registry_lines else "empty: not in effect"
                rep.explain(name, f"{path} = {value!r} is the global registry ({status}), not an image")
                rep.tally("helm", "explained")
                if value and entry["line"] not in registry_lines:
                    rep.problem(name, f"{path} = {value!r} is set but no image uses it")
            elif path in helm and helm[path].value == value:
                matched.add(path)
                rep.tally("helm", "found")
            elif leaf in ("imageRegistry", "imageNamespace") or try_parse(value) is None:
                rep.explain(name, f"{path} = {value!r} is a piece of a reference, not an image")
                rep.tally("helm", "explained")
            else:
                rep.problem(name, f"missing helm plain image {path} = {value!r}")
                rep.tally("helm", "missing")
            continue
        fields_ = {k: v for k, v in entry["fields"].items() if not k.endswith("__type")}
        if set(fields_) == {"registry"}:
            ok = path == "global/image" and entry["lines"]["registry"] in registry_lines
            rep.explain(name, f"{path} holds only a registry: the global registry of the images below it")
            rep.tally("helm", "explained")
            if not ok:
                rep.problem(name, f"{path}: registry {fields_['registry']!r} not used by any image")
            continue
        if not fields_.get("repository") and not fields_.get("image"):
            rep.tally("helm", "explained")
            if path in helm and "name" in helm[path].parts:
                # issue 10: cert-manager's name is composed from the chart-wide imageRegistry and
                # imageNamespace; the rewrite edits those (the same edit for every image)
                rep.explain(name, f"{path}: empty repository, the chart composes the name "
                                  f"({helm[path].value!r}) from imageRegistry/imageNamespace: rewritten there")
                matched.add(path)
            elif path in hints:
                rep.explain(name, f"{path}: empty repository, the chart composes the name "
                                  f"({hints[path].value!r}): reported as a warning")
                matched.add(path)
            else:
                rep.problem(name, f"{path}: map without repository not reported as a warning")
            continue
        field = helm.get(path)
        if field is None:
            rep.problem(name, f"missing helm split image {path}")
            rep.tally("helm", "missing")
            continue
        matched.add(path)
        rep.tally("helm", "found")
        for key, value in fields_.items():
            part = field.parts.get(key)
            if key == "registry" and part is not None and part.line != entry["lines"].get("registry"):
                continue  # the registry in effect is a global one
            if part is None:
                if key in ("digestChroot",):  # ingress-nginx: only for the chroot variant image
                    continue
                rep.problem(name, f"{path}: part {key} = {value!r} not reported")
                continue
            want = value if isinstance(value, str) else json.dumps(value)
            if part.value != want:
                rep.problem(name, f"{path}: part {key} is {part.value!r}, expected {want!r}")
            if key in entry.get("lines", {}) and part.line != entry["lines"][key]:
                rep.problem(name, f"{path}: part {key} on line {part.line}, expected {entry['lines'][key]}")
            if not isinstance(value, str):
                rep.explain(name, f"{path}: {key} is a YAML {entry['fields'].get(key + '__type')} "
                                  f"({value!r}); Helm renders it as in {field.value!r}")
    for path in sorted(set(helm) - matched):
        rep.problem(name, f"extra helm image {path} = {helm[path].value!r}")
        rep.tally("helm", "extra")


def compare_kustomize(rep: Report, name: str, expected: list[dict], fields: list[ImageField]) -> None:
    got = {_p(f.path): f for f in fields if f.source == "kustomize"}
    rep.tally("kustomize", "expected", len(expected))
    for entry in expected:
        field = got.pop(entry["path"], None)
        if field is None:
            rep.problem(name, f"missing kustomize entry {entry['path']}")
            rep.tally("kustomize", "missing")
            continue
        rep.tally("kustomize", "found")
        values = {k: v.value for k, v in field.parts.items()}
        if values != entry["fields"]:
            rep.problem(name, f"{entry['path']}: parts {values}, expected {entry['fields']}")
    for path in got:
        rep.problem(name, f"extra kustomize entry {path}")
        rep.tally("kustomize", "extra")


def compare_compose(rep: Report, name: str, expected: list[dict], fields: list[ImageField]) -> None:
    got = {(f.document, _p(f.path)): f for f in fields if f.source == "compose"}
    for entry in expected:
        rep.tally("compose", "expected")
        field = got.pop((entry["doc"], entry["path"]), None)
        if entry.get("no_image_key"):
            rep.tally("compose", "explained")
            rep.explain(name, f"service {entry['service']} has no image (build only): nothing to rewrite")
            if field is not None:
                rep.problem(name, f"{entry['path']} reported but the service has no image")
            continue
        if field is None:
            rep.problem(name, f"missing compose image {entry['path']}")
            rep.tally("compose", "missing")
            continue
        rep.tally("compose", "found")
        got_t = (field.value, field.line, field.scalar.style if field.scalar else None)
        want_t = (entry["image"], entry["line"], entry["style"])
        if got_t != want_t:
            rep.problem(name, f"{entry['path']}: found {got_t}, expected {want_t}")
    for key in got:
        rep.problem(name, f"extra compose image {key}")
        rep.tally("compose", "extra")


def compare_hints(rep: Report, name: str, expected: list[dict], fields: list[ImageField]) -> None:
    """EXPECTED's `image_keys_outside_pod_specs` are informative; this tool warns about
    all of them except status fields (not images that will run)."""
    want = {(e["doc"], e["path"], e["value"], e["line"]) for e in expected
            if not e["path"].startswith("status/")}
    for e in expected:
        if e["path"].startswith("status/"):
            rep.explain(name, f"{e['path']} is status, not a future pod image: no warning")
            rep.tally("warnings", "expected")
            rep.tally("warnings", "explained")
    got = {(f.document, _p(f.path), f.value, f.line) for f in fields
           if f.source == "hint" and f.path.endswith("/image") and f.scalar is not None}
    rep.tally("warnings", "expected", len(want))
    rep.tally("warnings", "found", len(want & got))
    for item in sorted(want - got, key=str):
        rep.problem(name, f"missing warning {item}")
        rep.tally("warnings", "missing")
    for item in sorted(got - want, key=str):
        rep.problem(name, f"extra warning {item}")
        rep.tally("warnings", "extra")
    other = [f for f in fields if f.source == "hint" and (f.scalar is None or not f.path.endswith("/image"))]
    rep.tally("warnings", "other", len(other))


def check_rewrite(rep: Report, name: str, text: str, fields: list[ImageField], filename: str) -> None:
    """Rewrite every rewritable image in memory and check the result byte by byte."""
    edits = []
    targets: dict[tuple[str, int, str], str] = {}
    for field in fields:
        if field.source == "hint":
            continue
        ref = try_parse(field.value)
        if ref is None:
            rep.counts[f"rewrite skipped ({field.source}: not a valid reference)"] += 1
            continue
        target = target_of(ref)
        try:
            edits.extend(edits_for(field, target))
        except SpliceError as exc:
            rep.problem(name, f"cannot rewrite {field.path}: {exc}")
            continue
        rep.counts[f"rewritten ({field.source})"] += 1
        targets[(field.source, field.document, field.path)] = str(target)
    if not edits:
        return
    try:
        new_text = apply_edits(text, edits)
    except SpliceError as exc:
        rep.problem(name, f"edits do not apply: {exc}")
        return
    rep.counts["files rewritten"] += 1
    # 1. every byte outside the edited spans is unchanged
    old_b, new_b = text.encode("utf-8"), new_text.encode("utf-8")
    pos_old = pos_new = 0
    for edit in sorted(set(edits), key=lambda e: (e.start, e.end)):
        s, e = byte_span(text, edit.start, edit.end)
        keep = old_b[pos_old:s]
        if new_b[pos_new : pos_new + len(keep)] != keep:
            rep.problem(name, f"bytes outside the edits changed near byte {s}")
            return
        pos_new += len(keep)
        new_piece = edit.new.encode("utf-8")
        if new_b[pos_new : pos_new + len(new_piece)] != new_piece:
            rep.problem(name, f"edit at byte {s} not found in the output")
            return
        pos_new += len(new_piece)
        pos_old = e
    if new_b[pos_new:] != old_b[pos_old:]:
        rep.problem(name, "bytes after the last edit changed")
        return
    # 2. it still parses, with the same images, now pointing at the targets
    try:
        compose_documents(new_text)
        after = locate(new_text, filename=filename)
    except YamlError as exc:
        rep.problem(name, f"rewritten text does not parse: {exc}")
        return
    if Counter(f.source for f in after) != Counter(f.source for f in fields):
        rep.problem(name, f"image count changed: {Counter(f.source for f in fields)} -> "
                          f"{Counter(f.source for f in after)}")
        return
    by_key = {(f.source, f.document, f.path): f for f in after}
    for key, want in targets.items():
        found = by_key.get(key)
        got = found.value if found is not None else None
        if got is None or try_parse(got) != try_parse(want):
            rep.problem(name, f"{key[2]}: after rewrite {got!r}, expected {want!r}")
    # 3. a second rewrite changes nothing
    for field in after:
        ref = try_parse(field.value)
        if field.source == "hint" or ref is None or ref.registry != TARGET_REGISTRY:
            continue
        try:
            again = edits_for(field, ref)
        except SpliceError as exc:
            rep.problem(name, f"second rewrite of {field.path} fails: {exc}")
            continue
        if again:
            rep.problem(name, f"second rewrite of {field.path} is not a no-op: {again}")
    rep.counts["rewrite checks passed"] += 1


def main(argv: list[str]) -> int:
    corpus = Path(argv[1]) if len(argv) > 1 else ROOT.parent / "shared" / "corpus"
    expected = json.loads((corpus / "EXPECTED.json").read_text(encoding="utf-8"))["files"]
    sources = {}
    tsv = corpus / "SOURCES.tsv"
    if tsv.exists():
        with tsv.open(encoding="utf-8", newline="") as handle:
            sources = {r["local_file"]: r["path_in_repository"] for r in csv.DictReader(handle, delimiter="\t")}
    rep = Report()
    for name, want in sorted(expected.items()):
        rep.counts["files"] += 1
        filename = sources.get(name, name)
        text = (corpus / name).read_bytes().decode("utf-8")
        try:
            fields = locate(text, filename=filename)
        except YamlError as exc:
            if want.get("invalid_yaml"):
                rep.counts["invalid YAML (as expected)"] += 1
            else:
                rep.problem(name, f"YamlError on a valid file: {exc}")
            continue
        if want.get("invalid_yaml"):
            rep.problem(name, "expected invalid YAML, but it parsed")
            continue
        with mock.patch.object(locate_module, "RELEVANT", re.compile(r"(?s).")):
            if locate(text, filename=filename) != fields:  # every subtree walked: same result
                rep.problem(name, "skipping subtrees without image-like text changed the result")
        kind = file_kind(filename, compose_documents(text))
        if KINDS.get(want["content"]) != kind:
            rep.problem(name, f"file kind {kind}, expected {want['content']}")
        compare_pod(rep, name, want.get("images", []), fields)
        compare_helm(rep, name, want.get("helm_values", []), fields)
        compare_kustomize(rep, name, want.get("kustomize_images", []), fields)
        compare_compose(rep, name, want.get("compose", []), fields)
        compare_hints(rep, name, want.get("image_keys_outside_pod_specs", []), fields)
        check_rewrite(rep, name, text, fields, filename)

    print(f"corpus: {corpus}")
    print(f"files: {rep.counts['files']} ({rep.counts['invalid YAML (as expected)']} invalid YAML, as expected)")
    print(f"  {'':<10}" + "".join(f"{c:>10}" for c in COLUMNS))
    total: Counter[str] = Counter()
    for category in CATEGORIES:
        row = rep.table[category]
        total.update(row)
        print(f"  {category:<10}" + "".join(f"{row[c]:>10}" for c in COLUMNS))
    print(f"  {'images':<10}" + "".join(f"{total[c]:>10}" for c in COLUMNS))
    print("  (warnings: image keys outside pod specs; other warnings, not in EXPECTED.json: "
          f"{rep.table['warnings']['other']})")
    print("rewrite in memory:")
    for key, value in sorted(rep.counts.items()):
        if key.startswith(("rewrit", "files rewritten")):
            print(f"  {key:<50}  {value}")
    if rep.explained:
        print(f"explained ({len(rep.explained)}):")
        for line in rep.explained:
            print(f"  {line}")
    print(f"mismatches: {len(rep.problems)}")
    for line in rep.problems:
        print(f"  {line}")
    return 1 if rep.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
