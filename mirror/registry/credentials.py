"""Which credentials acr-mirror may use for a registry host: one value type, `Credentials`,
produced by an ordered list of sources, `Keychain` (go-containerregistry's keychain idea).

Sources, in order; the first that has something for the host wins (``auth: auto``):

1. ``ConfigCredentials``: ``registries.<host>.username`` with ``password`` or ``password_env`` (the
   ACR admin user, an ACR repository-scoped token, any basic-auth registry).
2. ``EnvironmentCredentials``: ``ACR_MIRROR_<HOST>_USERNAME`` and ``ACR_MIRROR_<HOST>_PASSWORD``,
   where ``<HOST>`` is the host upper-cased with ``.`` as ``_``, ``-`` as ``__`` and ``:`` as ``___``
   (``crazureblue.azurecr.io`` → ``ACR_MIRROR_CRAZUREBLUE_AZURECR_IO_USERNAME``,
   ``my-reg.example:5000`` → ``ACR_MIRROR_MY__REG_EXAMPLE___5000_``). The naming is injective on
   registry host names (a DNS label never starts or ends with ``-``, a port follows ``:``), so a
   look-alike host (``crazureblue-azurecr.io``) never reads another host's variables. A host that
   cannot be named so (an IPv6 literal) reads none. (Before 0.2 every non-alphanumeric was ``_``:
   such names for a host with ``-`` or ``:`` are another host's now, and are not read for it.)
3. ``DockerConfigCredentials``, Docker's config.json (``$DOCKER_CONFIG/config.json``, else
   ``~/.docker/config.json``):
   a. ``credHelpers[host]``: run ``docker-credential-<name> get``;
   b. ``credsStore``: run ``docker-credential-<credsStore> get``;
   c. ``auths[host]``: ``auth`` (base64 of ``user:password``; or the legacy ``username``/``password``
      keys) and/or ``identitytoken`` (a refresh token, as ``docker login`` / ``az acr login`` store it).
   ``auths`` keys are compared by host name (``https://host/v1/`` matches ``host``). Docker Hub
   is found under its legacy index URL and any of its aliases; helpers are asked for the index
   URL as Docker does.
4. ``EntraIdCredentials``, for ``*.azurecr.io`` hosts: an Entra ID token provider (az login, managed
   identity, workload identity, service-principal environment variables; mirror.azure.identity),
   which the authenticator exchanges at the registry's ``/oauth2/exchange`` (mirror.registry.acr).
5. anonymous.

``auth`` other than ``auto`` forces one source: ``anonymous`` (nothing is looked up), ``basic``
(sources 1–2; an error if neither has a pair), ``docker`` (3; an error if it has nothing for the
host), ``azure`` (4, for any host, e.g. an ACR behind a custom domain). A new source is one class
with a ``mode`` and ``lookup``, and one entry in ``default_sources``.

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
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from manifests_rewriter.reference import DOCKER_HUB_ALIASES, DOCKER_HUB_CREDENTIAL_SERVER, is_docker_hub

from ..settings import MirrorSettings, RegistrySettings
from .errors import CredentialError

__all__ = ["ANONYMOUS", "BasicCredential", "CredentialError", "CredentialSource", "Credentials", "Keychain",
           "credentials_for", "default_keychain", "default_sources", "fixed_keychain"]

log = logging.getLogger(__name__)

TOKEN_USERNAME = "<token>"  # credential-helper protocol: Secret is an identity token
HELPER_TIMEOUT = 30.0
_NOT_FOUND = "credentials not found"
_AZURECR_SUFFIXES = (".azurecr.io", ".azurecr.cn", ".azurecr.us")


@dataclass(frozen=True)
class BasicCredential:
    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return repr(self)


class EntraIdToken(Protocol):
    """Gives Entra ID access tokens for ACR (mirror.azure.identity implements it)."""

    @property
    def name(self) -> str:
        """The credential's name, for messages."""
        ...

    def access_token(self) -> str:
        """A current access token for containerregistry.azure.net; raises CredentialError."""
        ...


@dataclass(frozen=True)
class Credentials:
    """What the registry client may present to one registry host.

    ``basic``: user and password, for Basic auth and for GET requests to a token realm.
    ``identity_token``: a refresh token for the token realm (``grant_type=refresh_token``): a
    Docker ``identitytoken`` or a helper's ``<token>`` secret.
    ``entra_id``: an Entra ID token provider; the authenticator exchanges its access token at the
    registry's ``/oauth2/exchange`` for a refresh token (and ``tenant``, when known).
    ``source``: where they came from, for messages."""

    source: str = "anonymous"
    basic: BasicCredential | None = None
    identity_token: str | None = field(default=None, repr=False)
    entra_id: EntraIdToken | None = None
    tenant: str | None = None

    @property
    def kind(self) -> str:
        """anonymous | basic | identity-token | entra-id"""
        if self.entra_id is not None:
            return "entra-id"
        if self.identity_token:
            return "identity-token"
        return "basic" if self.basic is not None else "anonymous"

    @property
    def anonymous(self) -> bool:
        return self.kind == "anonymous"

    def __repr__(self) -> str:
        parts = [f"source={self.source!r}", f"kind={self.kind!r}"]
        if self.basic is not None:
            parts.append(f"username={self.basic.username!r}")
        return f"Credentials({', '.join(parts)})"

    __str__ = __repr__


