"""scan_paths: a large tree spread over processes gives exactly the serial result."""

from __future__ import annotations

import functools
import os

import pytest

from manifests_rewriter import scan
from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import Policy

POD = "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: ns{i}}}\nspec:\n  containers:\n" \
      "    - {{name: c, image: 'registry.k8s.io/app{n}:v{i}'}}\n    - {{name: ok, image: r.io/x:1}}\n"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: the scan never forks")
def test_parallel_scan_equals_serial_scan(tmp_path, monkeypatch):
    count = scan.PARALLEL_MIN_FILES + 40
    for i in range(count):
        directory = tmp_path / f"d{i % 7}"
        directory.mkdir(exist_ok=True)
        (directory / f"pod{i}.yaml").write_text(POD.format(i=i, n=i % 5))
    (tmp_path / "d0" / "broken.yaml").write_text("a: [\n")
    policy = Policy(r"^r\.io/")
    to_target = functools.partial(target_for, registry="r.io")
    # idle server threads an earlier test left (keep-alive handlers) would keep the scan in one
    # process (it never forks a threaded process); this test is about the parallel path itself
    monkeypatch.setattr(scan.threading, "active_count", lambda: 1)
    assert scan._parallel_workers(scan.PARALLEL_MIN_FILES, policy, to_target) > 1
    parallel = scan.scan_paths([str(tmp_path)], policy, to_target)
    monkeypatch.setattr(scan, "PARALLEL_MIN_FILES", 10**9)
    serial = scan.scan_paths([str(tmp_path)], policy, to_target)
    assert parallel.findings == serial.findings and parallel.errors == serial.errors
    assert parallel.files == serial.files == count + 1
    assert len(parallel.findings) == count
    assert [e.file for e in parallel.errors] == [str(tmp_path / "d0" / "broken.yaml")]


def test_unpicklable_target_function_scans_in_process(tmp_path):
    assert scan._parallel_workers(10**6, Policy("^x"), lambda ref: ref) == 1
