"""Which credentials the registry client may use for one registry host, found where users keep them.

Resolution order for a host (``credentials_for``), with the registry's ``auth`` setting ``auto``;
the first source that has something for the host wins:

1. **config**: ``registries.<host>.username`` with ``password`` or ``password_env`` (the ACR admin
   user, an ACR repository-scoped token, any basic-auth registry).
2. **env**: ``ACR_MIRROR_<HOST>_USERNAME`` and ``ACR_MIRROR_<HOST>_PASSWORD``, where ``<HOST>`` is the
   host upper-cased with every non-alphanumeric character as ``_``
   (``crazureblue.azurecr.io`` → ``ACR_MIRROR_CRAZUREBLUE_AZURECR_IO_USERNAME``,
   ``127.0.0.1:5000`` → ``ACR_MIRROR_127_0_0_1_5000_USERNAME``).
3. **Docker's config.json** (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   a. ``credHelpers[host]``: run ``docker-credential-<name> get``;
   b. ``credsStore``: run ``docker-credential-<credsStore> get``;
   c. ``auths[host]``: ``auth`` (base64 of ``user:password``; or the legacy ``username``/``password``
      keys) and/or ``identitytoken`` (a refresh token, as ``docker login`` / ``az acr login`` store it).
   ``auths`` keys are compared by host name (``https://host/v1/`` matches ``host``). Docker Hub
   is found under any of ``https://index.docker.io/v1/``, ``docker.io``, ``index.docker.io`` and
   ``registry-1.docker.io``; helpers are asked for ``https://index.docker.io/v1/`` as Docker does.
4. **Entra ID**, for ``*.azurecr.io`` hosts: azure-identity's ``DefaultAzureCredential`` (az login,
   managed identity, workload identity, service-principal environment variables), exchanged at the
   registry's ``/oauth2/exchange`` for an ACR refresh token (see ``mirror.registry.acr``).
5. **anonymous**.

``auth`` other than ``auto`` forces a mode: ``anonymous`` (nothing is looked up), ``basic`` (steps
1–2 only; an error if neither has a pair), ``docker`` (step 3 only; an error if it has nothing for
the host), ``azure`` (step 4 for any host, e.g. an ACR behind a custom domain).

Helpers speak Docker's credential-helper protocol: the server URL on stdin, a JSON object
``{"ServerURL", "Username", "Secret"}`` on stdout. "credentials not found" is no credential (the
next source is tried), any other failure is a ``CredentialError`` naming the helper; a helper that
does not answer within ``helper_timeout`` seconds is killed. A ``Username`` of ``<token>`` means the
Secret is an identity (refresh) token. A ``credsStore`` whose helper is not installed (a config.json
copied from Docker Desktop) is logged and skipped; a ``credHelpers`` entry naming a missing helper is
an error, since it names this very host.

Secrets never appear in a ``repr``, ``str``, log line or error message of this module.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from manifests_rewriter.config import RegistrySettings

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
DOCKER_HUB_KEYS = ("https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io")
TOKEN_USERNAME = "<token>"  # credential-helper protocol: Secret is an identity token
HELPER_TIMEOUT = 30.0
_NOT_FOUND = "credentials not found"
_AZURECR_SUFFIXES = (".azurecr.io", ".azurecr.cn", ".azurecr.us")


class CredentialError(Exception):
    """Credentials for a registry could not be obtained; the message says where, never the secret."""


@dataclass(frozen=True)
class BasicCredential:
    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return repr(self)


class Credentials:
    """What the registry client may use for one registry host.

    ``basic``: user and password, for Basic auth and for GET requests to a token realm.
    ``refresh_token()``: an identity/refresh token to present to the token realm with
    ``grant_type=refresh_token`` (an ACR refresh token exchanged from Entra ID, cached until shortly
    before it expires; or a Docker ``identitytoken``), else ``None``.
    ``source``: where they came from, for messages.
    """

    __slots__ = ("basic", "source", "_token", "_token_source")
    basic: BasicCredential | None
    source: str

    def __init__(
        self,
        basic: BasicCredential | None = None,
        source: str = "anonymous",
        *,
        refresh_token: str | None = None,
        token_source: RefreshTokenSource | None = None,
    ) -> None:
        self.basic = basic
        self.source = source
        self._token = refresh_token or None
        self._token_source = token_source

    @property
    def kind(self) -> str:
        """anonymous | basic | identity-token | entra-id"""
        if self._token_source is not None:
            return "entra-id"
        if self._token is not None:
            return "identity-token"
        return "basic" if self.basic is not None else "anonymous"

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"

    def refresh_token(self) -> str | None:
        """The refresh token to present at the token realm, or None; may raise CredentialError."""
        if self._token_source is not None:
            return self._token_source.refresh_token()
        return self._token

    def invalidate(self) -> None:
        """Forget a cached exchanged token (call after the registry refused it); the next
        ``refresh_token()`` exchanges anew. A static token or password cannot be renewed."""
        if self._token_source is not None:
            self._token_source.invalidate()

    def __repr__(self) -> str:
        parts = [f"source={self.source!r}", f"kind={self.kind!r}"]
        if self.basic is not None:
            parts.append(f"username={self.basic.username!r}")
        return f"Credentials({', '.join(parts)})"

    __str__ = __repr__


class RefreshTokenSource:
    """Something that hands out a (cached) refresh token; ``mirror.registry.acr`` implements it."""

    def refresh_token(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def invalidate(self) -> None:  # pragma: no cover - interface
        pass



# -- helpers -------------------------------------------------------------------------------------


def env_prefix(host: str) -> str:
    """``ACR_MIRROR_<HOST>_``: the host upper-cased, non-alphanumerics as ``_``."""
    return "ACR_MIRROR_" + re.sub(r"[^A-Za-z0-9]", "_", host).upper() + "_"


def is_docker_hub(host: str) -> bool:
    return _hostname(host) in ("docker.io", "index.docker.io", "registry-1.docker.io")


def is_azure_container_registry(host: str) -> bool:
    return _hostname(host).split(":")[0].lower().endswith(_AZURECR_SUFFIXES)


def _hostname(key: str) -> str:
    """Docker's ConvertToHostname: strip the scheme and any path of an ``auths`` key."""
    for scheme in ("http://", "https://"):
        if key.startswith(scheme):
            key = key[len(scheme):]
            break
    return key.split("/", 1)[0]


