"""helmchart: charts read from directories and packaged .tgz files built here, values merged
as Helm merges them (expectations follow Helm's coalesce.go and dependencies.go)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
import yaml

from manifests_rewriter import helmchart
from manifests_rewriter.helmchart import ChartError, load_chart, load_chart_archive, resolve_values, version_satisfies


def write_chart(root: Path, name: str, version: str = "1.0.0", app_version: str | None = "2.0.0",
                values: dict | str | None = None, dependencies: list | None = None, api: str = "v2") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta: dict = {"apiVersion": api, "name": name, "version": version}
    if app_version is not None:
        meta["appVersion"] = app_version
    if dependencies is not None:
        meta["dependencies"] = dependencies
    (root / "Chart.yaml").write_text(yaml.safe_dump(meta))
    if values is not None:
        (root / "values.yaml").write_text(values if isinstance(values, str) else yaml.safe_dump(values))
    (root / "templates").mkdir(exist_ok=True)
    (root / "templates" / "deployment.yaml").write_text("image: {{ .Values.image.repository }}\n")
    return root


def tgz(members: dict[str, bytes | str], links: dict[str, str] | None = None) -> bytes:
    """A gzip-compressed tar with the given member names (no normalisation: tests need bad names)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            blob = data.encode() if isinstance(data, str) else data
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


def pack(chart_dir: Path, top: str | None = None) -> bytes:
    """Package a chart directory as `helm package` does: every file under <top>/."""
    top = top or chart_dir.name
    members = {}
    for p in sorted(chart_dir.rglob("*")):
        if p.is_file():
            members[f"{top}/{p.relative_to(chart_dir).as_posix()}"] = p.read_bytes()
    return tgz(members)


# ------------------------------------------------------------------------------------ loading
def test_directory_chart_metadata_values_and_dependencies(tmp_path):
    c = write_chart(tmp_path / "app", "app", "1.2.3", "v9.9.9", {"image": {"repository": "nginx", "tag": ""}},
                    [{"name": "redis", "version": "~17.1.0", "repository": "https://x", "alias": "cache",
                      "condition": "cache.enabled,redis.enabled", "tags": ["db"]}])
    chart = load_chart(c)
    assert (chart.name, chart.version, chart.app_version, chart.api_version) == ("app", "1.2.3", "v9.9.9", "v2")
    assert chart.values == {"image": {"repository": "nginx", "tag": ""}}
    (dep,) = chart.dependencies
    assert (dep.name, dep.alias, dep.key, dep.condition, dep.tags) == ("redis", "cache", "cache",
                                                                       "cache.enabled,redis.enabled", ["db"])


def test_packaged_chart_drops_the_first_path_element_whatever_it_is_called(tmp_path):
    c = write_chart(tmp_path / "src", "web", values={"image": {"tag": "1.27"}})
    chart = load_chart_archive(pack(c, top="anything-else"), "web-1.0.0.tgz")
    assert chart.name == "web" and chart.values["image"]["tag"] == "1.27"
    f = tmp_path / "web-1.0.0.tgz"
    f.write_bytes(pack(c))
    assert load_chart(f).values == chart.values


def test_numeric_app_version_and_non_string_keys_read_as_helm_does(tmp_path):
    c = tmp_path / "c"
    c.mkdir()
    (c / "Chart.yaml").write_text("apiVersion: v2\nname: c\nversion: 1.0.0\nappVersion: 1.10\n")
    (c / "values.yaml").write_text("ports:\n  80: http\nflags:\n  true: on\nmatch: =\n")
    chart = load_chart(c)
    assert chart.app_version == "1.1"  # YAML float, as Go's %v of the parsed number would also lose the 0
    assert chart.values == {"ports": {"80": "http"}, "flags": {"true": True}, "match": "="}


def test_apiversion_v1_chart_takes_dependencies_from_requirements_yaml(tmp_path):
    c = write_chart(tmp_path / "wrap", "wrap", api="v1", app_version=None, values={"redis-ha": {"image": {"tag": "8"}}})
    (c / "requirements.yaml").write_text(yaml.safe_dump({"dependencies": [{"name": "redis-ha", "version": "4.35.10"}]}))
    sub = write_chart(tmp_path / "redis-ha", "redis-ha", "4.35.10", values={"image": {"repository": "redis", "tag": "7"}})
    (c / "charts").mkdir()
    (c / "charts" / "redis-ha-4.35.10.tgz").write_bytes(pack(sub))
    r = resolve_values(load_chart(c))
    (s,) = list(r.walk())
    assert s.enabled and s.values["image"] == {"repository": "redis", "tag": "8"}


