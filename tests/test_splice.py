"""splice: edits for image fields change only the image bytes; atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from manifests_rewriter.files import FileError, Found, Tree, WriteError, discover, read_source, write_atomic
from manifests_rewriter.locate import ImageField, locate
from manifests_rewriter.reference import ImageRef, parse
from manifests_rewriter.splice import (
    Edit,
    SpliceError,
    apply_edits,
    byte_span,
    edits_for,
    split_name,
)

ACR = "crazureblue.azurecr.io"
DIGEST = "sha256:" + "cd" * 32


def target(value: str) -> ImageRef:
    ref = parse(value)
    host = ref.registry.replace(":", "-")  # a host:port is not a valid path component
    return ref.with_name(ACR, f"{host}/{ref.repository}")


def rewrite(text: str, *, filename: str = "", sources: tuple[str, ...] = ("pod", "helm", "kustomize", "compose")
            ) -> tuple[str, list[Edit]]:
    edits = [e for f in locate(text, filename=filename) if f.source in sources
             for e in edits_for(f, target(f.value))]
    return apply_edits(text, edits), edits


def assert_only_spans_changed(old: str, new: str, edits: list[Edit]) -> None:
    """Reassemble the expected output by hand, byte by byte: everything between the
    edits is the original's bytes."""
    old_b, new_b = old.encode(), new.encode()
    expected = b""
    pos = 0
    for e in sorted(set(edits), key=lambda e: (e.start, e.end)):
        s, t = byte_span(old, e.start, e.end)
        assert old_b[s:t] == e.old.encode()
        expected += old_b[pos:s] + e.new.encode()
        pos = t
    expected += old_b[pos:]
    assert new_b == expected


# ----------------------------------------------------------------------------- every style

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: p   # keep me
spec:
  containers:
  - name: app
    image: {image}
    args: ["--x"]
