"""Rewriting keeps what `kustomize build` renders (overlays.py): every kustomization of the tree is
rendered by the real `kubectl kustomize` before and after the rewrite, and every image it rendered
must render again with the same tag and digest, from the target when the policy refused it."""

from __future__ import annotations

import functools
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from manifests_rewriter import cli as hook_cli
from manifests_rewriter.kustomize_model import split
from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import Policy
from manifests_rewriter.reference import ImageRef, parse
from manifests_rewriter.rewrite import RewriteResult, rewrite_paths

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (kustomize built in) not installed")

ACR = "crazureblue.azurecr.io"
POLICY = Policy(r"^crazureblue\.azurecr\.io/.+$")
NAMING = functools.partial(target_for, registry=ACR)
DIGEST = "sha256:" + "ab" * 32


class _Loader(yaml.SafeLoader):
    """kubectl prints a plain `=` (YAML 1.1 "value" tag): read it as the string it is."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def deployment(name: str, *images: str) -> str:
    containers = "".join(f"        - name: c{i}\n          image: {image}\n" for i, image in enumerate(images))
    return (f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n"
            f"  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n"
            f"    spec:\n      containers:\n{containers}")


def make(root: Path, files: dict[str, str]) -> Path:
    """A repository (a .git directory marks its root) holding `files`."""
    (root / ".git").mkdir(parents=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text) if text.startswith("\n") else text)
    return root


def kustomizations(root: Path) -> list[Path]:
    """Every kustomization directory kubectl can build (components are built by their users)."""
    found = []
    for k in sorted(root.rglob("kustomization.yaml")):
        if (yaml.safe_load(k.read_text()) or {}).get("kind") != "Component":
            found.append(k.parent)
    return found


def _images(node: object, ptr: str, res: str, found: dict[tuple[str, str], str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("containers", "initContainers") and isinstance(v, list):
                for i, c in enumerate(v):
                    if isinstance(c, dict) and isinstance(c.get("image"), str):
                        found[(res, f"{ptr}/{k}/{i}/image")] = c["image"]
            _images(v, f"{ptr}/{k}", res, found)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _images(v, f"{ptr}/{i}", res, found)


def renders(root: Path) -> dict[str, dict[tuple[str, str], str]]:
    """kubectl kustomize of every kustomization: (Kind/name, pointer) -> image."""
    out: dict[str, dict[tuple[str, str], str]] = {}
    for d in kustomizations(root):
        text = subprocess.run([KUBECTL, "kustomize", str(d)], capture_output=True, text=True, check=True).stdout
        images: dict[tuple[str, str], str] = {}
        for doc in yaml.load_all(text, Loader=_Loader):  # noqa: S506 - SafeLoader subclass
            if doc:
                _images(doc, "", f"{doc['kind']}/{doc['metadata']['name']}", images)
        out[str(d.relative_to(root))] = images
    return out


def assert_renders_kept(before: dict, after: dict, *, refused_left: set[str] = frozenset()) -> None:
    """Every image renders again with its tag and digest: its target when the policy refused it
    (except the images in `refused_left`, which must render exactly as before)."""
    assert before.keys() == after.keys()
    for root, images in before.items():
        assert images.keys() == after[root].keys(), root
        for key, old in images.items():
            new = after[root][key]
            assert split(new)[1:] == split(old)[1:], (root, key, old, new)
            if POLICY.refuses(old) and old not in refused_left:
                assert POLICY.allows(new), (root, key, old, new)
                assert split(new)[0] == NAMING(parse(old)).name, (root, key, old, new)
            else:
                assert new == old, (root, key, old, new)


def rewrite(root: Path, *paths: str, resolve=NAMING, write: bool = True) -> RewriteResult:
    return rewrite_paths([str(root / p) for p in (paths or ("",))], POLICY, resolve, write=write)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the issue's case

ISSUE = {
    "base/deploy.yaml": deployment("web", "nginx:1.27", "postgres:16-alpine"),
    "base/kustomization.yaml": "resources:\n  - deploy.yaml\n",
    "overlays/prod/kustomization.yaml": ("resources:\n  - ../../base\nimages:\n  - name: nginx\n    newTag: 1.27.1\n"
                                         "  - name: postgres\n    newTag: 16.3-alpine\n"),
    "overlays/staging/kustomization.yaml": "resources:\n  - ../../base\n",
}


def test_issue_overlay_keeps_its_tags(tmp_path: Path) -> None:
    """The base image and the overlay entry that matches it are renamed together: prod still
    renders 1.27.1 and 16.3-alpine, now from the target."""
    root = make(tmp_path, ISSUE)
    before = renders(root)
    assert before["overlays/prod"][("Deployment/web", "/spec/template/spec/containers/0/image")] == "nginx:1.27.1"
    result = rewrite(root)
    assert not result.errors and not result.skipped
    after = renders(root)
    assert_renders_kept(before, after)
    assert after["overlays/prod"][("Deployment/web", "/spec/template/spec/containers/0/image")] == \
        f"{ACR}/docker.io/library/nginx:1.27.1"
    assert (root / "overlays/prod/kustomization.yaml").read_text() == ISSUE["overlays/prod/kustomization.yaml"].replace(
        "name: nginx", f"name: {ACR}/docker.io/library/nginx").replace(
        "name: postgres", f"name: {ACR}/docker.io/library/postgres")
    assert rewrite(root).changed == []  # a second rewrite changes nothing


def test_issue_without_the_planning_the_overlay_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test can fail: rewriting each file alone (the old behaviour) renders 1.27 in prod."""
    from manifests_rewriter import rewrite as rewrite_module

    root = make(tmp_path, ISSUE)
    before = renders(root)
    monkeypatch.setattr(rewrite_module, "_keep_kustomize_renders", lambda paths, plans, *a: plans)
    rewrite(root)
    after = renders(root)
    assert after["overlays/prod"][("Deployment/web", "/spec/template/spec/containers/0/image")] == \
        f"{ACR}/docker.io/library/nginx:1.27"
    with pytest.raises(AssertionError):
        assert_renders_kept(before, after)