def test_subcharts_as_directories_and_archives_with_aliases(tmp_path):
    top = write_chart(tmp_path / "top", "top", values={"one": {"image": {"tag": "a"}}},
                      dependencies=[{"name": "lib", "version": "1.x", "alias": "one"},
                                    {"name": "lib", "version": "1.x", "alias": "two"},
                                    {"name": "db", "version": ">=2.0.0 <3.0.0"}])
    lib = write_chart(tmp_path / "lib", "lib", "1.4.0", values={"image": {"repository": "lib", "tag": "z"}})
    (top / "charts").mkdir()
    (top / "charts" / "lib-1.4.0.tgz").write_bytes(pack(lib))
    write_chart(top / "charts" / "db", "db", "2.5.0", values={"image": {"repository": "postgres", "tag": "16"}})
    write_chart(top / "charts" / "_skip", "skip")  # Helm ignores charts/_* and charts/.*
    r = resolve_values(load_chart(top))
    got = {s.path: s.values["image"] for s in r.walk()}
    assert got == {("one",): {"repository": "lib", "tag": "a"}, ("two",): {"repository": "lib", "tag": "z"},
                   ("db",): {"repository": "postgres", "tag": "16"}}
    assert r.values["one"]["image"]["tag"] == "a" and r.values["two"]["image"]["tag"] == "z"


def test_unlisted_subchart_is_kept_and_missing_or_incompatible_dependency_is_noted(tmp_path):
    top = write_chart(tmp_path / "top", "top", dependencies=[{"name": "db", "version": "^3.0.0"},
                                                             {"name": "gone", "version": "1.0.0"}])
    write_chart(top / "charts" / "db", "db", "2.5.0", values={"v": 1})  # 2.5.0 does not satisfy ^3.0.0
    write_chart(top / "charts" / "extra", "extra", values={"v": 2})
    chart = load_chart(top)
    r = resolve_values(chart)
    assert {s.key for s in r.walk()} == {"extra", "db"}  # db stays, unlisted (Helm keeps it by name)
    assert any("dependency db ^3.0.0 is not in charts/" in n for n in chart.notes)
    assert any("dependency gone 1.0.0 is not in charts/" in n for n in chart.notes)


# ---------------------------------------------------------------------------------- coalescing
def test_release_values_merge_deeply_and_null_deletes(tmp_path):
    c = write_chart(tmp_path / "c", "c", values={
        "image": {"registry": "docker.io", "repository": "nginx", "tag": "1.27", "digest": "", "extra": {"a": 1}},
        "keepnull": None, "list": [1, 2], "map": {"x": 1}})
    r = resolve_values(load_chart(c), {"image": {"tag": "1.27.1", "digest": None, "extra": {"b": 2}},
                                       "list": [3], "map": "scalar", "new": None})
    assert r.values["image"] == {"registry": "docker.io", "repository": "nginx", "tag": "1.27.1", "extra": {"a": 1, "b": 2}}
    assert "keepnull" not in r.values  # a null in chart defaults is dropped
    assert r.values["list"] == [3]  # lists replace
    assert r.values["map"] == "scalar"  # the release's scalar stays (Helm warns, keeps it)
    assert r.values["new"] is None  # a null for a key the chart does not have stays null


def test_map_in_defaults_is_not_replaced_by_a_release_scalar_nor_the_reverse(tmp_path):
    c = write_chart(tmp_path / "c", "c", values={"a": {"b": 1}, "s": "x"})
    r = resolve_values(load_chart(c), {"a": {"b": None}, "s": {"m": 1}})
    assert r.values["a"] == {} and r.values["s"] == {"m": 1}


def test_parent_section_for_subchart_and_null_deleting_a_subchart_default(tmp_path):
    top = write_chart(tmp_path / "top", "top", values={"sub": {"image": {"tag": "from-parent", "digest": None}}},
                      dependencies=[{"name": "sub", "version": "*"}])
    write_chart(top / "charts" / "sub", "sub", values={"image": {"repository": "r", "tag": "t", "digest": "sha256:" + "a" * 64}})
    digest = "sha256:" + "a" * 64
    # Helm quirk (coalesce.go): the parent's nulls for a subchart are cleaned when the release does
    # not write that section, and kept (so they delete the subchart default) when it does
    r = resolve_values(load_chart(top))
    assert r.values["sub"]["image"] == {"repository": "r", "tag": "from-parent", "digest": digest}
    r = resolve_values(load_chart(top), {"sub": {"replicas": 2}})
    assert r.values["sub"]["image"] == {"repository": "r", "tag": "from-parent"}
    r = resolve_values(load_chart(top), {"sub": {"image": {"repository": None}}})
    assert r.values["sub"]["image"] == {"tag": "from-parent"}