"""


@pytest.mark.parametrize(
    ("written", "rewritten"),
    [
        ("nginx", f"{ACR}/docker.io/library/nginx"),
        ("nginx:1.25 # pinned", f"{ACR}/docker.io/library/nginx:1.25 # pinned"),
        ("'nginx:1.25'", f"'{ACR}/docker.io/library/nginx:1.25'"),
        ('"quay.io/org/app:v1@' + DIGEST + '"', f'"{ACR}/quay.io/org/app:v1@{DIGEST}"'),
        ("&a !!str ghcr.io/o/x", f"&a !!str {ACR}/ghcr.io/o/x"),
        ("|-\n      registry.k8s.io/pause:3.9", f"|-\n      {ACR}/registry.k8s.io/pause:3.9"),
        (">-\n      registry.k8s.io/pause:3.9\n", f">-\n      {ACR}/registry.k8s.io/pause:3.9\n"),
        ("localhost:5000/team/app:1", f"{ACR}/localhost-5000/team/app:1"),
        ("docker.io/library/nginx@" + DIGEST, f"{ACR}/docker.io/library/nginx@{DIGEST}"),
    ],
)
def test_each_style_changes_only_the_image(written: str, rewritten: str) -> None:
    text = POD.format(image=written)
    new, edits = rewrite(text)
    assert new == POD.format(image=rewritten)
    assert len(edits) == 1
    assert_only_spans_changed(text, new, edits)
    # semantically: the same document, with the image replaced by the target
    before, after = yaml.safe_load(text), yaml.safe_load(new)
    before["spec"]["containers"][0]["image"] = str(target(before["spec"]["containers"][0]["image"]))
    assert after == before


def test_tag_and_digest_stay_as_written() -> None:
    # "index.docker.io" normalizes to docker.io, but the tag text stays byte for byte
    text = POD.format(image="index.docker.io/library/nginx:1.25.0-alpine@" + DIGEST)
    new, _ = rewrite(text)
    assert f"image: {ACR}/docker.io/library/nginx:1.25.0-alpine@{DIGEST}\n" in new


def test_pinning_a_digest_appends_it() -> None:
    text = POD.format(image="nginx:1.25")
    (field,) = locate(text)
    pinned = target("nginx:1.25").with_digest(DIGEST)
    (edit,) = edits_for(field, pinned)
    assert apply_edits(text, [edit]) == POD.format(image=f"{ACR}/docker.io/library/nginx:1.25@{DIGEST}")


@pytest.mark.parametrize("variant", ["crlf", "bom", "bom+crlf", "no-final-newline", "tabs-in-comment"])
def test_line_endings_bom_and_final_newline_are_kept(variant: str) -> None:
    text = POD.format(image="'nginx:1'")
    if "crlf" in variant:
        text = text.replace("\n", "\r\n")
    if "bom" in variant:
        text = "\ufeff" + text
    if variant == "no-final-newline":
        text = text.rstrip("\n")
    if variant == "tabs-in-comment":
        text = text.replace("# keep me", "#\tkeep\tme é")
    new, edits = rewrite(text)
    assert new.startswith("\ufeff") == text.startswith("\ufeff")
    assert new.count("\r\n") == text.count("\r\n")
    assert new.endswith("\n") == text.endswith("\n")
    assert_only_spans_changed(text, new, edits)
    data = new.encode("utf-8")
    assert data.startswith(b"\xef\xbb\xbf") == ("bom" in variant)


def test_unrewritable_scalars_are_refused() -> None:
    for written in ['"ngin\\x78:1"', '"nginx:\\\n      1"', "nginx\n      :1", ">\n      nginx:1\n      # no\n"]:
        text = POD.format(image=written)
        (field,) = [f for f in locate(text) if f.source == "pod"]
        assert not field.scalar.exact
        with pytest.raises(SpliceError, match="cannot be rewritten in place"):
            edits_for(field, target("nginx:1"))


def test_hints_are_never_rewritten() -> None:
    (hint,) = locate("kind: Prometheus\nspec:\n  image: quay.io/prometheus/prometheus:v2\n")
    with pytest.raises(SpliceError, match="warning"):
        edits_for(hint, target(hint.value))


def test_plain_scalar_refuses_text_that_would_not_read_back() -> None:
    text = POD.format(image="nginx:1")
    (field,) = locate(text)
    ipv6 = parse("nginx:1").with_name("[::1]:5000", "docker.io/library/nginx")
    with pytest.raises(SpliceError, match="plain scalar"):
        edits_for(field, ipv6)
    quoted = POD.format(image='"nginx:1"')
    (field,) = locate(quoted)
    (edit,) = edits_for(field, ipv6)
    assert yaml.safe_load(apply_edits(quoted, [edit]))["spec"]["containers"][0]["image"] == "[::1]:5000/docker.io/library/nginx:1"


def test_aliases_give_one_edit() -> None:
    text = """\
kind: Pod
spec:
  containers:
  - {name: a, image: &img "nginx:1"}
  - {name: b, image: *img}
  initContainers:
  - {name: c, image: *img}
"""
    new, edits = rewrite(text)
    assert len(edits) == 3 and len(set(edits)) == 1
    assert new == text.replace('"nginx:1"', f'"{ACR}/docker.io/library/nginx:1"')
    assert [f.value for f in locate(new)] == [f"{ACR}/docker.io/library/nginx:1"] * 3


def test_multi_document_flow_and_comments() -> None:
    text = (
        "# header\n---\n---\nkind: Deployment\nspec: {template: {spec: {containers: [{name: a, image: a/b:1}]}}}\n"
        "---\nkind: CronJob\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n"
        "          containers:\n          - image: 'c/d@" + DIGEST + "'  # pinned\n            name: x\n"
    )
    new, edits = rewrite(text)
    assert len(edits) == 2
    assert_only_spans_changed(text, new, edits)
    assert [f.value for f in locate(new)] == [f"{ACR}/docker.io/a/b:1", f"{ACR}/docker.io/c/d@{DIGEST}"]


def test_second_rewrite_is_a_no_op() -> None:
    text = POD.format(image="'nginx:1'")
    once, _ = rewrite(text)
    for field in locate(once):
        assert edits_for(field, parse(field.value)) == []


# ----------------------------------------------------------------------------- helm

BITNAMI = """\
global:
  imageRegistry: ""
image:
  registry: docker.io
  repository: bitnami/nginx
  tag: 1.29.1-debian-12-r0
  digest: ""
