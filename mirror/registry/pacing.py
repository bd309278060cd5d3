"""Pacing requests under a registry's request budget: ACR's read and write operations per minute.

Azure Container Registry documents its throughput per service tier as operations per minute
(the "service tiers" page, table "Service tier features and limits"; the figures are minimum
estimates, and ACR answers 429 beyond what it can serve):

    tier        ReadOps/min  WriteOps/min
    Basic          1,000          100
    Standard       3,000          500
    Premium       10,000        2,000

A pull is several reads (manifests, then each layer), a push several writes (each blob upload
step and the manifest PUT) plus reads. `Pacer` keeps one token bucket per registry host and
kind (read: GET/HEAD, write: PUT/POST/PATCH/DELETE), sized so that no 60-second window holds
more than `headroom` of the budget: a burst of a tenth of it, the rest refilled evenly. Every
request waits for its token before it is sent; 429 and Retry-After stay the retry policy's
(mirror.retry), and the pacer counts the 429s it sees.

What the run did is kept: operations per host and kind, the peak number in any 60 s window
(how close the run came to the tier's limit), the time spent waiting, and 429 answers.
Thread-safe; one per run, shared by every client.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

WINDOW = 60.0  # seconds: the budgets are per minute
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH", "DELETE"})
DEFAULT_HEADROOM = 0.9  # stay under 90 % of the documented figure: they are estimates


@dataclass(frozen=True)
class Budget:
    """Requests per minute a registry serves, by kind; `name` says where the figures come from."""

    reads_per_minute: int
    writes_per_minute: int
    name: str = ""


ACR_TIERS: dict[str, Budget] = {
    "Basic": Budget(1000, 100, "ACR Basic"),
    "Standard": Budget(3000, 500, "ACR Standard"),
    "Premium": Budget(10000, 2000, "ACR Premium"),
}


def kind_of(method: str) -> str:
    return "write" if method.upper() in WRITE_METHODS else "read"


@dataclass(frozen=True)
class PaceFigure:
    """How close one host and kind came to its budget."""

    host: str
    budget: str  # e.g. "ACR Standard"
    kind: str  # read | write
    limit: int  # operations per minute the budget allows
    paced_to: int  # the most the pacer lets through in any 60 s window
    peak: int  # the most this run sent in any 60 s window
    operations: int
    waited: float  # seconds requests waited for a token, all threads together
    throttled: int  # 429 answers seen from the host (all kinds)

    @property
    def share(self) -> float:
        return self.peak / self.limit if self.limit else 0.0

    def line(self) -> str:
        return (f"{self.host} ({self.budget}): {self.kind}s peaked at {self.peak:,}/min of {self.limit:,} "
                f"({self.share:.0%}), {self.operations:,} in all, {self.waited:.1f} s waiting"
                + (f", {self.throttled} throttled (429)" if self.throttled else ""))

    def as_json(self) -> dict[str, object]:
        return {"host": self.host, "budget": self.budget, "kind": self.kind, "limit_per_minute": self.limit,
                "paced_to_per_minute": self.paced_to, "peak_per_minute": self.peak, "operations": self.operations,
                "waited_seconds": round(self.waited, 3), "throttled": self.throttled}


class TokenBucket:
    """At most `allowed` takes in any WINDOW: a burst of `allowed // 10` (at least 1), the rest
    refilled at an even rate. (In any window: burst + rate * WINDOW = allowed.)"""

    def __init__(self, allowed: int, clock: Callable[[], float]):
        self.allowed = max(2, allowed)  # one token of burst and at least one refilled
        self.burst = max(1, self.allowed // 10)
        self.rate = (self.allowed - self.burst) / WINDOW
        self._clock = clock
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._sent: deque[float] = deque()  # when the takes of the last WINDOW happened
        self.peak = 0
        self.operations = 0
        self.waited = 0.0

    def try_take(self) -> float:
        """Take a token (0.0), or the seconds to wait before trying again. Caller holds the lock."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0 - 1e-9:  # (a rounding error must not ask for a wait the clock cannot show)
            return (1.0 - self._tokens) / self.rate
        self._tokens = max(0.0, self._tokens - 1.0)
        self.operations += 1
        self._sent.append(now)
        while self._sent and self._sent[0] <= now - WINDOW:
            self._sent.popleft()
        self.peak = max(self.peak, len(self._sent))
        return 0.0


class Pacer:
    """Request budgets per registry host; `take(host, method)` before each request."""

    def __init__(self, budgets: Mapping[str, Budget], *, headroom: float = DEFAULT_HEADROOM,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self._budgets = dict(budgets)
        self._sleep = sleep
        self._lock = threading.Lock()
        self._buckets = {
            (host, kind): TokenBucket(max(1, int(limit * headroom)), clock)
            for host, budget in self._budgets.items()
            for kind, limit in (("read", budget.reads_per_minute), ("write", budget.writes_per_minute))
        }
        self._throttled: dict[str, int] = {}

    def paces(self, host: str) -> bool:
        return host in self._budgets

    def take(self, host: str, method: str) -> None:
        """Wait until `host` may receive one more request of this method's kind."""
        bucket = self._buckets.get((host, kind_of(method)))
        if bucket is None:
            return
        waited = 0.0
        while True:
            with self._lock:
                wait = bucket.try_take()
                if wait == 0.0:
                    bucket.waited += waited
                    return
            self._sleep(wait)
            waited += wait

    def observe(self, host: str, status: int) -> None:
        """Count a 429 from `host` (the retry policy does the waiting)."""
        if status == 429 and host in self._budgets:
            with self._lock:
                self._throttled[host] = self._throttled.get(host, 0) + 1

    def figures(self) -> list[PaceFigure]:
        with self._lock:
            return [
                PaceFigure(host, self._budgets[host].name or host, kind,
                           self._budgets[host].reads_per_minute if kind == "read"
                           else self._budgets[host].writes_per_minute,
                           bucket.allowed, bucket.peak, bucket.operations, bucket.waited,
                           self._throttled.get(host, 0))
                for (host, kind), bucket in sorted(self._buckets.items())
            ]

