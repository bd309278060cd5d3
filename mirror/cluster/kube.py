"""The Kubernetes API, through the `kubernetes` client (the only module that imports it).

Connecting (kubeconfig or in-cluster), one request parsed as raw JSON (`call_json`: memory
stays bounded, nothing is deserialized into the client's model classes), lists page by page
(`paged`), and the API server's errors as one line. An unreachable or unauthorized cluster is
a ClusterError (exit 1); a missing --kubeconfig file is a usage error (exit 2).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

from manifests_rewriter.errors import UsageError

from . import ClusterError

ApiError = ApiException  # what a request the server answered with an error status raises
REQUEST_TIMEOUT = (15, 300)  # connect, read (seconds)


def api_instance(api_client: Any, name: str) -> Any:
    """One of the client's API classes (CoreV1Api, AppsV1Api, CustomObjectsApi...) on `api_client`."""
    return getattr(k8s, name)(api_client)


def connect(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """An API client from a kubeconfig (the file given, else $KUBECONFIG or ~/.kube/config,
    with `context` or the current one), else from the in-cluster service account."""
    default = os.path.expanduser(k8s_config.KUBE_CONFIG_DEFAULT_LOCATION)
    use_file = kubeconfig or context or os.environ.get("KUBECONFIG") or any(
        Path(p).exists() for p in default.split(os.pathsep) if p)
    where = kubeconfig or os.environ.get("KUBECONFIG") or default
    try:
        if use_file:
            if kubeconfig and not Path(kubeconfig).exists():
                raise UsageError(f"--kubeconfig {kubeconfig}: file not found")
            return k8s_config.new_client_from_config(config_file=kubeconfig, context=context, persist_config=False)
        if not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise ClusterError(f"connecting to the cluster: no kubeconfig ({default} does not exist; give "
                               f"--kubeconfig or set KUBECONFIG) and not running inside a cluster")
        configuration = k8s.Configuration()
        k8s_config.load_incluster_config(client_configuration=configuration)
        return k8s.ApiClient(configuration)
    except k8s_config.ConfigException as exc:
        what = f"context {context!r} of kubeconfig {where}" if context else f"kubeconfig {where}"
        raise ClusterError(f"loading {what}: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ClusterError(f"loading kubeconfig {where}: {exc}") from None


def server_of(api: Any) -> str:
    return getattr(getattr(api, "configuration", None), "host", "") or "the API server"


def status_message(exc: ApiException) -> str:
    """The API server's Status message, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return f"{body['message']} ({exc.status})"
    except (ValueError, TypeError):
        pass
    return f"{exc.status} {exc.reason or ''}".strip()


def raw_json(response: Any) -> Any:
    """Read a `_preload_content=False` response and release its connection."""
    try:
        return json.loads(response.data)
    finally:
        response.release_conn()


def call_json(api: Any, what: str, call: Callable[..., Any], **kwargs: Any) -> Any:
    """One request through the client, body parsed as JSON; unreachable/unauthorized -> ClusterError."""
    try:
        response = call(_preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        return raw_json(response)
    except ApiException as exc:
        if exc.status == 401:
            raise ClusterError(f"{what}: {server_of(api)} refused the credentials (401 Unauthorized)") from None
        raise
    except (Urllib3Error, OSError) as exc:
        raise ClusterError(f"{what}: cannot reach {server_of(api)}: {_cause(exc)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClusterError(f"{what}: the answer from {server_of(api)} is not JSON: {exc}") from None


def _cause(exc: BaseException) -> str:
    """The useful end of urllib3's nested reasons: "[Errno 111] Connection refused"."""
    text = str(getattr(exc, "reason", None) or exc)
    return text.rsplit("): ", 1)[-1] if "): " in text else text


def paged(api: Any, what: str, call: Callable[..., Any], *, page_size: int = 500,
          notes: list[str] | None = None, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
    """Pages of items of one list call, following `continue`. If the continue token expires
    (410, etcd compaction) the list restarts once from the beginning: callers aggregate
    idempotently, so items seen twice do no harm."""
    token: str | None = None
    restarts = 0
    while True:
        args = dict(kwargs, limit=page_size)
        if token:
            args["_continue"] = token
        try:
            data = call_json(api, what, call, **args)
        except ApiException as exc:
            if exc.status == 410 and token and restarts < 2:
                restarts += 1
                token = None
                if notes is not None:
                    notes.append(f"{what}: the list expired while paging (410); listed again from the start")
                continue
            raise
        yield data.get("items") or []
        token = (data.get("metadata") or {}).get("continue")
        if not token:
            return