ANONYMOUS = Credentials()


# -- the sources ---------------------------------------------------------------------------------


class CredentialSource(ABC):
    """One place credentials can come from. `mode` is the `auth` setting that selects this
    source alone (several sources may share one)."""

    mode: ClassVar[str]

    def automatic(self, host: str) -> bool:
        """Whether `auth: auto` asks this source for `host`."""
        return True

    @abstractmethod
    def lookup(self, host: str, settings: RegistrySettings) -> Credentials | None:
        """The credentials this source has for `host`, None when it has none; CredentialError
        when what it has is unusable (a half pair, a broken helper)."""


_ENV_CODES = {".": "_", "-": "__", ":": "___"}


def env_prefix(host: str) -> str | None:
    """``ACR_MIRROR_<HOST>_`` (see the module docstring), or None for a host it cannot name."""
    if not re.fullmatch(r"[A-Za-z0-9.:-]+", host):
        return None
    return "ACR_MIRROR_" + "".join(_ENV_CODES.get(c, c) for c in host.upper()) + "_"


def _legacy_env_prefix(host: str) -> str:  # for the migration warning only
    """How variables were named before the naming became injective: every non-alphanumeric as ``_``."""
    return "ACR_MIRROR_" + re.sub(r"[^A-Za-z0-9]", "_", host).upper() + "_"


class ConfigCredentials(CredentialSource):
    mode = "basic"

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.env = env

    def lookup(self, host: str, settings: RegistrySettings) -> Credentials | None:
        where = f"registries.{host}"
        if settings.password_env:
            password = self.env.get(settings.password_env)
            if password is None:
                raise CredentialError(f"{where}.password_env: environment variable {settings.password_env} is not set")
        else:
            password = settings.password
        if settings.username and password is not None:
            return Credentials("config", BasicCredential(settings.username, password))
        if settings.username:
            raise CredentialError(f"{where}: username is set but neither password nor password_env")
        if password is not None:
            raise CredentialError(f"{where}: a password is set but no username")
        return None


class EnvironmentCredentials(CredentialSource):
    mode = "basic"

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        self.env = env

    def lookup(self, host: str, settings: RegistrySettings) -> Credentials | None:
        prefix = env_prefix(host)
        if prefix is None:
            return None
        username, password = self.env.get(prefix + "USERNAME"), self.env.get(prefix + "PASSWORD")
        legacy = _legacy_env_prefix(host)
        if username is None and password is None and legacy != prefix and legacy + "USERNAME" in self.env:
            # the pre-0.2 name is another host's now (my.reg.io's for my-reg.io): never read for this one
            log.warning("%sUSERNAME names another host since acr-mirror 0.2; credentials for %s from the "
                        "environment are %sUSERNAME/_PASSWORD", legacy, host, prefix)
        if username and password is not None:
            return Credentials("env", BasicCredential(username, password))
        if username or password is not None:
            missing = prefix + ("PASSWORD" if username else "USERNAME")
            raise CredentialError(f"credentials for {host} from the environment: {missing} is not set")
        return None


class DockerConfigCredentials(CredentialSource):
    mode = "docker"

    def __init__(self, env: Mapping[str, str] = os.environ, helper_timeout: float = HELPER_TIMEOUT) -> None:
        self.env = env
        self.helper_timeout = helper_timeout

    def lookup(self, host: str, settings: RegistrySettings) -> Credentials | None:
        path = docker_config_path(self.env)
        config = _load_docker_config(path)
        if config is None:
            return None
        hub = is_docker_hub(host)
        keys = (DOCKER_HUB_CREDENTIAL_SERVER, *sorted(DOCKER_HUB_ALIASES)) if hub else (host,)
        server_url = DOCKER_HUB_CREDENTIAL_SERVER if hub else host
        return (self._helper(config, keys, server_url) or self._store(config, path, server_url)
                or self._auths(config, path, keys))

    def _ask(self, name: str, server_url: str) -> tuple[str, str] | None:
        return run_credential_helper(name, server_url, env=self.env, timeout=self.helper_timeout)

    def _helper(self, config: dict[str, Any], keys: Sequence[str], server_url: str) -> Credentials | None:
        helpers = config.get("credHelpers") or {}
        if not isinstance(helpers, dict):
            return None
        for key in keys:
            name = helpers.get(key)
            if isinstance(name, str) and name:
                answer = self._ask(name, server_url)
                return _from_helper_answer(answer, f"docker config (credHelpers {name})") if answer else None
        return None

    def _store(self, config: dict[str, Any], path: Path, server_url: str) -> Credentials | None:
        store = config.get("credsStore")
        if not isinstance(store, str) or not store:
            return None
        try:
            answer = self._ask(store, server_url)
        except CredentialError as exc:
            if shutil.which(f"docker-credential-{store}", path=self.env.get("PATH", os.defpath)) is not None:
                raise
            log.warning("%s: %s; ignoring credsStore", path, exc)
            return None
        return _from_helper_answer(answer, f"docker config (credsStore {store})") if answer else None

    def _auths(self, config: dict[str, Any], path: Path, keys: Sequence[str]) -> Credentials | None:
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
            return Credentials(source, basic, identity_token=token)
        if username or password:
            return Credentials(source, BasicCredential(username or "", password or ""))
        return None


