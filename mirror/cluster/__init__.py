"""Running workloads: scan a live cluster, read the policy from it, patch owners, audit.

The only place in acr-mirror that uses the `kubernetes` package (DESIGN.md). Modules:

- `scan`: `connect()`, `scan_cluster()` -> `ClusterScan` (findings per top owner, running digests);
- `policy_source`: `policy_from_cluster()`, `policy_from_assignment()`;
- `patch`: `plan_patches()`, `apply_patches()` (owners' image fields only, server dry run by default);
- `audit`: `audit_cluster()` (what the policy refuses right now).

Nothing is imported here, so `import mirror.cluster` stays cheap; import the submodules.
"""

from manifests_rewriter.errors import AcrMirrorError


class ClusterError(AcrMirrorError):
    """The cluster cannot be used: no kubeconfig, unreachable, unauthorized. "doing what: cause".
    A failure of the run (exit 1), not of the invocation."""

    names_operation = True
