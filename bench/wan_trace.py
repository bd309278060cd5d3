"""Where a sync spends its time on the WAN: read the traces bench_wan.py --trace writes.

For one run (a JSON file with the exchanges seen by the source and the target proxies):
- requests per link by kind (ping, manifest HEAD/GET/PUT, blob HEAD/GET, upload POST/PUT,
  mount, tags list, referrers), connections used, and per image;
- the chain of round trips per image: exchanges of that image that started only after
  every earlier one of it had finished (the serial steps of its critical path);
- phases: process start → first request, → first blob byte, → last blob byte, → last
  manifest PUT; the source downlink's use over time (share of the bandwidth, in 100 ms bins);
- images and blob transfers in flight over time.

Usage: python bench/wan_trace.py TRACE.json [--mbit 400] [--images 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from wanproxy import Exchange  # noqa: E402

MIB = 1024 * 1024


def classify(exchange: Exchange) -> str:
    path, method = exchange.path.split("?")[0], exchange.method
    if path.rstrip("/") == "/v2":
        return "ping"
    if "/manifests/" in path:
        return f"manifest {method}"
    if "/blobs/uploads" in path:
        if method == "POST":
            return "mount POST" if "mount=" in exchange.path else "upload POST"
        return f"upload {method}"
    if "/blobs/" in path:
        return f"blob {method}"
    if path.endswith("/tags/list"):
        return "tags list"
    if "/referrers/" in path:
        return "referrers"
    return f"other {method}"


def repository(exchange: Exchange) -> str:
    """The image an exchange belongs to: the repository's last element (skopeo sync keeps
    only that one under its target prefix, so source and target requests match up)."""
    path = exchange.path.split("?")[0]
    for marker in ("/manifests/", "/blobs/", "/tags/", "/referrers/"):
        if marker in path:
            return path[len("/v2/"):path.index(marker)].rsplit("/", 1)[-1]
    return ""


def load(path: Path) -> tuple[float, list[Exchange], list[Exchange]]:
    data = json.loads(path.read_text())
    return data["seconds"], [Exchange(**e) for e in data["source"]], [Exchange(**e) for e in data["target"]]


def end(e: Exchange) -> float:
    return e.done or e.first or e.sent


def chain(exchanges: list[Exchange]) -> int:
    """Exchanges that started after all earlier ones had finished: serial round trips."""
    steps, horizon = 0, -1.0
    for e in sorted(exchanges, key=lambda x: x.sent):
        if e.sent >= horizon - 0.002:
            steps += 1
        horizon = max(horizon, end(e))
    return steps


def utilisation(exchanges: list[Exchange], mbit: float, start: float, stop: float, bin_s: float = 0.1) -> list[float]:
    """Share of the bandwidth used per bin, spreading each response's bytes over its duration."""
    bins = [0.0] * (int((stop - start) / bin_s) + 1)
    for e in exchanges:
        if e.down_bytes < 64 * 1024 or not e.done:
            continue
        a, b = e.first, max(e.done, e.first + 1e-6)
        rate = e.down_bytes / (b - a)
        i = int((a - start) / bin_s)
        while i < len(bins) and start + i * bin_s < b:
            lo, hi = max(a, start + i * bin_s), min(b, start + (i + 1) * bin_s)
            if hi > lo:
                bins[i] += rate * (hi - lo)
            i += 1
    capacity = mbit * 1e6 / 8 * bin_s
    return [x / capacity for x in bins]


def report(path: Path, mbit: float, show_images: int) -> dict[str, Any]:
    seconds, source, target = load(path)
    everything = source + target
    first = min(e.sent for e in everything)
    last = max(end(e) for e in everything)
    blob_gets = [e for e in source if classify(e) == "blob GET" and e.status == 200]
    print(f"\n== {path.name}: {seconds:.2f} s timed; first request at {first:.2f} s after the proxies were reset "
          f"(process start-up), last answer at {last:.2f} s")
    for name, side in (("source", source), ("target", target)):
        kinds = Counter(classify(e) for e in side)
        print(f"  {name}: {len(side)} requests on {len({e.conn for e in side})} connections: "
              + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    images: dict[str, list[Exchange]] = defaultdict(list)
    for e in everything:
        repo = repository(e)
        if repo:
            images[repo].append(e)
    chains = {repo: chain(ex) for repo, ex in images.items()}
    spans = {repo: max(end(e) for e in ex) - min(e.sent for e in ex) for repo, ex in images.items()}
    per_image = Counter(classify(e) for e in everything if repository(e))
    n = len(images)
    print(f"  per image ({n}): " + ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(per_image.items())))
    print(f"  serial round trips per image: median {statistics.median(chains.values()):.0f}, "
          f"max {max(chains.values())}; image span median {statistics.median(spans.values()):.2f} s, "
          f"max {max(spans.values()):.2f} s")
    if blob_gets:
        first_byte = min(e.first for e in blob_gets)
        last_byte = max(e.done for e in blob_gets)
        manifest_puts = [e for e in target if classify(e) == "manifest PUT"]
        last_put = max((end(e) for e in manifest_puts), default=last)
        util = utilisation(source, mbit, first, last)
        busy = sum(1 for u in util if u >= 0.8) / len(util)
        moved = sum(e.down_bytes for e in blob_gets)
        print(f"  phases: first request {first:.2f} → first blob byte {first_byte:.2f} (+{first_byte - first:.2f}) → "
              f"last blob byte {last_byte:.2f} → last manifest PUT {last_put:.2f} (+{last_put - last_byte:.2f})")
        print(f"  source downlink: {moved / MIB:.0f} MiB of blobs, at ≥80% of {mbit:g} Mbit/s in {busy:.0%} of "
              f"100-ms bins from first request to last answer; mean use {statistics.mean(util):.0%}; "
              f"bytes alone need {moved * 8 / mbit / 1e6:.2f} s")
    # in flight over time
    events = sorted([(min(e.sent for e in ex), 1) for ex in images.values()]
                    + [(max(end(e) for e in ex), -1) for ex in images.values()])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    transfers = sorted([(e.sent, 1) for e in blob_gets] + [(e.done, -1) for e in blob_gets])
    level = tpeak = 0
    for _, step in transfers:
        level += step
        tpeak = max(tpeak, level)
    print(f"  images in flight at most {peak}; blob GETs in flight at most {tpeak}")
    if show_images:
        for repo in sorted(images, key=lambda r: min(e.sent for e in images[r]))[:show_images]:
            print(f"  -- {repo}: {chains[repo]} serial steps, {spans[repo]:.2f} s")
            for e in sorted(images[repo], key=lambda x: x.sent):
                side = "src" if e in source else "dst"
                print(f"     {side} c{e.conn:<3} {e.sent:7.3f} → {end(e):7.3f}  {classify(e):<13} {e.status} "
                      f"{e.down_bytes + e.up_bytes:>10,}")
    return {"chains": chains, "spans": spans}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="+", type=Path)
    parser.add_argument("--mbit", type=float, default=400.0, help="the link's bandwidth per direction")
    parser.add_argument("--images", type=int, default=0, help="print the exchanges of the first N images")
    args = parser.parse_args()
    for path in args.traces:
        report(path, args.mbit, args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
