"""Chart defaults: the images a Helm release runs that its own values do not set.

A release that overrides nothing still runs its chart's default images, and the policy will
refuse them. The locators record every release (locate.release: Flux HelmRelease, Argo CD
Application/ApplicationSet, Helmfile, Kustomize helmCharts, k3s HelmChart, and a values file
next to a Chart.yaml); the chart pass here:

1. finds the chart: a `ChartSource` gives a local path (a chart directory or a .tgz).
   `LocalCharts` (offline: the hook, air-gapped runs) looks in the scanned tree (paths relative to
   the declaring file; an Argo CD `path:` from any parent directory, the repository root being one
   of them) and in cache directories (`--chart-dir`: `<name>-<version>.tgz`, `<name>-<version>/`,
   `<name>/`; Helm's own cache layout). acr-mirror adds a source that downloads from HTTP Helm
   repositories and OCI registries into the cache (mirror.charts);
2. merges the release's values (inline values, `valuesFrom` ConfigMaps/Secrets found in the
   scanned files, value files) over the chart's defaults and its subcharts' (helmchart);
3. locates the images of the merged values with the Helm locator itself (same rules as any values
   file), fills an empty tag with the chart's appVersion (`v`-prefixed when its templates write
   `v` + .Chart.AppVersion), and keeps the images a default install runs (not under a section
   whose `enabled` is false, not in a disabled subchart);
4. reports, located at the release, every such image the release's values do not write and the
   policy refuses (a Finding of source "helm"); an image the values do write gets the merged
   reference (a tag the chart supplies, a registry it defaults);
5. for `rewrite`, plans the overrides: the values a rewrite of the merged values would change,
   edited in place where the release writes them, inserted as new keys (the file's own
   indentation) where it does not (`release_edits`).

A chart that cannot be found or read is a notice naming the release, the chart and why.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from . import helmchart
from .files import FileError
from .helmchart import ChartError, coalesce_tables, version_satisfies
from .locate import ImageField, YamlError, compose_documents, locate
from .locate.release import CHART_VALUES, ChartRef, MapSlot, Release, ValuesPath, ValuesSource
from .model import Finding
from .policy import Policy
from .reference import ImageRef, ReferenceError, parse
from .yamlload import GoLikeLoader

__all__ = ["ChartError", "ChartImage", "ChartSource", "ChartView", "Charts", "LocalCharts", "chart_pass",
           "release_edits"]

MAX_TEMPLATE_BYTES = 8 * 1024 * 1024  # templates read to tell a `v`-prefixed appVersion tag
_V_PREFIX = re.compile(r'"v%s"\s*\(?\s*\.Chart\.AppVersion|"v"\s*\(?\s*\.Chart\.AppVersion|'
                       r'\bv\{\{-?\s*\.Chart\.AppVersion')


class ChartSource(Protocol):
    """Where charts come from: `find` gives a local chart directory or packaged .tgz for a
    reference, or raises ChartError saying why not (one line, naming the chart)."""

    def find(self, ref: ChartRef, release: Release) -> str: ...


def root_dirs(roots: Iterable[str]) -> list[str]:
    """The scanned paths as directories (a file stands for its directory), absolute."""
    return [os.path.abspath(r if os.path.isdir(r) else os.path.dirname(r) or ".") for r in roots]


def _semver_key(version: str) -> tuple[Any, ...]:
    parsed = helmchart._parse(version)
    if parsed is None:
        return ((-1, -1, -1), "")
    return parsed[0], (1,) if not parsed[1] else (0, helmchart._pre_key(parsed[1]))


def newest(versions: Iterable[str], wanted: str) -> str | None:
    """The newest version satisfying `wanted` (a version or a range; "" = any release version)."""
    wanted = wanted.strip()
    candidates = [v for v in versions if (v == wanted or (version_satisfies(v, wanted) if wanted else
                                                          "-" not in v.lstrip("v")))]
    return max(candidates, key=_semver_key) if candidates else None


class LocalCharts:
    """Charts on this machine: in the scanned tree, and in cache directories (`--chart-dir`).
    Offline by construction (the hook and air-gapped runs use this alone)."""

    def __init__(self, cache_dirs: Iterable[str] = (), roots: Iterable[str] = ()) -> None:
        self.cache_dirs = [d for d in cache_dirs if d]
        self.roots = root_dirs(roots)

    def find(self, ref: ChartRef, release: Release) -> str:
        if ref.path:
            for candidate in self._paths(ref, release):
                if os.path.isfile(os.path.join(candidate, "Chart.yaml")) or \
                        candidate.endswith(".tgz") and os.path.isfile(candidate):
                    return candidate
            if os.path.basename(ref.path).endswith(".tgz"):
                found = self._cached_file(os.path.basename(ref.path))
                if found:
                    return found
            raise ChartError(f"{ref.describe()}: no chart there in the scanned tree"
                             + (" or the chart directories" if self.cache_dirs else " (give --chart-dir for others)"))
        found = self.cached(ref)
        if found is None:
            where = ", ".join(self.cache_dirs) if self.cache_dirs else "no --chart-dir given"
            raise ChartError(f"{ref.describe()}: not in the chart directories ({where}); offline, so not downloaded")
        return found

    def _paths(self, ref: ChartRef, release: Release) -> Iterator[str]:
        path = ref.path
        if os.path.isabs(path):
            yield path
            return
        base = os.path.abspath(ref.base or ".")
        yield os.path.normpath(os.path.join(base, path))
        if release.kind in ("Application", "ApplicationSet", "HelmRelease") and not path.startswith(("./", "../")) \
                or path.startswith("./") and release.kind == "HelmRelease":
            # Argo CD `path:` and a Flux GitRepository chart path are relative to the repository
            # root: any parent directory of the file, up to the scanned path it is in
            current = base
            while current not in self.roots and any(_under(current, r) for r in self.roots):
                parent = os.path.dirname(current)
                if parent == current:
                    break
                current = parent
                yield os.path.normpath(os.path.join(current, path))

    def _cached_file(self, name: str) -> str | None:
        for directory in self.cache_dirs:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate):
                return candidate
        return None

    def cached(self, ref: ChartRef) -> str | None:
        """A cached copy of a repository chart: `<name>-<version>.tgz`, `<name>-<version>/`, or
        `<name>/` whose Chart.yaml version matches (the newest matching a range)."""
        name = ref.name or ref.repo.rstrip("/").rsplit("/", 1)[-1]
        found: dict[str, str] = {}
        for directory in self.cache_dirs:
            try:
                entries = sorted(os.listdir(directory))
            except OSError:
                continue
            for entry in entries:
                full = os.path.join(directory, entry)
                if entry.startswith(name + "-"):
                    version = entry[len(name) + 1:].removesuffix(".tgz")
                    if version[:1].isdigit() or version.startswith("v"):
                        found.setdefault(version, full)
                elif entry == name and os.path.isfile(os.path.join(full, "Chart.yaml")):
                    try:
                        with open(os.path.join(full, "Chart.yaml"), encoding="utf-8") as handle:
                            meta = yaml.safe_load(handle) or {}
                    except (OSError, yaml.YAMLError, UnicodeDecodeError):
                        continue
                    found.setdefault(str(meta.get("version", "")), full)
        best = newest(found, ref.version)
        return found[best] if best is not None else None


class Charts:
    """The local charts first, then (acr-mirror) a source that downloads into the cache."""

    def __init__(self, local: LocalCharts, remote: ChartSource | None = None) -> None:
        self.local = local
        self.remote = remote

    def find(self, ref: ChartRef, release: Release) -> str:
        try:
            return self.local.find(ref, release)
        except ChartError:
            if self.remote is None or ref.path and not ref.path.endswith(".tgz"):
                raise
        return self.remote.find(ref, release)


# ----------------------------------------------------------------------------- chart contents


@dataclass
class _Loaded:
    chart: helmchart.Chart
    v_prefix: dict[str, bool]  # Chart.source -> its templates write `v` + .Chart.AppVersion


def _load(path: str) -> _Loaded:
    chart = helmchart.load_chart(path)
    prefixes: dict[str, bool] = {}
    if os.path.isdir(path):
        _dir_prefixes(path, prefixes)
    else:
        with open(path, "rb") as handle:
            _archive_prefixes(handle.read(helmchart.MAX_ARCHIVE_BYTES + 1), path, prefixes)
    return _Loaded(chart, prefixes)


def _dir_prefixes(root: str, out: dict[str, bool]) -> None:
    budget = MAX_TEMPLATE_BYTES
    found = False
    for directory, _, names in os.walk(os.path.join(root, "templates")):
        for name in names:
            if budget <= 0 or found:
                break
            full = os.path.join(directory, name)
            if not os.path.isfile(full):  # a FIFO or device would block or never end
                continue
            try:
                with open(full, "rb") as handle:
                    blob = handle.read(min(budget, 1 << 20))
            except OSError:
                continue
            budget -= len(blob)
            found = bool(_V_PREFIX.search(blob.decode("utf-8", "replace")))
    out[root] = found
    charts = os.path.join(root, "charts")
    for entry in sorted(os.listdir(charts)) if os.path.isdir(charts) else []:
        full = os.path.join(charts, entry)
        if os.path.isdir(full):
            _dir_prefixes(full, out)
        elif entry.endswith(".tgz"):
            try:
                with open(full, "rb") as handle:
                    _archive_prefixes(handle.read(helmchart.MAX_ARCHIVE_BYTES + 1), full, out)
            except OSError:
                continue


def _archive_prefixes(data: bytes, source: str, out: dict[str, bool]) -> None:
    try:
        files, _ = helmchart._archive_files(data, source)
    except ChartError:
        return
    _files_prefixes(files, source, out)


def _files_prefixes(files: dict[str, bytes], source: str, out: dict[str, bool]) -> None:
    out[source] = any(_V_PREFIX.search(blob.decode("utf-8", "replace"))
                      for name, blob in files.items() if name.startswith("templates/"))
    subs = {name[len("charts/"):].split("/", 1)[0] for name in files if name.startswith("charts/")}
    for sub in sorted(subs):
        if sub.endswith(".tgz") and f"charts/{sub}" in files:
            _archive_prefixes(files[f"charts/{sub}"], f"{source}:charts/{sub}", out)
        else:
            prefix = f"charts/{sub}/"
            _files_prefixes({k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)},
                            f"{source}:charts/{sub}", out)


# ------------------------------------------------------------------------------ merged images


@dataclass(frozen=True)
class ChartImage:
    """One image of a release's merged values."""

    path: ValuesPath  # the image map (or key) in the top chart's values
    image: str  # the reference it renders (an empty tag filled from the chart's appVersion)
    chart: str  # "name version" of the chart (or subchart) whose values hold it
    deployed: bool
    own: bool  # the release's values (inline, valuesFrom, value files) write it
    inline: bool  # ... in the release itself (not in a value file or a ConfigMap)
    written: str | None  # the reference the release's own values make of it (before the chart's part)
    source: str  # where the chart holding it was read (a directory in the scanned tree: its values file is
    #              scanned and rewritten on its own)
    field: ImageField  # the merged values' field (parts with offsets into a dump of the values)
    paths: tuple[tuple[int, ValuesPath], ...]  # each part's start offset -> its path in the top values


