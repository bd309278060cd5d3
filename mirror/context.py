"""What every command works with: the configuration and settings, the policy in force (from
the config, a policy file or the cluster), the target naming, and the cluster connection.

Policy sources, one place: `--policy-file` (Azure Policy assignments, initiatives and exemptions
exported as JSON), `--policy-from-azure SCOPE` (the same, read from Azure Resource Manager),
`--policy-from-cluster` (the Gatekeeper constraints), else the config's `policy:` section. A
new source is a branch of `_load_policy` and its option in the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from manifests_rewriter.config import Config, find_config, load_config
from manifests_rewriter.errors import UsageError
from manifests_rewriter.naming import target_for
from manifests_rewriter.policy import LintMessage, Policy, lint
from manifests_rewriter.reference import ImageRef

from .engines.base import Progress
from .settings import SECTIONS, MirrorSettings, settings_of

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

ToTarget = Callable[[ImageRef], ImageRef]


@dataclass
class ClusterOptions:
    enabled: bool = False  # scan (or patch) running workloads
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    policy_from_cluster: bool = False
    policy_file: str | None = None
    policy_from_azure: str | None = None  # a subscription, resource group or cluster resource id


@dataclass
class Context:
    """One command's setup; built by `open_context`, used by mirror.pipeline."""

    config: Config
    settings: MirrorSettings
    policy: Policy
    to_target: ToTarget
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    lint: list[LintMessage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the user should know about the setup (warnings)
    progress: Progress | None = None
    _api: ApiClient | None = None

    @property
    def api(self) -> ApiClient:
        """The Kubernetes API client, connected on first use."""
        if self._api is None:
            self._api = _connect(self.cluster)
        return self._api

    @property
    def policy_from_config(self) -> bool:
        return self.policy is self.config.policy


def naming(config: Config) -> ToTarget:
    """The naming template as a function (a partial: picklable for the parallel scan)."""
    return partial(target_for, registry=config.target_registry, template=config.naming)


def naming_errors(policy: Policy, config: Config) -> list[LintMessage]:
    return [m for m in lint(policy, config.target_registry, naming(config)) if m.level == "error"]


def open_context(config_path: str | None, cluster: ClusterOptions | None = None, *,
                 progress: Progress | None = None) -> Context:
    """Load the config (--config, ./acr-mirror.yaml, $ACR_MIRROR_CONFIG) and the policy in force."""
    cluster = cluster or ClusterOptions()
    sources = [name for name, given in (("--policy-file", cluster.policy_file),
                                        ("--policy-from-cluster", cluster.policy_from_cluster),
                                        ("--policy-from-azure", cluster.policy_from_azure)) if given]
    if len(sources) > 1:
        raise UsageError(f"{' and '.join(sources)}: give one policy source")
    config = load_config(find_config(config_path), policy_optional=bool(sources), sections=SECTIONS)
    notes = list(config.warnings)
    settings = settings_of(config)
    api = _connect(cluster) if cluster.policy_from_cluster else None
    policy = _load_policy(config, settings, cluster, api, notes)
    to_target = naming(config)
    return Context(config, settings, policy, to_target, cluster,
                   lint(policy, config.target_registry, to_target), notes, progress, api)


def _connect(cluster: ClusterOptions) -> ApiClient:
    from .cluster.kube import connect

    return connect(cluster.kubeconfig, cluster.context)


def _load_policy(config: Config, settings: MirrorSettings, options: ClusterOptions, api: ApiClient | None,
                 notes: list[str]) -> Policy:
    if options.policy_file:
        from .cluster.policy_source import policy_from_assignment

        return policy_from_assignment(options.policy_file, notes=notes)
    if options.policy_from_azure:
        from .azure.policy import policy_from_azure

        return policy_from_azure(options.policy_from_azure, settings.azure, notes=notes)
    if options.policy_from_cluster:
        from .cluster.policy_source import policy_from_cluster

        return policy_from_cluster(api, notes=notes)
    return config.require_policy()
