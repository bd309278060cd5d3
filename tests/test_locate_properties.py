"""Property tests (hypothesis): locate() never fails except with YamlError, and on
generated manifests it finds exactly the generated images and a rewrite touches no
byte outside their spans."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from unittest import mock

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from manifests_rewriter import locate as locate_module
from manifests_rewriter.locate import YamlError, locate
from manifests_rewriter.locate.document import node_bound
from manifests_rewriter.reference import ImageRef, try_parse
from manifests_rewriter.splice import apply_edits, byte_span, edits_for

ACR = "crazureblue.azurecr.io"
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GENERATED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- any text


def _unpruned(text: str) -> list:
    """locate() with every subtree considered relevant (no text-based skipping)."""
    with mock.patch.object(locate_module, "RELEVANT", re.compile(r"(?s).")):
        return locate(text)


def _locate_or_yaml_error(text: str) -> None:
    try:
        fields = locate(text)
    except YamlError as exc:
        assert str(exc)  # a readable message
        return
    assert fields == _unpruned(text)  # skipping subtrees by their text loses nothing
    for f in fields:  # whatever was found, exact regions hold their values
        s = f.scalar
        if s is not None and s.exact:
            chomped = s.value.rstrip("\n") if s.style in ("literal", "folded") else s.value
            assert text[s.start : s.end] == chomped


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_yaml_error(text: str) -> None:
    _locate_or_yaml_error(text)


YAMLISH = st.text(alphabet=list(" \n\r\t-:?,[]{}&*!|>'\"#%@`~<=\ufeffabcimgeo0129./"), max_size=200)


@SETTINGS
@given(YAMLISH)
def test_yaml_like_text_only_raises_yaml_error(text: str) -> None:
    _locate_or_yaml_error(text)


# ----------------------------------------------------------------------------- generated manifests

COMPONENT = st.from_regex(r"[a-z0-9]+(?:[._-][a-z0-9]+)?", fullmatch=True).filter(lambda s: len(s) <= 20)
REGISTRIES = [None, "docker.io", "quay.io", "registry.k8s.io", "ghcr.io", "localhost:5000", "reg.example.com:8443"]


@st.composite
def image_refs(draw) -> str:
    registry = draw(st.sampled_from(REGISTRIES))
    path = "/".join(draw(st.lists(COMPONENT, min_size=1, max_size=3)))
    text = f"{registry}/{path}" if registry else path
    if draw(st.booleans()):
        text += ":" + draw(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True))
    if draw(st.integers(0, 3)) == 0:
        text += "@sha256:" + draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True))
    assume(try_parse(text) is not None)
    return text


@dataclass
class Doc:
    lines: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)  # JSON pointer -> image


def _scalar(style: str, image: str, indent: str) -> str:
    """The value text after `image: ` in block context."""
    if style == "plain":
        return image
    if style == "single":
        return f"'{image}'"
    if style == "double":
        return f'"{image}"'
    header = "|-" if style == "literal" else ">-"
    return f"{header}\n{indent}  {image}"


@st.composite
def manifests(draw) -> tuple[str, dict[tuple[int, str], str]]:
    unit = draw(st.sampled_from([2, 4]))
    seq_indented = draw(st.booleans())
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    comment = st.sampled_from(["", "", "# note", "#  image: not/this:1", "# é ✓"])
    docs: list[Doc | None] = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 4)) == 0:
            docs.append(None)  # an empty document
            continue
        kind, prefix = draw(st.sampled_from([
            ("Pod", ["spec"]),
            ("Deployment", ["spec", "template", "spec"]),
            ("CronJob", ["spec", "jobTemplate", "spec", "template", "spec"]),
        ]))
        doc = Doc()
        doc.lines += ["apiVersion: v1", f"kind: {kind}", "metadata:", " " * unit + f"name: n{len(docs)}"]
        depth = 0
        for key in prefix:
            doc.lines.append(" " * (unit * depth) + f"{key}:")
            depth += 1
        base = " " * (unit * depth)
        anchored: str | None = None
        for list_key in draw(st.lists(st.sampled_from(["containers", "initContainers"]), min_size=1, max_size=2,
                                      unique=True)):
            count = draw(st.integers(1, 3))
            pointer = "/" + "/".join(prefix) + f"/{list_key}"
            if draw(st.integers(0, 3)) == 0:  # flow style list
                items = []
                for i in range(count):
                    image = draw(image_refs())
                    style = draw(st.sampled_from(["plain", "single", "double"]))
                    items.append(f"{{name: c{i}, image: {_scalar(style, image, '')}}}")
                    doc.images[f"{pointer}/{i}/image"] = image
                doc.lines.append(f"{base}{list_key}: [{', '.join(items)}]")
                continue
            doc.lines.append(f"{base}{list_key}:")
            dash = base + (" " * unit if seq_indented else "")
            for i in range(count):
                note = draw(comment)
                if note:
                    doc.lines.append(dash + note)
                image = draw(image_refs())
                style = draw(st.sampled_from(["plain", "single", "double", "literal", "folded"]))
                value = _scalar(style, image, dash + "  ")
                if anchored is None and style != "literal" and draw(st.booleans()):
                    anchored = image
                    value = "&img " + value
                elif anchored is not None and draw(st.integers(0, 2)) == 0:
                    image, value = anchored, "*img"
                trailing = draw(comment) if style in ("plain", "single", "double") else ""
                if draw(st.booleans()):
                    doc.lines.append(f"{dash}- name: c{i}")
                    doc.lines.append(f"{dash}  image: {value}" + (f"  {trailing}" if trailing else ""))
                else:
                    doc.lines.append(f"{dash}- image: {value}" + (f"  {trailing}" if trailing else ""))
                    doc.lines.append(f"{dash}  name: c{i}")
                doc.lines.append(f"{dash}  imagePullPolicy: IfNotPresent")
                doc.images[f"{pointer}/{i}/image"] = image
        docs.append(doc)
    # every document explicit (`---`), so empty ones count as yaml.safe_load_all counts them
    text = "".join("---" + newline + ("" if d is None else newline.join(d.lines) + newline) for d in docs)
    if docs[0] is not None and draw(st.booleans()):
        text = text[len("---" + newline) :]  # an implicit first document
    if draw(st.booleans()):
        text = text.rstrip("\r\n")
    if draw(st.integers(0, 4)) == 0:
        text = "\ufeff" + text
    expected = {}
    for i, d in enumerate(docs):
        if d is not None:
            expected.update({(i, p): image for p, image in d.images.items()})
    return text, expected


def _target(image: str) -> ImageRef:
    ref = try_parse(image)
    assert ref is not None
    return ref.with_name(ACR, f"{ref.registry.replace(':', '-')}/{ref.repository}")


def _set(doc: object, pointer: str, value: str) -> None:
    keys = pointer.strip("/").split("/")
    for key in keys[:-1]:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]  # type: ignore[index]
    doc[int(keys[-1]) if isinstance(doc, list) else keys[-1]] = value  # type: ignore[index]


@GENERATED
@given(manifests())
def test_generated_manifests_are_found_and_rewritten_byte_exactly(case: tuple[str, dict]) -> None:
    text, expected = case
    fields = locate(text)
    assert fields == _unpruned(text)
    assert all(f.source == "pod" for f in fields)
    assert {(f.document, f.path): f.value for f in fields} == expected
    assert len(fields) == len(expected)
    for f in fields:
        assert f.scalar is not None and f.scalar.exact
        assert text[f.scalar.start : f.scalar.end] == f.value

    edits = [e for f in fields for e in edits_for(f, _target(f.value))]
    new = apply_edits(text, edits)

    # every byte outside the image spans is unchanged
    old_b, new_b = text.encode(), new.encode()
    rebuilt, pos = b"", 0
    for e in sorted(set(edits), key=lambda e: e.start):
        s, t = byte_span(text, e.start, e.end)
        rebuilt += old_b[pos:s] + e.new.encode()
        pos = t
    assert new_b == rebuilt + old_b[pos:]

    # the result holds the targets, and is otherwise the same YAML
    after = locate(new)
    assert {(f.document, f.path): f.value for f in after} == {
        k: str(_target(v)) for k, v in expected.items()
    }
    before_docs = list(yaml.safe_load_all(text))
    for (doc, pointer), image in expected.items():
        _set(before_docs[doc], pointer, str(_target(image)))
    assert list(yaml.safe_load_all(new)) == before_docs

    # a second rewrite changes nothing
    assert [e for f in after for e in edits_for(f, try_parse(f.value))] == []  # type: ignore[arg-type]


@GENERATED
@given(manifests(), st.data())
def test_mutated_manifests_only_raise_yaml_error(case: tuple[str, dict], data: st.DataObject) -> None:
    text, _ = case
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()) and pos < len(text):
            text = text[:pos] + text[pos + 1 :]
        else:
            text = text[:pos] + data.draw(st.sampled_from(list("-:[]{}&*!|>'\"# \n\t\r"))) + text[pos:]
    _locate_or_yaml_error(text)


# ----------------------------------------------------------------------------- the node bound


def _nodes(text: str) -> int | None:
    """Nodes the text composes into (aliases reuse theirs), or None when it is not YAML."""
    try:
        return sum(isinstance(e, yaml.ScalarEvent | yaml.CollectionStartEvent)
                   for e in yaml.parse(text, Loader=yaml.CSafeLoader))
    except yaml.YAMLError:
        return None


@SETTINGS
@given(st.one_of(YAMLISH, st.text(max_size=200)))
def test_node_bound_is_an_upper_bound(text: str) -> None:
    """document.node_bound lets a file skip counting its nodes before it is composed: it must never
    be below the real count, or a file over scan.max_file_nodes could be composed whole."""
    nodes = _nodes(text)
    assume(nodes is not None)
    assert nodes <= node_bound(text)