@dataclass
class ChartView:
    """A release with its chart resolved: what it runs."""

    release: Release
    chart: str  # describe() of the chart read
    images: list[ChartImage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the files of the value files and valuesFrom objects merged
    value_files: list[str] = field(default_factory=list)  # the value files among them

    @property
    def key(self) -> tuple[str, int, str]:
        return self.release.file, self.release.document, self.release.path


def _unescape(pointer: str) -> ValuesPath:
    if not pointer:
        return ()
    return tuple(k.replace("~1", "/").replace("~0", "~") for k in pointer.lstrip("/").split("/"))


def _dump(values: dict[str, Any]) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(values, Dumper=dumper, default_flow_style=False, sort_keys=False, allow_unicode=True, width=1 << 30)


def _scalar_paths(text: str) -> dict[int, ValuesPath]:
    """The start offset of every scalar's value in a dump -> its path."""
    out: dict[int, ValuesPath] = {}
    from .locate import make_scalar

    documents = compose_documents(text)
    stack: list[tuple[Node, ValuesPath]] = [(documents[0], ())] if documents and documents[0] is not None else []
    while stack:
        node, path = stack.pop()
        if isinstance(node, ScalarNode):
            out[make_scalar(node, text, 0).start] = path
        elif isinstance(node, MappingNode):
            stack.extend((v, (*path, str(k.value))) for k, v in node.value)
        elif isinstance(node, SequenceNode):
            stack.extend((v, (*path, str(i))) for i, v in enumerate(node.value))
    return out


def _enabled(values: Any, path: ValuesPath) -> bool:
    """False when the image sits under a section whose `enabled` is false."""
    node = values
    for key in path:
        if isinstance(node, dict) and node.get("enabled") is False:
            return False
        node = node.get(key) if isinstance(node, dict) else None
    return not (isinstance(node, dict) and node.get("enabled") is False)


def _images_of(values: dict[str, Any]) -> tuple[list[ImageField], dict[int, ValuesPath]]:
    text = _dump(values)
    try:
        fields = [f for f in locate(text, content="helm-values") if f.source in ("helm", "pod")]
    except YamlError:
        return [], {}
    return fields, _scalar_paths(text)


def _with_tag(value: str, app_version: str, v_prefix: bool) -> str:
    """An image without tag or digest gets the chart's appVersion (Helm's common default)."""
    try:
        ref = parse(value)
    except ReferenceError:
        return value
    if ref.tag or ref.digest or not app_version:
        return value
    tag = app_version if app_version.startswith("v") or not v_prefix else "v" + app_version
    return f"{value}:{tag}"


def _name_starts(f: ImageField) -> set[int]:
    """Start offsets of the scalars that name the image (not its registry, tag or digest)."""
    if f.scalar is not None:
        return {f.scalar.start}
    return {s.start for role, s in f.parts.items() if role in ("repository", "image", "name")}


def _written(values: dict[str, Any]) -> dict[ValuesPath, str]:
    """The images some values write themselves, by the path of their map and of the scalars
    that name them: what the release's own fields say."""
    fields, paths = _images_of(values)
    out: dict[ValuesPath, str] = {}
    for f in fields:
        out[_unescape(f.path)] = f.value
        for start in _name_starts(f):
            if start in paths:
                out[paths[start]] = f.value
    return out


def chart_images(loaded: _Loaded, values: dict[str, Any], inline_values: dict[str, Any]) -> list[ChartImage]:
    """Every image the release's merged values name, top chart and subcharts."""
    resolved = helmchart.resolve_values(loaded.chart, copy.deepcopy(values))
    own = _written(values)
    inline = _written(inline_values)
    found: list[ChartImage] = []
    for sub in [resolved, *resolved.walk()]:
        fields, paths = _images_of(sub.values)
        meta = sub.chart
        v_prefix = loaded.v_prefix.get(meta.source, False)
        children = {child.key for child in sub.subcharts}
        for f in fields:
            local = _unescape(f.path)
            if local[:1] and (local[0] in children or sub.path and local[0] == "global"):
                continue  # a subchart's section: its own values say what it runs; a subchart's global is its parent's
            path = (*sub.path, *local)
            image = _with_tag(f.value, meta.app_version, v_prefix)
            parts = [f.scalar] if f.scalar is not None else list(f.parts.values())
            where = []
            for s in parts:
                p = paths.get(s.start)
                if p is not None:  # a global piece is the top chart's global (it wins over a subchart's)
                    where.append((s.start, p if p[:1] == ("global",) else (*sub.path, *p)))
            deployed = sub.enabled and _enabled(sub.values, local)
            named = {path} | {p for start, p in where if start in _name_starts(f)}
            written = next((own[p] for p in named if p in own), None)
            found.append(ChartImage(path, image, f"{meta.name} {meta.version}".strip(), deployed,
                                    written is not None, any(p in inline for p in named), written, meta.source,
                                    replace(f, value=image), tuple(where)))
    return found


# ------------------------------------------------------------------------------------ the pass


@dataclass
class ChartPass:
    """What the chart pass adds to a scan."""

    defaults: list[tuple[str, ImageField, str]] = field(default_factory=list)  # (file, field at its release, chart)
    updates: dict[tuple[str | None, int | None, str | None, str], str] = field(default_factory=dict)
    notices: list[FileError] = field(default_factory=list)
    views: dict[tuple[str, int, str], ChartView] = field(default_factory=dict)


Reader = Callable[[str], str | None]


def _read_file(path: str) -> str | None:
    """A value file's text (a regular file, size-bounded, UTF-8: files.read_source), or None."""
    from .files import read_named

    source = read_named(path, 16 * 1024 * 1024)
    return None if isinstance(source, FileError) else source.text


def _resolve_ref(release: Release, sources: dict[tuple[str, str | None, str | None], ValuesSource]) -> ChartRef:
    """A Flux sourceRef made concrete from the source objects in the scanned files."""
    ref = release.chart
    assert ref is not None
    if ref.source is None:
        return ref
    kind, namespace, name = ref.source
    source = sources.get((kind, namespace or release.home, name))
    if source is None:
        raise ChartError(f"{ref.describe()}: the {kind} {namespace}/{name} is not in the scanned files")
    url = source.data.get("url", "")
    if kind == "OCIRepository":
        tag = source.data.get("ref.tag") or source.data.get("ref.semver") or ""
        return ChartRef(name=url.rstrip("/").rsplit("/", 1)[-1], repo=url, version=tag)
    if kind == "HelmRepository":
        if source.data.get("type") == "oci" or url.startswith("oci://"):
            repo = url if url.startswith("oci://") else "oci://" + url
            return ChartRef(name=ref.name, repo=repo.rstrip("/") + "/" + ref.name, version=ref.version)
        return ChartRef(name=ref.name, repo=url, version=ref.version)
    if kind == "GitRepository":  # the chart is a path in that repository: this tree, we assume
        return ChartRef(path=ref.name, base=os.path.dirname(release.file))
    raise ChartError(f"{ref.describe()}: a {kind} source is not supported")


def _release_values(release: Release, chart_dir: str | None,
                    values_sources: dict[tuple[str, str | None, str | None], ValuesSource],
                    read: Reader, notices: list[str], files: list[str], objects: list[str],
                    roots: list[str]) -> dict[str, Any]:
    """The values the release gives Helm: value files, then valuesFrom, then its inline values.
    `files` and `objects`: the value files and the files of the valuesFrom objects read (their
    findings get what the chart adds). A value file is read only inside the scanned paths or the
    chart."""
    merged: dict[str, Any] = {}
    base = release.files_base if release.files_base is not None else chart_dir
    for name in release.value_files:
        path = name if os.path.isabs(name) or base is None else os.path.join(base, name)
        inside = [*roots, *([os.path.abspath(chart_dir)] if chart_dir else [])]
        if not any(_under(path, r) for r in inside):
            notices.append(f"value file {name} is outside the scanned paths; its values are not merged")
            continue
        text = read(path)
        if text is None:
            notices.append(f"value file {name} is not readable here; its values are not merged")
            continue
        try:
            data = yaml.load(text, Loader=GoLikeLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            notices.append(f"value file {name} is not valid YAML; its values are not merged")
            continue
        if isinstance(data, dict):
            merged = coalesce_tables(helmchart._string_keys(data), merged)
            files.append(path)
    for ref in release.values_from:
        source = values_sources.get((ref.kind, release.home, ref.name))
        data = source.data.get(ref.key) if source is not None else None
        if data is None and not ref.optional:
            where = f"{ref.kind} {'/'.join(x for x in (release.home, ref.name) if x)} key {ref.key}"
            notices.append(f"valuesFrom {where} is not among the values of the scanned files (only values*.yaml "
                           f"keys are read): the images it may set are not checked")
            continue
        if isinstance(data, dict) and source is not None:
            if ref.target_path:
                data = {}  # a targetPath sets one value; its images, if any, are in the object itself
            merged = coalesce_tables(copy.deepcopy(data), merged)
            objects.append(source.file)
    return coalesce_tables(copy.deepcopy(release.values), merged)


def chart_pass(releases: Iterable[Release], sources: Iterable[ValuesSource], charts: ChartSource, *,
               roots: Iterable[str] = (), read: Reader = _read_file) -> ChartPass:
    """Resolve every release's chart and say what it runs (see the module docstring): the default
    images as fields located at their release (the scan judges them), updates for the fields the
    release writes itself, notices, and the views `rewrite` plans overrides from."""
    result = ChartPass()
    roots = root_dirs(roots)
    all_sources = list(sources)
    flux = {(s.kind, s.namespace, s.name): s for s in all_sources if "url" in s.data}
    values_sources = {(s.kind, s.namespace, s.name): s for s in all_sources if "url" not in s.data}
    cache: dict[str, _Loaded | ChartError] = {}
    for release in releases:
        if release.chart is None or release.unresolved:
            if release.unresolved and release.kind != CHART_VALUES:
                result.notices.append(FileError(release.file, f"line {release.line}: {release.describe()}: chart "
                                                              f"defaults not checked: {release.unresolved}"))
            continue
        where = f"line {release.line}: {release.describe()}"
        notes: list[str] = []
        if any("{{" in x for x in (release.chart.name, release.chart.repo, release.chart.version, release.chart.path)):
            result.notices.append(FileError(release.file, f"{where}: chart defaults not checked: "
                                                          f"{release.chart.describe()} is a template placeholder"))
            continue
        try:
            ref = _resolve_ref(release, flux)
            path = charts.find(ref, release)
            loaded = cache.get(path)
            if loaded is None:
                try:
                    loaded = cache[path] = _load(path)
                except ChartError as exc:
                    cache[path] = exc
                    raise
            if isinstance(loaded, ChartError):
                raise loaded
            chart_dir = path if os.path.isdir(path) else None
            value_paths: list[str] = []
            objects: list[str] = []
            values = _release_values(release, chart_dir, values_sources, read, notes, value_paths, objects, roots)
            others = value_paths + objects
            try:
                images = chart_images(loaded, values, release.values)
            except RecursionError:
                raise ChartError(f"{ref.describe()}: values nested too deeply to read") from None
        except ChartError as exc:
            if release.optional:
                continue  # an Argo CD path that is not a chart: nothing to resolve
            result.notices.append(FileError(release.file, f"{where}: chart defaults not checked: {exc}"))
            continue
        view = ChartView(release, ref.describe(), images, notes + loaded.chart.notes, others, value_paths)
        result.views[view.key] = view
        for note in view.notes:
            result.notices.append(FileError(release.file, f"{where}: {note}"))
        for image in images:
            if image.own:  # the release writes it: its finding gets what the chart adds (a tag, a registry)
                if image.written is not None and image.written != image.image:
                    result.updates[(release.file, release.document, release.path, image.written)] = image.image
                    for other in [] if image.inline else others:  # a value file or ConfigMap writes it
                        result.updates[(other, None, "", image.written)] = image.image
                continue
            if not image.deployed or _in_tree(image.source, roots):
                continue
            fld = replace(image.field, source="helm", document=release.document,
                          path=release.values_at + "/" + "/".join(k.replace("~", "~0").replace("/", "~1")
                                                                   for k in image.path),
                          line=release.line, kind=release.kind, namespace=release.namespace, name=release.name,
                          note=None, container=None)
            result.defaults.append((release.file, fld, image.chart))
    return result


def values_files(views: Iterable[ChartView]) -> set[str]:
    """Files releases take values from that their names do not mark as Helm values (a
    `prod.yaml` in Argo CD `valueFiles`): scan and rewrite read them as values (absolute paths)."""
    from .locate.kinds import file_kind

    return {os.path.abspath(f) for view in views for f in view.value_files
            if f.endswith((".yaml", ".yml")) and file_kind(f) != "helm-values"}


def _under(path: str, root: str) -> bool:
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def _in_tree(source: str, roots: Iterable[str]) -> bool:
    """A chart directory under one of the scanned paths: its values files are scanned themselves."""
    return os.path.isdir(source) and any(_under(source, r) for r in roots)


def apply_updates(findings: list[Finding], updates: dict[tuple[str | None, int | None, str | None, str], str]) -> None:
    """Give findings inside a resolved release the reference the chart makes of them."""
    if not updates:
        return
    wanted = {written for (_, _, _, written) in updates}
    for i, f in enumerate(findings):
        if f.image not in wanted or f.file is None:
            continue
        for (file, document, path, written), image in updates.items():
            if f.image == written and (document is None or f.document == document) and \
                    (f.path or "").startswith(path or "") and _same_file(f.file, file):
                findings[i] = replace(f, image=image)


def _same_file(a: str, b: str | None) -> bool:
    return b is not None and (a == b or os.path.abspath(a) == os.path.abspath(b))


# -------------------------------------------------------------------------------- the rewrite


@dataclass
class ReleasePlan:
    """What a file's Helm releases change (rewrite.plan_file adds it to the file's own edits)."""

    edits: list[Any] = field(default_factory=list)
    changes: list[tuple[int, str, str]] = field(default_factory=list)  # (line, image, target)
    skipped: list[tuple[int, str, str]] = field(default_factory=list)  # (line, image, why)
    covered: set[int] = field(default_factory=set)  # starts of the release scalars planned here

    def covers(self, fld: ImageField) -> bool:
        """Whether a field's scalars are planned here (its own edits give way)."""
        return bool(self.covered) and any(
            s.start in self.covered for s in ([fld.scalar] if fld.scalar else []) + list(fld.parts.values()))


def plan_releases(releases: Iterable[Release], views: dict[tuple[int, str], ChartView], policy: Policy,
                  resolve: Callable[[ImageRef], ImageRef | str], roots: Iterable[str] = ()) -> ReleasePlan:
    """The edits of every release of one file (located with Collected(detail=True)) that has a view."""
    plan = ReleasePlan()
    for release in releases:
        view = views.get((release.document, release.path))
        if view is None:
            continue
        edits, changed, skipped, covered = release_edits(release, view, policy, resolve, roots)
        plan.edits.extend(edits)
        plan.covered |= covered
        plan.changes.extend((release.line, old, new) for old, new in changed)
        plan.skipped.extend((release.line, image, why) for image, why in skipped)
    return plan


def release_edits(release: Release, view: ChartView, policy: Policy, resolve: Callable[[ImageRef], ImageRef | str],
                  roots: Iterable[str] = ()) -> tuple[list[Any], list[tuple[str, str]],
                                                                          list[tuple[str, str]], set[int]]:
    """The edits that make a release run only allowed images: each value a rewrite of the merged
    values would change, edited where the release writes it, or added under its values.

    Returns (edits, changes (image, target), skipped (image, why), the start offsets of the
    release's scalars it edits: the file-level edits of those fields give way)."""
    from .splice import Edit, SpliceError, _check_fits, edits_for

    roots = root_dirs(roots)
    overrides: dict[ValuesPath, str] = {}
    edits: list[Edit] = []
    changes: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    covered: set[int] = set()
    for image in view.images:
        if not image.deployed or image.own and not image.inline or not image.own and _in_tree(image.source, roots):
            continue  # a value file, ConfigMap or chart values file that writes it is rewritten in its own file
        if not policy.refuses(image.image, namespace=release.namespace):
            continue
        try:
            ref = parse(image.image)
        except ReferenceError as exc:
            skipped.append((image.image, f"not rewritten: {exc}"))
            continue
        target = resolve(ref)
        if isinstance(target, str):
            skipped.append((image.image, target))
            continue
        if not policy.allows(str(target)):
            skipped.append((image.image, f"target {target} would still be refused by imageRegex"))
            continue
        try:
            merged = edits_for(image.field, target)
        except SpliceError as exc:
            skipped.append((image.image, f"not rewritten: {exc}"))
            continue
        where = dict(image.paths)
        planned: list[tuple[ValuesPath, str]] = []
        for edit in merged:
            path = where.get(edit.start)
            if path is None:
                break
            planned.append((path, edit.new))
        else:
            ok = True
            for path, new in planned:
                scalar = release.scalars.get(path)
                if scalar is not None:
                    if not scalar.exact:
                        skipped.append((image.image, f"not rewritten: {'.'.join(path)} cannot be edited in place"))
                        ok = False
                        break
                    if scalar.value != new:
                        try:
                            _check_fits(scalar, new)
                        except SpliceError as exc:
                            skipped.append((image.image, f"not rewritten: {exc}"))
                            ok = False
                            break
                        edits.append(Edit(scalar.start, scalar.end, scalar.value, new))
                    covered.add(scalar.start)
                elif overrides.get(path, new) != new:
                    skipped.append((image.image, f"not rewritten: {'.'.join(path)} would need two values"))
                    ok = False
                    break
                else:
                    overrides[path] = new
            if ok:
                changes.append((image.image, str(target)))
            continue
        skipped.append((image.image, "not rewritten: the chart's values do not say where its pieces are"))
    inserted, problems = _insertions(release, overrides)
    skipped.extend(problems)
    return edits + inserted, changes, skipped, covered


def _insertions(release: Release, overrides: dict[ValuesPath, str]) -> tuple[list[Any], list[tuple[str, str]]]:
    """New keys for the overrides the release does not write, grouped by the deepest mapping of
    its values that exists (one block per place)."""
    from .splice import Edit

    groups: dict[ValuesPath, dict[str, Any]] = {}
    problems: list[tuple[str, str]] = []
    for path, new in sorted(overrides.items()):
        slot_at = next((path[:i] for i in range(len(path) - 1, -1, -1) if path[:i] in release.slots), None)
        blocked = next((path[:i] for i in range(1, len(path)) if path[:i] in release.scalars), None)
        if slot_at is None or blocked is not None:
            why = f"{'.'.join(blocked)} is not a map" if blocked else "no place to add it in the release's values"
            problems.append((new, f"not rewritten: {'.'.join(path)}: {why}; add it by hand"))
            continue
        tree = groups.setdefault(slot_at, {})
        node = tree
        for key in path[len(slot_at):-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = new
    # places that end where another ends (a map that closes its parent) share one insertion:
    # the deeper map's keys first, so each block follows the lines it belongs to
    texts: dict[int, list[tuple[int, str]]] = {}
    for slot_at, tree in groups.items():
        slot = release.slots[slot_at]
        texts.setdefault(slot.offset, []).append((-len(slot_at), render(slot, tree)))
    edits = [Edit(offset, offset, "", "".join(text for _, text in sorted(parts)))
             for offset, parts in texts.items()]
    return edits, problems


def _plain(value: str) -> str:
    from .splice import _SAFE_PLAIN

    if _SAFE_PLAIN.fullmatch(value) and not value.endswith(":") and yaml.safe_load(value) == value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z_][\w.-]*", key) and yaml.safe_load(key) == key else _plain(key)


def render(slot: MapSlot, tree: dict[str, Any]) -> str:
    """The text that adds `tree` at a slot: block lines in the file's indentation, or flow."""
    if slot.flow:
        for key in reversed(slot.wrap):
            tree = {key: tree}
        def flow(node: dict[str, Any]) -> str:
            return ", ".join(f"{_key(k)}: {{{flow(v)}}}" if isinstance(v, dict) else f"{_key(k)}: {_plain(v)}"
                             for k, v in node.items())
        return ("" if slot.flow == "{}" else ", ") + flow(tree)
    lines: list[str] = []

    def block(node: dict[str, Any], indent: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                lines.append(f"{indent}{_key(k)}:")
                block(v, indent + slot.unit)
            else:
                lines.append(f"{indent}{_key(k)}: {_plain(v)}")

    indent = slot.indent
    for key in slot.wrap:
        lines.append(f"{indent}{_key(key)}:")
        indent += slot.unit
    if slot.item:  # a list item: `- key: ...`, its other lines under the key
        first = len(lines)
        block(tree, indent + "  ")
        lines[first] = indent + "- " + lines[first][len(indent) + 2:]
    else:
        block(tree, indent)
    text = slot.newline.join(lines)
    return slot.lead + text if slot.lead else text + slot.newline