"""


def test_helm_split_sets_registry_and_repository() -> None:
    new, edits = rewrite(BITNAMI, filename="values.yaml")
    assert new == BITNAMI.replace("registry: docker.io", f"registry: {ACR}").replace(
        "repository: bitnami/nginx", "repository: docker.io/bitnami/nginx"
    )
    assert len(edits) == 2
    (field,) = locate(new, filename="values.yaml")
    assert field.value == f"{ACR}/docker.io/bitnami/nginx:1.29.1-debian-12-r0"


def test_helm_global_registry_is_edited_once_for_all_images() -> None:
    text = f"""\
global:
  image:
    registry: registry.k8s.io
controller:
  image:
    image: ingress-nginx/controller
    tag: "v1.15.1"
    digest: {DIGEST}
webhook:
  image:
    image: "ingress-nginx/kube-webhook-certgen"
    tag: v1.6.9
"""
    new, edits = rewrite(text, filename="values.yaml")
    assert len(edits) == 4 and len(set(edits)) == 3  # the global registry edit, twice
    assert new == (text.replace("registry: registry.k8s.io", f"registry: {ACR}")
                   .replace("image: ingress-nginx/controller", "image: registry.k8s.io/ingress-nginx/controller")
                   .replace('"ingress-nginx/kube-webhook-certgen"', '"registry.k8s.io/ingress-nginx/kube-webhook-certgen"'))
    assert [f.value for f in locate(new, filename="values.yaml")] == [
        f"{ACR}/registry.k8s.io/ingress-nginx/controller:v1.15.1@{DIGEST}",
        f"{ACR}/registry.k8s.io/ingress-nginx/kube-webhook-certgen:v1.6.9",
    ]


def test_helm_repository_without_registry_gets_the_full_name() -> None:
    text = "image:\n  repository: registry.k8s.io/metrics-server/metrics-server  # full\n  tag: \"\"\n"
    new, _ = rewrite(text, filename="values.yaml")
    assert new == text.replace("repository: registry.k8s.io/", f"repository: {ACR}/registry.k8s.io/")


def test_helm_repository_part_with_its_own_tag_keeps_it() -> None:
    text = "images:\n  app:\n    repository: quay.io/org/app:v1\n"
    new, _ = rewrite(text, filename="values.yaml")
    assert new == f"images:\n  app:\n    repository: {ACR}/quay.io/org/app:v1\n"


def test_helm_plain_string_and_numeric_tag() -> None:
    text = 'sidecarImage: "busybox:1.36"\nimage:\n  repository: gesellix/exporter\n  tag: 16\n'
    new, _ = rewrite(text, filename="values.yaml")
    assert new == (f'sidecarImage: "{ACR}/docker.io/library/busybox:1.36"\nimage:\n'
                   f"  repository: {ACR}/docker.io/gesellix/exporter\n  tag: 16\n")


def test_helm_split_refuses_a_different_tag() -> None:
    (field,) = locate(BITNAMI, filename="values.yaml")
    with pytest.raises(SpliceError, match="tag and digest"):
        edits_for(field, parse("docker.io/bitnami/nginx:other").with_name(ACR, "x/y"))


# ----------------------------------------------------------------------------- kustomize


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (  # block: a new line with the entry's indentation after `name:`
            "images:\n- name: nginx # upstream\n  newTag: '1.25'\n",
            f"images:\n- name: nginx # upstream\n  newName: {ACR}/docker.io/library/nginx\n  newTag: '1.25'\n",
        ),
        (
            "images:\r\n    - newTag: v2\r\n      name: guestbook\r\n",
            f"images:\r\n    - newTag: v2\r\n      name: guestbook\r\n      newName: {ACR}/docker.io/library/guestbook\r\n",
        ),
        (  # last line without a final newline
            "images:\n  - name: grafana/grafana",
            f"images:\n  - name: grafana/grafana\n    newName: {ACR}/docker.io/grafana/grafana",
        ),
        (  # flow
            "images: [{name: redis, newTag: '7'}]\n",
            f"images: [{{name: redis, newTag: '7', newName: {ACR}/docker.io/library/redis}}]\n",
        ),
        (
            "images:\n- {name: redis,}\n- {name: busybox }\n",
            f"images:\n- {{name: redis, newName: {ACR}/docker.io/library/redis}}\n"
            f"- {{name: busybox, newName: {ACR}/docker.io/library/busybox }}\n",
        ),
        (  # an existing newName is replaced; name stays
            "images:\n- name: redis\n  newName: \"public.ecr.aws/docker/library/redis\"\n",
            f"images:\n- name: redis\n  newName: \"{ACR}/public.ecr.aws/docker/library/redis\"\n",
        ),
    ],
    ids=["block", "block-crlf-name-last", "no-final-newline", "flow", "flow-trailing-comma", "replace"],
)
def test_kustomize_new_name(before: str, after: str) -> None:
    new, edits = rewrite(before, filename="kustomization.yaml")
    assert new == after
    assert_only_spans_changed(before, new, edits)
    fields = locate(new, filename="kustomization.yaml")
    assert [f.parts["name"].value for f in fields] == [
        f.parts["name"].value for f in locate(before, filename="kustomization.yaml")
    ]
    for field in fields:
        assert field.value.startswith(ACR + "/")
        assert edits_for(field, parse(field.value)) == []  # a second run changes nothing


# ----------------------------------------------------------------------------- compose


def test_compose_merge_key_image_is_one_edit() -> None:
    text = "services:\n  a: &a\n    image: nginx:1\n  b:\n    <<: *a\n    ports: ['80:80']\n"
    new, edits = rewrite(text, filename="compose.yaml")
    assert len(set(edits)) == 1
    assert new == text.replace("image: nginx:1", f"image: {ACR}/docker.io/library/nginx:1")


# ----------------------------------------------------------------------------- apply_edits


def test_apply_edits_checks_old_text_and_overlaps() -> None:
    text = "0123456789"
    assert apply_edits(text, [Edit(2, 4, "23", "x"), Edit(6, 6, "", "+")]) == "01x45+6789"
    assert apply_edits(text, [Edit(2, 4, "23", "x"), Edit(2, 4, "23", "x")]) == "01x456789"
    assert apply_edits(text, []) == text
    with pytest.raises(SpliceError, match="expected"):
        apply_edits(text, [Edit(2, 4, "xx", "y")])
    with pytest.raises(SpliceError, match="conflicting"):
        apply_edits(text, [Edit(2, 5, "234", "y"), Edit(4, 6, "45", "z")])
    with pytest.raises(SpliceError, match="conflicting"):
        apply_edits(text, [Edit(2, 4, "23", "y"), Edit(2, 4, "23", "z")])
    with pytest.raises(SpliceError, match="conflicting"):
        apply_edits(text, [Edit(3, 3, "", "a"), Edit(3, 3, "", "b")])
    with pytest.raises(SpliceError, match="conflicting"):
        apply_edits(text, [Edit(2, 6, "2345", "a"), Edit(4, 4, "", "b")])
    with pytest.raises(SpliceError, match="outside"):
        apply_edits(text, [Edit(8, 12, "89", "")])


def test_split_name() -> None:
    assert split_name("nginx") == ("nginx", "")
    assert split_name("localhost:5000/a/b:1@" + DIGEST) == ("localhost:5000/a/b", ":1@" + DIGEST)
    assert split_name("a/b@" + DIGEST) == ("a/b", "@" + DIGEST)
    assert split_name("[::1]:5000/x") == ("[::1]:5000/x", "")


def test_byte_span_counts_utf8_bytes() -> None:
    text = "\ufeffé: 🎉 nginx"
    start = text.index("nginx")
    s, e = byte_span(text, start, start + 5)
    assert text.encode()[s:e] == b"nginx"
    assert (s, e) == (3 + 2 + 2 + 4 + 1, 3 + 2 + 2 + 4 + 1 + 5)


# ----------------------------------------------------------------------------- write_atomic


def test_write_atomic_keeps_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_bytes(b"old\r\n")
    path.chmod(0o640)
    write_atomic(path, b"new\r\n", expected=b"old\r\n")
    assert path.read_bytes() == b"new\r\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.yaml"]


def test_write_atomic_refuses_a_concurrently_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_bytes(b"edited by someone else\n")
    with pytest.raises(WriteError, match="changed since it was read"):
        write_atomic(path, b"ours\n", expected=b"what we read\n")
    assert path.read_bytes() == b"edited by someone else\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.yaml"]
    path.unlink()
    with pytest.raises(WriteError, match="gone"):
        write_atomic(path, b"ours\n", expected=b"what we read\n")
    assert not path.exists()


def test_write_atomic_never_writes_through_a_link_and_creates_new_files(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_bytes(b"a\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    with pytest.raises(WriteError, match="replaced by a symbolic link since it was read; not written through it"):
        write_atomic(link, b"b\n", expected=b"a\n")
    with pytest.raises(WriteError, match="is a symbolic link; not written through it"):
        write_atomic(link, b"b\n")  # an output file (report, plan) named by a planted link
    assert link.is_symlink() and real.read_bytes() == b"a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.yaml", "real.yaml"]
    fresh = tmp_path / "fresh.yaml"
    write_atomic(fresh, b"c\n")
    assert fresh.read_bytes() == b"c\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_write_atomic_from_a_tree_never_passes_a_swapped_directory(tmp_path: Path) -> None:
    """A file found in a tree is written from the tree's directory, component by component without
    following links: a directory swapped for a link (or the tree itself moved) is refused."""
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "app").mkdir(parents=True)
    outside.mkdir()
    (tree / "app" / "pod.yaml").write_bytes(b"old\n")
    (outside / "pod.yaml").write_bytes(b"old\n")
    walked = Tree.at(tree)
    write_atomic(tree / "app" / "pod.yaml", b"new\n", expected=b"old\n", tree=walked)
    assert (tree / "app" / "pod.yaml").read_bytes() == b"new\n"
    (tree / "app").rename(tree / "moved")
    (tree / "app").symlink_to(outside, target_is_directory=True)
    with pytest.raises(WriteError, match="app was replaced .by a symbolic link.. since it was read; not written"):
        write_atomic(tree / "app" / "pod.yaml", b"evil\n", expected=b"old\n", tree=walked)
    tree.rename(tmp_path / "tree-moved")
    tree.symlink_to(outside, target_is_directory=True)
    with pytest.raises(WriteError, match="no longer the directory that was read"):
        write_atomic(tree / "pod.yaml", b"evil\n", expected=b"old\n", tree=walked)
    with pytest.raises(WriteError, match="outside the tree"):
        write_atomic(outside / "pod.yaml", b"evil\n", expected=b"old\n", tree=Tree.at(tmp_path / "tree-moved"))
    assert (outside / "pod.yaml").read_bytes() == b"old\n"


def test_a_file_replaced_by_a_link_after_the_walk_is_not_read(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tmp_path / "secret.yaml").write_text("password: hunter2\n")
    (tree / "app.yaml").write_text("a: 1\n")
    [found] = discover([tree])
    assert isinstance(found, Found) and found.tree == Tree.at(tree)
    (tree / "app.yaml").unlink()
    (tree / "app.yaml").symlink_to(tmp_path / "secret.yaml")
    error = read_source(found, 1 << 20)
    assert isinstance(error, FileError) and "replaced by a symbolic link" in error.message


def test_end_to_end_file_rewrite_is_byte_exact(tmp_path: Path) -> None:
    original = ("\ufeff# deploy\r\napiVersion: apps/v1\r\nkind: Deployment\r\nspec:\r\n  template:\r\n"
                "    spec:\r\n      containers:\r\n      - name: a\r\n        image: \"nginx:1\"\r\n").encode()
    path = tmp_path / "d.yaml"
    path.write_bytes(original)
    data = path.read_bytes()
    text = data.decode("utf-8")
    new, edits = rewrite(text)
    write_atomic(path, new.encode("utf-8"), expected=data)
    assert path.read_bytes() == original.replace(b'"nginx:1"', f'"{ACR}/docker.io/library/nginx:1"'.encode())
    fields: list[ImageField] = locate(path.read_bytes().decode("utf-8"))
    assert all(edits_for(f, parse(f.value)) == [] for f in fields)
