"""Helm charts read offline: a chart directory or a packaged .tgz, its subcharts, and the
values its templates would see, merged as Helm merges them (no helm binary needed).

    chart = load_chart("charts/kube-prometheus-stack")          # or "x-1.2.3.tgz"
    top = resolve_values(chart, release_values)                   # a release's values over defaults
    top.values                     # the chart's .Values (subchart sections coalesced too)
    for sub in top.walk():         # every subchart, with its own .Values and whether it renders
        sub.path, sub.enabled, sub.values

What is modelled, from Helm's own code (pkg/chart/v2/loader, pkg/chart/common/util/coalesce.go,
pkg/chart/v2/util/dependencies.go):
- loading: Chart.yaml (apiVersion v1 charts take dependencies from requirements.yaml),
  values.yaml, charts/<dir> and charts/<name>.tgz (entries starting with "_" or "." ignored);
  an archive's first path element is dropped whatever it is called;
- dependencies: a charts/ entry listed in Chart.yaml is kept when its version satisfies the
  listed range, renamed to its alias; an entry not listed is kept under its own name; a listed
  dependency missing from charts/ is reported in `Chart.notes`;
- enabling: `tags` first, then `condition` (comma-separated paths, the first one that is a bool
  decides), both read from the coalesced values; a disabled subchart is not merged;
- coalescing: the release's values over the chart's defaults, maps merged deeply, a null in the
  release's values deletes the key (a null inside a parent's section for a subchart deletes the
  subchart's default), nulls in chart defaults are dropped, a scalar never replaces a map nor
  a map a scalar (the release wins, as in Helm); each subchart gets the parent's section under
  its name/alias, with the parent's `global` merged over its own.
Not modelled: .helmignore, import-values/exports, library-chart templates, `--set` string parsing.

Safety: archives are read in memory with a size budget (whole chart and each file, as Helm's
MaxDecompressedChartSize/MaxDecompressedFileSize), only regular files are read (links and devices
are skipped with a note), absolute or parent-relative member paths are refused; directories are
walked without leaving the chart directory (a link pointing outside is skipped with a note).
"""

from __future__ import annotations

import copy
import gzip
import io
import os
import posixpath
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import AcrMirrorError
from .yamlload import GoLikeLoader

MAX_CHART_BYTES = 100 * 1024 * 1024  # Helm: MaxDecompressedChartSize
MAX_FILE_BYTES = 5 * 1024 * 1024  # Helm: MaxDecompressedFileSize
MAX_ARCHIVE_BYTES = 20 * 1024 * 1024  # a packaged chart on disk (compressed)
MAX_NESTING = 10  # charts/ inside charts/ ...


class ChartError(AcrMirrorError, ValueError):
    """A chart that cannot be read; the message names it and says why."""


@dataclass
class Dependency:
    name: str
    version: str = ""
    repository: str = ""
    alias: str = ""
    condition: str = ""
    tags: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The values key (and chart name) the subchart takes in its parent."""
        return self.alias or self.name


@dataclass
class Chart:
    name: str
    version: str
    app_version: str
    api_version: str
    values: dict[str, Any]
    dependencies: list[Dependency]
    subcharts: list[Chart]
    source: str  # where it was read, for messages: a path, "x.tgz", "x.tgz:charts/y.tgz"
    notes: list[str] = field(default_factory=list)


@dataclass
class Resolved:
    """A chart in a release: its path of keys from the top, its .Values, and whether it renders."""

    chart: Chart
    key: str  # "" for the top chart, else the name/alias it has in its parent
    path: tuple[str, ...]  # keys from the top chart's values to this chart's section
    values: dict[str, Any]
    enabled: bool
    why: str  # how `enabled` was decided
    subcharts: list[Resolved] = field(default_factory=list)

    def walk(self) -> Iterator[Resolved]:
        """Every subchart below this one, depth first (not including self)."""
        for s in self.subcharts:
            yield s
            yield from s.walk()


# --------------------------------------------------------------------------------- loading
def load_chart(path: str | os.PathLike[str]) -> Chart:
    """A chart from a directory or a packaged .tgz."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _load_directory(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ChartError(f"{path}: cannot read the chart ({e.strerror or e})") from None
    if size > MAX_ARCHIVE_BYTES:
        raise ChartError(f"{path}: packaged chart is {size} bytes, over the {MAX_ARCHIVE_BYTES}-byte limit")
    with open(path, "rb") as f:
        data = f.read()
    return load_chart_archive(data, path)