def docker_config_path(env: Mapping[str, str] = os.environ) -> Path:
    directory = env.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".docker" / "config.json"


def _load_docker_config(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialError(f"reading Docker config {path}: {exc}") from None
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: the document holds secrets
        raise CredentialError(f"reading Docker config {path}: invalid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise CredentialError(f"reading Docker config {path}: not a JSON object")
    return data


def run_credential_helper(
    name: str,
    server_url: str,
    *,
    env: Mapping[str, str] = os.environ,
    timeout: float = HELPER_TIMEOUT,
) -> tuple[str, str] | None:
    """``docker-credential-<name> get`` for ``server_url``: ``(username, secret)`` or None if the
    helper has no credentials for it. Raises CredentialError naming the helper on any other failure."""
    program = f"docker-credential-{name}"
    executable = shutil.which(program, path=env.get("PATH", os.defpath))
    what = f"asking credential helper {program} for {server_url}"
    if executable is None:
        raise CredentialError(f"{what}: {program} not found on PATH")
    try:
        proc = subprocess.Popen(
            [executable, "get"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,  # so a timeout can kill the helper's children too
        )
    except OSError as exc:
        raise CredentialError(f"{what}: cannot run it: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(server_url.encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.communicate()
        raise CredentialError(f"{what}: no answer within {timeout:g} s (killed)") from None
    if proc.returncode != 0:
        message = (out.decode(errors="replace").strip() or err.decode(errors="replace").strip())
        if _NOT_FOUND in message.lower():
            return None
        first = message.splitlines()[0][:300] if message else "no message"
        raise CredentialError(f"{what}: exit status {proc.returncode}: {first}")
    try:
        answer = json.loads(out)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CredentialError(f"{what}: its answer is not JSON") from None  # never echo: it may hold the secret
    if not isinstance(answer, dict):
        raise CredentialError(f"{what}: its answer is not a JSON object")
    username, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise CredentialError(f"{what}: its answer lacks string Username and Secret")
    if not username and not secret:
        return None
    return username, secret


def _from_helper_answer(answer: tuple[str, str], source: str) -> Credentials:
    username, secret = answer
    if username == TOKEN_USERNAME:
        return Credentials(None, source, refresh_token=secret)
    return Credentials(BasicCredential(username, secret), source)


# -- the sources, in order -----------------------------------------------------------------------


def _from_config(host: str, settings: RegistrySettings, env: Mapping[str, str]) -> Credentials | None:
    where = f"registries.{host}"
    if settings.password_env:
        password = env.get(settings.password_env)
        if password is None:
            raise CredentialError(f"{where}.password_env: environment variable {settings.password_env} is not set")
    else:
        password = settings.password
    if settings.username and password is not None:
        return Credentials(BasicCredential(settings.username, password), "config")
    if settings.username:
        raise CredentialError(f"{where}: username is set but neither password nor password_env")
    if password is not None:
        raise CredentialError(f"{where}: a password is set but no username")
    return None


def _from_env(host: str, env: Mapping[str, str]) -> Credentials | None:
    prefix = env_prefix(host)
    username, password = env.get(prefix + "USERNAME"), env.get(prefix + "PASSWORD")
    if username and password is not None:
        return Credentials(BasicCredential(username, password), "env")
    if username or password is not None:
        missing = prefix + ("PASSWORD" if username else "USERNAME")
        raise CredentialError(f"credentials for {host} from the environment: {missing} is not set")
    return None


def _from_docker_config(
    host: str, env: Mapping[str, str], timeout: float
) -> Credentials | None:
    path = docker_config_path(env)
    config = _load_docker_config(path)
    if config is None:
        return None
    hub = is_docker_hub(host)
    keys = DOCKER_HUB_KEYS if hub else (host,)
    server_url = DOCKER_HUB_SERVER if hub else host

    helpers = config.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key in keys:
            name = helpers.get(key)
            if isinstance(name, str) and name:
                answer = run_credential_helper(name, server_url, env=env, timeout=timeout)
                if answer is not None:
                    return _from_helper_answer(answer, f"docker config (credHelpers {name})")
                break

    store = config.get("credsStore")
    if isinstance(store, str) and store:
        try:
            answer = run_credential_helper(store, server_url, env=env, timeout=timeout)
        except CredentialError as exc:
            if shutil.which(f"docker-credential-{store}", path=env.get("PATH", os.defpath)) is not None:
                raise
            log.warning("%s: %s; ignoring credsStore", path, exc)
            answer = None
        if answer is not None:
            return _from_helper_answer(answer, f"docker config (credsStore {store})")

    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        return None
    wanted = {_hostname(k) for k in keys}
    entry_key = next((k for k in keys if k in auths), None)  # an exact key first
    if entry_key is None:
        entry_key = next((k for k in auths if _hostname(k) in wanted), None)
    if entry_key is None or not isinstance(auths[entry_key], dict):
        return None
    entry = auths[entry_key]
    where = f"Docker config {path}: auths[{entry_key!r}]"
    username = password = None
    encoded = entry.get("auth")
    if encoded:
        try:
            decoded = base64.b64decode(str(encoded).strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError):
            raise CredentialError(f"{where}.auth: not base64 of user:password") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise CredentialError(f"{where}.auth: not base64 of user:password (no ':')")
    elif entry.get("username") or entry.get("password"):
        username, password = str(entry.get("username") or ""), str(entry.get("password") or "")
    token = entry.get("identitytoken")
    source = "docker config (auths)"
    if isinstance(token, str) and token:
        basic = BasicCredential(username, password) if username and password else None
        return Credentials(basic, source, refresh_token=token)
    if username or password:
        return Credentials(BasicCredential(username or "", password or ""), source)
    return None


def _from_entra_id(
    host: str, settings: RegistrySettings, azure_credential: TokenCredential | None
) -> Credentials:
    from . import acr  # imports azure-identity lazily, only for hosts that use Entra ID

    source = acr.shared_refresh_token_source(host, settings, credential=azure_credential)
    return Credentials(None, f"Entra ID ({source.credential_name})", token_source=source)


def credentials_for(
    host: str,
    settings: RegistrySettings,
    *,
    env: Mapping[str, str] = os.environ,
    azure_credential: TokenCredential | None = None,
    helper_timeout: float = HELPER_TIMEOUT,
) -> Credentials:
    """The credentials for ``host`` (a registry host as in image names, e.g. ``docker.io``,
    ``crazureblue.azurecr.io``, ``127.0.0.1:5000``), in the order of this module's docstring.

    ``env`` supplies ``password_env``, the ``ACR_MIRROR_*`` variables, ``DOCKER_CONFIG``/``HOME`` and
    the ``PATH`` helpers are looked up on (and run with). ``azure_credential`` replaces
    ``DefaultAzureCredential`` (any azure-core ``TokenCredential``)."""
    mode = settings.auth or "auto"
    if mode == "anonymous":
        return Credentials()
    if mode in ("auto", "basic"):
        found = _from_config(host, settings, env) or _from_env(host, env)
        if found is not None:
            log.debug("credentials for %s: %r", host, found)
            return found
        if mode == "basic":
            raise CredentialError(
                f"registries.{host}.auth is basic but there is no username and password "
                f"(config username + password/password_env, or {env_prefix(host)}USERNAME/_PASSWORD)"
            )
    if mode in ("auto", "docker"):
        found = _from_docker_config(host, env, helper_timeout)
        if found is not None:
            log.debug("credentials for %s: %r", host, found)
            return found
        if mode == "docker":
            raise CredentialError(
                f"registries.{host}.auth is docker but {docker_config_path(env)} has no credentials for {host}"
            )
    if mode == "azure" or (mode == "auto" and is_azure_container_registry(host)):
        found = _from_entra_id(host, settings, azure_credential)
        log.debug("credentials for %s: %r", host, found)
        return found
    if mode not in ("auto", "basic", "docker", "azure"):
        raise CredentialError(f"registries.{host}.auth: unknown mode {mode!r}")
    return Credentials()


__all__ = [
    "BasicCredential",
    "CredentialError",
    "Credentials",
    "RefreshTokenSource",
    "credentials_for",
    "docker_config_path",
    "env_prefix",
    "is_azure_container_registry",
    "is_docker_hub",
    "run_credential_helper",
]