def test_globals_reach_subcharts_parent_global_wins(tmp_path):
    top = write_chart(tmp_path / "top", "top", values={"global": {"imageRegistry": "parent.example", "m": {"a": 1}}},
                      dependencies=[{"name": "sub", "version": "*"}])
    sub = write_chart(top / "charts" / "sub", "sub", values={"global": {"imageRegistry": None, "own": 1, "m": {"b": 2}}})
    write_chart(sub / "charts" / "deep", "deep", values={"global": {"deep": True}})
    r = resolve_values(load_chart(top), {"global": {"imageRegistry": "release.example"},
                                         "sub": {"global": {"imageRegistry": "ignored.example"}}})
    s = next(x for x in r.walk() if x.key == "sub")
    d = next(x for x in r.walk() if x.key == "deep")
    assert s.values["global"] == {"imageRegistry": "release.example", "own": 1, "m": {"a": 1, "b": 2}}
    assert d.values["global"]["imageRegistry"] == "release.example" and d.values["global"]["deep"] is True
    assert d.path == ("sub", "deep")


# ----------------------------------------------------------------------------- enabling
def test_condition_tags_and_order(tmp_path):
    top = write_chart(tmp_path / "top", "top", values={"a": {"enabled": False}, "tags": {"db": False, "web": True}},
                      dependencies=[{"name": "a", "version": "*", "condition": "a.enabled"},
                                    {"name": "b", "version": "*", "tags": ["db"]},
                                    {"name": "c", "version": "*", "tags": ["db", "web"]},
                                    {"name": "d", "version": "*", "tags": ["db"], "condition": "nope.enabled,d.on"}])
    for n in "abcd":
        write_chart(top / "charts" / n, n, values={"image": {"repository": n}, "on": True})
    r = resolve_values(load_chart(top))
    state = {s.key: (s.enabled, s.why) for s in r.walk()}
    assert state["a"] == (False, "condition a.enabled is false")
    assert state["b"] == (False, "tags db are false")
    assert state["c"][0] is True  # one true tag is enough
    assert state["d"] == (True, "condition d.on is true")  # condition wins over tags; first bool path decides
    assert "a" in r.values and "image" not in r.values["a"]  # a disabled subchart is not merged
    assert next(s for s in r.walk() if s.key == "a").values["image"] == {"repository": "a"}  # as if enabled


def test_release_values_enable_a_subchart_and_nested_condition_paths(tmp_path):
    top = write_chart(tmp_path / "top", "top", dependencies=[{"name": "mid", "version": "*", "condition": "mid.enabled"}],
                      values={"mid": {"enabled": False}})
    mid = write_chart(top / "charts" / "mid", "mid", dependencies=[{"name": "leaf", "version": "*", "condition": "leaf.enabled"}],
                      values={"leaf": {"enabled": True}})
    write_chart(mid / "charts" / "leaf", "leaf", values={"image": {"repository": "leaf"}})
    r = resolve_values(load_chart(top))
    assert [s.enabled for s in r.walk()] == [False, False]
    r = resolve_values(load_chart(top), {"mid": {"enabled": True, "leaf": {"enabled": False}}})
    assert [(s.path, s.enabled) for s in r.walk()] == [(("mid",), True), (("mid", "leaf"), False)]


@pytest.mark.parametrize("version,constraint,ok", [
    ("1.2.3", "", True), ("1.2.3", "*", True), ("1.2.3", "1.2.3", True), ("1.2.4", "1.2.3", False),
    ("1.9.0", "1.x", True), ("2.0.0", "1.x", False), ("2.31.10", "2.x.x", True), ("0.12.8", "0.12.*", True),
    ("1.4.0", "~1.4.0", True), ("1.5.0", "~1.4.0", False), ("1.9.9", "^1.2", True), ("2.0.0", "^1.2", False),
    ("0.2.9", "^0.2.3", True), ("0.3.0", "^0.2.3", False), ("3.0.0", ">=2.0.0 <3.0.0", False),
    ("2.5.0", ">=2.0.0, <3.0.0", True), ("1.5.0", "1.0.0 - 2.0.0", True), ("2.0.1", "1.0.0 - 2.0.0", False),
    ("5.0.0", "<2.0.0 || >=5", True), ("1.0.0-rc.1", ">=0.9.0", False), ("1.0.0-rc.1", ">=1.0.0-rc.0", True),
    ("v4.38.0", "4.38.0", True),
])
def test_version_ranges(version, constraint, ok):
    assert version_satisfies(version, constraint) is ok