def load_chart_archive(data: bytes, source: str, _depth: int = 0) -> Chart:
    """A chart from the bytes of a packaged chart (gzip-compressed tar)."""
    files, notes = _archive_files(data, source)
    return _from_files(files, source, notes, _depth)


def _archive_files(data: bytes, source: str) -> tuple[dict[str, bytes], list[str]]:
    files: dict[str, bytes] = {}
    notes: list[str] = []
    budget = MAX_CHART_BYTES
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar:
                budget -= _read_member(tar, m, source, files, notes, budget)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, OSError, zlib.error) as e:
        raise ChartError(f"{source}: not a packaged chart, or a damaged one (gzip-compressed tar): {e}") from None
    if not files:
        raise ChartError(f"{source}: no files in chart archive")
    return files, notes


def _read_member(tar: tarfile.TarFile, m: tarfile.TarInfo, source: str, files: dict[str, bytes],
                 notes: list[str], budget: int) -> int:
    """Read one archive member into files (Helm's LoadArchiveFiles rules); returns bytes used."""
    name = m.name.replace("\\", "/")
    parts = name.split("/")
    if m.isdir() or m.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
        return 0
    if parts[0] == "Chart.yaml":
        raise ChartError(f"{source}: Chart.yaml is not inside the chart's directory")
    rel = "/".join(parts[1:])
    if rel.startswith("/") or re.match(r"^[a-zA-Z]:/", rel):
        raise ChartError(f"{source}: archive member {name!r} has an absolute path")
    rel = posixpath.normpath(rel) if rel else "."
    if rel in (".", "..") or rel.startswith("../"):
        raise ChartError(f"{source}: archive member {name!r} lies outside the chart")
    if not m.isreg():
        notes.append(f"{source}: skipped {name} (not a regular file)")
        return 0
    if m.size > MAX_FILE_BYTES:
        raise ChartError(f"{source}: {name} is {m.size} bytes, over the {MAX_FILE_BYTES}-byte file limit")
    if m.size > budget:
        raise ChartError(f"{source}: chart is larger than {MAX_CHART_BYTES} bytes uncompressed")
    f = tar.extractfile(m)
    blob = f.read(m.size + 1) if f else b""
    if len(blob) != m.size:
        raise ChartError(f"{source}: {name} is truncated or larger than its header says")
    files[rel] = blob.removeprefix(b"\xef\xbb\xbf")
    return len(blob)


def _load_directory(root: str) -> Chart:
    """Chart.yaml, values.yaml, requirements.yaml and charts/ of a chart directory (templates are
    not needed to know values); nothing outside the directory is read."""
    files: dict[str, bytes] = {}
    notes: list[str] = []
    real_root = os.path.realpath(root)
    budget = MAX_CHART_BYTES

    def read(rel: str) -> None:
        nonlocal budget
        full = os.path.join(root, rel)
        real = os.path.realpath(full)
        if real != real_root and not real.startswith(real_root + os.sep):
            notes.append(f"{root}: skipped {rel} (a link pointing outside the chart)")
            return
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            return
        if st.st_size > MAX_FILE_BYTES:
            raise ChartError(f"{full}: {st.st_size} bytes, over the {MAX_FILE_BYTES}-byte file limit")
        if st.st_size > budget:
            raise ChartError(f"{root}: chart is larger than {MAX_CHART_BYTES} bytes")
        with open(real, "rb") as f:
            blob = f.read(MAX_FILE_BYTES + 1)
        budget -= len(blob)
        files[rel] = blob.removeprefix(b"\xef\xbb\xbf")

    for name in ("Chart.yaml", "values.yaml", "requirements.yaml"):
        if os.path.lexists(os.path.join(root, name)):
            read(name)
    charts_dir = os.path.join(root, "charts")
    if os.path.isdir(charts_dir) and _inside(charts_dir, real_root):
        for entry in sorted(os.listdir(charts_dir)):
            full = os.path.join(charts_dir, entry)
            if not _inside(full, real_root):
                notes.append(f"{root}: skipped charts/{entry} (a link pointing outside the chart)")
            elif os.path.isdir(full):
                files[f"charts/{entry}/"] = b""  # marker: a subchart directory, read on its own
            elif entry.endswith(".tgz"):
                read(f"charts/{entry}")
    return _from_files(files, root, notes, 0, directory=root)