@pytest.mark.parametrize("given", [["base/deploy.yaml"], ["overlays/prod/kustomization.yaml"],
                                   ["base/deploy.yaml", "overlays/prod/kustomization.yaml"]],
                         ids=["base-alone", "overlay-alone", "both"])
def test_hook_given_single_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: list[str]) -> None:
    """The pre-commit hook names the files of a commit, from the repository root. A base alone
    brings along the overlay entries that match it (the overlay is written too, and said so);
    an overlay alone gets newName (its base is not among the files: it keeps its name)."""
    root = make(tmp_path, {**ISSUE, "acr-mirror.yaml": f"target: {{registry: {ACR}}}\n"
                                                       "policy: {imageRegex: '^crazureblue\\.azurecr\\.io/.+$'}\n"})
    before = renders(root)
    monkeypatch.chdir(root)
    run = CliRunner().invoke(hook_cli.main, ["--config", "acr-mirror.yaml", *given])
    assert run.exit_code == 1, run.output  # files changed
    after = renders(root)
    if given == ["overlay-alone"] or given == ["overlays/prod/kustomization.yaml"]:
        assert "newName:" in (root / "overlays/prod/kustomization.yaml").read_text()
        assert (root / "base/deploy.yaml").read_text() == ISSUE["base/deploy.yaml"]
        assert_renders_kept({"overlays/prod": before["overlays/prod"]}, {"overlays/prod": after["overlays/prod"]})
    else:
        assert_renders_kept(before, after)
    if given == ["base/deploy.yaml"]:
        assert "note: overlays/prod/kustomization.yaml: not among the files given, changed too" in run.output
        assert "rewrote overlays/prod/kustomization.yaml" in run.output
    rerun = CliRunner().invoke(hook_cli.main, ["--config", "acr-mirror.yaml", *given])
    assert rerun.exit_code == 0, rerun.output


def test_overlay_first_then_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An overlay rewritten alone (newName) and its base later: the entry's name follows the base."""
    root = make(tmp_path, ISSUE)
    before = renders(root)
    rewrite(root, "overlays/prod/kustomization.yaml")
    rewrite(root, "base/deploy.yaml")
    assert_renders_kept(before, renders(root))
    text = (root / "overlays/prod/kustomization.yaml").read_text()
    assert f"name: {ACR}/docker.io/library/nginx\n    newName: {ACR}/docker.io/library/nginx\n" in text


# ----------------------------------------------------------------------------- shapes of real trees