# --------------------------------------------------------------------------------- safety
def test_archive_member_outside_the_chart_is_refused():
    for name in ("c/../../etc/passwd", "c/../x"):
        with pytest.raises(ChartError, match="outside the chart"):
            load_chart_archive(tgz({"c/Chart.yaml": "name: c\nversion: 1\n", name: "x"}), "evil.tgz")
    with pytest.raises(ChartError, match="absolute path"):
        load_chart_archive(tgz({"c/Chart.yaml": "name: c\nversion: 1\n", "c//etc/passwd": "x"}), "evil.tgz")
    with pytest.raises(ChartError, match="not inside the chart's directory"):
        load_chart_archive(tgz({"Chart.yaml": "name: c\nversion: 1\n"}), "flat.tgz")


def test_archive_links_are_skipped_never_followed():
    chart = load_chart_archive(tgz({"c/Chart.yaml": "name: c\nversion: 1\n", "c/values.yaml": "a: 1\n"},
                                   links={"c/charts/evil.tgz": "/etc/passwd", "c/values2.yaml": "../../x"}), "l.tgz")
    assert chart.values == {"a": 1} and chart.subcharts == []
    assert sum("not a regular file" in n for n in chart.notes) == 2


def test_archive_size_limits(monkeypatch):
    monkeypatch.setattr(helmchart, "MAX_FILE_BYTES", 100)
    with pytest.raises(ChartError, match="file limit"):
        load_chart_archive(tgz({"c/Chart.yaml": "name: c\nversion: 1\n", "c/values.yaml": "a: " + "x" * 200}), "big.tgz")
    monkeypatch.setattr(helmchart, "MAX_FILE_BYTES", 1000)
    monkeypatch.setattr(helmchart, "MAX_CHART_BYTES", 150)
    with pytest.raises(ChartError, match="larger than"):
        load_chart_archive(tgz({"c/Chart.yaml": "name: c\nversion: 1\n", "c/a.txt": "x" * 100, "c/b.txt": "y" * 100}), "b.tgz")


def test_nested_archives_share_the_nesting_limit(monkeypatch, tmp_path):
    monkeypatch.setattr(helmchart, "MAX_NESTING", 2)
    blob = tgz({"c3/Chart.yaml": "name: c3\nversion: 1\n"})
    for n in (2, 1, 0):
        blob = tgz({f"c{n}/Chart.yaml": f"name: c{n}\nversion: 1\n", f"c{n}/charts/c{n + 1}.tgz": blob})
    with pytest.raises(ChartError, match="nested more than 2"):
        load_chart_archive(blob, "deep.tgz")


def test_not_an_archive_and_broken_yaml_are_one_line_errors(tmp_path):
    with pytest.raises(ChartError, match="not a packaged chart"):
        load_chart_archive(b"apiVersion: v2\n", "x.tgz")
    with pytest.raises(ChartError, match="values.yaml: not valid YAML"):
        load_chart_archive(tgz({"c/Chart.yaml": "name: c\nversion: 1\n", "c/values.yaml": "a: [\n"}), "y.tgz")
    with pytest.raises(ChartError, match="Chart.yaml is missing"):
        load_chart(tmp_path)
    with pytest.raises(ChartError, match="cannot read the chart"):
        load_chart(tmp_path / "nope.tgz")
    for e in ("a: [\n", "- 1\n"):
        c = write_chart(tmp_path / f"bad{len(e)}", "bad", values=e)
        with pytest.raises(ChartError) as info:
            load_chart(c)
        assert "\n" not in str(info.value) and "values.yaml" in str(info.value)


def test_directory_links_out_of_the_chart_are_skipped(tmp_path):
    outside = tmp_path / "outside"
    write_chart(outside / "sub", "sub", values={"secret": 1})
    (outside / "values.yaml").write_text("stolen: 1\n")
    c = write_chart(tmp_path / "c", "c")
    os.symlink(outside / "values.yaml", c / "values.yaml")
    (c / "charts").mkdir()
    os.symlink(outside / "sub", c / "charts" / "sub")
    chart = load_chart(c)
    assert chart.values == {} and chart.subcharts == []
    assert sum("outside the chart" in n for n in chart.notes) == 2


def test_values_with_a_tab_after_a_plain_scalar_read_as_go_yaml_does(tmp_path):
    c = write_chart(tmp_path / "c", "c", values="image:\t\n  repository: nginx\t\n  tag: \"1.27\"\t\n")
    assert load_chart(c).values == {"image": {"repository": "nginx", "tag": "1.27"}}