def _inside(path: str, real_root: str) -> bool:
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root + os.sep)


def _from_files(files: dict[str, bytes], source: str, notes: list[str], depth: int,
                directory: str | None = None) -> Chart:
    if depth > MAX_NESTING:
        raise ChartError(f"{source}: subcharts nested more than {MAX_NESTING} deep")
    if "Chart.yaml" not in files:
        raise ChartError(f"{source}: Chart.yaml is missing (not a Helm chart)")
    meta = _yaml_map(files["Chart.yaml"], f"{source}: Chart.yaml")
    api = str(meta.get("apiVersion") or "v1")
    deps_raw = meta.get("dependencies")
    if "requirements.yaml" in files:  # Helm 2 style (apiVersion v1); Helm reads it for v2 too, with a warning
        req = _yaml_map(files["requirements.yaml"], f"{source}: requirements.yaml")
        deps_raw = req.get("dependencies", deps_raw)
    values = _values(files.get("values.yaml", b""), f"{source}: values.yaml")
    name = meta.get("name")
    if not name:
        raise ChartError(f"{source}: Chart.yaml has no name")
    chart = Chart(name=str(name), version=_str(meta.get("version")), app_version=_str(meta.get("appVersion")),
                  api_version=api, values=values, dependencies=_dependencies(deps_raw, source),
                  subcharts=[], source=source, notes=notes)
    # charts/: a directory per subchart, or a .tgz; "_" and "." entries are ignored as Helm does
    subnames = sorted({f[len("charts/"):].split("/", 1)[0] for f in files if f.startswith("charts/")})
    for n in subnames:
        if n[:1] in ("_", "."):
            continue
        where = f"{source}:charts/{n}" if directory is None else os.path.join(directory, "charts", n)
        if n.endswith(".tgz") and f"charts/{n}" in files:
            chart.subcharts.append(load_chart_archive(files[f"charts/{n}"], where, depth + 1))
        elif directory is not None and f"charts/{n}/" in files:
            sub = _load_directory(os.path.join(directory, "charts", n))
            chart.subcharts.append(sub)
            chart.notes.extend(sub.notes)
        elif directory is None:
            prefix = f"charts/{n}/"
            sub_files = {f[len(prefix):]: b for f, b in files.items() if f.startswith(prefix)}
            if sub_files:
                chart.subcharts.append(_from_files(sub_files, where, [], depth + 1))
    for s in chart.subcharts:
        if directory is None:
            chart.notes.extend(s.notes)
    return chart


def _yaml_map(blob: bytes, where: str) -> dict[str, Any]:
    try:
        data = yaml.load(blob.decode("utf-8"), Loader=GoLikeLoader)  # noqa: S506 - SafeLoader subclass
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ChartError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ChartError(f"{where}: expected a mapping")
    return data


def _values(blob: bytes, where: str) -> dict[str, Any]:
    """values.yaml as Helm sees it: map keys are strings (sigs.k8s.io/yaml goes through JSON)."""
    return _string_keys(_yaml_map(blob, where))