CASES = {
    "same-kustomization-newName": {  # argo-cd's manifests/base: the entry beside the resources it renames
        "app/deploy.yaml": deployment("app", "quay.io/argoproj/argocd:latest", "redis:7.0.15-alpine"),
        "app/kustomization.yaml": ("resources: [deploy.yaml]\nimages:\n- name: quay.io/argoproj/argocd\n"
                                   "  newName: quay.io/argoproj/argocd\n  newTag: v2.13.1\n"),
        "ha/kustomization.yaml": "resources: [../app]\nimages:\n- name: redis\n  newTag: 7.2.4-alpine\n",
    },
    "component": {  # microservices-demo's container-images-registry / -tag components
        "base/deploy.yaml": deployment("front", "gcr.io/google-samples/microservices-demo/frontend:v0.10.1"),
        "base/kustomization.yaml": "resources: [deploy.yaml]\n",
        "components/registry/kustomization.yaml": (
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nimages:\n"
            "- name: gcr.io/google-samples/microservices-demo/frontend\n  newName: my-registry.example/frontend\n"),
        "components/tag/kustomization.yaml": (
            "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\nimages:\n"
            "- name: my-registry.example/frontend\n  newTag: v0.10.2\n"),
        "overlays/custom/kustomization.yaml": ("resources: [../../base]\ncomponents:\n"
                                               "- ../../components/registry\n- ../../components/tag\n"),
        "overlays/tagonly/kustomization.yaml": "resources: [../../base]\ncomponents: [../../components/registry]\n",
    },
    "digest-and-suffix": {
        "base/deploy.yaml": deployment("d", "busybox:1.36", "ghcr.io/org/tool:v1", f"alpine@{DIGEST}"),
        "base/kustomization.yaml": "resources: [deploy.yaml]\n",
        "pinned/kustomization.yaml": (f"resources: [../base]\nimages:\n- name: busybox\n  digest: {DIGEST}\n"
                                      "- name: ghcr.io/org/tool\n  tagSuffix: -debug\n"
                                      "- name: alpine\n  newTag: '3.20'\n"),
    },
    "chain-in-one-kustomization": {  # one entry renames, the next matches the new name
        "base/deploy.yaml": deployment("w", "nginx:1.25"),
        "base/kustomization.yaml": "resources: [deploy.yaml]\nimages:\n- name: nginx\n  newName: mirror.example/nginx\n",
        "prod/kustomization.yaml": "resources: [../base]\nimages:\n- name: mirror.example/nginx\n  newTag: 1.25.5\n",
    },
    "two-bases-one-overlay": {
        "a/deploy.yaml": deployment("a", "nginx:1.26"),
        "a/kustomization.yaml": "resources: [deploy.yaml]\n",
        "b/deploy.yaml": deployment("b", "nginx:1.26", "docker.io/library/redis:7"),
        "b/kustomization.yaml": "resources: [deploy.yaml]\n",
        "all/kustomization.yaml": ("resources: [../a, ../b]\nimages:\n- name: nginx\n  newTag: 1.27.0\n"
                                   "- name: docker.io/library/redis\n  newName: redis\n  newTag: 7.4.1\n"),
    },
    "patches": {  # argo-cd's ha/base/redis-ha: a JSON 6902 patch adds a container the entries then retag
        "base/deploy.yaml": deployment("w", "nginx:1.25"),
        "base/kustomization.yaml": "resources: [deploy.yaml]\n",
        "ha/add-init.yaml": ("- op: add\n  path: /spec/template/spec/initContainers\n  value:\n"
                             "  - name: init\n    image: nginx:1.25\n"
                             "- op: add\n  path: /spec/template/spec/containers/-\n"
                             "  value: {name: side, image: 'docker.io/library/busybox:1.36'}\n"),
        "ha/kustomization.yaml": ("resources: [../base]\npatches:\n- path: add-init.yaml\n"
                                  "  target: {kind: Deployment, name: w}\n"
                                  "images:\n- name: nginx\n  newTag: 1.25.5\n"
                                  "- name: docker.io/library/busybox\n  newTag: '1.37'\n"),
    },
    "regex-entry": {  # `.*nginx` matches both new names too: nothing to rename
        "base/deploy.yaml": deployment("w", "nginx:1.25", "quay.io/org/nginx:1.25"),
        "base/kustomization.yaml": "resources: [deploy.yaml]\n",
        "prod/kustomization.yaml": "resources: [../base]\nimages:\n- name: .*nginx\n  newTag: 1.25.5\n",
    },
    "already-allowed-base": {  # a base that already passes; an overlay entry that renames it elsewhere
        "base/deploy.yaml": deployment("ok", f"{ACR}/docker.io/library/nginx:1.27"),
        "base/kustomization.yaml": "resources: [deploy.yaml]\n",
        "dev/kustomization.yaml": (f"resources: [../base]\nimages:\n- name: {ACR}/docker.io/library/nginx\n"
                                   "  newName: nginx\n  newTag: mainline\n"),
    },
}