def is_azure_container_registry(host: str) -> bool:
    return _hostname(host).split(":")[0].lower().endswith(_AZURECR_SUFFIXES)


class EntraIdCredentials(CredentialSource):
    """An Entra ID token provider for ACR hosts (``*.azurecr.io``; any host with ``auth: azure``)."""

    mode = "azure"

    def __init__(self, provider: Callable[[], EntraIdToken] | None = None) -> None:
        self._provider = provider

    def automatic(self, host: str) -> bool:
        return is_azure_container_registry(host)

    def lookup(self, host: str, settings: RegistrySettings) -> Credentials:
        if self._provider is not None:
            token = self._provider()
        else:
            from ..azure.identity import default_entra_id  # azure-identity only for hosts that use it

            token = default_entra_id()
        return Credentials(f"Entra ID ({token.name})", entra_id=token, tenant=settings.tenant)


def default_sources(env: Mapping[str, str] = os.environ, *, helper_timeout: float = HELPER_TIMEOUT,
                    entra_id: Callable[[], EntraIdToken] | None = None) -> list[CredentialSource]:
    return [ConfigCredentials(env), EnvironmentCredentials(env), DockerConfigCredentials(env, helper_timeout),
            EntraIdCredentials(entra_id)]


class Keychain:
    """Credentials per registry host from an ordered list of sources, as the host's `auth`
    setting allows. Resolution happens once per client (one per host and run)."""

    def __init__(self, sources: Sequence[CredentialSource], settings: Callable[[str], RegistrySettings]) -> None:
        self.sources = list(sources)
        self._settings = settings

    def resolve(self, host: str) -> Credentials:
        settings = self._settings(host)
        mode = settings.auth or "auto"
        if mode == "anonymous":
            return ANONYMOUS
        chosen = [s for s in self.sources if (s.automatic(host) if mode == "auto" else s.mode == mode)]
        if mode != "auto" and not chosen:
            raise CredentialError(f"registries.{host}.auth: unknown mode {mode!r}")
        for source in chosen:
            found = source.lookup(host, settings)
            if found is not None:
                log.debug("credentials for %s: %r", host, found)
                return found
        if mode == "basic":
            names = f", or {env_prefix(host)}USERNAME/_PASSWORD" if env_prefix(host) else ""
            raise CredentialError(
                f"registries.{host}.auth is basic but there is no username and password "
                f"(config username + password/password_env{names})")
        if mode == "docker":
            env = next((s.env for s in chosen if isinstance(s, DockerConfigCredentials)), os.environ)
            raise CredentialError(
                f"registries.{host}.auth is docker but {docker_config_path(env)} has no credentials for {host}")
        return ANONYMOUS


class _Lookup(CredentialSource):
    mode = "auto"

    def __init__(self, lookup: Callable[[str], Credentials | None]) -> None:
        self._lookup = lookup

    def lookup(self, host: str, settings: RegistrySettings) -> Credentials | None:
        return self._lookup(host)


def fixed_keychain(lookup: Callable[[str], Credentials | None]) -> Keychain:
    """A keychain that answers from `lookup` alone (None: anonymous); for tests and embedding."""
    return Keychain([_Lookup(lookup)], lambda _host: RegistrySettings())


def default_keychain(settings: MirrorSettings, env: Mapping[str, str] = os.environ, **kwargs: Any) -> Keychain:
    return Keychain(default_sources(env, **kwargs), settings.registry)


def credentials_for(host: str, settings: RegistrySettings, *, env: Mapping[str, str] = os.environ,
                    **kwargs: Any) -> Credentials:
    """The credentials for one host with these settings, from the default sources."""
    return Keychain(default_sources(env, **kwargs), lambda _host: settings).resolve(host)


# -- Docker's config.json and credential helpers --------------------------------------------------


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
        return Credentials(source, identity_token=secret)
    return Credentials(source, BasicCredential(username, secret))