def _string_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {_str(k): _string_keys(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_string_keys(v) for v in node]
    return node


def _str(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    return str(x)


def _dependencies(raw: Any, source: str) -> list[Dependency]:
    out: list[Dependency] = []
    if raw is None:
        return out
    if not isinstance(raw, list):
        raise ChartError(f"{source}: dependencies must be a list")
    for d in raw:
        if not isinstance(d, dict) or not d.get("name"):
            raise ChartError(f"{source}: a dependency without a name")
        tags = d.get("tags") or []
        out.append(Dependency(name=str(d["name"]), version=_str(d.get("version")), repository=_str(d.get("repository")),
                              alias=_str(d.get("alias")), condition=_str(d.get("condition")),
                              tags=[str(t) for t in tags] if isinstance(tags, list) else []))
    return out


# ------------------------------------------------------------------------------ versions
_VER = re.compile(r"^v?(\d+)(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def _parse(v: str) -> tuple[tuple[int, int, int], str, int] | None:
    """(major, minor, patch), prerelease, number of parts given (wildcards count as absent)."""
    m = _VER.match(v.strip())
    if not m:
        return None
    nums, given = [], 0
    for g in m.group(1, 2, 3):
        if g is None or g in "xX*":
            nums.append(0)
        else:
            nums.append(int(g))
            given += 1
    return (nums[0], nums[1], nums[2]), m.group(4) or "", given


def _cmp(a: tuple[tuple[int, int, int], str], b: tuple[tuple[int, int, int], str]) -> int:
    if a[0] != b[0]:
        return -1 if a[0] < b[0] else 1
    if a[1] == b[1]:
        return 0
    if not a[1]:
        return 1
    if not b[1]:
        return -1
    return -1 if _pre_key(a[1]) < _pre_key(b[1]) else (1 if _pre_key(a[1]) > _pre_key(b[1]) else 0)


def _pre_key(p: str) -> list[tuple[int, int | str]]:
    return [(0, int(x)) if x.isdigit() else (1, x) for x in p.split(".")]


def version_satisfies(version: str, constraint: str) -> bool:
    """Masterminds/semver constraints as Helm uses them for dependencies: `||` alternatives of
    comma/space separated comparisons (=, !=, >, <, >=, <=, ~, ^, x wildcards, `a - b`).
    An unparsable constraint or version is taken as satisfied (Helm would report it elsewhere)."""
    constraint = constraint.strip()
    ver = _parse(version)
    if not constraint or constraint == "*" or ver is None:
        return True
    v = (ver[0], ver[1])
    for alt in constraint.split("||"):
        alt = re.sub(r"\s*-\s+", " - ", alt.strip())
        alt = re.sub(r"(>=|<=|!=|=|>|<|~|\^)\s+", r"\1", alt)
        terms = [t for t in re.split(r"[\s,]+", alt) if t]
        ok, i = True, 0
        while i < len(terms):
            t = terms[i]
            if i + 2 < len(terms) and terms[i + 1] == "-":
                lo, hi = _parse(t), _parse(terms[i + 2])
                if lo is None or hi is None:
                    return True
                ok = ok and _cmp(v, (lo[0], lo[1])) >= 0 and _upper_ok(v, hi)
                i += 3
                continue
            r = _term(v, t)
            if r is None:
                return True
            ok = ok and r
            i += 1
        if ok and (not v[1] or any("-" in t for t in terms)):
            return True  # a prerelease satisfies only a range that mentions prereleases
    return False


def _upper_ok(v: tuple[tuple[int, int, int], str], hi: tuple[tuple[int, int, int], str, int]) -> bool:
    if hi[2] == 3:
        return _cmp(v, (hi[0], hi[1])) <= 0
    bump = (hi[0][0] + 1, 0, 0) if hi[2] <= 1 else (hi[0][0], hi[0][1] + 1, 0)
    return _cmp(v, (bump, "")) < 0


def _term(v: tuple[tuple[int, int, int], str], t: str) -> bool | None:
    m = re.match(r"^(>=|<=|!=|=|>|<|~>|~|\^)?(.*)$", t)
    op, rest = (m.group(1) or "="), m.group(2)  # type: ignore[union-attr]
    p = _parse(rest)
    if p is None:
        return None
    base, pre, given = p
    b = (base, pre)
    if op in ("~", "~>"):
        hi = (base[0], base[1] + 1, 0) if given >= 2 else (base[0] + 1, 0, 0)
        return _cmp(v, b) >= 0 and _cmp(v, (hi, "")) < 0
    if op == "^":
        if base[0] > 0 or given == 1:
            hi = (base[0] + 1, 0, 0)
        elif base[1] > 0 or given == 2:
            hi = (0, base[1] + 1, 0)
        else:
            hi = (0, 0, base[2] + 1)
        return _cmp(v, b) >= 0 and _cmp(v, (hi, "")) < 0
    if given < 3 and op in ("=", "!="):  # 1.2 or 1.2.x means the whole range
        hi = (base[0] + 1, 0, 0) if given <= 1 else (base[0], base[1] + 1, 0)
        inside = _cmp(v, b) >= 0 and _cmp(v, (hi, "")) < 0
        return inside if op == "=" else not inside
    c = _cmp(v, b)
    return {"=": c == 0, "!=": c != 0, ">": c > 0, "<": c < 0, ">=": c >= 0, "<=": c <= 0}[op]


# ----------------------------------------------------------------------------- coalescing
def coalesce_tables(dst: dict[str, Any] | None, src: dict[str, Any] | None, merge: bool = False) -> Any:
    """Helm's coalesceTablesFullKey: dst (higher priority) over src, recursively; a null in dst
    deletes what src had unless merging (merge keeps nulls for a later coalesce)."""
    if src is None:
        return dst
    if dst is None:
        return src
    src_non_null = {k for k, v in src.items() if v is not None}
    for k, v in dst.items():
        if v is None:
            src[k] = None
    for k, v in src.items():
        if k in dst and not merge and dst[k] is None and k in src_non_null:
            del dst[k]
        elif k not in dst:
            dst[k] = v
        elif isinstance(v, dict) and isinstance(dst[k], dict):
            coalesce_tables(dst[k], v, merge)
        # a non-table value never replaces a table, and the higher-priority scalar stays
    return dst


def _clean_nulls(m: dict[str, Any]) -> None:
    for k in list(m):
        if m[k] is None:
            del m[k]
        elif isinstance(m[k], dict):
            _clean_nulls(m[k])


@dataclass
class _Node:
    """A chart as placed in a release: the chart, its key, and its enabled subcharts."""

    chart: Chart
    key: str
    children: list[_Node]
    dropped: list[_Node] = field(default_factory=list)  # disabled subcharts
    why: str = "enabled"  # how enabled/disabled was decided


def _coalesce_values(node: _Node, v: dict[str, Any]) -> None:
    dep_keys = {c.key for c in node.children}
    for key, val in copy.deepcopy(node.chart.values).items():
        if key in v:
            value = v[key]
            if value is None:
                del v[key]
            elif isinstance(value, dict) and isinstance(val, dict):
                merge = key in dep_keys  # a subchart's section keeps its nulls for the subchart
                if not merge:
                    _clean_nulls(val)
                coalesce_tables(value, val, merge)
        else:
            if val is None:
                continue
            if isinstance(val, dict):
                _clean_nulls(val)
            v[key] = val


def _coalesce_globals(dest: dict[str, Any], src: dict[str, Any]) -> None:
    dg = dest.get("global", {})
    sg = src.get("global", {})
    if not isinstance(dg, dict) or not isinstance(sg, dict):
        return
    for key, val in sg.items():
        if isinstance(val, dict):
            vv = dict(val)
            if key not in dg:
                dg[key] = vv
            elif isinstance(dg[key], dict):
                coalesce_tables(vv, dg[key], True)
                dg[key] = vv
        elif key in dg and isinstance(dg[key], dict):
            pass  # a table is not replaced by a scalar
        else:
            dg[key] = val
    dest["global"] = dg


def _coalesce(node: _Node, dest: dict[str, Any]) -> dict[str, Any]:
    _coalesce_values(node, dest)
    for child in node.children:
        if child.key not in dest or dest[child.key] is None:
            dest[child.key] = {}
        elif not isinstance(dest[child.key], dict):
            raise ChartError(f"{node.chart.source}: values for subchart {child.key!r} must be a map, "
                             f"not {type(dest[child.key]).__name__}")
        _coalesce_globals(dest[child.key], dest)
        _coalesce(child, dest[child.key])
    return dest


def _path_value(tree: Any, path: str) -> Any:
    node = tree
    for k in path.split("."):
        if not isinstance(node, dict) or k not in node:
            return _MISSING
        node = node[k]
    return node


_MISSING = object()


def _place(chart: Chart, key: str) -> tuple[_Node, list[str]]:
    """Match charts/ entries to dependencies (version range, alias) as Helm does."""
    notes: list[str] = []
    children: list[_Node] = []
    listed = chart.dependencies
    for sub in chart.subcharts:  # present but not listed: kept under its own name
        if not any(d.name == sub.name and version_satisfies(sub.version, d.version) for d in listed):
            children.append(_place(sub, sub.name)[0])
    for d in listed:
        found = next((s for s in chart.subcharts if s.name == d.name and version_satisfies(s.version, d.version)), None)
        if found is None:
            notes.append(f"{chart.source}: dependency {d.name} {d.version} is not in charts/ "
                         "(run `helm dependency build`); its images are unknown")
            continue
        child, sub_notes = _place(found, d.key)
        notes.extend(sub_notes)
        children.append(child)
    return _Node(chart, key, children), notes


def _dep_for(node: _Node, child: _Node) -> Dependency | None:
    return next((d for d in node.chart.dependencies if d.key == child.key), None)


def _enable(node: _Node, top: dict[str, Any], prefix: str, vals: dict[str, Any]) -> None:
    """Drop disabled subcharts: tags, then the first condition path holding a bool."""
    raw_tags = vals.get("tags")
    tags: dict[str, Any] = raw_tags if isinstance(raw_tags, dict) else {}
    keep: list[_Node] = []
    for child in node.children:
        dep = _dep_for(node, child)
        enabled, why = True, "not listed in dependencies" if dep is None else "enabled by default"
        if dep is not None:
            seen = [bool(tags[t]) for t in dep.tags if isinstance(tags.get(t), bool)]
            if seen and not any(seen):
                enabled, why = False, "tags " + ",".join(dep.tags) + " are false"
            elif any(seen):
                why = "a tag is true"
            for cond in (c.strip() for c in dep.condition.split(",")):
                if not cond:
                    continue
                v = _path_value(top, prefix + cond)
                if isinstance(v, bool):
                    enabled, why = v, f"condition {prefix + cond} is {str(v).lower()}"
                    break
        child.why = why
        (keep if enabled else node.dropped).append(child)
    node.children = keep
    for child in node.children:
        _enable(child, top, prefix + child.key + ".", vals)


def resolve_values(chart: Chart, release_values: dict[str, Any] | None = None) -> Resolved:
    """The values every chart of a release sees: release_values over the chart defaults,
    subcharts enabled or dropped as Helm decides. Notes about missing dependencies are
    appended to chart.notes."""
    if release_values is not None and not isinstance(release_values, dict):
        raise ChartError(f"{chart.source}: release values must be a map")
    node, notes = _place(chart, "")
    for n in notes:
        if n not in chart.notes:
            chart.notes.append(n)
    user = _string_keys(copy.deepcopy(release_values or {}))
    # enabling is decided on values coalesced with every subchart present (Helm does the same)
    everything = _coalesce(node, copy.deepcopy(user))
    _enable(node, everything, "", everything)
    final = _coalesce(node, copy.deepcopy(user))
    node.why = "top chart"
    return _resolved(node, final, (), True)


def _resolved(node: _Node, values: dict[str, Any], path: tuple[str, ...], enabled: bool) -> Resolved:
    r = Resolved(node.chart, node.key, path, values, enabled, node.why)
    for child in node.children:
        r.subcharts.append(_resolved(child, values[child.key], path + (child.key,), enabled))
    for child in node.dropped:
        # what it would see if it were enabled: its section of the parent over its own defaults
        section = values.get(child.key)
        section = copy.deepcopy(section) if isinstance(section, dict) else {}
        _coalesce_globals(section, values)
        _enable(child, section, "", section)
        r.subcharts.append(_resolved(child, _coalesce(child, section), path + (child.key,), False))
    return r