@pytest.mark.parametrize("case", CASES)
def test_every_render_keeps_its_tag_and_digest(tmp_path: Path, case: str) -> None:
    root = make(tmp_path, CASES[case])
    before = renders(root)
    result = rewrite(root)
    assert not result.errors and not result.skipped, (result.errors, result.skipped)
    assert_renders_kept(before, renders(root))
    assert rewrite(root).changed == []


# ----------------------------------------------------------------------------- left as it is


def test_base_not_rewritable_is_left_for_the_overlay_newName(tmp_path: Path) -> None:
    """The base's own reference cannot be rewritten (not in the target), the one the overlay
    renders can: the base keeps its name and the overlay entry gets newName."""
    root = make(tmp_path, ISSUE)
    before = renders(root)

    def resolve(ref: ImageRef) -> ImageRef | str:
        return "not rewritten: not in the target" if ref.tag in ("1.27", "16-alpine") else NAMING(ref)

    result = rewrite(root, resolve=resolve)
    assert {s.image for s in result.skipped} == {"nginx:1.27", "postgres:16-alpine"}
    assert (root / "base/deploy.yaml").read_text() == ISSUE["base/deploy.yaml"]
    after = renders(root)
    assert_renders_kept(before, after, refused_left={"nginx:1.27", "postgres:16-alpine"})
    assert POLICY.allows(after["overlays/prod"][("Deployment/web", "/spec/template/spec/containers/0/image")])


