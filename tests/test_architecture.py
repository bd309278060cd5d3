"""The shape issue 9 asked for, kept: no import cycle among project modules, each third-party
library imported by the one module that owns it, a pipeline without click, an offline core
(the pre-commit hook) that imports nothing of mirror or its libraries."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"mirror": ROOT / "mirror", "manifests_rewriter": ROOT / "manifests-rewriter" / "manifests_rewriter"}

# library (top-level import name, or a dotted prefix) -> the modules allowed to import it
OWNERS = {
    "httpx": {"mirror.registry.transport"},
    "docker": {"mirror.engines.docker"},
    "kubernetes": {"mirror.cluster.kube"},
    "urllib3": {"mirror.cluster.kube"},
    "azure.identity": {"mirror.azure.identity"},
    "azure.containerregistry": {"mirror.azure.acr_lock"},
    "azure.mgmt.resource.policy": {"mirror.azure.policy"},
    "azure.mgmt.containerregistry": {"mirror.azure.arm"},
    "tenacity": {"mirror.retry"},
    "rich": {"mirror.terminal"},
    "click": {"mirror.cli", "mirror.terminal", "manifests_rewriter.cli"},
    "re2": {"manifests_rewriter.policy"},
}


@functools.cache
def _modules() -> dict[str, Path]:
    found = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            parts = [package, *path.relative_to(directory).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
    """Modules imported at run time (TYPE_CHECKING blocks excluded), relative ones resolved.
    `from package import module` depends on the module, not on the package's __init__."""
    modules = _modules()
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test)
               for n in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules.keys()
            names.update(submodules)
            if len(submodules) < len(node.names):
                names.add(base)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m in _imports(name, path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_cycles_among_project_modules() -> None:
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_each_library_is_imported_by_the_module_that_owns_it() -> None:
    wrong = []
    for name, path in _modules().items():
        for imported in _imports(name, path):
            for library, owners in OWNERS.items():
                if (imported == library or imported.startswith(library + ".")) and name not in owners:
                    wrong.append(f"{name} imports {imported} (owned by {', '.join(sorted(owners))})")
    assert wrong == []


def test_the_offline_core_imports_nothing_of_mirror() -> None:
    offenders = [f"{name}: {imp}" for name, path in _modules().items() if name.startswith("manifests_rewriter")
                 for imp in _imports(name, path) if imp.split(".")[0] in ("mirror", "httpx", "docker", "kubernetes",
                                                                           "azure", "rich", "tenacity")]
    assert offenders == []


def test_the_pipeline_imports_no_click_and_loads_no_heavy_library() -> None:
    graph = _graph()
    reached, todo = set(), ["mirror.pipeline", "mirror.exits", "mirror.report"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(graph[name])
    modules = _modules()
    clicky = [n for n in sorted(reached) if any(i.split(".")[0] == "click" for i in _imports(n, modules[n]))]
    assert clicky == []  # (httpx itself loads click for its own CLI when click is installed)
    code = ("import sys; import mirror.pipeline, mirror.engines.registry, mirror.exits, mirror.report; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'docker', 'kubernetes', 'azure'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def test_version_and_a_one_file_scan_load_no_registry_kubernetes_docker_or_azure_library(tmp_path: Path) -> None:
    (tmp_path / "pod.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n"
                                       "  containers:\n  - {name: a, image: nginx:1}\n")
    (tmp_path / "c.yaml").write_text("target: {registry: x.azurecr.io}\npolicy: {imageRegex: '^x\\\\.azurecr\\\\.io/'}\n")
    heavy = ("httpx", "kubernetes", "docker", "azure", "tenacity")
    for args in (["--version"], ["scan", str(tmp_path / "pod.yaml"), "--config", str(tmp_path / "c.yaml")]):
        code = (f"import sys\nfrom mirror.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
                f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout
        assert out.strip().splitlines()[-1] == "[]", (args, out)
