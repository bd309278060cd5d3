"""`make bench`: every benchmark in one run, each in its own process, printed side by side.

Scan throughput vs a plain PyYAML parse; sync wall time vs skopeo and the Docker path,
bytes moved, no-op re-sync, peak RSS; cluster scan vs a plain list-everything script; sync
through a WAN-shaped link (wanproxy) vs skopeo and the link floor ("wan", several minutes); bytes
through the runner for the registry engine, acr-import and cache rules (served ARM, "acr-import").
Pass names to run only some: `python bench/run_all.py scan sync`; `--quick` passes --quick to
the benches that have it (a smaller "wan" run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHES = {"scan": "bench_scan.py", "sync": "bench_sync.py", "docker": "bench_docker.py", "cluster": "bench_cluster.py", "noop": "bench_noop.py",
           "wan": "bench_wan.py", "acr-import": "bench_acr_import.py"}
QUICK = {"wan"}  # benches that take --quick


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    wanted = [name for name in sys.argv[1:] if name != "--quick"] or list(BENCHES)
    unknown = [name for name in wanted if name not in BENCHES]
    if unknown:
        print(f"unknown bench {unknown[0]!r}: choose from {', '.join(BENCHES)}")
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "manifests-rewriter")])}
    failed = []
    for name in wanted:
        script = HERE / BENCHES[name]
        if not script.exists():
            print(f"\n# {name}: {script.name} not present, skipped")
            continue
        print(f"\n# {name} ({script.name})", flush=True)
        start = time.perf_counter()
        extra = ["--quick"] if quick and name in QUICK else []
        code = subprocess.run([sys.executable, str(script), *extra], cwd=ROOT, env=env).returncode
        print(f"({name}: {time.perf_counter() - start:.0f} s, exit {code})", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