def test_render_not_rewritable_leaves_the_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prod renders nginx:1.27.1, which cannot be rewritten: rewriting the base alone would roll
    prod back, so neither changes; each is reported, naming the build and the image."""
    root = make(tmp_path, ISSUE)
    monkeypatch.chdir(root)
    files = snapshot(root)

    def resolve(ref: ImageRef) -> ImageRef | str:
        return "not rewritten: not in the target" if ref.tag == "1.27.1" else NAMING(ref)

    result = rewrite(root, resolve=resolve)
    after = snapshot(root)
    assert after["base/deploy.yaml"] == files["base/deploy.yaml"].replace(
        "postgres:16-alpine", f"{ACR}/docker.io/library/postgres:16-alpine")  # postgres is its own group
    assert "name: nginx\n" in after["overlays/prod/kustomization.yaml"]
    [skipped] = [s for s in result.skipped if s.image == "nginx:1.27"]
    assert skipped.reason == ("not rewritten: `kustomize build overlays/prod` renders nginx:1.27.1 (not in the target); "
                              "the image and the images: entries matching it are left as they are")


def test_entry_matching_two_names_leaves_the_group(tmp_path: Path) -> None:
    """An entry name is a regular expression: `(quay.io/org/)?nginx` matches two base images whose
    new names it does not match and which differ: no single name can follow both, so that group is
    left as it is. (`.*nginx` would still match both new names: it would be left as it is.)"""
    root = make(tmp_path, {
        "base/deploy.yaml": deployment("w", "nginx:1.25", "quay.io/org/nginx:1.25"),
        "base/kustomization.yaml": "resources: [deploy.yaml]\n",
        "prod/kustomization.yaml": "resources: [../base]\nimages:\n- name: (quay.io/org/)?nginx\n  newTag: 1.25.5\n",
    })
    before = renders(root)
    assert set(before["prod"].values()) == {"nginx:1.25.5", "quay.io/org/nginx:1.25.5"}
    result = rewrite(root)
    assert {s.image for s in result.skipped} >= {"nginx:1.25", "quay.io/org/nginx:1.25"}
    assert all("would have to match" in s.reason for s in result.skipped)
    assert renders(root) == before


def test_excluded_overlay_is_not_written(tmp_path: Path) -> None:
    root = make(tmp_path, ISSUE)
    before = renders(root)
    result = rewrite_paths([str(root / "base")], POLICY, NAMING, exclude=("overlays/prod/*",))
    assert "excluded" in result.skipped[0].reason
    assert renders(root) == before


def test_remote_base_entry_gets_newName(tmp_path: Path) -> None:
    """An entry for a remote base (never fetched) matches nothing the model sees: newName, as before."""
    root = make(tmp_path, {"kustomization.yaml": ("resources:\n- https://github.com/example/app//base?ref=v1\n"
                                                  "images:\n- name: nginx\n  newTag: 1.27.1\n")})
    result = rewrite(root)
    assert [c.new for f in result.changed for c in f.changes] == [f"{ACR}/docker.io/library/nginx:1.27.1"]
    assert f"newName: {ACR}/docker.io/library/nginx" in (root / "kustomization.yaml").read_text()


# ----------------------------------------------------------------------------- scan: what an entry renders


def test_scan_reports_what_an_entry_renders(tmp_path: Path) -> None:
    """An entry with only newName renders the base's tag (v0.10.1), not `latest`: the finding says
    so, and a plan made from the findings holds exactly what every rewrite render needs."""
    from manifests_rewriter.scan import scan_paths

    root = make(tmp_path, CASES["component"])
    found = scan_paths([str(root)], POLICY, NAMING)
    kustomize = sorted((Path(f.file).parent.name, f.image) for f in found.findings if f.source == "kustomize")
    assert kustomize == [("registry", "my-registry.example/frontend:v0.10.1"),
                         ("registry", "my-registry.example/frontend:v0.10.2"),
                         ("tag", "my-registry.example/frontend:v0.10.2")]
    planned = {str(parse(f.image)) for f in found.findings}

    def only_planned(ref: ImageRef) -> ImageRef | str:  # as `migrate` resolves: only what the plan mirrored
        return NAMING(ref) if str(ref) in planned else "not rewritten: not in the plan"

    before = renders(root)
    result = rewrite(root, resolve=only_planned)
    assert not result.skipped, result.skipped
    assert_renders_kept(before, renders(root))
    assert scan_paths([str(root)], POLICY, NAMING).findings == []


def test_hook_given_a_base_brings_the_patches_its_overlay_entries_match(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlay's entry must follow the base's new name; the image its patch writes (matched by
    the same entry) is rewritten with them, or it would lose the entry's tag."""
    root = make(tmp_path, CASES["patches"])
    before = renders(root)
    monkeypatch.chdir(root)
    result = rewrite_paths(["base/deploy.yaml"], POLICY, NAMING)
    assert not result.skipped and not result.errors
    assert sorted(f.source.display for f in result.changed) == ["base/deploy.yaml", "ha/add-init.yaml",
                                                               "ha/kustomization.yaml"]
    after = renders(root)
    init = after["ha"][("Deployment/w", "/spec/template/spec/initContainers/0/image")]
    assert init == f"{ACR}/docker.io/library/nginx:1.25.5"
    # the busybox sidecar is no base image of the file given: it stays, with its overlay tag
    assert after["ha"][("Deployment/w", "/spec/template/spec/containers/1/image")] == "docker.io/library/busybox:1.37"
    assert_renders_kept(before, after, refused_left={"docker.io/library/busybox:1.37"})


def test_json6902_patch_images_are_pod_images() -> None:
    """locate/patches.py: an operation adding a container, a container list or an image writes a
    pod image; other operations (labels, a `remove`, a mapping not at the top level) do not."""
    from manifests_rewriter.locate import locate

    text = textwrap.dedent("""\
        - op: add
          path: /spec/template/spec/initContainers/0
          value: {name: init, image: quay.io/argoproj/argocd:latest}
        - op: replace
          path: /spec/jobTemplate/spec/template/spec/containers/0/image
          value: nginx:1.27.1
        - op: add
          path: /spec/template/spec/containers
          value:
          - name: a
            image: redis:7
        - op: remove
          path: /spec/template/spec/containers/1/image
          value: busybox:1
        - op: add
          path: /metadata/labels
          value: {image: not-a-container}
        """)
    fields = [(f.source, f.path, f.value) for f in locate(text, filename="patch.yaml")]
    assert fields == [("pod", "/0/value/image", "quay.io/argoproj/argocd:latest"),
                      ("pod", "/1/value", "nginx:1.27.1"),
                      ("pod", "/2/value/0/image", "redis:7"),
                      ("hint", "/4/value/image", "not-a-container")]
